"""Iterative saliency map refinement: the loop of González-Gonzalo et al. (MIDL 2018).

"Improving weakly-supervised lesion localization with iterative saliency map refinement": the
saliency map of a referable image marks the lesions the grader relies on most. Erasing them
(binarise the map, inpaint the mask with Navier-Stokes, Bertalmio et al. 2001) and explaining the
erased image again reveals the less discriminative lesions, until the grader no longer sees
referable DR::

    s_i, p_i          = explain(I_i)              saliency map and prediction of the i-th image
    mask_i, I_{i+1}   = erase(I_i, s_i)           its most salient pixels, and the image without them
    stop when I_{i+1} is graded <= stop_at (1: non-referable), or after max_iterations erasures
    S                 = combination of s_0..s_{k-1} with weights decay ** i

The three seams: ``explain`` (any saliency method, :mod:`dr_saliency.explain`), ``erase`` (an
:class:`~dr_saliency.refinement.erase.Eraser` or any callable like it) and ``config``
(:class:`RefineConfig`: iterations, threshold, and the :class:`~dr_saliency.core.maps.Combination`
of the maps into S, by default a masked max, docs/choices.md). The s_0 that lesion evaluation
compares with S is on the same scale (:func:`dr_saliency.core.maps.scored_maps`).

"Referable" has one meaning in the package (:mod:`dr_saliency.core.grades`): the prediction
rounded to a stage (its *grade*, as evaluation grades) is 2 or higher, i.e. p >= 1.5. The loop
runs while the image is graded above ``stop_at`` (default 1), so by default until it is graded
non-referable, as in the paper. Result files written before this rule compared the raw
prediction with ``stop_at`` = 1.0 (p <= 1.0 stopped); they carry no ``stop_on`` and are read with
that rule (``stop_on="prediction"``).

Terms used below. An *iteration* is map + erase + re-predict; ``max_iterations`` caps their number
and ``RefineResult.iterations`` (``n``) counts them. ``k`` is the number of maps.

Result layout (:class:`~dr_saliency.refinement.result.RefineResult`):
    - ``maps`` (k, H, W) float32: s_0..s_{k-1}; ``masks`` (k, H, W) bool: ``masks[i]`` is the
      erase mask of ``maps[i]``. There is always at least s_0, so every image has a plain map.
    - ``predictions`` (n + 1,) float32 on I_0..I_n; ``images`` (n + 1, H, W, 3) uint8 when kept.
    - ``k == n`` when the loop stopped after an erasure (``"normal"``, ``"max_iterations"`` with
      ``max_iterations >= 1``), as docs/contracts.md's ``maps (k, ...)``, ``predictions (k + 1,)``.
      ``k == n + 1`` when it stopped *at* a map, before erasing its mask: then the last map and its
      mask are kept but that mask was not inpainted. This happens for ``"not_referable"`` (p_0 is
      already graded <= stop_at: s_0 is still computed), for ``max_iterations=0`` (s_0 only) and for
      ``"empty_mask"``.

Stop reasons (:data:`~dr_saliency.refinement.result.STOP_REASONS`):
    - ``"normal"``: I_n graded <= stop_at after n >= 1 erasures (also when n == max_iterations:
      reaching the threshold wins over reaching the cap).
    - ``"max_iterations"``: n == max_iterations and I_n still graded above stop_at.
    - ``"not_referable"``: I_0 graded <= stop_at; k = 1 (s_0), n = 0.
    - ``"empty_mask"``: the mask of s_i is empty (an all-zero map inside the FOV, or
      ``min_component_size`` removed every component): s_i and its empty mask are kept, nothing is
      erased; k = i + 1, n = i. An all-zero map is a stop, not an error.

Prediction reuse (docs/performance.md#where-the-time-goes). ``explain`` may return
``(maps, predictions)``: a guided backward pass runs the forward pass, whose output is the
prediction on the same images. Then each iteration calls ``explain`` on I_i once and takes p_i from
it; when I_i stops the loop the map s_i is discarded (one backward pass wasted per image, ~1.1x a
forward pass, instead of a separate forward pass in every iteration). ``predict`` is then only
called on I_n when n == max_iterations (no map is needed there); it may be None, and ``explain`` is
used instead. When ``explain`` returns maps only, ``predict`` is called on every I_i and
``explain`` only on the images still referable.

Batches (:func:`refine_batch`) advance together: each iteration makes one ``explain`` and/or one
``predict`` call with the images still active; an image drops out when it stops.

Pure numpy: no TensorFlow here; the predictor and explainer are callables.

Public API::

    RefineConfig(max_iterations=10, stop_at=1, combination=Combination())   .stops(p) -> bool array
    refine(image, *, explain, predict=None, erase=None, config=None, fov_mask=None,
           keep_images=False) -> RefineResult
    refine_batch(images, fov_masks=None, *, explain, predict=None, erase=None, config=None,
                 keep_images=False) -> list[RefineResult]
    run_params(config=None, erase=None) -> dict     the settings as RefineResult.params stores them
"""

