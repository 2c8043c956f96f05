"""Training of the VGG-16 grader: tf.data pipeline, augmentation, balancing, fit loop, resume.

As González-Gonzalo et al. (2018): mean squared error on the DR stage, SGD with Nesterov momentum
0.9, augmentation and class balancing. The paper gives neither learning rate nor schedule; the
defaults here and the quick CPU profile are documented in ``docs/training.md``.

A run folder holds everything needed to continue or use the run:

```
config.json            the TrainConfig and the data it was trained on
split.json             ids of the training and validation images
last.weights.h5(.json) weights + optimizer state after the last finished epoch (resume point)
best.weights.h5(.json) weights of the epoch with the best validation kappa
log.csv                one row per epoch: loss, learning rate, validation metrics
curves.png             training curves
model.h5               the best model, full legacy HDF5 (keras.models.load_model, compile=False)
```

With ``strategy="multiworker"`` every worker trains (its collectives need all of them), but only
the chief validates, writes the run folder and holds its lock; the others read the chief's
files (to resume) and write nothing.
"""

import csv
import contextlib
import dataclasses
import functools
import hashlib
import json
import math
import os
import re
import signal
import sys
import threading
import time

import numpy as np

from dr_saliency.core.files import file_sha256, write_figure, write_json
from dr_saliency.core.errors import (BadImageError, ClusterTimeoutError, ImageSizeError,
                                     NoValidationError, OutOfMemoryError, ProvenanceError,
                                     RunExistsError)
from dr_saliency.core.locks import lock_folder
from dr_saliency.core.progress import phase
from dr_saliency.grader import metrics as metrics_lib
from dr_saliency.grader import model as model_lib
from dr_saliency.core._tf import keras, tf
from dr_saliency.grader import cluster as cluster_lib
from dr_saliency.grader.augment import augment_batch
from dr_saliency.fundus.imio import read_image
from dr_saliency.grader.config import CLUSTER_TIMEOUT, STRATEGIES, TrainConfig

#: The file that makes a folder a run that --resume can continue: its settings. (With no
#: checkpoint beside it yet, the run was stopped during its first epoch and resumes at epoch 0.)
RUN_FILES = ("config.json",)

# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------

def split_records(records, *, val_fraction=0.15, seed=0):
    """Training and validation records: the dataset's split column, or a stratified fraction.

    Records with ``split == "train"`` train and ``"val"`` validate; ``"test"`` records are never
    used. Without any split, a stratified (by grade) random ``val_fraction`` validates.

    Args:
        records: sequence of dataset records with ``id``, ``grade`` and ``split``.
        val_fraction: float, used only when no record has a split.
        seed: int.

    Returns:
        (train_records, val_records) lists.

    Raises:
        ValueError: when records lack grades, training data is empty or has a single stage.
    """
    graded = [r for r in records if r.grade is not None]
    if not graded:
        raise ValueError("Expected graded images to train on. Received: a dataset with no grades")
    if any(r.split for r in graded):
        train = [r for r in graded if r.split == "train"]
        val = [r for r in graded if r.split == "val"]
    else:
        from sklearn.model_selection import train_test_split

        grades = [r.grade for r in graded]
        stratify = grades if min(np.bincount(grades)[np.unique(grades)]) >= 2 else None
        train, val = train_test_split(graded, test_size=val_fraction, random_state=seed,
                                      stratify=stratify)
    if not train:
        raise ValueError("Expected training images (split 'train'). Received: none")
    stages = sorted({r.grade for r in train})
    if len(stages) < 2:
        raise ValueError(f"Expected training images of at least two stages. Received: only stage {stages}")
    if not val:
        raise NoValidationError("Expected validation images (split 'val', or val_fraction > 0 "
                                "of the training images). Received: none")
    return train, val


