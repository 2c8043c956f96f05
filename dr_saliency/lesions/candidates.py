"""Saliency map -> scored lesion candidates, for the lesion-level FROC of :mod:`dr_saliency.lesions.froc`.

González-Gonzalo et al. (MIDL 2018, "Improving weakly-supervised lesion localization with iterative
saliency map refinement") evaluate saliency maps with a lesion-level FROC but do not say how a map
becomes a list of detections. Here a candidate is a local maximum of the lightly smoothed map: the
map is smoothed with a Gaussian of ``sigma`` px (a guided-backprop map is speckled at the pixel
scale, and one lesion would otherwise give many maxima), and a pixel is a candidate when it equals
the maximum of its ``(2 * min_distance + 1)`` square window and exceeds ``threshold`` (and 0). A
connected plateau of equal maxima gives one candidate. Its score is the *smoothed* map's value there.

Where candidates may lie: inside the field of view (FOV), outside an optional ``exclude`` mask (the
optic disc: :func:`estimate_optic_disc` or :func:`disc_mask`), and more than ``border`` px from the
FOV edge. A prototype of the method found that excluding the optic disc and the FOV rim from the
candidates was the largest single gain in FROC (docs/results.md): the grader's gradients are large on
those bright, high-contrast structures, which are not lesions.

The defaults are module constants, to be re-chosen by a search on validation data.

Pure numpy / OpenCV / scipy: no TensorFlow here.

Public API::

    detect_candidates(saliency_map, fov_mask=None, *, sigma=1.0, min_distance=4, threshold=0.0,
                      max_candidates=200, exclude=None, border=0) -> (K, 3) float64 (row, col, score)
    estimate_optic_disc(image, fov_mask=None, *, radius_fraction=0.2, sigma_fraction=0.05)
        -> OpticDisc(center, radius, mask)
    disc_mask(shape, center, radius) -> (H, W) bool
"""

import collections

import cv2
import numpy as np
from scipy import ndimage

from dr_saliency.core.checks import check_fov, check_image, check_saliency_map, is_int, is_real

__all__ = [
    "CANDIDATE_METHODS",
    "check_options",
    "DEFAULT_BORDER",
    "DEFAULT_LEVEL",
    "DEFAULT_METHOD",
    "DEFAULT_DISC_RADIUS_FRACTION",
    "DEFAULT_DISC_SIGMA_FRACTION",
    "DEFAULT_MAX_CANDIDATES",
    "DEFAULT_MIN_DISTANCE",
    "DEFAULT_SIGMA",
    "DEFAULT_THRESHOLD",
    "OpticDisc",
    "detect_candidates",
    "disc_mask",
    "estimate_optic_disc",
]

DEFAULT_SIGMA = 1.0
"""Standard deviation (px) of the Gaussian the map is smoothed with before maxima are taken; 0 =
no smoothing. About a pixel merges the pixel-scale speckle of a guided-backprop map (256-512 px)."""

DEFAULT_MIN_DISTANCE = 4
"""Half-width (px) of the square window a maximum must dominate: two candidates are always more
than this far apart in Chebyshev distance (max(|d_row|, |d_col|)). 4 px at 256-512 px input is
about the radius of a small haemorrhage."""

DEFAULT_THRESHOLD = 0.0
"""Candidates need a smoothed value above this (and above 0)."""

CANDIDATE_METHODS = ("peaks", "components")
"""Where a candidate sits: at a local maximum of the smoothed map (``"peaks"``), or at the centroid
of a connected region of it above a fraction of the image's maximum (``"components"``). A
guided-backprop map outlines a lesion: its maxima lie on the edge, the centroid of the outline
inside the lesion."""

DEFAULT_METHOD = "peaks"

DEFAULT_LEVEL = 0.2
"""``"components"``: the regions are where the smoothed map exceeds this fraction of its maximum
over the allowed pixels of the image."""

DEFAULT_MAX_CANDIDATES = 200
"""Cap per image (the highest scores are kept): FROC is read at <= 8-10 false positives per image,
so candidates far below that are never needed."""

DEFAULT_BORDER = 0
"""Width (px) of the FOV rim where no candidate is allowed; 0 = none. (The evaluation's own
default, chosen on validation data, is ``localize.CandidateOptions.border``.)"""

DEFAULT_DISC_RADIUS_FRACTION = 0.2
"""Radius of the excluded disc region, as a fraction of the FOV radius. The optic disc's radius is
0.13-0.16 FOV radii (a diameter of 1/7.7 to 1/6.25 of the FOV's, as :mod:`dr_saliency.fundus.synth`
draws it); the margin covers the estimate's error and the disc's bright rim."""

