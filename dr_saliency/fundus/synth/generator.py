"""Drawing one synthetic fundus photograph in layers (background, optic disc, vessel tree, new
vessels, lesions; then illumination, camera blur and noise) with the exact mask of every lesion:
:func:`synthesize`."""

import dataclasses
import math

import cv2
import numpy as np

from dr_saliency.fundus.datasets.folder import LESION_TYPES
from dr_saliency.fundus.synth.params import (ARTERY_ABSORB, ARTERY_WIDTH, BLUR_SIGMA,
                                             DISC_EXCLUSION, DISC_OFFSET, DISC_RADIUS, EX_COLOUR,
                                             FOVEA_DISTANCE, FOV_RADIUS, GENERATORS,
                                             GENERATOR_VERSION, HE_NEAR_VESSEL, HE_SHAPES,
                                             LESION_ZONE, Lesion, MASK_LEVEL, MIN_SIZE,
                                             NOISE_SIGMA, RED_LESION_ABSORB, REFERENCE_SIZE,
                                             SE_COLOUR, SynthResult, VEIN_ABSORB, VEIN_WIDTH,
                                             VISIBLE_CHANGE)


def synthesize(stage, *, size=512, rng=None, generator=GENERATOR_VERSION):
    """Draw one synthetic colour fundus photograph of a given DR stage with its lesion masks.

    Args:
        stage: int 0-4, the DR stage; ``STAGE_RULES[stage]`` says what is drawn.
        size: int >= 128, side of the square image in pixels.
        rng: None (fresh entropy), an int seed >= 0, or a ``numpy.random.Generator`` (consumed).
            The same seed gives the same image, bit for bit.
        generator: int, the generator version (``GENERATORS``): 3 (default) or 2, kept so that
            datasets written before version 3 can be redrawn bit for bit.

    Returns:
        ``SynthResult``: image ``(size, size, 3)`` uint8 RGB, fov and the four masks
        ``(size, size)`` bool, the lesion list, stage, eye and landmark positions.

    Raises:
        TypeError: for a non-integer stage or size, or an rng of another type.
        ValueError: for a stage outside 0-4, a size below 128, or an unknown generator.
    """
    stage = _check_int(stage, "stage", "a DR stage 0-4", low=0, high=4)
    size = _check_int(size, "size", f"an image side of at least {MIN_SIZE} pixels", low=MIN_SIZE)
    if rng is None or (isinstance(rng, (int, np.integer)) and not isinstance(rng, bool) and rng >= 0):
        rng = np.random.default_rng(rng)
    elif not isinstance(rng, np.random.Generator):
        raise TypeError(f"Expected rng to be None, an int seed >= 0 or a numpy Generator. Received: rng={rng!r}")
    if generator not in GENERATORS:
        raise ValueError(f"Expected a generator version in {sorted(GENERATORS)}. Received: generator={generator!r}")
    return _Fundus(stage, size, rng, GENERATORS[generator]).render()


def _check_int(value, name, what, low, high=None):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"Expected {what}. Received: {name}={value!r}")
    if value < low or (high is not None and value > high):
        raise ValueError(f"Expected {what}. Received: {name}={value!r}")
    return int(value)


def _uniform(rng, bounds):
    return float(rng.uniform(*bounds))


def _smooth_noise(rng, size, cells):
    """Zero-mean, unit-ish smooth random field: a coarse normal grid upsampled bicubically."""
    coarse = rng.standard_normal((cells, cells)).astype(np.float32)
    return cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)


def _blur(image, sigma):
    return cv2.GaussianBlur(image, (0, 0), sigma) if sigma >= 0.3 else image


def _walk(rng, start, heading, length, step, curl):
    """A random-walk path from ``start`` (x, y): the heading turns by smoothed normal steps.

    Smoothing the turns makes paths bend gradually, as vessels do, instead of jittering.
    """
    n = max(int(length / step), 2)
    turn = np.convolve(rng.normal(0.0, curl, n), np.full(5, 0.2), mode="same")
    angle = heading + np.cumsum(turn)
    steps = np.stack([np.cos(angle), np.sin(angle)], axis=1) * step
    return np.vstack([start, start + np.cumsum(steps, axis=0)])


def _draw_path(canvas, pts, widths, scale, strength):
    """Draw a tapering vessel into a uint8 darkness canvas (255 = fully absorbing).

    Darkness follows Beer-Lambert through the vessel's diameter, so thin vessels are paler, as
    in real photographs; a vessel thinner than a pixel is drawn 1 px wide with its darkness
    scaled by its width (partial coverage). Consecutive segments that share thickness and
    darkness go to OpenCV in one polyline, which keeps the call count low.
    """
    if len(pts) < 2:
        return
    dark = strength * (1.0 - np.exp(-(widths / scale) / 3.0)) * np.minimum(widths, 1.0)
    value = np.rint(dark * 24.0) * (255.0 / 24.0)   # coarse levels: long runs, few calls
    thick = np.maximum(np.rint(widths), 1).astype(np.int64)
    key = thick[:-1] * 1000 + value[:-1]
    breaks = np.flatnonzero(np.diff(key)) + 1
    starts = np.concatenate([[0], breaks])
    ends = np.concatenate([breaks, [len(pts) - 1]])
    fixed = np.rint(pts * 16.0).astype(np.int32)
    for a, b in zip(starts, ends):
        if value[a] > 0:
            cv2.polylines(canvas, [fixed[a:b + 1]], False, float(min(value[a], 255.0)),
                          int(thick[a]), cv2.LINE_AA, shift=4)


