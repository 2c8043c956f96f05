"""Evaluation of a trained grader on a dataset split: metrics JSON, ROC and confusion figures;
sharded (each shard grades its own images) and merged back into one evaluation."""

import csv
import io
import os

import numpy as np

from dr_saliency.core.errors import BadImageError
from dr_saliency.core.files import read_json, write_figure, write_json, write_text
from dr_saliency.core.shards import check_shards, parse_shard, select_shard
from dr_saliency.figures import plots
from dr_saliency.fundus.datasets import select_records
from dr_saliency.grader import metrics as metrics_lib


def _check_count(value, name, what):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"Expected an int {name} >= 1 ({what}). Received: {name}={value!r}")


#: A sharded evaluation's record of its predictions, written last (its done-marker).
SHARD_FILE = "shard.json"


def evaluate(model, dataset, out_dir, *, split="test", batch_size=16, n_boot=1000, seed=0,
             skip_bad=False, on_progress=None, shard=None, params=None):
    """Grade a split of ``dataset`` with ``model`` and write the evaluation to ``out_dir``.

    Every image is decoded once first, so that an unreadable file, or one whose size is not the
    model's input (a raw photograph, not preprocessed), fails at once and by name instead of
    mid-prediction or, worse, being resized and graded silently.

    Writes ``predictions.csv`` (image, level, prediction; CSV-quoted), ``roc.png`` and
    ``confusion.png``, then ``evaluation.json`` (metrics, 95% bootstrap intervals of kappa and
    AUC, confusion matrix, per-stage error, ROC, the skipped images) last, so that its presence
    means the evaluation is complete. Each file is written atomically.

    With ``shard``, only the images that shard owns (:mod:`dr_saliency.core.shards`) are graded
    and no metrics are computed (a shard's are not the evaluation's): ``predictions.csv`` and
    then ``shard.json`` (the shard, ``params``, and every prediction at full precision with its
    image's position in the split) are written; :func:`merge_evaluations` joins the N shards
    into the evaluation an unsharded run writes, number for number.

    Args:
        model: keras.Model (e.g. ``dr_saliency.grader.model.load_model("run/model.h5")``).
        dataset: a dataset from ``open_dataset``.
        out_dir: str.
        split: one of :data:`dr_saliency.fundus.datasets.SPLITS`.
        batch_size: int >= 1.
        n_boot: int >= 1, bootstrap resamples.
        seed: int.
        skip_bad: bool, skip unreadable or wrongly sized images (listed in the report's
            ``skipped``) instead of failing.
        on_progress: as :func:`dr_saliency.grader.train.check_files` (while image files are
            checked).
        shard: optional :class:`~dr_saliency.core.shards.Shard` or ``"K/N"``.
        params: optional dict recorded as ``params`` (what made the evaluation: the model's
            SHA-256, the data's fingerprint); the shards of one evaluation must agree on it.

    Returns:
        dict, the content of ``evaluation.json`` (of ``shard.json`` with ``shard``);
        ``skipped`` is a list of ``{"image", "path", "reason"}``.

    Raises:
        ValueError: for a batch size or ``n_boot`` below 1, or a non-bool ``skip_bad``; when
            every image of the split was skipped (unsharded).
        EmptySplitError: no graded image in ``split``.
        BadImageError: an unreadable image (unless ``skip_bad``).
        ImageSizeError: an image whose size is not the model's input (unless ``skip_bad``).
    """
    from dr_saliency.grader.train import check_files, predict_records

    _check_count(batch_size, "batch_size", "images per prediction batch")
    _check_count(n_boot, "n_boot", "bootstrap resamples")
    if not isinstance(skip_bad, bool):
        raise TypeError(f"Expected a bool. Received: skip_bad={skip_bad!r}")
    if params is not None and not isinstance(params, dict):
        raise TypeError(f"Expected params as a dict or None. Received: params={params!r}")
    shard = None if shard is None else parse_shard(shard)

    everything = select_records(dataset, split=split, graded=True)
    position = {r.id: k for k, r in enumerate(everything)}
    records = select_shard(everything, shard)
    size = model.input_shape[1]
    by_path = {r.image_path: r for r in records}
    good, bad = check_files(records, skip_bad=skip_bad, on_progress=on_progress,
                            size=None if size is None else int(size))
    skipped = [{"image": by_path[path].id, "path": path, "reason": message}
               for path, message in bad]
    predictions = np.zeros(0, np.float32)
    while good or shard is None:
        if not good:
            raise ValueError(f"Expected at least one usable image in split {split!r}. "
                             f"Received: {len(records)} image(s), all skipped as bad")
        try:
            predictions = predict_records(model, good, batch_size=int(batch_size))
            break
        except BadImageError as exc:
            # An image OpenCV read but TensorFlow cannot: rare, so one retry per such image.
            if not skip_bad:
                raise
            rec = next(r for r in good if r.id == exc.image)
            skipped.append({"image": rec.id, "path": rec.image_path, "reason": exc.reason})
            good = [r for r in good if r is not rec]

    ids, labels = [r.id for r in good], np.array([r.grade for r in good])
    if shard is None:
        return write_evaluation(out_dir, ids, labels, predictions, split=split, skipped=skipped,
                                n_boot=n_boot, seed=seed, params=params)
    os.makedirs(out_dir, exist_ok=True)
    _write_predictions(out_dir, ids, labels, predictions)
    record = {"shard": shard.to_params(), "params": params or {}, "split": split,
              "n_boot": int(n_boot), "seed": seed, "n_selected": len(everything),
              "predictions": [{"image": i, "level": int(level), "prediction": float(p),
                               "position": position[i]}
                              for i, level, p in zip(ids, labels, predictions)],
              "skipped": [{**entry, "position": position[entry["image"]]} for entry in skipped],
              "n_images": len(ids)}
    write_json(os.path.join(out_dir, SHARD_FILE), record)  # last: the shard's done-marker
    return record


