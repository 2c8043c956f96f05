"""The paper's VGG-16 regression grader, ImageNet weight loading and HDF5 checkpoints.

González-Gonzalo et al. (MIDL 2018) grade diabetic retinopathy with a VGG-16 (Simonyan & Zisserman,
2015) that regresses the stage 0-4 of a 512x512 fundus photograph. Two changes to the ImageNet
layout keep the ImageNet fully connected weights usable at 512 px: ``block1_conv1`` has stride 2
(512 -> 256, then four 2x2 pools give 16x16 before block 5) and ``block5_conv1`` has ``valid``
padding (16 -> 14, pooled to 7), so ``block5_pool`` is 7x7x512 and ``flatten`` has 25,088 units,
exactly as ImageNet's VGG-16 at 224 px. ``fc1`` and ``fc2`` keep their 4096 ReLU units with
dropout after each; the 1000-way ``predictions`` layer is replaced by one linear unit ``dr_stage``.
"""

import json
import logging
import os
import warnings

import h5py
import numpy as np

from dr_saliency.core._tf import keras

#: Layer names of ``keras.applications.VGG16`` up to ``fc2``, in order (weights-bearing and pools).
VGG16_CONV_LAYERS = (
    ("block1_conv1", 64), ("block1_conv2", 64),
    ("block2_conv1", 128), ("block2_conv2", 128),
    ("block3_conv1", 256), ("block3_conv2", 256), ("block3_conv3", 256),
    ("block4_conv1", 512), ("block4_conv2", 512), ("block4_conv3", 512),
    ("block5_conv1", 512), ("block5_conv2", 512), ("block5_conv3", 512),
)
FC_UNITS = 4096
FC_LAYERS = ("fc1", "fc2")
OUTPUT_NAME = "dr_stage"

#: Where Keras' own ``keras.applications.VGG16`` downloads its ImageNet weights (with top).
IMAGENET_WEIGHTS_URL = (
    "https://storage.googleapis.com/tensorflow/keras-applications/vgg16/"
    "vgg16_weights_tf_dim_ordering_tf_kernels.h5"
)
IMAGENET_WEIGHTS_FILE = "vgg16_weights_tf_dim_ordering_tf_kernels.h5"
IMAGENET_WEIGHTS_MD5 = "64373286793e3c8b2b4e3219cbf3544b"

# BGR channel means of the ImageNet training set, subtracted by Keras' "caffe" preprocessing.
IMAGENET_BGR_MEAN = np.array([103.939, 116.779, 123.68], dtype=np.float32)

#: Smallest square input whose ``block5_pool`` is at least 1x1 (see :func:`feature_size`).
MIN_INPUT_SIZE = 128


def feature_size(size):
    """Spatial size of ``block5_pool`` for an input side of ``size`` pixels.

    Follows the layer arithmetic: stride-2 ``same`` conv (ceil halving), four 2x2 pools (floor
    halving), the ``valid`` 3x3 ``block5_conv1`` (minus 2), and the last pool.

    Args:
        size: int, input height or width in pixels.

    Returns:
        int, the side of ``block5_pool`` (0 or less when the input is too small).
    """
    s = -(-int(size) // 2)
    for _ in range(4):
        s //= 2
    return (s - 2) // 2


def _check_build_args(input_shape, dropout, width, weights):
    if not isinstance(input_shape, (tuple, list)) or len(input_shape) != 3:
        raise ValueError(
            "Expected input_shape as (height, width, 3). "
            f"Received: input_shape={input_shape!r}"
        )
    h, w, c = input_shape
    if c != 3:
        raise ValueError(
            "Expected 3 input channels (RGB fundus images). "
            f"Received: input_shape={tuple(input_shape)}"
        )
    for side in (h, w):
        if side is None or int(side) < MIN_INPUT_SIZE:
            raise ValueError(
                f"Expected input height and width of at least {MIN_INPUT_SIZE} pixels, so that "
                f"block5_pool is at least 1x1. Received: input_shape={tuple(input_shape)}"
            )
    if not isinstance(dropout, (int, float)) or not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"Expected dropout in [0, 1). Received: dropout={dropout!r}")
    if not isinstance(width, (int, float)) or float(width) <= 0:
        raise ValueError(f"Expected width > 0. Received: width={width!r}")
    if weights is not None and not isinstance(weights, (str, os.PathLike)):
        raise TypeError(
            'Expected weights to be "imagenet", None or a path to a VGG-16 HDF5 file. '
            f"Received: weights={weights!r}"
        )
    if weights is not None and str(weights) != "imagenet":
        if float(width) != 1.0:
            raise ValueError(
                "VGG-16 weights can only be loaded into the full-width network (width=1.0). "
                f"Received: width={width}, weights={str(weights)!r}"
            )
        if not os.path.isfile(weights):
            raise ValueError(
                "Expected weights to be \"imagenet\", None or an existing VGG-16 HDF5 file. "
                f"Received: weights={str(weights)!r} (no such file)"
            )
    if str(weights) == "imagenet" and float(width) != 1.0:
        raise ValueError(
            "ImageNet weights exist only for the full-width VGG-16 (width=1.0); use "
            f"weights=None for a narrower network. Received: width={width}, weights='imagenet'"
        )


