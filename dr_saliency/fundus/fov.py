"""Per-image field-of-view geometry: find the FOV, crop it square, pad and resize.

A fundus photograph is a bright, roughly circular field of view (FOV) on a black surround, often cut
at the top and bottom by the image border, sometimes with a small bright tab (a camera marker) on
its rim. The network (González-Gonzalo et al., MIDL 2018) takes a square 512x512 image, so every
image is cropped to the bounding box of its FOV, padded with black to a centred square and resized;
the same geometry is applied to its lesion masks and to its FOV, so that the three stay aligned
pixel for pixel. How the FOV is found, and why: docs/preprocessing.md.

Pure numpy / OpenCV / scipy: no TensorFlow here.

Public API::

    fov_mask(image, *, threshold=None) -> (H, W) bool
    square_crop_box(fov) -> SquareBox
    apply_geometry(array, box, size, kind="image" | "mask" | "fov") -> resized array
    restore_geometry(array, box, shape) -> the array on the original pixel grid
    preprocess_image(image, size, *, masks=None, fov=None) -> (image, masks, fov)
"""

import dataclasses
import math

import cv2
import numpy as np
from scipy import ndimage

from dr_saliency.core.checks import check_fov, check_image

__all__ = [
    "DEFAULT_SIZE",
    "MIN_SIZE",
    "SquareBox",
    "apply_geometry",
    "fov_mask",
    "preprocess_image",
    "restore_geometry",
    "square_crop_box",
]

DEFAULT_SIZE = 512
"""Side of the preprocessed square images: the paper's network input."""

MIN_SIZE = 128
"""Smallest side :func:`preprocess_dataset` accepts: below it VGG-16's five poolings leave
almost nothing and microaneurysms vanish (docs/results.md)."""

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
    check_image(image)
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
                (as candidates ``(row, col)`` of docs/contracts.md).
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
        check_image(array, "array")
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


def restore_geometry(array, box, shape):
    """Put a map of the preprocessed square back onto the original image's pixel grid.

    The inverse of :func:`apply_geometry`: each original pixel takes the bilinearly interpolated
    value at its centre's position in the square (:meth:`SquareBox.to_target`'s mapping, without
    the rounding), and 0 where that position lies outside the square. A bool array (a mask) is
    resampled by nearest neighbour and stays bool.

    Args:
        array: ``(size, size)`` real map (float32 for saliency) or bool mask of the square.
        box: :class:`SquareBox` the square was made with.
        shape: ``(H, W)`` of the original image.

    Returns:
        ``(H, W)`` float32 for a real map, bool for a mask.

    Raises:
        TypeError: for a box that is not a :class:`SquareBox`.
        ValueError: for an array that is not square and 2-D, or a bad shape.
    """
    if not isinstance(box, SquareBox):
        raise TypeError(f"Expected a SquareBox (from square_crop_box). Received: box={box!r}")
    array = np.asarray(array)
    if array.ndim != 2 or array.shape[0] != array.shape[1] or array.shape[0] < 1:
        raise ValueError(f"Expected a square (size, size) array. Received: array.shape={array.shape}")
    if (not isinstance(shape, (tuple, list)) or len(shape) < 2
            or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1
                   for v in shape[:2])):
        raise ValueError(f"Expected shape (H, W) of positive ints. Received: shape={shape!r}")
    height, width = int(shape[0]), int(shape[1])
    size = array.shape[0]
    s = box.scale(size)
    # Original pixel centre x + 0.5 lands at square coordinate (x + 0.5 - left) * s, whose pixel
    # centres are at integers + 0.5: hence the -0.5. WARP_INVERSE_MAP: this matrix maps output
    # (original) pixels to input (square) coordinates.
    matrix = np.array([[s, 0, (0.5 - box.left) * s - 0.5],
                       [0, s, (0.5 - box.top) * s - 0.5]], dtype=np.float64)
    flags = cv2.WARP_INVERSE_MAP
    if array.dtype == bool:
        out = cv2.warpAffine(array.view(np.uint8), matrix, (width, height),
                             flags=flags | cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT,
                             borderValue=0)
        return out.astype(bool)
    return cv2.warpAffine(np.ascontiguousarray(array, dtype=np.float32), matrix, (width, height),
                          flags=flags | cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=0)


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
    check_image(image)
    size = _check_size(size)
    shape = image.shape[:2]
    if masks is not None and not isinstance(masks, dict):
        raise TypeError(f"Expected a dict of masks or None. Received: masks of type {type(masks).__name__}")
    masks = None if masks is None else {k: _check_mask(m, shape, f"masks[{k!r}]") for k, m in masks.items()}
    fov = fov_mask(image) if fov is None else check_fov(fov, shape, "fov")
    box = square_crop_box(fov)
    out_fov = apply_geometry(fov, box, size, kind="fov")
    out_image = apply_geometry(image, box, size, kind="image")
    out_image[~out_fov] = 0
    out_masks = None if masks is None else {k: apply_geometry(m, box, size, kind="mask")
                                            for k, m in masks.items()}
    return out_image, out_masks, out_fov


