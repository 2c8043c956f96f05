"""Lesion-level FROC: candidate-to-lesion matching, the curve, summary scores and bootstraps.

Free-response ROC (FROC) analysis plots lesion sensitivity against the mean number of false
positives per image. González-Gonzalo et al. (MIDL 2018) evaluate the saliency maps ``s_0`` and
``S`` this way. The rules are those of the CAMELYON16 (Bejnordi et al., JAMA 2017) and LUNA16
(Setio et al., Medical Image Analysis 2017) evaluations, pinned in docs/contracts.md so that two correct
implementations agree to the last digit:

- A candidate ``(row, col, score)`` lies on the pixel ``(floor(row + 0.5), floor(col + 0.5))``
  (rounding half up: ``(2.5, 3.5)`` -> ``(3, 4)``; numpy's ``rint`` would round half to even).
  A pixel outside the image is an error.
- A candidate hits a lesion when its pixel lies inside the lesion dilated by ``tolerance`` px,
  Euclidean: within distance <= ``tolerance`` of a lesion pixel (pixel centres; tested as
  ``d_row**2 + d_col**2 <= tolerance**2`` in float64). A candidate inside several dilated lesions
  hits each of them.
- A lesion is found at the highest score among the candidates that hit it. Further hits on a found
  lesion are neither true nor false positives. A candidate that hits no lesion is a false positive.
- At threshold ``t`` (candidates with score >= ``t`` kept), sensitivity is the number of lesions
  found at a score >= ``t`` over all lesions of all images (pooled), and the false-positive rate is
  the number of false positives with score >= ``t`` over the number of images, lesion-free images
  included.
- The curve has one operating point per distinct score threshold, in decreasing threshold order
  (FP rate non-decreasing). The thresholds are the distinct scores of the *counted* events: the
  false positives and the scores at which lesions are found (as CAMELYON16's evaluation code does).
  A score carried only by ignored repeat hits changes neither count, and its operating point would
  repeat the one before it; it is not listed, which changes none of the summaries below.
- :meth:`FROCResult.sensitivity_at`: the curve starts at (0 FP/image, 0 sensitivity); where
  several points share an FP rate, the highest sensitivity among them stands for that rate;
  between consecutive distinct FP rates the sensitivity is interpolated linearly; beyond the last
  point it stays at the last value.
- :meth:`FROCResult.average_sensitivity`: the area under that interpolated curve from 0 to
  ``max_fp`` FP/image, divided by ``max_fp``. :meth:`FROCResult.score`: the mean sensitivity at
  (1/8, 1/4, 1/2, 1, 2, 4, 8) FP/image (the CAMELYON16 / LUNA16 "competition performance metric").

Per lesion type, pass that type's masks: the candidates are the same for every type, and a
candidate that hits no lesion *of that type* is a false positive of that type's curve (the usual
per-type FROC; a haemorrhage detection counts against the exudate curve). Per DR stage, pass the
images of that stage (:func:`dr_saliency.lesions.localize.froc_report` makes both groupings).

Everything is computed on integer counts (false positives, found lesions) and divided at the end,
so the bootstrap (which weights images by their multiplicity in a resample) gives, replicate by
replicate, exactly what :func:`froc` gives on the resampled list of images.

Pure numpy / scipy: no TensorFlow here.

Public API::

    froc(candidates_per_image, lesions_per_image, tolerance=0) -> FROCResult
    label_lesions(mask) -> (H, W) int32 label map (8-connected components)
    match_lesions(candidates_per_image, lesions_per_image, tolerance=0) -> [LesionMatch] per image
    FROCResult.operating_point(rate) -> index of the point that stands for rate FP/image
    bootstrap(candidates_per_image, lesions_per_image, *, tolerance=0, n_boot=1000, seed=0,
              rates=DEFAULT_RATES, max_fp=10, level=0.95, curve_rates=None) -> BootstrapResult
    paired_bootstrap(candidates_a, candidates_b, lesions_per_image, *, tolerance=0, n_boot=1000,
                     seed=0, rates=DEFAULT_RATES, max_fp=10, level=0.95) -> PairedBootstrapResult
"""

import collections
import collections.abc
import dataclasses

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from dr_saliency.core.checks import is_int, is_real

__all__ = [
    "BootstrapResult",
    "DEFAULT_MAX_FP",
    "DEFAULT_RATES",
    "FROCResult",
    "LesionMatch",
    "PairedBootstrapResult",
    "PairedDifference",
    "bootstrap",
    "froc",
    "label_lesions",
    "match_lesions",
    "paired_bootstrap",
]

DEFAULT_RATES = (1 / 8, 1 / 4, 1 / 2, 1, 2, 4, 8)
"""FP/image rates of the 7-point score (CAMELYON16, LUNA16)."""

DEFAULT_MAX_FP = 10
"""Upper end (FP/image) of the interval :meth:`FROCResult.average_sensitivity` averages over."""

# 8-connectivity: diagonal neighbours belong to the same lesion (docs/contracts.md).
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)

# Largest number of label-map lookups (candidates x disk offsets) per image for which the hit
# test with a tolerance probes the label map directly; above it, a KD-tree over lesion pixels
# is cheaper (the probes grow with tolerance**2).
_PROBE_LIMIT = 100_000

# Largest number of (replicate, event) cells the bootstrap holds at once (int64: 32 MB).
_BOOTSTRAP_CELLS = 4_000_000


# ----------------------------------------------------------------------------- the curve arithmetic
# Curves are rows of integer counts: x = cumulative false positives, y = cumulative found lesions,
# one column per operating point, column 0 the (0, 0) start. Both are non-decreasing along a row.
# Rows are stacked (B, P) so that the bootstrap evaluates all its replicates at once; a single
# curve is a (1, P) stack and goes through the same code, hence gives the same bits.


def _row_keys(x):
    """Flattened keys ``x + b * stride``, increasing over the whole stack, and the row offsets."""
    stride = int(x[:, -1].max()) + 1
    offsets = np.arange(x.shape[0], dtype=np.int64)[:, None] * stride
    return (x + offsets).ravel(), offsets


