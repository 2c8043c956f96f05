"""Field of view, square crop, resize and dataset caching for fundus photographs.

A fundus photograph is a bright, roughly circular field of view (FOV) on a black surround, often cut
at the top and bottom by the image border, sometimes with a small bright tab (a camera marker) on
its rim. The network (González-Gonzalo et al., MIDL 2018) takes a square 512x512 image, so every
image is cropped to the bounding box of its FOV, padded with black to a centred square and resized;
the same geometry is applied to its lesion masks and to its FOV, so that the three stay aligned
pixel for pixel. Decoding a 4288x2848 JPEG costs more than the network at 512 (DESIGN.md §5), so
:func:`preprocess_dataset` does this once for a whole dataset and writes the package's own folder
layout (DESIGN.md §4), which training and refinement then read.

Pure numpy / OpenCV / scipy: no TensorFlow here.

Public API::

    fov_mask(image, *, threshold=None) -> (H, W) bool
    square_crop_box(fov) -> SquareBox
    apply_geometry(array, box, size, kind="image" | "mask" | "fov") -> resized array
    preprocess_image(image, size, *, masks=None, fov=None) -> (image, masks, fov)
    preprocess_dataset(dataset, out, *, size=512, workers=None, skip_bad=False,
                       on_progress=None, overwrite=False) -> summary dict
"""

import collections
import concurrent.futures
import csv
import dataclasses
import inspect
import json
import math
import multiprocessing
import os
import pickle
import time

import cv2
import numpy as np
from scipy import ndimage

from dr_saliency._version import __version__
from dr_saliency.fundus.datasets.folder import LESION_TYPES, write_labels, write_sample

__all__ = [
    "DEFAULT_SIZE",
    "MIN_SIZE",
    "SquareBox",
    "apply_geometry",
    "fov_mask",
    "preprocess_dataset",
    "preprocess_image",
    "square_crop_box",
]

DEFAULT_SIZE = 512
"""Side of the preprocessed square images: the paper's network input."""

MIN_SIZE = 128
"""Smallest side :func:`preprocess_dataset` accepts: below it VGG-16's five poolings leave
almost nothing and microaneurysms vanish (DESIGN.md §6)."""

PARAMS_FILE = "preprocess.json"
"""Written in the output folder: the parameters a resumed run must match."""

# --- Field-of-view constants (grey levels are on the 0-255 scale of the per-pixel maximum over the
# colour channels, measured on the downscaled working copy).
FOV_WORK_SIZE = 512
"""Longest side of the downscaled copy the FOV is found on. At 512 one working pixel is ~8
original pixels of a 4288x2848 IDRiD image: well below what the 512 output can show."""

FOV_NOISE_FLOOR = 5
"""Grey levels above the background level (its 0.5th percentile) that a pixel must exceed to be
FOV. Area-averaged JPEG noise in the black surround stays within ~4 levels; the darkest real
fundus rim seen (DIARETDB1 image049, underexposed side) is ~19-30."""

FOV_BACKGROUND_MAX = 10
"""Cap on that background level. A black surround is at ~0-5; a 0.5th percentile above 10 means
the image has (almost) no surround (a fundus cropped inside its FOV), and the fundus's own dark
tail must not become the reference."""

FOV_EDGE_FRACTION = 1 / 3
"""A pixel is FOV only if brighter than this fraction of the brightest pixel within
``FOV_LOCAL_RADIUS``: the FOV edge is a sharp step, and stray light just outside it (IDRiD_01's
halo, up to ~20, next to a rim of ~115) stays below a third of the rim, while a uniformly dark
fundus (rim ~20) still passes, being compared with itself."""

FOV_LOCAL_RADIUS = 0.01
"""Radius of that neighbourhood, as a fraction of the working copy's longest side (5 px at 512):
wider than the blur of the FOV edge (2-3 px), narrow enough that slow shading inside the fundus
does not count as a step."""

FOV_FIT_TOLERANCE = (1.5, 0.01)
"""(pixels, fraction of the FOV radius): boundary points this far from the fitted ellipse are
outliers (tabs, notches); the mask is clipped to the ellipse grown by this much."""

FOV_FIT_MIN_INLIERS = 0.6
"""The ellipse clip is used only when at least this fraction of the free boundary (not on the
image border) lies on the ellipse, i.e. when the FOV really is a circle or an ellipse."""


# ----------------------------------------------------------------------------------------------
# Argument checks


def _check_image(image, name="image"):
    if not isinstance(image, np.ndarray):
        raise TypeError(f"Expected a numpy array. Received: {name} of type {type(image).__name__}")
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"Expected an (H, W, 3) uint8 RGB image. "
                         f"Received: {name}.shape={image.shape}, {name}.dtype={image.dtype}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"Expected a non-empty image. Received: {name}.shape={image.shape}")


