"""Embedded default dataset: procedural street scenes written in the real Cityscapes on-disk layout.

Each scene ray-casts a street corridor (road with lane marks, crosswalks and tram rails; sidewalks; terrain;
walls; see-through fences; hedges; facades with window grids; a far skyline; sky), paints perspective-scaled
sprites far to near (cars, trucks, buses, trams, persons, riders, two-wheelers, poles, lights, signs, trees,
clutter), then adds haze, shadows, lighting and noise. Colours come from shared palettes, so classes are told
apart by shape, texture, scale against perspective and context: truck/bus/train by size and form (trams run on
rails), rider = a person on a two-wheeler, fence = bars with the background showing through, terrain lies flat
while vegetation stands up. Image i of a split draws from ``SeedSequence([seed, SPLIT_CODES[split], i])``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from cityscapesscripts.helpers.labels import name2label
from PIL import Image, ImageDraw, ImageFilter
from tqdm import tqdm

GENERATOR_VERSION: int = 1
TRAIN_CITIES = ("aachen", "bochum", "bremen", "cologne", "darmstadt", "dusseldorf", "erfurt", "hamburg",
                "hanover", "jena", "krefeld", "monchengladbach", "strasbourg", "stuttgart", "tubingen", "ulm",
                "weimar", "zurich")
VAL_CITIES = ("frankfurt", "lindau", "munster")
SPLIT_CODES = {"train": 0, "val": 1}  # benchmark.data.pretrain_set uses 2, so its scenes never repeat these
L = SimpleNamespace(**{name.replace(" ", "_"): lab.id for name, lab in name2label.items()})  # ids by name
_PAL = {  # overlapping material palettes (RGB): classes share them, so colour alone never names a class
    "grey": ((62, 62, 66), (88, 88, 92), (112, 110, 108), (138, 136, 132), (165, 162, 156), (195, 192, 186)),
    "warm": ((150, 110, 82), (172, 142, 104), (196, 176, 138), (138, 72, 58), (118, 92, 72), (214, 196, 160)),
    "cool": ((62, 82, 112), (92, 112, 142), (52, 62, 72), (132, 152, 172)),
    "green": ((58, 88, 40), (78, 108, 50), (98, 118, 62), (68, 78, 46), (118, 128, 72), (138, 118, 58)),
    "vivid": ((172, 32, 32), (32, 62, 152), (205, 205, 205), (22, 22, 26), (192, 162, 42), (42, 112, 62),
              (232, 232, 236), (122, 22, 62))}
_CLOTH, _DARK = ("vivid", "grey", "warm", "cool", "green"), (26, 26, 30)
_UNIT = {n: [(np.cos(t), np.sin(t)) for t in np.pi / 2 + np.linspace(0, 2 * np.pi, n, endpoint=False)]
         for n in (3, 4, 8, 12)}
_CYCLE = {  # wheel radius, wheel offset; rider hip, shoulder, head, hand, knee, foot (side view, m); head radius
    False: (0.34, 0.52, (-0.15, 0.95), (0.12, 1.45), (0.2, 1.62), (0.45, 1.02), (0.12, 0.62), (0.02, 0.3), 0.11),
    True: (0.32, 0.7, (-0.2, 0.95), (0.05, 1.5), (0.12, 1.68), (0.45, 1.1), (0.2, 0.75), (0.05, 0.4), 0.14)}


@dataclass(frozen=True)
class SyntheticSpec:
    """Size and seed of the embedded dataset; its name keys the cache directory."""

    height: int = 128
    width: int = 256
    n_train: int = 1500
    n_val: int = 200
    seed: int = 0

    @property
    def name(self) -> str:
        return (f"synth-cityscapes-v{GENERATOR_VERSION}-{self.height}x{self.width}-{self.n_train}-{self.n_val}"
                f"-s{self.seed}")


def _lowfreq(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Smooth value noise in [0, 1] of shape (h, w), bilinearly upsampled from a coarse random grid."""
    grid = Image.fromarray(rng.random((cells, 2 * cells), dtype=np.float32))
    return np.asarray(grid.resize((w, h), Image.BILINEAR))


@lru_cache
def _palette(pals: tuple[str, ...]) -> np.ndarray:
    return np.array([c for p in pals for c in _PAL[p]], np.float32)


def _frac(a: np.ndarray) -> np.ndarray:
    """Phase in [0, 1) of a periodic pattern (a faster float modulo)."""
    return a - np.floor(a)


def _rect(a0: float, a1: float, b0: float, b1: float) -> list[tuple[float, float]]:
    return [(a0, b0), (a1, b0), (a1, b1), (a0, b1)]


def _circle(cu: float, cv: float, r: float, n: int = 12) -> list[tuple[float, float]]:
    return [(cu + r * c, cv + r * s) for c, s in _UNIT[n]]


