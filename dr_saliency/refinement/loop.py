"""Iterative saliency map refinement: the loop of González-Gonzalo et al. (MIDL 2018).

"Improving weakly-supervised lesion localization with iterative saliency map refinement": the
saliency map of a referable image marks the lesions the grader relies on most. Inpainting them
(Navier-Stokes, Bertalmio et al. 2001) and explaining the inpainted image again reveals the less
discriminative lesions, until the grader no longer sees referable DR::

    s_i     = explain(I_i)                      saliency map of the i-th image
    mask_i  = binarize(s_i)                     its most salient pixels
    I_{i+1} = inpaint(I_i, mask_i)              those pixels removed
    p_{i+1} = predict(I_{i+1})                  stop when p_{i+1} <= stop_at (1.0: non-referable)

and the final map S combines the maps with decaying weights ``w_i = decay ** i``
(:func:`combine_maps`): by default ``S = max_i w_i n_i`` (``combine="max"``, chosen on validation
data, docs/choices.md); the paper's decaying weighted mean ``S = sum_i w_i n_i / sum_i w_i`` is
``combine="mean"``. ``n_i`` is s_i on the common scale of :func:`normalize_maps`; the s_0 that
lesion evaluation compares with S is ``n_0`` on that same scale (:func:`scored_maps`).

"Referable" means a predicted stage above ``stop_at`` (default 1.0: stage 2 or higher, as the
paper's referable DR); the loop runs only while the image is referable.

Terms used below. An *iteration* is map + mask + inpaint + re-predict; ``max_iterations`` caps
their number and ``RefineResult.iterations`` (``n``) counts them. ``k`` is the number of maps.

Result layout (:class:`RefineResult`):
    - ``maps`` (k, H, W) float32: s_0..s_{k-1}; ``masks`` (k, H, W) bool: ``masks[i]`` is the
      binarisation of ``maps[i]``. There is always at least s_0, so every image has a plain map.
    - ``predictions`` (n + 1,) float32 on I_0..I_n; ``images`` (n + 1, H, W, 3) uint8 when kept.
    - ``k == n`` when the loop stopped after an inpainting (``"normal"``, ``"max_iterations"`` with
      ``max_iterations >= 1``), exactly DESIGN.md's ``maps (k, ...)``, ``predictions (k + 1,)``.
      ``k == n + 1`` when it stopped *at* a map, before inpainting its mask: then the last map and
      its mask are kept but that mask was not inpainted. This happens for ``"not_referable"`` (p_0
      is already <= stop_at: s_0 is still computed), for ``max_iterations=0`` (s_0 only) and for
      ``"empty_mask"``.

Stop reasons (:data:`STOP_REASONS`):
    - ``"normal"``: p_n <= stop_at after n >= 1 inpaintings (also when n == max_iterations: reaching
      the threshold wins over reaching the cap).
    - ``"max_iterations"``: n == max_iterations and p_n > stop_at.
    - ``"not_referable"``: p_0 <= stop_at; k = 1 (s_0), n = 0.
    - ``"empty_mask"``: the mask of s_i is empty (an all-zero map inside the FOV, or
      ``min_component_size`` removed every component): s_i and its empty mask are kept, nothing is
      inpainted; k = i + 1, n = i. An all-zero map is a stop, not an error.

Prediction reuse (DESIGN.md §5). ``explain`` may return ``(maps, predictions)``: a guided backward
pass runs the forward pass, whose output is the prediction on the same images. Then each iteration
calls ``explain`` on I_i once and takes p_i from it; when p_i <= stop_at the map s_i is discarded
(one backward pass wasted per image, ~1.1x a forward pass, instead of a separate forward pass in
every iteration). ``predict`` is then only called on I_n when n == max_iterations (no map is needed
there, so a forward pass is enough); it may be None, and ``explain`` is used instead. When
``explain`` returns maps only, ``predict`` is called on every I_i and ``explain`` only on the images
still referable.

Batches (:func:`refine_batch`) advance together: each iteration makes one ``explain`` and/or one
``predict`` call with the images still active; an image drops out when it stops.

Pure numpy / OpenCV / scipy: no TensorFlow here; the predictor and explainer are callables.

Public API::

    refine(image, *, explain, predict=None, fov_mask=None, keep_images=False, **options)
        -> RefineResult
    refine_batch(images, fov_masks=None, *, explain, predict=None, max_iterations=10,
                 stop_at=1.0, decay=0.9, combine="max", normalize="map",
                 binarize_rule="top_fraction", binarize_level=None, smooth_sigma=0.0, dilation=1,
                 min_component_size=0, inpaint_method="ns", inpaint_radius=3,
                 inpaint_inside_fov=True, keep_images=False) -> list[RefineResult]
    combine_maps(maps, masks=None, fov_mask=None, *, decay, combine, normalize) -> (H, W) float32
    scored_maps(maps, masks=None, fov_mask=None, *, decay, combine, normalize) -> (s_0, S)
    normalize_maps(maps, fov_mask=None, *, normalize="map") -> (k, H, W) float32
    normalize_map(saliency_map, fov_mask=None) -> (H, W) float32 in [0, 1]
    refine_params(**options) -> dict       the checked options, as RefineResult.params stores them
    ImageError(ValueError)                 a bad image in a batch; .index says which
"""

