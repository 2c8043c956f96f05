"""Tests of dr_saliency.explain (surgery, gradients, gradcam, explainer): guided back-propagation,
the other methods, maps, the refinement loop's explainer.

The expected attributions are worked out by hand on tiny models with hand-set weights (as captum's
tests do), with ReLUs chosen so that the guided rule (Springenberg et al. 2015),
``grad * (grad > 0) * (x > 0)``, differs from the plain gradient (``grad * (x > 0)``) and from the
"deconvnet" rule (``grad * (grad > 0)``).
"""

import io
import contextlib

import numpy as np
import pytest

from dr_saliency.explain import explainer, gradcam, gradients, surgery
from dr_saliency.core._tf import keras, tf
from dr_saliency.grader.model import build_model, preprocess_input

F32 = np.float32


# ----------------------------------------------------------------------------- tiny models

def dense_model():
    """Flatten(2x2x1) -> Dense(3, relu) -> Dense(1), weights set by hand.

    With x = [1, -1, 2, 0.5] (flattened) and the columns A, B, C of the hidden kernel:
      z_A = 0.5 + 0.5 + 0.5 + 0.5 =  2.0 > 0, output weight  2 (> 0): every rule passes A;
      z_B = 1 - 0.5 + 1 - 1      =  0.5 > 0, output weight -1 (< 0): plain passes, guided blocks;
      z_C = -1 - 1 + 0.5 + 1     = -0.5 < 0, output weight  3 (> 0): deconvnet passes, guided
                                                                     blocks.
    y = 2 * 2 - 1 * 0.5 + 3 * 0 + 0.5 = 4.
    """
    inp = keras.Input((2, 2, 1), name="x")
    h = keras.layers.Flatten(name="flatten")(inp)
    h = keras.layers.Dense(3, activation="relu", name="hidden")(h)
    out = keras.layers.Dense(1, name="out")(h)
    model = keras.Model(inp, out, name="dense_net")
    model.get_layer("hidden").set_weights([
        np.array([[0.5, 1.0, -1.0],
                  [-0.5, 0.5, 1.0],
                  [0.25, 0.5, 0.25],
                  [1.0, -2.0, 2.0]], F32),
        np.zeros(3, F32),
    ])
    model.get_layer("out").set_weights([np.array([[2.0], [-1.0], [3.0]], F32),
                                        np.array([0.5], F32)])
    return model


DENSE_X = np.array([1.0, -1.0, 2.0, 0.5], F32).reshape(1, 2, 2, 1)
# Guided: only unit A, 2 * column A.
DENSE_GUIDED = np.array([1.0, -1.0, 0.5, 2.0], F32)
# Plain gradient: 2 * A - 1 * B. Deconvnet: 2 * A + 3 * C.
DENSE_PLAIN = np.array([0.0, -1.5, 0.0, 4.0], F32)
DENSE_DECONV = np.array([-2.0, 2.0, 1.25, 8.0], F32)
# Guided gradient of -y: the hidden gradient is -w = [-2, 1, -3]; only B (positive, z_B > 0)
# passes: 1 * column B. Not -DENSE_GUIDED = [-1, 1, -0.5, -2].
DENSE_NEGATED = np.array([1.0, 0.5, 0.5, -2.0], F32)


def conv_model():
    """3x3x1 -> Conv2D(1, 2x2 identity-diagonal kernel, valid, relu) -> Flatten -> Dense(1).

    With x = [[1, 2, 0], [-1, 1, 1], [0, -2, 1]], z(i, j) = x[i, j] + x[i+1, j+1]:
    z = [[2, 3], [-3, 2]]; output weights w = [1, -1, 2, 0.5] (row-major), y = 2 - 3 + 0 + 1 = 0.
    Position (0,1): z > 0, w < 0 (plain passes, guided blocks); (1,0): z < 0, w > 0 (deconvnet
    passes, guided blocks).
    """
    inp = keras.Input((3, 3, 1))
    h = keras.layers.Conv2D(1, 2, padding="valid", activation="relu", name="conv")(inp)
    h = keras.layers.Flatten()(h)
    out = keras.layers.Dense(1, name="out")(h)
    model = keras.Model(inp, out, name="conv_net")
    model.get_layer("conv").set_weights([np.array([[1.0, 0.0], [0.0, 1.0]], F32).reshape(2, 2, 1, 1),
                                         np.zeros(1, F32)])
    model.get_layer("out").set_weights([np.array([[1.0], [-1.0], [2.0], [0.5]], F32),
                                        np.zeros(1, F32)])
    return model


