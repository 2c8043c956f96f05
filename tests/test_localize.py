"""Tests of localize (FROC of stored results), reports and figures, on a small synthetic set
refined with a fake explainer (no network)."""

import json
import os

import numpy as np
import pytest

from dr_saliency.lesions import panels as figures

from dr_saliency.lesions import localize

from dr_saliency.refinement import run as pipeline
from dr_saliency.refinement.loop import RefineConfig
from dr_saliency.core.errors import PartialResultsError

from dr_saliency.lesions import reports

from dr_saliency.fundus import synth
from dr_saliency.fundus.datasets import open_dataset
from dr_saliency.refinement.store import ResultStore


def lesion_explainer(data_root):
    """A fake explainer whose map is the image's own lesion masks (strong) plus faint noise:
    an oracle, so s_0 finds lesions and the FROC must be high."""
    ds = open_dataset(data_root)
    lesions = {}
    for rec in ds:
        union = np.logical_or.reduce(list(rec.load_lesions().values()))
        lesions[rec.load_image().tobytes()] = union

    def explain(images, fovs):
        rng = np.random.default_rng(0)
        maps = []
        for img, fov in zip(images, fovs):
            base = lesions.get(img.tobytes())
            m = rng.random(img.shape[:2]).astype(np.float32) * 0.05
            if base is not None:
                m += base
            maps.append(m * fov)
        return np.stack(maps), np.full(len(images), 3.0, np.float32)

    return explain, (lambda images: np.full(len(images), 0.5, np.float32))


@pytest.fixture(scope="module")
def refined(tmp_path_factory):
    root = tmp_path_factory.mktemp("loc")
    data = str(root / "data")
    synth.write_dataset(data, 10, size=128, seed=3, workers=1)
    explain, predict = lesion_explainer(data)
    store = str(root / "r.h5")
    pipeline.refine_dataset(list(open_dataset(data)), store, explain=explain, predict=predict,
                            config=RefineConfig(max_iterations=2))
    return data, store


def test_match_ids_lists_missing_and_allows_partial(refined, tmp_path):
    data, store = refined
    ds = open_dataset(data)
    with ResultStore(store) as st:
        ids = st.complete_ids()
    records, notes = localize.match_ids(ids, ds)
    assert len(records) == 10 and notes == []
    with pytest.raises(PartialResultsError, match=r"allow_partial=True.*1 result\(s\) have no "
                                                  r"image in the dataset: ghost") as info:
        localize.match_ids(ids + ["ghost"], ds)
    assert info.value.missing == ("ghost",)
    records, notes = localize.match_ids(ids + ["ghost"], ds, allow_partial=True)
    assert len(records) == 10 and "ghost" in notes[0]
    records, notes = localize.records_for(store, ds)
    assert [r.id for r in records] == sorted(ids) and notes == []
    with pytest.raises(ValueError, match=r"no image in both"):
        localize.match_ids(["ghost"], ds, allow_partial=True)


def test_lesion_union():
    a, b = np.zeros((2, 2), bool), np.zeros((2, 2), bool)
    a[0, 0], b[1, 1] = True, True
    np.testing.assert_array_equal(localize.lesion_union({"MA": a, "EX": b}), a | b)
    np.testing.assert_array_equal(localize.lesion_union({"MA": a, "EX": b}, ("EX",)), b)
    assert localize.lesion_union({"MA": a}, ("SE",)) is None
    assert localize.lesion_union(None) is None


def test_oracle_maps_score_high_and_report_has_every_group(refined):
    data, store = refined
    records, _ = localize.match_ids(ResultStore(store).complete_ids(), open_dataset(data))
    items = localize.collect(store, records, localize.CandidateOptions(exclude_disc=False))
    assert all(i.candidates["s0"].shape[1] == 3 for i in items)
    report = localize.froc_report(items, n_boot=50)
    assert "all" in report and "type HE" in report
    assert any(k.startswith("stage ") for k in report)
    # The oracle map marks every lesion: s_0 finds most lesions at a few FP per image.
    assert report["all"]["s0"]["froc"].sensitivity_at(8) > 0.5
    rows = localize.summary_rows(report)
    assert rows[0]["group"] == "all" and rows[0]["images"] == 10