def _interp_parts(x, y, q):
    """Knot at or left of each FP count ``q`` and the interpolated found-lesion count there.

    Args:
        x, y: (B, P) int64 stacks, rows non-decreasing, column 0 = 0.
        q: (B, R) float64 FP counts >= 0 (rate times number of images).

    Returns:
        x_left, y_left: (B, R) int64, the last knot with x <= q (the end of its run of equal x,
        so the highest y at that FP count); value: (B, R) float64, the y of the interpolated curve
        at q (linear between knots, the last y beyond the last point).
    """
    flat, offsets = _row_keys(x)
    flat_y = y.ravel()
    # Integer part of q, clipped to the row's last x: the knot at or left of q is the last point
    # with x <= floor(q) (an exact integer comparison), and it is the end of its run.
    q_int = np.minimum(np.floor(q), x[:, -1:]).astype(np.int64)
    right = np.searchsorted(flat, (q_int + offsets).ravel(), side="right").reshape(q.shape)
    left = right - 1
    row_end = (np.arange(x.shape[0])[:, None] + 1) * x.shape[1]
    beyond = right >= row_end  # q at or beyond the last FP count: the last value stands
    right = np.where(beyond, left, right)
    x_left = flat[left] - offsets
    y_left = flat_y[left]
    x_right = flat[right] - offsets
    # The right knot is the end of x_right's run: the last point with that x.
    run_end = np.searchsorted(flat, (x_right + offsets).ravel(), side="right").reshape(q.shape) - 1
    y_right = flat_y[run_end]
    span = np.where(beyond, 1, x_right - x_left)
    value = np.where(beyond, y_left.astype(np.float64),
                     y_left + (y_right - y_left) * ((q - x_left) / span))
    return x_left, y_left, value


def _interp_counts(x, y, q):
    """Interpolated found-lesion count at FP counts ``q`` ((B, R) float64), one row per curve."""
    return _interp_parts(x, y, q)[2]


def _run_end_y(x, y):
    """(B, P): for each point, y at the last point of its run of equal x in the row.

    The last column counts as a run end, so runs cut by the stack's end are cut there.
    """
    n_points = x.shape[1]
    end = np.full(x.shape, n_points - 1, dtype=np.int64)
    is_end = x[:, 1:] != x[:, :-1]
    end[:, :-1] = np.where(is_end, np.arange(n_points - 1), n_points - 1)
    # Nearest run end at or after each point: a running minimum from the right.
    end = np.minimum.accumulate(end[:, ::-1], axis=1)[:, ::-1]
    return np.take_along_axis(y, end, axis=1)


def _area_counts(x, y, q_max):
    """Area under the interpolated count curve from 0 to ``q_max`` FP counts, per row.

    The curve's knots are the ends of the runs of equal x (the highest y at each FP count), from
    (0, 0). Each segment between consecutive knots that ends at or before ``q_max`` contributes
    the integer ``(x_b - x_a) * (y_a + y_b)``, summed exactly in int64 and halved; the last piece,
    from the last knot at or before ``q_max`` to ``q_max`` (along the next segment, or flat after
    the last point), is added in floating point. No floating-point sum depends on the order or
    number of points, so curves that differ only by repeated points (a bootstrap row and the FROC
    of its resample) give identical bits.

    Args:
        x, y: (B, P) int64 stacks as for :func:`_interp_parts`.
        q_max: float > 0, upper limit in FP counts.

    Returns:
        (B,) float64 areas, in (FP count) x (lesion count) units.
    """
    # Only segments ending at or before q_max are summed here: cut the stack after the first
    # column beyond q_max of every row (x is non-decreasing along a row), so that the runs of
    # x <= q_max all end inside the window.
    n_cols = min(x.shape[1], int(np.count_nonzero(x <= q_max, axis=1).max()) + 1)
    xw, yw = x[:, :n_cols], y[:, :n_cols]
    y_end = _run_end_y(xw, yw)
    x_left, x_next = xw[:, :-1], xw[:, 1:]
    # A segment starts wherever x increases: its left knot is the point before (the end of its
    # run), its right knot the end of the next run.
    whole = (x_next > x_left) & (x_next <= q_max)
    twice = np.where(whole, (x_next - x_left) * (yw[:, :-1] + y_end[:, 1:]), 0).sum(axis=1)
    x_last, y_last, y_q = _interp_parts(x, y, np.full((x.shape[0], 1), float(q_max)))
    rest = (q_max - x_last[:, 0]) * (y_last[:, 0] + y_q[:, 0]) / 2.0
    return twice / 2.0 + rest


def _sequential_mean(values):
    """Row means of a (B, R) array, summed left to right (bit-stable across stack sizes)."""
    return np.cumsum(values, axis=1)[:, -1] / values.shape[1]


def _check_rates(rates, name="rates"):
    try:
        array = np.asarray(rates, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"Expected real FP rates. Received: {name}={rates!r}") from None
    if array.size == 0 or not np.all(np.isfinite(array)) or np.any(array < 0):
        raise ValueError(f"Expected finite FP rates >= 0 (at least one). Received: {name}={rates!r}")
    return array


def _check_max_fp(max_fp):
    if not is_real(max_fp) or not 0 < max_fp < np.inf:
        raise ValueError(f"Expected a finite max_fp > 0. Received: max_fp={max_fp!r}")
    return float(max_fp)


# ----------------------------------------------------------------------------- the result