CONV_X = np.array([[1, 2, 0], [-1, 1, 1], [0, -2, 1]], F32).reshape(1, 3, 3, 1)
# 1 * kernel at (0,0) + 0.5 * kernel at (1,1).
CONV_GUIDED = np.array([[1, 0, 0], [0, 1.5, 0], [0, 0, 0.5]], F32)
# Plain adds -1 * kernel at (0,1); deconvnet adds 2 * kernel at (1,0).
CONV_PLAIN = np.array([[1, -1, 0], [0, 1.5, -1], [0, 0, 0.5]], F32)
CONV_DECONV = np.array([[1, 0, 0], [2, 1.5, 0], [0, 2, 0.5]], F32)


def plain_gradient(model, x):
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = model(x, training=False)
    return tape.gradient(y, x).numpy()


def tiny_vgg(seed=0):
    """The paper's VGG-16 layout at 128 px and 1/16 width, with a random (non-zero) output layer."""
    keras.utils.set_random_seed(seed)
    model = build_model((128, 128, 3), weights=None, width=1 / 16, dropout=0.5)
    out = model.get_layer("dr_stage")
    rng = np.random.default_rng(seed)
    out.set_weights([rng.standard_normal(out.kernel.shape).astype(F32) * 0.05, np.zeros(1, F32)])
    return model


# ----------------------------------------------------------------------------- guided values

def test_guided_backprop_dense_hand_computed():
    model = dense_model()
    grads, outputs = gradients.guided_backprop(model, DENSE_X, return_outputs=True)
    assert grads.shape == (1, 2, 2, 1) and grads.dtype == np.float32
    np.testing.assert_allclose(grads.ravel(), DENSE_GUIDED, atol=1e-6)
    np.testing.assert_allclose(outputs, [4.0], atol=1e-6)
    assert outputs.shape == (1,) and outputs.dtype == np.float32
    # It is neither the plain gradient nor the deconvnet rule.
    np.testing.assert_allclose(plain_gradient(model, DENSE_X).ravel(), DENSE_PLAIN, atol=1e-6)
    assert not np.allclose(grads.ravel(), DENSE_PLAIN)
    assert not np.allclose(grads.ravel(), DENSE_DECONV)
    np.testing.assert_allclose(gradients.vanilla_gradient(model, DENSE_X).ravel(), DENSE_PLAIN,
                               atol=1e-6)


def test_guided_backprop_negated_target_is_not_the_negated_gradient():
    model = dense_model()
    grads = gradients.guided_backprop(model, DENSE_X, target="negated")
    np.testing.assert_allclose(grads.ravel(), DENSE_NEGATED, atol=1e-6)
    assert not np.allclose(grads.ravel(), -DENSE_GUIDED)
    # Vanilla gradient is linear in the target: "negated" only flips the sign.
    np.testing.assert_allclose(gradients.vanilla_gradient(model, DENSE_X, target="negated").ravel(),
                               -DENSE_PLAIN, atol=1e-6)


def test_guided_backprop_conv_hand_computed():
    model = conv_model()
    grads, outputs = gradients.guided_backprop(model, CONV_X, return_outputs=True)
    np.testing.assert_allclose(grads[0, :, :, 0], CONV_GUIDED, atol=1e-6)
    np.testing.assert_allclose(outputs, [0.0], atol=1e-6)
    np.testing.assert_allclose(plain_gradient(model, CONV_X)[0, :, :, 0], CONV_PLAIN, atol=1e-6)
    assert not np.allclose(grads[0, :, :, 0], CONV_DECONV)


def test_guided_backprop_is_batched_per_example():
    model = conv_model()
    x = np.concatenate([CONV_X, -CONV_X, 2 * CONV_X])
    grads, outputs = gradients.guided_backprop(model, x, return_outputs=True)
    assert grads.shape == (3, 3, 3, 1) and outputs.shape == (3,)
    for i in range(3):
        np.testing.assert_allclose(grads[i], gradients.guided_backprop(model, x[i:i + 1])[0],
                                   atol=1e-6)
    np.testing.assert_allclose(grads[2], grads[0], atol=1e-6)  # ReLU nets: scale-invariant gates
    np.testing.assert_allclose(outputs, model(x).numpy().ravel(), atol=1e-6)


