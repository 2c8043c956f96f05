"""Tests of the per-lesion analysis (lesions/fate.py): which lesions s_0 and S find within the FP
budget, by hand on two tiny images, against the FROC on a small refined store, and through the
command line (``froc --lesions``)."""

import csv
import json
import math
import os

import numpy as np
import pytest

from dr_saliency.fundus.datasets import open_dataset
from dr_saliency.lesions import fate, froc as froc_lib, localize, reports
from tests.test_cli import run_main
from tests.test_localize import refined  # noqa: F401  (the module-scoped refined store)


def _mask(cells, shape=(20, 20)):
    mask = np.zeros(shape, bool)
    for r, c in cells:
        mask[r, c] = True
    return mask


def _block(rows, cols):
    return [(r, c) for r in rows for c in cols]


def _hand_items():
    """Two images whose fates are worked out by hand in the test below.

    A (stage 3): a microaneurysm at (2, 2), a 3x3 haemorrhage at rows/cols 10-12 and a 3x2
    exudate touching it at cols 13-14 (one lesion of the union), cotton-wool spots annotated
    but absent. B (stage 2): a microaneurysm at (5, 5), only MA annotated.
    """
    lesions_a = {"MA": _mask([(2, 2)]), "HE": _mask(_block(range(10, 13), range(10, 13))),
                 "EX": _mask(_block(range(10, 13), range(13, 15))), "SE": _mask([])}
    lesions_b = {"MA": _mask([(5, 5)])}
    masks_a = np.stack([_mask([(2, 2)]), _mask([(10, 10), (2, 2)]),
                        _mask(_block(range(10, 13), range(13, 15)))])
    a = localize.ImageCandidates(
        "A", 3, lesions_a,
        {"s0": np.array([[2, 2, 0.9], [0, 19, 0.8], [11, 11, 0.5]]),
         "S": np.array([[11, 13, 0.6], [2, 2, 0.2]])},
        # Three masks, two inpainted: the last (over the exudate) was kept but not inpainted.
        "max_iterations", 2, localize.erasure_order(masks_a, 2))
    b = localize.ImageCandidates(
        "B", 2, lesions_b,
        {"s0": np.array([[15, 15, 0.7], [5, 5, 0.3]]),
         "S": np.array([[5, 5, 0.95], [0, 0, 0.4]])},
        "not_referable", 0, localize.erasure_order(_mask([(5, 5)])[None], 0))
    return [a, b]


def test_erasure_order_keeps_the_first_inpainted_mask_only():
    masks = np.zeros((3, 2, 3), bool)
    masks[0, 0, 0] = masks[1, 0, 0] = masks[1, 0, 1] = masks[2, 1, 2] = True
    np.testing.assert_array_equal(localize.erasure_order(masks, 2), [[0, 1, -1], [-1, -1, -1]])
    np.testing.assert_array_equal(localize.erasure_order(masks, 3), [[0, 1, -1], [-1, -1, 2]])
    assert localize.erasure_order(masks, 0).max() == -1