import dataclasses
import numbers

import numpy as np

from dr_saliency.refinement import erase as _inpaint
__all__ = [
    "COMBINE_MODES",
    "DEFAULT_COMBINE",
    "DEFAULT_DECAY",
    "DEFAULT_MAX_ITERATIONS",
    "DEFAULT_STOP_AT",
    "ImageError",
    "NORMALIZE_PERCENTILE",
    "RefineResult",
    "STOP_REASONS",
    "combine_maps",
    "NORMALIZE_MODES",
    "DEFAULT_NORMALIZE",
    "normalize_map",
    "normalize_maps",
    "scored_maps",
    "refine",
    "refine_batch",
    "refine_params",
]

DEFAULT_MAX_ITERATIONS = 10
"""Cap on the number of inpaintings per image (the paper does not give one; to be chosen on
validation data). With the negative guided gradient most images stop on the threshold well before
(DESIGN.md §6)."""

DEFAULT_STOP_AT = 1.0
"""Stop when the predicted stage is <= this: stage 1 or lower is non-referable DR."""

DEFAULT_DECAY = 0.95
"""Decay of the weights ``w_i = decay ** i`` of the maps in the final map; chosen with
:data:`DEFAULT_COMBINE` on the synthetic validation split (docs/choices.md)."""

COMBINE_MODES = ("mean", "max", "masked")
"""How :func:`combine_maps` combines the normalised maps ``n_i`` with weights ``w_i``:
``"mean"``, the paper's weighted mean; ``"max"``, the max of ``w_i n_i``; ``"masked"``, each map
credited at full weight only inside its own mask (DESIGN.md §6)."""

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

STOP_REASONS = ("normal", "max_iterations", "not_referable", "empty_mask")
"""Why the loop stopped for an image; see the module docstring."""


class ImageError(ValueError):
    """A bad image (or its FOV, or its saliency map) in a batch; ``index`` is its position.

    A ``ValueError``, so it is reported like any bad input; the index lets a caller skip that image
    and run the others again.
    """

    def __init__(self, message, index):
        super().__init__(message)
        self.index = index


@dataclasses.dataclass
class RefineResult:
    """The refinement of one image (see the module docstring for k and n).

    Attributes:
        maps: (k, H, W) float32 saliency maps s_0..s_{k-1}, k >= 1, 0 outside the FOV.
        masks: (k, H, W) bool, ``masks[i] = binarize(maps[i])``; the first n were inpainted.
        predictions: (n + 1,) float32 predictions on I_0..I_n.
        images: (n + 1, H, W, 3) uint8 I_0..I_n when ``keep_images``, else None.
        final_map: (H, W) float32 S, :func:`combine_maps` of maps and masks, in [0, 1].
        stop_reason: one of :data:`STOP_REASONS`.
        iterations: n, the number of inpaintings.
        params: the loop's parameters (JSON-serialisable dict), as :func:`refine_params` gives.
    """

    maps: np.ndarray
    masks: np.ndarray
    predictions: np.ndarray
    images: np.ndarray | None
    final_map: np.ndarray
    stop_reason: str
    iterations: int
    params: dict


# ----------------------------------------------------------------------------- combination


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
    smap = _inpaint.check_saliency_map(saliency_map)
    fov = _inpaint.check_fov(fov_mask, smap.shape)
    if not (isinstance(percentile, numbers.Real) and 0 < percentile <= 100):
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
    if normalize not in NORMALIZE_MODES:
        raise ValueError(f"Expected normalize in {NORMALIZE_MODES}. Received: normalize={normalize!r}")
    fov = _inpaint.check_fov(fov_mask, stack.shape[1:])
    checked = [_inpaint.check_saliency_map(s, f"maps[{i}]") for i, s in enumerate(stack)]
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
    if not isinstance(decay, numbers.Real) or isinstance(decay, bool) or not 0 <= decay <= 1:
        raise ValueError(f"Expected decay in [0, 1]. Received: decay={decay!r}")
    if combine not in COMBINE_MODES:
        raise ValueError(f"Expected combine in {COMBINE_MODES}. Received: combine={combine!r}")


