"""Gradient attributions of a single-output model, and the saliency maps made of them.

González-Gonzalo et al. (MIDL 2018) explain the grader's prediction with guided back-propagation
(Springenberg et al., *Striving for simplicity: the all convolutional net*, ICLR 2015 workshop):
the derivative of the output with respect to the input pixels, where every ReLU passes back only
positive gradient, and only where its input was positive::

    grad_in = grad_out * (grad_out > 0) * (x > 0)

and keep its *negative* gradients: the pixels that would lower the predicted stage if changed.
Their journal version (IEEE TMI 2020) shows the refinement works with any visual attribution, so
the explain wing offers, in one interface:

- :func:`guided_backprop` (Springenberg et al. 2015), the paper's method;
- :func:`vanilla_gradient` (Simonyan, Vedaldi & Zisserman, *Deep inside convolutional networks*,
  ICLR 2014 workshop, arXiv 2013): the plain input gradient;
- :func:`integrated_gradients` (Sundararajan, Taly & Yan, *Axiomatic attribution for deep
  networks*, ICML 2017);
- :func:`~dr_saliency.explain.gradcam.grad_cam` (Selvaraju et al., *Grad-CAM*, ICCV 2017), in
  :mod:`dr_saliency.explain.gradcam`;
- :func:`to_saliency`: signed gradients -> non-negative ``(N, H, W)`` maps;
- :func:`~dr_saliency.explain.explainer.make_explainer` /
  :func:`~dr_saliency.explain.explainer.make_predictor`, in :mod:`dr_saliency.explain.explainer`:
  the callables the refinement loop takes (``uint8`` RGB images in, maps and predictions out).

Guided back-propagation runs on a weight-sharing clone of the caller's model, which is never
modified; how the clone is built, and how each method's gradient function is traced once per model
and cached, is told in :mod:`dr_saliency.explain.surgery`.

**"Negative gradients".** The paper's words ("regions that would lead to a decrease in output if
modified") admit two readings, both available:

(a) ``target="output"`` then ``to_saliency(..., sign="negative")`` (the default): the negative
    part of the guided gradient of the output, ``max(-g, 0)``: pixels whose increase lowers the
    predicted stage, found along the paths that guided back-propagation lets through for the
    output itself.
(b) ``target="negated"`` then ``sign="positive"``: the guided gradient of ``-output``. Guided
    back-propagation is not linear in its target (the rule zeroes negative incoming gradients), so
    this is *not* ``-(guided gradient of the output)``: it follows the units that push the output
    down, and its positive part marks the pixels whose increase lowers the output through them.

Which combinations are meaningful: for guided back-propagation ``("output", "negative")`` (reading
a, the default), ``("negated", "positive")`` (reading b), ``("output", "positive")`` (classic guided
back-propagation: evidence *for* the grade) and ``("output", "abs")``. For the methods that are
linear in the target (vanilla gradient, integrated gradients, Grad-CAM's weighted sum) ``"negated"``
only flips the sign, so ``("negated", "positive")`` equals ``("output", "negative")``.
"""

import weakref

import numpy as np

from dr_saliency.core._tf import tf
from dr_saliency.core.checks import is_int
from dr_saliency.explain.options import (
    DEFAULT_IG_BATCH_SIZE, DEFAULT_IG_STEPS, DEFAULT_REDUCE, DEFAULT_SIGN, DEFAULT_TARGET,
    REDUCTIONS, SIGNS, TARGETS)
from dr_saliency.explain.surgery import (
    cached, check_single_io, flat_output, guided_clone, input_spec)

# --------------------------------------------------------------------------------------------
# Traced gradient function, cached per model
# --------------------------------------------------------------------------------------------

