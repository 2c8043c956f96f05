"""Tests of dr_saliency.grader.model: geometry, weight loading, preprocessing, checkpoints."""

import os
import warnings

import h5py
import numpy as np
import pytest

from dr_saliency.grader import model as model_lib
from dr_saliency.core._tf import keras

TINY = dict(input_shape=(128, 128, 3), weights=None, width=1 / 16)


def write_vgg16_h5(path, input_size=512, seed=0):
    """Write a random-valued file in the layout of Keras' vgg16_weights_tf_dim_ordering_tf_kernels.h5.

    Root attribute ``layer_names``; a group per layer with attribute ``weight_names`` naming its
    datasets (``<layer>_W_1:0``, ``<layer>_b_1:0``, as the released file does); pooling and input
    layers listed with no weights; the 1000-way ``predictions`` layer included.
    """
    rng = np.random.default_rng(seed)
    shapes, c_in = {}, 3
    for name, filters in model_lib.VGG16_CONV_LAYERS:
        shapes[name] = [(3, 3, c_in, filters), (filters,)]
        c_in = filters
    side = 7 if input_size == 512 else model_lib.feature_size(input_size)
    shapes["fc1"] = [(side * side * 512, 4096), (4096,)]
    shapes["fc2"] = [(4096, 4096), (4096,)]
    shapes["predictions"] = [(4096, 1000), (1000,)]
    order = ["input_1"] + [n for n, _ in model_lib.VGG16_CONV_LAYERS] + ["block5_pool", "flatten",
                                                                          "fc1", "fc2", "predictions"]
    values = {}
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [n.encode() for n in order]
        f.attrs["backend"] = b"tensorflow"
        for name in order:
            group = f.create_group(name)
            weight_names = []
            for suffix, shape in zip(("W", "b"), shapes.get(name, [])):
                wname = f"{name}_{suffix}_1:0"
                data = rng.standard_normal(shape, dtype=np.float32) * 0.01
                group.create_dataset(wname, data=data)
                weight_names.append(wname.encode())
                values.setdefault(name, []).append(data)
            group.attrs["weight_names"] = weight_names
    return values


# ----------------------------------------------------------------------------- geometry

@pytest.mark.slow
def test_full_model_matches_paper_geometry_and_keras_names():
    net = model_lib.build_model(weights=None)
    assert net.count_params() == 134_264_641
    assert tuple(net.get_layer("block5_pool").output.shape[1:]) == (7, 7, 512)
    assert tuple(net.get_layer("flatten").output.shape[1:]) == (25088,)
    assert net.get_layer("block1_conv1").strides == (2, 2)
    assert net.get_layer("block5_conv1").padding == "valid"
    assert tuple(net.output.shape) == (None, 1)
    assert net.layers[-1].name == "dr_stage"
    reference = keras.applications.VGG16(weights=None, include_top=True)
    expected = [layer.name for layer in reference.layers[1:] if layer.name != "predictions"]
    ours = [layer.name for layer in net.layers[1:]
            if not layer.name.endswith("_dropout") and layer.name != "dr_stage"]
    assert ours == expected
    # Same kernel shapes as ImageNet's VGG-16 everywhere up to fc2 (that is why 512 was chosen).
    for name in expected:
        assert [w.shape for w in net.get_layer(name).weights] == \
            [w.shape for w in reference.get_layer(name).weights]


@pytest.mark.parametrize("size,side", [(128, 1), (256, 3), (384, 5), (512, 7), (544, 7), (576, 8)])
def test_feature_size_matches_built_model(size, side):
    assert model_lib.feature_size(size) == side
    if size <= 256:
        net = model_lib.build_model((size, size, 3), weights=None, width=1 / 16)
        assert net.get_layer("block5_pool").output.shape[1] == side


def test_width_scales_filters_and_units():
    net = model_lib.build_model(**TINY)
    assert net.get_layer("block1_conv1").filters == 4
    assert net.get_layer("block5_conv3").filters == 32
    assert net.get_layer("fc1").units == 256
    assert net.get_layer("fc1_dropout").rate == 0.5
    out = net(np.zeros((2, 128, 128, 3), np.float32))
    assert tuple(out.shape) == (2, 1)


