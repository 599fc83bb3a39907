"""Procedural street scenes: the objects on a ``StreetCanvas`` and the final render.

Each scene ray-casts a street corridor (road with lane marks, crosswalks and tram rails; sidewalks; terrain;
walls; see-through fences; hedges; facades with window grids; a far skyline; sky), paints perspective-scaled
sprites far to near (cars, trucks, buses, trams, persons, riders, two-wheelers, poles, lights, signs, trees,
clutter), then adds haze, shadows, lighting and noise. Colours come from shared palettes, so classes are told
apart by shape, texture, scale against perspective and context: truck/bus/train by size and form (trams run on
rails), rider = a person on a two-wheeler, fence = bars with the background showing through, terrain lies flat
while vegetation stands up.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

from benchmark.data._street_canvas import DARK, L, StreetCanvas

_CLOTH = ("vivid", "grey", "warm", "cool", "green")
_UNIT = {n: [(np.cos(t), np.sin(t)) for t in np.pi / 2 + np.linspace(0, 2 * np.pi, n, endpoint=False)]
         for n in (3, 4, 8, 12)}
_CYCLE = {  # wheel radius, wheel offset; rider hip, shoulder, head, hand, knee, foot (side view, m); head radius
    False: (0.34, 0.52, (-0.15, 0.95), (0.12, 1.45), (0.2, 1.62), (0.45, 1.02), (0.12, 0.62), (0.02, 0.3), 0.11),
    True: (0.32, 0.7, (-0.2, 0.95), (0.05, 1.5), (0.12, 1.68), (0.45, 1.1), (0.2, 0.75), (0.05, 0.4), 0.14)}


def _rect(a0: float, a1: float, b0: float, b1: float) -> list[tuple[float, float]]:
    """Corners of the axis-aligned rectangle [a0, a1] x [b0, b1]."""
    return [(a0, b0), (a1, b0), (a1, b1), (a0, b1)]


def _circle(cu: float, cv: float, r: float, n: int = 12) -> list[tuple[float, float]]:
    """A regular n-gon of radius r around (cu, cv), first vertex on top."""
    return [(cu + r * c, cv + r * s) for c, s in _UNIT[n]]


class StreetScene(StreetCanvas):
    """A street view: the canvas's ground and planes plus sprites, then shadows, haze, lighting and noise."""

    def vehicle(self, kind: int, x: float, z: float) -> list:
        """A box vehicle seen from behind (or in front, when oncoming), plus its side face when offset."""
        r = self.r
        w, h, ln = {L.car: (r.uniform(1.6, 1.9), r.uniform(1.35, 1.6), r.uniform(3.8, 4.8)),
                    L.truck: (2.45, r.uniform(2.8, 3.8), r.uniform(6, 10)),
                    L.bus: (2.5, r.uniform(2.9, 3.3), r.uniform(10, 13)),
                    L.train: (2.6, r.uniform(3.3, 3.8), r.uniform(25, 40))}[kind]
        c, g, hw, dk = self.col("vivid", "grey"), self.col("cool", "grey") * 0.35, w / 2, np.array(DARK)
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
        parts = [(_circle(cu, wr, wr), DARK if motor else None, lid, 0) for cu in (-wx, wx)]
        if motor:
            parts += [([(-0.75, 0.55), (-0.2, 0.9), (0.35, 0.95), (0.6, 0.75), (0.55, 0.45), (-0.3, 0.35)], c, lid, 0),
                      ([(wx, wr), (0.5, 1.05)], DARK, lid, 0.06)]
        else:  # tyres, then the frame
            parts += [([*_circle(cu, wr, wr), (cu, 2 * wr)], DARK, lid, 0.05) for cu in (-wx, wx)]
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
            lamps = [DARK if k != lit else ((230, 40, 30), (240, 170, 20), (40, 220, 90))[k] for k in range(3)]
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

    def render(self) -> tuple[np.ndarray, np.ndarray]:
        """RGB uint8 [H, W, 3] and labelIds uint8 [H, W] (consumes the generator; call once)."""
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