import dataclasses

import numpy as np

from dr_saliency.core.checks import ImageError, check_fov, check_image, is_int, is_real
from dr_saliency.core.grades import REFERABLE_STAGE, to_grades
from dr_saliency.core.maps import Combination
from dr_saliency.refinement.erase import Eraser
from dr_saliency.refinement.result import RefineResult

__all__ = [
    "DEFAULT_MAX_ITERATIONS",
    "DEFAULT_STOP_AT",
    "RefineConfig",
    "refine",
    "refine_batch",
    "run_params",
]

DEFAULT_MAX_ITERATIONS = 10
"""Cap on the number of erasures per image (the paper does not give one). With the negative
guided gradient most images stop on the threshold well before (docs/results.md)."""

DEFAULT_STOP_AT = REFERABLE_STAGE - 1
"""Stop when the image is graded <= this: grade 1 or lower is non-referable DR."""

STOP_ON = ("grade", "prediction")
"""What ``stop_at`` is compared with: the grade (the rule), or the raw prediction (result files
written before the rule, read as they were made)."""


@dataclasses.dataclass(frozen=True)
class RefineConfig:
    """When the loop stops and how its maps make S; checked when made.

    Attributes:
        max_iterations: cap on erasures per image, >= 0; 0 gives s_0 alone.
        stop_at: stop when the image's grade (its prediction rounded and clipped to 0-4) is at
            most this, an int 0-3; default 1, i.e. once the image is graded non-referable.
        combination: how the maps are scaled and combined into S.
        stop_on: ``"grade"``; ``"prediction"`` (compare the raw prediction with a finite
            ``stop_at``) only reads result files made before the grade rule.
    """

    max_iterations: int = DEFAULT_MAX_ITERATIONS
    stop_at: float = DEFAULT_STOP_AT
    combination: Combination = Combination()
    stop_on: str = "grade"

    def __post_init__(self):
        if not is_int(self.max_iterations) or self.max_iterations < 0:
            raise ValueError("Expected an integer max_iterations >= 0. "
                             f"Received: max_iterations={self.max_iterations!r}")
        if self.stop_on not in STOP_ON:
            raise ValueError(f"Expected stop_on in {STOP_ON}. Received: stop_on={self.stop_on!r}")
        if self.stop_on == "grade":
            if not is_real(self.stop_at) or self.stop_at not in (0, 1, 2, 3):
                raise ValueError("Expected stop_at to be a grade 0-3 (the loop stops once the image "
                                 f"is graded at most this). Received: stop_at={self.stop_at!r}")
            object.__setattr__(self, "stop_at", int(self.stop_at))
        else:
            if not is_real(self.stop_at) or not np.isfinite(self.stop_at):
                raise ValueError(f"Expected a finite stop_at. Received: stop_at={self.stop_at!r}")
            object.__setattr__(self, "stop_at", float(self.stop_at))
        if not isinstance(self.combination, Combination):
            raise TypeError("Expected a Combination. "
                            f"Received: combination={self.combination!r}")
        object.__setattr__(self, "max_iterations", int(self.max_iterations))

    def stops(self, predictions):
        """Whether each prediction ends the loop (the image is no longer graded above stop_at).

        Args:
            predictions: array-like of float, any shape.

        Returns:
            bool array of the same shape.
        """
        if self.stop_on == "grade":
            return to_grades(predictions) <= self.stop_at
        return np.asarray(predictions, dtype=np.float64) <= self.stop_at

    def to_params(self):
        """The settings as a result file stores them (flat, with the combination's)."""
        return {"max_iterations": self.max_iterations, "stop_at": self.stop_at, "stop_on": self.stop_on,
                **self.combination.to_params()}

    @classmethod
    def from_params(cls, params):
        """The RefineConfig a result file was made with (other keys ignored); a file without
        ``stop_on`` was made before the grade rule and compared the raw prediction."""
        return cls(max_iterations=params["max_iterations"], stop_at=params["stop_at"],
                   combination=Combination.from_params(params),
                   stop_on=params.get("stop_on", "prediction"))