DEFAULT_DISC_SIGMA_FRACTION = 0.05
"""Standard deviation of the blur that finds the disc, as a fraction of the FOV radius: about a
third of the disc's radius, so that the disc stands out and small bright lesions (exudates) do not.
Measured when it was chosen: the estimated centre was within one disc radius of the true centre on
59 of 60 synthetic images (256 px, stages 0-4) and 19 of the 20 IDRiD training images (IDRiD_10
failed); wider blurs (0.1, 0.14) failed more often, as the illumination gradient took over."""

# 8-connectivity: diagonal neighbours belong to the same plateau.
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)

# Longest image side at which the disc is searched for: the blur is wide, so nothing is lost at a
# lower resolution, and the blur's cost no longer grows with the photograph's size.
_DISC_WORKING_SIDE = 512


class OpticDisc(collections.namedtuple("OpticDisc", ["center", "radius", "mask"])):
    """An (estimated) optic disc region.

    Attributes:
        center: ``(row, col)`` float, pixels, in the input image's coordinates.
        radius: float, pixels: the radius of the excluded region (not the disc's own radius).
        mask: ``(H, W)`` bool, True within ``radius`` of ``center`` (and inside the FOV).
    """

    __slots__ = ()


def check_options(sigma, min_distance, threshold, max_candidates, border, method, level):
    """Refuse candidate settings :func:`detect_candidates` cannot use (each error names the
    argument and the value received)."""
    if method not in CANDIDATE_METHODS:
        raise ValueError(f"Expected method in {CANDIDATE_METHODS}. Received: method={method!r}")
    if not is_real(level) or not 0 < level < 1:
        raise ValueError(f"Expected level in (0, 1). Received: level={level!r}")
    if not is_real(sigma) or not 0 <= sigma < np.inf:
        raise ValueError(f"Expected a finite sigma >= 0. Received: sigma={sigma!r}")
    if not is_int(min_distance) or min_distance < 1:
        # 0 would make every pixel its own window's maximum: one candidate per positive pixel.
        raise ValueError(f"Expected an integer min_distance >= 1. Received: min_distance={min_distance!r}")
    if not is_real(threshold) or not np.isfinite(threshold):
        raise ValueError(f"Expected a finite threshold. Received: threshold={threshold!r}")
    if max_candidates is not None and (not is_int(max_candidates) or max_candidates < 1):
        raise ValueError("Expected max_candidates to be None or an integer >= 1. "
                         f"Received: max_candidates={max_candidates!r}")
    if not is_real(border) or not 0 <= border < np.inf:
        raise ValueError(f"Expected a finite border >= 0. Received: border={border!r}")


def _away_from_edge(fov, border):
    """FOV pixels farther than ``border`` px (Euclidean, pixel centres) from any non-FOV pixel.

    The image is padded with a ring of non-FOV pixels, so the image border counts as an edge too:
    a FOV cut by the top and bottom of the photograph has its rim there.
    """
    distance = ndimage.distance_transform_edt(np.pad(fov, 1))[1:-1, 1:-1]
    return distance > border


def _plateau_points(peaks):
    """One pixel per 8-connected component of ``peaks``: the one nearest its centroid.

    Ties (e.g. the four central pixels of a 2x2 plateau) go to the first in raster order.

    Returns:
        rows, cols: (n,) int64 arrays, one entry per component, in label order.
    """
    labels, n = ndimage.label(peaks, structure=_EIGHT_CONNECTED)
    rows, cols = np.nonzero(labels)  # raster order
    if n == 0:
        return rows, cols
    lab = labels[rows, cols]
    counts = np.bincount(lab, minlength=n + 1)[1:]
    centre_r = np.bincount(lab, weights=rows, minlength=n + 1)[1:] / counts
    centre_c = np.bincount(lab, weights=cols, minlength=n + 1)[1:] / counts
    d2 = (rows - centre_r[lab - 1]) ** 2 + (cols - centre_c[lab - 1]) ** 2
    # Sort by component, then distance to its centroid, then raster position; keep each
    # component's first entry.
    order = np.lexsort((np.arange(rows.size), d2, lab))
    first = np.ones(order.size, dtype=bool)
    first[1:] = lab[order[1:]] != lab[order[:-1]]
    keep = order[first]
    return rows[keep], cols[keep]