@dataclasses.dataclass(frozen=True, eq=False)
class FROCResult:
    """A lesion-level FROC curve (rules: module docstring and docs/contracts.md).

    Attributes:
        thresholds: (N,) float64 score thresholds, decreasing; point ``j`` keeps the candidates
            with score >= ``thresholds[j]``.
        fps_per_image: (N,) float64 false positives per image, non-decreasing.
        sensitivity: (N,) float64 fraction of all lesions found (NaN when there are no lesions).
        false_positives: (N,) int64 false positives at each point (``fps_per_image * n_images``).
        true_positives: (N,) int64 lesions found at each point (``sensitivity * n_lesions``).
        n_lesions: int, lesions over all images.
        n_images: int, images (lesion-free ones included).
        tolerance: float, the hit tolerance (px) the curve was computed with.
    """

    thresholds: np.ndarray
    fps_per_image: np.ndarray
    sensitivity: np.ndarray
    false_positives: np.ndarray
    true_positives: np.ndarray
    n_lesions: int
    n_images: int
    tolerance: float = 0.0

    def _stack(self):
        start = np.zeros(1, dtype=np.int64)
        x = np.concatenate([start, np.asarray(self.false_positives, dtype=np.int64)])[None, :]
        y = np.concatenate([start, np.asarray(self.true_positives, dtype=np.int64)])[None, :]
        return x, y

    def sensitivity_at(self, rates):
        """Sensitivity at given FP/image rates, on the interpolated curve.

        The curve starts at (0, 0); where several points share an FP rate, the highest
        sensitivity among them stands for it; between consecutive distinct FP rates the
        sensitivity is linear; beyond the last point it stays at the last value. So a rate below
        the first point's FP rate interpolates from (0, 0), and the sensitivity at rate 0 is that
        of the points with no false positive (0 if there are none).

        Args:
            rates: float or array-like of floats >= 0, FP per image.

        Returns:
            float for a scalar ``rates``, else a float64 array of the shape of ``rates``. NaN when
            there are no lesions.

        Raises:
            TypeError, ValueError: rates not real, negative or not finite.
        """
        array = _check_rates(rates)
        if self.n_lesions == 0:
            result = np.full(array.shape, np.nan)
        else:
            x, y = self._stack()
            counts = _interp_counts(x, y, array.reshape(1, -1) * self.n_images)
            result = (counts / self.n_lesions).reshape(array.shape)
        return float(result) if result.ndim == 0 else result

    def score(self, rates=DEFAULT_RATES):
        """Mean sensitivity at ``rates`` FP/image: the 7-point score with the default rates.

        Args:
            rates: array-like of floats >= 0; default (1/8, 1/4, 1/2, 1, 2, 4, 8).

        Returns:
            float (NaN when there are no lesions).
        """
        array = _check_rates(rates).reshape(1, -1)
        if self.n_lesions == 0:
            return float("nan")
        x, y = self._stack()
        return float(_sequential_mean(_interp_counts(x, y, array * self.n_images))[0] / self.n_lesions)

    def average_sensitivity(self, max_fp=DEFAULT_MAX_FP):
        """Area under the interpolated curve from 0 to ``max_fp`` FP/image, divided by ``max_fp``.

        That is ``(1 / max_fp) * integral_0^max_fp s(r) dr`` with ``s`` the curve of
        :meth:`sensitivity_at` (piecewise linear from (0, 0), flat after its last point): the mean
        sensitivity over FP rates uniform in [0, max_fp]. In [0, 1].

        Args:
            max_fp: float > 0, FP per image.

        Returns:
            float (NaN when there are no lesions).
        """
        max_fp = _check_max_fp(max_fp)
        if self.n_lesions == 0:
            return float("nan")
        x, y = self._stack()
        q_max = max_fp * self.n_images
        return float(_area_counts(x, y, q_max)[0] / (self.n_lesions * q_max))

    def operating_point(self, rate):
        """The operating point that stands for ``rate`` FP/image: the last point with at most
        ``floor(rate * n_images)`` false positives (the lowest threshold within that budget).

        It is the knot :meth:`sensitivity_at` starts from, so ``sensitivity[j]`` equals
        ``sensitivity_at(rate)`` whenever the curve has a point at exactly that FP count or ends
        before it (always the case when ``rate * n_images`` is an integer and no two false
        positives share a score); otherwise :meth:`sensitivity_at` interpolates on towards the
        next point, which no set of found lesions realises.

        Args:
            rate: float >= 0, FP per image.

        Returns:
            int index into ``thresholds``/``sensitivity``, or -1 when even the first point has
            more false positives (then no candidate is kept).
        """
        array = _check_rates(rate, "rate")
        if array.ndim != 0:
            raise ValueError(f"Expected one FP rate. Received: rate={rate!r}")
        budget = np.floor(float(array) * self.n_images)
        return int(np.searchsorted(self.false_positives, budget, side="right")) - 1

    def to_dict(self, rates=DEFAULT_RATES, max_fp=DEFAULT_MAX_FP):
        """A JSON-ready dict: the curve, counts and the two summaries (NaN becomes None)."""
        return {
            "fps_per_image": self.fps_per_image.tolist(),
            "sensitivity": [_json_float(v) for v in self.sensitivity],
            "thresholds": self.thresholds.tolist(),
            "n_lesions": int(self.n_lesions),
            "n_images": int(self.n_images),
            "tolerance": float(self.tolerance),
            "rates": [float(r) for r in _check_rates(rates).ravel()],
            "sensitivity_at_rates": [_json_float(v) for v in
                                     np.atleast_1d(self.sensitivity_at(np.ravel(rates)))],
            "score": _json_float(self.score(rates)),
            "max_fp": float(max_fp),
            "average_sensitivity": _json_float(self.average_sensitivity(max_fp)),
        }


def _json_float(value):
    value = float(value)
    return None if np.isnan(value) else value


# ----------------------------------------------------------------------------- input checks


def label_lesions(mask):
    """One label per 8-connected component of a bool lesion mask (docs/contracts.md).

    Args:
        mask: (H, W) bool.

    Returns:
        (H, W) int32 label map: 0 background, 1..L one lesion each (``scipy.ndimage.label``
        order: by first pixel in raster order).
    """
    array = np.asarray(mask)
    if array.dtype != bool:
        raise TypeError(f"Expected a bool lesion mask. Received: mask.dtype={array.dtype}")
    if array.ndim != 2:
        raise ValueError(f"Expected a lesion mask of shape (H, W). Received: mask.shape={array.shape}")
    labels, _ = ndimage.label(array, structure=_EIGHT_CONNECTED, output=np.int32)
    return labels


def _as_label_map(lesions, index):
    """(H, W) integer labels 1..L (consecutive) and L, from a label map or a bool mask."""
    name = f"lesions_per_image[{index}]"
    array = np.asarray(lesions)
    if array.ndim != 2:
        raise ValueError(f"Expected a lesion label map or mask of shape (H, W). "
                         f"Received: {name}.shape={array.shape}")
    if array.dtype == bool:
        labels, n = ndimage.label(array, structure=_EIGHT_CONNECTED, output=np.int32)
        return labels, int(n)
    if not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"Expected an integer label map or a bool mask. Received: {name}.dtype={array.dtype}")
    if array.size == 0:
        return array, 0
    low, high = int(array.min()), int(array.max())
    if low < 0:
        raise ValueError(f"Expected labels >= 0 (0 = background). Received: {name} with minimum {low}")
    if high == 0:
        return array, 0
    # Each distinct positive value is one lesion. Labels missing from 1..max (a subset of a label
    # map) would be lesions nobody can hit: renumber the present ones consecutively instead.
    present = np.bincount(array.ravel(), minlength=high + 1) > 0
    present[0] = False
    n = int(np.count_nonzero(present))
    if n != high:
        lut = np.zeros(high + 1, dtype=np.int64)
        lut[present] = np.arange(1, n + 1)
        array = lut[array]
    return array, n