def run_params(config=None, erase=None):
    """The settings of a run as one JSON-serialisable dict (what ``RefineResult.params`` and the
    result store hold): ``config.to_params()`` and ``erase.to_params()`` merged.

    Args:
        config: RefineConfig, or None for the defaults.
        erase: Eraser (or any erase callable with ``to_params()``), or None for the default.
    """
    config, erase = _settings(config, erase)
    return {**config.to_params(), **erase.to_params()}


def _settings(config, erase):
    config = RefineConfig() if config is None else config
    erase = Eraser() if erase is None else erase
    if not isinstance(config, RefineConfig):
        raise TypeError(f"Expected a RefineConfig or None. Received: config={config!r}")
    if not callable(erase) or not callable(getattr(erase, "to_params", None)):
        raise TypeError("Expected erase to be an Eraser or a callable with a to_params() method. "
                        f"Received: erase={erase!r}")
    return config, erase


def refine(image, *, explain, predict=None, erase=None, config=None, fov_mask=None,
           keep_images=False):
    """Refine the saliency map of one image: :func:`refine_batch` with a batch of one.

    Args:
        image: (H, W, 3) uint8 RGB image I_0.
        explain, predict, erase, config, keep_images: as :func:`refine_batch`.
        fov_mask: (H, W) bool field of view, or None for the whole image.

    Returns:
        RefineResult.
    """
    check_image(image, "image", index=0)
    check_fov(fov_mask, image.shape[:2], "fov_mask", index=0)
    return refine_batch([image], [fov_mask], explain=explain, predict=predict, erase=erase,
                        config=config, keep_images=keep_images)[0]


def refine_batch(images, fov_masks=None, *, explain, predict=None, erase=None, config=None,
                 keep_images=False):
    """Refine the saliency maps of a batch of images together (see the module docstring).

    Args:
        images: (N, H, W, 3) uint8 RGB array, or a sequence of N such (H, W, 3) images of one size.
            Never modified.
        fov_masks: None, or a sequence of N (H, W) bool field-of-view masks (None entries allowed:
            whole image). Maps are set to 0 outside the FOV.
        explain: callable ``(images (M, H, W, 3) uint8, fovs (M, H, W) bool) -> maps (M, H, W)``
            float, larger = more salient (>= 0); or ``-> (maps, predictions (M,))``, a tuple, when
            the same pass gives the prediction.
        predict: callable ``images (M, H, W, 3) uint8 -> (M,)`` predicted stages. May be None when
            ``explain`` returns predictions.
        erase: callable ``(image, saliency_map, fov) -> (mask, erased image or None)`` with a
            ``to_params()`` method; None: the default
            :class:`~dr_saliency.refinement.erase.Eraser`.
        config: :class:`RefineConfig`, or None for the defaults.
        keep_images: keep I_0..I_n in each result.

    Returns:
        list of N RefineResult, in the order of ``images``.

    Raises:
        ImageError (a ValueError with ``.index``): a bad image or FOV, or NaN/inf in the map of
            an image from ``explain``.
        ValueError: ``explain``/``predict`` returning the wrong shape or NaN.
        TypeError: bad ``config``/``erase``; ``predict`` None but ``explain`` returns maps only.
    """
    config, erase = _settings(config, erase)
    params = run_params(config, erase)
    if not callable(explain):
        raise TypeError(f"Expected a callable explain. Received: explain={explain!r}")
    if predict is not None and not callable(predict):
        raise TypeError(f"Expected a callable predict or None. Received: predict={predict!r}")
    current, fovs = _check_batch(images, fov_masks)
    traces = [_Trace(image, keep_images) for image in current]
    calls = _Calls(explain, predict, fovs, config)

    active, i = list(range(len(current))), 0
    while active:
        want = "all" if i == 0 else "referable" if i < config.max_iterations else "none"
        maps, predictions = calls.look(current, active, want)
        still_active = []
        for j, smap, p in zip(active, maps, predictions):
            trace = traces[j]
            trace.predictions.append(p)
            stop = _stop_reason(p, i, config)
            if stop is not None and i > 0:  # I_i ends the loop; its map, if computed, is unused
                trace.stop_reason = stop
                continue
            mask, erased = erase(current[j], smap, fovs[j])
            trace.maps.append(smap)
            trace.masks.append(_check_mask(mask, smap.shape, j))
            if stop is not None:  # i == 0: s_0 and its mask are kept; the erased image (a few ms
                # of inpainting) is dropped, so the erase step stays one call
                trace.stop_reason = stop
            elif erased is None:
                trace.stop_reason = "empty_mask"
            else:
                current[j] = _check_erased(erased, current[j].shape, j)
                trace.keep(erased)
                still_active.append(j)
        active, i = still_active, i + 1
    return [trace.result(fovs[j], config.combination, params) for j, trace in enumerate(traces)]