def write_evaluation(out_dir, ids, labels, predictions, *, split, skipped=(), n_boot=1000, seed=0,
                     params=None):
    """Metrics of ``predictions`` against ``labels`` and the files of an evaluation folder.

    Args:
        out_dir: str, created when missing.
        ids: list of N image ids; labels: (N,) int stages; predictions: (N,) float32.
        split, skipped, n_boot, seed, params: as :func:`evaluate` (recorded).

    Returns:
        dict, the content of ``evaluation.json`` (written last).
    """
    report = metrics_lib.evaluation_report(labels, predictions, n_boot=int(n_boot), seed=seed)
    report.update(split=split, n_images=len(ids), skipped=list(skipped))
    if params is not None:
        report["params"] = params
    os.makedirs(out_dir, exist_ok=True)
    _write_predictions(out_dir, ids, labels, predictions)
    m = report["metrics"]
    if report["roc"]["fpr"]:
        write_figure(plots.roc_figure(report["roc"]["fpr"], report["roc"]["tpr"], m["auc"],
                                      report["auc_ci"]), os.path.join(out_dir, "roc.png"))
    write_figure(plots.confusion_figure(report["confusion"]), os.path.join(out_dir, "confusion.png"))
    write_json(os.path.join(out_dir, "evaluation.json"), report)
    return report


def _write_predictions(out_dir, ids, labels, predictions):
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["image", "level", "prediction"])
    for image_id, level, pred in zip(ids, labels, predictions):
        writer.writerow([image_id, level, f"{pred:.4f}"])
    write_text(os.path.join(out_dir, "predictions.csv"), buffer.getvalue())


def read_shard(folder):
    """The ``shard.json`` of a sharded evaluation folder (a ValueError when it has none)."""
    record = read_json(os.path.join(folder, SHARD_FILE))
    if record is None:
        done = os.path.isfile(os.path.join(folder, "evaluation.json"))
        raise ValueError(f"Expected the folder of a finished evaluate shard ({SHARD_FILE}). "
                         f"Received: {folder!r}, "
                         + ("an unsharded evaluation" if done else "without one (unfinished?)"))
    return record


def merge_evaluations(out_dir, inputs, *, overwrite=False):
    """Join the folders of the N shards of one evaluation into the evaluation of the whole split.

    The predictions are put back in the split's order (their recorded positions) and the
    metrics computed as an unsharded :func:`evaluate` does, so the files are the same, number
    for number, as long as the shards were made with the same model, data and settings (checked).

    Args:
        out_dir: str, the merged evaluation folder (must not hold an evaluation yet).
        inputs: list of str, the shards' folders.
        overwrite: replace an evaluation in ``out_dir`` (the engine's own merge).

    Returns:
        dict, the content of ``evaluation.json``.

    Raises:
        ValueError: (one line) a folder that is not a finished shard, mixed, overlapping or
            missing shards, other settings, or images missing or twice.
    """
    if os.path.exists(os.path.join(out_dir, "evaluation.json")) and not overwrite:
        raise ValueError(
            f"Expected a folder without an evaluation to merge into (overwrite=True replaces "
            f"it). Received: {out_dir!r} holds one")
    records = [(folder, read_shard(folder)) for folder in inputs]
    check_shards([(folder, {**r["params"], "shard": r["shard"], "split": r["split"],
                            "n_boot": r["n_boot"], "seed": r["seed"],
                            "n_selected": r["n_selected"]}) for folder, r in records],
                 what="evaluation folders")
    first = records[0][1]
    rows, skipped, seen = [], [], {}
    for folder, record in records:
        for row in record["predictions"] + record["skipped"]:
            if row["image"] in seen:
                raise ValueError(f"Expected each image in one shard. Received: image="
                                 f"{row['image']!r} in {seen[row['image']]!r} and {folder!r}")
            seen[row["image"]] = folder
        rows += record["predictions"]
        skipped += record["skipped"]
    if len(seen) != first["n_selected"]:
        raise ValueError(f"Expected the {first['n_selected']} images of split "
                         f"{first['split']!r} in the shards. Received: {len(seen)}")
    if not rows:
        raise ValueError(f"Expected at least one usable image in split {first['split']!r}. "
                         f"Received: {len(skipped)} image(s), all skipped as bad")
    rows.sort(key=lambda row: row["position"])
    if overwrite and os.path.exists(os.path.join(out_dir, "evaluation.json")):
        os.remove(os.path.join(out_dir, "evaluation.json"))  # the marker goes first, comes last
    skipped.sort(key=lambda row: row["position"])
    return write_evaluation(
        out_dir, [row["image"] for row in rows], np.array([row["level"] for row in rows]),
        np.array([row["prediction"] for row in rows], dtype=np.float32), split=first["split"],
        skipped=[{k: v for k, v in row.items() if k != "position"} for row in skipped],
        n_boot=first["n_boot"], seed=first["seed"], params=first["params"] or None)
