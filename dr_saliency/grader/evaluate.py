"""Evaluation of a trained grader on a dataset split: metrics JSON, ROC and confusion figures."""

import csv
import io
import os

import numpy as np

from dr_saliency.core.errors import BadImageError
from dr_saliency.core.files import write_figure, write_json, write_text
from dr_saliency.figures import plots
from dr_saliency.fundus.datasets import select_records
from dr_saliency.grader import metrics as metrics_lib


def _check_count(value, name, what):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"Expected an int {name} >= 1 ({what}). Received: {name}={value!r}")


def evaluate(model, dataset, out_dir, *, split="test", batch_size=16, n_boot=1000, seed=0,
             skip_bad=False, on_progress=None):
    """Grade a split of ``dataset`` with ``model`` and write the evaluation to ``out_dir``.

    Every image is decoded once first, so that an unreadable file, or one whose size is not the
    model's input (a raw photograph, not preprocessed), fails at once and by name instead of
    mid-prediction or, worse, being resized and graded silently.

    Writes ``predictions.csv`` (image, level, prediction; CSV-quoted), ``roc.png`` and
    ``confusion.png``, then ``evaluation.json`` (metrics, 95% bootstrap intervals of kappa and
    AUC, confusion matrix, per-stage error, ROC, the skipped images) last, so that its presence
    means the evaluation is complete. Each file is written atomically.

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

    Returns:
        dict, the content of ``evaluation.json``; ``skipped`` is a list of
        ``{"image", "path", "reason"}``.

    Raises:
        ValueError: for a batch size or ``n_boot`` below 1, or a non-bool ``skip_bad``; when
            every image of the split was skipped.
        EmptySplitError: no graded image in ``split``.
        BadImageError: an unreadable image (unless ``skip_bad``).
        ImageSizeError: an image whose size is not the model's input (unless ``skip_bad``).
    """
    from dr_saliency.grader.train import check_files, predict_records

    _check_count(batch_size, "batch_size", "images per prediction batch")
    _check_count(n_boot, "n_boot", "bootstrap resamples")
    if not isinstance(skip_bad, bool):
        raise TypeError(f"Expected a bool. Received: skip_bad={skip_bad!r}")

    records = select_records(dataset, split=split, graded=True)
    size = model.input_shape[1]
    by_path = {r.image_path: r for r in records}
    good, bad = check_files(records, skip_bad=skip_bad, on_progress=on_progress,
                            size=None if size is None else int(size))
    skipped = [{"image": by_path[path].id, "path": path, "reason": message}
               for path, message in bad]
    while True:
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

    labels = np.array([r.grade for r in good])
    report = metrics_lib.evaluation_report(labels, predictions, n_boot=int(n_boot), seed=seed)
    report.update(split=split, n_images=len(good), skipped=skipped)
    os.makedirs(out_dir, exist_ok=True)
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["image", "level", "prediction"])
    for rec, pred in zip(good, predictions):
        writer.writerow([rec.id, rec.grade, f"{pred:.4f}"])
    write_text(os.path.join(out_dir, "predictions.csv"), buffer.getvalue())
    m = report["metrics"]
    if report["roc"]["fpr"]:
        write_figure(plots.roc_figure(report["roc"]["fpr"], report["roc"]["tpr"], m["auc"],
                                      report["auc_ci"]), os.path.join(out_dir, "roc.png"))
    write_figure(plots.confusion_figure(report["confusion"]), os.path.join(out_dir, "confusion.png"))
    write_json(os.path.join(out_dir, "evaluation.json"), report)
    return report
