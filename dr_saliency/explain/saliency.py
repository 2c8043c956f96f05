"""Saliency maps: guided back-propagation and the other explainers the refinement loop can use.

González-Gonzalo et al. (MIDL 2018) explain the grader's prediction with guided back-propagation
(Springenberg et al., *Striving for simplicity: the all convolutional net*, ICLR 2015 workshop):
the derivative of the output with respect to the input pixels, where every ReLU passes back only
positive gradient, and only where its input was positive::

    grad_in = grad_out * (grad_out > 0) * (x > 0)

and keep its *negative* gradients: the pixels that would lower the predicted stage if changed.
Their journal version (IEEE TMI 2020) shows the refinement works with any visual attribution, so
this module offers, in one interface:

- :func:`guided_backprop` (Springenberg et al. 2015), the paper's method;
- :func:`vanilla_gradient` (Simonyan, Vedaldi & Zisserman, *Deep inside convolutional networks*,
  ICLR 2014 workshop, arXiv 2013): the plain input gradient;
- :func:`integrated_gradients` (Sundararajan, Taly & Yan, *Axiomatic attribution for deep
  networks*, ICML 2017);
- :func:`grad_cam` (Selvaraju et al., *Grad-CAM*, ICCV 2017);
- :func:`to_saliency`: signed gradients -> non-negative ``(N, H, W)`` maps;
- :func:`make_explainer` / :func:`make_predictor`: the callables the refinement loop takes
  (``uint8`` RGB images in, maps and predictions out).

**How guided back-propagation leaves the caller's model alone.** The guided rule runs on a clone
built with ``keras.models.clone_model``, whose ``clone_function`` wraps every layer of the
original in a thin :class:`_SharedLayer`. The wrapper *calls the original layer object*, so the
clone computes with the original's own variables (no copies: ``set_weights`` on the original shows
in the next guided call, and no memory is spent on a second set of weights), and for a layer whose
last operation is a ReLU it passes the result through an identity whose gradient keeps only the
positive part (:func:`_positive_gradient_gate`). Backwards, the layer's own ReLU then multiplies by
``(x > 0)``, so the composite is exactly the guided rule above, while the forward pass is
bit-for-bit the model's. Nothing of the original is modified, not even transiently: no activation
is swapped (so another thread using the model never sees a guided ReLU, and no
``try/finally`` restore is needed), and because the wrapper answers Keras' symbolic shape
inference itself, the original layers are not even called symbolically while the clone is built
(calling a Keras layer on symbolic tensors appends to its node list). Nested Functional and
Sequential models are cloned recursively; a ReLU buried inside a custom layer cannot be reached
and is reported as an error rather than silently left plain.

**Tracing.** Each method's gradient function is a ``tf.function`` with a ``None`` batch dimension
in its input signature, traced once per model (and target) and cached in a
``weakref.WeakKeyDictionary`` keyed by the model; the guided clone is built *before* tracing, so
the traced graph always holds the guided gates.

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

import numbers
import threading
import weakref

import numpy as np

from dr_saliency.core._tf import keras, tf
from dr_saliency.grader.model import preprocess_input

from dr_saliency.explain.options import (  # noqa: F401  (re-exported: part of this API)
    DEFAULT_BATCH_SIZE, DEFAULT_GRADCAM_LAYER, DEFAULT_IG_BATCH_SIZE, DEFAULT_IG_STEPS,
    DEFAULT_METHOD, DEFAULT_REDUCE, DEFAULT_SIGN, DEFAULT_TARGET, METHODS, REDUCTIONS, SIGNS,
    TARGETS)

# --------------------------------------------------------------------------------------------
# The guided clone
# --------------------------------------------------------------------------------------------

# The plain ReLU callables Keras layers can hold as their `activation`. All of them compute
# max(x, 0) and back-propagate grad * (output > 0), which the gate below relies on.
_RELU_FUNCTIONS = (keras.activations.relu, keras.ops.relu, tf.nn.relu)

# Layers whose `activation` is the last operation of their call, so that a gate on the layer's
# output sits right after the ReLU. (An RNN's activation, for example, is applied inside its
# loop; gating its output would not make its ReLUs guided.)
_ACTIVATION_LAST_LAYERS = tuple(
    getattr(keras.layers, name) for name in (
        "Dense", "EinsumDense", "Activation",
        "Conv1D", "Conv2D", "Conv3D", "Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose",
        "SeparableConv1D", "SeparableConv2D", "DepthwiseConv1D", "DepthwiseConv2D",
    ) if hasattr(keras.layers, name)
)


def _is_plain_relu(fn):
    return any(fn is relu for relu in _RELU_FUNCTIONS)


def _ends_with_relu(layer):
    """Whether ``layer``'s output is a plain ReLU of its pre-activation (max(z, 0))."""
    if isinstance(layer, keras.layers.ReLU):
        # ReLU(max_value=6), leaky or thresholded variants have other gradients; leave them plain.
        return (layer.max_value is None and float(layer.negative_slope) == 0.0
                and float(layer.threshold) == 0.0)
    return isinstance(layer, _ACTIVATION_LAST_LAYERS) and _is_plain_relu(
        getattr(layer, "activation", None))


