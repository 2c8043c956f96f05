"""Grading metrics of a DR-stage regressor: kappa, referable AUC, MSE, accuracy, bootstrap.

The network regresses a continuous stage; a grade is that value rounded and clipped to 0-4. As in
the Kaggle Diabetic Retinopathy Detection challenge (and the paper), agreement is the quadratic
weighted Cohen's kappa of the grades; referable DR (stage >= 2) is scored by the ROC AUC of the
continuous prediction. The metric formulas are scikit-learn's.
"""

import numpy as np
from sklearn.metrics import cohen_kappa_score, confusion_matrix, roc_auc_score, roc_curve

from dr_saliency.core.grades import REFERABLE_STAGE, to_grades  # noqa: F401  (re-exported)

STAGES = (0, 1, 2, 3, 4)


def _check(labels, predictions):
    labels = np.asarray(labels).reshape(-1)
    predictions = np.asarray(predictions, dtype=np.float64).reshape(-1)
    if labels.shape != predictions.shape:
        raise ValueError(f"Expected as many labels as predictions. Received: labels={labels.size}, "
                         f"predictions={predictions.size}")
    if labels.size == 0:
        raise ValueError("Expected at least one labelled prediction. Received: 0")
    if not np.all(np.isin(labels, STAGES)):
        bad = sorted(set(labels.tolist()) - set(STAGES))
        raise ValueError(f"Expected labels in 0-4. Received: labels containing {bad}")
    if not np.all(np.isfinite(predictions)):
        raise ValueError("Expected finite predictions. Received: NaN or infinite values "
                         "(the model may have diverged)")
    return labels.astype(np.int64), predictions


def quadratic_kappa(labels, predictions):
    """Quadratic weighted kappa of the rounded, clipped predictions (1 = perfect, 0 = chance).

    Returns NaN when undefined (every label and grade the same).
    """
    labels, predictions = _check(labels, predictions)
    grades = to_grades(predictions)
    if np.unique(np.concatenate([labels, grades])).size < 2:
        return float("nan")
    return float(cohen_kappa_score(labels, grades, weights="quadratic", labels=list(STAGES)))


def referable_auc(labels, predictions):
    """ROC AUC of the continuous prediction for referable DR (stage >= 2).

    Returns NaN when only one class is present (e.g. no referable image): AUC is undefined.
    """
    labels, predictions = _check(labels, predictions)
    referable = labels >= REFERABLE_STAGE
    if referable.all() or not referable.any():
        return float("nan")
    return float(roc_auc_score(referable, predictions))


def grading_metrics(labels, predictions):
    """All per-epoch metrics of a grader.

    Args:
        labels: (N,) int true stages 0-4.
        predictions: (N,) float predicted stages.

    Returns:
        dict with ``kappa``, ``auc`` (NaN when undefined), ``mse``, ``accuracy`` (of the
        rounded, clipped grade), ``n``.
    """
    labels, predictions = _check(labels, predictions)
    return {
        "kappa": quadratic_kappa(labels, predictions),
        "auc": referable_auc(labels, predictions),
        "mse": float(np.mean((predictions - labels) ** 2)),
        "accuracy": float(np.mean(to_grades(predictions) == labels)),
        "n": int(labels.size),
    }


def bootstrap_interval(labels, predictions, metric, *, n_boot=1000, level=0.95, seed=0):
    """Percentile bootstrap interval of a metric over images.

    Args:
        labels, predictions: (N,) arrays.
        metric: callable(labels, predictions) -> float (may return NaN for a degenerate resample,
            which is dropped).
        n_boot: int, number of resamples.
        level: float, coverage of the interval.
        seed: int.

    Returns:
        (low, high) floats, NaN when no resample gave a finite value.
    """
    labels, predictions = _check(labels, predictions)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, labels.size, size=(n_boot, labels.size))
    values = np.array([metric(labels[i], predictions[i]) for i in idx])
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    alpha = (1 - level) / 2
    return float(np.quantile(values, alpha)), float(np.quantile(values, 1 - alpha))


def evaluation_report(labels, predictions, *, n_boot=1000, seed=0):
    """Full evaluation of a grader: metrics with bootstrap intervals, confusion matrix, ROC.

    Args:
        labels: (N,) int true stages.
        predictions: (N,) float predicted stages.
        n_boot: int, bootstrap resamples for the 95% intervals.
        seed: int.

    Returns:
        dict (JSON-serialisable): ``metrics`` (grading_metrics), ``kappa_ci`` and ``auc_ci``
        (95% percentile bootstrap), ``confusion`` (5x5 list, rows true stage, columns grade),
        ``per_stage`` (per true stage: n, mean prediction, mean absolute error, accuracy),
        ``roc`` (fpr, tpr lists, empty when AUC is undefined).
    """
    labels, predictions = _check(labels, predictions)
    grades = to_grades(predictions)
    per_stage = {}
    for stage in STAGES:
        sel = labels == stage
        per_stage[str(stage)] = {
            "n": int(sel.sum()),
            "mean_prediction": float(predictions[sel].mean()) if sel.any() else None,
            "mae": float(np.abs(predictions[sel] - stage).mean()) if sel.any() else None,
            "accuracy": float((grades[sel] == stage).mean()) if sel.any() else None,
        }
    referable = labels >= REFERABLE_STAGE
    roc = {"fpr": [], "tpr": []}
    if referable.any() and not referable.all():
        fpr, tpr, _ = roc_curve(referable, predictions)
        roc = {"fpr": fpr.tolist(), "tpr": tpr.tolist()}
    return {
        "metrics": grading_metrics(labels, predictions),
        "kappa_ci": bootstrap_interval(labels, predictions, quadratic_kappa, n_boot=n_boot, seed=seed),
        "auc_ci": bootstrap_interval(labels, predictions, referable_auc, n_boot=n_boot, seed=seed),
        "confusion": confusion_matrix(labels, grades, labels=list(STAGES)).tolist(),
        "per_stage": per_stage,
        "roc": roc,
    }
