"""Tests of dr_saliency.grader.metrics against hand-computed values."""

import math

import numpy as np
import pytest

from dr_saliency.grader import metrics
def test_to_grades_rounds_and_clips():
    np.testing.assert_array_equal(metrics.to_grades([-0.7, 0.49, 0.51, 2.5, 3.5, 9.0]),
                                  [0, 0, 1, 2, 4, 4])


def test_quadratic_kappa_hand_computed():
    # labels 0,1,2 ; grades 0,2,2 -> observed O = [[1,0,0],[0,0,1],[0,0,1]] (on stages 0-2),
    # W_ij = (i-j)^2/16, expected E = outer(row, col)/3 with rows (1,1,1), cols (1,0,2).
    labels, preds = [0, 1, 2], [0.1, 1.6, 2.2]
    w = np.array([[(i - j) ** 2 / 16 for j in range(5)] for i in range(5)])
    o = np.zeros((5, 5)); o[0, 0] = o[1, 2] = o[2, 2] = 1
    e = np.outer(o.sum(1), o.sum(0)) / 3
    expected = 1 - (w * o).sum() / (w * e).sum()
    assert metrics.quadratic_kappa(labels, preds) == pytest.approx(expected)
    assert metrics.quadratic_kappa([0, 1, 2, 3, 4], [0, 1, 2, 3, 4]) == 1.0
    assert math.isnan(metrics.quadratic_kappa([2, 2], [2.1, 1.9]))


def test_referable_auc_and_undefined_case():
    assert metrics.referable_auc([0, 1, 2, 4], [0.2, 1.0, 2.5, 3.9]) == 1.0
    # pairs (pos, neg): (0.5, 2.0) lost, (0.5, 0.1), (3.0, 2.0), (3.0, 0.1) won: 3/4.
    assert metrics.referable_auc([0, 2, 1, 3], [2.0, 0.5, 0.1, 3.0]) == 0.75
    assert math.isnan(metrics.referable_auc([0, 1, 1], [0.2, 1.0, 2.5]))


def test_grading_metrics_values():
    m = metrics.grading_metrics([0, 2, 4], [0.0, 3.0, 4.0])
    assert m["mse"] == pytest.approx(1 / 3)
    assert m["accuracy"] == pytest.approx(2 / 3)
    assert m["n"] == 3


@pytest.mark.parametrize("labels,preds,match", [
    ([0, 1], [0.0], r"as many labels as predictions.*Received: labels=2, predictions=1"),
    ([], [], r"at least one.*Received: 0"),
    ([0, 7], [0.0, 1.0], r"labels in 0-4.*Received: labels containing \[7\]"),
    ([0, 1], [0.0, float("nan")], r"finite predictions"),
])
def test_metric_input_errors(labels, preds, match):
    with pytest.raises(ValueError, match=match):
        metrics.grading_metrics(labels, preds)


def test_evaluation_report_structure_and_interval():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 200)
    preds = labels + rng.normal(0, 0.6, 200)
    report = metrics.evaluation_report(labels, preds, n_boot=200)
    m = report["metrics"]
    assert report["kappa_ci"][0] <= m["kappa"] <= report["kappa_ci"][1]
    assert report["auc_ci"][0] <= m["auc"] <= report["auc_ci"][1]
    assert np.asarray(report["confusion"]).sum() == 200
    assert np.asarray(report["confusion"]).sum(axis=1).tolist() == np.bincount(labels, minlength=5).tolist()
    assert report["per_stage"]["0"]["n"] == int((labels == 0).sum())
    assert report["roc"]["fpr"][0] == 0.0 and report["roc"]["tpr"][-1] == 1.0


def test_bootstrap_drops_degenerate_resamples():
    low, high = metrics.bootstrap_interval([0, 0, 0], [0.0, 0.1, 0.2], metrics.referable_auc,
                                           n_boot=20)
    assert math.isnan(low) and math.isnan(high)