@pytest.mark.parametrize("relu", ["layer", "activation_layer", "tf_nn"])
def test_guided_backprop_finds_standalone_relu_layers_and_sequential(relu):
    make = {
        "layer": lambda: keras.layers.ReLU(),
        "activation_layer": lambda: keras.layers.Activation("relu"),
        "tf_nn": lambda: keras.layers.Activation(tf.nn.relu),
    }[relu]
    model = keras.Sequential([keras.Input((2, 2, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(3, name="hidden"), make(),
                              keras.layers.Dense(1, name="out")])
    reference = dense_model()
    for name in ("hidden", "out"):
        model.get_layer(name).set_weights(reference.get_layer(name).get_weights())
    np.testing.assert_allclose(gradients.guided_backprop(model, DENSE_X).ravel(), DENSE_GUIDED,
                               atol=1e-6)


def test_guided_backprop_reaches_relus_in_nested_models():
    reference = dense_model()
    inner = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="relu",
                                                                    name="hidden")], name="inner")
    inner.get_layer("hidden").set_weights(reference.get_layer("hidden").get_weights())
    inp = keras.Input((2, 2, 1))
    out = keras.layers.Dense(1, name="out")(inner(keras.layers.Flatten()(inp)))
    model = keras.Model(inp, out)
    model.get_layer("out").set_weights(reference.get_layer("out").get_weights())
    np.testing.assert_allclose(gradients.guided_backprop(model, DENSE_X).ravel(), DENSE_GUIDED,
                               atol=1e-6)


def test_guided_clone_keeps_inference_behaviour_of_dropout_batchnorm_and_merges():
    keras.utils.set_random_seed(3)
    inp = keras.Input((6, 6, 2))
    a = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inp)
    b = keras.layers.BatchNormalization()(keras.layers.Conv2D(4, 1)(inp))
    h = keras.layers.ReLU()(keras.layers.Add()([a, b]))
    h = keras.layers.Dropout(0.9)(keras.layers.Flatten()(h))
    model = keras.Model(inp, keras.layers.Dense(1)(h))
    bn = next(layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization))
    bn.set_weights([np.full(4, 2.0, F32), np.full(4, 0.5, F32), np.full(4, 0.1, F32),
                    np.full(4, 4.0, F32)])  # moving statistics that training mode would ignore
    x = np.random.default_rng(4).standard_normal((3, 6, 6, 2)).astype(F32)
    _, outputs = gradients.guided_backprop(model, x, return_outputs=True)
    np.testing.assert_allclose(outputs, model(x, training=False).numpy().ravel(), rtol=1e-5,
                               atol=1e-6)


# ----------------------------------------------------------------------------- caller's model

def _summary(model):
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        model.summary()
    return buffer.getvalue()


def test_callers_model_is_untouched():
    model = dense_model()
    weights = [w.copy() for w in model.get_weights()]
    config, summary = model.get_config(), _summary(model)
    nodes = {layer.name: len(layer._inbound_nodes) for layer in model.layers}
    x = np.random.default_rng(0).standard_normal((5, 2, 2, 1)).astype(F32)
    before_y, before_g = model(x).numpy(), plain_gradient(model, x)

    gradients.guided_backprop(model, x)
    gradients.guided_backprop(model, x, target="negated")

    assert all(np.array_equal(a, b) for a, b in zip(weights, model.get_weights()))
    assert model.get_layer("hidden").activation is keras.activations.relu
    assert model.get_config() == config and _summary(model) == summary
    # Not even Keras' node bookkeeping grows: the clone never calls the original layers
    # symbolically.
    assert {layer.name: len(layer._inbound_nodes) for layer in model.layers} == nodes
    np.testing.assert_array_equal(model(x).numpy(), before_y)
    np.testing.assert_array_equal(plain_gradient(model, x), before_g)
    # ... and a function traced on the original afterwards still has plain ReLUs.
    np.testing.assert_allclose(plain_gradient(model, DENSE_X).ravel(), DENSE_PLAIN, atol=1e-6)