# ----------------------------------------------------------------------------- the loop


def refine_params(*, max_iterations=DEFAULT_MAX_ITERATIONS, stop_at=DEFAULT_STOP_AT,
                  decay=DEFAULT_DECAY, combine=DEFAULT_COMBINE, normalize=DEFAULT_NORMALIZE,
                  binarize_rule=_inpaint.DEFAULT_RULE, binarize_level=None,
                  smooth_sigma=_inpaint.DEFAULT_SMOOTH_SIGMA, dilation=_inpaint.DEFAULT_DILATION,
                  min_component_size=_inpaint.DEFAULT_MIN_COMPONENT_SIZE,
                  inpaint_method=_inpaint.DEFAULT_INPAINT_METHOD,
                  inpaint_radius=_inpaint.DEFAULT_INPAINT_RADIUS, inpaint_inside_fov=True):
    """Check the loop's parameters and return them as a JSON-serialisable dict.

    Arguments as :func:`refine`. ``binarize_level`` None is resolved to the rule's default, so two
    runs with the same effective parameters give equal dicts (the result store compares them).

    Returns:
        dict with those keys plus ``normalize_percentile``.
    """
    if not isinstance(max_iterations, numbers.Integral) or isinstance(max_iterations, bool) \
            or max_iterations < 0:
        raise ValueError("Expected an integer max_iterations >= 0. "
                         f"Received: max_iterations={max_iterations!r}")
    if not isinstance(stop_at, numbers.Real) or isinstance(stop_at, bool) or not np.isfinite(stop_at):
        raise ValueError(f"Expected a finite stop_at. Received: stop_at={stop_at!r}")
    _check_combine(decay, combine)
    if normalize not in NORMALIZE_MODES:
        raise ValueError(f"Expected normalize in {NORMALIZE_MODES}. Received: normalize={normalize!r}")
    if not isinstance(inpaint_inside_fov, (bool, np.bool_)):
        raise TypeError("Expected inpaint_inside_fov to be True or False. "
                        f"Received: inpaint_inside_fov={inpaint_inside_fov!r}")
    level = _inpaint._check_binarize_options(binarize_rule, binarize_level, smooth_sigma, dilation,
                                             min_component_size)
    if inpaint_method not in _inpaint.INPAINT_METHODS:
        raise ValueError(f"Expected inpaint_method in {tuple(_inpaint.INPAINT_METHODS)}. "
                         f"Received: inpaint_method={inpaint_method!r}")
    if not isinstance(inpaint_radius, numbers.Real) or isinstance(inpaint_radius, bool) \
            or not inpaint_radius >= 1:
        raise ValueError(f"Expected inpaint_radius >= 1. Received: inpaint_radius={inpaint_radius!r}")
    return {
        "max_iterations": int(max_iterations), "stop_at": float(stop_at), "decay": float(decay),
        "combine": combine, "binarize_rule": binarize_rule,
        "binarize_level": None if level is None else float(level),
        "smooth_sigma": float(smooth_sigma), "dilation": int(dilation),
        "min_component_size": int(min_component_size), "inpaint_method": inpaint_method,
        "inpaint_radius": inpaint_radius if isinstance(inpaint_radius, numbers.Integral)
        else float(inpaint_radius),
        "inpaint_inside_fov": bool(inpaint_inside_fov), "normalize": normalize,
        "normalize_percentile": NORMALIZE_PERCENTILE,
    }