def check_files(records, *, skip_bad=False, on_progress=None, size=None):
    """Decode every image once before training or grading, so a bad file fails now and by name.

    Args:
        records: sequence of records with ``id`` and ``image_path``.
        skip_bad: bool, drop unreadable (or wrongly sized) images instead of failing.
        on_progress: optional ``on_progress(label, total) -> advance(k=1)``
            (:mod:`dr_saliency.core.progress`): one phase, "Checking images".
        size: optional int, the side every image must have (the model's input, for grading:
            an image of another size would be resized silently and graded on other pixels
            than it was trained on). None: any size (training resizes).

    Returns:
        (good_records, bad) where bad is a list of (path, message), in record order.

    Raises:
        BadImageError: for the first unreadable file when ``skip_bad`` is False.
        ImageSizeError: for the first image whose size is not ``size`` x ``size`` when
            ``skip_bad`` is False.
    """
    from concurrent.futures import ThreadPoolExecutor

    def check(rec):
        # (message, is a size problem) or None.
        try:
            shape = read_image(rec.image_path).shape
        except ValueError as exc:
            return str(exc), False
        if size is not None and shape[:2] != (size, size):
            return (f"Expected a {size}x{size} image (the model's input). Received: "
                    f"{rec.image_path} of {shape[1]}x{shape[0]}"), True
        return None

    advance = phase(on_progress, "Checking images", len(records))
    good, bad = [], []
    # OpenCV releases the GIL while decoding, so threads decode in parallel.
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        for rec, problem in zip(records, pool.map(check, records)):
            advance(1)
            if problem is None:
                good.append(rec)
            elif skip_bad:
                bad.append((rec.image_path, problem[0]))
            elif problem[1]:
                raise ImageSizeError(rec.id, problem[0], size)
            else:
                raise BadImageError(rec.id, problem[0])
    return good, bad


#: Suffixes TensorFlow decodes natively in the pipeline; other formats (e.g. TIFF) go through
#: OpenCV (``imio.read_image``), which is ~3x slower there because it holds the GIL in between.
TF_DECODABLE = (".png", ".jpg", ".jpeg", ".bmp", ".gif")

#: Decoded training images are kept in memory (uint8) when they fit this budget: decoding then
#: happens once per image instead of once per epoch. Above it (Kaggle-scale data) they are
#: decoded every epoch, in parallel.
CACHE_BYTES = 4 * 2 ** 30


def _decoder(paths, size):
    """A function path -> (size, size, 3) uint8 RGB, resizing where an image has another size."""
    native = all(str(p).lower().endswith(TF_DECODABLE) for p in paths)

    def decode(path):
        if native:
            image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        else:
            image = tf.numpy_function(lambda p: read_image(p.decode()), [path], tf.uint8,
                                      stateful=False)
        image = tf.ensure_shape(image, [None, None, 3])
        return tf.cond(
            tf.reduce_all(tf.equal(tf.shape(image)[:2], [size, size])),
            lambda: image,
            lambda: tf.cast(tf.round(tf.clip_by_value(
                tf.image.resize(image, [size, size], antialias=True), 0, 255)), tf.uint8),
        )

    return decode


def make_dataset(records, config, *, training, seed=0):
    """The tf.data input pipeline.

    Training: an infinite stream, balanced when ``config.balance``: each stage present is drawn
    with equal probability (rare stages oversampled with replacement), so every stage is seen
    equally often per epoch. Images are decoded in parallel (and kept in memory when they fit
    ``CACHE_BYTES``), batched, augmented (:mod:`dr_saliency.grader.augment`), preprocessed for the
    VGG-16 and prefetched. Evaluation: each record once, in order, unaugmented.

    Args:
        records: sequence of records (``image_path``, ``grade``; grade may be None when not
            training).
        config: TrainConfig (input_size, batch_size, augment, balance).
        training: bool.
        seed: int.

    Returns:
        ``tf.data.Dataset`` of (images (B, S, S, 3) float32 preprocessed, labels (B, 1) float32).
    """
    size = config.input_size
    paths = np.array([r.image_path for r in records])
    labels = np.array([-1 if r.grade is None else r.grade for r in records], np.float32)
    decode = _decoder(paths, size)
    auto = tf.data.AUTOTUNE

    def to_model(x, y):
        return model_lib.preprocess_input(x), y[:, None]

    def images_of(sel):
        ds = tf.data.Dataset.from_tensor_slices((paths[sel], labels[sel]))
        return ds.map(lambda p, y: (decode(p), y), num_parallel_calls=auto)

    if not training:
        return images_of(slice(None)).batch(config.batch_size).map(to_model).prefetch(auto)

    cache = len(paths) * size * size * 3 <= CACHE_BYTES
    groups = ([labels == stage for stage in sorted(set(labels.tolist()))] if config.balance
              else [np.ones(len(paths), bool)])
    streams = []
    for k, sel in enumerate(groups):
        ds = images_of(sel)
        if cache:
            ds = ds.cache()
        streams.append(ds.shuffle(int(sel.sum()), seed=seed + k).repeat())
    ds = streams[0] if len(streams) == 1 else tf.data.Dataset.sample_from_datasets(streams, seed=seed)
    ds = ds.batch(config.batch_size, drop_remainder=True)
    if config.augment:
        # Per-batch seeds (run seed, batch counter): reproducible whatever the parallelism.
        def augment(xy, i):
            out = tf.numpy_function(augment_batch, [xy[0], tf.stack([seed, i])], tf.uint8,
                                    stateful=False)
            return tf.ensure_shape(out, xy[0].shape), xy[1]

        ds = tf.data.Dataset.zip((ds, tf.data.Dataset.counter())).map(
            augment, num_parallel_calls=auto)
    return ds.map(to_model, num_parallel_calls=auto).prefetch(auto)