def _check_candidates(candidates, index, shape):
    """(K,) int64 pixel rows and columns and (K,) float64 scores of one image's candidates."""
    name = f"candidates_per_image[{index}]"
    try:
        array = np.asarray(candidates, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"Expected real candidates (K, 3). Received: {name}={candidates!r}") from None
    if array.size == 0:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty, np.empty(0, dtype=np.float64)
    if array.ndim != 2 or array.shape[1] != 3:
        raise ValueError(f"Expected candidates of shape (K, 3): row, col, score. "
                         f"Received: {name}.shape={array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"Expected finite candidates. Received: {name} containing NaN or infinite values")
    # Round half up (docs/contracts.md "round"): floor(x + 0.5), not numpy's half-to-even rint.
    rows = np.floor(array[:, 0] + 0.5).astype(np.int64)
    cols = np.floor(array[:, 1] + 0.5).astype(np.int64)
    outside = (rows < 0) | (rows >= shape[0]) | (cols < 0) | (cols >= shape[1])
    if outside.any():
        k = int(np.argmax(outside))
        raise ValueError(f"Expected candidate pixels inside the image of shape {tuple(shape)}. "
                         f"Received: {name}[{k}]=({float(array[k, 0])!r}, {float(array[k, 1])!r}, "
                         f"{float(array[k, 2])!r}) "
                         f"-> pixel ({rows[k]}, {cols[k]})")
    return rows, cols, array[:, 2]


def _check_tolerance(tolerance):
    if not is_real(tolerance) or not 0 <= tolerance < np.inf:
        raise ValueError(f"Expected a finite tolerance >= 0 (pixels). Received: tolerance={tolerance!r}")
    return float(tolerance)


def _check_lists(candidates_per_image, lesions_per_image, names=("candidates_per_image",
                                                                   "lesions_per_image")):
    for name, value in zip(names, (candidates_per_image, lesions_per_image)):
        if isinstance(value, np.ndarray) or not isinstance(value, collections.abc.Sequence):
            raise TypeError(f"Expected a list with one array per image. Received: {name} of type "
                            f"{type(value).__name__}")
    if len(candidates_per_image) != len(lesions_per_image):
        raise ValueError(f"Expected lists of the same length, one entry per image. Received: "
                         f"len({names[0]})={len(candidates_per_image)}, "
                         f"len({names[1]})={len(lesions_per_image)}")
    if len(lesions_per_image) == 0:
        raise ValueError(f"Expected at least one image. Received: len({names[1]})=0")


# ----------------------------------------------------------------------------- matching


def _disk_offsets(tolerance):
    """Integer (d_row, d_col) offsets with d_row**2 + d_col**2 <= tolerance**2 (float64)."""
    reach = int(np.floor(tolerance))
    d_row, d_col = np.mgrid[-reach:reach + 1, -reach:reach + 1]
    inside = d_row ** 2 + d_col ** 2 <= tolerance * tolerance
    return d_row[inside], d_col[inside]


def _hits_within(labels, n_lesions, rows, cols, tolerance):
    """(candidate, lesion label) pairs with the candidate within ``tolerance`` of the lesion.

    A pixel is within ``tolerance`` of a lesion when some lesion pixel is, i.e. when the lesion
    has a pixel at one of the integer offsets of the disk ``d_row**2 + d_col**2 <= tolerance**2``
    around it. Small disks are probed directly (label-map lookups at every candidate plus every
    offset); when candidates x offsets would exceed :data:`_PROBE_LIMIT` lookups, a KD-tree over
    the lesion pixels finds the pairs instead, with the same integer test. All lesions within
    reach are returned, so overlapping dilated lesions are each hit.

    Returns:
        k, lesion: (P,) int64 candidate indices and lesion labels (1..n_lesions), one pair per
        (candidate, lesion), sorted by candidate then label.
    """
    n_labels = n_lesions + 1
    d_row, d_col = _disk_offsets(tolerance)
    if rows.size * d_row.size <= _PROBE_LIMIT:
        reach = int(np.floor(tolerance))
        # Padding by the reach with background keeps every probe inside the array.
        padded = np.pad(labels, reach)
        width = padded.shape[1]
        flat = ((rows + reach) * width + (cols + reach))[:, None] + (d_row * width + d_col)[None, :]
        lesion = padded.ravel()[flat]
        k, j = np.nonzero(lesion)
        key = np.unique(k * n_labels + lesion[k, j].astype(np.int64))
        return key // n_labels, key % n_labels
    lesion_rows, lesion_cols = np.nonzero(labels)
    if lesion_rows.size == 0 or rows.size == 0:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty
    lesion_tree = cKDTree(np.column_stack([lesion_rows, lesion_cols]))
    candidate_tree = cKDTree(np.column_stack([rows, cols]))
    # A 0.5 px margin, then the exact integer test: the tree's own floating-point boundary
    # decides nothing.
    near = candidate_tree.sparse_distance_matrix(lesion_tree, tolerance + 0.5, output_type="ndarray")
    k, j = near["i"].astype(np.int64), near["j"].astype(np.int64)
    d2 = (rows[k] - lesion_rows[j]) ** 2 + (cols[k] - lesion_cols[j]) ** 2
    ok = d2 <= tolerance * tolerance
    k, lesion = k[ok], labels[lesion_rows[j[ok]], lesion_cols[j[ok]]].astype(np.int64)
    # One pair per (candidate, lesion), however many of the lesion's pixels are within reach.
    key = np.unique(k * n_labels + lesion)
    return key // n_labels, key % n_labels


def _image_hits(labels, n_lesions, rows, cols, tolerance):
    """The hit rule on one image: (candidate, lesion label) pairs, as :func:`_hits_within`.

    Returns:
        k, lesion: (P,) int64 candidate indices and lesion labels (1..n_lesions).
    """
    if n_lesions == 0 or rows.size == 0:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty
    if tolerance == 0:
        # Undilated lesions do not overlap: one lookup per candidate.
        lesion = labels[rows, cols].astype(np.int64)
        k = np.flatnonzero(lesion > 0)
        return k, lesion[k]
    return _hits_within(labels, n_lesions, rows, cols, tolerance)


_Events = collections.namedtuple("_Events", [
    "n_images",        # int
    "lesion_counts",   # (n_images,) int64 lesions per image
    "scores",          # (E,) float64 event scores, descending
    "image",           # (E,) int64 image of each event
    "is_fp",           # (E,) bool: False positive (True) or a lesion found (False)
    "group_end",       # (G,) int64 index of the last event of each distinct score
])


def _prepare(candidates_per_image, lesions_per_image, tolerance):
    """Match candidates to lesions once: the events a FROC curve (and its bootstrap) is made of.

    An event is a false positive (a candidate hitting no lesion) or a found lesion at the highest
    score among its hits. Neither changes under image resampling, so the bootstrap reuses them.
    """
    _check_lists(candidates_per_image, lesions_per_image)
    tolerance = _check_tolerance(tolerance)
    n_images = len(lesions_per_image)
    lesion_counts = np.zeros(n_images, dtype=np.int64)
    hit_lesions, hit_scores = [], []      # per image: global lesion index and score of each hit
    fp_scores, fp_images = [], []
    offset = 0
    for i in range(n_images):
        labels, n = _as_label_map(lesions_per_image[i], i)
        rows, cols, scores = _check_candidates(candidates_per_image[i], i, labels.shape)
        lesion_counts[i] = n
        first, offset = offset, offset + n   # global index of the image's lesion 1
        k, lesion = _image_hits(labels, n, rows, cols, tolerance)
        hit = np.zeros(rows.size, dtype=bool)
        hit[k] = True
        hit_lesions.append(lesion - 1 + first)
        hit_scores.append(scores[k])
        fp_scores.append(scores[~hit])
        fp_images.append(np.full(int(np.count_nonzero(~hit)), i, dtype=np.int64))

    # Each lesion is found at the highest score among its hits; unhit lesions stay -inf (missed).
    best = np.full(offset, -np.inf)
    if hit_lesions:
        np.maximum.at(best, np.concatenate(hit_lesions), np.concatenate(hit_scores))
    found = np.isfinite(best)
    lesion_image = np.repeat(np.arange(n_images, dtype=np.int64), lesion_counts)
    fp_scores = np.concatenate(fp_scores) if fp_scores else np.empty(0)
    fp_images = np.concatenate(fp_images) if fp_images else np.empty(0, dtype=np.int64)

    scores = np.concatenate([fp_scores, best[found]])
    image = np.concatenate([fp_images, lesion_image[found]])
    is_fp = np.concatenate([np.ones(fp_scores.size, dtype=bool), np.zeros(int(found.sum()), dtype=bool)])
    order = np.argsort(-scores, kind="stable")
    scores, image, is_fp = scores[order], image[order], is_fp[order]
    group_end = np.flatnonzero(np.r_[scores[1:] != scores[:-1], True]) if scores.size else \
        np.empty(0, dtype=np.int64)
    return _Events(n_images, lesion_counts, scores, image, is_fp, group_end), tolerance


def froc(candidates_per_image, lesions_per_image, tolerance=0):
    """Lesion-level FROC curve of scored candidates against lesion annotations.

    Rules (CAMELYON16, Bejnordi et al. 2017; LUNA16, Setio et al. 2017; pinned in docs/contracts.md and
    in this module's docstring): a candidate hits a lesion when its pixel
    ``(floor(row + 0.5), floor(col + 0.5))`` lies within Euclidean distance ``tolerance`` of a
    lesion pixel; a lesion is found at the highest score among its hits; repeat hits are ignored;
    a candidate hitting no lesion is a false positive. Sensitivity pools the lesions of all
    images; false positives are divided by the number of images, lesion-free ones included.

    Args:
        candidates_per_image: list of (K_i, 3) real arrays of ``(row, col, score)``, one per image
            (K_i may be 0), e.g. from :func:`dr_saliency.lesions.candidates.detect_candidates`.
        lesions_per_image: list of (H_i, W_i) arrays, one per image: integer label maps (0 =
            background, each distinct positive value one lesion) or bool masks (each 8-connected
            component one lesion). For a per-type curve, pass that type's masks.
        tolerance: float >= 0, pixels.

    Returns:
        :class:`FROCResult`.

    Raises:
        TypeError: not lists; label maps neither integer nor bool; candidates not real.
        ValueError: lists of different lengths or empty; shapes; negative labels; non-finite
            candidates; a candidate pixel outside its image (the message names image and
            candidate); a negative tolerance.
    """
    events, tolerance = _prepare(candidates_per_image, lesions_per_image, tolerance)
    ones = np.ones((1, events.n_images), dtype=np.int64)
    x, y = _curve_counts(events, ones, events.group_end.size)
    n_lesions = int(events.lesion_counts.sum())
    false_positives, true_positives = x[0, 1:], y[0, 1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        sensitivity = true_positives / n_lesions if n_lesions else np.full(true_positives.size, np.nan)
    return FROCResult(thresholds=events.scores[events.group_end],
                      fps_per_image=false_positives / events.n_images,
                      sensitivity=sensitivity,
                      false_positives=false_positives,
                      true_positives=true_positives,
                      n_lesions=n_lesions, n_images=events.n_images, tolerance=tolerance)


@dataclasses.dataclass(frozen=True, eq=False)
class LesionMatch:
    """The lesions of one image and the candidate that finds each, by :func:`froc`'s rules.

    Attributes:
        labels: (H, W) integer label map, 0 background, 1..L one lesion each, numbered as
            :func:`froc` numbers them (bool masks: :func:`label_lesions`).
        best_score: (L,) float64, lesion ``l + 1`` is found at this score; -inf when no
            candidate hits it.
        best_candidate: (L,) int64, the index (into the image's candidates) of the candidate
            with that score (ties: the first); -1 when none hits.
    """

    labels: np.ndarray
    best_score: np.ndarray
    best_candidate: np.ndarray


def match_lesions(candidates_per_image, lesions_per_image, tolerance=0):
    """Per lesion: the score at which :func:`froc` finds it, and the candidate that does.

    The same checks and hit rule as :func:`froc` (one code path), so a lesion is counted found at
    threshold ``t`` of ``froc(candidates_per_image, lesions_per_image, tolerance)`` exactly when
    its ``best_score >= t``.

    Args:
        candidates_per_image, lesions_per_image, tolerance: as for :func:`froc`.

    Returns:
        list of :class:`LesionMatch`, one per image.
    """
    _check_lists(candidates_per_image, lesions_per_image)
    tolerance = _check_tolerance(tolerance)
    out = []
    for i, lesions in enumerate(lesions_per_image):
        labels, n = _as_label_map(lesions, i)
        rows, cols, scores = _check_candidates(candidates_per_image[i], i, labels.shape)
        k, lesion = _image_hits(labels, n, rows, cols, tolerance)
        best_score = np.full(n, -np.inf)
        best_candidate = np.full(n, -1, dtype=np.int64)
        # Per lesion, its hits by score descending, then candidate index: the first is the best.
        order = np.lexsort((k, -scores[k], lesion))
        first = np.r_[True, lesion[order][1:] != lesion[order][:-1]] if order.size else order
        chosen = order[first.astype(bool)]
        best_score[lesion[chosen] - 1] = scores[k[chosen]]
        best_candidate[lesion[chosen] - 1] = k[chosen]
        out.append(LesionMatch(labels, best_score, best_candidate))
    return out


# ----------------------------------------------------------------------------- bootstrap


def _curve_counts(events, weights, n_groups):
    """Weighted cumulative counts at the first ``n_groups`` operating points, per weight row.

    Args:
        events: :class:`_Events`.
        weights: (B, n_images) int64 multiplicity of each image in each replicate.
        n_groups: int, how many operating points (distinct thresholds, descending) to compute.

    Returns:
        x, y: (B, n_groups + 1) int64 cumulative false positives and found lesions, column 0 the
        (0, 0) start. A replicate leaves out the events of images it did not draw, which repeats
        the previous point: harmless for every summary.
    """
    n_rows = weights.shape[0]
    x = np.zeros((n_rows, n_groups + 1), dtype=np.int64)
    y = np.zeros((n_rows, n_groups + 1), dtype=np.int64)
    if n_groups == 0:
        return x, y
    n_events = int(events.group_end[n_groups - 1]) + 1
    ends = events.group_end[:n_groups]
    is_fp = events.is_fp[:n_events]
    image = events.image[:n_events]
    # int32 halves the memory traffic when no cumulative count can overflow it: a row's counts
    # are at most its total weight times the most events any image has.
    largest = int(weights.sum(axis=1).max()) * int(np.bincount(image).max())
    dtype = np.int32 if largest < 2 ** 31 else np.int64
    weights = weights.astype(dtype, copy=False)
    chunk = max(1, _BOOTSTRAP_CELLS // n_events)
    for start in range(0, n_rows, chunk):
        w = weights[start:start + chunk][:, image]          # (b, E) weight of each event
        fp = np.cumsum(np.where(is_fp, w, 0), axis=1, dtype=dtype)[:, ends]
        x[start:start + chunk, 1:] = fp
        y[start:start + chunk, 1:] = np.cumsum(w, axis=1, dtype=dtype)[:, ends] - fp
    return x, y


def _replicate_counts(events, weights, q_max):
    """Curves of all replicates, truncated where no summary up to ``q_max`` FP counts can change.

    Summaries up to ``q_max`` need the points up to the first FP count above ``q_max`` and that
    count's run of points to its end (the highest sensitivity at that count), i.e. a later point
    with a higher count. Start from a prefix of thresholds that gives the full-sample curve about
    1.25 ``q_max`` false positives and double it until every replicate row has that; usually a
    small fraction of the events (FROC is read at <= 10 FP/image, detectors emit 200).
    """
    n_groups = events.group_end.size
    full_fp = np.cumsum(events.is_fp)[events.group_end] if n_groups else np.empty(0, np.int64)
    n = min(n_groups, int(np.searchsorted(full_fp, 1.25 * q_max + 2, side="right")) + 1)
    while True:
        x, y = _curve_counts(events, weights, n)
        if n >= n_groups:
            return x, y
        above = x > q_max
        has = above.any(axis=1)
        first_above = x[np.arange(x.shape[0]), np.argmax(above, axis=1)]
        if np.all(has & (x[:, -1] > first_above)):
            return x, y
        n = min(n_groups, 2 * n)


def _replicate_summaries(events, indices, rates, max_fp, curve_rates=None):
    """Score and average sensitivity of the FROC of each resample of the images.

    Row ``b`` gives exactly (to the bit) ``froc([c[i] for i in indices[b]], [l[i] for i in
    indices[b]])``'s ``score(rates)`` and ``average_sensitivity(max_fp)``: a resample is a weighting
    of the images by their multiplicity, and the events do not change.

    Args:
        events: :class:`_Events` of the full sample.
        indices: (B, n) int array of image indices, one resample per row (n = any size >= 1).
        rates: (R,) float64 FP/image rates of the score.
        max_fp: float > 0.
        curve_rates: None or (C,) float64 rates at which to return each replicate's sensitivity.

    Returns:
        dict with ``score`` (B,), ``average_sensitivity`` (B,), ``n_lesions`` (B,) int64 and,
        with ``curve_rates``, ``curve`` (B, C); NaN where a resample has no lesion.
    """
    indices = np.asarray(indices, dtype=np.int64)
    n_rows, n_drawn = indices.shape
    weights = np.zeros((n_rows, events.n_images), dtype=np.int64)
    np.add.at(weights, (np.repeat(np.arange(n_rows), n_drawn), indices.ravel()), 1)
    n_lesions = weights @ events.lesion_counts
    largest = max(float(np.max(rates)), max_fp,
                  float(np.max(curve_rates)) if curve_rates is not None else 0.0)
    x, y = _replicate_counts(events, weights, largest * n_drawn)
    with np.errstate(invalid="ignore", divide="ignore"):
        lesions = np.where(n_lesions > 0, n_lesions, np.nan)
        q = np.broadcast_to(np.asarray(rates, np.float64) * n_drawn, (n_rows, len(rates)))
        out = {
            "score": _sequential_mean(_interp_counts(x, y, q)) / lesions,
            "average_sensitivity": _area_counts(x, y, max_fp * n_drawn) / (lesions * (max_fp * n_drawn)),
            "n_lesions": n_lesions,
        }
        if curve_rates is not None:
            qc = np.broadcast_to(np.asarray(curve_rates, np.float64) * n_drawn,
                                 (n_rows, len(curve_rates)))
            out["curve"] = _interp_counts(x, y, qc) / lesions[:, None]
    return out


def _check_bootstrap_options(n_boot, seed, level):
    if not is_int(n_boot) or n_boot < 1:
        raise ValueError(f"Expected an integer n_boot >= 1. Received: n_boot={n_boot!r}")
    if not is_int(seed) or seed < 0:
        raise ValueError(f"Expected an integer seed >= 0. Received: seed={seed!r}")
    if not is_real(level) or not 0 < level < 1:
        raise ValueError(f"Expected a level in (0, 1). Received: level={level!r}")


def _draw(n_images, n_boot, seed):
    """(n_boot, n_images) image indices drawn with replacement."""
    return np.random.default_rng(seed).integers(0, n_images, size=(n_boot, n_images))


def _interval(values, level):
    """Percentile interval of the finite values, as a (low, high) tuple of floats (NaN if none)."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return (float("nan"), float("nan"))
    low, high = np.percentile(values, [50 * (1 - level), 50 * (1 + level)])
    return (float(low), float(high))


@dataclasses.dataclass(frozen=True, eq=False)
class BootstrapResult:
    """Percentile bootstrap over images of a FROC curve's summaries.

    Attributes:
        score: float, the 7-point score (at ``rates``) of the full sample.
        score_interval: (low, high) percentile interval at ``level``.
        average_sensitivity: float, of the full sample (up to ``max_fp``).
        average_sensitivity_interval: (low, high).
        replicate_scores: (n_boot,) float64, NaN for a resample without lesions.
        replicate_average_sensitivities: (n_boot,) float64.
        n_valid: int, replicates with at least one lesion (the intervals use those).
        n_boot, seed, level, rates, max_fp: the settings.
        curve_rates: None or (C,) float64 FP/image rates of the curve band;
        curve_sensitivity: None or (C,) full-sample sensitivity at ``curve_rates``;
        curve_low, curve_high: None or (C,) pointwise percentile band.
    """

    score: float
    score_interval: tuple
    average_sensitivity: float
    average_sensitivity_interval: tuple
    replicate_scores: np.ndarray
    replicate_average_sensitivities: np.ndarray
    n_valid: int
    n_boot: int
    seed: int
    level: float
    rates: tuple
    max_fp: float
    curve_rates: np.ndarray = None
    curve_sensitivity: np.ndarray = None
    curve_low: np.ndarray = None
    curve_high: np.ndarray = None

    def to_dict(self):
        """A JSON-ready dict (replicates left out; NaN becomes None)."""
        out = {
            "score": _json_float(self.score),
            "score_interval": [_json_float(v) for v in self.score_interval],
            "average_sensitivity": _json_float(self.average_sensitivity),
            "average_sensitivity_interval": [_json_float(v) for v in self.average_sensitivity_interval],
            "n_valid": int(self.n_valid), "n_boot": int(self.n_boot), "seed": int(self.seed),
            "level": float(self.level), "rates": [float(r) for r in self.rates],
            "max_fp": float(self.max_fp),
        }
        if self.curve_rates is not None:
            out.update({
                "curve_rates": self.curve_rates.tolist(),
                "curve_sensitivity": [_json_float(v) for v in self.curve_sensitivity],
                "curve_low": [_json_float(v) for v in self.curve_low],
                "curve_high": [_json_float(v) for v in self.curve_high],
            })
        return out


def bootstrap(candidates_per_image, lesions_per_image, *, tolerance=0, n_boot=1000, seed=0,
              rates=DEFAULT_RATES, max_fp=DEFAULT_MAX_FP, level=0.95, curve_rates=None):
    """Percentile-bootstrap intervals of the FROC score and average sensitivity, over images.

    Each replicate draws ``n`` images with replacement from the ``n`` images (an image drawn
    twice counts twice: its lesions and its false positives) and recomputes the summaries; the
    interval is the ``(1 - level) / 2`` and ``(1 + level) / 2`` percentiles (numpy's linear
    method) of the replicates. Images are the resampling unit because lesions and false positives
    of one image are not independent. Candidate matching is done once; each replicate only
    re-weights its events, so 1,000 replicates take seconds.

    Args:
        candidates_per_image, lesions_per_image, tolerance: as for :func:`froc`.
        n_boot: int >= 1, replicates.
        seed: int >= 0, seed of ``numpy.random.default_rng`` (same seed, same result).
        rates: FP/image rates of the score (default: the 7 rates 1/8 .. 8).
        max_fp: float > 0, upper end of :meth:`FROCResult.average_sensitivity`.
        level: float in (0, 1), interval coverage.
        curve_rates: None, or array-like of FP/image rates at which to compute a pointwise
            sensitivity band (for shaded FROC plots).

    Returns:
        :class:`BootstrapResult`. Replicates without any lesion (possible when few images have
        lesions) are NaN and left out of the intervals; ``n_valid`` counts the others.
    """
    events, tolerance = _prepare(candidates_per_image, lesions_per_image, tolerance)
    rates_array = _check_rates(rates).ravel()
    max_fp = _check_max_fp(max_fp)
    _check_bootstrap_options(n_boot, seed, level)
    curve = None if curve_rates is None else _check_rates(curve_rates, "curve_rates").ravel()
    full = _replicate_summaries(events, np.arange(events.n_images)[None, :], rates_array, max_fp, curve)
    reps = _replicate_summaries(events, _draw(events.n_images, n_boot, seed), rates_array, max_fp, curve)
    valid = reps["n_lesions"] > 0
    result = dict(
        score=float(full["score"][0]), score_interval=_interval(reps["score"], level),
        average_sensitivity=float(full["average_sensitivity"][0]),
        average_sensitivity_interval=_interval(reps["average_sensitivity"], level),
        replicate_scores=reps["score"], replicate_average_sensitivities=reps["average_sensitivity"],
        n_valid=int(valid.sum()), n_boot=n_boot, seed=seed, level=float(level),
        rates=tuple(float(r) for r in rates_array), max_fp=max_fp)
    if curve is not None:
        finite = reps["curve"][valid]
        if finite.shape[0]:
            low, high = np.percentile(finite, [50 * (1 - level), 50 * (1 + level)], axis=0)
        else:
            low = high = np.full(curve.size, np.nan)
        result.update(curve_rates=curve, curve_sensitivity=full["curve"][0],
                      curve_low=low, curve_high=high)
    return BootstrapResult(**result)


@dataclasses.dataclass(frozen=True, eq=False)
class PairedDifference:
    """One summary compared between two candidate sets A and B on the same images.

    Attributes:
        a, b: float, the summary of A and of B on the full sample.
        difference: float, ``b - a``.
        difference_interval: (low, high) percentile interval of ``b - a``.
        relative: float, ``(b - a) / a`` (NaN when ``a`` is 0).
        relative_interval: (low, high), over the replicates where ``a`` > 0.
        fraction_b_greater: float, fraction of valid replicates with ``b > a`` (ties count as not).
        replicate_differences: (n_boot,) float64 ``b - a`` per replicate (NaN without lesions).
    """

    a: float
    b: float
    difference: float
    difference_interval: tuple
    relative: float
    relative_interval: tuple
    fraction_b_greater: float
    replicate_differences: np.ndarray

    def to_dict(self):
        """A JSON-ready dict (replicates left out; NaN becomes None)."""
        return {
            "a": _json_float(self.a), "b": _json_float(self.b),
            "difference": _json_float(self.difference),
            "difference_interval": [_json_float(v) for v in self.difference_interval],
            "relative": _json_float(self.relative),
            "relative_interval": [_json_float(v) for v in self.relative_interval],
            "fraction_b_greater": _json_float(self.fraction_b_greater),
        }


@dataclasses.dataclass(frozen=True, eq=False)
class PairedBootstrapResult:
    """Paired bootstrap comparison of two candidate sets (e.g. ``S`` against ``s_0``).

    Attributes:
        score: :class:`PairedDifference` of the score at ``rates``.
        average_sensitivity: :class:`PairedDifference` of the average sensitivity up to ``max_fp``.
        n_valid: int, replicates with at least one lesion.
        n_boot, seed, level, rates, max_fp: the settings.
    """

    score: PairedDifference
    average_sensitivity: PairedDifference
    n_valid: int
    n_boot: int
    seed: int
    level: float
    rates: tuple
    max_fp: float

    def to_dict(self):
        """A JSON-ready dict."""
        return {"score": self.score.to_dict(),
                "average_sensitivity": self.average_sensitivity.to_dict(),
                "n_valid": int(self.n_valid), "n_boot": int(self.n_boot), "seed": int(self.seed),
                "level": float(self.level), "rates": [float(r) for r in self.rates],
                "max_fp": float(self.max_fp)}


def _paired(a, b, reps_a, reps_b, level):
    with np.errstate(invalid="ignore", divide="ignore"):
        relative = (b - a) / a if a != 0 else float("nan")
        diffs = reps_b - reps_a
        rel = np.where(reps_a > 0, diffs / np.where(reps_a > 0, reps_a, 1.0), np.nan)
    finite = np.isfinite(diffs)
    greater = float(np.mean(reps_b[finite] > reps_a[finite])) if finite.any() else float("nan")
    return PairedDifference(a=float(a), b=float(b), difference=float(b - a),
                            difference_interval=_interval(diffs, level), relative=float(relative),
                            relative_interval=_interval(rel, level), fraction_b_greater=greater,
                            replicate_differences=diffs)


def paired_bootstrap(candidates_a, candidates_b, lesions_per_image, *, tolerance=0, n_boot=1000,
                     seed=0, rates=DEFAULT_RATES, max_fp=DEFAULT_MAX_FP, level=0.95):
    """Paired percentile bootstrap of B minus A (e.g. ``S`` minus ``s_0``) over the same images.

    Each replicate draws the images once (with replacement) and evaluates both candidate sets on
    that same resample, so the variation between images, common to A and B, cancels in the
    difference. Reported per summary (score at ``rates``, average sensitivity up to ``max_fp``):
    the full-sample values, ``b - a`` and ``(b - a) / a`` with percentile intervals at ``level``,
    and the fraction of replicates with ``b > a``.

    Args:
        candidates_a, candidates_b: lists of (K_i, 3) candidate arrays (as for :func:`froc`),
            one per image, for the same images in the same order.
        lesions_per_image: as for :func:`froc`.
        tolerance, n_boot, seed, rates, max_fp, level: as for :func:`bootstrap`.

    Returns:
        :class:`PairedBootstrapResult`.
    """
    _check_lists(candidates_a, candidates_b, names=("candidates_a", "candidates_b"))
    events_a, tolerance = _prepare(candidates_a, lesions_per_image, tolerance)
    events_b, _ = _prepare(candidates_b, lesions_per_image, tolerance)
    rates_array = _check_rates(rates).ravel()
    max_fp = _check_max_fp(max_fp)
    _check_bootstrap_options(n_boot, seed, level)
    everything = np.arange(events_a.n_images)[None, :]
    indices = _draw(events_a.n_images, n_boot, seed)
    full_a = _replicate_summaries(events_a, everything, rates_array, max_fp)
    full_b = _replicate_summaries(events_b, everything, rates_array, max_fp)
    reps_a = _replicate_summaries(events_a, indices, rates_array, max_fp)
    reps_b = _replicate_summaries(events_b, indices, rates_array, max_fp)
    return PairedBootstrapResult(
        score=_paired(full_a["score"][0], full_b["score"][0], reps_a["score"], reps_b["score"], level),
        average_sensitivity=_paired(full_a["average_sensitivity"][0], full_b["average_sensitivity"][0],
                                    reps_a["average_sensitivity"], reps_b["average_sensitivity"], level),
        n_valid=int((reps_a["n_lesions"] > 0).sum()), n_boot=n_boot, seed=seed, level=float(level),
        rates=tuple(float(r) for r in rates_array), max_fp=max_fp)
