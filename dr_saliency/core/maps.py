"""Saliency-map arithmetic: the scale maps are scored on, and the final map S.

The ground floor of refinement and of lesion evaluation alike: the loop combines its maps here,
and evaluation and figures rescore stored maps here without importing the loop. Every map that is
scored (s_0 alone, or S) passes through :func:`normalize_maps`, so s_0 and S are compared on one
scale (docs/contracts.md#scoring-maps-against-each-other).

The final map of González-Gonzalo et al. (MIDL 2018) combines the maps s_0..s_{k-1} of the
refinement loop with decaying weights ``w_i = decay ** i``; :func:`combine_maps` offers the
paper's weighted mean and two alternatives, chosen between on validation data (docs/choices.md).

Public API::

    Combination(decay=0.95, combine="masked", normalize="none")   the settings, checked
        .final_map(maps, masks=None, fov_mask=None) -> S;  .scored(...) -> (s_0, S)
        .to_params() -> dict;  Combination.from_params(params, **overrides)
    combine_maps(maps, masks=None, fov_mask=None, *, decay, combine, normalize) -> (H, W) float32
    scored_maps(maps, masks=None, fov_mask=None, *, decay, combine, normalize) -> (s_0, S)
    normalize_maps(maps, fov_mask=None, *, normalize="none") -> (k, H, W) float32
    normalize_map(saliency_map, fov_mask=None) -> (H, W) float32 in [0, 1]

numpy only.
"""

import dataclasses

import numpy as np

from dr_saliency.core.checks import check_fov, check_saliency_map, is_real

__all__ = [
    "COMBINE_MODES",
    "Combination",
    "DEFAULT_COMBINE",
    "DEFAULT_DECAY",
    "DEFAULT_NORMALIZE",
    "NORMALIZE_MODES",
    "NORMALIZE_PERCENTILE",
    "combine_maps",
    "normalize_map",
    "normalize_maps",
    "scored_maps",
]

DEFAULT_DECAY = 0.95
"""Decay of the weights ``w_i = decay ** i`` of the maps in the final map; chosen with
:data:`DEFAULT_COMBINE` on the synthetic validation split (docs/choices.md)."""

COMBINE_MODES = ("mean", "max", "masked")
"""How :func:`combine_maps` combines the normalised maps ``n_i`` with weights ``w_i``:
``"mean"``, the paper's weighted mean; ``"max"``, the max of ``w_i n_i``; ``"masked"``, each map
credited at full weight only inside its own mask (docs/choices.md)."""

DEFAULT_COMBINE = "masked"
"""Chosen on the synthetic validation split (docs/choices.md): "masked" and "max" within 0.002
AS10 of each other and both above the paper's weighted mean, which dilutes a lesion inpainted
early (it is missing from every later map); "mean" stays available."""

NORMALIZE_MODES = ("map", "image", "none")
"""How :func:`normalize_maps` scales an image's maps before they are combined and scored: each map
by its own robust maximum, every map by s_0's, or not at all (the raw gradient scale)."""

DEFAULT_NORMALIZE = "none"
"""Chosen on the synthetic validation split (docs/choices.md): the raw gradient scale, shared by
all images, localized better than either per-image rescaling, for s_0 and S alike."""

NORMALIZE_PERCENTILE = 99.9
"""Percentile of a map's positive FOV values used as its robust maximum in :func:`normalize_map`:
guided-backprop maps have a few extreme pixels that a plain maximum would let dominate."""


# ----------------------------------------------------------------------------- arithmetic


def normalize_map(saliency_map, fov_mask=None, *, percentile=NORMALIZE_PERCENTILE):
    """Scale a saliency map to [0, 1] by a robust maximum inside the field of view.

    ``n = clip(s / r, 0, 1)`` where ``r`` is the ``percentile``-th percentile (numpy's linear
    interpolation) of the map's *positive* values inside the FOV; counting only positive values
    keeps ``r`` meaningful for sparse maps. A map with no positive value inside the FOV gives zeros.

    Args:
        saliency_map: (H, W) float32 (any real dtype), finite.
        fov_mask: (H, W) bool, or None for the whole image.
        percentile: in (0, 100].

    Returns:
        (H, W) float32 in [0, 1], 0 outside the FOV.
    """
    smap = check_saliency_map(saliency_map)
    fov = check_fov(fov_mask, smap.shape)
    if not (is_real(percentile) and 0 < percentile <= 100):
        raise ValueError(f"Expected percentile in (0, 100]. Received: percentile={percentile!r}")
    return _normalize(smap, fov, _robust_max(smap, fov, percentile))


