"""Procedural sprites for the embedded COCO-format data: one drawer per category and the clutter that is no object.

A drawer paints numbered parts into a ``Pen`` (a uint8 part map of the sprite's box, 0 = empty) and registers one
colour per part. All categories draw their colours from the same palettes, so a category is told apart by its
shape and structure (rings and a thin frame make a bicycle, filled wheels under a solid tank a motorcycle, a row
of windows over small wheels a bus), while clutter repeats single parts (lone wheels, rings, window panels,
n-gons, poles) as hard negatives.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import pairwise

import numpy as np
from PIL import Image, ImageDraw

PALETTE = np.array([  # shared by every category and the clutter
    (172, 32, 32), (32, 62, 152), (205, 205, 205), (22, 22, 26), (192, 162, 42), (42, 112, 62), (232, 232, 236),
    (122, 22, 62), (62, 62, 66), (112, 110, 108), (165, 162, 156), (150, 110, 82), (196, 176, 138),
    (138, 72, 58), (62, 82, 112), (132, 152, 172), (78, 108, 50), (214, 120, 40)], np.float32)
SKIN = np.array([(230, 190, 160), (200, 150, 110), (150, 100, 70), (100, 70, 50)], np.float32)
GLASS, DARK = np.array((55, 70, 85), np.float32), np.array((25, 25, 28), np.float32)
LAMPS = np.array([(240, 40, 30), (250, 180, 30), (60, 230, 90)], np.float32)


class Pen:
    """A sprite of w × h px being drawn: its part map, the colour of each part and a coordinate helper."""

    def __init__(self, rng: np.random.Generator, w: int, h: int) -> None:
        self.r, self.w, self.h = rng, w, h
        self.im = Image.new("L", (w, h))
        self.draw = ImageDraw.Draw(self.im)
        self.cols: list[np.ndarray] = [np.zeros(3, np.float32)]

    def paint(self, colour: np.ndarray) -> int:
        """Register a part colour (jittered) and return its part index."""
        self.cols.append((colour + self.r.normal(0, 10, 3)).astype(np.float32))  # the final image is clipped
        return len(self.cols) - 1

    def any(self) -> np.ndarray:
        """A random palette colour."""
        return PALETTE[self.r.integers(len(PALETTE))]

    def xy(self, *uv: float) -> list[float]:
        """Unit-box coordinates (u right, v down, in [0, 1]) → pixel coordinates [x, y, x, y, ...]."""
        return [c * (self.w if k % 2 == 0 else self.h) for k, c in enumerate(uv)]

    def px(self, frac: float) -> int:
        """A line width of frac × the sprite height, at least 1 px."""
        return max(1, round(frac * self.h))

    def disc(self, cu: float, cv: float, rv: float, fill: int, width: int = 0) -> None:
        """A circle of radius rv × h around (cu, cv) (in unit coordinates); a ring when width > 0."""
        x, y, r = cu * self.w, cv * self.h, rv * self.h
        box = [x - r, y - r, x + r, y + r]
        if width:
            self.draw.ellipse(box, outline=fill, width=width)
        else:
            self.draw.ellipse(box, fill=fill)

    def result(self, flip: bool) -> tuple[np.ndarray, np.ndarray]:
        """(part map uint8 [h, w], colours float32 [parts + 1, 3]), mirrored when flip."""
        im = self.im.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flip else self.im
        return np.asarray(im), np.stack(self.cols)


def person(p: Pen) -> None:
    """Head, torso, arms and two legs in a stride."""
    top, trousers, skin = p.paint(p.any()), p.paint(p.any()), p.paint(SKIN[p.r.integers(len(SKIN))])
    stride, a = p.r.uniform(0, 0.25, 2)
    p.draw.ellipse(p.xy(0.3, 0, 0.7, 0.17), fill=skin)
    for u0, u1, du in ((0.22, 0.5, -stride), (0.5, 0.78, stride)):
        p.draw.polygon(p.xy(u0, 0.5, u1, 0.5, u1 + du, 1, u0 + du, 1), fill=trousers)
    for u, du in ((0.16, -a), (0.84, a)):
        p.draw.line(p.xy(u, 0.2, u + du, 0.55), fill=top, width=max(1, round(0.14 * p.w)))
    p.draw.polygon(p.xy(0.1, 0.18, 0.9, 0.18, 0.8, 0.56, 0.2, 0.56), fill=top)


def bicycle(p: Pen) -> None:
    """Two thin rings joined by a triangular frame, saddle and handlebar."""
    frame, tyre, rv = p.paint(p.any()), p.paint(DARK), 0.33
    ru = rv * p.h / p.w
    for cu in (ru, 1 - ru):
        p.disc(cu, 1 - rv, rv, tyre, width=p.px(0.07))
    rear, pedal, seat, head, front = (ru, 1 - rv), (0.45, 1 - rv), (0.38, 0.22), (0.72, 0.2), (1 - ru, 1 - rv)
    for a, b in ((rear, pedal), (pedal, seat), (seat, rear), (seat, head), (head, pedal), (head, front)):
        p.draw.line(p.xy(*a, *b), fill=frame, width=p.px(0.06))
    p.draw.line(p.xy(0.3, 0.16, 0.45, 0.16), fill=tyre, width=p.px(0.07))
    p.draw.line(p.xy(0.68, 0.06, 0.78, 0.2), fill=tyre, width=p.px(0.06))


def car(p: Pen) -> None:
    """Low body with a cabin and two side windows over two wheels."""
    body, glass, tyre = p.paint(p.any()), p.paint(GLASS), p.paint(DARK)
    p.draw.rounded_rectangle(p.xy(0, 0.38, 1, 0.82), radius=0.12 * p.h, fill=body)
    p.draw.polygon(p.xy(0.16, 0.4, 0.27, 0.02, 0.68, 0.02, 0.86, 0.4), fill=body)
    p.draw.polygon(p.xy(0.22, 0.38, 0.3, 0.09, 0.46, 0.09, 0.46, 0.38), fill=glass)
    p.draw.polygon(p.xy(0.5, 0.38, 0.5, 0.09, 0.65, 0.09, 0.79, 0.38), fill=glass)
    for cu in (0.2, 0.8):
        p.disc(cu, 0.8, 0.2, tyre)


def motorcycle(p: Pen) -> None:
    """Two filled wheels with hubs under a solid tank, a seat, a fork and a handlebar."""
    body, tyre, metal = p.paint(p.any()), p.paint(DARK), p.paint(PALETTE[10])
    rv = 0.31
    ru = rv * p.h / p.w
    for cu in (ru, 1 - ru):
        p.disc(cu, 1 - rv, rv, tyre)
        p.disc(cu, 1 - rv, 0.11, metal)
    p.draw.line(p.xy(0.74, 0.16, 1 - ru, 1 - rv), fill=metal, width=p.px(0.07))
    p.draw.line(p.xy(0.18, 0.72, 0.5, 0.7), fill=metal, width=p.px(0.06))
    p.draw.polygon(p.xy(0.3, 0.52, 0.42, 0.28, 0.62, 0.24, 0.74, 0.44, 0.56, 0.64, 0.34, 0.64), fill=body)
    p.draw.polygon(p.xy(0.12, 0.36, 0.44, 0.3, 0.44, 0.4, 0.16, 0.46), fill=tyre)
    p.draw.line(p.xy(0.64, 0.1, 0.82, 0.16), fill=tyre, width=p.px(0.06))


def bus(p: Pen) -> None:
    """Tall, long body with a stripe, a door and a row of windows over two small wheels."""
    body, stripe, glass, tyre = p.paint(p.any()), p.paint(p.any()), p.paint(GLASS), p.paint(DARK)
    p.draw.rounded_rectangle(p.xy(0, 0, 1, 0.88), radius=0.08 * p.h, fill=body)
    p.draw.rectangle(p.xy(0, 0.62, 1, 0.7), fill=stripe)
    edges = np.linspace(0.2, 0.97, p.r.integers(5, 9) + 1)
    for u0, u1 in pairwise(edges):
        p.draw.rectangle(p.xy(u0 + 0.012, 0.12, u1 - 0.012, 0.5), fill=glass)
    p.draw.rectangle(p.xy(0.05, 0.12, 0.15, 0.86), fill=glass)
    for cu in (0.2, 0.8):
        p.disc(cu, 0.87, 0.13, tyre)


def truck(p: Pen) -> None:
    """Ribbed cargo box, a lower cab with a slanted window, chassis and three wheels."""
    box, cab, glass, tyre = p.paint(p.any()), p.paint(p.any()), p.paint(GLASS), p.paint(DARK)
    rib = p.paint(p.cols[box] * 0.7)
    p.draw.rectangle(p.xy(0, 0, 0.7, 0.8), fill=box)
    for u in np.arange(0.06, 0.68, 0.09):
        p.draw.line(p.xy(u, 0.03, u, 0.77), fill=rib, width=max(1, round(0.012 * p.w)))
    p.draw.polygon(p.xy(0.72, 0.24, 0.9, 0.24, 1, 0.5, 1, 0.82, 0.72, 0.82), fill=cab)
    p.draw.polygon(p.xy(0.75, 0.3, 0.88, 0.3, 0.96, 0.5, 0.75, 0.5), fill=glass)
    p.draw.rectangle(p.xy(0, 0.78, 1, 0.86), fill=tyre)
    for cu in (0.12, 0.55, 0.86):
        p.disc(cu, 0.85, 0.15, tyre)


def traffic_light(p: Pen) -> None:
    """Upright housing with three stacked lamps, one lit."""
    housing = p.paint(p.any() * 0.45)
    lit = p.r.integers(3)
    lamps = [p.paint(LAMPS[k] if k == lit else LAMPS[k] * 0.3) for k in range(3)]
    p.draw.rounded_rectangle(p.xy(0, 0, 1, 1), radius=0.2 * p.w, fill=housing)
    for k, fill in enumerate(lamps):
        p.disc(0.5, 0.18 + 0.32 * k, 0.36 * p.w / p.h, fill)


def _ngon(n: int, cu: float, cv: float, r: float, turn: float = 0.0) -> list[float]:
    """Vertices of a regular n-gon of radius r (unit coordinates), flat-topped for even n when turn = 0."""
    t = turn + np.pi / n + 2 * np.pi * np.arange(n) / n
    return np.column_stack([cu + r * np.cos(t), cv + r * np.sin(t)]).ravel().tolist()


def stop_sign(p: Pen) -> None:
    """Octagon with a light rim and a bar of letters."""
    face = p.paint(PALETTE[0] if p.r.random() < 0.6 else p.any())
    rim = p.paint(PALETTE[6])
    p.draw.polygon(p.xy(*_ngon(8, 0.5, 0.5, 0.54)), fill=rim)
    p.draw.polygon(p.xy(*_ngon(8, 0.5, 0.5, 0.46)), fill=face)
    for u in np.linspace(0.2, 0.68, 4):
        p.draw.rectangle(p.xy(u, 0.42, u + 0.09, 0.58), fill=rim)


# COCO category id → (name, supercategory, drawer, range of the box aspect w / h)
CATEGORIES: dict[int, tuple[str, str, Callable[[Pen], None], tuple[float, float]]] = {
    1: ("person", "person", person, (0.32, 0.45)),
    2: ("bicycle", "vehicle", bicycle, (1.5, 1.9)),
    3: ("car", "vehicle", car, (1.9, 2.5)),
    4: ("motorcycle", "vehicle", motorcycle, (1.3, 1.7)),
    6: ("bus", "vehicle", bus, (2.4, 3.2)),
    8: ("truck", "vehicle", truck, (2.0, 2.6)),
    10: ("traffic light", "outdoor", traffic_light, (0.3, 0.42)),
    13: ("stop sign", "outdoor", stop_sign, (0.9, 1.1)),
}


def clutter(p: Pen) -> None:
    """A shape that is no object: a disc, ring, n-gon, pole, window panel or blob of ellipses."""
    fill, kind = p.paint(p.any()), p.r.integers(6)
    if kind == 0:
        p.draw.ellipse(p.xy(0, 0, 1, 1), fill=fill)
    elif kind == 1:
        p.draw.ellipse(p.xy(0, 0, 1, 1), outline=fill, width=p.px(p.r.uniform(0.06, 0.2)))
    elif kind == 2:
        p.draw.polygon(p.xy(*_ngon(int(p.r.choice([3, 4, 5, 6, 7, 9])), 0.5, 0.5, 0.5, p.r.uniform(0, 1))), fill=fill)
    elif kind == 3:
        p.draw.rectangle(p.xy(0.35, 0, 0.65, 1) if p.h > p.w else p.xy(0, 0.35, 1, 0.65), fill=fill)
    elif kind == 4:
        p.draw.rectangle(p.xy(0, 0, 1, 1), fill=fill)
        glass, (nu, nv) = p.paint(GLASS), p.r.integers(2, 5, 2)
        for i in range(nu):
            for j in range(nv):
                p.draw.rectangle(p.xy((i + 0.2) / nu, (j + 0.2) / nv, (i + 0.8) / nu, (j + 0.8) / nv), fill=glass)
    else:
        for u, v, a, b in p.r.uniform((0, 0, 0.3, 0.3), (0.5, 0.5, 0.5, 0.5), (3, 4)):
            p.draw.ellipse(p.xy(u, v, u + a, v + b), fill=fill)