def predict_records(model, records, *, batch_size=16):
    """Predicted stage of every record (in order), decoding and resizing as training does.

    Run :func:`check_files` first to have unreadable files named before any prediction; a file
    OpenCV reads but TensorFlow cannot (e.g. corrupt JPEG data that libjpeg only warns about)
    is still named here, after the pipeline fails.

    Args:
        model: keras.Model from :func:`dr_saliency.grader.model.build_model` (or a loaded ``model.h5``).
        records: sequence of records with ``id`` and ``image_path``.
        batch_size: int >= 1.

    Returns:
        (N,) float32 predictions.

    Raises:
        ValueError: for a batch size below 1.
        BadImageError: for the first image TensorFlow cannot decode.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
            or batch_size < 1:
        raise ValueError(f"Expected an int batch_size >= 1. Received: batch_size={batch_size!r}")
    size = int(model.input_shape[1])
    config = TrainConfig(input_size=size, batch_size=int(batch_size))
    ds = make_dataset(records, config, training=False).map(lambda x, y: x)
    try:
        return model.predict(ds, verbose=0).reshape(-1).astype(np.float32)
    except tf.errors.OpError as exc:
        # The pipeline's error names neither the file nor the record: decode them one by one
        # (only on this failure path) to find it.
        rec, reason = _first_undecodable(records, size)
        if rec is None:
            raise
        raise BadImageError(rec.id, reason) from exc


def _first_undecodable(records, size):
    """The first record the pipeline's decoder fails on, and TensorFlow's reason; (None, None)."""
    decode = _decoder(np.array([r.image_path for r in records]), size)
    for rec in records:
        try:
            decode(tf.constant(rec.image_path))
        except (tf.errors.OpError, ValueError) as exc:
            return rec, (f"TensorFlow could not decode the image file ({_tf_reason(exc)}). "
                         f"Received: path={rec.image_path!r}")
    return None, None


def _tf_reason(exc):
    """The first line of a TensorFlow error without its node and op decorations."""
    # "{{function_node ...}} Unknown image file format. ... [Op:DecodeImage] name: "
    reason = (getattr(exc, "message", None) or str(exc)).strip().splitlines()[0]
    return re.sub(r"\s*\[Op:.*$", "", re.sub(r"^\{\{.*?\}\}\s*", "", reason))


# --------------------------------------------------------------------------------------------
# Model, optimizer, schedule
# --------------------------------------------------------------------------------------------

@keras.saving.register_keras_serializable(package="dr_saliency")
class WarmupSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to ``peak`` over ``warmup_steps``, then constant or cosine decay to 0."""

    def __init__(self, peak, warmup_steps, total_steps, kind="constant"):
        self.peak = float(peak)
        self.warmup_steps = int(warmup_steps)
        self.total_steps = int(total_steps)
        self.kind = kind

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warm = float(max(self.warmup_steps, 1))
        warmup = self.peak * tf.minimum((step + 1.0) / warm, 1.0)
        if self.kind == "constant":
            return warmup
        progress = tf.clip_by_value((step - self.warmup_steps)
                                    / float(max(self.total_steps - self.warmup_steps, 1)), 0.0, 1.0)
        cosine = 0.5 * self.peak * (1.0 + tf.cos(math.pi * progress))
        return tf.where(step < self.warmup_steps, warmup, cosine)

    def get_config(self):
        return {"peak": self.peak, "warmup_steps": self.warmup_steps,
                "total_steps": self.total_steps, "kind": self.kind}


def make_optimizer(config, steps_per_epoch):
    """The optimizer of ``config`` with its learning-rate schedule."""
    schedule = WarmupSchedule(config.learning_rate, round(config.warmup_epochs * steps_per_epoch),
                              config.epochs * steps_per_epoch, config.schedule)
    if config.optimizer == "sgd":
        return keras.optimizers.SGD(schedule, momentum=0.9, nesterov=True, clipnorm=config.clipnorm)
    return keras.optimizers.Adam(schedule, clipnorm=config.clipnorm)