@pytest.mark.parametrize("kwargs,match", [
    (dict(input_shape=(100, 128, 3)), r"at least 128 pixels.*Received: input_shape=\(100, 128, 3\)"),
    (dict(input_shape=(128, 128, 1)), r"3 input channels.*Received: input_shape=\(128, 128, 1\)"),
    (dict(input_shape=(128, 128)), r"\(height, width, 3\).*Received: input_shape=\(128, 128\)"),
    (dict(dropout=1.0), r"dropout in \[0, 1\).*Received: dropout=1.0"),
    (dict(dropout=-0.1), r"Received: dropout=-0.1"),
    (dict(width=0), r"width > 0.*Received: width=0"),
    (dict(weights="/no/such/vgg16.h5", width=1.0), r"no such file"),
    (dict(weights="imagenet", width=0.5), r"width=1.0.*Received: width=0.5"),
])
def test_build_model_rejects_bad_arguments(kwargs, match):
    args = dict(TINY)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        model_lib.build_model(**args)


def test_build_model_rejects_non_string_weights():
    with pytest.raises(TypeError, match=r"Received: weights=3"):
        model_lib.build_model((128, 128, 3), weights=3)


# ----------------------------------------------------------------------------- weights

@pytest.mark.slow
def test_local_vgg16_file_loads_all_layers_at_512(tmp_path):
    path = str(tmp_path / "vgg16_weights_tf_dim_ordering_tf_kernels.h5")
    values = write_vgg16_h5(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing stays random at 512: no warning
        net = model_lib.build_model(weights=path)
    for name in [n for n, _ in model_lib.VGG16_CONV_LAYERS] + ["fc1", "fc2"]:
        got = net.get_layer(name).get_weights()
        np.testing.assert_array_equal(got[0], values[name][0])
        np.testing.assert_array_equal(got[1], values[name][1])


@pytest.mark.slow
def test_local_vgg16_file_at_256_copies_only_convs_and_warns(tmp_path):
    path = str(tmp_path / "vgg16.h5")
    values = write_vgg16_h5(path)
    with pytest.warns(UserWarning, match=r"fc1, fc2.*ImageNet's fc1 needs 7x7"):
        net = model_lib.build_model((256, 256, 3), weights=path)
    np.testing.assert_array_equal(net.get_layer("block5_conv3").get_weights()[0],
                                  values["block5_conv3"][0])
    # fc2 fits by shape but is not copied without fc1.
    assert not np.array_equal(net.get_layer("fc2").get_weights()[0], values["fc2"][0])
    report = model_lib.load_vgg16_weights(net, path)
    assert report["skipped"] == ["fc1", "fc2"]
    assert len(report["loaded"]) == 13


def test_load_vgg16_weights_rejects_other_files(tmp_path):
    bad = tmp_path / "not_vgg.h5"
    with h5py.File(bad, "w") as f:
        f.create_dataset("x", data=np.zeros(3))
    net = model_lib.build_model(**TINY)
    with pytest.raises(ValueError, match=r"Keras VGG-16 HDF5 weights file.*Received: weights="):
        model_lib.load_vgg16_weights(net, str(bad))


def test_imagenet_download_failure_says_how_to_pass_a_local_file(monkeypatch):
    def offline(*args, **kwargs):
        raise Exception("URL fetch failure: no network")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    with pytest.raises(ValueError, match=r"pass its path instead.*--weights PATH.*URL fetch failure"):
        model_lib.imagenet_weights_path()


def test_imagenet_download_uses_keras_vgg16_file(monkeypatch, tmp_path):
    calls = {}

    def fake_get_file(fname, origin, **kwargs):
        calls.update(fname=fname, origin=origin, **kwargs)
        return str(tmp_path / fname)

    monkeypatch.setattr(keras.utils, "get_file", fake_get_file)
    path = model_lib.imagenet_weights_path()
    assert path.endswith("vgg16_weights_tf_dim_ordering_tf_kernels.h5")
    from keras.src.applications import vgg16 as keras_vgg16
    assert calls["origin"] == keras_vgg16.WEIGHTS_PATH
    assert calls["file_hash"] == "64373286793e3c8b2b4e3219cbf3544b"
    assert calls["cache_subdir"] == "models"


# ----------------------------------------------------------------------------- preprocessing

def test_preprocess_input_is_caffe_bgr_mean_subtraction():
    rgb = np.array([[[10, 20, 30]]], np.uint8)
    out = model_lib.preprocess_input(rgb)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0, 0], [30 - 103.939, 20 - 116.779, 10 - 123.68], rtol=1e-6)
    images = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    expected = keras.applications.vgg16.preprocess_input(images.astype(np.float32))
    np.testing.assert_allclose(model_lib.preprocess_input(images), expected, atol=1e-4)
    from dr_saliency.core._tf import tf
    np.testing.assert_allclose(model_lib.preprocess_input(tf.constant(images)).numpy(), expected,
                               atol=1e-4)