def build_model(input_shape=(512, 512, 3), *, weights="imagenet", dropout=0.5, width=1.0,
                name="dr_vgg16"):
    """Build the VGG-16 regression grader of González-Gonzalo et al. (2018).

    Args:
        input_shape: (height, width, 3) of the preprocessed input; both sides >= 128. The paper
            uses 512x512, where ``block5_pool`` is 7x7x512 and ImageNet's ``fc1``/``fc2`` fit.
        weights: ``"imagenet"`` (Keras' VGG-16 ImageNet file, downloaded once into
            ``~/.keras/models``), ``None`` (He-normal random initialisation), or a path to a
            local file in Keras' VGG-16 HDF5 format. Weights are copied by layer name: the 13
            convolutions always, ``fc1``/``fc2`` only where their shapes fit.
        dropout: float in [0, 1), dropout rate after ``fc1`` and after ``fc2``.
        width: float > 0, multiplier on every layer's filters and units (1.0 is VGG-16; narrower
            networks are for quick CPU runs and tests). Pretrained weights need width 1.0.
        name: str, the model's name.

    Returns:
        An uncompiled ``keras.Model`` mapping ``(N, H, W, 3)`` float32 (output of
        :func:`preprocess_input`) to ``(N, 1)`` float32, the predicted DR stage. Layer names follow
        ``keras.applications.VGG16`` (``block1_conv1`` ... ``block5_pool``, ``flatten``, ``fc1``,
        ``fc2``) plus ``fc1_dropout``, ``fc2_dropout`` and the output ``dr_stage``.

    Raises:
        ValueError: for an input smaller than 128 px or not 3-channel, dropout outside [0, 1),
            width <= 0, pretrained weights with width != 1, a missing weights file, or an
            ImageNet download that fails.
    """
    _check_build_args(input_shape, dropout, width, weights)
    layers = keras.layers
    init = "he_normal"  # VGG-16 has no batch norm: He init keeps ReLU activations alive from scratch.

    inputs = keras.Input(shape=tuple(int(v) for v in input_shape), name="image")
    x = inputs
    pool_after = {"block1_conv2", "block2_conv2", "block3_conv3", "block4_conv3", "block5_conv3"}
    for layer_name, filters in VGG16_CONV_LAYERS:
        x = layers.Conv2D(
            max(1, int(round(filters * width))), (3, 3), activation="relu",
            strides=2 if layer_name == "block1_conv1" else 1,
            padding="valid" if layer_name == "block5_conv1" else "same",
            kernel_initializer=init, name=layer_name,
        )(x)
        if layer_name in pool_after:
            block = layer_name.split("_")[0]
            x = layers.MaxPooling2D((2, 2), strides=(2, 2), name=f"{block}_pool")(x)
    x = layers.Flatten(name="flatten")(x)
    units = max(1, int(round(FC_UNITS * width)))
    x = layers.Dense(units, activation="relu", kernel_initializer=init, name="fc1")(x)
    x = layers.Dropout(dropout, name="fc1_dropout")(x)
    x = layers.Dense(units, activation="relu", kernel_initializer=init, name="fc2")(x)
    x = layers.Dropout(dropout, name="fc2_dropout")(x)
    # A zero output kernel starts every prediction at 0: with un-normalised "caffe" inputs and He
    # init, a random output layer starts at predictions in the hundreds and a first MSE in the
    # tens of thousands, which a from-scratch SGD run may never recover from.
    outputs = layers.Dense(1, activation="linear", kernel_initializer="zeros",
                           name=OUTPUT_NAME)(x)
    model = keras.Model(inputs, outputs, name=name)

    if weights is not None:
        path = imagenet_weights_path() if str(weights) == "imagenet" else os.fspath(weights)
        report = load_vgg16_weights(model, path)
        if report["skipped"]:
            warnings.warn(
                "VGG-16 weights: layers kept at random initialisation because their shapes do "
                f"not fit this input size: {', '.join(report['skipped'])} "
                f"(block5_pool is {model.get_layer('block5_pool').output.shape[1:3]}; "
                "ImageNet's fc1 needs 7x7).",
                stacklevel=2,
            )
    return model