def test_clone_shares_the_original_variables():
    model = dense_model()
    np.testing.assert_allclose(gradients.guided_backprop(model, DENSE_X).ravel(), DENSE_GUIDED,
                               atol=1e-6)
    # Flip the sign of unit A's output weight and B's: now B passes, A is blocked.
    model.get_layer("out").set_weights([np.array([[-2.0], [1.0], [3.0]], F32),
                                        np.array([0.5], F32)])
    grads, outputs = gradients.guided_backprop(model, DENSE_X, return_outputs=True)
    np.testing.assert_allclose(grads.ravel(), [1.0, 0.5, 0.5, -2.0], atol=1e-6)  # 1 * column B
    np.testing.assert_allclose(outputs, [-2 * 2 + 1 * 0.5 + 0.5], atol=1e-6)
    # No second set of weights: the guided function captured the original variables.
    traced = surgery._CACHE[model][("guided", "output")].get_concrete_function()
    handles = {id(v) for v in traced.variables}
    assert {id(v.value) for v in model.weights} <= handles


def test_guided_function_is_traced_once_for_all_batch_sizes():
    model = conv_model()
    for n in (1, 1, 3, 2):
        gradients.guided_backprop(model, np.repeat(CONV_X, n, axis=0))
    fn = surgery._CACHE[model][("guided", "output")]
    assert fn.experimental_get_tracing_count() == 1


def test_cache_does_not_keep_the_model_alive():
    import gc
    import weakref

    model = conv_model()
    gradients.guided_backprop(model, CONV_X)
    gradients.vanilla_gradient(model, CONV_X)
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None


# ----------------------------------------------------------------------------- errors

def test_model_without_relu_is_rejected():
    inp = keras.Input((2, 2, 1))
    out = keras.layers.Dense(1)(keras.layers.Dense(3, activation="tanh")(keras.layers.Flatten()(inp)))
    model = keras.Model(inp, out, name="tanh_net")
    with pytest.raises(ValueError, match="needs ReLU activations; the model has none. "
                                         "Received: model=tanh_net"):
        gradients.guided_backprop(model, DENSE_X)
    # The plain gradient needs no ReLU.
    assert gradients.vanilla_gradient(model, DENSE_X).shape == DENSE_X.shape
    # The explainer checks when it is made, not on its first image.
    inp = keras.Input((4, 4, 3))
    linear = keras.Model(inp, keras.layers.Dense(1)(keras.layers.Flatten()(inp)), name="linear")
    with pytest.raises(ValueError, match="Received: model=linear"):
        explainer.make_explainer(linear)
    assert explainer.make_explainer(linear, "vanilla").method == "vanilla"
    with pytest.raises(ValueError, match=r"Expected a model taking \(N, H, W, 3\) images"):
        explainer.make_explainer(model, "vanilla")


def test_several_inputs_or_outputs_are_rejected():
    a, b = keras.Input((4,)), keras.Input((4,))
    h = keras.layers.Dense(2, activation="relu")(keras.layers.Concatenate()([a, b]))
    two_in = keras.Model([a, b], keras.layers.Dense(1)(h), name="two_in")
    with pytest.raises(ValueError, match="single input and a single output.*2 inputs and 1 outputs"):
        gradients.guided_backprop(two_in, np.zeros((1, 4), F32))
    x = keras.Input((4,))
    h = keras.layers.Dense(2, activation="relu")(x)
    two_out = keras.Model(x, [keras.layers.Dense(1)(h), keras.layers.Dense(1)(h)])
    with pytest.raises(ValueError, match="1 inputs and 2 outputs"):
        gradients.guided_backprop(two_out, np.zeros((1, 4), F32))
    wide = keras.Model(x, keras.layers.Dense(3)(h), name="wide")
    with pytest.raises(ValueError, match=r"one output value per example.*\(None, 3\)"):
        gradients.guided_backprop(wide, np.zeros((1, 4), F32))


def test_bad_inputs_and_options_are_rejected():
    model = dense_model()
    with pytest.raises(ValueError, match=r"Expected inputs of shape \(N,\) \+ \(2, 2, 1\)"):
        gradients.guided_backprop(model, np.zeros((1, 3, 3, 1), F32))
    with pytest.raises(TypeError, match="floating-point inputs"):
        gradients.guided_backprop(model, np.zeros((1, 2, 2, 1), np.uint8))
    with pytest.raises(ValueError, match="Received: target='negative'"):
        gradients.guided_backprop(model, DENSE_X, target="negative")
    with pytest.raises(ValueError, match="Received: steps=0"):
        gradients.integrated_gradients(model, DENSE_X, steps=0)