def _robust_max(smap, fov, percentile=NORMALIZE_PERCENTILE):
    """The ``percentile``-th percentile of the positive FOV values (float32), or None if none."""
    values = smap[fov]
    values = values[values > 0]
    if values.size == 0:
        return None
    # numpy's linear-interpolation percentile, with one partition instead of np.percentile's two
    # (it partitions again to look for NaN, which check_saliency_map has excluded).
    position = (values.size - 1) * (percentile / 100.0)
    low = int(np.floor(position))
    high = min(low + 1, values.size - 1)
    part = np.partition(values, [low, high])
    return np.float32(part[low] + (position - low) * (part[high] - part[low]))


def _normalize(smap, fov, robust_max):
    if robust_max is None:
        return np.zeros(smap.shape, dtype=np.float32)
    out = np.clip(smap / robust_max, 0, 1).astype(np.float32, copy=False)
    out[~fov] = 0
    return out


def normalize_maps(maps, fov_mask=None, *, normalize=DEFAULT_NORMALIZE):
    """Put an image's maps s_0..s_{k-1} on the scale they are combined and scored on.

    Every map that is scored (s_0 alone, or S) passes through this one function, so that s_0 and
    S are compared on one scale (docs/choices.md: the FROC pools candidates of all images under
    one threshold, and a per-image rescaling of one map and not the other changes its curve).

    - ``"map"``: each map by its own robust maximum (:func:`normalize_map`), clipped to [0, 1].
    - ``"image"``: every map by the robust maximum of s_0, clipped to [0, 1]: one scale per image,
      so a later map whose gradients are weaker than s_0's stays weaker.
    - ``"none"``: the raw gradient scale, shared by all images (outside the FOV set to 0).

    Args:
        maps: (k, H, W) float32 (any real dtype) maps, k >= 1, finite.
        fov_mask: (H, W) bool, or None for the whole image.
        normalize: one of :data:`NORMALIZE_MODES`.

    Returns:
        (k, H, W) float32, 0 outside the FOV.
    """
    stack = np.asarray(maps)
    if stack.ndim != 3 or stack.shape[0] < 1:
        raise ValueError(f"Expected maps of shape (k, H, W), k >= 1. Received: maps.shape={stack.shape}")
    _check_normalize(normalize)
    fov = check_fov(fov_mask, stack.shape[1:])
    checked = [check_saliency_map(s, f"maps[{i}]") for i, s in enumerate(stack)]
    if normalize == "none":
        return np.stack([np.where(fov, s, 0).astype(np.float32, copy=False) for s in checked])
    if normalize == "image":
        scale = _robust_max(checked[0], fov)
        return np.stack([_normalize(s, fov, scale) for s in checked])
    return np.stack([_normalize(s, fov, _robust_max(s, fov)) for s in checked])


def combine_maps(maps, masks=None, fov_mask=None, *, decay=DEFAULT_DECAY, combine=DEFAULT_COMBINE,
                 normalize=DEFAULT_NORMALIZE):
    """The final map S from the per-iteration maps (pure: re-run it on stored maps and masks).

    Each map s_i is first put on the common scale, ``n_i = normalize_maps(maps)[i]``, and
    weighted by ``w_i = decay ** i``; with k maps:

    - ``"mean"``: ``S = sum_i w_i n_i / sum_i w_i``, the paper's decaying weighted mean.
    - ``"max"``: ``S = max_i w_i n_i``. A lesion found (and inpainted) at iteration i keeps its
      credit ``w_i`` instead of being averaged with the later maps it is absent from.
    - ``"masked"``: ``S = max_i n_i * (w_i inside masks[i], else w_k)``, ``w_k = decay ** k``:
      each map counts at its own weight where it caused inpainting, and elsewhere only at the
      weight of the iteration after the last one. Pixels never inpainted thus rank below what
      was inpainted at the same saliency. With decay 1 it equals ``"max"``.

    With decay 0, ``"mean"`` and ``"max"`` give S = n_0 exactly: the s_0 that is scored.

    Args:
        maps: (k, H, W) float32 (any real dtype) maps s_0..s_{k-1}, k >= 1, finite, >= 0.
        masks: (k, H, W) bool, ``masks[i]`` the mask of ``maps[i]``; needed for ``"masked"`` only.
        fov_mask: (H, W) bool, or None for the whole image.
        decay: in [0, 1].
        combine: one of :data:`COMBINE_MODES`.
        normalize: one of :data:`NORMALIZE_MODES` (:func:`normalize_maps`).

    Returns:
        (H, W) float32 >= 0 (in [0, 1] unless ``normalize="none"``), 0 outside the FOV.
    """
    stack = np.asarray(maps)
    if stack.ndim != 3 or stack.shape[0] < 1:
        raise ValueError(f"Expected maps of shape (k, H, W), k >= 1. Received: maps.shape={stack.shape}")
    _check_combine(decay, combine)
    if combine == "masked":
        if masks is None:
            raise ValueError("Expected masks (k, H, W) for combine='masked'. Received: masks=None")
        masks = np.asarray(masks)
        if masks.shape != stack.shape or masks.dtype != bool:
            raise ValueError(f"Expected bool masks of shape {stack.shape}. "
                             f"Received: masks.shape={masks.shape}, masks.dtype={masks.dtype}")
    k = stack.shape[0]
    normalized = normalize_maps(stack, fov_mask, normalize=normalize)
    weights = float(decay) ** np.arange(k, dtype=np.float64)
    if combine == "mean":
        # float32 weights: a float64 tensordot would convert the whole stack (3x slower).
        out = np.tensordot((weights / weights.sum()).astype(np.float32), normalized, axes=1)
    elif combine == "max":
        out = (normalized * weights[:, None, None].astype(np.float32)).max(axis=0)
    else:
        per_pixel = np.where(masks, weights[:, None, None].astype(np.float32),
                             np.float32(float(decay) ** k))
        out = (normalized * per_pixel).max(axis=0)
    return out.astype(np.float32, copy=False)