def test_fates_worked_out_by_hand():
    items = _hand_items()
    result = fate.lesion_fates(items, fp_rate=0.5)
    rows = {(r["image"], r["type"]): r for r in result.rows}
    assert [(r["image"], r["type"]) for r in result.rows] == [
        ("A", "MA"), ("A", "HE"), ("A", "EX"), ("B", "MA")]
    # MA curve (A, B; budget 1 FP): s_0 keeps >= 0.8 (0.9 MA_A, FP 0.8), S keeps >= 0.6 (0.95
    # MA_B, and S's hit on the exudate is an MA false positive).
    assert rows["A", "MA"] == {
        "image": "A", "stage": 3, "type": "MA", "lesion": 1, "area": 1, "row": 2.0, "col": 2.0,
        "iterations": 2, "stop_reason": "max_iterations", "inpainted_at": 0,
        "erased_fraction": 1.0, "s0_rank": 1, "s0_score": 0.9, "S_rank": 2, "S_score": 0.2,
        "found_by_s0": True, "found_by_S": False, "fate": "lost",
        # Stage 3 curve (A alone, budget 0 FP): s_0 at 0.9, S down to 0.2; all (budget 1 FP):
        # s_0 down to 0.8, S everything.
        "fate_in_stage": "kept", "fate_in_all": "kept"}
    assert (rows["B", "MA"]["fate"], rows["B", "MA"]["fate_in_stage"],
            rows["B", "MA"]["fate_in_all"]) == ("gained", "gained", "gained")
    assert rows["B", "MA"]["inpainted_at"] is None  # its one mask was never inpainted
    # HE curve (A alone, budget 0 FP): s_0's first two candidates are HE false positives, S
    # never hits it; on the union curves it is one lesion with the exudate, which S finds.
    he = rows["A", "HE"]
    assert (he["fate"], he["fate_in_stage"], he["fate_in_all"]) == ("missed", "gained", "gained")
    assert (he["inpainted_at"], he["erased_fraction"], he["area"]) == (1, round(1 / 9, 4), 9)
    assert (he["s0_rank"], he["s0_score"], he["S_rank"], he["S_score"]) == (3, 0.5, None, None)
    ex = rows["A", "EX"]
    assert (ex["fate"], ex["S_rank"], ex["found_by_s0"]) == ("gained", 1, False)
    assert (ex["inpainted_at"], ex["erased_fraction"]) == (None, 0.0)  # its mask was not inpainted
    assert (ex["row"], ex["col"]) == (11.0, 13.5)

    groups = result.groups
    assert list(groups) == ["all", "stage 2", "stage 3", "type MA", "type HE", "type EX",
                            "type SE"]
    assert groups["all"].counts == {"kept": 1, "lost": 0, "gained": 2, "missed": 0}
    assert groups["all"].points["s0"] == fate.OperatingPoint(0.8, 0.5, 1, 3, 1 / 3)
    assert groups["all"].points["S"] == fate.OperatingPoint(0.2, 0.5, 3, 3, 1.0)
    # No point within the budget: nothing kept, at 0 FP/image.
    assert groups["type HE"].points["s0"] == fate.OperatingPoint(math.inf, 0.0, 0, 1, 0.0)
    se = groups["type SE"]
    assert se.n_lesions == 0 and math.isnan(se.points["S"].sensitivity)
    assert se.to_dict()["points"]["S"]["sensitivity"] is None

    by_stage = {(r["type"], r["stage"]): r for r in result.by_type_and_stage()}
    assert by_stage["MA", fate.ANY] == {"type": "MA", "stage": fate.ANY, "lesions": 2, "kept": 0,
                                       "lost": 1, "gained": 1, "missed": 0, "s0_found": 1,
                                       "S_found": 1}
    assert [k for k in by_stage if k[0] == "MA"] == [("MA", 2), ("MA", 3), ("MA", fate.ANY)]
    assert by_stage[fate.ANY, 3]["lesions"] == 3 and by_stage[fate.ANY, fate.ANY]["gained"] == 2
    by_iteration = [(r["type"], r["inpainted_at"], r["lesions"]) for r in result.by_iteration()
                    if r["type"] == fate.ANY]
    assert by_iteration == [(fate.ANY, 0, 1), (fate.ANY, 1, 1), (fate.ANY, None, 2),
                            (fate.ANY, fate.ANY, 4)]


def test_the_operating_point_is_a_curve_point_not_the_interpolation():
    # Two tied false positives jump from 0 to 2 FP: at 1 FP/image sensitivity_at interpolates
    # halfway to the lesion found after them, which no set of found lesions realises; the
    # analysis stands at the last point within the budget (here none: nothing found).
    lesion = _mask([(5, 5)])
    cands = [np.array([[0, 0, 0.9], [0, 9, 0.9], [5, 5, 0.5]])]
    curve = froc_lib.froc(cands, [lesion])
    assert curve.operating_point(1) == -1 and curve.sensitivity_at(1) == 0.5
    assert curve.operating_point(2) == 1 and curve.sensitivity[1] == curve.sensitivity_at(2) == 1
    item = localize.ImageCandidates("A", 2, {"MA": lesion}, {"s0": cands[0], "S": cands[0]},
                                    "normal", 1, np.full(lesion.shape, -1, np.int16))
    assert fate.lesion_fates([item], fp_rate=1).groups["all"].points["s0"].found == 0
    assert fate.lesion_fates([item], fp_rate=2).groups["all"].points["s0"].found == 1


def test_match_lesions_finds_each_lesion_at_its_froc_score():
    labels = np.zeros((6, 6), np.int32)
    labels[0, 0], labels[5, 5] = 1, 2
    cands = np.array([[0, 0, 0.3], [0, 0, 0.7], [3, 3, 0.9], [0, 1, 0.7]])
    (match,) = froc_lib.match_lesions([cands], [labels], tolerance=1)
    np.testing.assert_array_equal(match.best_score, [0.7, -np.inf])
    np.testing.assert_array_equal(match.best_candidate, [1, -1])  # ties: the first candidate
    np.testing.assert_array_equal(match.labels, labels)


@pytest.mark.parametrize("value", [-1, math.inf, math.nan, "10", None])
def test_bad_fp_rate(value):
    with pytest.raises(ValueError, match=r"Expected a finite fp_rate >= 0 .*Received: fp_rate="):
        fate.lesion_fates(_hand_items(), fp_rate=value)


def test_items_without_erasures_are_refused():
    items = _hand_items()
    items[1].erased_at = None
    with pytest.raises(ValueError,
                       match=r"erasures=True.*Received: none for 1 image\(s\), e.g. 'B'"):
        fate.lesion_fates(items)
    with pytest.raises(ValueError, match=r"at least one image"):
        fate.lesion_fates([])


@pytest.mark.parametrize("rate, tolerance", [(0, 0), (0.5, 0), (1, 0), (2, 0), (10, 0), (1, 2.5),
                                             (10, 2.5)])