def test_relu_inside_a_custom_layer_is_reported():
    class Block(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.dense = keras.layers.Dense(3, activation="relu")

        def call(self, x):
            return self.dense(x)

    inp = keras.Input((4,))
    model = keras.Model(inp, keras.layers.Dense(1)(Block(name="block")(inp)))
    with pytest.raises(ValueError, match="cannot reach the ReLUs inside layer 'block'"):
        gradients.guided_backprop(model, np.ones((1, 4), F32))


# ----------------------------------------------------------------------------- to_saliency

G = np.array([[[1.0, -2.0, 0.5], [-1.0, -1.0, 0.0]],
              [[0.0, 3.0, -4.0], [2.0, 2.0, 1.0]]], F32)  # (H=2, W=2, C=3)


@pytest.mark.parametrize("sign,reduce,expected", [
    ("negative", "max", [[2.0, 1.0], [4.0, 0.0]]),
    ("negative", "sum", [[2.0, 2.0], [4.0, 0.0]]),
    ("negative", "l2", [[2.0, np.sqrt(2.0)], [4.0, 0.0]]),
    ("positive", "max", [[1.0, 0.0], [3.0, 2.0]]),
    ("positive", "sum", [[1.5, 0.0], [3.0, 5.0]]),
    ("positive", "l2", [[np.sqrt(1.25), 0.0], [3.0, 3.0]]),
    ("abs", "max", [[2.0, 1.0], [4.0, 2.0]]),
    ("abs", "sum", [[3.5, 2.0], [7.0, 5.0]]),
    ("abs", "l2", [[np.sqrt(5.25), np.sqrt(2.0)], [5.0, 3.0]]),
])
def test_to_saliency_exact_values(sign, reduce, expected):
    single = gradients.to_saliency(G, sign=sign, reduce=reduce)
    assert single.shape == (2, 2) and single.dtype == np.float32
    np.testing.assert_allclose(single, expected, rtol=1e-6)
    batch = gradients.to_saliency(np.stack([G, -G]).astype(np.float64), sign=sign, reduce=reduce)
    assert batch.shape == (2, 2, 2) and batch.dtype == np.float32
    np.testing.assert_allclose(batch[0], expected, rtol=1e-6)
    assert (batch >= 0).all()


def test_to_saliency_rejects_bad_input():
    with pytest.raises(ValueError, match=r"Received: grads shape=\(2, 2\)"):
        gradients.to_saliency(np.zeros((2, 2), F32))
    with pytest.raises(TypeError, match="Received: grads dtype=int64"):
        gradients.to_saliency(np.zeros((1, 2, 2, 3), np.int64))
    with pytest.raises(ValueError, match="Received: sign='neg'"):
        gradients.to_saliency(G, sign="neg")
    with pytest.raises(ValueError, match="Received: reduce='mean'"):
        gradients.to_saliency(G, reduce="mean")
    bad = G.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="1 of 12 values NaN or infinite"):
        gradients.to_saliency(bad)


# ----------------------------------------------------------------------------- other methods

def test_integrated_gradients_linear_model_is_exact():
    inp = keras.Input((2, 2, 1))
    out = keras.layers.Dense(1, name="out")(keras.layers.Flatten()(inp))
    model = keras.Model(inp, out)
    w = np.array([[1.0], [-2.0], [0.5], [3.0]], F32)
    model.get_layer("out").set_weights([w, np.array([7.0], F32)])
    baseline = np.full((2, 2, 1), 0.5, F32)
    attributions, outputs = gradients.integrated_gradients(model, DENSE_X, baseline=baseline,
                                                          steps=4, return_outputs=True)
    np.testing.assert_allclose(attributions.ravel(), (DENSE_X - baseline).ravel() * w.ravel(),
                               atol=1e-6)
    np.testing.assert_allclose(outputs, model(DENSE_X).numpy().ravel(), atol=1e-6)