def get_strategy(name, *, timeout=None):
    """TensorFlow's distribution strategy for ``name`` (no home-made distribution layer).

    ``mirrored``: synchronous data parallelism over the local GPUs (or logical CPUs).
    ``multiworker``: the same across machines, configured by the ``TF_CONFIG`` variable. Build
    it when the workers are all there (:func:`dr_saliency.grader.cluster.meet`): TensorFlow's
    own wait for them cannot be interrupted.

    Args:
        name: one of ``STRATEGIES``.
        timeout: optional float, seconds ``multiworker`` waits for the cluster to form before
            failing (None: for ever, TensorFlow's default).

    Raises:
        ValueError: for an unknown name or a bad ``TF_CONFIG``.
        ClusterTimeoutError: the cluster did not form within ``timeout``.
    """
    if name == "mirrored":
        # All local GPUs; on a machine without GPUs, all logical CPU devices (one unless the
        # process configured several, as the tests do), so the strategy runs anywhere.
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy(devices=[d.name for d in devices])
    if name == "multiworker":
        return _multi_worker_strategy(cluster_lib.this_worker(), timeout)
    if name == "default":
        return tf.distribute.get_strategy()
    raise ValueError(f"Expected strategy in {STRATEGIES}. Received: strategy={name!r}")


def _multi_worker_strategy(worker, timeout):
    """MultiWorkerMirroredStrategy, its cluster wait bounded, SIGTERM left as it was."""
    if worker is not None and len(worker.tasks) > 1 and timeout:
        # The coordination service MultiWorkerMirroredStrategy would configure itself, with
        # a deadline for every task to register (its default waits for ever). There is no
        # public API for it; the strategy reads this setting when it finds it.
        from tensorflow.python.eager import context as tf_context

        ctx = tf_context.context()
        if ctx.coordination_service is None:
            job, index = worker.chief
            ctx.configure_coordination_service(
                service_type="standalone", service_leader=f"/job:{job}/replica:0/task:{index}",
                cluster_register_timeout_in_ms=int(timeout * 1000),
                shutdown_barrier_timeout_in_ms=int(timeout * 1000))
            if hasattr(ctx.coordination_service, "cluster_register_with_barrier"):
                ctx.coordination_service.cluster_register_with_barrier = True
    main = threading.current_thread() is threading.main_thread()
    sigterm = signal.getsignal(signal.SIGTERM) if main else None
    try:
        return tf.distribute.MultiWorkerMirroredStrategy()
    except tf.errors.DeadlineExceededError as exc:
        raise ClusterTimeoutError(
            f"Expected TensorFlow's cluster of TF_CONFIG to form within timeout={timeout:g} s. "
            f"Received: {_tf_reason(exc)}", [], timeout) from None
    finally:
        # TensorFlow installs its own SIGTERM handler (a preemption notice for its
        # checkpointing, unused here) that swallows the signal: give it back its action, so
        # that a kill ends a worker as it ends any other training.
        if sigterm is not None:
            signal.signal(signal.SIGTERM, sigterm)


def build_compiled(config, steps_per_epoch, strategy, *, warm_start=True):
    """Build and compile the grader under ``strategy`` (MSE loss, the configured optimizer);
    with ``config.init_from`` and ``warm_start``, start from that grader's weights (a resumed run
    loads its checkpoint instead, so the file it started from need not be there any more)."""
    with strategy.scope():
        keras.utils.set_random_seed(config.seed)
        net = model_lib.build_model((config.input_size, config.input_size, 3),
                                    weights=None if config.init_from else config.weights,
                                    dropout=config.dropout, width=config.width)
        if config.init_from and warm_start:
            model_lib.copy_grader_weights(net, config.init_from)
        net = model_lib.with_precision(net, config.precision)
        # "mean_squared_error", not "mse": Keras 3 cannot reload an .h5 compiled with the alias.
        net.compile(optimizer=make_optimizer(config, steps_per_epoch), loss="mean_squared_error")
        # Its variables (iterations, momentum) belong to the strategy too: built here, not
        # lazily wherever they are first needed (a resumed run loads them outside the scope).
        net.optimizer.build(net.trainable_variables)
    return net


# --------------------------------------------------------------------------------------------
# Callbacks
# --------------------------------------------------------------------------------------------

