"""The refinement loop's callables: a saliency method wrapped for uint8 RGB images, and a predictor.

:func:`make_explainer` wraps one method (guided back-propagation, the paper's, or one of the
others) as ``explain(images, fov_masks=None) -> (maps, predictions)``::

    uint8 RGB images -> preprocess_input -> method -> gradient back in RGB channel order
        -> to_saliency(sign, reduce) -> 0 outside the field of view

with the predictions from the method's own forward pass. :func:`make_predictor` re-grades images
without a map. The methods are in :mod:`dr_saliency.explain.gradients` (where the meaningful
pairs of ``sign`` and ``target`` are discussed) and :mod:`dr_saliency.explain.gradcam`.
"""

import weakref

import numpy as np

from dr_saliency.core._tf import tf
from dr_saliency.core.checks import check_fov
from dr_saliency.explain.gradcam import grad_cam, gradcam_layer
from dr_saliency.explain.gradients import (
    check_choice, check_positive_int, guided_backprop, integrated_gradients, to_saliency,
    vanilla_gradient)
from dr_saliency.explain.options import (
    DEFAULT_BATCH_SIZE, DEFAULT_METHOD, DEFAULT_REDUCE, DEFAULT_SIGN, DEFAULT_TARGET, METHODS,
    REDUCTIONS, SIGNS, TARGETS)
from dr_saliency.explain.surgery import (
    cached, check_single_io, flat_output, guided_clone, input_spec)
from dr_saliency.grader.model import preprocess_input

# --------------------------------------------------------------------------------------------
# The refinement loop's callables
# --------------------------------------------------------------------------------------------

_METHOD_OPTIONS = {
    "guided": (),
    "vanilla": (),
    "integrated": ("steps", "baseline", "internal_batch_size"),
    "gradcam": ("layer",),
}


def _check_image_model(model):
    expected = tuple(model.inputs[0].shape[1:])
    if len(expected) != 3 or expected[2] != 3:
        raise ValueError(
            "Expected a model taking (N, H, W, 3) images. "
            f"Received: model={model.name!r} with input shape {tuple(model.inputs[0].shape)}"
        )
    return expected


def _check_images(images, model):
    shape = tuple(getattr(images, "shape", ()))
    dtype = getattr(images, "dtype", type(images).__name__)
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 \
            or shape[-1] != 3 or shape[0] == 0:
        raise ValueError(
            "Expected (N, H, W, 3) uint8 RGB images, N >= 1. "
            f"Received: shape={shape}, dtype={dtype}"
        )
    expected = _check_image_model(model)
    if any(e is not None and e != s for e, s in zip(expected[:2], shape[1:3])):
        raise ValueError(
            f"Expected images of the model's input size {expected[0]}x{expected[1]}; resize them "
            f"first (dr_saliency.fundus.prepare). Received: shape={shape}"
        )