def _suppress_equal_neighbours(rows, cols, scores, min_distance):
    """Drop candidates that tie with an earlier one within ``min_distance`` (Chebyshev).

    Candidates arrive sorted by score (descending), then row, then column. Unequal maxima closer
    within ``min_distance`` cannot both exist (the lower one sees the higher one in its window), but
    two separate plateaus of exactly equal value can; of those, the first in sort order is kept,
    greedily. Only groups of tied scores are looped over, and ties are rare in float maps.
    """
    keep = np.ones(scores.size, dtype=bool)
    if scores.size < 2:
        return keep
    starts = np.flatnonzero(np.r_[True, scores[1:] != scores[:-1]])
    ends = np.r_[starts[1:], scores.size]
    for start, end in zip(starts[ends - starts > 1], ends[ends - starts > 1]):
        for i in range(start, end):
            if not keep[i]:
                continue
            later = np.arange(i + 1, end)
            near = np.maximum(np.abs(rows[later] - rows[i]), np.abs(cols[later] - cols[i])) <= min_distance
            keep[later[near]] = False
    return keep


def detect_candidates(saliency_map, fov_mask=None, *, sigma=DEFAULT_SIGMA,
                      min_distance=DEFAULT_MIN_DISTANCE, threshold=DEFAULT_THRESHOLD,
                      max_candidates=DEFAULT_MAX_CANDIDATES, exclude=None, border=DEFAULT_BORDER,
                      method=DEFAULT_METHOD, level=DEFAULT_LEVEL):
    """Scored lesion candidates: the local maxima of a lightly smoothed saliency map, or the
    centroids of its salient regions.

    Steps of ``method="peaks"``, in order:

    1. The map is set to 0 outside the FOV (the contract of a saliency map, enforced) and smoothed
       with a Gaussian of standard deviation ``sigma`` px (``scipy.ndimage.gaussian_filter``,
       ``mode="nearest"``; none when ``sigma`` is 0), in float64.
    2. Peaks: pixels equal to the maximum of the smoothed map over their
       ``(2 * min_distance + 1)`` square window (``scipy.ndimage.maximum_filter``, the window
       clipped at the image border) and greater than both ``threshold`` and 0.
    3. Allowed pixels: inside the FOV, outside ``exclude``, and farther than ``border`` px
       (Euclidean) from the FOV's edge, the image border included. Peaks are found on the whole
       map *before* this restriction, so a structure whose maximum lies in an excluded region
       (the optic disc) is removed entirely rather than leaving candidates on its slopes just
       outside the region.
    4. Each 8-connected plateau of allowed peaks (equal values) becomes one candidate, at the
       plateau pixel nearest the plateau's centroid (ties: first in raster order), so that flat
       maps give a handful of candidates rather than thousands.
    5. Candidates are sorted by score, descending, ties by row and then column. Of separate
       plateaus with exactly equal scores within ``min_distance`` (Chebyshev) of each other, only
       the first in that order is kept; with this, any two candidates are more than
       ``min_distance`` apart in Chebyshev distance.
    6. At most ``max_candidates`` are kept: the first in that order.

    The score is the *smoothed* map's value at the candidate, so that it is the value the maximum
    was found on (an isolated one-pixel spike in the original map does not outrank a lesion).

    ``method="components"`` replaces steps 2, 4 and 5: the regions are the allowed pixels where
    the smoothed map exceeds ``level`` times its maximum over the allowed pixels; regions closer
    than ``min_distance`` px are joined (a lesion's outline broken into arcs is one region); each
    region gives one candidate at its centroid (rounded; the pixel nearest it within the region
    when the rounded centroid falls outside the allowed pixels) with the region's largest
    smoothed value as its score. Candidates are sorted as in step 5 and capped as in step 6.

    Args:
        saliency_map: (H, W) float32 (any real dtype) saliency map, larger = more salient, finite.
        fov_mask: (H, W) bool field of view, or None for the whole image.
        sigma: float >= 0, standard deviation (px) of the Gaussian smoothing; 0 = none.
        min_distance: int >= 1, half-width (px) of the window a candidate must be the maximum of.
        threshold: float, smallest smoothed value (exclusive) of a candidate; candidates also need
            a value > 0.
        max_candidates: int >= 1 or None (no cap): the highest-scoring candidates kept per image.
        exclude: (H, W) bool, True where candidates are not allowed (e.g. the optic disc), or None.
        border: float >= 0, FOV pixels within this Euclidean distance (px) of a non-FOV pixel or of
            the image border are not allowed; 0 = none.
        method: one of :data:`CANDIDATE_METHODS`.
        level: in (0, 1), the region threshold of ``"components"`` (fraction of the maximum).

    Returns:
        (K, 3) float64 array of ``(row, col, score)`` rows, sorted by score descending (ties: row,
        then column ascending). Rows and columns are integral pixel positions. K may be 0.

    Raises:
        TypeError: map not real-valued; ``fov_mask`` or ``exclude`` not bool.
        ValueError: bad shapes; NaN or infinite map values; bad options.
    """
    smap = check_saliency_map(saliency_map)
    fov = check_fov(fov_mask, smap.shape)
    excluded = None if exclude is None else check_fov(exclude, smap.shape, name="exclude")
    check_options(sigma, min_distance, threshold, max_candidates, border, method, level)

    smap = np.where(fov, smap.astype(np.float64), 0.0)
    smoothed = ndimage.gaussian_filter(smap, float(sigma), mode="nearest") if sigma > 0 else smap

    allowed = fov.copy()
    if excluded is not None:
        allowed &= ~excluded
    if border > 0:
        allowed &= _away_from_edge(fov, border)

    if method == "components":
        rows, cols, scores = _components(smoothed, allowed, level, min_distance, threshold)
        order = np.lexsort((cols, rows, -scores))
        result = np.column_stack([rows[order], cols[order], scores[order]]).astype(np.float64)
    else:
        window_max = ndimage.maximum_filter(smoothed, size=2 * min_distance + 1, mode="nearest")
        peaks = (smoothed == window_max) & (smoothed > threshold) & (smoothed > 0) & allowed
        rows, cols = _plateau_points(peaks)
        scores = smoothed[rows, cols]
        order = np.lexsort((cols, rows, -scores))
        rows, cols, scores = rows[order], cols[order], scores[order]
        keep = _suppress_equal_neighbours(rows, cols, scores, min_distance)
        result = np.column_stack([rows[keep], cols[keep], scores[keep]]).astype(np.float64)
    if max_candidates is not None:
        result = result[:max_candidates]
    return result.reshape(-1, 3)