def test_integrated_gradients_completeness():
    keras.utils.set_random_seed(1)
    inp = keras.Input((4, 4, 2))
    h = keras.layers.Conv2D(4, 3, activation="relu", padding="same")(inp)
    h = keras.layers.Dense(8, activation="relu")(keras.layers.Flatten()(h))
    model = keras.Model(inp, keras.layers.Dense(1)(h))
    x = np.random.default_rng(2).standard_normal((3, 4, 4, 2)).astype(F32)
    baseline = np.full((4, 4, 2), -0.25, F32)
    attributions, outputs = gradients.integrated_gradients(
        model, x, baseline=baseline, steps=256, internal_batch_size=37, return_outputs=True)
    f_x = model(x).numpy().ravel()
    f_base = model(baseline[None]).numpy().ravel()
    np.testing.assert_allclose(outputs, f_x, atol=1e-5)
    # Sum of attributions = f(x) - f(x') (Sundararajan et al.'s completeness), up to quadrature
    # error at the ReLU kinks.
    np.testing.assert_allclose(attributions.sum(axis=(1, 2, 3)), f_x - f_base,
                               atol=2e-3 * max(1.0, np.abs(f_x - f_base).max()))


def test_grad_cam_shape_sign_and_outputs_on_tiny_vgg():
    model = tiny_vgg()
    x = preprocess_input(np.random.default_rng(0).integers(0, 256, (2, 128, 128, 3), np.uint8))
    cam, outputs = gradcam.grad_cam(model, x, return_outputs=True)
    assert cam.shape == (2, 128, 128, 1) and cam.dtype == np.float32
    np.testing.assert_allclose(outputs, model(x).numpy().ravel(), rtol=1e-4, atol=1e-5)
    assert np.abs(cam).max() > 0
    # The map is linear in the target: "negated" flips the sign.
    np.testing.assert_allclose(gradcam.grad_cam(model, x, target="negated"), -cam,
                               rtol=1e-5, atol=1e-6)
    maps = gradients.to_saliency(cam, sign="positive")
    assert maps.shape == (2, 128, 128) and (maps >= 0).all()
    with pytest.raises(ValueError, match="Received: layer='fc1' with output shape"):
        gradcam.grad_cam(model, x, layer="fc1")


# ----------------------------------------------------------------------------- explainer

def r_only_model(size=8):
    """Sees only the red channel: a 1x1 conv on BGR index 2, relu, then the mean over pixels.

    The preprocessed red value is r - 123.68 < 0 for r < 123, so z = -(r - 123.68) > 0 and the
    gradient of y with respect to the preprocessed red is -1 / (size * size) per pixel.
    """
    inp = keras.Input((size, size, 3))
    h = keras.layers.Conv2D(1, 1, activation="relu", name="conv")(inp)
    out = keras.layers.Dense(1, name="out")(keras.layers.Flatten()(h))
    model = keras.Model(inp, out, name="r_only")
    model.get_layer("conv").set_weights([np.array([0.0, 0.0, -1.0], F32).reshape(1, 1, 3, 1),
                                         np.zeros(1, F32)])
    model.get_layer("out").set_weights([np.full((size * size, 1), 1.0 / (size * size), F32),
                                        np.zeros(1, F32)])
    return model


def test_explainer_maps_gradient_back_to_rgb_and_masks_fov():
    model = r_only_model()
    images = np.random.default_rng(0).integers(0, 100, (2, 8, 8, 3), np.uint8)
    explain = explainer.make_explainer(model)  # guided, negative, max
    rgb, predictions = explain.attribute(images)
    # In the model's BGR input the gradient is in channel 2; mapped back, it is R (channel 0).
    np.testing.assert_allclose(rgb[..., 0], -1.0 / 64, atol=1e-7)
    assert not rgb[..., 1:].any()
    fov = np.zeros((2, 8, 8), bool)
    fov[:, 2:6, 1:7] = True
    maps, predictions2 = explain(images, fov)
    assert maps.shape == (2, 8, 8) and maps.dtype == np.float32
    np.testing.assert_allclose(maps[fov], 1.0 / 64, rtol=1e-6)
    assert not maps[~fov].any()
    expected = model(preprocess_input(images)).numpy().ravel()
    np.testing.assert_allclose(predictions, expected, rtol=1e-6)
    np.testing.assert_array_equal(predictions2, predictions)
    assert predictions.shape == (2,) and predictions.dtype == np.float32
    # A shared (H, W) mask is applied to every image; no mask keeps the whole map.
    np.testing.assert_array_equal(explain(images, fov[0])[0], maps)
    assert (explain(images)[0] > 0).all()