def _check_mask(mask, shape, name):
    mask = np.asarray(mask)
    if mask.ndim != 2 or tuple(mask.shape) != tuple(shape):
        raise ValueError(f"Expected an (H, W) mask of the image's size {tuple(shape)}. "
                         f"Received: {name}.shape={mask.shape}")
    return mask if mask.dtype == bool else mask != 0


def _check_size(size, minimum=1):
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
        raise TypeError(f"Expected an int size. Received: size={size!r}")
    if size < minimum:
        raise ValueError(f"Expected size >= {minimum}. Received: size={size!r}")
    return int(size)


# ----------------------------------------------------------------------------------------------
# Field of view


def fov_mask(image, *, threshold=None):
    """The field of view of a colour fundus photograph.

    Found on a copy downscaled to ``FOV_WORK_SIZE`` (area averaging, which also averages out JPEG
    noise), from the per-pixel maximum over the colour channels (robust to red-free, bluish or
    very red images):

    1. A pixel is a candidate when it is brighter than the background level (0.5th percentile,
       at most ``FOV_BACKGROUND_MAX``) plus ``FOV_NOISE_FLOOR`` *and* than ``FOV_EDGE_FRACTION``
       of the brightest pixel within ``FOV_LOCAL_RADIUS``. The second, local, rule places the
       boundary on the sharp step of the FOV edge whatever the exposure: it keeps a very dark
       fundus (its rim is compared with itself) and drops the halo of stray light next to a
       bright rim, which then no longer connects to the fundus. (A single global threshold
       cannot do both: a dark rim and a bright image's halo both sit at ~20 of 255.) It assumes
       what lies just outside the FOV is darker than a third of the rim next to it;
       ``threshold`` is the way out otherwise.
    2. The connected component with the largest summed brightness (the FOV is the brightest
       large thing; a dim surround of stray light can be larger), holes filled (dark lesions,
       vessels, a dark macula).
    3. A small morphological opening and closing (~1% of the FOV radius) removes noise and
       smooths the edge; then the largest component again.
    4. Tabs and notches: an ellipse (a circle, or the slightly stretched circle of some cameras)
       is fitted to the boundary points not on the image border, with outliers dropped; when
       most of the boundary lies on it, the mask is clipped to the ellipse grown by
       ``FOV_FIT_TOLERANCE``. This removes a bright camera tab outside the circle, which an
       opening small enough to keep the corners of a border-cut FOV cannot.
    5. Upscaled to the original size (bilinear on 0/255, threshold at half).

    Args:
        image: ``(H, W, 3)`` uint8 RGB, any size.
        threshold: optional number in ``[0, 255)``: use this fixed grey level on the channel
            maximum instead of the adaptive rule of step 1 (for unusual cameras). Steps 2-5 still
            apply.

    Returns:
        ``(H, W)`` bool, True inside the field of view; all False when nothing in the image is
        brighter than its background (a blank image).

    Raises:
        TypeError: for a non-array image or a non-numeric threshold.
        ValueError: for a wrong shape or dtype, or a threshold outside ``[0, 255)``.
    """
    _check_image(image)
    image = np.ascontiguousarray(image)  # OpenCV needs it (a channel-reversed view is not)
    if threshold is not None:
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.number)):
            raise TypeError(f"Expected a number or None. Received: threshold={threshold!r}")
        if not 0 <= threshold < 255:
            raise ValueError(f"Expected 0 <= threshold < 255. Received: threshold={threshold!r}")
    height, width = image.shape[:2]
    small, k = _downscale(image)
    value = small.max(axis=2)
    low = _fov_candidates(value, threshold)
    low = _clean_fov(low, value)
    if low.any():
        low = _clip_to_ellipse(low)
    return _upscale_mask(low, k, (height, width))


def _downscale(image):
    # An integer factor k lets OpenCV take its fast INTER_AREA path (plain k x k block means);
    # the last H % k rows and W % k columns are left out of the working copy and filled back by
    # edge replication in _upscale_mask.
    height, width = image.shape[:2]
    k = max(1, math.ceil(max(height, width) / FOV_WORK_SIZE))
    k = min(k, height, width)
    if k == 1:
        return image, 1
    h, w = height // k, width // k
    small = cv2.resize(image[: h * k, : w * k], (w, h), interpolation=cv2.INTER_AREA)
    return small, k