def refine(image, *, explain, predict=None, fov_mask=None, keep_images=False, **options):
    """Refine the saliency map of one image (González-Gonzalo et al., MIDL 2018).

    :func:`refine_batch` with a batch of one; see the module docstring for the loop, the stop
    reasons and the result layout.

    Args:
        image: (H, W, 3) uint8 RGB image I_0.
        explain: callable ``(images (N, H, W, 3) uint8, fovs (N, H, W) bool) -> maps (N, H, W)
            float32`` or ``-> (maps, predictions (N,))``.
        predict: callable ``images (N, H, W, 3) uint8 -> (N,)`` predicted stages; may be None when
            ``explain`` returns predictions.
        fov_mask: (H, W) bool field of view, or None for the whole image.
        keep_images: keep I_0..I_n in the result.
        **options: the loop's options (max_iterations, stop_at, decay, combine, normalize,
            binarize_rule, ...), as :func:`refine_batch` takes them.

    Returns:
        RefineResult.
    """
    _check_image(image, "image", None)
    if fov_mask is not None:
        _check_fov(fov_mask, image.shape[:2], "fov_mask", None)
    return refine_batch([image], [fov_mask], explain=explain, predict=predict,
                        keep_images=keep_images, **options)[0]


def refine_batch(images, fov_masks=None, *, explain, predict=None, keep_images=False,
                 max_iterations=DEFAULT_MAX_ITERATIONS, stop_at=DEFAULT_STOP_AT,
                 decay=DEFAULT_DECAY, combine=DEFAULT_COMBINE, normalize=DEFAULT_NORMALIZE,
                 binarize_rule=_inpaint.DEFAULT_RULE, binarize_level=None,
                 smooth_sigma=_inpaint.DEFAULT_SMOOTH_SIGMA, dilation=_inpaint.DEFAULT_DILATION,
                 min_component_size=_inpaint.DEFAULT_MIN_COMPONENT_SIZE,
                 inpaint_method=_inpaint.DEFAULT_INPAINT_METHOD,
                 inpaint_radius=_inpaint.DEFAULT_INPAINT_RADIUS, inpaint_inside_fov=True):
    """Refine the saliency maps of a batch of images together.

    All images advance one iteration at a time; each iteration sends the images still active to
    ``explain`` and/or ``predict`` as one batch, and an image leaves the batch when it stops. See
    the module docstring for the loop, stop reasons, result layout and prediction reuse.

    Args:
        images: (N, H, W, 3) uint8 RGB array, or a sequence of N such (H, W, 3) images of one size.
            Never modified.
        fov_masks: None, or a sequence of N (H, W) bool field-of-view masks (None entries allowed:
            whole image). Maps are set to 0 outside the FOV and masks stay inside it.
        explain: callable ``(images (M, H, W, 3) uint8, fovs (M, H, W) bool) -> maps (M, H, W)``
            float, larger = more salient (>= 0); or ``-> (maps, predictions (M,))``, a tuple, when
            the same pass gives the prediction.
        predict: callable ``images (M, H, W, 3) uint8 -> (M,)`` predicted stages. May be None when
            ``explain`` returns predictions.
        keep_images: keep I_0..I_n in each result.
        max_iterations: cap on inpaintings per image, >= 0; 0 gives s_0 alone.
        stop_at: stop when the prediction is <= this.
        decay: ``w_i = decay ** i``, in [0, 1].
        combine: how the maps make S, one of :data:`COMBINE_MODES` (:func:`combine_maps`).
        normalize: the scale the maps are combined on, one of :data:`NORMALIZE_MODES`.
        binarize_rule, binarize_level, smooth_sigma, dilation, min_component_size: the options
            ``rule``, ``level``, ... of :func:`dr_saliency.refinement.erase.binarize`.
        inpaint_method, inpaint_radius: ``method`` and ``radius`` of
            :func:`dr_saliency.refinement.erase.inpaint`.
        inpaint_inside_fov: fill from inside the field of view only (``fov_mask`` of
            :func:`dr_saliency.refinement.erase.inpaint`); False lets the black surround bleed in.

    Returns:
        list of N :class:`RefineResult`, in the order of ``images``.

    Raises:
        ImageError (a ValueError with ``.index``): a bad image or FOV, or NaN/inf in the map of
            an image from ``explain``.
        ValueError: bad options, or ``explain``/``predict`` returning the wrong shape or NaN.
        TypeError: ``predict`` is None but ``explain`` returns maps only.
    """
    params = refine_params(max_iterations=max_iterations, stop_at=stop_at, decay=decay,
                           combine=combine, normalize=normalize, binarize_rule=binarize_rule,
                           binarize_level=binarize_level, smooth_sigma=smooth_sigma,
                           dilation=dilation, min_component_size=min_component_size,
                           inpaint_method=inpaint_method, inpaint_radius=inpaint_radius,
                           inpaint_inside_fov=inpaint_inside_fov)
    if not callable(explain):
        raise TypeError(f"Expected a callable explain. Received: explain={explain!r}")
    if predict is not None and not callable(predict):
        raise TypeError(f"Expected a callable predict or None. Received: predict={predict!r}")
    current, fovs = _check_batch(images, fov_masks)
    if not current:
        return []
    binarize_options = dict(rule=binarize_rule, level=params["binarize_level"],
                            smooth_sigma=smooth_sigma, dilation=dilation,
                            min_component_size=min_component_size)

    n_images = len(current)
    maps = [[] for _ in range(n_images)]
    masks = [[] for _ in range(n_images)]
    predictions = [[] for _ in range(n_images)]
    kept = [[image] for image in current] if keep_images else None
    reasons = [None] * n_images
    calls = _Calls(explain, predict, fovs)

    active = list(range(n_images))
    step_maps, step_predictions = calls.first(current)
    iteration = 0
    while True:
        # Here every active image j is I_i (i = iteration) with its prediction step_predictions[m]
        # and, where it was computed, its map step_maps[m] (m = position of j in `active`).
        still_active = []
        for m, j in enumerate(active):
            p = step_predictions[m]
            predictions[j].append(p)
            stop = None
            if p <= stop_at:
                stop = "not_referable" if iteration == 0 else "normal"
            elif iteration == max_iterations:
                stop = "max_iterations"
            if stop is not None and iteration > 0:
                reasons[j] = stop  # s_i, if explain computed it with p_i, is discarded
                continue
            smap = step_maps[m]
            # An all-zero map (inside the FOV) has no pixels to choose: that is a stop, not an error.
            if smap[fovs[j]].max(initial=0) > 0:
                mask = _inpaint.binarize(smap, fovs[j], **binarize_options)
            else:
                mask = np.zeros(smap.shape, dtype=bool)
            maps[j].append(smap)
            masks[j].append(mask)
            if stop is not None:  # iteration 0: s_0 and its mask are kept, nothing inpainted
                reasons[j] = stop
                continue
            if not mask.any():
                reasons[j] = "empty_mask"
                continue
            current[j] = _inpaint.inpaint(current[j], mask, method=inpaint_method,
                                          radius=inpaint_radius,
                                          fov_mask=fovs[j] if inpaint_inside_fov else None)
            if keep_images:
                kept[j].append(current[j])  # inpaint returns a new array: no copy needed
            still_active.append(j)
        active = still_active
        if not active:
            break
        iteration += 1
        step_maps, step_predictions = calls.step(
            current, active, need_maps=iteration < max_iterations, stop_at=stop_at)

    results = []
    for j in range(n_images):
        map_stack = np.stack(maps[j])
        mask_stack = np.stack(masks[j])
        results.append(RefineResult(
            maps=map_stack, masks=mask_stack,
            predictions=np.asarray(predictions[j], dtype=np.float32),
            images=np.stack(kept[j]) if keep_images else None,
            final_map=combine_maps(map_stack, mask_stack, fovs[j], decay=decay, combine=combine,
                                   normalize=normalize),
            stop_reason=reasons[j], iterations=len(predictions[j]) - 1, params=dict(params)))
    return results