def test_write_froc_files_and_table(refined, tmp_path):
    data, store = refined
    records, _ = localize.match_ids(ResultStore(store).complete_ids(), open_dataset(data))
    report = localize.froc_report(localize.collect(store, records), n_boot=20)
    paths = reports.write_froc(report, str(tmp_path), params={"x": 1})
    names = {os.path.basename(p) for p in paths}
    assert {"metrics.json", "curves.csv", "froc_stages.png", "froc_types.pdf"} <= names
    metrics = json.load(open(tmp_path / "metrics.json"))
    assert metrics["params"] == {"x": 1}
    assert metrics["groups"]["all"]["n_images"] == 10
    table = reports.summary_table(report)
    assert table.splitlines()[0].startswith("| group | images | lesions | score s_0")
    assert table == reports.table_from_rows(json.loads(json.dumps(
        localize.summary_rows(report), default=reports._json_default)))


def test_recombining_changes_S_only(refined):
    data, store = refined
    records, _ = localize.match_ids(ResultStore(store).complete_ids(), open_dataset(data))
    a = localize.collect(store, records[:3])
    b = localize.collect(store, records[:3], combine="max", decay=0.9)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.candidates["s0"], y.candidates["s0"])


def test_figures_replay_and_write(refined, tmp_path):
    data, store = refined
    ds = open_dataset(data)
    with ResultStore(store) as st:
        image_id = st.complete_ids()[0]
        result = st.read(image_id)
    images = figures.replay_images(ds.by_id(image_id).load_image(), result)
    assert images.shape[0] == result.iterations + 1
    assert not np.array_equal(images[0], images[-1])  # the masks were inpainted
    written = figures.write_figures(store, ds, str(tmp_path), n_rows=2, formats=("png",))
    assert os.path.basename(written[-1]) == "done.json"
    chosen = json.load(open(written[-1]))["ids"]
    assert len(chosen) == 2
    assert os.path.isfile(tmp_path / "figure1_panels.png")
    assert os.path.isfile(tmp_path / f"iterations_{chosen[0]}.png")
    with pytest.raises(ValueError, match=r"complete in the results.*Received: nope"):
        figures.write_figures(store, ds, str(tmp_path), ids=["nope"])


@pytest.mark.parametrize("normalize", ["map", "image", "none"])
@pytest.mark.parametrize("combine", ["mean", "max"])
def test_decay_0_scores_s_exactly_as_s0_in_every_group(refined, normalize, combine):
    # docs/contracts.md: s_0 and S pass through one normalisation and one candidate setting, so with
    # decay 0 (S is s_0) their FROCs are identical, whatever the scale.
    data, store = refined
    records, _ = localize.records_for(store, open_dataset(data))
    items = localize.collect(store, records, decay=0.0, combine=combine, normalize=normalize)
    report = localize.froc_report(items, n_boot=20)
    assert {"all", "stage 2", "type EX"} <= set(report) or len(report) > 3
    for name, entry in report.items():
        a, b = entry["s0"]["froc"], entry["S"]["froc"]
        np.testing.assert_array_equal(a.fps_per_image, b.fps_per_image, err_msg=name)
        np.testing.assert_array_equal(a.sensitivity, b.sensitivity, err_msg=name)
        assert entry["paired"].average_sensitivity.difference == 0.0, name




@pytest.mark.slow
def test_froc_command_scores_a_store_with_the_chosen_candidates(refined, tmp_path, capsys):
    from tests.test_cli import run_main

    data, store = refined
    as10 = {}
    for method in ("peaks", "components"):
        out = str(tmp_path / method)
        code, stdout, err = run_main(["froc", store, data, "--out", out, "--bootstrap", "20",
                                      "--cand-method", method, "--cand-level", "0.3"], capsys)
        assert code == 0, err
        assert "| all |" in stdout and f"Wrote {out}" in stdout
        metrics = json.load(open(os.path.join(out, "metrics.json")))
        assert metrics["params"]["candidates"]["method"] == method
        assert metrics["params"]["data"] == os.path.abspath(data)
        as10[method] = metrics["groups"]["all"]["S"]["froc"]["average_sensitivity"]
    # The oracle's maps are the lesion masks: peaks find most lesions; one region per group of
    # touching lesions finds fewer (as on real maps, docs/choices.md).
    assert as10["peaks"] > 0.5 and 0 < as10["components"] < as10["peaks"]