@pytest.mark.parametrize("method,options", [
    ("guided", {}), ("vanilla", {}), ("integrated", {"steps": 8}), ("gradcam", {}),
])
def test_explainer_every_method_on_tiny_vgg(method, options):
    model = tiny_vgg()
    images = np.random.default_rng(1).integers(0, 256, (3, 128, 128, 3), np.uint8)
    explain = explainer.make_explainer(model, method, batch_size=2, **options)
    maps, predictions = explain(images)
    assert maps.shape == (3, 128, 128) and maps.dtype == np.float32 and (maps >= 0).all()
    assert maps.max() > 0
    expected = model(preprocess_input(images)).numpy().ravel()
    np.testing.assert_allclose(predictions, expected, rtol=1e-4, atol=1e-5)
    predict = explainer.make_predictor(model)
    np.testing.assert_allclose(predict(images), expected, rtol=1e-4, atol=1e-5)


def test_explainer_rejects_bad_images_and_options():
    model = r_only_model()
    explain = explainer.make_explainer(model)
    with pytest.raises(ValueError, match=r"Expected \(N, H, W, 3\) uint8 RGB images.*"
                                         r"Received: shape=\(1, 8, 8, 3\), dtype=float32"):
        explain(np.zeros((1, 8, 8, 3), F32))
    with pytest.raises(ValueError, match=r"Received: shape=\(8, 8, 3\), dtype=uint8"):
        explain(np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match=r"model's input size 8x8; resize them first.*"
                                         r"shape=\(1, 16, 16, 3\)"):
        explain(np.zeros((1, 16, 16, 3), np.uint8))
    with pytest.raises(TypeError, match="Received: fov_masks.dtype=uint8"):
        explain(np.zeros((1, 8, 8, 3), np.uint8), np.ones((1, 8, 8), np.uint8))
    with pytest.raises(ValueError,
                       match=r"shape \(1, 8, 8\). Received: fov_masks.shape=\(2, 8, 8\)"):
        explain(np.zeros((1, 8, 8, 3), np.uint8), np.ones((2, 8, 8), bool))
    # A shared mask is checked against (H, W).
    with pytest.raises(ValueError, match=r"shape \(8, 8\). Received: fov_masks.shape=\(4, 4\)"):
        explain(np.zeros((1, 8, 8, 3), np.uint8), np.ones((4, 4), bool))
    with pytest.raises(TypeError, match="Unexpected option.*method='guided'.*steps=3"):
        explainer.make_explainer(model, "guided", steps=3)
    with pytest.raises(ValueError, match="Received: method='smoothgrad'"):
        explainer.make_explainer(model, "smoothgrad")
    with pytest.raises(ValueError, match=r"Received: shape=\(1, 8, 8, 3\), dtype=int64"):
        explainer.make_predictor(model)(np.zeros((1, 8, 8, 3), np.int64))


def test_explainer_reports_nan_maps():
    model = r_only_model()
    model.get_layer("out").set_weights([np.full((64, 1), np.nan, F32), np.zeros(1, F32)])
    with pytest.raises(ValueError, match="Expected finite gradients"):
        explainer.make_explainer(model)(np.zeros((1, 8, 8, 3), np.uint8))


# ----------------------------------------------------------------------------- full size

@pytest.mark.slow
def test_full_vgg16_at_512_guided_matches_plain_forward_and_traces_once():
    model = build_model(weights=None)
    rng = np.random.default_rng(0)
    out = model.get_layer("dr_stage")
    out.set_weights([rng.standard_normal(out.kernel.shape).astype(F32) * 0.01, np.zeros(1, F32)])
    images = rng.integers(0, 256, (2, 512, 512, 3), np.uint8)
    x = preprocess_input(images)
    grads, outputs = gradients.guided_backprop(model, x, return_outputs=True)
    assert grads.shape == (2, 512, 512, 3) and np.isfinite(grads).all() and np.abs(grads).max() > 0
    np.testing.assert_allclose(outputs, model(x).numpy().ravel(), rtol=1e-4, atol=1e-5)
    gradients.guided_backprop(model, x[:1])
    assert surgery._CACHE[model][("guided", "output")].experimental_get_tracing_count() == 1
    maps, predictions = explainer.make_explainer(model)(images[:1])
    assert maps.shape == (1, 512, 512) and (maps >= 0).all()
    np.testing.assert_allclose(predictions, outputs[:1], rtol=1e-4, atol=1e-5)
