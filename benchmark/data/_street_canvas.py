"""Street-scene canvas: pinhole camera and world geometry, shared palettes, world-anchored textures, the
ray-cast ground (road, sidewalks, terrain, sky) and vertical planes (facades, walls, fences, hedges, tree rows, a
far skyline), and z-buffered painting of projected sprite primitives; ``benchmark.data._street`` adds the objects."""

from __future__ import annotations

from functools import lru_cache
from types import SimpleNamespace

import numpy as np
from cityscapesscripts.helpers.labels import name2label
from PIL import Image, ImageDraw

L = SimpleNamespace(**{name.replace(" ", "_"): lab.id for name, lab in name2label.items()})  # ids by name
_PAL = {  # overlapping material palettes (RGB): classes share them, so colour alone never names a class
    "grey": ((62, 62, 66), (88, 88, 92), (112, 110, 108), (138, 136, 132), (165, 162, 156), (195, 192, 186)),
    "warm": ((150, 110, 82), (172, 142, 104), (196, 176, 138), (138, 72, 58), (118, 92, 72), (214, 196, 160)),
    "cool": ((62, 82, 112), (92, 112, 142), (52, 62, 72), (132, 152, 172)),
    "green": ((58, 88, 40), (78, 108, 50), (98, 118, 62), (68, 78, 46), (118, 128, 72), (138, 118, 58)),
    "vivid": ((172, 32, 32), (32, 62, 152), (205, 205, 205), (22, 22, 26), (192, 162, 42), (42, 112, 62),
              (232, 232, 236), (122, 22, 62))}
DARK = (26, 26, 30)  # tyres, lamp housings; also the fill of label-only primitives


def _lowfreq(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Smooth value noise in [0, 1] of shape (h, w), bilinearly upsampled from a coarse random grid."""
    grid = Image.fromarray(rng.random((cells, 2 * cells), dtype=np.float32))
    return np.asarray(grid.resize((w, h), Image.BILINEAR))


@lru_cache
def _palette(pals: tuple[str, ...]) -> np.ndarray:
    """All colours of the named palettes, float32 [N, 3]."""
    return np.array([c for p in pals for c in _PAL[p]], np.float32)


def _frac(a: np.ndarray) -> np.ndarray:
    """Phase in [0, 1) of a periodic pattern (a faster float modulo)."""
    return a - np.floor(a)


class StreetCanvas:
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
        """n jittered colours drawn from the named palettes, float32 [n, 3]."""
        opts = _palette(pals)
        return opts[(self.r.random(n) * len(opts)).astype(int)] + self.r.standard_normal((n, 3), np.float32) * jit

    def col(self, *pals: str, jit: float = 14.0) -> np.ndarray:
        """One jittered colour drawn from the named palettes."""
        return self.cols(1, *pals, jit=jit)[0]

    def tex(self, a: np.ndarray, b: np.ndarray, s: float | np.ndarray) -> np.ndarray:
        """World-anchored texture: a 64x64 noise tile sampled at (a, b) metres with s cells per metre."""
        return self.tile[((a * s).astype(np.int32) & 63) << 6 | ((b * s).astype(np.int32) & 63)]

    def thick(self, w: float, z: float) -> float:
        """Width in metres, widened so thin structures stay >= 3 px (at 256 px wide) at depth z."""
        return max(w, self.mpx * z / self.f)

    def put(self, idx: slice | np.ndarray, z: np.ndarray, lab: np.ndarray, rgb: np.ndarray) -> None:
        """Write depth, label and colour at flat pixel indices idx."""
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
        """Pixel coordinates [N, 2] of world points [N, 3]."""
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
        fills = np.clip([DARK if c is None else c for (_, c, _, _), _ in prims], 0, 255).astype(int).tolist()
        rgba, key = Image.new("RGBA", (self.w, self.h)), Image.new("I", (self.w, self.h), -1)  # depth cm, label
        dc, dk = ImageDraw.Draw(rgba), ImageDraw.Draw(key)
        for xy, ((p, c, lid, lw), z), fill in zip(pts, prims, fills, strict=True):
            xy, wpx = xy.ravel().tolist(), max(1, round(lw * self.f / p[0][2])) if lw else 0
            for dr, ink in [(dk, int(z * 100) * 256 + int(lid))] + ([] if c is None else [(dc, (*fill, 255))]):
                dr.line(xy, fill=ink, width=wpx, joint="curve") if wpx else dr.polygon(xy, fill=ink)
        a, k = np.asarray(rgba).reshape(-1, 4), np.asarray(key).ravel()
        mc, mk = a[:, 3] > 0, k >= 0
        self.rgb[mc], self.lab[mk], self.z[mk] = a[mc, :3], k[mk] & 255, (k[mk] >> 8) / 100

    def mask(self, polys: list) -> np.ndarray:
        """Flat boolean mask of pixel-space polygons."""
        im = Image.new("L", (self.w, self.h))
        for p in polys:
            ImageDraw.Draw(im).polygon(np.ravel(p).tolist(), fill=1)
        return np.asarray(im).ravel() > 0