def _has_unreachable_relu(layer):
    """Whether a (custom) layer hides ReLU layers or ReLU activations inside itself."""
    flatten = getattr(layer, "_flatten_layers", None)
    inner = list(flatten(include_self=False, recursive=True)) if flatten else []
    inner.append(layer)
    return any(_ends_with_relu(sub) or _is_plain_relu(getattr(sub, "activation", None))
               for sub in inner)


@tf.custom_gradient
def _positive_gradient_gate(y):
    """Identity forward; backward passes only the positive part of the incoming gradient.

    Placed on the output ``y = relu(z)`` of a layer: the layer's own ReLU gradient then multiplies
    by ``(z > 0)`` (TensorFlow's ReluGrad tests ``y > 0``, which is the same), so the composite is
    Springenberg's guided rule ``grad * (grad > 0) * (z > 0)``. Keeping the original ReLU (instead
    of replacing it by a custom one) is what lets the clone reuse the original layer unchanged.
    """
    def grad(dy):
        return tf.nn.relu(dy)  # dy * (dy > 0)

    return tf.identity(y), grad


class _SharedLayer(keras.layers.Layer):
    """Calls an existing layer (with its own variables) and optionally gates its gradient.

    Used only inside the guided clone. It never calls the wrapped layer on symbolic tensors:
    shape inference is answered by the wrapped layer's ``compute_output_spec``, so building the
    clone leaves the original layer's node lists untouched.
    """

    def __init__(self, layer, guided):
        super().__init__(name=layer.name, trainable=layer.trainable, dtype=layer.dtype_policy,
                         autocast=False)
        self.wrapped = layer
        self.guided = bool(guided)
        self.built = True  # the wrapped layer is built; there is nothing of our own to create

    def call(self, *args, training=None, **kwargs):
        # Dropout / BatchNorm must see the inference flag the clone is called with.
        if getattr(self.wrapped, "_call_has_training_arg", False):
            kwargs["training"] = training
        outputs = self.wrapped(*args, **kwargs)
        return _positive_gradient_gate(outputs) if self.guided else outputs

    def compute_output_spec(self, *args, training=None, **kwargs):
        return self.wrapped.compute_output_spec(*args, **kwargs)


def _check_single_io(model):
    if not isinstance(model, keras.Model):
        raise TypeError(f"Expected a keras.Model. Received: model={type(model).__name__}")
    try:
        inputs, outputs = model.inputs, model.outputs
    except (AttributeError, ValueError):
        inputs = outputs = None
    if not inputs or not outputs:
        raise ValueError(
            "Expected a built Functional or Sequential model with a defined input. "
            f"Received: model={model.name!r} (no symbolic inputs/outputs; build it on "
            "keras.Input first)"
        )
    if len(inputs) != 1 or len(outputs) != 1:
        raise ValueError(
            "Expected a model with a single input and a single output. "
            f"Received: model={model.name!r} with {len(inputs)} inputs and {len(outputs)} outputs"
        )
    units = outputs[0].shape[1:]
    if any(d is None for d in units) or int(np.prod(units, dtype=np.int64)) != 1:
        raise ValueError(
            "Expected a model with one output value per example (shape (N,) or (N, 1)), "
            "e.g. the DR-stage regression. Received: "
            f"model={model.name!r} with output shape {tuple(outputs[0].shape)}"
        )
    if not np.dtype(inputs[0].dtype).kind == "f":
        raise ValueError(
            "Expected a model with a floating-point input (gradients with respect to integers "
            f"do not exist). Received: model={model.name!r} with input dtype {inputs[0].dtype}"
        )