def _components(smoothed, allowed, level, min_distance, threshold):
    """Rows, cols and scores of the regions' candidates (see ``detect_candidates``)."""
    values = np.where(allowed, smoothed, 0.0)
    peak = values.max(initial=0.0)
    empty = np.empty(0, dtype=np.int64)
    if not peak > 0:
        return empty, empty, np.empty(0)
    region = (values > level * peak) & (values > threshold)
    # Join regions closer than min_distance: label the dilated mask, keep the original pixels.
    joined = cv2.dilate(region.view(np.uint8), np.ones((2 * min_distance - 1,) * 2, np.uint8)) \
        if min_distance > 1 else region.view(np.uint8)
    labels, n = ndimage.label(joined, structure=_EIGHT_CONNECTED)
    labels = np.where(region, labels, 0)
    # Every joined component is the dilation of region pixels, so each holds some.
    index = np.arange(1, n + 1)
    scores = ndimage.maximum(values, labels, index)
    centres = np.asarray(ndimage.center_of_mass(region, labels, index)).reshape(-1, 2)
    rows = np.floor(centres[:, 0] + 0.5).astype(np.int64)
    cols = np.floor(centres[:, 1] + 0.5).astype(np.int64)
    outside = ~allowed[rows, cols]
    for k in np.flatnonzero(outside):  # a ring around the disc or the rim: nearest region pixel
        pr, pc = np.nonzero(labels == index[k])
        nearest = np.argmin((pr - centres[k, 0]) ** 2 + (pc - centres[k, 1]) ** 2)
        rows[k], cols[k] = pr[nearest], pc[nearest]
    return rows, cols, np.asarray(scores, dtype=np.float64)


def disc_mask(shape, center, radius):
    """Pixels within Euclidean distance ``radius`` of ``center`` (pixel centres).

    For datasets that give the optic disc's position (the synthetic set's ``disc_center`` and
    ``disc_radius``, IDRiD's localisation ground truth), to pass as ``exclude`` to
    :func:`detect_candidates`.

    Args:
        shape: ``(H, W)`` of the mask.
        center: ``(row, col)`` real, pixels (may lie outside the image).
        radius: real >= 0, pixels.

    Returns:
        (H, W) bool mask.

    Raises:
        ValueError: bad shape, centre or radius.
    """
    if (not isinstance(shape, (tuple, list)) or len(shape) != 2
            or not all(is_int(s) and s >= 1 for s in shape)):
        raise ValueError(f"Expected shape (H, W) of two integers >= 1. Received: shape={shape!r}")
    if (not isinstance(center, (tuple, list, np.ndarray)) or len(center) != 2
            or not all(is_real(v) and np.isfinite(v) for v in center)):
        raise ValueError(f"Expected center (row, col) of two finite reals. Received: center={center!r}")
    if not is_real(radius) or not 0 <= radius < np.inf:
        raise ValueError(f"Expected a finite radius >= 0. Received: radius={radius!r}")
    rows = np.arange(shape[0], dtype=np.float64)[:, None] - float(center[0])
    cols = np.arange(shape[1], dtype=np.float64)[None, :] - float(center[1])
    return rows ** 2 + cols ** 2 <= float(radius) ** 2