class _Scene:
    """One street view from a pinhole camera at height ch (x right, y up, z forward; metres; flat pixels)."""

    def __init__(self, rng: np.random.Generator, h: int, w: int) -> None:
        r = self.r = rng
        self.h, self.w, self.shadows, n = h, w, [], h * w
        self.f, self.vx, self.yh = w * r.uniform(0.85, 1.1), w * r.uniform(0.35, 0.65), h * r.uniform(0.36, 0.5)
        self.ch, self.zfar, self.mpx = r.uniform(1.3, 1.7), r.uniform(60, 160), max(1.0, 3.0 * w / 256)
        self.dx = np.tile((np.arange(w, dtype=np.float32) + 0.5 - self.vx) / self.f, h)
        self.dy = np.repeat((np.arange(h, dtype=np.float32) + 0.5 - self.yh) / self.f, w)
        self.rgb, self.lab = np.zeros((n, 3), np.float32), np.full(n, L.sky, np.uint8)
        self.z = np.full(n, np.inf, np.float32)
        self.tile = (r.random((64, 64), dtype=np.float32) + 2 * _lowfreq(r, 64, 64, 8) - 1.5).ravel()
        # per side (0 left, 1 right): road edge |x|, sidewalk, terrain strip (a verge lies before the sidewalk)
        self.edge, self.sw = r.uniform((3.0, 1.8), (10.0, 6.0)).astype(np.float32), r.uniform(1.5, 4.5, 2)
        self.verge = r.random(2) < 0.35
        self.tw = np.where(self.verge | (r.random(2) < 0.4), r.uniform(0.8, 4.0, 2), 0.0)
        self.near = self.edge + self.sw + self.tw  # walls, fences, hedges
        self.bld = self.near + np.where(r.random(2) < 0.5, 0.3, r.uniform(1.0, 8.0, 2))  # facades, tree rows
        self.lw = r.uniform(2.8, 3.6)
        self.lanes = np.arange(-self.edge[0] + self.lw / 2, self.edge[1] - self.lw / 2 + 0.01, self.lw)
        self.rails = self.lanes[r.integers(len(self.lanes))] if r.random() < 0.3 else None
        self.zc = r.uniform(7, 30) if r.random() < 0.35 else None  # crosswalk
        self.sun, self.shade = r.uniform(-1.5, 1.5), (r.uniform(0.45, 0.8) if r.random() < 0.6 else 1.0)

    def cols(self, n: int, *pals: str, jit: float = 14.0) -> np.ndarray:
        opts = _palette(pals)
        return opts[(self.r.random(n) * len(opts)).astype(int)] + self.r.standard_normal((n, 3), np.float32) * jit

    def col(self, *pals: str, jit: float = 14.0) -> np.ndarray:
        return self.cols(1, *pals, jit=jit)[0]

    def tex(self, a: np.ndarray, b: np.ndarray, s) -> np.ndarray:
        """World-anchored texture: a 64x64 noise tile sampled at (a, b) metres with s cells per metre."""
        return self.tile[((a * s).astype(np.int32) & 63) << 6 | ((b * s).astype(np.int32) & 63)]

    def thick(self, w: float, z: float) -> float:
        """Width in metres, widened so thin structures stay >= 3 px (at 256 px wide) at depth z."""
        return max(w, self.mpx * z / self.f)

    def put(self, idx, z, lab, rgb: np.ndarray) -> None:
        self.z[idx], self.lab[idx], self.rgb[idx] = z, lab, rgb

    def ground(self) -> None:
        """Sky gradient with clouds, then road (marks, crosswalk, rails), sidewalks (tiles, kerb) and terrain."""
        r, sky = self.r, self.col("cool" if self.r.random() < 0.7 else "grey", jit=10)
        g0 = int(np.argmax(self.dy > 1e-3))  # first pixel below the horizon: the ground is the flat tail g0:
        t = np.clip(np.arange(g0 // self.w, dtype=np.float32) / max(self.yh, 1.0), 0, 1)[:, None]
        self.rgb[:g0] = np.repeat(sky * (1 - t) + np.maximum(self.col("cool", "grey"), sky) * t, self.w, 0)
        cloud = _lowfreq(r, g0 // self.w, self.w, 4).ravel() - r.uniform(0.5, 0.9)
        self.rgb[:g0] += (self.col("grey") - self.rgb[:g0]) * np.clip(2.5 * cloud, 0, 1)[:, None]
        g = slice(g0, None)
        z = self.ch / self.dy[g]
        x = self.dx[g] * z
        s, tl = (x > 0).astype(int), 1 / r.uniform(0.3, 0.6)  # tiles per metre
        o, tw, sw = np.abs(x) - self.edge[s], self.tw[s], self.sw[s]  # o: distance outward from the road edge
        walk = np.where(self.verge[s], (o >= tw) & (o < tw + sw), (o >= 0) & (o < sw))
        cls, t1, t2 = np.where(walk, 1, np.where(o >= 0, 2, 0)), self.tex(x, z, 6), self.tex(x + 40, z, 0.3)
        curb, joint = walk & (o - tw * self.verge[s] < 0.2), (_frac(x * tl) < 0.05 * tl) | (_frac(z * tl) < 0.05 * tl)
        k = np.choose(cls, [1 + 0.05 * t1 + 0.08 * t2, (1 + 0.05 * t1) * np.where(curb, 1.2, 1 - 0.2 * joint),
                            1 + 0.25 * self.tex(x, z, 14)])
        base = np.stack([self.col("grey") * 0.8, self.col("grey", "warm"), self.col("green"),
                         self.col("green", "warm"), self.col("grey", "vivid", jit=6) * 0.3 + 160,  # paint
                         self.col("grey") * 1.3])  # rail steel
        pick, lab = cls + ((cls == 2) & (t2 < 0.1)), np.array([L.road, L.sidewalk, L.terrain], np.uint8)[cls]
        lane = np.abs(_frac((x - self.lanes[0]) / self.lw) - 0.5) * self.lw < 0.08  # lines between lanes
        mark = (np.abs(o + 0.3) < 0.07) | (lane & (x < self.lanes[-1]) & (_frac(z / 9) < 0.39))
        if self.zc is not None:
            mark |= (z > self.zc) & (z < self.zc + 4) & (_frac(x) < 0.5)
        pick[(cls == 0) & mark] = 4
        if self.rails is not None:
            d = np.abs(x - self.rails)
            lab[(cls == 0) & (d < 0.9)], pick[(cls == 0) & (np.abs(d - 0.72) < 0.05)] = L.rail_track, 5
        shaded = x * np.sign(self.sun) > self.edge[int(self.sun > 0)] - abs(self.sun) * 3  # buildings' shadow
        self.put(g, z, lab, base[pick] * (k * np.where(shaded, self.shade, 1.0)).astype(np.float32)[:, None])

    def segs(self, a0: float, a1: float, probs: dict[int, float]) -> tuple[np.ndarray, np.ndarray]:
        """Consecutive segments of 5-25 m from a0 to a1: starts and kinds (0 = empty, also after a1)."""
        n = int((a1 - a0) / 5) + 2
        starts = a0 + np.concatenate([[0.0], np.cumsum(self.r.uniform(5, 25, n - 1))])
        kinds = self.r.choice(list(probs), n, p=list(probs.values()))
        kinds[(starts >= a1) | (np.arange(n) == n - 1)] = 0
        return starts, kinds

    def planes(self, near: bool) -> None:
        """Vertical surfaces in one pass: segments along the planes x = -p0 and x = p1 (positions u = z, the
        right side offset by 1e4) and, unless near, a far skyline at z = zfar (u = 2e4 + x). Kinds: 1 building
        (window grid, shop fronts), 2 tree row, 3 wall (blocks), 4 fence (see-through), 5 hedge."""
        r, (p0, p1), right = self.r, (self.near if near else self.bld).astype(np.float32), self.dx > 0
        with np.errstate(divide="ignore"):
            z = np.abs(np.where(right, p1, p0) / self.dx)
        u, spans = z + 1e4 * right, [(0.0, self.zfar), (1e4, 1e4 + self.zfar)]
        if not near:
            far = z > self.zfar
            z, u = np.where(far, self.zfar, z), np.where(far, 2e4 + self.dx * self.zfar, u)
            spans.append((2e4 + float(self.dx[0]) * self.zfar - 1, 2e4 + float(self.dx[-1]) * self.zfar + 1))
        probs = {0: 0.35, 3: 0.25, 4: 0.25, 5: 0.15} if near else {0: 0.15, 1: 0.6, 2: 0.25}
        starts, kinds = (np.concatenate(v) for v in zip(*(self.segs(a0, a1, probs) for a0, a1 in spans), strict=True))
        n = len(kinds)
        tops = np.choose(kinds, [np.zeros(n), *(r.uniform(lo, hi, n) for lo, hi in (
            (6, 30), (4, 12), (0.8, 3), (1, 2.5), (0.8, 2.2)))])
        y = self.ch - self.dy * z
        with np.errstate(invalid="ignore"):
            c = np.flatnonzero((y >= 0) & (y <= tops.max()) & (z < self.z))
        i = np.searchsorted(starts, u[c], "right") - 1
        hit = (kinds[i] > 0) & (y[c] <= tops[i])
        c, i = c[hit], i[hit]
        u, z, y, k, top = u[c], z[c], y[c], kinds[i], tops[i]
        per, fh, off, bh, bl, sp, bw = (r.uniform(lo, hi, n).astype(np.float32)[i] for lo, hi in (
            (2.2, 4), (2.8, 3.6), (0, 4), (0.2, 0.6), (0.4, 1.2), (0.12, 0.3), (0.03, 0.06)))
        v, ph, veg = _frac(y / fh) * fh, _frac((u + off) / per), (k == 2) | (k == 5)
        win = (k == 1) & (((ph < 0.5) & (v > 0.9) & (v < 2.2) & (y > fh) & (y < top - 1)) | (
            (r.random(n) < 0.5)[i] & (ph < 0.8) & (y > 0.3) & (y < 2.6)))  # windows, shop fronts
        row = (y / bh).astype(np.int32) & 1  # bricks: alternate rows offset by half a block
        joint = (k == 3) & ((_frac(y / bh) * bh < 0.035) | (_frac((u + row * bl / 2) / bl) * bl < 0.035))
        base = np.concatenate([self.cols(n, "grey", "warm", "cool"), self.cols(n, "green"),
                               self.cols(n, "cool", "grey") * 0.5, self.cols(n, "grey", "green", "warm")])
        lit = np.where((u < 2e4) & (right[c] == (self.sun > 0)), self.shade, 1.0)  # the street side in shadow
        shade = (1 + 0.05 * self.tex(u, y, 5) - 0.15 * joint - 0.2 * (y > top - 0.3) * (k == 1)
                 + 0.12 * (y > top - 0.12) * (k == 3))
        rgb = base[i + n * np.where(veg, 1, np.where(win, 2, 3 * (k == 4)))] * (lit * np.where(
            veg, 0.7 + 0.35 * self.tex(u, y, 2.5), shade)).astype(np.float32)[:, None]
        style = r.integers(0, 3, n)[i]  # fences: bars, mesh or planks, blended by coverage when sub-pixel
        duty, fu, footprint = bw / sp, _frac(u / sp), z**2 / (np.where(right[c], p1, p0) * self.f)  # m per px
        bars = np.choose(style, [fu < duty, (_frac((u + y) / sp) < duty) | (_frac((u - y) / sp) < duty), fu > duty])
        alpha = np.where(footprint > sp, np.choose(style, [duty, 2 * duty, 1 - duty]), bars)
        f = (k == 4) & (np.abs(y - top + 0.06) > 0.06) & (np.abs(y - 0.25) > 0.05)  # see-through below the rails
        rgb[f] = alpha[f, None] * rgb[f] + (1 - alpha[f, None]) * self.rgb[c[f]]
        amp = np.where(k == 2, 2.5, 0.35)  # ragged tops of vegetation
        keep = ~veg | (y < top - amp + amp * (self.tex(u, u * 0, np.where(k == 2, 0.8, 3.0)) + 1))
        lab = np.array([0, L.building, L.vegetation, L.wall, L.fence, L.vegetation], np.uint8)[k]
        self.put(c[keep], z[keep], lab[keep], rgb[keep])

    def proj(self, p: np.ndarray) -> np.ndarray:
        z = p[:, 2]
        return np.column_stack([self.vx + self.f * p[:, 0] / z, self.yh + self.f * (self.ch - p[:, 1]) / z])

    def paint(self, sprites: list[tuple[float, bool, list]]) -> None:
        """Paint sprites in order (far to near) on full-size canvases and merge them into the scene. A primitive
        is (world points, colour or None = label only, label id, line width in metres or 0 = polygon)."""
        prims = [(pr, z) for z, _, prs in sprites for pr in prs]
        if not prims:
            return
        pts = self.proj(np.array([pt for (p, *_), _ in prims for pt in p]))
        pts = np.split(pts, np.cumsum([len(pr[0]) for pr, _ in prims])[:-1])
        fills = np.clip([_DARK if c is None else c for (_, c, _, _), _ in prims], 0, 255).astype(int).tolist()
        rgba, key = Image.new("RGBA", (self.w, self.h)), Image.new("I", (self.w, self.h), -1)  # depth cm, label
        dc, dk = ImageDraw.Draw(rgba), ImageDraw.Draw(key)
        for xy, ((p, c, lid, lw), z), fill in zip(pts, prims, fills, strict=True):
            xy, wpx = xy.ravel().tolist(), max(1, round(lw * self.f / p[0][2])) if lw else 0
            for dr, ink in [(dk, int(z * 100) * 256 + int(lid))] + ([] if c is None else [(dc, (*fill, 255))]):
                dr.line(xy, fill=ink, width=wpx, joint="curve") if wpx else dr.polygon(xy, fill=ink)
        a, k = np.asarray(rgba).reshape(-1, 4), np.asarray(key).ravel()
        mc, mk = a[:, 3] > 0, k >= 0
        self.rgb[mc], self.lab[mk], self.z[mk] = a[mc, :3], k[mk] & 255, (k[mk] >> 8) / 100

    def vehicle(self, kind: int, x: float, z: float) -> list:
        """A box vehicle seen from behind (or in front, when oncoming), plus its side face when offset."""
        r = self.r
        w, h, ln = {L.car: (r.uniform(1.6, 1.9), r.uniform(1.35, 1.6), r.uniform(3.8, 4.8)),
                    L.truck: (2.45, r.uniform(2.8, 3.8), r.uniform(6, 10)),
                    L.bus: (2.5, r.uniform(2.9, 3.3), r.uniform(10, 13)),
                    L.train: (2.6, r.uniform(3.3, 3.8), r.uniform(25, 40))}[kind]
        c, g, hw, dk = self.col("vivid", "grey"), self.col("cool", "grey") * 0.35, w / 2, np.array(_DARK)
        s, tram = c * 0.75, kind == L.train
        if kind == L.car:  # side: (z along the vehicle, y) points; front: (x across, y) points
            side = [(_rect(0, ln, 0.25, 0.9), s), ([(0.8, 0.9), (ln - 1, 0.9), (ln - 1.5, h), (1.2, h)], s),
                    ([(1, 0.95), (ln - 1.15, 0.95), (ln - 1.55, h - 0.07), (1.3, h - 0.07)], g)]
            front = [(_rect(-hw, hw, 0.25, 0.9), c), (_rect(0.12 - hw, hw - 0.12, 0.9, h), c),
                     (_rect(0.2 - hw, hw - 0.2, 0.95, h - 0.07), g)]
            wheels = (0.32, 0.8, ln - 0.8)
        elif kind == L.truck:  # plain cargo box, cab at the far end
            side = [(_rect(0, ln, 0.4, 0.9), dk), (_rect(0, ln - 2.3, 0.9, h), s),
                    (_rect(ln - 2.3, ln, 0.5, 0.8 * h), self.col("vivid", "grey") * 0.75),
                    (_rect(ln - 1.3, ln - 0.2, 0.5 * h, 0.75 * h), g)]
            front = [(_rect(-hw, hw, 0.35, 0.9), dk), (_rect(-hw, hw, 0.9, h), c),
                     (_rect(-0.03, 0.03, 0.95, h), c * 0.6)]
            wheels = (0.5, 1.2, ln - 1.4)
        else:  # bus or tram: window band with pillars; trams add a skirt, doors and a pantograph
            side = [(_rect(0, ln, 0.3, h), s), (_rect(0.4, ln - 0.4, 1.25, h - 0.4), g)]
            side += [(_rect(dz, dz + 0.15, 1.25, h - 0.4), s) for dz in np.arange(1.8, ln - 0.5, 1.7)]
            if tram:
                side += [(_rect(0, ln, 0.3, 0.75), dk)]
                side += [(_rect(dz, dz + 1.3, 0.45, h - 0.45), g * 1.5) for dz in np.arange(3.0, ln - 2, 6.5)]
            front = [(_rect(-hw, hw, 0.3, h), c), (_rect(0.1 - hw, hw - 0.1, 1.3 if tram else h - 1.3, h - 0.35), g)]
            wheels = (0,) if tram else (0.5, 2.2, ln - 3)
        lamp = (235, 235, 215) if x < -self.lw / 2 else (225, 40, 30)  # oncoming traffic shows headlights
        side += [(_circle(dz, wheels[0], wheels[0]), dk) for dz in wheels[1:]]
        front += [(_rect(u * (hw - a), u * (hw - 0.05), b0, b1), col) for u in (-1, 1)
                  for a, b0, b1, col in ((0.35, 0, 0.35, dk), (0.3, 0.6, 0.75, lamp))]
        xs = x - hw if x > hw else x + hw if x < -hw else None
        out = [([(xs, y, z + dz) for dz, y in p], col, kind, 0) for p, col in (side if xs is not None else [])]
        out += [([(x + dx, y, z) for dx, y in p], col, kind, 0) for p, col in front]
        if tram:
            out.append(([(x - 0.6, h, z + 3), (x, h + 0.9, z + 3), (x + 0.6, h, z + 3)], dk, kind, 0.05))
        sx = self.sun * h * 0.5
        self.shadows.append([(x - hw, 0, z - 0.2), (x + hw, 0, z - 0.2), (x + hw + sx, 0, z + ln),
                             (x - hw + sx, 0, z + ln)])
        return out

    def person(self, x: float, z: float) -> list:
        """A pedestrian (sometimes a child) in shared-palette clothes with a walking stride."""
        r = self.r
        hp = r.uniform(1.0, 1.3) if r.random() < 0.12 else r.uniform(1.55, 1.95)
        up, lo = self.col(*_CLOTH), self.col(*_CLOTH)
        st, sw, coat = r.uniform((-0.07, -0.05, 0.3), (0.07, 0.05, 0.47))  # stride, arm swing, coat length
        leg = [(-0.09, 0.5), (-0.01, 0.5), (st - 0.02, 0), (st - 0.09, 0)]
        arm = [(-0.17, 0.8), (-0.12, 0.8), (sw - 0.13, 0.47), (sw - 0.18, 0.47)]
        parts = [(leg, lo), ([(-u, v) for u, v in leg], lo), (_rect(-0.12, 0.12, coat, 0.82), up), (arm, up),
                 ([(-u, v) for u, v in arm], up), (_circle(0, 0.9, 0.065), self.col("warm") * 1.1),
                 (_rect(-0.065, 0.065, 0.92, 0.965), self.col("grey"))]
        self.shadows.append([(x - 0.2, 0, z - 0.1), (x + 0.2, 0, z + 0.1), (x + 0.2 + self.sun * hp, 0, z + 0.4)])
        return [([(x + u * hp, v * hp, z) for u, v in uv], c, L.person, 0) for uv, c in parts]

    def cycle(self, x: float, z: float, motor: bool, rider: bool) -> list:
        """A bicycle (see-through wheels) or motorcycle in side view, optionally ridden (label rider)."""
        lid, d, c = L.motorcycle if motor else L.bicycle, self.r.choice((-1.0, 1.0)), self.col("vivid", "grey")
        wr, wx, hip, sh, hd, hand, knee, foot, hr = _CYCLE[motor]
        parts = [(_circle(cu, wr, wr), _DARK if motor else None, lid, 0) for cu in (-wx, wx)]
        if motor:
            parts += [([(-0.75, 0.55), (-0.2, 0.9), (0.35, 0.95), (0.6, 0.75), (0.55, 0.45), (-0.3, 0.35)], c, lid, 0),
                      ([(wx, wr), (0.5, 1.05)], _DARK, lid, 0.06)]
        else:  # tyres, then the frame
            parts += [([*_circle(cu, wr, wr), (cu, 2 * wr)], _DARK, lid, 0.05) for cu in (-wx, wx)]
            parts += [([(-wx, wr), (0, 0.3), (-0.15, 0.85), (-wx, wr)], c, lid, 0.05),
                      ([(-0.15, 0.85), (0.42, 0.88), (wx, wr), (0, 0.3), (0.42, 0.88), (0.45, 1.02)], c, lid, 0.05)]
        if rider:
            up, lo = self.col(*_CLOTH), self.col(*_CLOTH)
            parts += [([hip, sh], up, L.rider, 0.3), ([sh, hand], up, L.rider, 0.09),
                      ([hip, knee, foot], lo, L.rider, 0.14), (_circle(*hd, hr), self.col("warm", "vivid"), L.rider, 0)]
        return [([(x + d * u, v, z) for u, v in uv], col, lab, lw) for uv, col, lab, lw in parts]

    def pole(self, x: float, z: float, s: int, kind: str) -> list:
        """A plain pole, street lamp, traffic light (maybe on an arm over the road) or sign post."""
        r, inward = self.r, 1 - 2 * s
        pw, c, bw = self.thick(r.uniform(0.12, 0.3), z), self.col("grey", "green") * 0.8, self.thick(0.35, z)
        hgt = r.uniform(*{"lamp": (5, 9), "pole": (3, 7), "light": (2.8, 4.5), "sign": (2.2, 3.2)}[kind])
        bh, ax = max(1.0, 2.8 * bw), inward * r.uniform(2, 5) if kind == "light" and r.random() < 0.3 else 0.0
        parts = [(_rect(-pw / 2, pw / 2, 0, hgt), c, L.pole, 0)]
        if kind == "lamp":
            parts += [([(0, hgt - 0.2), (inward * 1.4, hgt + 0.2)], c, L.pole, pw * 0.7),
                      (_rect(inward * 1.1, inward * 1.7, hgt, hgt + 0.25), c, L.pole, 0)]
        if kind == "light":  # seen from the front: three lamps, one lit; from behind: a plain box
            lit, box = r.integers(3) if r.random() < 0.75 else -1, self.col("grey", "vivid") * 0.5
            parts += [([(0, hgt), (ax, hgt)], c, L.pole, pw * 0.7)] if ax else []
            parts += [(_rect(ax - bw / 2, ax + bw / 2, hgt - bh, hgt), box, L.traffic_light, 0)]
            lamps = [_DARK if k != lit else ((230, 40, 30), (240, 170, 20), (40, 220, 90))[k] for k in range(3)]
            parts += [(_circle(ax, hgt - bh * (k + 0.5) / 3, bw * 0.3, 8), lamp, L.traffic_light, 0)
                      for k, lamp in enumerate(lamps) if lit >= 0]
        if kind == "sign" or (kind == "light" and r.random() < 0.3):  # circle, triangle, diamond or square plate
            sz = max(r.uniform(0.55, 0.9), 1.5 * self.mpx * z / self.f)
            cv = hgt + sz / 2 if kind == "sign" else hgt - 1.3 - sz / 2
            shape = [*(_circle(0, cv, sz / 2, n) for n in (12, 3, 4)), _rect(-sz / 2, sz / 2, cv - sz / 2, cv + sz / 2)]
            shape, back = shape[r.integers(4)], r.random() < 0.2  # seen from behind: a plain grey plate
            parts += [(shape, self.col("grey" if back else "vivid"), L.traffic_sign, 0)] + ([] if back else [
                ([(0.7 * u, cv + 0.7 * (v - cv)) for u, v in shape], self.col("vivid"), L.traffic_sign, 0)])
        return [([(x + u, v, z) for u, v in uv], col, lab, lw) for uv, col, lab, lw in parts]

    def tree(self, x: float, z: float) -> list:
        """A trunk and a blotchy crown of leaf clusters (all vegetation, as in Cityscapes)."""
        r = self.r
        th, rad, base = r.uniform(1.8, 3.5), r.uniform(1.2, 3.0), self.col("green")
        tw = self.thick(r.uniform(0.2, 0.4), z)
        parts = [(_rect(-tw / 2, tw / 2, 0, th + rad), self.col("warm", "grey") * 0.6)]
        parts += [(_circle(r.normal(0, rad / 2), th + rad + r.normal(0, rad * 0.4), rad * r.uniform(0.35, 0.65), 8),
                   base * r.uniform(0.65, 1.25)) for _ in range(r.integers(6, 12))]
        return [([(x + u, v, z) for u, v in uv], col, L.vegetation, 0) for uv, col in parts]

    def populate(self) -> list[tuple[float, bool, list]]:
        """All sprites as (depth, behind the near planes?, primitives)."""
        r, out, taken, sgn, zmax = self.r, [], [], (-1, 1), min(self.zfar - 5, 80)

        def walk_x(s: int) -> float:
            lo = self.edge[s] + self.tw[s] * self.verge[s]
            return sgn[s] * (lo + r.uniform(0.3, max(0.4, self.sw[s] - 0.3)))

        cars = [(L.train, self.rails, r.uniform(8, 40))] if self.rails is not None and r.random() < 0.75 else []
        for _ in range(r.integers(3, 11)):
            s, parked = r.integers(2), r.random() < 0.45  # parked at the kerb: mostly cars
            if parked:
                kind, x, z0 = L.car if r.random() < 0.85 else L.truck, sgn[s] * (self.edge[s] - 1.3), 4
            else:  # in a lane; the one ahead of us keeps some distance
                kind, x = ((L.car,) * 4 + (L.truck, L.bus))[r.integers(6)], r.choice(self.lanes)
                z0 = 10 if abs(x) < self.lw / 2 else 6
            cars.append((kind, x, r.uniform(z0, zmax)))
        for kind, x, z in cars:
            ln = {L.car: 5, L.truck: 10, L.bus: 13, L.train: 40}[kind]
            if not any(abs(x - xo) < 2.4 and z < z1 + 1 and z + ln + 1 > z0 for xo, z0, z1 in taken):
                taken.append((x, z, z + ln))
                out.append((z, False, self.vehicle(kind, x, z)))
        for z in r.uniform(3.5, 45, r.integers(2, 11)):
            out.append((z, False, self.person(walk_x(r.integers(2)), z)))
        for z in self.zc + r.uniform(0.5, 3.5, r.integers(0, 4)) if self.zc is not None else ():  # crossing
            out.append((z, False, self.person(r.uniform(-self.edge[0], self.edge[1]), z)))
        for z in r.uniform(6, 40, r.integers(0, 4)):  # ridden two-wheelers near the kerb
            s = r.integers(2)
            out.append((z, False, self.cycle(sgn[s] * (self.edge[s] - r.uniform(0.6, 2.5)), z, r.random() < 0.4, True)))
        for z in r.uniform(4, 35, r.integers(0, 4)):  # parked two-wheelers, sometimes with a person beside
            x = walk_x(r.integers(2))
            out.append((z, False, self.cycle(x, z, r.random() < 0.35, False)))
            if r.random() < 0.35:
                out.append((z - 0.3, False, self.person(x + r.uniform(-0.6, 0.6), z - 0.3)))
        for s in (0, 1):
            at = r.uniform(3, 12)
            while at < zmax:
                x = sgn[s] * (self.edge[s] + r.uniform(0.3, 0.7) if r.random() < 0.7 else self.near[s] - 0.3)
                u = r.random()
                kind = ("pole", "lamp", "sign", "light")[(u > 0.2) + (u > 0.45) + (u > 0.78)]
                out.append((at, False, self.pole(x, at, s, kind)))
                at += r.uniform(6, 16)
            if self.zc is not None:
                out.append((self.zc, False, self.pole(sgn[s] * (self.edge[s] + 0.5), self.zc, s, "light")))
            behind, at = self.bld[s] - self.near[s] > 2 and r.random() < 0.5, r.uniform(3, 15)
            while r.random() < 0.65 and at < zmax:  # a row of trees on the sidewalk or behind the wall
                x = r.uniform(self.near[s] + 0.8, self.bld[s] - 0.8) if behind else self.near[s] - r.uniform(0.5, 1.5)
                out.append((at, behind, self.tree(sgn[s] * x, at)))
                at += r.uniform(6, 14)
        for z in r.uniform(4, 40, r.integers(0, 5)):  # clutter (bins, bollards): "static", ignored in training
            x, (w, h) = walk_x(r.integers(2)), r.uniform((0.5, 0.6), (1.2, 1.2)) if r.random() < 0.6 else (0.2, 0.9)
            box = [(x + u, v, z) for u, v in _rect(-w / 2, w / 2, 0, h)]
            out.append((z, False, [(box, self.col("grey", "green", "vivid"), L.static, 0)]))
        return out

    def mask(self, polys: list) -> np.ndarray:
        """Flat boolean mask of pixel-space polygons."""
        im = Image.new("L", (self.w, self.h))
        for p in polys:
            ImageDraw.Draw(im).polygon(np.ravel(p).tolist(), fill=1)
        return np.asarray(im).ravel() > 0

    def render(self) -> tuple[np.ndarray, np.ndarray]:
        r, h, w = self.r, self.h, self.w
        self.ground()
        self.planes(near=False)
        sprites = sorted(self.populate(), key=lambda t: -t[0])
        if self.shade < 1 and self.shadows:
            m = self.mask([self.proj(np.array(p)) for p in self.shadows])
            self.rgb[m & np.isin(self.lab, (L.road, L.sidewalk, L.terrain, L.rail_track))] *= self.shade
        self.paint([t for t in sprites if t[1]])  # trees behind walls and fences
        self.planes(near=True)
        self.paint([t for t in sprites if not t[1]])
        haze = np.where(np.isfinite(self.z), 1 - np.exp(-self.z / r.uniform(150, 600)), 0)[:, None]
        self.rgb = self.rgb * (1 - haze) + (self.col("grey") * 0.5 + 110) * haze
        if r.random() < 0.7:  # ego vehicle bonnet: label "ego vehicle", ignored
            eh, x = h * r.uniform(0.05, 0.1), np.linspace(0, w, 17)
            m = self.mask([[*np.column_stack([x, h - eh * (1 - 0.6 * (2 * x / w - 1) ** 2)]).ravel(), w, h, 0, h]])
            self.rgb[m], self.lab[m] = self.col("vivid", "grey") * 0.5, L.ego_vehicle
        v = (np.arange(256) / 255)[None] ** r.uniform(0.8, 1.25)  # lighting: gamma, contrast, brightness, cast
        lut = (v - 0.5) * r.uniform(0.75, 1.2) + 0.5 + r.uniform(-0.12, 0.1)
        lut = (np.clip(lut * r.uniform(0.93, 1.07, (3, 1)), 0, 1) * 255).astype(int).ravel().tolist()
        img = Image.fromarray(np.clip(self.rgb, 0, 255).astype(np.uint8).reshape(h, w, 3)).point(lut)
        img = np.asarray(img.filter(ImageFilter.BoxBlur(r.uniform(0.1, 0.5))), np.float32)  # lens blur
        img = img + r.standard_normal((h, w, 1), dtype=np.float32) * r.uniform(2, 7)  # sensor noise
        return np.clip(img, 0, 255).astype(np.uint8), self.lab.reshape(h, w)


def render_scene(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """One street view: RGB uint8 [H, W, 3] and Cityscapes labelIds uint8 [H, W]."""
    return _Scene(rng, height, width).render()


def scene_rng(seed: int, split_code: int, index: int) -> np.random.Generator:
    """The generator of image `index` of a split (SPLIT_CODES; 2 = the pretraining set)."""
    return np.random.default_rng(np.random.SeedSequence([seed, split_code, index]))


def image_stem(split: str, index: int) -> tuple[str, str]:
    """(city, file stem): cities in turn, a per-city sequence number, frame 19 as in Cityscapes."""
    cities = TRAIN_CITIES if split == "train" else VAL_CITIES
    city = cities[index % len(cities)]
    return city, f"{city}_{index // len(cities):06d}_000019"


def ensure_synthetic_cityscapes(spec: SyntheticSpec, cache_dir: Path, progress: bool = True) -> Path:
    """Generate the dataset once into <cache_dir>/data/<spec.name> (atomically) and return that path."""
    target = Path(cache_dir) / "data" / spec.name
    if (target / "manifest.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{spec.name}.tmp-", dir=target.parent))  # all a killed run leaves
    try:
        jobs = [(split, i) for split, n in (("train", spec.n_train), ("val", spec.n_val)) for i in range(n)]
        for split, i in tqdm(jobs, desc=f"generating {spec.name}", unit="img", disable=not progress):
            rgb, lab = render_scene(scene_rng(spec.seed, SPLIT_CODES[split], i), spec.height, spec.width)
            city, stem = image_stem(split, i)
            for arr, folder, suffix in ((rgb, "leftImg8bit", "leftImg8bit"), (lab, "gtFine", "gtFine_labelIds")):
                out = tmp / folder / split / city
                out.mkdir(parents=True, exist_ok=True)
                Image.fromarray(arr).save(out / f"{stem}_{suffix}.png", compress_level=1)
        manifest = {"name": spec.name, "generator_version": GENERATOR_VERSION, "spec": asdict(spec),
                    "counts": {"train": spec.n_train, "val": spec.n_val}}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished first: keep its copy
            if not (target / "manifest.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