def _guided_clone(model):
    """The model's guided clone (see the module docstring); raises when it has no ReLU."""
    n_gated = [0]

    def clone_function(layer):
        guided = _ends_with_relu(layer)
        if not guided and _has_unreachable_relu(layer):
            raise ValueError(
                "guided back-propagation cannot reach the ReLUs inside layer "
                f"{layer.name!r} ({type(layer).__name__}); only ReLU activations of Keras "
                "layers (and layers nested in Functional/Sequential models) can be guided. "
                f"Received: model={model.name}"
            )
        n_gated[0] += guided
        return _SharedLayer(layer, guided)

    try:
        clone = keras.models.clone_model(model, clone_function=clone_function, recursive=True)
    except ValueError as exc:
        if "guided back-propagation" in str(exc):
            raise
        raise ValueError(
            "Expected a Functional or Sequential Keras model (guided back-propagation clones "
            f"it layer by layer). Received: model={model.name!r} "
            f"({type(model).__name__}: {exc})"
        ) from exc
    if not n_gated[0]:
        raise ValueError(
            "guided back-propagation needs ReLU activations; the model has none. "
            f"Received: model={model.name}"
        )
    return clone


# --------------------------------------------------------------------------------------------
# Traced functions, cached per model
# --------------------------------------------------------------------------------------------

_CACHE = weakref.WeakKeyDictionary()  # model -> {key: traced function or guided clone}
_CACHE_LOCK = threading.RLock()


def _cached(model, key, factory):
    """Get-or-create ``factory()`` for ``(model, key)``; created once even with several threads."""
    with _CACHE_LOCK:
        per_model = _CACHE.setdefault(model, {})
        if key not in per_model:
            per_model[key] = factory()
        return per_model[key]


def _input_spec(model, dtype=tf.float32):
    # A None batch dimension: one trace serves every batch size (N=1 in refine, N=4 in bench).
    return tf.TensorSpec((None,) + tuple(model.inputs[0].shape[1:]), dtype)


def _flat_output(y):
    return tf.reshape(tf.cast(y, tf.float32), [-1])


