"""One image of the embedded COCO-format data and its box annotations.

A textured background (two regions, colour blotches, far clutter) gets category sprites and near clutter sprites
painted front to back in a random depth order: each sprite fills only pixels no nearer sprite took, so its visible
part is known exactly. As in COCO, an annotation's box and area are those of the visible pixels; an object with
less than ``MIN_VISIBLE`` of its silhouette (or fewer than ``MIN_PIXELS`` px) visible is left out of the picture.
Sizes are log-uniform over a wide range relative to the image, so small (< 32² px), medium and large objects all
occur at 256 × 320. Lighting (gain, gradients, vignette, a cast shadow, colour cast), blur and sensor noise last.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageFilter

from benchmark.data._coco_shapes import CATEGORIES, PALETTE, Pen, clutter

MIN_VISIBLE, MIN_PIXELS, MAX_OBJECTS = 0.2, 16, 15


class Sprite(NamedTuple):
    """A drawn sprite placed at (x0, y0): part map uint8 [h, w], part colours [parts + 1, 3], COCO id or 0."""

    part: np.ndarray
    cols: np.ndarray
    x0: int
    y0: int
    category: int


def _lowfreq(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Smooth value noise in [0, 1] of shape (h, w), bilinearly upsampled from a coarse random grid."""
    grid = Image.fromarray(rng.random((cells, cells), dtype=np.float32))
    return np.asarray(grid.resize((w, h), Image.BILINEAR))


def _sprite(rng: np.random.Generator, draw: Callable[[Pen], None], aspect: float, size: float, h: int, w: int,
            category: int) -> Sprite:
    """Draw a sprite of box area size² and aspect w / h, fitted into the image and placed at most 25% outside."""
    bw, bh = size * aspect ** 0.5, size / aspect ** 0.5
    fit = min(1.0, 0.95 * w / bw, 0.95 * h / bh)
    grow = max(1.0, 3 / min(bw * fit, bh * fit))
    bw, bh = max(3, round(bw * fit * grow)), max(3, round(bh * fit * grow))
    pen = Pen(rng, bw, bh)
    draw(pen)
    part, cols = pen.result(flip=rng.random() < 0.5)
    x0, y0 = rng.uniform((-0.25 * bw, -0.25 * bh), (w - 0.75 * bw, h - 0.75 * bh)).round().astype(int)
    return Sprite(part, cols, int(x0), int(y0), category)


class _Canvas:
    """The image being painted, the pixels already taken by nearer sprites and a shared texture tile."""

    def __init__(self, rng: np.random.Generator, h: int, w: int) -> None:
        self.r, self.h, self.w = rng, h, w
        self.tile = rng.random((64, 64), dtype=np.float32) * 0.5 + _lowfreq(rng, 64, 64, 8)
        self.rgb = self.background()
        self.taken = np.zeros((h, w), bool)

    def texture(self, y0: int, y1: int, x0: int, x1: int, cells: float) -> np.ndarray:
        """The tile, randomly offset, sampled at `cells` texels per px over rows y0:y1 and columns x0:x1."""
        oy, ox = self.r.integers(64, size=2)
        rows = (np.arange(y0, y1) * cells + oy).astype(np.int32) & 63
        cols = (np.arange(x0, x1) * cells + ox).astype(np.int32) & 63
        return self.tile[np.ix_(rows, cols)]

    def background(self) -> np.ndarray:
        """Two regions split at a random horizon, colour blotches and fine texture, then large far clutter."""
        r, h, w = self.r, self.h, self.w
        top, ground, blotch = PALETTE[r.integers(len(PALETTE), size=3)] * r.uniform(0.6, 1.1, (3, 1)).astype(np.float32)
        v = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
        rgb = np.where(v < r.uniform(0.2, 0.8), top * (1.15 - 0.3 * v), ground * (0.85 + 0.3 * v))
        rgb = rgb + (blotch - rgb) * 0.6 * _lowfreq(r, h, w, r.integers(3, 8))[..., None] ** 2
        fine = self.texture(0, h, 0, w, r.uniform(0.3, 1.5)) + self.texture(0, h, 0, w, r.uniform(0.05, 0.2))
        rgb = rgb * (0.7 + 0.3 * fine)[..., None]
        for _ in range(r.integers(2, 7)):
            s = _sprite(r, clutter, r.uniform(0.3, 3), r.uniform(0.2, 0.8) * min(h, w), h, w, 0)
            y, x, sub = self.clip(s)
            far = rgb[y, x] * 0.5 + self.shade(s, y, x, sub) * 0.5
            rgb[y, x] = np.where((sub > 0)[..., None], far, rgb[y, x])
        return rgb.astype(np.float32)

    def clip(self, s: Sprite) -> tuple[slice, slice, np.ndarray]:
        """Image rows and columns a sprite covers and its part map cropped to them."""
        ys, xs = max(0, -s.y0), max(0, -s.x0)
        ye, xe = min(s.part.shape[0], self.h - s.y0), min(s.part.shape[1], self.w - s.x0)
        return slice(s.y0 + ys, s.y0 + max(ys, ye)), slice(s.x0 + xs, s.x0 + max(xs, xe)), s.part[ys:ye, xs:xe]

    def shade(self, s: Sprite, y: slice, x: slice, part: np.ndarray) -> np.ndarray:
        """Sprite colours over rows y and columns x (part: its clipped part map): colour × texture × top light."""
        tex = 1 + self.r.uniform(0.1, 0.5) * (self.texture(y.start, y.stop, x.start, x.stop, self.r.uniform(0.5, 2))
                                             - 0.75)
        v = (np.arange(y.start, y.stop, dtype=np.float32) - s.y0) / s.part.shape[0]
        light = 1 + self.r.uniform(0, 0.4) * (0.5 - v)[:, None]
        return s.cols[part] * (tex * light)[..., None]

    def paint(self, s: Sprite) -> dict | None:
        """Paint the sprite's pixels that no nearer sprite took; for a visible enough object, its annotation."""
        y, x, sub = self.clip(s)
        visible = (sub > 0) & ~self.taken[y, x]
        n, ann = int(visible.sum()), None
        if s.category:
            if n < max(MIN_PIXELS, MIN_VISIBLE * np.count_nonzero(s.part)):
                return None
            rows, cols = np.flatnonzero(visible.any(1)), np.flatnonzero(visible.any(0))
            box = [x.start + cols[0], y.start + rows[0], cols[-1] - cols[0] + 1, rows[-1] - rows[0] + 1]
            ann = {"category_id": s.category, "bbox": [float(b) for b in box], "area": float(n)}
        if n:
            self.rgb[y, x][visible] = self.shade(s, y, x, sub)[visible]
            self.taken[y, x] |= visible
        return ann