def _fov_candidates(value, threshold):
    if threshold is not None:
        return value > threshold
    hist = np.bincount(value.ravel(), minlength=256)
    background = min(int(np.searchsorted(np.cumsum(hist), 0.005 * value.size)), FOV_BACKGROUND_MAX)
    radius = max(1, round(FOV_LOCAL_RADIUS * max(value.shape)))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    # Grey dilation = the brightest pixel of the neighbourhood. Border pixels see only the image.
    local_max = cv2.dilate(value, kernel, borderType=cv2.BORDER_REPLICATE)
    floor = background + FOV_NOISE_FLOOR
    return (value > floor) & (value.astype(np.float32) > FOV_EDGE_FRACTION * local_max)


def _largest_component(mask, value=None):
    """The largest 4-connected component of a bool mask (by summed ``value`` when given)."""
    # 4-connectivity: a diagonal chain of noise pixels must not bridge the fundus to a halo.
    n, labels = cv2.connectedComponents(mask.view(np.uint8), connectivity=4, ltype=cv2.CV_32S)
    if n <= 1:
        return np.zeros_like(mask)
    weights = None if value is None else value.ravel().astype(np.float64)
    size = np.bincount(labels.ravel(), weights=weights, minlength=n)
    return labels == 1 + int(np.argmax(size[1:]))


def _clean_fov(candidates, value):
    # The FOV is the brightest large thing: weighing components by summed brightness keeps a
    # small bright FOV ahead of a larger dim surround of stray light.
    fov = _largest_component(candidates, value)
    if not fov.any():
        return fov
    fov = ndimage.binary_fill_holes(fov)
    radius = max(1, round(0.01 * math.sqrt(fov.sum() / math.pi)))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    # OpenCV's default border for morphology never erodes from outside the image, so a FOV cut
    # by the image border keeps its straight edge and its corners.
    m = fov.view(np.uint8)
    m = cv2.morphologyEx(m, cv2.MORPH_OPEN, kernel)
    m = cv2.morphologyEx(m, cv2.MORPH_CLOSE, kernel)
    fov = _largest_component(m.astype(bool))
    return ndimage.binary_fill_holes(fov)


def _ellipse_radius(points, ellipse):
    # Normalised radius of each point in the ellipse's frame: 1 on the ellipse.
    (cx, cy), (da, db), angle = ellipse
    theta = math.radians(angle)
    dx, dy = points[:, 0] - cx, points[:, 1] - cy
    u = dx * math.cos(theta) + dy * math.sin(theta)
    v = -dx * math.sin(theta) + dy * math.cos(theta)
    return np.sqrt((u / (da / 2)) ** 2 + (v / (db / 2)) ** 2)