class _Calls:
    """Calls to ``explain`` / ``predict`` with their outputs checked, and the prediction reuse."""

    def __init__(self, explain, predict, fovs):
        self.explain_fn = explain
        self.predict_fn = predict
        self.fovs = fovs
        self.explain_predicts = None  # known after the first explain call

    def first(self, current):
        """Maps and predictions on every I_0 (s_0 is always needed)."""
        indices = list(range(len(current)))
        maps, predictions = self._explain(current, indices)
        self.explain_predicts = predictions is not None
        if predictions is None:
            if self.predict_fn is None:
                raise TypeError("Expected a predict callable: explain returned maps only (no "
                                "predictions). Received: predict=None")
            predictions = self._predict(current, indices)
        return maps, predictions

    def step(self, current, active, *, need_maps, stop_at):
        """Predictions on the active I_i and, when ``need_maps``, the maps of the referable ones.

        Returns (maps, predictions): per active image, in ``active`` order; a map is None where it
        was not computed (non-referable images when explain gives no predictions).
        """
        if need_maps and self.explain_predicts:
            # One forward+backward gives both; maps of images that turn out non-referable are
            # discarded by the caller.
            return self._explain(current, active)
        if self.predict_fn is not None:
            predictions = self._predict(current, active)
        else:  # explain_predicts and no predict: a map is computed and dropped
            _, predictions = self._explain(current, active)
        maps = [None] * len(active)
        if need_maps:
            referable = [m for m, p in enumerate(predictions) if p > stop_at]
            if referable:
                sub_maps, _ = self._explain(current, [active[m] for m in referable])
                for m, smap in zip(referable, sub_maps):
                    maps[m] = smap
        return maps, predictions

    def _explain(self, current, indices):
        batch = np.stack([current[j] for j in indices])
        fovs = self.fovs[indices]
        out = self.explain_fn(batch, fovs)
        predictions = None
        if isinstance(out, tuple) and len(out) == 2:
            out, predictions = out
            predictions = self._check_predictions(predictions, indices, "explain")
        elif self.explain_predicts:
            raise ValueError("Expected explain to keep returning (maps, predictions) as on its first "
                             "call. Received: maps only")
        maps = np.asarray(out)
        if maps.shape != fovs.shape:
            raise ValueError(f"Expected explain to return maps of shape {fovs.shape}. "
                             f"Received: shape={maps.shape}")
        if not np.issubdtype(maps.dtype, np.floating) and not np.issubdtype(maps.dtype, np.integer):
            raise ValueError(f"Expected explain to return real-valued maps. Received: dtype={maps.dtype}")
        finite = np.isfinite(maps).all(axis=(1, 2))
        if not finite.all():
            j = indices[int(np.flatnonzero(~finite)[0])]
            raise ImageError("Expected finite saliency maps from explain. Received: NaN or infinite "
                             f"values in the map of images[{j}] (did the network diverge?)", j)
        # The contract is 0 outside the FOV; enforce it rather than trust every explainer. One copy,
        # which also detaches the maps from the explainer's buffers.
        return np.where(fovs, maps, 0).astype(np.float32, copy=False), predictions

    def _predict(self, current, indices):
        out = self.predict_fn(np.stack([current[j] for j in indices]))
        return self._check_predictions(out, indices, "predict")

    @staticmethod
    def _check_predictions(predictions, indices, source):
        predictions = np.asarray(predictions, dtype=np.float32).reshape(-1)
        if predictions.size != len(indices):
            raise ValueError(f"Expected {source} to return {len(indices)} predictions. "
                             f"Received: {predictions.size}")
        if not np.isfinite(predictions).all():
            j = indices[int(np.flatnonzero(~np.isfinite(predictions))[0])]
            raise ImageError(f"Expected finite predictions from {source}. Received: NaN or infinite "
                             f"prediction for images[{j}]", j)
        return predictions