def _lighting(rng: np.random.Generator, rgb: np.ndarray) -> np.ndarray:
    """Gain, gradients, vignette, an optional cast shadow, colour cast, lens blur and sensor noise → uint8."""
    h, w = rgb.shape[:2]
    v, u = np.linspace(-0.5, 0.5, h, dtype=np.float32)[:, None], np.linspace(-0.5, 0.5, w, dtype=np.float32)[None]
    gu, gv = rng.uniform(-0.5, 0.5, 2)
    light = rng.uniform(0.65, 1.25) * (1 + gu * u + gv * v) * (1 - rng.uniform(0, 0.8) * (u * u + v * v))
    if rng.random() < 0.4:
        a, b, c = [*rng.normal(size=2).tolist(), rng.uniform(-0.3, 0.3)]
        light = light * np.where(a * u + b * v > c, np.float32(rng.uniform(0.5, 0.85)), np.float32(1))
    rgb = rgb * (light[..., None] * rng.uniform(0.9, 1.1, 3).astype(np.float32))
    img = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).filter(ImageFilter.BoxBlur(rng.uniform(0, 0.6)))
    noisy = np.asarray(img, np.float32) + rng.standard_normal((h, w, 1), dtype=np.float32) * rng.uniform(2, 8)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def render_coco_scene(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, list[dict]]:
    """RGB uint8 [H, W, 3] and 1–15 annotations ({category_id, bbox [x, y, w, h], area}), nearest first."""
    m, ids = min(height, width), list(CATEGORIES)
    lo, hi = np.log(max(6.0, 0.028 * m)), np.log(0.9 * m)
    anns: list[dict] = []
    while not anns:  # rarely, every object is hidden: draw the scene again
        canvas, sprites = _Canvas(rng, height, width), []
        for category in rng.choice(ids, rng.integers(1, MAX_OBJECTS + 1)).tolist():
            draw, aspect = CATEGORIES[category][2], rng.uniform(*CATEGORIES[category][3])
            sprites.append(_sprite(rng, draw, aspect, np.exp(rng.uniform(lo, hi)), height, width, category))
        for _ in range(rng.integers(3, 13)):
            sprites.append(_sprite(rng, clutter, rng.uniform(0.3, 3), np.exp(rng.uniform(lo, hi - 0.7)),
                                   height, width, 0))
        for i in np.argsort(rng.random(len(sprites))):
            ann = canvas.paint(sprites[i])
            if ann is not None:
                anns.append(ann)
    return _lighting(rng, canvas.rgb), anns