def test_preprocess_input_rejects_non_rgb():
    with pytest.raises(ValueError, match=r"3 channels.*Received: shape=\(4, 4, 4\)"):
        model_lib.preprocess_input(np.zeros((4, 4, 4), np.uint8))


# ----------------------------------------------------------------------------- checkpoints

def _compiled_tiny(seed):
    keras.utils.set_random_seed(seed)
    # No dropout, so that a training step is deterministic and two models can be compared.
    net = model_lib.build_model((128, 128, 3), weights=None, width=1 / 16, dropout=0.0)
    net.compile(optimizer=keras.optimizers.SGD(1e-3, momentum=0.9, nesterov=True),
                loss="mean_squared_error")
    return net


@pytest.mark.slow
def test_checkpoint_round_trip_keeps_weights_and_optimizer_state(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 128, 128, 3)).astype(np.float32)
    y = rng.uniform(0, 4, size=(4, 1)).astype(np.float32)
    net = _compiled_tiny(1)
    net.fit(x, y, batch_size=2, epochs=1, verbose=0)
    path = str(tmp_path / "ckpt" / "epoch.weights.h5")
    model_lib.save_checkpoint(net, path, epoch=3, metrics={"kappa": 0.5})
    assert not [p for p in os.listdir(tmp_path / "ckpt") if ".tmp" in p]

    other = _compiled_tiny(2)
    meta = model_lib.load_checkpoint(other, path)
    assert meta == {"epoch": 3, "metrics": {"kappa": 0.5}}
    np.testing.assert_allclose(other.predict(x, verbose=0), net.predict(x, verbose=0), rtol=1e-6)
    assert int(other.optimizer.iterations.numpy()) == int(net.optimizer.iterations.numpy()) == 2
    # Same variables in the same order (paths differ only by the optimizer's own name suffix).
    ours = [(v.path.split("/")[-1], v.numpy()) for v in net.optimizer.variables]
    theirs = [(v.path.split("/")[-1], v.numpy()) for v in other.optimizer.variables]
    assert [n for n, _ in ours] == [n for n, _ in theirs]
    momentum = [value for name, value in ours if "momentum" in name]
    assert momentum and any(np.abs(value).sum() > 0 for value in momentum)
    for (_, a), (_, b) in zip(ours, theirs):
        np.testing.assert_array_equal(b, a)
    # One more identical step from both gives identical weights: training continues exactly.
    net.train_on_batch(x[:2], y[:2])
    other.train_on_batch(x[:2], y[:2])
    for a, b in zip(net.get_weights(), other.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_checkpoint_errors(tmp_path):
    net = model_lib.build_model(**TINY)
    with pytest.raises(ValueError, match=r"ending in '.weights.h5'.*Received: path="):
        model_lib.save_checkpoint(net, str(tmp_path / "x.h5"))
    with pytest.raises(ValueError, match=r"existing checkpoint file.*Received: path="):
        model_lib.load_checkpoint(net, str(tmp_path / "missing.weights.h5"))
    path = str(tmp_path / "other.weights.h5")
    model_lib.save_checkpoint(model_lib.build_model((128, 128, 3), weights=None, width=1 / 8), path)
    with pytest.raises(ValueError, match=r"does not fit this model"):
        model_lib.load_checkpoint(net, path)


def test_export_model_loads_without_custom_objects(tmp_path):
    net = _compiled_tiny(3)
    path = str(tmp_path / "model.h5")
    model_lib.export_model(net, path)
    loaded = keras.models.load_model(path, compile=False)
    x = np.random.default_rng(1).normal(size=(2, 128, 128, 3)).astype(np.float32)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), net.predict(x, verbose=0), rtol=1e-6)
    assert [layer.name for layer in loaded.layers] == [layer.name for layer in net.layers]
    np.testing.assert_allclose(model_lib.load_model(path).predict(x, verbose=0),
                               net.predict(x, verbose=0), rtol=1e-6)