def _ellipse(img, center_rc, axes, angle, value=255):
    """Filled anti-aliased ellipse at a sub-pixel (row, col) centre (OpenCV's 4-bit shift)."""
    c = (int(round(center_rc[1] * 16)), int(round(center_rc[0] * 16)))
    ax = (max(int(round(axes[0] * 16)), 8), max(int(round(axes[1] * 16)), 8))
    cv2.ellipse(img, c, ax, float(angle), 0.0, 360.0, int(value), -1, cv2.LINE_AA, shift=4)


def _blob(rng, reach, parts, spread, axes):
    """An irregular shape: ``parts`` overlapping ellipses, scaled to lie within ``reach``.

    Returns:
        callable(patch uint8, local centre (row, col)) that draws it; the first ellipse at 255,
        the others at 190-255, so that a blot is slightly mottled.
    """
    offs = rng.uniform(-spread, spread, (parts, 2))
    offs[0] = 0.0
    ax = rng.uniform(*axes, (parts, 2))
    ang = rng.uniform(0, 180, parts)
    vals = rng.uniform(190, 255, parts).astype(int)
    vals[0] = 255
    k = reach / float(np.max(np.hypot(offs[:, 0], offs[:, 1]) + ax.max(axis=1)))

    def draw(patch, lc):
        for i in range(parts):
            _ellipse(patch, lc + offs[i] * k, ax[i] * k, ang[i], vals[i])
    return draw