class Explainer:
    """``explain(images, fov_masks=None) -> (maps, predictions)``; build with :func:`make_explainer`.

    Attributes:
        model: the ``keras.Model`` explained (never modified).
        method, sign, reduce, target, batch_size: as given to :func:`make_explainer`.
        options: dict, the method's options.
    """

    def __init__(self, model, method, sign, reduce, target, batch_size, options):
        self.model = model
        self.method = method
        self.sign = sign
        self.reduce = reduce
        self.target = target
        self.batch_size = batch_size
        self.options = dict(options)
        if method == "integrated":
            # Sundararajan et al. use a black image as the baseline for images: black in uint8
            # RGB space, preprocessed like the images (zeros of the preprocessed space would be
            # the ImageNet mean colour).
            rgb = np.asarray(self.options.pop("baseline", 0), np.float32)
            if rgb.ndim == 0:
                rgb = np.full(3, rgb, np.float32)
            self.options["baseline"] = preprocess_input(rgb)

    def __repr__(self):
        return (f"Explainer(model={self.model.name!r}, method={self.method!r}, sign={self.sign!r}, "
                f"reduce={self.reduce!r}, target={self.target!r}, options={self.options!r})")

    def _attribute(self, x):
        """Model-input attributions (BGR gradients or a 1-channel CAM) and predictions."""
        kwargs = dict(target=self.target, return_outputs=True)
        if self.method == "guided":
            return guided_backprop(self.model, x, **kwargs)
        if self.method == "vanilla":
            return vanilla_gradient(self.model, x, **kwargs)
        if self.method == "integrated":
            return integrated_gradients(self.model, x, **self.options, **kwargs)
        return grad_cam(self.model, x, **self.options, **kwargs)

    def attribute(self, images):
        """The method's attributions in RGB channel order, before :func:`to_saliency`.

        Args:
            images: ``(N, H, W, 3)`` uint8 RGB at the model's input size.

        Returns:
            ``(attributions, predictions)``: ``(N, H, W, 3)`` float32 (``(N, H, W, 1)`` for
            Grad-CAM), channel 0 = R; ``(N,)`` float32 model outputs on ``images``.

        Raises:
            ValueError: for images that are not ``(N, H, W, 3)`` uint8 at the model's size.
        """
        _check_images(images, self.model)
        attributions, predictions = [], []
        for start in range(0, images.shape[0], self.batch_size):
            # preprocess_input makes the input BGR and mean-subtracted; the gradient with respect
            # to the RGB pixels is the BGR gradient with its channel order reversed back (the
            # mean subtraction has unit derivative).
            x = preprocess_input(images[start:start + self.batch_size])
            a, y = self._attribute(x)
            attributions.append(a[..., ::-1] if a.shape[-1] == 3 else a)
            predictions.append(y)
        return (np.ascontiguousarray(np.concatenate(attributions)),
                np.concatenate(predictions).astype(np.float32, copy=False))

    def __call__(self, images, fov_masks=None):
        """Explain the model's predictions on ``images``.

        Args:
            images: ``(N, H, W, 3)`` uint8 RGB at the model's input size.
            fov_masks: ``(N, H, W)`` (or ``(H, W)``, shared) bool field-of-view masks, or None.

        Returns:
            ``(maps, predictions)``: ``(N, H, W)`` float32 saliency >= 0, 0 outside the field of
            view; ``(N,)`` float32 model outputs on ``images`` (from the same forward pass for
            every method).

        Raises:
            ValueError: for images that are not ``(N, H, W, 3)`` uint8 or not of the model's
                input size, masks of another shape, or non-finite gradients.
            TypeError: for non-bool masks.
        """
        _check_images(images, self.model)
        fov = None
        if fov_masks is not None:
            # One (H, W) mask may serve every image: check the mask against the shape it was
            # given in, then broadcast it to the batch.
            shape = images.shape[1:3] if np.ndim(fov_masks) == 2 else images.shape[:3]
            fov = np.broadcast_to(check_fov(fov_masks, shape, "fov_masks"), images.shape[:3])
        attributions, predictions = self.attribute(images)
        maps = to_saliency(attributions, self.sign, self.reduce)
        if fov is not None:
            maps[~fov] = 0.0
        return maps, predictions