def scored_maps(maps, masks=None, fov_mask=None, *, decay=DEFAULT_DECAY, combine=DEFAULT_COMBINE,
                normalize=DEFAULT_NORMALIZE):
    """The two maps that lesion evaluation compares, on one scale: ``(s_0, S)``.

    s_0 is ``normalize_maps(maps)[0]``, S is :func:`combine_maps` of the same normalised maps:
    both pass through the same normalisation, so a FROC difference between them is the
    combination's, not the scaling's. Arguments as :func:`combine_maps`.

    Returns:
        (s_0, S): two (H, W) float32 maps.
    """
    first = normalize_maps(np.asarray(maps)[:1], fov_mask, normalize=normalize)[0]
    return first, combine_maps(maps, masks, fov_mask, decay=decay, combine=combine,
                               normalize=normalize)


def _check_combine(decay, combine):
    if not is_real(decay) or not 0 <= decay <= 1:
        raise ValueError(f"Expected decay in [0, 1]. Received: decay={decay!r}")
    if combine not in COMBINE_MODES:
        raise ValueError(f"Expected combine in {COMBINE_MODES}. Received: combine={combine!r}")


def _check_normalize(normalize):
    if normalize not in NORMALIZE_MODES:
        raise ValueError(f"Expected normalize in {NORMALIZE_MODES}. Received: normalize={normalize!r}")


# ----------------------------------------------------------------------------- the settings


LEGACY_NORMALIZE = "map"
"""The scale of result files written before ``normalize`` was a setting (each map by its own
robust maximum): :meth:`Combination.from_params` reads it for a file without the key."""


@dataclasses.dataclass(frozen=True)
class Combination:
    """How a refinement's maps are scaled and combined into S: checked, and stored as params.

    Attributes:
        decay: weights ``w_i = decay ** i``, in [0, 1].
        combine: one of :data:`COMBINE_MODES` (:func:`combine_maps`).
        normalize: one of :data:`NORMALIZE_MODES` (:func:`normalize_maps`).
    """

    decay: float = DEFAULT_DECAY
    combine: str = DEFAULT_COMBINE
    normalize: str = DEFAULT_NORMALIZE

    def __post_init__(self):
        _check_combine(self.decay, self.combine)
        _check_normalize(self.normalize)
        object.__setattr__(self, "decay", float(self.decay))

    def final_map(self, maps, masks=None, fov_mask=None):
        """S from maps (k, H, W) and masks (k, H, W): :func:`combine_maps` with these settings."""
        return combine_maps(maps, masks, fov_mask, decay=self.decay, combine=self.combine,
                            normalize=self.normalize)

    def scored(self, maps, masks=None, fov_mask=None):
        """(s_0, S) on one scale: :func:`scored_maps` with these settings."""
        return scored_maps(maps, masks, fov_mask, decay=self.decay, combine=self.combine,
                           normalize=self.normalize)

    def to_params(self):
        """The settings as a result file stores them (JSON-serialisable)."""
        return {"decay": self.decay, "combine": self.combine, "normalize": self.normalize,
                "normalize_percentile": NORMALIZE_PERCENTILE}

    @classmethod
    def from_params(cls, params, *, decay=None, combine=None, normalize=None):
        """The settings a result file was made with; a keyword that is not None overrides one.

        Args:
            params: dict as :meth:`to_params` (or a refinement's whole params) gives; a file
                written before ``normalize`` existed is read with :data:`LEGACY_NORMALIZE`.
            decay, combine, normalize: optional overrides, e.g. to rescore stored maps.
        """
        return cls(decay=params["decay"] if decay is None else decay,
                   combine=params["combine"] if combine is None else combine,
                   normalize=params.get("normalize", LEGACY_NORMALIZE) if normalize is None
                   else normalize)