def _gradient_function(model, method, target):
    """Traced ``x -> (d target / d x, outputs (N,))`` for ``method`` "guided" or "vanilla"."""

    def factory():
        # The cache must not keep the model alive (it is keyed weakly by it): the guided clone
        # holds only the layers, and the plain model is reached through a weak reference, which
        # is only followed while tracing (the traced graph captures the variables themselves).
        if method == "guided":
            # One clone per model serves both targets.
            net = _cached(model, ("guided_clone",), lambda: _guided_clone(model))
        else:
            net = weakref.proxy(model)
        sign = 1.0 if target == "output" else -1.0

        @tf.function(input_signature=[_input_spec(model)], reduce_retracing=True)
        def gradient(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = _flat_output(net(x, training=False))
                # Summing over the batch gives per-example gradients: at inference the examples
                # do not interact (dropout off, batch norm uses its moving statistics).
                objective = tf.reduce_sum(sign * y)
            return tape.gradient(objective, x), y

        return gradient

    return _cached(model, (method, target), factory)


def _gradcam_function(model, layer_name, target):
    """Traced ``x -> (signed CAM (N, H, W, 1), outputs (N,))`` at ``layer_name``."""

    def factory():
        layer = model.get_layer(layer_name)
        # A second Functional view over the existing graph: the same layers and variables, and
        # no new nodes on them.
        features = keras.Model(model.inputs, [layer.output, model.outputs[0]])
        sign = 1.0 if target == "output" else -1.0

        @tf.function(input_signature=[_input_spec(model)], reduce_retracing=True)
        def cam(x):
            with tf.GradientTape() as tape:
                a, y = features(x, training=False)
                y = _flat_output(y)
                objective = tf.reduce_sum(sign * y)
            a = tf.cast(a, tf.float32)
            da = tf.cast(tape.gradient(objective, a), tf.float32)
            # Selvaraju et al., eq. 1-2: channel weights are the spatially averaged gradients;
            # the map is the weighted sum of the feature maps. The ReLU of eq. 2 is left to
            # to_saliency's sign ("positive" = Grad-CAM; "negative" = its counterfactual map).
            alpha = tf.reduce_mean(da, axis=[1, 2], keepdims=True)
            m = tf.reduce_sum(alpha * a, axis=-1, keepdims=True)
            m = tf.image.resize(m, tf.shape(x)[1:3], method="bilinear")
            return m, y

        return cam

    return _cached(model, ("gradcam", layer_name, target), factory)


# --------------------------------------------------------------------------------------------
# Argument checks
# --------------------------------------------------------------------------------------------

def _check_choice(name, value, choices):
    if not isinstance(value, str) or value not in choices:
        raise ValueError(
            f"Expected {name} to be one of {', '.join(repr(c) for c in choices)}. "
            f"Received: {name}={value!r}"
        )


def _check_positive_int(name, value):
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
        raise ValueError(f"Expected {name} to be an int >= 1. Received: {name}={value!r}")
    return int(value)


def _check_model_inputs(model, inputs):
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


def _finish(grads, outputs, return_outputs):
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
    _check_single_io(model)
    _check_choice("target", target, TARGETS)
    x = _check_model_inputs(model, inputs)
    grads, outputs = _gradient_function(model, "guided", target)(x)
    return _finish(grads, outputs, return_outputs)


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
    _check_single_io(model)
    _check_choice("target", target, TARGETS)
    x = _check_model_inputs(model, inputs)
    grads, outputs = _gradient_function(model, "vanilla", target)(x)
    return _finish(grads, outputs, return_outputs)


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
    _check_single_io(model)
    _check_choice("target", target, TARGETS)
    _check_positive_int("steps", steps)
    _check_positive_int("internal_batch_size", internal_batch_size)
    x = _check_model_inputs(model, inputs).numpy()
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


def grad_cam(model, inputs, *, layer=None, target=DEFAULT_TARGET, return_outputs=False):
    """Grad-CAM (Selvaraju et al., 2017) of a single-output model, signed, at input resolution.

    ``M = sum_k alpha_k A^k`` with ``alpha_k`` the spatial mean of ``d target / d A^k`` over the
    feature maps ``A`` of ``layer``, bilinearly resized to the input's height and width. The ReLU
    of the paper's eq. 2 is *not* applied here, so that :func:`to_saliency`'s ``sign`` decides:
    ``"positive"`` is Selvaraju's Grad-CAM (what raises the target), ``"negative"`` their
    counterfactual map (what lowers it). For a regression output these are the regions that raise
    or lower the predicted stage; ``target="negated"`` swaps the two (the map is linear in the
    target).

    Args:
        model: ``keras.Model`` with one image input ``(N, H, W, C)`` and one output value per
            example.
        inputs: ``(N, H, W, C)`` float array of the model's input shape.
        layer: name of a layer with a 4-D output ``(N, h, w, K)``. ``None``: ``"block5_conv3"``
            (the VGG-16 grader's last convolution, 14x14 at 512 px) when the model has it, else
            the last layer with a 4-D output.
        target: ``"output"`` or ``"negated"``.
        return_outputs: also return the outputs ``(N,)`` float32 of the same forward pass.

    Returns:
        ``(N, H, W, 1)`` float32 signed class activation map (one channel, so it goes through
        :func:`to_saliency` like a gradient), and the outputs with ``return_outputs``.

    Raises:
        TypeError, ValueError: as :func:`vanilla_gradient`; for a model whose input is not 4-D,
            an unknown layer, or a layer whose output is not 4-D.
    """
    _check_single_io(model)
    _check_choice("target", target, TARGETS)
    layer = _gradcam_layer(model, layer)
    x = _check_model_inputs(model, inputs)
    cam, outputs = _gradcam_function(model, layer, target)(x)
    return _finish(cam, outputs, return_outputs)


def _gradcam_layer(model, layer):
    if len(model.inputs[0].shape) != 4:
        raise ValueError(
            "Expected a model with an image input (N, H, W, C) for Grad-CAM. "
            f"Received: model={model.name!r} with input shape {tuple(model.inputs[0].shape)}"
        )
    names = [lay.name for lay in model.layers]
    if layer is None:
        if DEFAULT_GRADCAM_LAYER in names:
            return DEFAULT_GRADCAM_LAYER
        four_d = [lay.name for lay in model.layers[1:]
                  if len(getattr(lay.output, "shape", ())) == 4]
        if not four_d:
            raise ValueError(
                "Expected a model with a layer with a 4-D output (N, h, w, K) for Grad-CAM. "
                f"Received: model={model.name!r}"
            )
        return four_d[-1]
    if not isinstance(layer, str) or layer not in names:
        raise ValueError(
            f"Expected layer to name a layer of model {model.name!r}. Received: layer={layer!r}"
        )
    if len(model.get_layer(layer).output.shape) != 4:
        raise ValueError(
            "Expected a layer with a 4-D output (N, h, w, K) for Grad-CAM. Received: "
            f"layer={layer!r} with output shape {tuple(model.get_layer(layer).output.shape)}"
        )
    return layer


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
    _check_choice("sign", sign, SIGNS)
    _check_choice("reduce", reduce, REDUCTIONS)
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


def _check_fov(fov_masks, shape):
    if fov_masks is None:
        return None
    fov = np.asarray(fov_masks)
    if fov.dtype != np.bool_:
        raise TypeError(
            f"Expected fov_masks as a bool array. Received: fov_masks dtype={fov.dtype}"
        )
    if fov.shape == shape[1:3]:
        fov = np.broadcast_to(fov, shape[:3])
    if fov.shape != shape[:3]:
        raise ValueError(
            f"Expected fov_masks of shape {shape[:3]} (or {shape[1:3]} for all images). "
            f"Received: fov_masks shape={fov.shape}"
        )
    return fov




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
        fov = _check_fov(fov_masks, images.shape)
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
    _check_single_io(model)
    _check_image_model(model)
    _check_choice("method", method, METHODS)
    _check_choice("sign", sign, SIGNS)
    _check_choice("reduce", reduce, REDUCTIONS)
    _check_choice("target", target, TARGETS)
    batch_size = _check_positive_int("batch_size", batch_size)
    unknown = sorted(set(method_options) - set(_METHOD_OPTIONS[method]))
    if unknown:
        allowed = ", ".join(_METHOD_OPTIONS[method]) or "none"
        raise TypeError(
            f"Unexpected option(s) for method={method!r} (it takes: {allowed}). "
            f"Received: {', '.join(f'{k}={method_options[k]!r}' for k in unknown)}"
        )
    if method == "gradcam":
        method_options["layer"] = _gradcam_layer(model, method_options.get("layer"))
    for name in ("steps", "internal_batch_size"):
        if name in method_options:
            _check_positive_int(name, method_options[name])
    if method == "guided":
        # Build the (weight-free) guided clone now, so that a model without ReLUs fails here,
        # before a run starts, rather than on its first image.
        _cached(model, ("guided_clone",), lambda: _guided_clone(model))
    return Explainer(model, method, sign, reduce, target, batch_size, method_options)


def _predict_function(model):
    def factory():
        net = weakref.proxy(model)  # see _gradient_function

        @tf.function(input_signature=[_input_spec(model, tf.uint8)], reduce_retracing=True)
        def predict(images):
            return _flat_output(net(preprocess_input(images), training=False))

        return predict

    return _cached(model, ("predict",), factory)


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
    _check_single_io(model)
    batch_size = _check_positive_int("batch_size", batch_size)

    def predict(images):
        _check_images(images, model)
        fn = _predict_function(model)
        out = [fn(tf.convert_to_tensor(images[i:i + batch_size])).numpy()
               for i in range(0, images.shape[0], batch_size)]
        return np.concatenate(out).astype(np.float32, copy=False)

    return predict


__all__ = [
    "SIGNS", "REDUCTIONS", "TARGETS", "METHODS",
    "guided_backprop", "vanilla_gradient", "integrated_gradients", "grad_cam",
    "to_saliency", "make_explainer", "make_predictor", "Explainer",
]