def _check_image(image, name, index):
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise ImageError(f"Expected a uint8 RGB image. Received: {name}.dtype="
                         f"{getattr(image, 'dtype', type(image).__name__)}", index)
    if image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
        raise ImageError(f"Expected an image of shape (H, W, 3). Received: {name}.shape={image.shape}",
                         index)


def _check_fov(fov, shape, name, index):
    fov = np.asarray(fov)
    if fov.dtype != bool or fov.shape != tuple(shape):
        raise ImageError(f"Expected a bool field-of-view mask of shape {tuple(shape)}. "
                         f"Received: {name}.shape={fov.shape}, {name}.dtype={fov.dtype}", index)
    return fov


def _check_batch(images, fov_masks):
    """Images as a list of (H, W, 3) arrays (copies), FOVs as one (N, H, W) bool array."""
    if isinstance(images, np.ndarray) and images.ndim != 4:
        raise ValueError(f"Expected images of shape (N, H, W, 3) or a list of (H, W, 3) images. "
                         f"Received: images.shape={images.shape}")
    images = list(images)
    if fov_masks is not None:
        fov_masks = list(fov_masks)
        if len(fov_masks) != len(images):
            raise ValueError(f"Expected one FOV mask per image ({len(images)}). "
                             f"Received: {len(fov_masks)} fov_masks")
    current = []
    for j, image in enumerate(images):
        _check_image(image, f"images[{j}]", j)
        if image.shape != images[0].shape:
            raise ImageError(f"Expected every image of a batch to have the shape of images[0], "
                             f"{images[0].shape}. Received: images[{j}].shape={image.shape}", j)
        # The loop replaces current[j] by new arrays and never writes into it: no copy needed.
        current.append(image)
    if not current:
        return current, None
    fovs = np.ones((len(current), *current[0].shape[:2]), dtype=bool)
    for j, fov in enumerate(fov_masks or []):
        if fov is not None:
            fovs[j] = _check_fov(fov, current[0].shape[:2], f"fov_masks[{j}]", j)
    return current, fovs