def _stop_reason(prediction, i, config):
    """Why the loop ends at I_i, or None while it goes on."""
    if config.stops(prediction):
        return "not_referable" if i == 0 else "normal"
    return "max_iterations" if i == config.max_iterations else None


def _check_mask(mask, shape, index):
    mask = np.asarray(mask)
    if mask.dtype != bool or mask.shape != shape:
        raise ValueError(f"Expected erase to return a bool mask of shape {shape}. "
                         f"Received: mask.shape={mask.shape}, mask.dtype={mask.dtype} "
                         f"for images[{index}]")
    return mask


def _check_erased(image, shape, index):
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.shape != shape:
        raise ValueError(f"Expected erase to return a uint8 image of shape {shape} or None. "
                         f"Received: {type(image).__name__} "
                         f"{getattr(image, 'shape', '')} for images[{index}]")
    return image


class _Trace:
    """What the loop records for one image; :meth:`result` turns it into a RefineResult."""

    def __init__(self, image, keep_images):
        self.maps, self.masks, self.predictions = [], [], []
        self.images = [image] if keep_images else None
        self.stop_reason = None

    def keep(self, image):
        if self.images is not None:
            self.images.append(image)  # erase returns a new array: no copy needed

    def result(self, fov, combination, params):
        maps, masks = np.stack(self.maps), np.stack(self.masks)
        return RefineResult(
            maps=maps, masks=masks, predictions=np.asarray(self.predictions, dtype=np.float32),
            images=None if self.images is None else np.stack(self.images),
            final_map=combination.final_map(maps, masks, fov), stop_reason=self.stop_reason,
            iterations=len(self.predictions) - 1, params=dict(params))


class _Calls:
    """Calls to ``explain`` / ``predict`` with their outputs checked, and the prediction reuse."""

    def __init__(self, explain, predict, fovs, config):
        self.explain_fn = explain
        self.predict_fn = predict
        self.fovs = fovs
        self.config = config
        self.explain_predicts = None  # known after the first explain call

    def look(self, current, active, want):
        """Predictions on the active images and the maps ``want`` asks for.

        Args:
            current: list of the images I_i, by image index.
            active: the indices of the images still in the loop.
            want: "all" (every map: s_0), "referable" (the maps of images that do not stop the
                loop) or "none".

        Returns:
            (maps, predictions), per active image in ``active`` order; a map is None where it
            was not computed.
        """
        if want == "all" or (want == "referable" and self.explain_predicts):
            # One forward+backward gives both where explain predicts; the caller discards the
            # maps of images that turn out non-referable.
            maps, predictions = self._explain(current, active)
            if predictions is None:
                predictions = self._predict(current, active)
            return maps, predictions
        predictions = self._predict(current, active)
        maps = [None] * len(active)
        if want == "referable":
            referable = [m for m, p in enumerate(predictions) if not self.config.stops(p)]
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
        pair = isinstance(out, tuple) and len(out) == 2
        if self.explain_predicts is None:
            self.explain_predicts = pair
        if pair:
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
        if self.predict_fn is None:
            if not self.explain_predicts:
                raise TypeError("Expected a predict callable: explain returned maps only (no "
                                "predictions). Received: predict=None")
            return self._explain(current, indices)[1]  # a map computed and dropped
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


def _check_batch(images, fov_masks):
    """Images as a list of (H, W, 3) arrays (not copied), FOVs as one (N, H, W) bool array."""
    if isinstance(images, np.ndarray) and images.ndim != 4:
        raise ValueError(f"Expected images of shape (N, H, W, 3) or a list of (H, W, 3) images. "
                         f"Received: images.shape={images.shape}")
    images = list(images)
    if fov_masks is not None:
        fov_masks = list(fov_masks)
        if len(fov_masks) != len(images):
            raise ValueError(f"Expected one FOV mask per image ({len(images)}). "
                             f"Received: {len(fov_masks)} fov_masks")
    for j, image in enumerate(images):
        check_image(image, f"images[{j}]", index=j)
        if image.shape != images[0].shape:
            raise ImageError(f"Expected every image of a batch to have the shape of images[0], "
                             f"{images[0].shape}. Received: images[{j}].shape={image.shape}", j)
    # The loop replaces images[j] by new arrays and never writes into them: no copy needed.
    shape = images[0].shape[:2] if images else (0, 0)
    fovs = np.stack([check_fov(fov, shape, f"fov_masks[{j}]", index=j)
                     for j, fov in enumerate(fov_masks or [None] * len(images))]) \
        if images else np.zeros((0, *shape), dtype=bool)
    return images, fovs