def test_export_and_load_model_errors(tmp_path):
    net = model_lib.build_model(**TINY)
    with pytest.raises(ValueError, match=r"ending in '.h5' \(not '.weights.h5'\)"):
        model_lib.export_model(net, str(tmp_path / "m.weights.h5"))
    with pytest.raises(ValueError, match=r"existing model file.*Received: path="):
        model_lib.load_model(str(tmp_path / "none.h5"))
    ckpt = str(tmp_path / "c.weights.h5")
    model_lib.save_checkpoint(net, ckpt)
    with pytest.raises(ValueError, match=r"not a weights-only checkpoint"):
        model_lib.load_model(ckpt)
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5 at all")
    with pytest.raises(ValueError, match=r"Could not load a Keras model.*Received: path="):
        model_lib.load_model(str(junk))


def test_half_export_stores_float16_and_predicts_like_the_original(tmp_path):
    net = model_lib.build_model(**TINY)
    rng = np.random.default_rng(4)
    # He-like random weights everywhere (the built output layer starts at zero).
    net.set_weights([rng.normal(0, (2 / max(1, np.prod(w.shape[:-1]))) ** 0.5, w.shape)
                     .astype(np.float32) for w in net.get_weights()])
    full, half = str(tmp_path / "full.h5"), str(tmp_path / "half.h5")
    model_lib.export_model(net, full)
    model_lib.export_model(net, half, half=True)
    def weights(path):
        found = {}
        with h5py.File(path, "r") as f:
            f["model_weights"].visititems(
                lambda name, obj: found.update({name: obj.dtype}) if isinstance(obj, h5py.Dataset)
                else None)
            return found, sum(f["model_weights"][n].nbytes for n in found)

    (full_dtypes, full_bytes), (half_dtypes, half_bytes) = weights(full), weights(half)
    assert set(full_dtypes.values()) == {np.dtype(np.float32)}
    assert set(half_dtypes.values()) == {np.dtype(np.float16)} and half_dtypes.keys() == full_dtypes.keys()
    assert half_bytes * 2 == full_bytes
    loaded = model_lib.load_model(half)
    assert all(w.dtype == "float32" for w in loaded.weights)
    x = np.random.default_rng(2).normal(0, 40, size=(3, 128, 128, 3)).astype(np.float32)
    expected = net.predict(x, verbose=0)
    got = loaded.predict(x, verbose=0)
    # float16 weights: relative error 2^-11 per weight.
    np.testing.assert_allclose(got, expected, rtol=5e-3, atol=5e-3 * np.abs(expected).max())
    assert not np.array_equal(got, expected)
    assert not [n for n in os.listdir(tmp_path) if "tmp" in n]