#: Arithmetic of a grader's forward and backward passes: "fp32", or "bf16" (Keras'
#: ``mixed_bfloat16``: bfloat16 activations and convolutions, float32 variables, with the layers of
#: :data:`BF16_FLOAT32_LAYERS` and the output kept in float32). docs/performance.md measures both.
PRECISIONS = ("fp32", "bf16")

#: Layers that stay float32 under ``precision="bf16"``: where bfloat16 costs the maps most
#: fidelity for the least time (docs/performance.md, "bfloat16"). The output unit is always
#: float32 (a regression output, and Keras' advice for mixed precision).
BF16_FLOAT32_LAYERS = ("block1_conv1", "block1_conv2")


def cast_model(model, compute="float32", *, keep_float32=()):
    """A copy of a model whose layers compute in ``compute``, sharing nothing with the original.

    Each layer's dtype policy becomes ``"mixed_bfloat16"`` (``compute="bfloat16"``) or
    ``"float32"``, except the layers named in ``keep_float32`` and the output layer, which stay
    float32; variables are float32 either way, and the weights are copied. The input stays
    float32 (the first bfloat16 layer casts it).

    Args:
        model: a Functional ``keras.Model`` (a grader).
        compute: ``"float32"`` or ``"bfloat16"``.
        keep_float32: names of layers that stay float32 under ``"bfloat16"``.

    Returns:
        ``keras.Model`` with the same weights and layer names.

    Raises:
        ValueError: for another ``compute``, or a name in ``keep_float32`` that is not a layer.
    """
    if compute not in ("float32", "bfloat16"):
        raise ValueError(f'Expected compute "float32" or "bfloat16". Received: compute={compute!r}')
    names = {layer.name for layer in model.layers}
    unknown = sorted(set(keep_float32) - names)
    if unknown:
        raise ValueError(f"Expected keep_float32 to name layers of the model. Received: {unknown}")
    config = model.get_config()
    outputs = config.get("output_layers", [])
    # One output is stored as [name, node, tensor]; several as a list of those.
    outputs = [outputs] if outputs and isinstance(outputs[0], str) else outputs
    output_layers = {entry[0] for entry in outputs}
    mixed = "mixed_bfloat16" if compute == "bfloat16" else "float32"
    for layer in config["layers"]:
        if layer["class_name"] == "InputLayer":
            continue
        policy = "float32" if (layer["name"] in keep_float32 or layer["name"] in output_layers) \
            else mixed
        layer["config"]["dtype"] = {"module": "keras", "class_name": "DTypePolicy",
                                    "config": {"name": policy}, "registered_name": None}
    copy = keras.Model.from_config(config)
    copy.set_weights(model.get_weights())
    return copy