def estimate_optic_disc(image, fov_mask=None, *, radius_fraction=DEFAULT_DISC_RADIUS_FRACTION,
                        sigma_fraction=DEFAULT_DISC_SIGMA_FRACTION):
    """A simple estimate of the optic disc region, for images without a disc annotation.

    The optic disc is the largest bright structure of a fundus photograph. Its centre is taken as
    the brightest point, inside the FOV, of the luminance (ITU-R BT.601: 0.299 R + 0.587 G +
    0.114 B) blurred with a Gaussian of ``sigma_fraction`` FOV radii; the luminance is 0 outside
    the FOV before blurring, which dims the FOV's rim (where flash reflections and haze sit) and
    not the disc, which lies well inside. The blur is about a third of the disc's radius wide, so
    small bright lesions (exudates) stand out far less than the disc. The region returned is the disc
    of ``radius_fraction`` FOV radii around that centre, clipped to the FOV.

    The FOV radius is half the larger side of the FOV's bounding box (a FOV cut by the top and
    bottom of the photograph keeps its full width). Images larger than 512 px are searched at a
    reduced size (``cv2.INTER_AREA``); the centre is mapped back to the input's coordinates.

    This is a heuristic: a large bright exudate patch, a bright reflex or strong uneven
    illumination can win. Use a given disc position (:func:`disc_mask`) where one exists.

    Args:
        image: (H, W, 3) uint8 RGB fundus image.
        fov_mask: (H, W) bool field of view, or None for the whole image.
        radius_fraction: float > 0, radius of the returned region in FOV radii.
        sigma_fraction: float > 0, standard deviation of the blur in FOV radii.

    Returns:
        :class:`OpticDisc` with ``center`` ``(row, col)`` (float, pixels), ``radius`` (float,
        pixels) and ``mask`` (H, W) bool.

    Raises:
        TypeError: image not a numpy array; FOV mask not bool.
        ValueError: bad shapes or options; an empty FOV.
    """
    check_image(image)
    fov = check_fov(fov_mask, image.shape[:2])
    for name, value in (("radius_fraction", radius_fraction), ("sigma_fraction", sigma_fraction)):
        if not is_real(value) or not 0 < value < np.inf:
            raise ValueError(f"Expected a finite {name} > 0. Received: {name}={value!r}")
    if not fov.any():
        raise ValueError("Expected a non-empty field of view. Received: fov_mask with no True pixel")

    height, width = fov.shape
    fov_rows = np.flatnonzero(fov.any(axis=1))
    fov_cols = np.flatnonzero(fov.any(axis=0))
    fov_radius = max(fov_rows[-1] - fov_rows[0] + 1, fov_cols[-1] - fov_cols[0] + 1) / 2.0

    scale = min(1.0, _DISC_WORKING_SIDE / max(height, width))
    small_image, small_fov = image, fov
    row_scale = col_scale = 1.0
    if scale < 1.0:
        # Reduce first: a 4288x2848 photograph would need 150 MB of float32 luminance otherwise.
        size = (max(1, round(width * scale)), max(1, round(height * scale)))  # cv2: (width, height)
        small_image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        small_fov = cv2.resize(np.ascontiguousarray(fov).view(np.uint8), size,
                               interpolation=cv2.INTER_NEAREST).view(bool)
        row_scale, col_scale = size[1] / height, size[0] / width
        if not small_fov.any():  # a FOV thinner than the reduction step
            small_fov = np.ones_like(small_fov)
    luminance = small_image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    luminance[~small_fov] = 0.0
    sigma = float(sigma_fraction) * fov_radius * scale
    blurred = cv2.GaussianBlur(luminance, (0, 0), sigmaX=sigma, sigmaY=sigma,
                               borderType=cv2.BORDER_CONSTANT)
    blurred[~small_fov] = -np.inf
    row, col = np.unravel_index(int(np.argmax(blurred)), blurred.shape)
    # Pixel centres: pixel i of the reduced image covers input pixels [i / s, (i + 1) / s).
    center = ((row + 0.5) / row_scale - 0.5, (col + 0.5) / col_scale - 0.5)
    radius = float(radius_fraction) * fov_radius
    return OpticDisc(center=(float(center[0]), float(center[1])), radius=radius,
                     mask=disc_mask(fov.shape, center, radius) & fov)