class EpochEnd(keras.callbacks.Callback):
    """Validation metrics, checkpoints and the curves figure at the end of every epoch.

    Adds ``val_kappa``, ``val_auc``, ``val_mse``, ``val_accuracy`` and ``lr`` to the epoch logs,
    appends them to ``log.csv``, keeps ``best.weights.h5`` by validation kappa and writes
    ``last.weights.h5`` last, so an interruption loses at most the epoch in progress.
    """

    def __init__(self, run_dir, val_ds, val_labels, best_kappa, on_epoch=None, predict=None):
        super().__init__()
        self.run_dir = run_dir
        self.val_ds = val_ds
        self.val_labels = np.asarray(val_labels)
        self.best_kappa = best_kappa
        self.on_epoch = on_epoch
        # callable(model, dataset) -> predictions; default: Keras' predict under the strategy.
        self.predict = predict

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        if self.predict is None:
            predictions = self.model.predict(self.val_ds, verbose=0).reshape(-1)
        else:
            predictions = np.asarray(self.predict(self.model, self.val_ds)).reshape(-1)
        scores = metrics_lib.grading_metrics(self.val_labels, predictions)
        logs.update({f"val_{k}": v for k, v in scores.items() if k != "n"})
        opt = self.model.optimizer
        logs["lr"] = float(opt.learning_rate.numpy() if hasattr(opt.learning_rate, "numpy")
                           else opt.learning_rate)
        record = {k: float(v) for k, v in logs.items()}
        # The log row goes first, the resume point last: a run killed in between redoes this
        # epoch, and resuming drops log rows past the resume point (see trim_log).
        append_log(self.run_dir, dict(epoch=epoch, **record))
        kappa = scores["kappa"]
        if np.isfinite(kappa) and (self.best_kappa is None or kappa > self.best_kappa):
            self.best_kappa = float(kappa)
            model_lib.save_checkpoint(self.model, os.path.join(self.run_dir, "best.weights.h5"),
                                      epoch=epoch + 1, metrics=record)
        model_lib.save_checkpoint(self.model, os.path.join(self.run_dir, "last.weights.h5"),
                                  epoch=epoch + 1, metrics=dict(record, best_kappa=self.best_kappa))
        if self.on_epoch:
            self.on_epoch(epoch + 1, record)


LOG_FILE = "log.csv"