def with_precision(model, precision="fp32"):
    """The grader computing in ``precision`` (one of :data:`PRECISIONS`).

    Args:
        model: a grader (any policy).
        precision: ``"fp32"`` or ``"bf16"``.

    Returns:
        ``keras.Model``: ``model`` itself when it already computes in float32 and ``precision`` is
        "fp32"; otherwise a copy (:func:`cast_model`).

    Raises:
        ValueError: for an unknown precision.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"Expected precision in {PRECISIONS}. Received: precision={precision!r}")
    if precision == "bf16":
        return cast_model(model, "bfloat16", keep_float32=BF16_FLOAT32_LAYERS)
    if all(layer.dtype_policy.compute_dtype == "float32" for layer in model.layers
           if hasattr(layer, "dtype_policy")):
        return model
    return cast_model(model, "float32")


def imagenet_weights_path(cache_dir=None):
    """Download (once) Keras' VGG-16 ImageNet weights and return the local path.

    This is the file ``keras.applications.VGG16(weights="imagenet")`` uses, fetched with the same
    ``keras.utils.get_file`` call and MD5, cached in ``~/.keras/models``.

    Args:
        cache_dir: optional str, Keras cache directory (default ``~/.keras``).

    Returns:
        str, path of ``vgg16_weights_tf_dim_ordering_tf_kernels.h5``.

    Raises:
        ValueError: when the file is not cached and cannot be downloaded (e.g. offline).
    """
    try:
        return keras.utils.get_file(
            IMAGENET_WEIGHTS_FILE, IMAGENET_WEIGHTS_URL, cache_subdir="models",
            file_hash=IMAGENET_WEIGHTS_MD5, cache_dir=cache_dir,
        )
    except Exception as exc:  # get_file raises plain Exception subclasses for network errors
        raise ValueError(
            "Could not download the VGG-16 ImageNet weights (no network?). Download "
            f"{IMAGENET_WEIGHTS_FILE} elsewhere and pass its path instead: "
            "weights='/path/to/vgg16_weights_tf_dim_ordering_tf_kernels.h5' "
            "(CLI: --weights PATH), or put it in ~/.keras/models/, or use weights=None to "
            f"train from scratch. Received: weights='imagenet' ({type(exc).__name__}: {exc})"
        ) from exc


def _read_vgg16_h5(path):
    """Read a Keras VGG-16 HDF5 weights file into ``{layer_name: [arrays]}``.

    The format (Keras' legacy ``save_weights`` HDF5): root attribute ``layer_names``; one group per
    layer with attribute ``weight_names``, each naming a dataset inside the group.
    """
    out = {}
    with h5py.File(path, "r") as f:
        root = f["model_weights"] if "model_weights" in f else f
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in root.attrs["layer_names"]]
        for name in names:
            group = root[name]
            weight_names = [w.decode() if isinstance(w, bytes) else str(w)
                            for w in group.attrs["weight_names"]]
            out[name] = [np.asarray(group[w]) for w in weight_names]
    return out


def load_vgg16_weights(model, path):
    """Copy VGG-16 weights into ``model`` by layer name, layer by layer where the shapes fit.

    Args:
        model: a model from :func:`build_model` (width 1.0).
        path: str, a Keras VGG-16 HDF5 weights file
            (``vgg16_weights_tf_dim_ordering_tf_kernels.h5`` layout).

    Returns:
        dict with ``"loaded"``: list of layer names copied, and ``"skipped"``: list of layer names
        present in both but left at their initialisation because shapes do not fit (``fc1`` and
        ``fc2`` when block5_pool is not 7x7: the pair is copied together or not at all).

    Raises:
        ValueError: when the file is not a VGG-16 weights file or has none of the conv layers.
    """
    try:
        stored = _read_vgg16_h5(path)
    except (OSError, KeyError) as exc:
        raise ValueError(
            "Expected a Keras VGG-16 HDF5 weights file (root attribute 'layer_names', one group "
            f"per layer). Received: weights={os.fspath(path)!r} ({exc})"
        ) from exc
    # Copy what fits, layer by layer; the fully connected pair only together: ImageNet's fc2
    # expects ImageNet's fc1 features, so fc2 alone (it fits at any input size) would be noise.
    fits = {}
    for layer in model.layers:
        if layer.name in stored and layer.weights:
            ours = [tuple(v.shape) for v in layer.get_weights()]
            fits[layer.name] = ours == [v.shape for v in stored[layer.name]]
    fc_ok = all(fits.get(name, False) for name in FC_LAYERS)
    loaded, skipped = [], []
    for name, ok in fits.items():
        if ok and (name not in FC_LAYERS or fc_ok):
            model.get_layer(name).set_weights(stored[name])
            loaded.append(name)
        else:
            skipped.append(name)
    missing_convs = [n for n, _ in VGG16_CONV_LAYERS if n not in loaded]
    if missing_convs:
        raise ValueError(
            "Expected all 13 VGG-16 convolution layers in the weights file with matching shapes; "
            f"not loaded: {', '.join(missing_convs)}. Received: weights={os.fspath(path)!r}"
        )
    return {"loaded": loaded, "skipped": skipped}


def preprocess_input(images):
    """ImageNet VGG-16 preprocessing ("caffe" mode) of RGB images.

    RGB -> BGR and subtraction of the ImageNet BGR means, no scaling: what Keras' VGG-16 weights
    were trained with. Works on numpy arrays and on TensorFlow tensors (for ``tf.data``).

    Args:
        images: ``(..., H, W, 3)`` RGB, uint8 (0-255) or float in the 0-255 range.

    Returns:
        ``(..., H, W, 3)`` float32, BGR, mean-subtracted.

    Raises:
        ValueError: when the last axis is not 3.
    """
    shape = tuple(images.shape)
    if not shape or shape[-1] != 3:
        raise ValueError(f"Expected images with 3 channels (RGB) last. Received: shape={shape}")
    if isinstance(images, np.ndarray):
        return images[..., ::-1].astype(np.float32) - IMAGENET_BGR_MEAN
    from dr_saliency.core._tf import tf

    x = tf.cast(images, tf.float32)
    return tf.reverse(x, axis=[-1]) - tf.constant(IMAGENET_BGR_MEAN)


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------

WEIGHTS_SUFFIX = ".weights.h5"


def save_checkpoint(model, path, *, epoch=None, metrics=None):
    """Save weights (and, for a compiled model, the optimizer state) to an HDF5 checkpoint.

    The file is Keras 3's ``.weights.h5``; the epoch and metrics go into a small JSON sidecar
    ``<path>.json`` so that ``--resume`` knows where it stopped. Both are written to temporary
    names and renamed, so an interrupted save never leaves a half-written checkpoint.

    Args:
        model: a built ``keras.Model``; if compiled with a built optimizer, its variables
            (iterations, momentum slots) are saved too.
        path: str ending in ``.weights.h5``.
        epoch: optional int, number of completed epochs.
        metrics: optional dict of JSON-serialisable values.

    Raises:
        ValueError: when ``path`` does not end in ``.weights.h5``.
    """
    path = os.fspath(path)
    if not path.endswith(WEIGHTS_SUFFIX):
        raise ValueError(f"Expected a checkpoint path ending in '{WEIGHTS_SUFFIX}'. Received: path={path!r}")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path[: -len(WEIGHTS_SUFFIX)] + ".tmp" + WEIGHTS_SUFFIX
    model.save_weights(tmp)
    meta = {"epoch": epoch, "metrics": metrics or {}}
    with open(path + ".json.tmp", "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=2, default=float)
    os.replace(tmp, path)
    os.replace(path + ".json.tmp", path + ".json")


def load_checkpoint(model, path):
    """Load a checkpoint written by :func:`save_checkpoint` into ``model``.

    For a compiled model the optimizer is built first, so that its saved iterations and slot
    variables (e.g. SGD momentum) are restored and training continues exactly.

    Args:
        model: a ``keras.Model`` of the same architecture, compiled if the optimizer state should
            be restored.
        path: str, the ``.weights.h5`` file.

    Returns:
        dict, the sidecar metadata (``epoch``, ``metrics``), empty if there is none.

    Raises:
        ValueError: when the file is missing or does not fit the model.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"Expected an existing checkpoint file. Received: path={path!r}")
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None and not optimizer.built:
        optimizer.build(model.trainable_variables)
    try:
        model.load_weights(path)
    except (ValueError, KeyError, OSError) as exc:
        raise ValueError(
            f"Checkpoint does not fit this model ({exc}). Received: path={path!r}"
        ) from exc
    meta_path = path + ".json"
    if os.path.isfile(meta_path):
        with open(meta_path, encoding="utf-8") as f:
            return json.load(f)
    return {}


