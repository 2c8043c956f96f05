"""Evaluation of a trained grader on a dataset split: metrics JSON, ROC and confusion figures."""

import json
import os

import numpy as np

from dr_saliency.figures import plots
from dr_saliency.fundus.datasets import select_records
from dr_saliency.grader import metrics as metrics_lib
def evaluate(model, dataset, out_dir, *, split="test", batch_size=16, n_boot=1000, seed=0):
    """Grade a split of ``dataset`` with ``model`` and write the evaluation to ``out_dir``.

    Writes ``evaluation.json`` (metrics, 95% bootstrap intervals of kappa and AUC, confusion
    matrix, per-stage error, ROC), ``predictions.csv`` (id, stage, prediction), ``roc.png`` and
    ``confusion.png``.

    Args:
        model: keras.Model (e.g. ``dr_saliency.grader.model.load_model("run/model.h5")``).
        dataset: a dataset from ``open_dataset``.
        out_dir: str.
        split: one of :data:`dr_saliency.fundus.datasets.SPLITS`.
        batch_size: int.
        n_boot: int, bootstrap resamples.
        seed: int.

    Returns:
        dict, the content of ``evaluation.json``.

    Raises:
        EmptySplitError: no graded image in ``split``.
    """
    from dr_saliency.grader.train import predict_records

    records = select_records(dataset, split=split, graded=True)
    predictions = predict_records(model, records, batch_size=batch_size)
    labels = np.array([r.grade for r in records])
    report = metrics_lib.evaluation_report(labels, predictions, n_boot=n_boot, seed=seed)
    report.update(split=split, n_images=len(records))
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "evaluation.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
    with open(os.path.join(out_dir, "predictions.csv"), "w", encoding="utf-8") as f:
        f.write("image,level,prediction\n")
        for rec, pred in zip(records, predictions):
            f.write(f"{rec.id},{rec.grade},{pred:.4f}\n")
    m = report["metrics"]
    if report["roc"]["fpr"]:
        plots.roc_figure(report["roc"]["fpr"], report["roc"]["tpr"], m["auc"],
                         report["auc_ci"]).savefig(os.path.join(out_dir, "roc.png"), dpi=150)
    plots.confusion_figure(report["confusion"]).savefig(os.path.join(out_dir, "confusion.png"),
                                                        dpi=150)
    return report
