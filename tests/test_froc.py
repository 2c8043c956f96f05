"""Tests of dr_saliency.lesions.froc: hand-computed curves, the pinned rules, a brute-force reference,
and the bootstraps against a literal resample-and-recompute."""

import json
import math
import re

import numpy as np
import pytest

from dr_saliency.lesions import froc as froc_lib
from dr_saliency.lesions.froc import (DEFAULT_RATES, FROCResult, bootstrap, froc,
                              label_lesions, paired_bootstrap)

EMPTY = np.empty((0, 3))


def curve(fp, tp, n_images, n_lesions, thresholds=None):
    """A FROCResult from cumulative counts, as froc builds it."""
    fp, tp = np.asarray(fp, np.int64), np.asarray(tp, np.int64)
    thresholds = np.linspace(1, 0, fp.size) if thresholds is None else np.asarray(thresholds, float)
    return FROCResult(thresholds=thresholds, fps_per_image=fp / n_images, sensitivity=tp / n_lesions,
                      false_positives=fp, true_positives=tp, n_lesions=n_lesions, n_images=n_images)


# ----------------------------------------------------------------------------- a hand-computed case


def hand_case():
    """Three 10x10 images, four lesions, twelve candidates; the expected curve is written below.

    Image 0 (label map): lesion 1 = pixel (1, 1); lesion 2 = the 2x2 square (5..6, 5..6).
        (1, 1, 0.9)   hits lesion 1: found at 0.9
        (6, 6, 0.95)  hits lesion 2: found at 0.95
        (5, 5, 0.8)   hits lesion 2 again: ignored (neither TP nor FP)
        (0, 9, 0.7), (9, 9, 0.6)  false positives
    Image 1: no lesion.  (3, 3, 0.85), (4, 4, 0.5)  false positives
    Image 2 (bool mask): pixels (2, 2) and (3, 3) (diagonal: one 8-connected lesion), pixel (8, 8).
        (3, 3, 0.75)  finds the diagonal lesion;  (2, 2, 0.4) hits it again: ignored
        (0, 0, 0.9)   false positive, tied with lesion 1's score;  lesion (8, 8) is missed.
    """
    lab0 = np.zeros((10, 10), np.int32)
    lab0[1, 1] = 1
    lab0[5:7, 5:7] = 2
    mask2 = np.zeros((10, 10), bool)
    mask2[2, 2] = mask2[3, 3] = mask2[8, 8] = True
    cands = [np.array([[1, 1, 0.9], [5, 5, 0.8], [6, 6, 0.95], [0, 9, 0.7], [9, 9, 0.6]]),
             np.array([[3, 3, 0.85], [4, 4, 0.5]]),
             np.array([[3, 3, 0.75], [2, 2, 0.4], [0, 0, 0.9]])]
    return cands, [lab0, np.zeros((10, 10), bool), mask2]


def test_hand_computed_curve():
    f = froc(*hand_case())
    # Thresholds: the distinct scores of false positives and of found lesions. 0.8 and 0.4
    # belong to ignored repeat hits only and give no point.
    np.testing.assert_array_equal(f.thresholds, [0.95, 0.9, 0.85, 0.75, 0.7, 0.6, 0.5])
    np.testing.assert_array_equal(f.false_positives, [0, 1, 2, 2, 3, 4, 5])
    np.testing.assert_array_equal(f.true_positives, [1, 2, 2, 3, 3, 3, 3])
    np.testing.assert_array_equal(f.fps_per_image, np.array([0, 1, 2, 2, 3, 4, 5]) / 3)
    np.testing.assert_array_equal(f.sensitivity, [0.25, 0.5, 0.5, 0.75, 0.75, 0.75, 0.75])
    assert (f.n_lesions, f.n_images, f.tolerance) == (4, 3, 0.0)
    assert f.false_positives.dtype == np.int64 and f.fps_per_image.dtype == np.float64