def _gradient_function(model, method, target):
    """Traced ``x -> (d target / d x, outputs (N,))`` for ``method`` "guided" or "vanilla"."""

    def factory():
        # The cache must not keep the model alive (it is keyed weakly by it): the guided clone
        # holds only the layers, and the plain model is reached through a weak reference, which
        # is only followed while tracing (the traced graph captures the variables themselves).
        if method == "guided":
            # One clone per model serves both targets.
            net = cached(model, ("guided_clone",), lambda: guided_clone(model))
        else:
            net = weakref.proxy(model)
        sign = 1.0 if target == "output" else -1.0

        @tf.function(input_signature=[input_spec(model)], reduce_retracing=True)
        def gradient(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = flat_output(net(x, training=False))
                # Summing over the batch gives per-example gradients: at inference the examples
                # do not interact (dropout off, batch norm uses its moving statistics).
                objective = tf.reduce_sum(sign * y)
            return tape.gradient(objective, x), y

        return gradient

    return cached(model, (method, target), factory)


# --------------------------------------------------------------------------------------------
# Argument checks (shared with dr_saliency.explain.gradcam and dr_saliency.explain.explainer)
# --------------------------------------------------------------------------------------------

def check_choice(name, value, choices):
    """Raise ValueError unless ``value`` is one of the strings ``choices``."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(
            f"Expected {name} to be one of {', '.join(repr(c) for c in choices)}. "
            f"Received: {name}={value!r}"
        )


def check_positive_int(name, value):
    """``value`` as an int; raise ValueError unless it is an integer (not a bool) >= 1."""
    if not is_int(value) or value < 1:
        raise ValueError(f"Expected {name} to be an int >= 1. Received: {name}={value!r}")
    return int(value)


def check_model_inputs(model, inputs):
    """``inputs`` as a float32 tensor of the model's input shape (any batch size >= 1)."""
    dtype = getattr(inputs, "dtype", None)
    if dtype is None:
        raise TypeError(
            "Expected inputs as a float32 numpy array or tensor (the model's preprocessed input). "
            f"Received: inputs={type(inputs).__name__}"
        )
    kind = np.dtype(dtype.as_numpy_dtype if isinstance(dtype, tf.DType) else dtype).kind
    if kind != "f":
        raise TypeError(
            "Expected floating-point inputs (the model's input, e.g. preprocess_input(images)). "
            f"Received: inputs dtype={dtype}"
        )
    expected = tuple(model.inputs[0].shape[1:])
    shape = tuple(inputs.shape)
    if (len(shape) != len(expected) + 1 or shape[0] == 0
            or any(e is not None and e != s for e, s in zip(expected, shape[1:]))):
        raise ValueError(
            f"Expected inputs of shape (N,) + {expected} for model {model.name!r}, N >= 1. "
            f"Received: inputs shape={shape}"
        )
    return tf.convert_to_tensor(inputs, dtype=tf.float32)


def finish(grads, outputs, return_outputs):
    """A traced function's tensors as float32 numpy arrays: the attributions (and outputs)."""
    grads = grads.numpy().astype(np.float32, copy=False)
    if return_outputs:
        return grads, outputs.numpy().astype(np.float32, copy=False)
    return grads


# --------------------------------------------------------------------------------------------
# Explainers on the model's input
# --------------------------------------------------------------------------------------------

def guided_backprop(model, inputs, *, target=DEFAULT_TARGET, return_outputs=False):
    """Guided back-propagation (Springenberg et al., 2015) of a single-output model.

    The derivative of the output with respect to the input, where every ReLU of the model passes
    back ``grad * (grad > 0) * (x > 0)``. It runs on a weight-sharing clone of ``model`` (see the
    module docstring): the caller's model, its predictions and its plain gradients are unchanged.
    The traced function is built on the first call and reused for every batch size.

    Args:
        model: a Functional or Sequential ``keras.Model`` with one input, one output value per
            example, and at least one plain ReLU as a Keras layer activation (``activation="relu"``)
            or as a ``ReLU`` / ``Activation("relu")`` layer.
        inputs: ``(N, ...)`` float array or tensor of the model's input shape, e.g.
            ``(N, 512, 512, 3)`` float32 from :func:`dr_saliency.grader.model.preprocess_input`.
        target: ``"output"`` differentiates the output; ``"negated"`` differentiates ``-output``
            (not the same as negating the result: see the module docstring).
        return_outputs: also return the model's outputs from the same forward pass (a guided
            ReLU is a ReLU going forward and dropout is off, so they are the predictions).

    Returns:
        ``(N, ...)`` float32 gradient, same shape as ``inputs``; with ``return_outputs``, the pair
        ``(gradient, outputs)`` where ``outputs`` is ``(N,)`` float32.

    Raises:
        TypeError: for a non-model or non-float inputs.
        ValueError: for several inputs or outputs, more than one output value per example, a
            model without ReLU activations, inputs of the wrong shape, or a bad ``target``.
    """
    check_single_io(model)
    check_choice("target", target, TARGETS)
    x = check_model_inputs(model, inputs)
    grads, outputs = _gradient_function(model, "guided", target)(x)
    return finish(grads, outputs, return_outputs)


def vanilla_gradient(model, inputs, *, target=DEFAULT_TARGET, return_outputs=False):
    """The plain input gradient (Simonyan, Vedaldi & Zisserman, 2013) of a single-output model.

    Args:
        model: ``keras.Model`` with one input and one output value per example.
        inputs: ``(N, ...)`` float array or tensor of the model's input shape.
        target: ``"output"`` or ``"negated"`` (the gradient of ``-output``, i.e. the negated
            gradient: the plain gradient is linear in its target).
        return_outputs: also return the outputs ``(N,)`` float32 of the same forward pass.

    Returns:
        ``(N, ...)`` float32 gradient (and the outputs with ``return_outputs``).

    Raises:
        TypeError, ValueError: as :func:`guided_backprop` (a model needs no ReLU here).
    """
    check_single_io(model)
    check_choice("target", target, TARGETS)
    x = check_model_inputs(model, inputs)
    grads, outputs = _gradient_function(model, "vanilla", target)(x)
    return finish(grads, outputs, return_outputs)


def integrated_gradients(model, inputs, *, baseline=None, steps=DEFAULT_IG_STEPS,
                         internal_batch_size=DEFAULT_IG_BATCH_SIZE, target=DEFAULT_TARGET,
                         return_outputs=False):
    """Integrated gradients (Sundararajan, Taly & Yan, 2017) along the straight path.

    ``IG(x) = (x - x') * integral_0^1 grad f(x' + a (x - x')) da``, the integral by the trapezoidal
    rule over ``steps`` intervals (``steps + 1`` gradient evaluations per example, second-order
    accurate; the paper's right Riemann sum is first order). Completeness: the attributions of an
    example sum to ``f(x) - f(x')`` up to the quadrature error. The path point at ``a = 1`` is the
    input itself, so the model's output on it comes from the same passes. Path points of all
    examples are evaluated ``internal_batch_size`` at a time, with one traced gradient function.

    Args:
        model: ``keras.Model`` with one input and one output value per example.
        inputs: ``(N, ...)`` float array of the model's input shape.
        baseline: the reference input ``x'`` in the model's input space, broadcastable to
            ``inputs``; ``None`` is all zeros. For the VGG-16 grader, a black image is
            ``preprocess_input(np.zeros(3))`` (what :func:`make_explainer` uses), since zeros in
            the preprocessed space are the ImageNet mean colour, not black.
        steps: int >= 1, intervals of the trapezoidal rule.
        internal_batch_size: int >= 1, path points per forward/backward pass (memory bound).
        target: ``"output"`` or ``"negated"`` (negates the attributions: IG is linear in f).
        return_outputs: also return ``f(inputs)``, ``(N,)`` float32.

    Returns:
        ``(N, ...)`` float32 attributions (and the outputs with ``return_outputs``).

    Raises:
        TypeError, ValueError: as :func:`vanilla_gradient`; for ``steps`` or
            ``internal_batch_size`` < 1 or a baseline that does not broadcast to ``inputs``.
    """
    check_single_io(model)
    check_choice("target", target, TARGETS)
    check_positive_int("steps", steps)
    check_positive_int("internal_batch_size", internal_batch_size)
    x = check_model_inputs(model, inputs).numpy()
    try:
        base = np.broadcast_to(np.asarray(0.0 if baseline is None else baseline, np.float32),
                               x.shape)
    except ValueError:
        raise ValueError(
            f"Expected a baseline broadcastable to the inputs' shape {x.shape}. "
            f"Received: baseline shape={np.shape(baseline)}"
        ) from None
    gradient = _gradient_function(model, "vanilla", target)

    alphas = np.linspace(0.0, 1.0, steps + 1, dtype=np.float32)
    weights = np.full(steps + 1, 1.0 / steps, dtype=np.float64)
    weights[[0, -1]] *= 0.5  # trapezoid end points
    n, k = x.shape[0], steps + 1
    total = np.zeros(x.shape, np.float64)  # accumulate in float64: many small terms
    outputs = np.zeros(n, np.float32)
    flat = np.arange(n * k)
    for start in range(0, n * k, internal_batch_size):
        idx = flat[start:start + internal_batch_size]
        ex, step = idx // k, idx % k
        a = alphas[step].reshape((-1,) + (1,) * (x.ndim - 1))
        points = base[ex] + a * (x[ex] - base[ex])
        g, y = gradient(tf.convert_to_tensor(points))
        g = g.numpy().astype(np.float64)
        np.add.at(total, ex, g * weights[step].reshape(a.shape))
        last = step == k - 1
        outputs[ex[last]] = y.numpy()[last]
    attributions = ((x - base) * total).astype(np.float32)
    if return_outputs:
        return attributions, outputs
    return attributions


# --------------------------------------------------------------------------------------------
# Gradients -> saliency maps
# --------------------------------------------------------------------------------------------

def to_saliency(grads, sign=DEFAULT_SIGN, reduce=DEFAULT_REDUCE):
    """Reduce signed per-channel gradients to a non-negative saliency map.

    Args:
        grads: ``(N, H, W, C)`` or ``(H, W, C)`` float array, e.g. from :func:`guided_backprop`
            (channel order as the caller wants the channels read: :func:`make_explainer` maps it
            back to RGB first).
        sign: which part of each gradient value is kept: ``"negative"``, ``max(-g, 0)``: pixels
            whose increase would lower the output (González-Gonzalo et al.'s "regions that would
            lead to a decrease in output if modified"); ``"positive"``, ``max(g, 0)``;
            ``"abs"``, ``|g|``.
        reduce: how the kept parts are combined over the channel axis: ``"max"``, ``"sum"``, or
            ``"l2"`` (Euclidean norm).

    Returns:
        ``(N, H, W)`` (or ``(H, W)`` for a single image) float32, >= 0, larger = more salient.

    Raises:
        TypeError: when ``grads`` is not a floating-point array.
        ValueError: for a wrong number of dimensions, an unknown ``sign`` or ``reduce``, or
            non-finite values (NaN/inf gradients mean a non-finite model output or weights).
    """
    check_choice("sign", sign, SIGNS)
    check_choice("reduce", reduce, REDUCTIONS)
    g = np.asarray(grads)
    if g.dtype.kind != "f":
        raise TypeError(f"Expected floating-point gradients. Received: grads dtype={g.dtype}")
    if g.ndim not in (3, 4) or 0 in g.shape:
        raise ValueError(
            "Expected gradients of shape (N, H, W, C) or (H, W, C), non-empty. "
            f"Received: grads shape={g.shape}"
        )
    finite = np.isfinite(g)
    if not finite.all():
        bad = int(g.size - np.count_nonzero(finite))
        raise ValueError(
            "Expected finite gradients; the model's output or weights are probably not finite. "
            f"Received: grads with {bad} of {g.size} values NaN or infinite"
        )
    g = g.astype(np.float32, copy=False)
    if sign == "negative":
        part = np.maximum(-g, 0.0)
    elif sign == "positive":
        part = np.maximum(g, 0.0)
    else:
        part = np.abs(g)
    if reduce == "max":
        out = part.max(axis=-1)
    elif reduce == "sum":
        out = part.sum(axis=-1)
    else:
        out = np.sqrt(np.square(part).sum(axis=-1))
    return out.astype(np.float32, copy=False)


__all__ = ["guided_backprop", "vanilla_gradient", "integrated_gradients", "to_saliency"]