def test_found_fractions_are_the_froc_sensitivities(refined, rate, tolerance):
    # The agreement the analysis promises: in every FROC group, for both maps, the fraction of
    # lesions found at the budget is that group's FROC sensitivity there (10 images: every rate
    # here is a whole number of false positives, and the noisy maps tie no two scores).
    data, store = refined
    records, _ = localize.records_for(store, open_dataset(data))
    items = localize.collect(store, records, erasures=True)
    report = localize.froc_report(items, n_boot=2, tolerance=tolerance)
    result = fate.lesion_fates(items, fp_rate=rate, tolerance=tolerance)
    assert list(result.groups) == list(report)
    for name, group in result.groups.items():
        for m in localize.MAP_NAMES:
            curve = report[name][m]["froc"]
            point = group.points[m]
            assert point.n_lesions == curve.n_lesions == group.n_lesions, name
            assert point.sensitivity == curve.sensitivity_at(rate), (name, m)
            assert point.fps_per_image <= rate
        found_s0 = group.counts["kept"] + group.counts["lost"]
        assert found_s0 == group.points["s0"].found
        assert sum(group.counts.values()) == group.n_lesions
    # Each type's rows are its group's lesions, with the same fates.
    for t in ("MA", "HE", "EX", "SE"):
        fates = [r["fate"] for r in result.rows if r["type"] == t]
        assert len(fates) == result.groups[f"type {t}"].n_lesions
        assert {f: fates.count(f) for f in fate.FATES} == result.groups[f"type {t}"].counts
    if rate == 10 and tolerance == 0:
        # S is not s_0 here (the later maps are noise): some lesions change hands.
        counts = [g.counts for g in result.groups.values()]
        assert sum(c["lost"] for c in counts) > 0 and sum(c["gained"] for c in counts) > 0


def test_written_files_agree_with_the_fates(refined, tmp_path):
    data, store = refined
    records, _ = localize.records_for(store, open_dataset(data))
    result = fate.lesion_fates(localize.collect(store, records, erasures=True))
    paths = reports.write_lesion_fate(result, str(tmp_path))
    assert [os.path.basename(p) for p in paths] == ["lesions.csv", "lesion_fate.csv",
                                                      "lesion_fate.md"]
    with open(paths[0], newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == fate.LESION_COLUMNS and len(rows) == len(result.rows)
    assert [r["fate"] for r in rows] == [r["fate"] for r in result.rows]
    assert {r["inpainted_at"] for r in rows if not r["inpainted_at"].isdigit()} <= {""}
    with open(paths[1], newline="") as f:
        summary = list(csv.DictReader(f))
    groups = [r for r in summary if r["by"] == "group"]
    assert [r["group"] for r in groups] == list(result.groups)
    assert int(groups[0]["S_found"]) == result.groups["all"].points["S"].found
    assert {r["by"] for r in summary} == {"group", "type x stage", "type x iteration"}
    assert any(r["iteration"] == "never" for r in summary)
    text = open(paths[2]).read()
    assert text.startswith("# Lesion fate at 10 FP/image") and "| type MA |" in text


def test_froc_command_writes_the_lesion_fates(refined, tmp_path, capsys):
    data, store = refined
    out = str(tmp_path / "froc")
    code, stdout, err = run_main(["froc", store, data, "--out", out, "--bootstrap", "5",
                                  "--lesions", "--lesions-fp", "2"], capsys)
    assert code == 0, err
    assert "Lesions found within 2 FP/image" in stdout
    assert "| group | images | lesions | s_0: FP/image, found | S: FP/image, found |" in stdout
    for name in ("lesions.csv", "lesion_fate.csv", "lesion_fate.md"):
        assert os.path.join(out, name) in stdout
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    assert metrics["params"]["lesions_fp"] == 2.0
    for name, group in metrics["groups"].items():
        for m in ("s0", "S"):
            curve = group[m]["froc"]   # 2 FP/image is one of the 7-point score's rates
            assert (group["lesion_fate"]["points"][m]["sensitivity"]
                    == curve["sensitivity_at_rates"][curve["rates"].index(2.0)]), (name, m)


@pytest.mark.slow
def test_froc_command_without_lesions_writes_no_fates(refined, tmp_path, capsys):
    data, store = refined
    out = str(tmp_path / "plain")
    code, stdout, err = run_main(["froc", store, data, "--out", out, "--bootstrap", "5"], capsys)
    assert code == 0, err
    assert not os.path.exists(os.path.join(out, "lesions.csv")) and "Lesions found" not in stdout
    assert "lesion_fate" not in json.load(open(os.path.join(out, "metrics.json")))["groups"]["all"]


def test_froc_command_refuses_a_bad_budget(refined, tmp_path, capsys):
    data, store = refined
    out = str(tmp_path / "froc")
    code, _, err = run_main(["froc", store, data, "--out", out, "--lesions", "--lesions-fp",
                             "-1"], capsys)
    assert code == 1
    assert err == ("Error: Expected a finite lesions_fp >= 0 (false positives per image). "
                   "Received: lesions_fp=-1.0\n")
    assert not os.path.exists(out)  # refused before anything was computed or written
    code, _, err = run_main(["froc", store, data, "--out", out, "--lesions-fp", "2"], capsys)
    assert code == 2 and "--lesions-fp applies to --lesions; give --lesions" in err