def make_explainer(model, method=DEFAULT_METHOD, sign=DEFAULT_SIGN, reduce=DEFAULT_REDUCE,
                   target=DEFAULT_TARGET, *, batch_size=DEFAULT_BATCH_SIZE, **method_options):
    """The refinement loop's explainer: uint8 RGB images -> saliency maps and predictions.

    ``images -> preprocess_input -> method -> gradient mapped back to RGB channel order ->
    to_saliency(sign, reduce) -> 0 outside the field of view``. The predictions come from the
    method's own forward pass on the images (guided, vanilla, Grad-CAM: the pass that gives the
    gradient; integrated gradients: the path's end point, which is the image), so a refinement
    iteration needs no separate ``predict``.

    Args:
        model: the grader, a ``keras.Model`` taking ``(N, H, W, 3)`` preprocessed images and
            giving one value per image (see :func:`guided_backprop` for what it must have).
        method: ``"guided"`` (:func:`guided_backprop`, the paper's), ``"vanilla"``
            (:func:`vanilla_gradient`), ``"integrated"`` (:func:`integrated_gradients`, black
            baseline) or ``"gradcam"`` (:func:`grad_cam`).
        sign: ``"negative"`` | ``"positive"`` | ``"abs"``, see :func:`to_saliency`.
        reduce: ``"max"`` | ``"sum"`` | ``"l2"``, see :func:`to_saliency`.
        target: ``"output"`` | ``"negated"``, see the module docstring for the meaningful pairs.
        batch_size: int >= 1, images per pass.
        **method_options: ``integrated``: ``steps`` (int, default 32), ``baseline`` (uint8-range
            RGB value: a number, an RGB triple or an ``(H, W, 3)`` image; default 0, black),
            ``internal_batch_size`` (int, default 8); ``gradcam``: ``layer`` (str, default
            ``"block5_conv3"``). The other methods take none.

    Returns:
        :class:`Explainer`, called as ``explain(images_uint8_rgb, fov_masks=None)``.

    Raises:
        TypeError: for a non-model or options the method does not take.
        ValueError: for an unknown method, sign, reduce or target, a bad batch size, or a model
            with several inputs or outputs.
    """
    check_single_io(model)
    _check_image_model(model)
    check_choice("method", method, METHODS)
    check_choice("sign", sign, SIGNS)
    check_choice("reduce", reduce, REDUCTIONS)
    check_choice("target", target, TARGETS)
    batch_size = check_positive_int("batch_size", batch_size)
    unknown = sorted(set(method_options) - set(_METHOD_OPTIONS[method]))
    if unknown:
        allowed = ", ".join(_METHOD_OPTIONS[method]) or "none"
        raise TypeError(
            f"Unexpected option(s) for method={method!r} (it takes: {allowed}). "
            f"Received: {', '.join(f'{k}={method_options[k]!r}' for k in unknown)}"
        )
    if method == "gradcam":
        method_options["layer"] = gradcam_layer(model, method_options.get("layer"))
    for name in ("steps", "internal_batch_size"):
        if name in method_options:
            check_positive_int(name, method_options[name])
    if method == "guided":
        # Build the (weight-free) guided clone now, so that a model without ReLUs fails here,
        # before a run starts, rather than on its first image.
        cached(model, ("guided_clone",), lambda: guided_clone(model))
    return Explainer(model, method, sign, reduce, target, batch_size, method_options)


def _predict_function(model):
    def factory():
        net = weakref.proxy(model)  # see _gradient_function

        @tf.function(input_signature=[input_spec(model, tf.uint8)], reduce_retracing=True)
        def predict(images):
            return flat_output(net(preprocess_input(images), training=False))

        return predict

    return cached(model, ("predict",), factory)


def make_predictor(model, *, batch_size=DEFAULT_BATCH_SIZE):
    """A traced ``predict(images_uint8_rgb) -> (N,) float32`` for the refinement loop.

    Preprocessing (:func:`dr_saliency.grader.model.preprocess_input`) runs inside the traced graph. The
    explainers already return predictions; this is for re-grading without a saliency map.

    Args:
        model: ``keras.Model`` taking ``(N, H, W, 3)`` preprocessed images, one output value per
            image.
        batch_size: int >= 1, images per pass.

    Returns:
        callable ``predict(images)``: ``(N, H, W, 3)`` uint8 RGB at the model's input size ->
        ``(N,)`` float32 (raises ValueError for other images).

    Raises:
        TypeError, ValueError: for a non-model, several inputs or outputs, or a bad batch size.
    """
    check_single_io(model)
    batch_size = check_positive_int("batch_size", batch_size)

    def predict(images):
        _check_images(images, model)
        fn = _predict_function(model)
        out = [fn(tf.convert_to_tensor(images[i:i + batch_size])).numpy()
               for i in range(0, images.shape[0], batch_size)]
        return np.concatenate(out).astype(np.float32, copy=False)

    return predict


__all__ = ["Explainer", "make_explainer", "make_predictor"]
