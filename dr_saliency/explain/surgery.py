"""Model surgery and traced-function plumbing shared by every explanation method.

Guided back-propagation (Springenberg et al., *Striving for simplicity: the all convolutional
net*, ICLR 2015 workshop) needs every ReLU of the model to pass back only positive gradient, and
only where its input was positive::

    grad_in = grad_out * (grad_out > 0) * (x > 0)

This module provides:

- :func:`guided_clone`: the weight-sharing clone of a model whose ReLUs are guided, on which
  guided back-propagation runs;
- :func:`cached`: traced functions (and the guided clone) built once per model, held without
  keeping the model alive;
- :func:`check_single_io`, :func:`input_spec`, :func:`flat_output`: the single-input,
  single-output models the methods explain, and the signature and output of their traced
  functions.

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
"""

import threading
import weakref

import numpy as np

from dr_saliency.core._tf import keras, tf

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


def check_single_io(model):
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


def guided_clone(model):
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


def cached(model, key, factory):
    """Get-or-create ``factory()`` for ``(model, key)``; created once even with several threads."""
    with _CACHE_LOCK:
        per_model = _CACHE.setdefault(model, {})
        if key not in per_model:
            per_model[key] = factory()
        return per_model[key]


def input_spec(model, dtype=tf.float32):
    # A None batch dimension: one trace serves every batch size (N=1 in refine, N=4 in bench).
    return tf.TensorSpec((None,) + tuple(model.inputs[0].shape[1:]), dtype)


def flat_output(y):
    """A model's output as a flat ``(N,)`` float32 tensor."""
    return tf.reshape(tf.cast(y, tf.float32), [-1])


__all__ = ["cached", "check_single_io", "flat_output", "guided_clone", "input_spec"]