def test_load_model_refuses_files_that_are_not_graders(tmp_path):
    inputs = keras.Input((128, 128, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    two = str(tmp_path / "two.h5")
    keras.Model(inputs, keras.layers.Dense(2)(pooled)).save(two)
    with pytest.raises(ValueError, match=r"Expected a DR grader.*Received: path='.*two.h5' with "
                                         r"input shape \(None, 128, 128, 3\) and output shape "
                                         r"\(None, 2\)"):
        model_lib.load_model(two)
    small = str(tmp_path / "small.h5")
    tiny_in = keras.Input((64, 96, 3))
    keras.Model(tiny_in, keras.layers.Dense(1)(keras.layers.GlobalAveragePooling2D()(tiny_in))).save(small)
    with pytest.raises(ValueError, match=r"input shape \(None, 64, 96, 3\)"):
        model_lib.load_model(small)
    text = tmp_path / "notes.h5"
    text.write_text("a text file")
    with pytest.raises(ValueError, match=r"Could not load a Keras model.*Received: path="):
        model_lib.load_model(str(text))


def test_load_model_refuses_a_lambda_layer_without_running_it(tmp_path):
    flag = str(tmp_path / "ran")
    inputs = keras.Input((128, 128, 3))
    x = keras.layers.Lambda(lambda t: t * 2 + (open(flag, "w").close() or 0))(inputs)
    out = keras.layers.Dense(1)(keras.layers.GlobalAveragePooling2D()(x))
    path = str(tmp_path / "lambda.h5")
    keras.Model(inputs, out).save(path)
    if os.path.exists(flag):
        os.remove(flag)  # tracing the model while building it ran the lambda once
    with pytest.raises(ValueError, match=r"without Python code: it holds a Lambda layer, refused "
                                         r"without running it\. Received: path="):
        model_lib.load_model(path)
    assert not os.path.exists(flag)


def test_bundled_grader_is_found_and_loads():
    path = model_lib.bundled_model_path()
    assert os.path.basename(path) == model_lib.BUNDLED_MODEL
    net = model_lib.load_model(path)
    assert net.input_shape == (None, 512, 512, 3) and net.output_shape == (None, 1)
    # Small enough for the repository (data/README.md: at most ~20 MB).
    assert os.path.getsize(path) < 20 * 2 ** 20


def test_bundled_grader_missing_is_one_clear_line(monkeypatch):
    monkeypatch.setattr(model_lib.os.path, "isfile", lambda p: False)
    with pytest.raises(ValueError, match=r"Expected the bundled grader in the installation.*"
                                         r"Received: no file at .*bundled/grader.h5 or "
                                         r".*data/grader.h5"):
        model_lib.bundled_model_path()


def test_summarize_lists_every_layer():
    net = model_lib.build_model(**TINY)
    rows = model_lib.summarize(net)
    assert [r["name"] for r in rows] == [layer.name for layer in net.layers]
    assert sum(r["params"] for r in rows) == net.count_params()
    assert rows[-1] == {"name": "dr_stage", "type": "Dense", "output_shape": (1,), "params": 257}


def test_tensorflow_startup_notices_are_dropped_but_other_stderr_is_replayed(capsys):
    from dr_saliency.core import _tf
    captured = (
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
        "I0000 00:00:1796002105.784423    2286 port.cc:153] oneDNN custom operations are on.\n"
        "E0000 00:00:1796002105.9    2286 cuda_dnn.cc:8310] Unable to register cuDNN factory\n"
        "/x/y.py:3: UserWarning: something the user should see\n"
    )
    _tf._replay(captured, keep_all=False)
    assert capsys.readouterr().err == "/x/y.py:3: UserWarning: something the user should see\n"
    _tf._replay(captured, keep_all=True)
    assert capsys.readouterr().err == captured


def test_precisions_agree_with_the_light_config_module():
    from dr_saliency.grader import config
    assert config.PRECISIONS == model_lib.PRECISIONS


def test_cast_model_sets_policies_keeps_weights_and_the_output_in_float32():
    net = model_lib.build_model(**TINY)
    rng = np.random.default_rng(5)
    net.set_weights([rng.normal(0, 0.05, w.shape).astype(np.float32) for w in net.get_weights()])
    half = model_lib.cast_model(net, "bfloat16", keep_float32=("block1_conv1",))
    policies = {layer.name: layer.dtype_policy.name for layer in half.layers
                if layer.name != "image"}
    assert policies["block1_conv1"] == "float32" and policies["dr_stage"] == "float32"
    assert policies["block2_conv1"] == "mixed_bfloat16" and policies["fc1"] == "mixed_bfloat16"
    assert all(w.dtype == "float32" for w in half.weights)
    for a, b in zip(net.get_weights(), half.get_weights()):
        np.testing.assert_array_equal(a, b)
    x = rng.normal(0, 40, size=(2, 128, 128, 3)).astype(np.float32)
    expected, got = net.predict(x, verbose=0), half.predict(x, verbose=0)
    assert got.dtype == np.float32
    # bfloat16 keeps 8 significant bits: close, not equal.
    np.testing.assert_allclose(got, expected, rtol=0.05, atol=0.05 * np.abs(expected).max())
    back = model_lib.cast_model(half, "float32")
    assert {layer.dtype_policy.name for layer in back.layers} == {"float32"}
    np.testing.assert_allclose(back.predict(x, verbose=0), expected, rtol=1e-5, atol=1e-6)


def test_with_precision_and_its_errors(tmp_path):
    net = model_lib.build_model(**TINY)
    assert model_lib.with_precision(net, "fp32") is net
    half = model_lib.with_precision(net, "bf16")
    assert half is not net and half.get_layer("fc1").dtype_policy.name == "mixed_bfloat16"
    # A file always describes a float32 grader, whatever the model computed in.
    path = str(tmp_path / "m.h5")
    model_lib.export_model(half, path)
    assert {layer.dtype_policy.name for layer in model_lib.load_model(path).layers} == {"float32"}
    with pytest.raises(ValueError, match=r"precision in \('fp32', 'bf16'\)\. Received: precision='fp16'"):
        model_lib.with_precision(net, "fp16")
    with pytest.raises(ValueError, match=r'compute "float32" or "bfloat16"\. Received: compute=\'half\''):
        model_lib.cast_model(net, "half")
    with pytest.raises(ValueError, match=r"keep_float32 to name layers.*\['conv9'\]"):
        model_lib.cast_model(net, "bfloat16", keep_float32=("conv9",))