def export_model(model, path, *, half=False):
    """Write the full model as legacy HDF5, loadable without custom objects.

    ``keras.models.load_model(path, compile=False)`` restores architecture and weights. The model
    is written uncompiled on purpose: a legacy HDF5 file of a model compiled with ``loss="mse"``
    cannot be reloaded by Keras 3, and the optimizer state lives in the ``.weights.h5``
    checkpoints instead.

    Args:
        model: a built ``keras.Model`` (only built-in Keras layers).
        path: str ending in ``.h5`` (and not ``.weights.h5``).
        half: store the weights as float16, half the file size (the bundled grader's format).
            Keras casts them back to the model's float32 variables on loading, so the model
            computes in float32 with weights rounded to float16 (relative error 2^-11;
            data/README.md gives the measured effect on a trained grader).

    Raises:
        ValueError: for a wrong suffix.
    """
    path = os.fspath(path)
    if not path.endswith(".h5") or path.endswith(WEIGHTS_SUFFIX):
        raise ValueError(f"Expected a model path ending in '.h5' (not '.weights.h5'). Received: path={path!r}")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    model = with_precision(model, "fp32")  # a file always describes a float32 grader
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    tmp = path[:-3] + f".tmp{os.getpid()}.h5"
    # Keras logs that HDF5 is a legacy format; it is the format docs/file-formats.md pins, so the
    # notice is noise for our users.
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)
    try:
        clone.save(tmp)
        if half:
            _halve_weights(tmp)
        os.replace(tmp, path)
    finally:
        absl_logger.setLevel(level)
        if os.path.exists(tmp):
            os.remove(tmp)