def test_hand_computed_summaries():
    f = froc(*hand_case())
    # Knots in counts (FP, found): (0, 1) [max of (0, 0) and (0, 1)], (1, 2), (2, 3) [max of
    # (2, 2) and (2, 3)], then flat at 3 lesions. 3 images, 4 lesions.
    assert f.sensitivity_at(0) == 0.25
    assert f.sensitivity_at(0.5) == 0.625                 # 1.5 FP: halfway from 2 to 3 found
    assert f.sensitivity_at(2 / 3) == 0.75
    assert f.sensitivity_at(100.0) == 0.75
    np.testing.assert_array_equal(f.sensitivity_at([0, 0.5, 100.0]), [0.25, 0.625, 0.75])
    # Rates 1/8..8 are 0.375, 0.75, 1.5, 3, 6, 12, 24 FP: 1.375, 1.75, 2.5 found, then 3 (x4).
    assert f.score() == pytest.approx((1.375 + 1.75 + 2.5 + 4 * 3) / 7 / 4, abs=1e-15)
    # Up to 2 FP/image = 6 FP: trapezoids (1 + 2) / 2 + (2 + 3) / 2, then 3 x 4; over 4 x 6.
    assert f.average_sensitivity(2) == pytest.approx((1.5 + 2.5 + 12) / 24, abs=1e-15)
    assert f.average_sensitivity(2) == pytest.approx(2 / 3, abs=1e-15)


