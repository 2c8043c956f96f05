"""Grad-CAM (Selvaraju et al., *Grad-CAM*, ICCV 2017): signed class activation maps of a model.

The map of a single-output model, made at the input's resolution, has one channel and keeps its
sign, so that :func:`dr_saliency.explain.gradients.to_saliency` reads it like a gradient: its
``sign`` decides between Grad-CAM (``"positive"``) and the counterfactual map (``"negative"``). The
map is linear in the target, so ``target="negated"`` only flips its sign.
"""

from dr_saliency.core._tf import keras, tf
from dr_saliency.explain.gradients import check_choice, check_model_inputs, finish
from dr_saliency.explain.options import DEFAULT_GRADCAM_LAYER, DEFAULT_TARGET, TARGETS
from dr_saliency.explain.surgery import cached, check_single_io, flat_output, input_spec


def _gradcam_function(model, layer_name, target):
    """Traced ``x -> (signed CAM (N, H, W, 1), outputs (N,))`` at ``layer_name``."""

    def factory():
        layer = model.get_layer(layer_name)
        # A second Functional view over the existing graph: the same layers and variables, and
        # no new nodes on them.
        features = keras.Model(model.inputs, [layer.output, model.outputs[0]])
        sign = 1.0 if target == "output" else -1.0

        @tf.function(input_signature=[input_spec(model)], reduce_retracing=True)
        def cam(x):
            with tf.GradientTape() as tape:
                a, y = features(x, training=False)
                y = flat_output(y)
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

    return cached(model, ("gradcam", layer_name, target), factory)


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
    check_single_io(model)
    check_choice("target", target, TARGETS)
    layer = gradcam_layer(model, layer)
    x = check_model_inputs(model, inputs)
    cam, outputs = _gradcam_function(model, layer, target)(x)
    return finish(cam, outputs, return_outputs)


def gradcam_layer(model, layer):
    """The name of the layer Grad-CAM uses for ``layer`` (None: the default); checks the model."""
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



__all__ = ["grad_cam"]