def append_log(run_dir, row):
    """Append one epoch's row to ``log.csv`` (header written with the first row)."""
    path = os.path.join(run_dir, LOG_FILE)
    new = not os.path.isfile(path)
    with open(path, "a", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


def trim_log(run_dir, epochs):
    """Keep only the rows of the first ``epochs`` epochs in ``log.csv`` (before a resume)."""
    path = os.path.join(run_dir, LOG_FILE)
    if not os.path.isfile(path):
        return
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    kept = [r for r in rows if int(float(r["epoch"])) < epochs]
    tmp = path + ".tmp"
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        if rows:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(kept)
    os.replace(tmp, path)


def read_log(run_dir):
    """The per-epoch log of a run as a dict of column -> list of floats."""
    path = os.path.join(run_dir, LOG_FILE)
    if not os.path.isfile(path):
        return {}
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return {k: [float(r[k]) if r[k] not in ("", "nan") else float("nan") for r in rows]
            for k in (rows[0].keys() if rows else [])}


# --------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------

def is_run_dir(path):
    """True when ``path`` holds a training run that ``--resume`` can continue."""
    return all(os.path.isfile(os.path.join(path, f)) for f in RUN_FILES)


def train(dataset, run_dir, config=None, *, resume=False, skip_bad=False, force=False,
          data_path=None, on_epoch=None, on_progress=None, verbose=None, timeout=CLUSTER_TIMEOUT):
    """Train (or resume training of) the grader on a dataset; write the run folder.

    Args:
        dataset: a dataset from :func:`dr_saliency.fundus.datasets.open_dataset` (records with
            ``image_path``, ``grade``, ``split``).
        run_dir: str, the run folder (created; must not already hold a run unless resuming).
        config: TrainConfig (ignored when resuming: the run's own config.json is used).
        resume: bool, continue the run in ``run_dir`` from its last finished epoch (from epoch 0
            with its own config.json when it was stopped before its first checkpoint), on the
            split it recorded in split.json.
        skip_bad: bool, skip unreadable images (reported) instead of failing. Every image is
            decoded once before training, so a bad file fails at once, by name, not mid-epoch.
        force: resume on a dataset whose fingerprint differs from the run's.
        data_path: optional str recorded in config.json (the CLI passes the DATA argument) with
            the dataset's fingerprint (:func:`dr_saliency.fundus.datasets.dataset_fingerprint`).
        on_epoch: optional callable(epoch, metrics dict) after each epoch.
        on_progress: as :func:`check_files` (while image files are checked).
        verbose: Keras fit verbosity (None: progress bar on a terminal, one line per epoch
            otherwise).
        timeout: float > 0, seconds a worker of a multi-worker training (strategy
            "multiworker" with a ``TF_CONFIG`` cluster) waits for the others to start.

    Returns:
        dict summary: ``epochs`` done, ``best_kappa``, ``best_epoch``, ``skipped`` files,
        ``seconds``, ``model_path``, ``n_train``, ``n_val``; ``worker``, this process's task in a
        multi-worker training ("worker 1"; None otherwise) and ``chief``: False for a worker other
        than the chief, which validates (``best_kappa`` and ``best_epoch`` are None elsewhere)
        and writes ``model_path``.

    The run folder is locked while training (:mod:`dr_saliency.core.locks`): a second train on
    it is refused, naming the first. In a multi-worker training only the chief writes the run
    folder and locks it; every other worker reads it (to resume from the chief's checkpoint)
    and writes nothing.

    Raises:
        ValueError: for a bad config, a folder that already holds a run (without ``resume``) or
            is not a run (with ``resume``), another dataset on resume (``ProvenanceError``),
            unusable data, an out-of-memory batch size, a bad ``TF_CONFIG``, or workers of one
            cluster about to train different things.
        BusyError: another process is training in the folder.
        ClusterTimeoutError: the workers of a multi-worker training did not all come within
            ``timeout`` seconds.
    """
    run_dir = os.fspath(run_dir)
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise ValueError(f"Expected a run folder. Received: run_dir={run_dir!r}, a file")
    if resume and not is_run_dir(run_dir):
        raise ValueError("Expected a training run folder (with config.json) to resume. "
                         f"Received: run_dir={run_dir!r}")
    strategy = (_saved_run(run_dir)["config"].get("strategy") if resume
                else (config or TrainConfig()).strategy)
    worker = cluster_lib.this_worker() if strategy == "multiworker" else None
    if worker is not None and not worker.is_chief:
        # Another worker of a cluster writes nothing (the chief writes the run), so it takes
        # no lock: two processes for one task are refused when the workers meet.
        return _train(dataset, run_dir, config, resume=resume, skip_bad=skip_bad, force=force,
                      data_path=data_path, on_epoch=on_epoch, on_progress=on_progress,
                      verbose=verbose, worker=worker, timeout=timeout)
    os.makedirs(run_dir, exist_ok=True)
    with lock_folder(run_dir, "a training run"):
        return _train(dataset, run_dir, config, resume=resume, skip_bad=skip_bad, force=force,
                      data_path=data_path, on_epoch=on_epoch, on_progress=on_progress,
                      verbose=verbose, worker=worker, timeout=timeout)


def _saved_run(run_dir):
    """The config.json record of a run folder."""
    with open(os.path.join(run_dir, "config.json"), encoding="utf-8") as f:
        return json.load(f)


def _train(dataset, run_dir, config, *, resume, skip_bad, force, data_path, on_epoch, on_progress,
           verbose, worker, timeout):
    """:func:`train` with the run folder locked (by the chief: ``worker`` None or its chief)."""
    from dr_saliency.fundus.datasets import dataset_fingerprint

    chief = worker is None or worker.is_chief
    config_path = os.path.join(run_dir, "config.json")
    last_path = os.path.join(run_dir, "last.weights.h5")
    started = os.path.isfile(last_path)
    saved = None
    if resume:
        saved = _saved_run(run_dir)
        config = TrainConfig(**saved["config"])
    else:
        config = config or TrainConfig()
        if started:
            raise RunExistsError("Expected a folder without a training run (or resume=True to "
                                 f"continue it). Received: run_dir={run_dir!r}", run_dir)
        # A folder with config.json but no checkpoint was interrupted before its first epoch
        # ended: nothing was trained, so it is started afresh with this config.
    config.validate()
    fingerprint = dataset_fingerprint(dataset)
    if saved is not None and saved.get("data_fingerprint") not in (None, fingerprint) and not force:
        raise ProvenanceError(
            "Expected the dataset this run was trained on (or force=True). Received: a dataset "
            f"whose fingerprint {fingerprint[:12]} differs from the run's "
            f"{saved['data_fingerprint'][:12]} (the run's data: {saved.get('data')!r})",
            ["data"])

    graded = [r for r in dataset if r.grade is not None]
    graded, bad = check_files(graded, skip_bad=skip_bad, on_progress=on_progress)
    split_path = os.path.join(run_dir, "split.json")
    keep_split = resume and os.path.isfile(split_path)
    if keep_split:
        # The split is made once and kept: a resumed run trains and validates on the same images.
        train_recs, val_recs = _stored_split(split_path, graded, {r.id for r in dataset})
    else:
        train_recs, val_recs = split_records(graded, val_fraction=config.val_fraction,
                                             seed=config.seed)
    val_labels = [r.grade for r in val_recs]
    if not any(g >= metrics_lib.REFERABLE_STAGE for g in val_labels):
        print("Note: the validation split has no referable image (stage >= 2): its AUC is "
              "undefined and logged as NaN.", file=sys.stderr)

    steps = config.steps_per_epoch or max(1, len(train_recs) // config.batch_size)
    if worker is not None:
        # Every worker must run the very same steps: meet the others (interruptibly, with a
        # deadline) and compare, before TensorFlow's own wait for them.
        agreed = _what_is_trained(config, fingerprint, train_recs, val_recs, steps,
                                  _checkpoint_meta(last_path)["epoch"], worker)
        cluster_lib.meet(worker, agreed, timeout=timeout, on_wait=cluster_lib.print_wait)
    strategy = get_strategy(config.strategy, timeout=timeout)
    if chief and not resume:
        write_json(config_path,
                   {"config": dataclasses.asdict(config), "data": data_path,
                    "data_fingerprint": fingerprint,
                    **({"init_sha256": file_sha256(config.init_from)} if config.init_from else {}),
                    "n_train": len(train_recs), "n_val": len(val_recs)})
    if chief and not keep_split:
        write_json(split_path,
                   {"train": [r.id for r in train_recs], "val": [r.id for r in val_recs]})

    net = build_compiled(config, steps, strategy, warm_start=not started)
    initial_epoch, best_kappa = 0, None
    if started:  # without a checkpoint, a resumed run starts at epoch 0
        meta = model_lib.load_checkpoint(net, last_path)
        initial_epoch = int(meta.get("epoch") or 0)
        best_kappa = meta.get("metrics", {}).get("best_kappa")

    train_ds = make_dataset(train_recs, config, training=True, seed=config.seed + initial_epoch)
    val_ds = make_dataset(val_recs, config, training=False)
    callbacks = [keras.callbacks.TerminateOnNaN()]
    if chief:
        trim_log(run_dir, initial_epoch)
        callbacks.append(EpochEnd(run_dir, val_ds, val_labels, best_kappa, on_epoch,
                                  predict=None if worker is None else _PredictHere()))
    if verbose is None:
        verbose = 1 if sys.stdout.isatty() else 2
    start = time.time()
    if initial_epoch < config.epochs:
        fit = net.fit if worker is None else functools.partial(_fit_across_workers, net, strategy)
        try:
            with _peers_kept(worker):
                fit(train_ds, epochs=config.epochs, initial_epoch=initial_epoch,
                    steps_per_epoch=steps, callbacks=callbacks, verbose=verbose, shuffle=False)
        except tf.errors.ResourceExhaustedError as exc:
            raise OutOfMemoryError(f"Out of memory at batch size {config.batch_size}. "
                                   f"Received: batch_size={config.batch_size}",
                                   config.batch_size) from exc
    seconds = time.time() - start

    model_path = os.path.join(run_dir, "model.h5")
    best_path = os.path.join(run_dir, "best.weights.h5")
    best_meta = {"epoch": None, "metrics": {}}  # as the other workers know it: the chief validates
    if chief:
        if os.path.isfile(best_path):
            best_meta = model_lib.load_checkpoint(net, best_path)
        # else every epoch's kappa was undefined: the last weights stay
        model_lib.export_model(net, model_path)
        write_curves(run_dir)
    if worker is not None:
        with _peers_kept(worker):
            _together(strategy)
    return {"epochs": config.epochs, "best_kappa": best_meta["metrics"].get("val_kappa"),
            "best_epoch": best_meta["epoch"], "skipped": bad, "seconds": seconds,
            "model_path": model_path, "n_train": len(train_recs), "n_val": len(val_recs),
            "chief": chief, "worker": None if worker is None else worker.name}


def _checkpoint_meta(path):
    """The epoch and metrics recorded beside a checkpoint (epoch None without one)."""
    try:
        with open(path + ".json", encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return {"epoch": None, "metrics": {}}


def _what_is_trained(config, fingerprint, train_recs, val_recs, steps, epoch, worker):
    """What every worker of a cluster must agree on before training together."""
    ids = json.dumps([[r.id for r in train_recs], [r.id for r in val_recs]]).encode()
    return {"config": dataclasses.asdict(config), "data_fingerprint": fingerprint,
            "split_sha256": hashlib.sha256(ids).hexdigest(), "steps_per_epoch": steps,
            "resume_epoch": epoch, "cluster": {k: list(v) for k, v in worker.cluster.items()}}


def _fit_across_workers(net, strategy, train_ds, *, epochs, initial_epoch, steps_per_epoch,
                        callbacks, verbose, shuffle=False):
    """``net.fit(train_ds, ...)`` under MultiWorkerMirroredStrategy.

    Keras 3 does not support this strategy in ``fit`` (keras-team/keras#20585: the reductions of
    its first batch and of its logs fail across workers), so the loop is written out as
    TensorFlow's guide to custom training loops with MultiWorkerMirroredStrategy does: every
    replica runs Keras' own ``train_step`` on its part of each global batch (the optimizer
    all-reduces the gradients, as in ``fit``), and the epoch's loss is read from the model's
    metrics, which sum over all replicas.

    Args:
        net: a compiled keras.Model built under ``strategy``.
        strategy: tf.distribute.MultiWorkerMirroredStrategy.
        train_ds: infinite tf.data.Dataset of global batches.
        epochs, initial_epoch, steps_per_epoch, callbacks, verbose: as ``keras.Model.fit``.
        shuffle: ignored (the dataset shuffles), as ``fit`` ignores it for datasets.
    """
    options = tf.data.Options()
    # Each worker takes its part of every global batch. Said explicitly: the default tries to
    # split the input by file first, which a dataset of decoded images does not allow, and warns.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    batches = iter(strategy.experimental_distribute_dataset(train_ds.with_options(options)))

    @tf.function
    def train_step(batches):
        strategy.run(net.train_step, args=(next(batches),))

    callbacks = keras.callbacks.CallbackList(callbacks, add_progbar=verbose != 0, model=net,
                                             verbose=verbose, epochs=epochs,
                                             steps=steps_per_epoch)
    net.stop_training = False
    callbacks.on_train_begin()
    for epoch in range(initial_epoch, epochs):
        net.reset_metrics()
        callbacks.on_epoch_begin(epoch)
        for step in range(steps_per_epoch):
            callbacks.on_train_batch_begin(step)
            train_step(batches)
            logs = {m.name: float(m.result()) for m in net.metrics}
            callbacks.on_train_batch_end(step, logs)
            if net.stop_training:
                break
        callbacks.on_epoch_end(epoch, logs)
        if net.stop_training:
            break
    callbacks.on_train_end()


@contextlib.contextmanager
def _peers_kept(worker):
    """Turn the loss of a worker during multi-worker training into one line: TensorFlow aborts
    the collectives of the others (with its gRPC details) once it stops answering."""
    if worker is None:
        yield
        return
    try:
        yield
    except (tf.errors.UnavailableError, tf.errors.CancelledError, tf.errors.AbortedError,
            tf.errors.DeadlineExceededError, tf.errors.InternalError) as exc:
        raise ConnectionError(
            f"Expected every worker of TF_CONFIG to keep training ({worker.name} here). "
            f"Received: {_tf_reason(exc)} (start every worker again with resume=True to "
            "continue from the last finished epoch)") from None


def _together(strategy):
    """Return once every worker of ``strategy`` has come here (an all-reduce of nothing).

    The workers leave together: a worker that ended while the chief still validates or writes
    the model would stop its heartbeats, which the chief's TensorFlow reports as a crash.
    """
    @tf.function
    def all_reduce():
        return strategy.reduce("SUM", strategy.run(lambda: tf.ones([])), axis=None)

    all_reduce()


class _PredictHere:
    """callable(model, ds) -> (N,) float32: ``model``'s predictions on ``ds`` computed by this
    process alone, with no collective. The chief of a multi-worker training validates with it:
    Keras' ``predict`` would spread the batches over all workers, which (not validating) would
    never join in. The forward pass is traced once for the run, not once per epoch."""

    def __init__(self):
        self._forward = None

    def __call__(self, model, ds):
        if self._forward is None:
            self._forward = tf.function(lambda x: model(x, training=False),
                                        reduce_retracing=True)
        return np.concatenate([np.asarray(self._forward(x)).reshape(-1)
                               for x, _ in ds]).astype(np.float32)


def _stored_split(path, graded, all_ids):
    """The (train, val) records of a run's split.json among the dataset's usable records
    ``graded``; an id not in the dataset at all (``all_ids``) is an error."""
    with open(path, encoding="utf-8") as f:
        split = json.load(f)
    by_id = {r.id: r for r in graded}
    missing = [i for i in split["train"] + split["val"] if i not in all_ids]
    if missing:
        raise ProvenanceError("Expected every image of the run's split in the dataset. Received: "
                              f"{len(missing)} missing, e.g. {missing[:3]}", ["split"])
    return ([by_id[i] for i in split["train"] if i in by_id],
            [by_id[i] for i in split["val"] if i in by_id])


def write_curves(run_dir):
    """Write ``curves.png`` of the run's log (nothing when the log is empty)."""
    log = read_log(run_dir)
    if not log:
        return None
    from dr_saliency.figures import plots
    fig = plots.training_curves(log)
    path = os.path.join(run_dir, "curves.png")
    write_figure(fig, path, dpi=120)
    return path