def test_bool_masks_and_label_maps_give_the_same_curve():
    cands, lesions = hand_case()
    labels = [lesions[0], label_lesions(lesions[1]), label_lesions(lesions[2])]
    assert labels[2].max() == 2  # the diagonal pair is one lesion (8-connectivity), (8, 8) another
    a, b = froc(cands, lesions), froc(cands, labels)
    for field in ("thresholds", "fps_per_image", "sensitivity", "false_positives", "true_positives"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert a.n_lesions == b.n_lesions == 4


def test_label_map_with_missing_labels_counts_the_present_ones():
    lab = np.zeros((6, 6), np.int64)
    lab[1, 1], lab[4, 4] = 3, 7   # two lesions, labels 3 and 7
    f = froc([np.array([[1, 1, 0.5]])], [lab])
    assert f.n_lesions == 2
    np.testing.assert_array_equal(f.sensitivity, [0.5])


def test_a_lesion_hit_twice_counts_once_at_its_best_score():
    lab = np.zeros((8, 8), np.int32)
    lab[2:5, 2:5] = 1
    cands = [np.array([[2, 2, 0.3], [4, 4, 0.9], [3, 3, 0.6], [7, 7, 0.5]])]
    f = froc(cands, [lab])
    np.testing.assert_array_equal(f.thresholds, [0.9, 0.5])
    np.testing.assert_array_equal(f.false_positives, [0, 1])
    np.testing.assert_array_equal(f.sensitivity, [1.0, 1.0])


def test_lesion_free_images_count_in_the_false_positive_denominator():
    lab = np.zeros((8, 8), np.int32)
    lab[1, 1] = 1
    cands = [np.array([[1, 1, 0.9], [6, 6, 0.5]]), EMPTY, EMPTY, np.array([[3, 3, 0.7]])]
    f = froc(cands, [lab, np.zeros((8, 8), bool), np.zeros((5, 5), np.uint8), np.zeros((8, 8), bool)])
    assert f.n_images == 4 and f.n_lesions == 1
    np.testing.assert_array_equal(f.fps_per_image, [0.0, 0.25, 0.5])


def test_candidate_inside_two_overlapping_dilated_lesions_hits_both():
    lab = np.zeros((5, 9), np.int32)
    lab[2, 2], lab[2, 6] = 1, 2
    one = [np.array([[2, 4, 0.5]])]  # distance 2 from both lesions
    f = froc(one, [lab], tolerance=2)
    np.testing.assert_array_equal(f.sensitivity, [1.0])
    np.testing.assert_array_equal(f.false_positives, [0])
    # Undilated, the same candidate is a false positive.
    f0 = froc(one, [lab], tolerance=0)
    np.testing.assert_array_equal(f0.false_positives, [1])
    np.testing.assert_array_equal(f0.sensitivity, [0.0])


def test_touching_lesions_in_a_label_map_are_separate_and_undilated_hits_one():
    lab = np.zeros((4, 4), np.int32)
    lab[1, 1], lab[1, 2] = 1, 2          # adjacent pixels, two lesions
    f = froc([np.array([[1, 1, 0.5]])], [lab])
    np.testing.assert_array_equal(f.sensitivity, [0.5])
    f1 = froc([np.array([[1, 1, 0.5]])], [lab], tolerance=1)
    np.testing.assert_array_equal(f1.sensitivity, [1.0])


@pytest.mark.parametrize("probe_limit", [froc_lib._PROBE_LIMIT, 0])  # 0: the KD-tree path
def test_tolerance_is_euclidean(monkeypatch, probe_limit):
    monkeypatch.setattr(froc_lib, "_PROBE_LIMIT", probe_limit)
    lab = np.zeros((10, 10), np.int32)
    lab[5, 5] = 1
    diagonal = [np.array([[6, 6, 0.5]])]     # distance sqrt(2) from the lesion
    straight = [np.array([[5, 6, 0.5]])]     # distance 1
    assert froc(diagonal, [lab], tolerance=1.5).sensitivity.tolist() == [1.0]
    assert froc(diagonal, [lab], tolerance=1).sensitivity.tolist() == [0.0]
    assert froc(diagonal, [lab], tolerance=math.sqrt(2)).sensitivity.tolist() == [1.0]
    assert froc(straight, [lab], tolerance=1).sensitivity.tolist() == [1.0]   # <= tolerance
    assert froc(straight, [lab], tolerance=0.99).sensitivity.tolist() == [0.0]
    # A knight's move (1, 2): distance sqrt(5) = 2.236.
    knight = [np.array([[6, 7, 0.5]])]
    assert froc(knight, [lab], tolerance=2.2).sensitivity.tolist() == [0.0]
    assert froc(knight, [lab], tolerance=2.25).sensitivity.tolist() == [1.0]


def only(row, col, shape=(8, 8)):
    """A label map with one one-pixel lesion."""
    lab = np.zeros(shape, np.int32)
    lab[row, col] = 1
    return lab


def test_candidate_pixel_rounds_half_up():
    cand = [np.array([[2.5, 3.5, 1.0]])]
    # floor(x + 0.5): (2.5, 3.5) -> (3, 4); numpy's rint would give (2, 4).
    assert froc(cand, [only(3, 4)]).sensitivity.tolist() == [1.0]
    assert froc(cand, [only(2, 4)]).sensitivity.tolist() == [0.0]
    assert froc([np.array([[2.49, 3.51, 1.0]])], [only(2, 4)]).sensitivity.tolist() == [1.0]
    # -0.5 rounds to 0: inside the image.
    assert froc([np.array([[-0.5, 0.0, 1.0]])], [only(0, 0)]).sensitivity.tolist() == [1.0]


def test_candidate_outside_the_image_is_an_error():
    lab = np.zeros((8, 8), np.int32)
    cands = [EMPTY, np.array([[1.0, 1.0, 0.5], [7.6, 2.0, 0.3]])]
    message = ("Expected candidate pixels inside the image of shape (8, 8). "
               "Received: candidates_per_image[1][1]=(7.6, 2.0, 0.3) -> pixel (8, 2)")
    with pytest.raises(ValueError, match=re.escape(message)):
        froc(cands, [lab, lab])
    with pytest.raises(ValueError, match=r"candidates_per_image\[0\]\[0\]"):
        froc([np.array([[-0.51, 0, 1.0]])], [lab])


def test_no_candidates_and_no_lesions():
    lab = np.zeros((4, 4), np.int32)
    lab[1, 1] = 1
    f = froc([EMPTY, []], [lab, lab])
    assert f.thresholds.size == f.fps_per_image.size == f.sensitivity.size == 0
    assert f.sensitivity_at(1.0) == 0.0 and f.score() == 0.0 and f.average_sensitivity() == 0.0
    g = froc([np.array([[1, 1, 0.5]])], [np.zeros((4, 4), bool)])
    assert g.n_lesions == 0 and np.isnan(g.sensitivity).all()
    assert np.isnan(g.score()) and np.isnan(g.average_sensitivity()) and np.isnan(g.sensitivity_at(1))


def test_empty_candidates_may_have_any_empty_shape():
    lab = np.zeros((4, 4), np.int32)
    lab[1, 1] = 1
    f = froc([np.zeros((0,)), np.zeros((0, 3), np.float32)], [lab, lab])
    assert f.n_lesions == 2 and f.thresholds.size == 0


# ----------------------------------------------------------------------------- the interpolated curve


def test_sensitivity_at_interpolates_from_the_origin_and_stays_flat_beyond():
    # One point: 2 FP over 2 images (1 FP/image), 2 of 4 lesions.
    f = curve([2], [2], n_images=2, n_lesions=4)
    assert f.sensitivity_at(0.0) == 0.0
    assert f.sensitivity_at(0.5) == 0.25      # halfway along (0, 0) -> (1, 0.5)
    assert f.sensitivity_at(1.0) == 0.5
    assert f.sensitivity_at(7.0) == 0.5
    assert isinstance(f.sensitivity_at(0.5), float)
    assert f.sensitivity_at(np.array([[0.5, 1.0]])).shape == (1, 2)


def test_shared_fp_rates_take_the_highest_sensitivity():
    # Points (0, 0.25), (0, 0.5), (1, 0.5), (1, 1.0), (1, 0.75 impossible: counts only grow).
    f = curve([0, 0, 2, 2], [1, 2, 2, 4], n_images=2, n_lesions=4)
    assert f.sensitivity_at(0) == 0.5
    assert f.sensitivity_at(1) == 1.0
    assert f.sensitivity_at(0.5) == 0.75      # between (0, 0.5) and (1, 1.0)


def test_average_sensitivity_is_the_area_over_max_fp():
    # Points (0.5, 0.5) and (1, 0.75) (2 images, 4 lesions), max_fp = 2:
    # 0.5 * (0 + 0.5) / 2 + 0.5 * (0.5 + 0.75) / 2 + 1.0 * 0.75 = 0.125 + 0.3125 + 0.75 = 1.1875,
    # divided by 2: 0.59375.
    f = curve([1, 2], [2, 3], n_images=2, n_lesions=4)
    assert f.average_sensitivity(max_fp=2) == 0.59375
    # Cut inside a segment: up to 0.75 FP/image, the curve at 0.75 is 0.625:
    # 0.125 + 0.25 * (0.5 + 0.625) / 2 = 0.265625, / 0.75.
    assert f.average_sensitivity(max_fp=0.75) == pytest.approx(0.265625 / 0.75, abs=1e-15)
    # Cut exactly at a point, and inside the first segment.
    assert f.average_sensitivity(max_fp=0.5) == 0.25
    assert f.average_sensitivity(max_fp=0.25) == 0.125


def test_score_is_the_mean_sensitivity_at_the_rates():
    f = curve([1, 2], [2, 3], n_images=2, n_lesions=4)
    rates = (0.25, 0.5, 1.0, 3.0)
    assert f.score(rates) == pytest.approx(np.mean([0.25, 0.5, 0.75, 0.75]), abs=1e-15)
    assert f.score() == pytest.approx(np.mean(f.sensitivity_at(DEFAULT_RATES)), abs=1e-15)
    assert DEFAULT_RATES == (1 / 8, 1 / 4, 1 / 2, 1, 2, 4, 8)


def test_to_dict_is_json_ready():
    d = froc(*hand_case()).to_dict()
    text = json.dumps(d)
    assert json.loads(text)["n_lesions"] == 4
    assert d["fps_per_image"][:2] == [0.0, 1 / 3]
    assert d["score"] == froc(*hand_case()).score()
    assert d["average_sensitivity"] == froc(*hand_case()).average_sensitivity(10)
    assert len(d["sensitivity_at_rates"]) == 7
    no_lesions = froc([EMPTY], [np.zeros((3, 3), bool)]).to_dict()
    assert no_lesions["score"] is None and json.dumps(no_lesions)


# ----------------------------------------------------------------------------- input checks


@pytest.mark.parametrize("cands, lesions, kwargs, error, message", [
    ([EMPTY], [np.zeros((3, 3), bool)] * 2, {}, ValueError,
     r"Expected lists of the same length, one entry per image. Received: len\(candidates_per_image\)=1, "
     r"len\(lesions_per_image\)=2"),
    ([], [], {}, ValueError, r"Expected at least one image. Received: len\(lesions_per_image\)=0"),
    (np.zeros((1, 0, 3)), [np.zeros((3, 3), bool)], {}, TypeError,
     "Received: candidates_per_image of type ndarray"),
    ([EMPTY], [np.zeros((3, 3), np.float32)], {}, TypeError,
     r"Expected an integer label map or a bool mask. Received: lesions_per_image\[0\].dtype=float32"),
    ([EMPTY], [np.zeros((3, 3, 1), bool)], {}, ValueError,
     r"Received: lesions_per_image\[0\].shape=\(3, 3, 1\)"),
    ([EMPTY], [-np.ones((3, 3), np.int32)], {}, ValueError, r"Expected labels >= 0 .* minimum -1"),
    ([np.zeros((2, 2))], [np.zeros((3, 3), bool)], {}, ValueError,
     r"Expected candidates of shape \(K, 3\): row, col, score. "
     r"Received: candidates_per_image\[0\].shape=\(2, 2\)"),
    ([np.array([[1, 1, np.nan]])], [np.zeros((3, 3), bool)], {}, ValueError,
     r"Expected finite candidates. Received: candidates_per_image\[0\] containing NaN"),
    ([EMPTY], [np.zeros((3, 3), bool)], {"tolerance": -1}, ValueError,
     r"Expected a finite tolerance >= 0 \(pixels\). Received: tolerance=-1"),
])
def test_bad_inputs(cands, lesions, kwargs, error, message):
    with pytest.raises(error, match=message):
        froc(cands, lesions, **kwargs)


def test_bad_rates_and_max_fp():
    f = froc(*hand_case())
    with pytest.raises(ValueError, match=r"Expected finite FP rates >= 0"):
        f.sensitivity_at([-1.0])
    with pytest.raises(ValueError, match=r"Received: rates=\(\)"):
        f.score(())
    with pytest.raises(ValueError, match=r"Expected a finite max_fp > 0. Received: max_fp=0"):
        f.average_sensitivity(0)


# ----------------------------------------------------------------------------- brute-force reference


def reference_froc(cands, label_maps, tolerance):
    """The rules of docs/contracts.md followed literally, with Python loops.

    Returns (thresholds, fp counts, found counts, n_lesions, n_images): one point per distinct
    candidate score, minus the points equal to the point before (scores carried only by ignored
    repeat hits).
    """
    lesions = []                                   # (image, list of pixels)
    for i, lab in enumerate(label_maps):
        for value in sorted(set(lab[lab > 0].tolist())):
            lesions.append((i, list(zip(*np.nonzero(lab == value)))))
    hits = []                                      # per (image, candidate): set of lesion indices
    entries = []
    for i, c in enumerate(cands):
        for row, col, score in np.asarray(c, float).reshape(-1, 3):
            r, q = math.floor(row + 0.5), math.floor(col + 0.5)
            hit = {j for j, (image, pixels) in enumerate(lesions) if image == i and any(
                (r - pr) ** 2 + (q - pc) ** 2 <= tolerance ** 2 for pr, pc in pixels)}
            entries.append((score, hit))
    points = []
    for t in sorted({s for s, _ in entries}, reverse=True):
        kept = [(s, h) for s, h in entries if s >= t]
        found = set().union(*[h for _, h in kept]) if kept else set()
        fps = sum(1 for _, h in kept if not h)
        if not points or (fps, len(found)) != points[-1][1:]:
            points.append((t, fps, len(found)))
    thresholds = [p[0] for p in points]
    return thresholds, [p[1] for p in points], [p[2] for p in points], len(lesions), len(label_maps)


def reference_summaries(fp, found, n_lesions, n_images, rates, max_fp):
    """sensitivity_at, score and average_sensitivity from the reference points, by the rules."""
    knots = {0.0: 0.0}
    for f, s in zip(fp, found):
        x = f / n_images
        knots[x] = max(knots.get(x, 0.0), s / n_lesions)
    xs = sorted(knots)
    ys = [knots[x] for x in xs]

    def at(rate):
        if rate >= xs[-1]:
            return ys[-1]
        for k in range(len(xs) - 1):
            if xs[k] <= rate < xs[k + 1]:
                return ys[k] + (ys[k + 1] - ys[k]) * (rate - xs[k]) / (xs[k + 1] - xs[k])

    area, previous = 0.0, 0.0
    for x in sorted(set(xs[1:] + [max_fp])):
        if x > max_fp:
            break
        area += (x - previous) * (at(previous) + at(x)) / 2
        previous = x
    return [at(r) for r in rates], float(np.mean([at(r) for r in rates])), area / max_fp


def random_case(rng, n_images=4, shape=(12, 14)):
    """Small random label maps (lesions often adjacent, so that dilated ones overlap) and
    candidates with tied scores, positions off-grid, some images lesion-free or candidate-free."""
    cands, labels = [], []
    for _ in range(n_images):
        lab = np.zeros(shape, np.int32)
        for value in range(1, rng.integers(0, 5) + 1):
            r, c = rng.integers(0, shape[0]), rng.integers(0, shape[1])
            h, w = rng.integers(1, 4, size=2)
            lab[r:r + h, c:c + w] = value              # later lesions may cut earlier ones
        labels.append(lab)
        k = rng.integers(0, 9)
        rows = rng.uniform(-0.49, shape[0] - 0.51, size=k)
        cols = rng.uniform(-0.49, shape[1] - 0.51, size=k)
        scores = rng.integers(0, 6, size=k) / 5        # ties within and across images
        cands.append(np.column_stack([rows, cols, scores]))
    return cands, labels


# probe_limit 0 sends every tolerance > 0 through the KD-tree path instead of the label-map probes.
@pytest.mark.parametrize("tolerance, probe_limit", [
    (0, froc_lib._PROBE_LIMIT), (1, froc_lib._PROBE_LIMIT), (1.5, froc_lib._PROBE_LIMIT),
    (2.5, froc_lib._PROBE_LIMIT), (1, 0), (1.5, 0), (2.5, 0)])
def test_froc_equals_the_brute_force_reference(monkeypatch, tolerance, probe_limit):
    # Over the 40 seeds at tolerance 1.5: 9 candidates hit two lesions at once, 18 lesions are
    # hit more than once, 6 images have lesions but no candidate; scores tie within and across
    # images.
    monkeypatch.setattr(froc_lib, "_PROBE_LIMIT", probe_limit)
    rates, max_fp = (0.1, 0.25, 0.5, 1.0, 1.7, 3.0), 2.5
    for seed in range(40):
        rng = np.random.default_rng(seed)
        cands, labels = random_case(rng)
        # Some label maps handed over as bool masks (their components become the lesions).
        lesions = [lab > 0 if k % 3 == 2 else lab for k, lab in enumerate(labels)]
        ref_maps = [label_lesions(m) if m.dtype == bool else m for m in lesions]
        thresholds, fp, found, n_lesions, n_images = reference_froc(cands, ref_maps, tolerance)
        f = froc(cands, lesions, tolerance)
        assert f.thresholds.tolist() == thresholds, seed
        assert f.false_positives.tolist() == fp, seed
        assert f.true_positives.tolist() == found, seed
        assert (f.n_lesions, f.n_images) == (n_lesions, n_images)
        np.testing.assert_array_equal(f.fps_per_image, np.array(fp, dtype=np.int64) / n_images)
        if n_lesions:
            np.testing.assert_array_equal(f.sensitivity, np.array(found, dtype=np.int64) / n_lesions)
            at, score, average = reference_summaries(fp, found, n_lesions, n_images, rates, max_fp)
            np.testing.assert_allclose(f.sensitivity_at(rates), at, rtol=0, atol=1e-12)
            assert f.score(rates) == pytest.approx(score, abs=1e-12)
            assert f.average_sensitivity(max_fp) == pytest.approx(average, abs=1e-12)


# ----------------------------------------------------------------------------- bootstrap


def bootstrap_case(seed=0, n_images=30, k=25):
    rng = np.random.default_rng(seed)
    cands, labels = [], []
    for i in range(n_images):
        lab = np.zeros((32, 32), np.int32)
        n = rng.integers(0, 5) if i % 4 else 0
        centres = rng.integers(2, 29, size=(n, 2))
        for value, (r, c) in enumerate(centres, start=1):
            lab[r - 1:r + 2, c - 1:c + 2] = value
        labels.append(lab)
        near = centres[rng.integers(0, n, size=k // 3)] + rng.integers(-2, 3, size=(k // 3, 2)) if n else \
            np.empty((0, 2))
        points = np.clip(np.concatenate([near, rng.uniform(0, 31, size=(k - len(near), 2))]), 0, 31)
        # Rounded to 0.01: ties. Candidates near lesions score higher on average.
        scores = np.round(np.concatenate([rng.uniform(0.3, 1, len(near)),
                                          rng.uniform(0, 0.8, k - len(near))]), 2)
        cands.append(np.column_stack([points, scores]))
    return cands, labels


@pytest.mark.parametrize("tolerance", [0, 1.5])
def test_vectorised_replicates_equal_a_literal_resample_and_recompute(monkeypatch, tolerance):
    cands, labels = bootstrap_case()
    events, _ = froc_lib._prepare(cands, labels, tolerance)
    # Small rates so that the curve is truncated (and the truncation is thereby tested).
    rates, max_fp = np.array([0.05, 0.25, 0.5, 1.0]), 1.0
    seen = []
    original = froc_lib._curve_counts
    monkeypatch.setattr(froc_lib, "_curve_counts",
                        lambda ev, w, n: seen.append(n) or original(ev, w, n))
    indices = np.random.default_rng(5).integers(0, len(labels), size=(6, len(labels)))
    indices[0] = 3    # one image drawn n times
    got = froc_lib._replicate_summaries(events, indices, rates, max_fp, curve_rates=rates)
    assert min(seen) < events.group_end.size
    for b, row in enumerate(indices):
        f = froc([cands[i] for i in row], [labels[i] for i in row], tolerance)
        if f.n_lesions == 0:
            assert np.isnan(got["score"][b]) and np.isnan(got["average_sensitivity"][b])
            continue
        # Bit for bit: the same integer counts and the same floating-point formulas.
        assert got["score"][b] == f.score(rates)
        assert got["average_sensitivity"][b] == f.average_sensitivity(max_fp)
        np.testing.assert_array_equal(got["curve"][b], f.sensitivity_at(rates))
        assert got["n_lesions"][b] == f.n_lesions


def test_bootstrap_interval_contains_the_estimate_and_is_deterministic():
    cands, labels = bootstrap_case(1, n_images=40)
    f = froc(cands, labels)
    a = bootstrap(cands, labels, n_boot=300, seed=3, curve_rates=[0.5, 1, 2])
    assert a.score == f.score() and a.average_sensitivity == f.average_sensitivity()
    assert a.score_interval[0] < a.score < a.score_interval[1]
    assert a.average_sensitivity_interval[0] < a.average_sensitivity < a.average_sensitivity_interval[1]
    assert a.n_valid == a.n_boot == 300 and a.replicate_scores.shape == (300,)
    np.testing.assert_array_equal(a.curve_sensitivity, f.sensitivity_at([0.5, 1, 2]))
    assert np.all(a.curve_low <= a.curve_sensitivity) and np.all(a.curve_sensitivity <= a.curve_high)
    b = bootstrap(cands, labels, n_boot=300, seed=3, curve_rates=[0.5, 1, 2])
    np.testing.assert_array_equal(a.replicate_scores, b.replicate_scores)
    assert a.score_interval == b.score_interval
    c = bootstrap(cands, labels, n_boot=300, seed=4)
    assert not np.array_equal(a.replicate_scores, c.replicate_scores)
    assert json.dumps(a.to_dict()) and a.to_dict()["curve_low"] == a.curve_low.tolist()


def test_bootstrap_percentiles_of_the_replicates():
    cands, labels = bootstrap_case(2)
    r = bootstrap(cands, labels, n_boot=200, seed=0, level=0.9)
    assert r.score_interval == tuple(np.percentile(r.replicate_scores, [5, 95]))


def test_bootstrap_without_lesions_in_some_resamples():
    lab = np.zeros((4, 4), np.int32)
    lab[1, 1] = 1
    cands = [np.array([[1, 1, 0.5]])] + [np.array([[2, 2, 0.3]])] * 4
    r = bootstrap(cands, [lab] + [np.zeros((4, 4), bool)] * 4, n_boot=200, seed=0)
    # P(no draw of image 0 in 5 draws) = 0.8 ** 5 = 0.33.
    assert 0 < r.n_valid < 200
    assert np.isnan(r.replicate_scores).sum() == 200 - r.n_valid
    assert np.isfinite(r.score_interval).all()


def test_paired_bootstrap_of_identical_candidates_is_zero():
    cands, labels = bootstrap_case(3)
    p = paired_bootstrap(cands, cands, labels, n_boot=200, seed=0)
    for d in (p.score, p.average_sensitivity):
        assert d.a == d.b and d.difference == 0.0 and d.relative == 0.0
        assert d.difference_interval == (0.0, 0.0) and d.relative_interval == (0.0, 0.0)
        assert d.fraction_b_greater == 0.0
        np.testing.assert_array_equal(d.replicate_differences, 0.0)
    assert json.dumps(p.to_dict())


def test_paired_bootstrap_differences_match_two_bootstraps_with_the_same_draws():
    cands, labels = bootstrap_case(4)
    better = [np.column_stack([c[:, :2], c[:, 2] + 0.3 * (c[:, 2] > 0.5)]) for c in cands]
    p = paired_bootstrap(cands, better, labels, n_boot=150, seed=7)
    a = bootstrap(cands, labels, n_boot=150, seed=7)
    b = bootstrap(better, labels, n_boot=150, seed=7)
    np.testing.assert_array_equal(p.score.replicate_differences, b.replicate_scores - a.replicate_scores)
    assert p.score.a == a.score and p.score.b == b.score
    assert p.score.difference == b.score - a.score
    assert p.score.relative == pytest.approx((b.score - a.score) / a.score)
    assert p.average_sensitivity.fraction_b_greater == np.mean(
        b.replicate_average_sensitivities > a.replicate_average_sensitivities)
    lo, hi = p.score.difference_interval
    assert lo <= p.score.difference <= hi


def test_bootstrap_bad_options():
    cands, labels = bootstrap_case(0, n_images=4)
    with pytest.raises(ValueError, match="Expected an integer n_boot >= 1. Received: n_boot=0"):
        bootstrap(cands, labels, n_boot=0)
    with pytest.raises(ValueError, match=r"Expected a level in \(0, 1\). Received: level=1"):
        bootstrap(cands, labels, level=1)
    with pytest.raises(ValueError, match="Received: seed=-1"):
        bootstrap(cands, labels, seed=-1)
    with pytest.raises(ValueError, match=r"Received: len\(candidates_a\)=4, len\(candidates_b\)=3"):
        paired_bootstrap(cands, cands[:3], labels)
