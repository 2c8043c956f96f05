"""Tests of dr_saliency.grader.train and dr_saliency.grader.evaluate on tiny folder datasets."""

import json
import os
import subprocess
import sys
import textwrap

import cv2
import numpy as np
import pytest

from dr_saliency.grader import model as model_lib
from dr_saliency.grader import train as train_lib
from dr_saliency.grader import config as train_config
from dr_saliency.grader.config import TrainConfig
from dr_saliency.core.errors import (BadImageError, BusyError, EmptySplitError, OutOfMemoryError,
                                    ProvenanceError, RunExistsError)
from dr_saliency.fundus.datasets import open_dataset, select_records
from dr_saliency.fundus.datasets.folder import write_labels, write_sample

TINY = dict(input_size=128, width=1 / 16, weights=None, epochs=2, batch_size=8,
            learning_rate=3e-3, warmup_epochs=1.0, clipnorm=1.0, schedule="cosine")


def make_folder(root, n=40, size=128, splits=True, seed=0, stages=None):
    """A folder dataset whose stage is the number of dark dots (4 per stage) on a disc."""
    rng = np.random.default_rng(seed)
    stages = [i % 5 for i in range(n)] if stages is None else stages
    n = len(stages)
    rows = []
    for i, stage in enumerate(stages):
        img = np.zeros((size, size, 3), np.uint8)
        cv2.circle(img, (size // 2, size // 2), size // 2 - 2, (180, 80, 40), -1)
        for _ in range(stage * 4):
            r, c = rng.integers(size // 4, 3 * size // 4, 2)
            cv2.circle(img, (int(c), int(r)), 3, (60, 10, 10), -1)
        image_id = f"img_{i:03d}"
        write_sample(str(root), image_id, img)
        row = {"image": image_id, "level": stage}
        if splits:
            row["split"] = "train" if i < 0.6 * n else ("val" if i < 0.8 * n else "test")
        rows.append(row)
    write_labels(str(root), rows)
    return str(root)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("tiny"))


class Rec:
    def __init__(self, id, grade, split=None, image_path=""):
        self.id, self.grade, self.split, self.image_path = id, grade, split, image_path


def test_min_input_size_agrees_with_model():
    from dr_saliency.grader import model
    assert train_config.MIN_INPUT_SIZE == model.MIN_INPUT_SIZE


@pytest.mark.parametrize("field,value,match", [
    ("input_size", 64, r"input_size >= 128.*Received: input_size=64"),
    ("epochs", 0, r"epochs >= 1.*Received: epochs=0"),
    ("optimizer", "rmsprop", r"optimizer in .*Received: optimizer='rmsprop'"),
    ("dropout", 1.0, r"dropout in \[0, 1\).*Received: dropout=1.0"),
    ("strategy", "horovod", r"Received: strategy='horovod'"),
    ("precision", "fp16", r"precision in \('fp32', 'bf16'\).*Received: precision='fp16'"),
])
def test_config_validation(field, value, match):
    config = TrainConfig(**{field: value})
    with pytest.raises(ValueError, match=match):
        config.validate()


def test_split_records_uses_split_column_and_ignores_test():
    recs = [Rec(f"{i}", i % 5, "train" if i < 10 else ("val" if i < 15 else "test"))
            for i in range(20)]
    train, val = train_lib.split_records(recs)
    assert [r.id for r in train] == [str(i) for i in range(10)]
    assert [r.id for r in val] == [str(i) for i in range(10, 15)]


def test_split_records_stratified_fraction_without_split():
    recs = [Rec(f"{i}", i % 5) for i in range(100)]
    train, val = train_lib.split_records(recs, val_fraction=0.2, seed=1)
    assert len(val) == 20 and len(train) == 80
    assert sorted(np.bincount([r.grade for r in val]).tolist()) == [4] * 5
    again = train_lib.split_records(recs, val_fraction=0.2, seed=1)[1]
    assert [r.id for r in again] == [r.id for r in val]


@pytest.mark.parametrize("recs,match", [
    ([Rec("a", None), Rec("b", None)], r"graded images.*Received: a dataset with no grades"),
    ([Rec("a", 1, "train"), Rec("b", 1, "train"), Rec("c", 2, "val")],
     r"at least two stages.*Received: only stage \[1\]"),
    ([Rec("a", 1, "train"), Rec("b", 2, "train"), Rec("c", 2, "test")],
     r"validation images.*Received: none"),
    ([Rec("a", 1, "val"), Rec("b", 2, "test")], r"training images.*Received: none"),
])
def test_split_records_errors(recs, match):
    with pytest.raises(ValueError, match=match):
        train_lib.split_records(recs)


def test_check_files_skips_or_names_bad_files(tmp_path):
    root = make_folder(tmp_path / "d", n=6, splits=False)
    bad = os.path.join(root, "images", "img_002.png")
    data = open(bad, "rb").read()
    open(bad, "wb").write(data[: len(data) // 3])
    recs = list(open_dataset(root))
    good, skipped = train_lib.check_files(recs, skip_bad=True)
    assert len(good) == 5
    assert skipped[0][0] == bad and "img_002.png" in skipped[0][1]
    with pytest.raises(BadImageError, match=r"img_002: .*img_002.png") as info:
        train_lib.check_files(recs)
    assert info.value.image == "img_002"


@pytest.mark.parametrize("balance", [True, False])
def test_balancing_resamples_rare_stages(tmp_path, balance):
    root = make_folder(tmp_path / "d", stages=[0] * 20 + [1] * 3 + [4] * 3, splits=False)
    config = TrainConfig(**dict(TINY, augment=False, balance=balance))
    ds = train_lib.make_dataset(list(open_dataset(root)), config, training=True, seed=0)
    labels = np.concatenate([y.numpy().reshape(-1) for _, y in ds.take(50)]).astype(int)
    counts = np.bincount(labels, minlength=5)
    if balance:  # 400 draws, 133 expected for each of the three stages present
        assert counts[[0, 1, 4]].min() > 100, counts
    else:  # as in the data: 20/26 of the draws are stage 0
        assert counts[0] > 250, counts
    assert counts[[2, 3]].sum() == 0


def test_make_dataset_shapes_and_balance(tiny_data):
    recs = [r for r in open_dataset(tiny_data) if r.split == "train"]
    config = TrainConfig(**TINY)
    ds = train_lib.make_dataset(recs, config, training=True, seed=0)
    labels = []
    for x, y in ds.take(25):
        assert tuple(x.shape) == (8, 128, 128, 3) and x.dtype.name == "float32"
        labels.extend(y.numpy().reshape(-1).astype(int).tolist())
    counts = np.bincount(labels, minlength=5)
    assert counts.min() >= 25  # 200 draws, 40 expected per stage
    ev = train_lib.make_dataset(recs, config, training=False)
    got = np.concatenate([y.numpy().reshape(-1) for _, y in ev])
    np.testing.assert_array_equal(got, [r.grade for r in recs])


def test_warmup_schedule_values():
    s = train_lib.WarmupSchedule(1.0, warmup_steps=10, total_steps=110, kind="cosine")
    assert float(s(0)) == pytest.approx(0.1)
    assert float(s(9)) == pytest.approx(1.0)
    assert float(s(10)) == pytest.approx(1.0)
    assert float(s(60)) == pytest.approx(0.5)
    assert float(s(110)) == pytest.approx(0.0, abs=1e-7)
    c = train_lib.WarmupSchedule(0.5, warmup_steps=0, total_steps=10, kind="constant")
    assert float(c(0)) == float(c(9)) == 0.5


@pytest.mark.slow
def test_train_writes_run_folder_and_refuses_to_overwrite(tiny_data, tmp_path):
    run = str(tmp_path / "run")
    summary = train_lib.train(open_dataset(tiny_data), run, TrainConfig(**TINY),
                              verbose=0)
    for name in ("config.json", "split.json", "last.weights.h5", "last.weights.h5.json",
                 "log.csv", "curves.png", "model.h5"):
        assert os.path.isfile(os.path.join(run, name)), name
    assert summary["n_train"] == 24 and summary["n_val"] == 8
    log = train_lib.read_log(run)
    assert log["epoch"] == [0.0, 1.0]
    for key in ("loss", "val_kappa", "val_auc", "val_mse", "val_accuracy", "lr"):
        assert len(log[key]) == 2
    split = json.load(open(os.path.join(run, "split.json")))
    assert not set(split["train"]) & set(split["val"])
    before = os.path.getmtime(os.path.join(run, "last.weights.h5"))
    with pytest.raises(RunExistsError, match=r"without a training run \(or resume=True"):
        train_lib.train(open_dataset(tiny_data), run, TrainConfig(**TINY))
    assert os.path.getmtime(os.path.join(run, "last.weights.h5")) == before


@pytest.mark.slow
def test_bfloat16_training_writes_a_float32_model(tiny_data, tmp_path):
    run = str(tmp_path / "run")
    config = TrainConfig(**dict(TINY, epochs=1, precision="bf16"))
    summary = train_lib.train(open_dataset(tiny_data), run, config, verbose=0)
    assert json.load(open(os.path.join(run, "config.json")))["config"]["precision"] == "bf16"
    net = model_lib.load_model(summary["model_path"])
    assert {layer.dtype_policy.name for layer in net.layers} == {"float32"}
    assert np.isfinite(train_lib.read_log(run)["loss"]).all()


@pytest.mark.slow
def test_interrupted_run_resumes_exactly(tiny_data, tmp_path):
    run = str(tmp_path / "run")
    config = TrainConfig(**dict(TINY, epochs=3))

    def stop_after_two(epoch, metrics):
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_lib.train(open_dataset(tiny_data), run, config, on_epoch=stop_after_two, verbose=0)
    meta = json.load(open(os.path.join(run, "last.weights.h5.json")))
    assert meta["epoch"] == 2
    summary = train_lib.train(open_dataset(tiny_data), run, resume=True, verbose=0)
    assert summary["epochs"] == 3
    assert train_lib.read_log(run)["epoch"] == [0.0, 1.0, 2.0]
    # The optimizer continued: 3 epochs x 3 steps (24 images / batch 8) iterations in total.
    from dr_saliency.grader import model as model_lib
    net = train_lib.build_compiled(config, 3, train_lib.get_strategy("default"))
    model_lib.load_checkpoint(net, os.path.join(run, "last.weights.h5"))
    assert int(net.optimizer.iterations.numpy()) == 9


def test_resume_on_a_folder_that_is_not_a_run(tiny_data, tmp_path):
    with pytest.raises(ValueError, match=r"training run folder.*to resume.*Received: run_dir="):
        train_lib.train(open_dataset(tiny_data), str(tmp_path), resume=True)


@pytest.mark.slow
def test_evaluate_writes_report(tiny_data, tmp_path):
    from dr_saliency.grader import evaluate as evaluate_lib
    from dr_saliency.grader import model as model_lib
    run = str(tmp_path / "run")
    train_lib.train(open_dataset(tiny_data), run, TrainConfig(**dict(TINY, epochs=1)),
                    verbose=0)
    net = model_lib.load_model(os.path.join(run, "model.h5"))
    out = str(tmp_path / "eval")
    report = evaluate_lib.evaluate(net, open_dataset(tiny_data), out, n_boot=50)
    assert report["n_images"] == 8 and report["split"] == "test"
    for name in ("evaluation.json", "predictions.csv", "roc.png", "confusion.png"):
        assert os.path.isfile(os.path.join(out, name)), name
    with pytest.raises(EmptySplitError, match=r"split 'val'.*Received: split='val'") as info:
        select_records([Rec("a", 1, "train"), Rec("b", None, "val")], split="val", graded=True)
    assert "splits present: train" in str(info.value) and info.value.present == ("train",)


@pytest.mark.slow
def test_mirrored_strategy_on_two_logical_cpus(tiny_data, tmp_path):
    script = textwrap.dedent(f"""
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from dr_saliency.grader import train as t
        from dr_saliency.fundus.datasets import open_dataset
        strategy = t.get_strategy("mirrored")
        assert strategy.num_replicas_in_sync == 2, strategy.num_replicas_in_sync
        config = t.TrainConfig(**{dict(TINY, epochs=1, strategy="mirrored")!r})
        s = t.train(open_dataset({tiny_data!r}), {str(tmp_path / "run")!r}, config, verbose=0)
        print("REPLICAS", strategy.num_replicas_in_sync, "EPOCHS", s["epochs"])
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "REPLICAS 2 EPOCHS 1" in proc.stdout
    assert os.path.isfile(tmp_path / "run" / "model.h5")


def test_out_of_memory_suggests_a_smaller_batch(tiny_data, tmp_path, monkeypatch):
    from dr_saliency.core._tf import keras, tf

    def oom(self, *args, **kwargs):
        raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor")

    monkeypatch.setattr(keras.Model, "fit", oom)
    with pytest.raises(OutOfMemoryError, match=r"Out of memory at batch size 8") as info:
        train_lib.train(open_dataset(tiny_data), str(tmp_path / "run"),
                        TrainConfig(**TINY), verbose=0)
    assert info.value.batch_size == 8 and info.value.suggested == 4


@pytest.mark.slow
def test_validation_without_referable_images_logs_nan_auc(tmp_path, capsys):
    # Training images of every stage; validation images of stages 0 and 1 only.
    stages = [0, 1, 2, 3, 4] * 4 + [0, 1, 0, 1]
    root = make_folder(tmp_path / "d", stages=stages, splits=False)
    rows = open(os.path.join(root, "labels.csv")).read().splitlines()
    out = [rows[0] + ",split"] + [r + (",train" if i < 20 else ",val")
                                   for i, r in enumerate(rows[1:])]
    open(os.path.join(root, "labels.csv"), "w").write("\n".join(out) + "\n")
    run = str(tmp_path / "run")
    train_lib.train(open_dataset(root), run, TrainConfig(**dict(TINY, epochs=1)),
                    verbose=0)
    assert "no referable image" in capsys.readouterr().err
    assert np.isnan(train_lib.read_log(run)["val_auc"][0])


def test_profiles_are_valid_configs_and_reference_is_the_papers_input_size():
    for name, values in train_config.PROFILES.items():
        TrainConfig(**values).validate()
    reference = TrainConfig(**train_config.REFERENCE_PROFILE)
    assert reference.input_size == 512 and reference.weights is None
    from dr_saliency.jobs.demo import PROFILES as DEMO_PROFILES

    assert DEMO_PROFILES["reference"]["size"] == reference.input_size
    assert DEMO_PROFILES["reference"]["train"] is train_config.REFERENCE_PROFILE


@pytest.mark.slow
def test_a_run_stopped_before_its_first_checkpoint_is_no_dead_end(tiny_data, tmp_path,
                                                                  monkeypatch):
    run = str(tmp_path / "run")
    config = TrainConfig(**dict(TINY, epochs=1))

    class Killed(train_lib.keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            raise KeyboardInterrupt  # as Ctrl-C during epoch 1

    with monkeypatch.context() as patch:
        # Stopped during epoch 1: config.json and split.json are written, no checkpoint.
        patch.setattr(train_lib, "EpochEnd", lambda *args, **kwargs: Killed())
        with pytest.raises(KeyboardInterrupt):
            train_lib.train(open_dataset(tiny_data), run, config, verbose=0)
    assert os.path.isfile(os.path.join(run, "config.json"))
    assert not os.path.isfile(os.path.join(run, "last.weights.h5"))
    # The same command starts it afresh; --resume starts it from its own config.json.
    resumed = train_lib.train(open_dataset(tiny_data), run, resume=True, verbose=0)
    assert resumed["epochs"] == 1 and train_lib.read_log(run)["epoch"] == [0.0]
    again = str(tmp_path / "again")
    os.makedirs(again)
    with open(os.path.join(again, "config.json"), "w") as f:
        f.write(open(os.path.join(run, "config.json")).read())
    summary = train_lib.train(open_dataset(tiny_data), again, config, verbose=0)
    assert summary["epochs"] == 1


@pytest.mark.slow
def test_resume_keeps_the_split_and_refuses_other_data(tiny_data, tmp_path):
    run = str(tmp_path / "run")
    config = TrainConfig(**dict(TINY, epochs=1))
    train_lib.train(open_dataset(tiny_data), run, config, verbose=0)
    recorded = json.load(open(os.path.join(run, "config.json")))
    assert len(recorded["data_fingerprint"]) == 64
    split = json.load(open(os.path.join(run, "split.json")))
    # Another dataset (same ids, other pictures): refused by name, unless forced.
    other = make_folder(tmp_path / "other", seed=7)
    with pytest.raises(ProvenanceError, match=r"Expected the dataset this run was trained on.*"
                                              r"fingerprint .* differs from the run's"):
        train_lib.train(open_dataset(other), run, resume=True, verbose=0)
    # The stored split is reused, not recomputed (here: a different val_fraction cannot move it).
    with open(os.path.join(run, "config.json"), "w") as f:
        json.dump(dict(recorded, config=dict(recorded["config"], val_fraction=0.5, epochs=2)), f)
    summary = train_lib.train(open_dataset(tiny_data), run, resume=True, verbose=0)
    assert summary["n_train"] == len(split["train"]) and summary["n_val"] == len(split["val"])
    assert json.load(open(os.path.join(run, "split.json"))) == split


def test_a_second_train_on_one_run_folder_is_refused(tiny_data, tmp_path):
    from dr_saliency.core.locks import lock_folder

    run = tmp_path / "run"
    run.mkdir()
    with lock_folder(str(run), "a training run"):
        with pytest.raises(BusyError, match=rf"no other process is writing.*process "
                                            rf"{os.getpid()} on "):
            train_lib.train(open_dataset(tiny_data), str(run), TrainConfig(**TINY), verbose=0)


def test_warm_start_copies_a_graders_weights_and_refuses_another_architecture(tmp_path):
    from dr_saliency.grader import model as model_lib
    source = model_lib.build_model((128, 128, 3), weights=None, width=1 / 16)
    for v in source.weights:
        v.assign(np.full(v.shape, 0.25, np.float32))
    path = str(tmp_path / "grader.h5")
    model_lib.export_model(source, path)
    config = TrainConfig(**dict(TINY, init_from=path))
    net = train_lib.build_compiled(config, 3, train_lib.get_strategy("default"))
    assert all(np.all(v.numpy() == 0.25) for v in net.weights if "optimizer" not in v.path)
    cold = train_lib.build_compiled(config, 3, train_lib.get_strategy("default"), warm_start=False)
    assert not all(np.all(v.numpy() == 0.25) for v in cold.weights)
    wider = TrainConfig(**dict(TINY, width=1 / 8, init_from=path))
    with pytest.raises(ValueError, match=r"same architecture to start from \(input 128 px.*"
                                         r"Received: init_from=.*grader.h5', input 128 px, layers"):
        train_lib.build_compiled(wider, 3, train_lib.get_strategy("default"))