def _halve_weights(path):
    """Rewrite a legacy HDF5 model file with its float32 weights stored as float16."""
    # HDF5 does not give back the space of a deleted dataset, so the file is copied, not edited.
    half_path = path + ".half"
    with h5py.File(path, "r") as src, h5py.File(half_path, "w") as dst:
        def copy(name, obj):
            if isinstance(obj, h5py.Group):
                target = dst.require_group(name)
            else:
                data = obj[()]
                if name.startswith("model_weights/") and data.dtype == np.float32:
                    data = data.astype(np.float16)
                target = dst.create_dataset(name, data=data)
            target.attrs.update(obj.attrs)
        dst.attrs.update(src.attrs)
        src.visititems(copy)
    os.replace(half_path, path)


def copy_grader_weights(model, path):
    """Start ``model`` from the weights of a trained grader of the same architecture (warm start).

    Args:
        model: a model from :func:`build_model`.
        path: str, a grader's model file (:func:`load_model`), e.g. a training run's model.h5.

    Raises:
        ValueError: the file is not a grader (see :func:`load_model`), or its layers do not match
            ``model``'s by name and shape (another input size or width).
    """
    source = load_model(path)
    theirs = {layer.name: layer for layer in source.layers if layer.weights}
    ours = [layer for layer in model.layers if layer.weights]
    differ = [layer.name for layer in ours if layer.name not in theirs
              or [tuple(v.shape) for v in theirs[layer.name].weights] != [tuple(v.shape) for v in layer.weights]]
    if differ or len(theirs) != len(ours):
        raise ValueError(
            f"Expected a grader of the same architecture to start from (input "
            f"{model.input_shape[1]} px, the same width). Received: init_from={os.fspath(path)!r}, "
            f"input {source.input_shape[1]} px, layers that differ: {', '.join(differ) or 'their number'}")
    for layer in ours:
        layer.set_weights(theirs[layer.name].get_weights())