class _Fundus:
    """Draws one image. Works in a right-eye frame (disc on the right); ``render`` mirrors."""

    def __init__(self, stage, size, rng, gen):
        self.stage, self.size, self.rng, self.gen = stage, size, rng, gen
        self.rule = gen.stage_rules[stage]
        self.scale = size / REFERENCE_SIZE
        self.rows = np.arange(size, dtype=np.float32)[:, None]
        self.cols = np.arange(size, dtype=np.float32)[None, :]
        self.vessels = []      # (points (n, 2) x/y, widths (n,), kind, is_main)
        self.lesions = []      # dicts; "patch": (row, col, alpha) of its drawn opacity

    # ----- geometry -----------------------------------------------------------------------
    def _layout(self):
        rng, size = self.rng, self.size
        self.R = _uniform(rng, FOV_RADIUS) * size
        self.fov_c = np.array([size / 2 + rng.uniform(-0.01, 0.01) * size,
                               size / 2 + rng.uniform(-0.01, 0.01) * size])   # (row, col)
        self.rd = _uniform(rng, DISC_RADIUS) * self.R
        self.disc = self.fov_c + [rng.uniform(-0.08, 0.05) * self.R, _uniform(rng, DISC_OFFSET) * self.R]
        fd = _uniform(rng, FOVEA_DISTANCE) * 2 * self.rd
        drop = rng.uniform(0.0, 0.12) * self.R    # the fovea lies a little below the disc
        self.fovea = self.disc + [drop, -math.sqrt(max(fd ** 2 - drop ** 2, 1.0))]
        self.faz = 0.07 * self.R                  # foveal avascular zone: vessels stop here

    def _dist(self, center_rc):
        return np.sqrt((self.rows - float(center_rc[0])) ** 2 + (self.cols - float(center_rc[1])) ** 2)

    def _smooth_fields(self):
        """Fields that vary slowly across the image, computed at 1/4 (1/2) resolution and
        upsampled: the background's coarse texture, macula and disc glow (multiplicative, per
        channel) and the illumination gain and haze of the camera.

        Returns:
            shade ``(H, W, 3)``, gain ``(H, W, 1)``, haze offset ``(H, W, 3)`` or None; float32.
        """
        rng, size, R = self.rng, self.size, self.R
        f = 4 if size >= 384 else 2
        n = size // f
        rows = (np.arange(n, dtype=np.float32)[:, None] + 0.5) * (size / n) - 0.5
        cols = (np.arange(n, dtype=np.float32)[None, :] + 0.5) * (size / n) - 0.5

        def d2(c):
            return (rows - float(c[0])) ** 2 + (cols - float(c[1])) ** 2

        up = lambda a: cv2.resize(a, (size, size), interpolation=cv2.INTER_LINEAR)
        texture = (1.0 + rng.uniform(0.01, 0.04) * _smooth_noise(rng, n, 5)
                   + rng.uniform(0.008, 0.02) * _smooth_noise(rng, n, 48))
        # Macula and fovea: darker, more so in green and blue (macular pigment).
        macula = (rng.uniform(0.1, 0.28) * np.exp(-d2(self.fovea) / (2 * (0.2 * R) ** 2))
                  + rng.uniform(0.08, 0.25) * np.exp(-d2(self.fovea) / (2 * (0.05 * R) ** 2)))
        glow = rng.uniform(0.1, 0.25) * np.exp(-d2(self.disc) / (2 * (1.3 * self.rd) ** 2))
        shade = texture[:, :, None] * (1.0 - macula[:, :, None] * np.array([0.6, 1.0, 1.0], np.float32))
        shade *= 1.0 + glow[:, :, None] * np.array([0.4, 0.5, 0.3], np.float32)

        r_norm = np.sqrt(d2(self.fov_c)) / R
        a = rng.uniform(0, 2 * np.pi)
        ramp = ((rows - float(self.fov_c[0])) * math.sin(a) + (cols - float(self.fov_c[1])) * math.cos(a)) / R
        gain = (rng.uniform(0.72, 1.12)
                * (1.0 - _uniform(rng, self.gen.vignetting) * np.minimum(r_norm, 1.0) ** rng.uniform(2.0, 4.0))
                * (1.0 + rng.uniform(0.03, 0.18) * ramp)
                * (1.0 + rng.uniform(0.04, 0.1) * _smooth_noise(rng, n, 3)))
        offset = None
        if rng.uniform() < 0.3:   # peripheral bluish haze, as in many EyePACS photographs
            haze = rng.uniform(0.2, 0.6) * np.clip((r_norm - 0.55) / 0.45, 0.0, 1.0) ** 2
            gain = gain * (1.0 - haze)
            offset = up(haze[:, :, None] * (np.array([0.55, 0.62, 0.68], np.float32) * rng.uniform(0.6, 1.0)))
        return up(shade), up(gain.astype(np.float32))[:, :, None], offset

    def _background(self, shade):
        """The fundus before vessels and lesions: pigment, texture, macula, optic disc.

        Returns:
            ``(H, W, 3)`` float32 reflectance (about 0-1).
        """
        rng, size, s = self.rng, self.size, self.scale
        # Pigment: orange-red to brown. Blue rises with green (brown, greyish fundi), which keeps
        # clear of the olive that a high green alone would give.
        red = rng.uniform(0.62, 0.95)
        g = rng.uniform(0.36, 0.66)
        blue = red * ((g - 0.3) * rng.uniform(0.5, 1.3) + rng.uniform(0.0, 0.08)) * self.gen.blue
        base = np.array([red, red * g, blue], np.float32)
        # Fine choroidal texture: blurred white noise (uniform, variance 1/12), rescaled to unit
        # deviation.
        sigma = 1.2 * s + 0.3
        fine = _blur(rng.random((size, size), dtype=np.float32) - 0.5, sigma)
        fine *= rng.uniform(0.01, 0.025) * math.sqrt(12.0) * 2 * math.sqrt(math.pi) * sigma
        fine += 1.0
        scene = shade * base
        scene *= fine[:, :, None]
        # Optic disc, in its window: a bright, slightly tall oval with a soft rim and a whiter
        # cup. Yellow-orange on an orange fundus, paler on a brown one, as in the real sets.
        ry = self.rd * rng.uniform(1.0, 1.12)
        r = int(math.ceil(1.2 * ry))
        y0, x0 = int(self.disc[0]) - r, int(self.disc[1]) - r
        win = scene[y0:y0 + 2 * r + 1, x0:x0 + 2 * r + 1]
        rows = self.rows[y0:y0 + 2 * r + 1]
        cols = self.cols[:, x0:x0 + 2 * r + 1]
        dn = np.sqrt(((rows - float(self.disc[0])) / ry) ** 2 + ((cols - float(self.disc[1])) / self.rd) ** 2)
        rim = np.clip((1.0 - dn) / 0.3 + 0.5, 0.0, 1.0)[:, :, None]
        colour = np.minimum(base * [1.3, 1.7, 2.1] + [0.15, 0.14, 0.1], 1.05)
        white = rng.uniform(0.1, 0.4)
        colour = ((1 - white) * colour + white * np.array([0.95, 0.85, 0.75])).astype(np.float32)
        win += rim * (colour - win)
        cup_r = self.rd * rng.uniform(0.3, 0.55)
        self.cup = self.disc + [0.0, -rng.uniform(0.05, 0.25) * self.rd]
        dc = np.sqrt((rows - float(self.cup[0])) ** 2 + (cols - float(self.cup[1])) ** 2) / cup_r
        cup = (np.clip((1.0 - dc) / 0.5 + 0.5, 0.0, 1.0) * rng.uniform(0.5, 0.9))[:, :, None]
        win += cup * (np.array([1.05, 0.95, 0.85], np.float32) - win)
        return scene

    # ----- vessels --------------------------------------------------------------------------
    def _clip(self, pts, widths, leave_disc):
        """Cut a path where it leaves the FOV, enters the foveal avascular zone or the disc."""
        x, y = pts[:, 0], pts[:, 1]
        ok = np.hypot(y - self.fov_c[0], x - self.fov_c[1]) < 0.985 * self.R
        ok &= np.hypot(y - self.fovea[0], x - self.fovea[1]) > self.faz
        if leave_disc:
            ok &= np.hypot(y - self.disc[0], x - self.disc[1]) > self.rd
        ok[0] = True
        cut = len(ok) if ok.all() else int(np.argmin(ok))
        return pts[:cut], widths[:cut]

    def _arcade(self, up, kind):
        """A temporal arcade: leaves the cup vertically, curves over the macula toward temporal."""
        rng, R = self.rng, self.R
        h = rng.uniform(0.42, 0.58) * R * (1.0 if kind == "vein" else rng.uniform(0.88, 1.0))
        bend = rng.uniform(0.16, 0.28) * R
        rise = rng.uniform(0.0, 0.3)
        u = np.linspace(0.0, 1.0, 600) ** 2 * 2.2 * R
        # Straight up (down) out of the cup, then steep (slope h/bend, about 60-70 degrees),
        # level over the macula, and slowly diverging toward the temporal periphery.
        v = self.rd * rng.uniform(0.5, 0.9) + h * (1.0 - np.exp(-u / bend)) * (1.0 + rise * u / R)
        x = np.concatenate([[self.cup[1]], self.cup[1] - u])
        y = self.cup[0] + np.concatenate([[0.0], -v if up else v])
        pts = np.stack([x, y], axis=1)
        seg = np.hypot(*np.diff(pts, axis=0).T)
        arc = np.concatenate([[0.0], np.cumsum(seg)])
        step = max(3.0 * self.scale, 1.5)
        t = np.arange(0.0, arc[-1], step)
        pts = np.stack([np.interp(t, arc, x), np.interp(t, arc, y)], axis=1)
        # Round off the corner where the straight start meets the curve.
        k = max(int(0.3 * self.rd / step), 1)
        pts[k:-k] = cv2.blur(pts, (1, 2 * k + 1), borderType=cv2.BORDER_REPLICATE)[k:-k]
        # A gentle sideways wiggle so that no two arcades are the same smooth curve.
        normal = np.gradient(pts, axis=0)[:, ::-1] * [1.0, -1.0] / step
        wiggle = sum(rng.uniform(0.005, 0.02) * R * np.sin(t / (rng.uniform(0.15, 0.5) * R) + rng.uniform(0, 2 * np.pi))
                     for _ in range(3))
        pts = pts + normal * (wiggle - wiggle[0])[:, None]
        w0 = _uniform(rng, VEIN_WIDTH if kind == "vein" else ARTERY_WIDTH) * self.scale
        widths = w0 * (1.0 - 0.55 * t / max(t[-1], 1.0))
        return self._clip(pts, widths, leave_disc=False)

    def _grow(self, pts, widths, kind, depth, main=False):
        """Record a vessel and sprout tapering side branches from it, recursively."""
        rng, R, s = self.rng, self.R, self.scale
        self.vessels.append((pts, widths, kind, main))
        if depth >= 3 or len(pts) < 6:
            return
        arc = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(pts, axis=0).T))])
        pos = rng.uniform(0.1, 0.25) * R
        while pos < 0.9 * arc[-1]:
            k = min(int(np.searchsorted(arc, pos)), len(pts) - 2)
            w = widths[k] * rng.uniform(0.45, 0.8)
            if w >= 0.6 * s:
                d = pts[k + 1] - pts[k]
                heading = math.atan2(d[1], d[0])
                # Prefer the side that points away from the disc: vessels fan out to the periphery.
                out = math.atan2(pts[k][1] - self.disc[0], pts[k][0] - self.disc[1])
                sides = np.array([-1.0, 1.0])
                cands = heading + sides * rng.uniform(0.3, 0.8)
                outward = np.cos(cands - out)
                side = rng.choice(2, p=np.exp(outward) / np.exp(outward).sum())
                length = R * rng.uniform(0.35, 0.8) * math.sqrt(w / (4.0 * s))
                child = _walk(rng, pts[k], cands[side], length, max(3.0 * s, 1.5), 0.1)
                cw = np.linspace(w, max(0.5 * s, 0.45 * w), len(child))
                child, cw = self._clip(child, cw, leave_disc=True)
                if len(child) > 3:
                    self._grow(child, cw, kind, depth + 1)
            pos += rng.uniform(0.1, 0.28) * R * (1.0 + 0.5 * depth)

    def _vessel_tree(self):
        rng, s = self.rng, self.scale
        for up in (True, False):
            for kind in ("vein", "artery"):
                pts, w = self._arcade(up, kind)
                self._grow(pts, w, kind, 0, main=True)
                # Thin twigs from the arcade's inner side toward the fovea: the macula is ringed
                # by small vessels that stop short of the avascular zone.
                starts = np.arange(len(pts) // 6, len(pts) - 2)
                for k in rng.choice(starts, min(int(rng.integers(3, 8)), len(starts)), replace=False):
                    to_fovea = math.atan2(self.fovea[0] - pts[k][1], self.fovea[1] - pts[k][0])
                    tw = rng.uniform(0.9, 2.0) * s
                    twig = _walk(rng, pts[k], to_fovea + rng.normal(0, 0.35), self.R * rng.uniform(0.15, 0.45),
                                 max(3.0 * s, 1.5), 0.15)
                    self._grow(*self._clip(twig, np.linspace(tw, 0.5 * tw, len(twig)), True), kind, 3)
                # Nasal vessels: shorter, thinner, heading up- or down-nasal.
                base = -1.0 if up else 1.0
                w0 = _uniform(rng, VEIN_WIDTH if kind == "vein" else ARTERY_WIDTH) * s * rng.uniform(0.6, 0.8)
                pts = _walk(rng, self.cup[::-1], base * rng.uniform(0.5, 1.2), 0.9 * self.R, max(3.0 * s, 1.5), 0.04)
                self._grow(*self._clip(pts, np.linspace(w0, 0.5 * w0, len(pts)), False), kind, 1)
        # Small macular vessels straight from the disc toward the fovea.
        for _ in range(rng.integers(1, 4)):
            w0 = rng.uniform(1.5, 2.8) * s
            pts = _walk(rng, self.cup[::-1], math.pi + rng.uniform(-0.35, 0.35), 0.7 * self.R, max(3.0 * s, 1.5), 0.05)
            self._grow(*self._clip(pts, np.linspace(w0, 0.5 * w0, len(pts)), False), "artery", 2)

    def _bead_veins(self):
        """Venous beading: on a stretch of each temporal arcade vein, the calibre swells and
        narrows periodically (drawn, in no mask; a sign of severe NPDR in the clinical scale)."""
        rng, R, s = self.rng, self.R, self.scale
        for i, (pts, widths, kind, main) in enumerate(self.vessels):
            if kind != "vein" or not main or len(pts) < 10:
                continue
            arc = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(pts, axis=0).T))])
            # Resample at about 1 px so that a bead (period 7-11 px) spans several points.
            t = np.arange(0.0, arc[-1], max(s, 0.5))
            fine = np.stack([np.interp(t, arc, pts[:, 0]), np.interp(t, arc, pts[:, 1])], axis=1)
            w = np.interp(t, arc, widths)
            start = rng.uniform(0.2, 0.45) * arc[-1]
            length = rng.uniform(0.2, 0.35) * R
            period = rng.uniform(7.0, 11.0) * s
            depth = rng.uniform(0.3, 0.5)
            u = np.clip((t - start) / length, 0.0, 1.0)
            envelope = np.sin(np.pi * u)     # the beading fades in and out along the stretch
            w = w * (1.0 + depth * envelope * np.sin(2 * np.pi * (t - start) / period))
            self.vessels[i] = (fine, w, kind, main)

    def _nv_patch(self, canvas, center_rc, radius, contrast):
        """Neovascularisation: a dense tangle of fine, tortuous loops kept within ``radius``."""
        rng, s = self.rng, self.scale
        for _ in range(rng.integers(12, 23)):
            start = np.array(center_rc[::-1]) + rng.normal(0.0, 0.35 * radius, 2)
            pts = _walk(rng, start, rng.uniform(0, 2 * np.pi), rng.uniform(1.5, 3.0) * radius,
                        max(1.5 * s, 1.0), 0.5)
            inside = np.hypot(pts[:, 0] - center_rc[1], pts[:, 1] - center_rc[0]) < 1.1 * radius
            cut = len(inside) if inside.all() else int(np.argmin(inside))
            width = rng.uniform(1.5, 2.5) * s
            # As dark as ``contrast`` despite being thin: new vessels are conspicuous.
            _draw_path(canvas, pts[:cut], np.full(cut, width), s, contrast / (1.0 - math.exp(-width / s / 3.0)))

    # ----- lesions --------------------------------------------------------------------------
    def _free(self, occ, center_rc, radius):
        r = int(math.ceil(radius))
        y, x = int(round(center_rc[0])), int(round(center_rc[1]))
        if y - r < 0 or x - r < 0 or y + r >= self.size or x + r >= self.size:
            return False
        win = occ[y - r:y + r + 1, x - r:x + r + 1]
        yy, xx = np.ogrid[-r:r + 1, -r:r + 1]
        return not win[(yy + y - center_rc[0]) ** 2 + (xx + x - center_rc[1]) ** 2 <= radius ** 2].any()

    def _place(self, kind, shape, center_rc, radius, contrast, draw, soft):
        """Accept a lesion if its visible extent keeps clear of the others; draw its alpha patch.

        Args:
            draw: callable(patch uint8, local centre (row, col)) drawing the shape at 255.
            radius: float, px, the shape's reach from its centre.
            soft: float, the shape's own edge blur (sigma, px).

        Returns:
            bool, whether it was placed.
        """
        # The footprint (MASK_LEVEL of the peak change) ends about 0.7 blur sigmas beyond the
        # drawn edge; spacing footprints by ``extent`` plus a gap keeps every two of them apart
        # (8-connectivity needs a clear pixel between them). Fainter skirts may overlap.
        sigma = math.hypot(soft, self.blur)
        extent = radius + sigma + 1.0
        if not self._free(self.occ, center_rc, extent + 1.5 + 0.5 * self.scale):
            return False
        # A microaneurysm against a vessel would read as a kink of that vessel: keep it clear.
        if kind == "MA" and not self._free(self.vessel_occ, center_rc, extent + sigma):
            return False
        r = int(math.ceil(radius + 3.0 * sigma)) + 1   # the patch holds the blurred skirt too
        y0, x0 = int(math.floor(center_rc[0])) - r, int(math.floor(center_rc[1])) - r
        # Near the FOV rim the skirt, and the camera blur's window around it (``render``'s
        # margin), can reach past the image edge where the FOV nearly touches it: keep both
        # whole inside the image.
        m = int(math.ceil(4 * self.blur)) + 1
        if min(y0, x0) - m < 0 or max(y0, x0) + 2 * r + 1 + m > self.size:
            return False
        patch = np.zeros((2 * r + 1, 2 * r + 1), np.uint8)
        draw(patch, (center_rc[0] - y0, center_rc[1] - x0))
        # A red lesion over a dark vessel would barely change it, splitting its mask: keep the
        # drawn shape off the vessels (it may touch one, as haemorrhages often do).
        under = self.vessel_occ[y0:y0 + patch.shape[0], x0:x0 + patch.shape[1]]
        if kind in ("MA", "HE") and (under & (patch > 0)).any():
            return False
        alpha = _blur(patch.astype(np.float32) * (contrast / 255.0), soft)
        cv2.circle(self.occ, (int(round(center_rc[1])), int(round(center_rc[0]))), int(math.ceil(extent)), 1, -1)
        self.lesions.append(dict(type=kind, center=tuple(map(float, center_rc)), radius=float(radius),
                                 contrast=float(contrast), shape=shape, patch=(y0, x0, alpha)))
        return True

    def _radius(self, key):
        return max(_uniform(self.rng, self.gen.lesion_radius[key]) * self.scale, 1.0)

    def _contrast(self, kind):
        return _uniform(self.rng, self.gen.lesion_contrast[kind])

    def _near_fovea(self, spread, quadrant=None):
        """Normal around the fovea; with ``quadrant``, folded into it (mirrored about the FOV
        centre's row and column, which keeps the distance from the centre)."""
        p = self.fovea + self.rng.normal(0.0, spread * self.R, 2)
        if quadrant is not None:
            want = np.array([1.0 if quadrant & 2 else -1.0, 1.0 if quadrant & 1 else -1.0])
            p = self.fov_c + np.abs(p - self.fov_c) * want
        return p

    def _in_quadrant(self, q):
        """Uniform over the lesion zone of quadrant ``q`` (bit 0: right half, bit 1: lower)."""
        r = LESION_ZONE * self.R * math.sqrt(self.rng.uniform(0.02, 1.0))
        a = self.rng.uniform(0.0, math.pi / 2)
        return self.fov_c + [r * math.sin(a) * (1 if q & 2 else -1), r * math.cos(a) * (1 if q & 1 else -1)]

    def _quadrant(self, p):
        return int(p[1] >= self.fov_c[1]) + 2 * int(p[0] >= self.fov_c[0])

    def _index_vessels(self):
        """A table of all vessel points, so that lesions can be put against a vessel cheaply."""
        pts = np.concatenate([v[0] for v in self.vessels])
        last = np.cumsum([len(v[0]) for v in self.vessels]) - 1
        step = np.diff(pts, axis=0, append=pts[-1:])
        step[last] = step[np.maximum(last - 1, 0)]   # a path's last point keeps its own heading
        rc = pts[:, ::-1]
        self.vp = {"rc": rc, "heading": np.arctan2(step[:, 1], step[:, 0]),
                   "width": np.concatenate([v[1] for v in self.vessels]),
                   "main": np.concatenate([np.full(len(v[0]), v[3]) for v in self.vessels]),
                   "quadrant": (rc[:, 1] >= self.fov_c[1]) + 2 * (rc[:, 0] >= self.fov_c[0]),
                   "usable": ((np.hypot(*(rc - self.disc).T) > DISC_EXCLUSION * self.rd)
                              & (np.hypot(*(rc - self.fov_c).T) < LESION_ZONE * self.R))}

    def _vessel_point(self, min_width, main_only=False, quadrant=None):
        """A random point on a vessel at least ``min_width`` wide, away from the disc and the
        FOV rim: ((row, col), heading, width), or None where there is none."""
        vp = self.vp
        ok = vp["usable"] & (vp["width"] >= min_width)
        if main_only:
            ok &= vp["main"]
        if quadrant is not None:
            ok &= vp["quadrant"] == quadrant
        idx = np.flatnonzero(ok)
        if not len(idx):
            return None
        k = idx[self.rng.integers(len(idx))]
        return vp["rc"][k], float(vp["heading"][k]), float(vp["width"][k])

    def _add_he(self, quadrant, spread, anchor=None):
        """Try one haemorrhage in ``quadrant``; ``anchor`` (point, heading, width) puts it
        against that vessel, a flame along it most of the time."""
        rng = self.rng
        shape = str(rng.choice(list(HE_SHAPES), p=list(HE_SHAPES.values())))
        if anchor is not None and rng.uniform() < 0.6:
            shape = "flame"
        if shape == "flame":
            reach = self._radius("HE_flame")
            half = max(reach * rng.uniform(0.25, 0.45), 1.0)
        else:
            reach = self._radius("HE_dot" if shape == "dot" else "HE_blot")
            half = reach
        if anchor is not None:
            point, heading, width = anchor
            normal = np.array([math.cos(heading), -math.sin(heading)]) * rng.choice([-1.0, 1.0])
            center = point + normal * (width / 2 + half + 1.0 + self.scale)
        elif spread is None:
            center = self._in_quadrant(quadrant)
        else:
            center = self._near_fovea(spread, quadrant)
        if self._quadrant(center) != quadrant:
            return False
        c = self._contrast("HE")
        if shape == "flame":
            if anchor is None:   # along the nerve fibres: roughly radial from the disc
                heading = math.atan2(center[0] - self.disc[0], center[1] - self.disc[1])
            ang = math.degrees(heading) + rng.normal(0.0, 8.0)
            return self._place("HE", "flame", center, reach, c,
                               lambda p, lc: _ellipse(p, lc, (reach, half), ang), 0.3 * half)
        if shape == "dot":
            axes, ang = (reach, reach * rng.uniform(0.8, 1.0)), rng.uniform(0, 180)
            return self._place("HE", "dot", center, reach, c, lambda p, lc: _ellipse(p, lc, axes, ang), 0.25 * reach)
        # A blot: overlapping ellipses of slightly different density, irregular and mottled.
        blot = _blob(rng, reach, int(rng.integers(3, 8)), 0.5, (0.25, 0.55))
        return self._place("HE", "blot", center, reach, c, blot, 0.18 * reach)

    def _lesions(self):
        rng, rule, R, s = self.rng, self.rule, self.R, self.scale
        count = {k: int(rng.integers(lo, hi + 1)) for k, (lo, hi) in
                 (("MA", rule.ma), ("HE", rule.he), ("EX", rule.ex), ("SE", rule.se), ("NV", rule.nv))}
        # Exudates and cotton-wool spots in a share of the images only (generator 3); a share of
        # 1.0 draws nothing, so generator 2's images stay what they were.
        for kind, share in (("EX", rule.ex_share), ("SE", rule.se_share)):
            if share < 1.0 and rng.uniform() >= share:
                count[kind] = 0
        tries = 30
        # Cotton-wool spots: along the arcades, often over a vessel.
        placed = 0
        for _ in range(count["SE"] * tries):
            if placed == count["SE"]:
                break
            p, heading, w = self._vessel_point(2.0 * s, main_only=True) or (self._near_fovea(0.5), 0.0, 0.0)
            r = self._radius("SE")
            normal = np.array([math.cos(heading), -math.sin(heading)])
            center = p + normal * rng.uniform(-1.0, 1.0) * (w / 2 + 0.8 * r)
            b = r * rng.uniform(0.55, 0.9)
            ang = math.degrees(heading) + rng.normal(0, 20)
            placed += self._place("SE", "fuzzy", center, r, self._contrast("SE"),
                                  lambda pt, lc: _ellipse(pt, lc, (r, b), ang), 0.35 * r)
        # Hard exudates: groups around the macula until the count is reached. Generator 2 draws
        # plaques in loose clusters; generator 3 fields of small flecks, as in photographs.
        gen, placed = self.gen, 0
        for _ in range(count["EX"] * 4):
            if placed >= count["EX"]:
                break
            group = str(rng.choice(list(gen.ex_groups), p=list(gen.ex_groups.values())))
            ang0 = rng.uniform(0, 2 * np.pi)
            centre = self.fovea + rng.uniform(0.12, 0.55) * R * np.array([math.sin(ang0), math.cos(ang0)])
            if group == "single":
                k = 1
            else:
                lo, hi = gen.ex_group_size[group]
                k = int(rng.integers(lo, hi + 1))
            k = min(count["EX"] - placed, k)
            if group == "ring":
                rr = rng.uniform(16, 40) * s
                span = rng.uniform(np.pi, 2 * np.pi)
                angles = rng.uniform(0, 2 * np.pi) + np.linspace(0, span, k, endpoint=False)
                spots = [centre + rr * np.array([math.sin(a), math.cos(a)]) + rng.normal(0, 1.5 * s, 2) for a in angles]
            else:
                spread = _uniform(rng, gen.ex_spread) * s if group != "single" else 0.0
                spots = [centre + rng.normal(0, spread, 2) for _ in range(k)]
            for spot in spots:
                r = self._radius("EX") * (0.8 if group != "single" and gen.version == 2 else 1.0)
                shape = _blob(rng, r, int(rng.integers(1, 6)), 0.5, (0.3, 0.7))
                placed += self._place("EX", group, spot, r, self._contrast("EX"), shape, 0.3 * s)
        # Haemorrhages: in the required number of quadrants, some against a vessel.
        if count["HE"]:
            lo, hi = rule.he_quadrants
            nq = int(rng.integers(lo, min(hi, count["HE"]) + 1))
            quads = list(rng.permutation(4)[:nq])
            wanted = [quads[i % nq] for i in range(count["HE"])]
            for q in wanted:
                for _ in range(3 * tries):   # large blots need room between the vessels
                    anchor = self._vessel_point(2.0 * s, quadrant=q) if rng.uniform() < HE_NEAR_VESSEL else None
                    if self._add_he(q, None if nq == 4 else rule.spread, anchor):
                        break
        for _ in range(count["MA"]):
            for _ in range(tries):
                r = self._radius("MA")
                if self._place("MA", "round", self._near_fovea(rule.spread), r, self._contrast("MA"),
                               lambda p, lc, r=r: _ellipse(p, lc, (r, r), 0), 0.3 * r):
                    break

    # ----- compositing ----------------------------------------------------------------------
    def render(self):
        """Draw everything; returns the ``SynthResult``."""
        rng, size, s = self.rng, self.size, self.scale
        self._layout()
        self.blur = _uniform(rng, BLUR_SIGMA) * s
        shade, gain, offset = self._smooth_fields()
        scene = self._background(shade)
        self._vessel_tree()
        if self.rule.beading > 0.0 and rng.uniform() < self.rule.beading:
            self._bead_veins()
        self._index_vessels()
        veins = np.zeros((size, size), np.uint8)
        arteries = np.zeros((size, size), np.uint8)
        strength = rng.uniform(0.75, 1.0)
        for pts, widths, kind, _ in self.vessels:
            _draw_path(veins if kind == "vein" else arteries, pts, widths, s, strength)

        # Lesion exclusion: FOV rim and the disc neighbourhood; red lesions also avoid vessels.
        d_fov = self._dist(self.fov_c)
        self.occ = np.zeros((size, size), np.uint8)
        cv2.circle(self.occ, (int(self.fov_c[1]), int(self.fov_c[0])), int(LESION_ZONE * self.R), 1, -1)
        self.occ ^= 1
        cv2.circle(self.occ, (int(self.disc[1]), int(self.disc[0])), int(math.ceil(DISC_EXCLUSION * self.rd)), 1, -1)
        self.vessel_occ = cv2.bitwise_or(veins, arteries) > 25

        # Neovascularisation is drawn with the arteries: fine, tortuous new vessels.
        rule = self.rule
        for i in range(int(rng.integers(rule.nv[0], rule.nv[1] + 1))):
            c = self._contrast("NV")
            if i == 0 or rng.uniform() < 0.4:
                a = rng.uniform(0, 2 * np.pi)
                center = self.disc + 0.9 * self.rd * np.array([math.sin(a), math.cos(a)])
                radius, where = self.rd * rng.uniform(0.7, 1.1), "disc"
            else:
                anchor = self._vessel_point(2.5 * s, main_only=True)
                center = anchor[0] if anchor else self._near_fovea(0.5)
                radius, where = self._radius("NVE"), "elsewhere"
            self._nv_patch(arteries, center, radius, c)
            cv2.circle(self.occ, (int(center[1]), int(center[0])), int(radius * 1.2), 1, -1)
            self.lesions.append(dict(type="NV", center=tuple(map(float, center)), radius=float(radius),
                                     contrast=float(c), shape=where))
        self._lesions()

        sigma = max(0.6 * s, 0.35)
        v = _blur(veins.astype(np.float32) * (1 / 255), sigma)
        a = _blur(arteries.astype(np.float32) * (1 / 255), sigma)
        transmission = 1.0 - v[:, :, None] * np.array(VEIN_ABSORB, np.float32)
        transmission -= a[:, :, None] * np.array(ARTERY_ABSORB, np.float32)
        scene *= transmission

        # Everything after the lesions is affine per pixel, then a linear blur:
        # final = blur(scene * gain + offset). So a lesion's change to the final image is
        # blur(delta * gain), exactly; it is computed in a window around the lesion.
        final = scene * gain
        if offset is not None:
            final += offset
        final = _blur(final, self.blur)
        fov = d_fov < self.R + 0.5   # every pixel the anti-aliased border lights
        masks = {kind: np.zeros((size, size), bool) for kind in LESION_TYPES}
        clean = final.copy()
        margin = int(math.ceil(4 * self.blur)) + 1   # GaussianBlur's kernel radius (as _place)
        for lesion in self.lesions:
            if lesion["type"] != "NV":
                self._composite(lesion, scene, gain, clean, final, masks[lesion["type"]], margin)
        # Sensor noise, uniform (four times cheaper to draw than normal; a few grey levels).
        noise = rng.random(final.shape, dtype=np.float32)
        noise -= 0.5
        noise *= _uniform(rng, NOISE_SIGMA) * math.sqrt(12.0) / 255.0
        final += noise
        edge = np.clip(self.R + 0.5 - d_fov, 0.0, 1.0)   # anti-aliased FOV border
        final *= edge[:, :, None] * 255.0
        np.maximum(final, 0.0, out=final)
        image = cv2.convertScaleAbs(final)   # rounds and saturates at 255

        eye = "right" if rng.uniform() < 0.5 else "left"
        lesions = [Lesion(**d) for d in self.lesions if d["type"] == "NV" or d.get("area", 0) > 0]
        if eye == "left":
            flip = lambda p: (float(p[0]), float(size - 1 - p[1]))
            image, fov = image[:, ::-1], fov[:, ::-1]
            masks = {k: np.ascontiguousarray(m[:, ::-1]) for k, m in masks.items()}
            lesions = [dataclasses.replace(l, center=flip(l.center)) for l in lesions]
        else:
            flip = lambda p: (float(p[0]), float(p[1]))
        return SynthResult(image=np.ascontiguousarray(image), fov=np.ascontiguousarray(fov), masks=masks,
                           lesions=lesions, stage=self.stage, eye=eye, fov_center=flip(self.fov_c),
                           fov_radius=float(self.R), disc_center=flip(self.disc), disc_radius=float(self.rd),
                           fovea=flip(self.fovea))

    def _composite(self, lesion, scene, gain, clean, final, mask, margin):
        """Add one lesion's change to ``final`` and its footprint to ``mask``, in its window.

        The change is exact: ``blur(delta * gain)`` with the camera blur, clipped as the image
        is, against the image without lesions (``clean``). The footprint is where it reaches
        ``VISIBLE_CHANGE`` and ``MASK_LEVEL`` of the lesion's peak, kept to the component that
        holds the peak; its area and peak are recorded on the lesion. A lesion whose peak stays
        below ``VISIBLE_CHANGE`` gets no footprint and is left out of the lesion list.
        """
        y0, x0, alpha = lesion.pop("patch")
        y0, x0 = y0 - margin, x0 - margin
        win = (slice(y0, y0 + alpha.shape[0] + 2 * margin), slice(x0, x0 + alpha.shape[1] + 2 * margin))
        alpha = np.pad(alpha, margin)[:, :, None]
        if lesion["type"] in ("MA", "HE"):
            delta = scene[win] * alpha * -np.array(RED_LESION_ABSORB, np.float32)
        else:
            colour = np.array(EX_COLOUR if lesion["type"] == "EX" else SE_COLOUR, np.float32)
            delta = alpha * (colour - scene[win])
        delta = _blur(delta * gain[win], self.blur)
        before = np.clip(clean[win], 0.0, 1.0)
        change = np.abs(np.clip(clean[win] + delta, 0.0, 1.0) - before).max(axis=2) * 255.0
        final[win] += delta
        peak = float(change.max())
        if peak < VISIBLE_CHANGE:
            return
        _, labels = cv2.connectedComponents((change >= max(VISIBLE_CHANGE, MASK_LEVEL * peak)).astype(np.uint8),
                                            connectivity=8)
        footprint = labels == labels.flat[int(np.argmax(change))]
        mask[win] |= footprint
        lesion["area"], lesion["peak_change"] = int(footprint.sum()), peak