def _clip_to_ellipse(fov):
    """Clip a FOV mask to its fitted ellipse (grown by the tolerance), when it fits."""
    h, w = fov.shape
    contours, _ = cv2.findContours(fov.view(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    if not contours:
        return fov
    points = np.concatenate([c.reshape(-1, 2) for c in contours]).astype(np.float32)  # (x, y)
    # Where the FOV is cut by the image border, the boundary is the border, not the circle.
    free = ((points[:, 0] > 1) & (points[:, 0] < w - 2) & (points[:, 1] > 1) & (points[:, 1] < h - 2))
    points = points[free]
    if len(points) < 20:
        return fov
    keep = np.ones(len(points), dtype=bool)
    for _ in range(4):
        # Refit on the inliers of the previous fit: a tab's points pull the first fit outward
        # a little; they are outliers of the second.
        if keep.sum() < 6:
            return fov
        ellipse = cv2.fitEllipse(points[keep])
        (cx, cy), (da, db), _ = ellipse
        if not (np.isfinite([cx, cy, da, db]).all() and min(da, db) > 0):
            return fov
        mean_radius = (da + db) / 4
        tolerance = FOV_FIT_TOLERANCE[0] + FOV_FIT_TOLERANCE[1] * mean_radius
        inliers = np.abs(_ellipse_radius(points, ellipse) - 1) * mean_radius <= tolerance
        if np.array_equal(inliers, keep):
            break
        keep = inliers
    if (inliers.mean() < FOV_FIT_MIN_INLIERS or max(da, db) > 1.5 * min(da, db)
            or max(da, db) > 4 * max(h, w)):
        return fov
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    grid = np.stack([xx.ravel(), yy.ravel()], axis=1)  # (x, y) pixel indices, as the contour
    inside = (_ellipse_radius(grid, ellipse) <= 1 + tolerance / mean_radius).reshape(h, w)
    clipped = fov & inside
    # A fit that would cut away a large part of the mask is a wrong fit, not a tab.
    if clipped.sum() < 0.9 * fov.sum():
        return fov
    return _largest_component(clipped)


def _upscale_mask(low, k, shape):
    height, width = shape
    if k == 1:
        return low.copy()
    h, w = low.shape
    big = cv2.resize(low.view(np.uint8) * np.uint8(255), (w * k, h * k), interpolation=cv2.INTER_LINEAR)
    if (h * k, w * k) != (height, width):
        big = cv2.copyMakeBorder(big, 0, height - h * k, 0, width - w * k, cv2.BORDER_REPLICATE)
    return big >= 128


# ----------------------------------------------------------------------------------------------
# Geometry


@dataclasses.dataclass(frozen=True)
class SquareBox:
    """A square window of an image, in original pixel coordinates; may reach past the border.

    The preprocessed image is this window (black where it lies outside the image) resized to
    ``size x size``. Pixel edges map to pixel edges: original pixel ``(r, c)`` (its centre at
    ``r + 0.5``) lands in target pixel ``floor((r + 0.5 - top) * size / side)``.

    Attributes:
        top: int, first row of the window (negative when it starts above the image).
        left: int, first column.
        side: int >= 1, the window's height and width in original pixels.
    """

    top: int
    left: int
    side: int

    def scale(self, size):
        """float, target pixels per original pixel at output ``size``."""
        return size / self.side

    def to_target(self, rows, cols, size):
        """Map original pixel indices to the target pixels that contain their centres.

        Args:
            rows, cols: int arrays (any equal shape) of original pixel indices.
            size: int, the output side.

        Returns:
            ``(rows, cols)`` int64 arrays of target pixel indices; they may fall outside
            ``[0, size)`` for original pixels outside the window.
        """
        s = self.scale(size)
        rows = np.floor((np.asarray(rows, dtype=np.float64) + 0.5 - self.top) * s).astype(np.int64)
        cols = np.floor((np.asarray(cols, dtype=np.float64) + 0.5 - self.left) * s).astype(np.int64)
        return rows, cols

    def to_source(self, rows, cols, size):
        """Map target pixel coordinates back to original coordinates (continuous).

        Args:
            rows, cols: float or int arrays of target coordinates, pixel centres at integers
                (as candidates ``(row, col)`` of DESIGN.md §3).
            size: int, the output side.

        Returns:
            ``(rows, cols)`` float64 arrays of original coordinates, pixel centres at integers.
        """
        s = self.scale(size)
        rows = (np.asarray(rows, dtype=np.float64) + 0.5) / s + self.top - 0.5
        cols = (np.asarray(cols, dtype=np.float64) + 0.5) / s + self.left - 0.5
        return rows, cols


def square_crop_box(fov):
    """The square around a field of view: its bounding box, padded to a centred square.

    Args:
        fov: ``(H, W)`` bool field-of-view mask.

    Returns:
        :class:`SquareBox`. The longer side of the FOV's bounding box is the square's side; the
        shorter is padded equally on both sides (one pixel more after, when odd), so a FOV cut
        by the image border comes out whole and centred with black where the image had nothing.
        For an empty FOV, the square around the whole image.

    Raises:
        ValueError: for a mask that is not 2-D or is empty.
    """
    fov = np.asarray(fov)
    if fov.ndim != 2 or fov.size == 0:
        raise ValueError(f"Expected a non-empty (H, W) mask. Received: fov.shape={fov.shape}")
    rows = np.flatnonzero(fov.any(axis=1))
    cols = np.flatnonzero(fov.any(axis=0))
    if rows.size == 0:
        r0, r1, c0, c1 = 0, fov.shape[0], 0, fov.shape[1]
    else:
        r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    h, w = r1 - r0, c1 - c0
    side = max(h, w)
    return SquareBox(top=r0 - (side - h) // 2, left=c0 - (side - w) // 2, side=side)


def _crop_pad(array, box):
    """The box's window of ``array`` (2-D or 3-D), zero outside the image."""
    height, width = array.shape[:2]
    r0, c0 = box.top, box.left
    r1, c1 = r0 + box.side, c0 + box.side
    sub = array[max(r0, 0): min(r1, height), max(c0, 0): min(c1, width)]
    pads = (max(0, -r0), max(0, r1 - height), max(0, -c0), max(0, c1 - width))
    if sub.size == 0:
        return np.zeros((box.side, box.side) + array.shape[2:], dtype=array.dtype)
    if any(pads):
        sub = cv2.copyMakeBorder(sub, *pads, cv2.BORDER_CONSTANT, value=0)
    return sub


def apply_geometry(array, box, size, kind="image"):
    """Crop, pad and resize one array of an image's set (image, lesion mask or FOV).

    Compute the box once per image with :func:`square_crop_box` and apply it to each array, so
    that all stay aligned.

    * ``"image"``: area interpolation when shrinking (it averages, so no aliasing), bicubic when
      enlarging.
    * ``"fov"``: the fraction of each target pixel covered by the FOV (area interpolation, or
      bilinear when enlarging), thresholded at one half.
    * ``"mask"`` (lesions): the same, and then **no lesion is lost**: each 8-connected component
      of the original (inside the box) that has no pixel left gets the target pixel where most of
      its own pixels land. Every component therefore keeps at least one pixel at the target
      location of one of its pixels (see :meth:`SquareBox.to_target`). Lesions closer than a
      target pixel may merge into one component when shrinking; that is expected (the image
      cannot separate them either) and a FROC on the result counts them as one lesion. A
      component wholly outside the box (outside the FOV's bounding box) cannot be kept.

    Args:
        array: ``(H, W, 3)`` uint8 for ``"image"``; ``(H, W)`` bool for ``"mask"`` and ``"fov"``.
        box: :class:`SquareBox`, from :func:`square_crop_box`.
        size: int >= 1, output side.
        kind: ``"image"``, ``"mask"`` or ``"fov"``.

    Returns:
        ``(size, size, 3)`` uint8 for an image, ``(size, size)`` bool for a mask or FOV.

    Raises:
        TypeError: for a box that is not a :class:`SquareBox` or a non-int size.
        ValueError: for an unknown kind or an array of the wrong shape.
    """
    if kind not in ("image", "mask", "fov"):
        raise ValueError(f'Expected kind "image", "mask" or "fov". Received: kind={kind!r}')
    if not isinstance(box, SquareBox):
        raise TypeError(f"Expected a SquareBox (from square_crop_box). Received: box={box!r}")
    size = _check_size(size)
    array = np.ascontiguousarray(array)  # OpenCV needs it; no copy in the usual case
    shrink = size < box.side
    if kind == "image":
        _check_image(array, "array")
        interpolation = cv2.INTER_AREA if shrink else cv2.INTER_CUBIC
        return cv2.resize(_crop_pad(array, box), (size, size), interpolation=interpolation)
    if array.ndim != 2:
        raise ValueError(f"Expected an (H, W) mask for kind={kind!r}. Received: array.shape={array.shape}")
    mask = array if array.dtype == bool else array != 0
    # 0/255 uint8 keeps OpenCV on its fast 8-bit paths; coverage is then known to 1/255.
    square = _crop_pad(mask.view(np.uint8), box) * np.uint8(255)
    interpolation = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    coverage = cv2.resize(square, (size, size), interpolation=interpolation)
    out = coverage >= 128
    if kind == "mask":
        _keep_components(mask, box, size, out)
    return out


def _keep_components(mask, box, size, out):
    """Give each lost 8-connected component of ``mask`` its best target pixel, in place."""
    height, width = mask.shape
    r0, c0 = max(box.top, 0), max(box.left, 0)
    sub = mask[r0: min(box.top + box.side, height), c0: min(box.left + box.side, width)]
    rows_any = np.flatnonzero(sub.any(axis=1))
    if rows_any.size == 0:
        return
    cols_any = np.flatnonzero(sub.any(axis=0))
    # Work on the lesions' bounding box only: labelling is the costly step.
    ra, rb, ca, cb = rows_any[0], rows_any[-1] + 1, cols_any[0], cols_any[-1] + 1
    sub = sub[ra:rb, ca:cb]
    # OpenCV's labelling (8-connected, as lesions are defined) is several times faster than scipy's.
    n, labels = cv2.connectedComponents(sub.view(np.uint8), connectivity=8, ltype=cv2.CV_32S)
    n -= 1  # background is label 0
    # The geometry is separable: one lookup table per axis maps original rows (columns) to the
    # target rows (columns) holding their centres.
    trow, _ = box.to_target(np.arange(r0 + ra, r0 + rb), np.zeros(1), size)
    _, tcol = box.to_target(np.zeros(1), np.arange(c0 + ca, c0 + cb), size)
    np.clip(trow, 0, size - 1, out=trow)
    np.clip(tcol, 0, size - 1, out=tcol)
    # hit[y, x]: the target pixel of original pixel (y, x) is lesion.
    hit = np.take(out[trow], tcol, axis=1)
    kept = np.zeros(n + 1, dtype=bool)
    kept[labels[hit]] = True
    lost = ~kept
    lost[0] = False
    if not lost.any():
        return
    rows, cols = np.nonzero(lost[labels])
    lab = labels[rows, cols].astype(np.int64)
    # For each lost component, the target pixel holding most of its pixels: count (label, target
    # pixel) pairs, then take the largest count per label.
    key = lab * (size * size) + trow[rows] * size + tcol[cols]
    pairs, counts = np.unique(key, return_counts=True)
    owner = pairs // (size * size)
    order = np.lexsort((counts, owner))  # by label, then count ascending
    owner_sorted = owner[order]
    last = np.r_[owner_sorted[1:] != owner_sorted[:-1], True]
    out.flat[pairs[order][last] % (size * size)] = True


def preprocess_image(image, size, *, masks=None, fov=None):
    """Crop one image to its field of view, pad it to a square and resize it, with its masks.

    One geometry (:func:`square_crop_box` of the FOV) is applied to the image, its lesion masks
    and its FOV (:func:`apply_geometry`); pixels outside the resized FOV are set to black, so
    that camera tabs, halos and text outside the FOV do not reach the network. Lesion masks are
    not clipped to the FOV (an annotation outside it is left for the user to see).

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        size: int >= 1, the output side.
        masks: optional dict ``{type: (H, W) bool}`` of lesion masks, or None.
        fov: optional ``(H, W)`` bool field of view; None computes it with :func:`fov_mask`.

    Returns:
        tuple ``(image, masks, fov)``: ``(size, size, 3)`` uint8, dict ``{type: (size, size)
        bool}`` (None when ``masks`` is None), ``(size, size)`` bool.

    Raises:
        TypeError: for a non-array image, non-dict masks or a non-int size.
        ValueError: for a wrong shape or dtype, or a mask or FOV whose size differs from the
            image's.
    """
    _check_image(image)
    size = _check_size(size)
    shape = image.shape[:2]
    if masks is not None and not isinstance(masks, dict):
        raise TypeError(f"Expected a dict of masks or None. Received: masks of type {type(masks).__name__}")
    masks = None if masks is None else {k: _check_mask(m, shape, f"masks[{k!r}]") for k, m in masks.items()}
    fov = fov_mask(image) if fov is None else _check_mask(fov, shape, "fov")
    box = square_crop_box(fov)
    out_fov = apply_geometry(fov, box, size, kind="fov")
    out_image = apply_geometry(image, box, size, kind="image")
    out_image[~out_fov] = 0
    out_masks = None if masks is None else {k: apply_geometry(m, box, size, kind="mask")
                                            for k, m in masks.items()}
    return out_image, out_masks, out_fov


# ----------------------------------------------------------------------------------------------
# Dataset caching

# Errors that mean "this record's files are bad", as opposed to a bug or a full disk: skippable.
_RECORD_ERRORS = (ValueError, OSError, cv2.error)

_WORKER_DATASET = None


def _image_path(out, image_id):
    return os.path.join(out, "images", f"{image_id}.png")


def _load_fov(rec, image):
    # The package's records take the decoded image, so a computed FOV costs no second decode;
    # a duck-typed record may not.
    load = rec.load_fov
    try:
        takes_image = "image" in inspect.signature(load).parameters
    except (TypeError, ValueError):
        takes_image = False
    return load(image=image) if takes_image else load()


def _remove_outputs(out, image_id):
    # Image first: a sample without its image is "not done", whatever else is left.
    paths = [_image_path(out, image_id), os.path.join(out, "fov", f"{image_id}.png")]
    paths += [os.path.join(out, "masks", t, f"{image_id}.png") for t in LESION_TYPES]
    for path in paths:
        try:
            os.remove(path)
        except FileNotFoundError:
            pass


def _process(rec, out, size, overwrite):
    """Preprocess and write one record; return a small report (runs in a worker)."""
    start = time.perf_counter()
    path = getattr(rec, "image_path", None)
    try:
        image = rec.load_image()
        masks = rec.load_lesions()
        fov = _load_fov(rec, image)
        image, masks, fov = preprocess_image(image, size, masks=masks, fov=fov)
    except _RECORD_ERRORS as err:
        return {"id": rec.id, "path": path, "error": f"{type(err).__name__}: {err}"}
    warnings = []
    if not fov.any():
        warnings.append(f"{rec.id}: no field of view found (blank image?): {path}")
    if overwrite:
        _remove_outputs(out, rec.id)
    write_sample(out, rec.id, image, masks=masks, fov=fov)
    return {"id": rec.id, "path": path, "error": None, "warnings": warnings,
            "seconds": time.perf_counter() - start}


def _init_worker(dataset=None):
    global _WORKER_DATASET
    # One OpenCV thread per process: the pool already uses every core.
    cv2.setNumThreads(1)
    _WORKER_DATASET = dataset


def _process_index(index, out, size, overwrite):
    return _process(_WORKER_DATASET[index], out, size, overwrite)


def _check_params(out, size, overwrite):
    """Refuse to resume into a folder made with other parameters; write ours."""
    path = os.path.join(out, PARAMS_FILE)
    if os.path.exists(path) and not overwrite:
        try:
            with open(path, encoding="utf-8") as f:
                previous = json.load(f)
            previous_size = previous["size"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ValueError(f"Expected a readable {PARAMS_FILE} with a size in {out} to resume. "
                             f"Received: path={path!r} ({err})") from None
        if previous_size != size:
            raise ValueError(
                f"Expected size={previous_size} to resume into {out}, which an earlier run made at "
                f"that size (see {PARAMS_FILE}); choose another output folder or pass "
                f"overwrite=True to redo it. Received: size={size}")
    elif not os.path.exists(path) and not overwrite and os.path.isdir(os.path.join(out, "images")) \
            and os.listdir(os.path.join(out, "images")):
        raise ValueError(f"Expected an empty output folder or one written by preprocess_dataset "
                         f"(with {PARAMS_FILE}); {out}/images/ holds files of unknown size. "
                         f"Received: out={out!r}")
    os.makedirs(out, exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"size": size, "dr_saliency": __version__}, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def _previous_rows(out, ids):
    """Rows of an earlier labels.csv for images not in this dataset but still on disk."""
    path = os.path.join(out, "labels.csv")
    if not os.path.exists(path):
        return []
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error):
        return []
    kept = []
    for row in rows:
        image_id = (row.get("image") or "").strip()
        if image_id and image_id not in ids and os.path.exists(_image_path(out, image_id)):
            kept.append({"image": image_id, "level": row.get("level") or None,
                         "split": row.get("split") or None})
    return kept


def _write_labels(out, records, previous):
    rows = list(previous)
    rows += [{"image": rec.id, "level": getattr(rec, "grade", None), "split": getattr(rec, "split", None)}
             for rec in records if os.path.exists(_image_path(out, rec.id))]
    if not any(row["split"] is not None for row in rows):
        rows = [{"image": r["image"], "level": r["level"]} for r in rows]
    return write_labels(out, rows)


def _default_workers():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _pool_context():
    # Not "fork": a forked child hung for good in cv2.setNumThreads(1) once OpenCV had used its
    # thread pool in the parent (opencv-python 5.0), and the caller may hold TensorFlow's threads.
    # "forkserver" (Python 3.14's default on POSIX) forks workers from a clean server process,
    # which imports this module once for all of them. Like "spawn", it needs the calling script
    # to guard its entry point with `if __name__ == "__main__":`.
    methods = multiprocessing.get_all_start_methods()
    if "forkserver" in methods:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["dr_saliency.fundus.prepare"])
        return ctx
    return multiprocessing.get_context("spawn")


def preprocess_dataset(dataset, out, *, size=DEFAULT_SIZE, workers=None, skip_bad=False,
                       on_progress=None, overwrite=False):
    """Preprocess a whole dataset once into the package's folder layout (DESIGN.md §4).

    Each record is decoded once, cropped to its field of view, padded to a square and resized
    (:func:`preprocess_image`), and written with :func:`~dr_saliency.fundus.datasets.folder.write_sample`:
    ``images/<id>.png``, ``masks/<T>/<id>.png`` for the lesion types the record has (none when its
    lesions are None), ``fov/<id>.png``; then ``labels.csv`` (``image,level`` and ``split`` when
    records have one) and ``preprocess.json`` (the size).

    Resumable: a record whose image is already in ``out`` (the image is written last, atomically,
    so it marks a complete sample) is skipped; ``labels.csv`` is rewritten at the end, and also
    when the run stops on an error or an interrupt, listing every complete sample, those of
    earlier runs included. Resuming into a folder made at another size is refused.

    Records are processed by a process pool; workers receive the records (pickled) or, when
    records cannot be pickled but the dataset can, the dataset once and indices.

    Args:
        dataset: a sequence of records with ``id``, ``grade``, ``split``, ``image_path``,
            ``load_image()``, ``load_lesions()`` and ``load_fov()`` (DESIGN.md §3), e.g. from
            :func:`dr_saliency.fundus.datasets.open_dataset`; its ``warnings`` are passed on.
        out: str or path-like, the output folder (created).
        size: int >= ``MIN_SIZE``, side of the square output images.
        workers: int >= 1 or None (one per available core); 1 runs in this process.
        skip_bad: bool. False: the first bad record (unreadable or truncated image, mask of
            the wrong size) stops the run with a ``ValueError`` naming its file; what was written
            stays valid. True: bad records are skipped and reported in ``summary["skipped"]``.
        on_progress: optional callable ``on_progress(k)``, called in this process with the number
            of records just accounted for (done earlier, written or skipped); the calls add up to
            ``len(dataset)``.
        overwrite: bool, redo records already in ``out`` (and allow another size); rows of
            an earlier ``labels.csv`` for images not in this dataset are then dropped.

    Returns:
        dict: ``out``, ``size``, ``total`` (records), ``written`` (this run), ``already_done``
        (skipped as complete), ``skipped`` (list of ``(id, message)`` for bad records, the
        message naming the file), ``warnings`` (list of str: the dataset's own, then e.g. blank
        images), ``labels`` (path of labels.csv), ``seconds``.

    Raises:
        TypeError: for a non-int size or workers, or a dataset that is not a sequence.
        ValueError: for a size or workers out of range, duplicate record ids, an output folder
            made at another size, or (unless ``skip_bad``) a bad record.
    """
    start = time.perf_counter()
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
        raise TypeError(f"Expected an int size. Received: size={size!r}")
    if size < MIN_SIZE:
        raise ValueError(f"Expected size >= {MIN_SIZE}. Received: size={size!r}")
    size = int(size)
    if workers is not None:
        if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)):
            raise TypeError(f"Expected an int workers or None. Received: workers={workers!r}")
        if workers < 1:
            raise ValueError(f"Expected workers >= 1 or None. Received: workers={workers!r}")
    if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
        raise TypeError(f"Expected a sequence of records (len and indexing). "
                        f"Received: dataset of type {type(dataset).__name__}")
    if on_progress is not None and not callable(on_progress):
        raise TypeError(f"Expected a callable or None. Received: on_progress={on_progress!r}")
    out = os.fspath(out)
    records = [dataset[i] for i in range(len(dataset))]
    ids = [rec.id for rec in records]
    if len(set(ids)) != len(ids):
        duplicates = sorted(k for k, n in collections.Counter(ids).items() if n > 1)[:5]
        raise ValueError(f"Expected unique record ids. Received: duplicate ids={duplicates}")

    _check_params(out, size, overwrite)
    previous = [] if overwrite else _previous_rows(out, set(ids))
    progress = on_progress or (lambda k: None)
    todo = [i for i, rec in enumerate(records)
            if overwrite or not os.path.exists(_image_path(out, rec.id))]
    summary = {"out": out, "size": size, "total": len(records), "written": 0,
               "already_done": len(records) - len(todo), "skipped": [],
               "warnings": list(getattr(dataset, "warnings", []) or []), "labels": None,
               "seconds": 0.0}
    if summary["already_done"]:
        progress(summary["already_done"])

    def account(report):
        if report["error"] is None:
            summary["written"] += 1
            summary["warnings"].extend(report["warnings"])
        else:
            rec_path = report["path"]
            message = f"{rec_path}: {report['error']}" if rec_path else report["error"]
            if not skip_bad:
                raise ValueError(f"Could not preprocess record {report['id']!r} ({message}). "
                                 f"Pass skip_bad=True to skip bad records.")
            summary["skipped"].append((report["id"], message))
        progress(1)

    n_workers = min(workers or _default_workers(), max(1, len(todo)))
    try:
        if n_workers == 1:
            for i in todo:
                account(_process(records[i], out, size, overwrite))
        else:
            _run_pool(records, dataset, todo, out, size, overwrite, n_workers, account, summary)
    finally:
        summary["labels"] = _write_labels(out, records, previous)
    order = {image_id: i for i, image_id in enumerate(ids)}
    summary["skipped"].sort(key=lambda item: order[item[0]])
    summary["seconds"] = time.perf_counter() - start
    return summary