def load_model(path):
    """Load a grader: a model exported by :func:`export_model` (or a training run's model.h5).

    The file must hold a grader: one square RGB input of at least ``MIN_INPUT_SIZE`` pixels and
    one output unit. Keras' safe mode stays on, so a file whose model holds a ``Lambda`` layer with
    Python code is refused without running that code.

    Args:
        path: str, a ``.h5`` or ``.keras`` model file.

    Returns:
        ``keras.Model``, uncompiled.

    Raises:
        ValueError: when the file is missing, is not a Keras model (e.g. a weights-only file or
            a text file), holds unsafe code, or is a model that is not a grader.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"Expected an existing model file (.h5 or .keras). Received: path={path!r}")
    if path.endswith(WEIGHTS_SUFFIX):
        raise ValueError(
            "Expected a full model file (.h5 from 'dr-saliency model --export' or training's "
            f"model.h5), not a weights-only checkpoint. Received: path={path!r}"
        )
    try:
        net = keras.models.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:  # Keras raises many types for a file that is not a model
        if "Lambda" in str(exc):
            raise ValueError("Expected a model file without Python code: it holds a Lambda layer, "
                             f"refused without running it. Received: path={path!r}") from exc
        message = " ".join(str(exc).split())
        if len(message) > 300:
            message = message[:300] + "..."
        raise ValueError(f"Could not load a Keras model from the file ({type(exc).__name__}: "
                         f"{message}). Received: path={path!r}") from exc
    _check_grader(net, path)
    return net


def _check_grader(net, path):
    inputs, outputs = getattr(net, "inputs", None) or [], getattr(net, "outputs", None) or []
    in_shape = tuple(inputs[0].shape) if len(inputs) == 1 else None
    out_shape = tuple(outputs[0].shape) if len(outputs) == 1 else None
    square = (in_shape is not None and len(in_shape) == 4 and in_shape[3] == 3
              and in_shape[1] is not None and in_shape[1] == in_shape[2]
              and in_shape[1] >= MIN_INPUT_SIZE)
    if not square or out_shape is None or out_shape[1:] != (1,):
        raise ValueError(
            f"Expected a DR grader: one square RGB input of at least {MIN_INPUT_SIZE} px "
            "(None, S, S, 3) and one output (None, 1). Received: "
            f"path={path!r} with input shape {in_shape if in_shape else len(inputs)} and "
            f"output shape {out_shape if out_shape else len(outputs)}")


#: File name of the bundled grader: the repository's ``data/grader.h5``, installed with the
#: package as ``dr_saliency/bundled/grader.h5``. Its model card is ``data/README.md``.
BUNDLED_MODEL = "grader.h5"


def bundled_model_path():
    """Path of the grader that ships with the package (``dr-saliency explain`` without --model).

    Returns:
        str, the installed copy (``dr_saliency/bundled/``), or in a source checkout the
        repository's ``data/`` copy.

    Raises:
        ValueError: when neither exists (an installation without it).
    """
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    places = (os.path.join(package, "bundled", BUNDLED_MODEL),
              os.path.join(os.path.dirname(package), "data", BUNDLED_MODEL))
    for path in places:
        if os.path.isfile(path):
            return path
    raise ValueError("Expected the bundled grader in the installation (reinstall the package, or "
                     f"name a model file). Received: no file at {' or '.join(places)}")


def summarize(model):
    """Layer table of a model: name, type, output shape and parameter count per layer.

    Args:
        model: ``keras.Model``.

    Returns:
        list of dicts with keys ``name``, ``type``, ``output_shape`` (tuple without batch axis),
        ``params`` (int).
    """
    rows = []
    for layer in model.layers:
        shape = layer.output.shape if hasattr(layer, "output") else None
        rows.append({
            "name": layer.name,
            "type": type(layer).__name__,
            "output_shape": tuple(shape[1:]) if shape is not None else None,
            "params": int(layer.count_params()),
        })
    return rows