def _run_pool(records, dataset, todo, out, size, overwrite, n_workers, account, summary):
    try:
        pickle.dumps(records[todo[0]])
        by_record = True
    except Exception:  # noqa: BLE001 - any pickling failure means "send indices instead"
        by_record = False
    initargs = ()
    if not by_record:
        try:
            pickle.dumps(dataset)
            initargs = (dataset,)
        except Exception:  # noqa: BLE001
            summary["warnings"].append("Records and dataset cannot be pickled: preprocessing "
                                       "in this process only (workers=1).")
            for i in todo:
                account(_process(records[i], out, size, overwrite))
            return
    executor = concurrent.futures.ProcessPoolExecutor(
        max_workers=n_workers, mp_context=_pool_context(), initializer=_init_worker,
        initargs=initargs)
    try:
        if by_record:
            futures = [executor.submit(_process, records[i], out, size, overwrite) for i in todo]
        else:
            futures = [executor.submit(_process_index, i, out, size, overwrite) for i in todo]
        for future in concurrent.futures.as_completed(futures):
            account(future.result())
    except BaseException:
        # Stop at once: queued records are dropped, running ones finish (their samples are
        # complete and labels.csv will list them).
        executor.shutdown(wait=True, cancel_futures=True)
        raise
    executor.shutdown(wait=True)
