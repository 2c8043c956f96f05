"""The jobs layer (issue 22, item 5): frozen candidate settings, one progress protocol, outputs
written atomically with their done-marker last."""

import dataclasses
import json
import os

import numpy as np
import pytest

from dr_saliency.fundus import synth
from dr_saliency.fundus.datasets import open_dataset
from dr_saliency.lesions.localize import CandidateOptions
from dr_saliency.refinement.loop import RefineConfig
from dr_saliency.refinement.run import refine_dataset
from tests.test_cli import run_main
from tests.test_faults import _grader

#: What metrics.json and replicate.json held under "candidates" before CandidateOptions had
#: to_params() (``vars()`` of the defaults): the keys and values files on disk carry.
RECORDED_DEFAULTS = {"sigma": 2.0, "min_distance": 4, "max_candidates": 200, "border": 6,
                     "exclude_disc": True, "disc_radius_fraction": 0.2, "method": "peaks",
                     "level": 0.2}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("jobs") / "data")
    synth.write_dataset(root, 6, size=128, seed=3, workers=1)
    return root


# ----------------------------------------------------------------------------- settings


def test_candidate_options_are_frozen_and_keep_the_recorded_keys():
    options = CandidateOptions()
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.sigma = 3.0
    assert options.to_params() == RECORDED_DEFAULTS
    assert json.loads(json.dumps(options.to_params())) == RECORDED_DEFAULTS
    assert CandidateOptions.from_params(RECORDED_DEFAULTS) == options
    # Recorded before the components method existed: peaks, as they were made.
    older = {k: v for k, v in RECORDED_DEFAULTS.items() if k not in ("method", "level")}
    assert CandidateOptions.from_params({**older, "sigma": 1.0}) == CandidateOptions(sigma=1.0)
    assert CandidateOptions(sigma=np.float32(2), border=np.int64(6)) == options


@pytest.mark.parametrize("kwargs, error, text", [
    ({"sigma": -1}, ValueError, "Received: sigma=-1"),
    ({"min_distance": 0}, ValueError, "Received: min_distance=0"),
    ({"max_candidates": 0}, ValueError, "Received: max_candidates=0"),
    ({"method": "blobs"}, ValueError, "Received: method='blobs'"),
    ({"level": 1.5}, ValueError, "Received: level=1.5"),
    ({"exclude_disc": "yes"}, TypeError, "Received: exclude_disc='yes'"),
    ({"disc_radius_fraction": 0}, ValueError, "Received: disc_radius_fraction=0"),
])
def test_candidate_options_are_checked_when_made(kwargs, error, text):
    with pytest.raises(error, match=text):
        CandidateOptions(**kwargs)


def test_bad_candidate_options_fail_before_explain_refines(data, tmp_path, capsys):
    # Before: the photographs were refined into results.h5 first, and the run failed only when
    # its report made the candidates.
    grader = _grader(str(tmp_path / "grader.h5"), 0)
    out = str(tmp_path / "ex")
    code, _, err = run_main(["explain", os.path.join(data, "images", "synth_00001.png"),
                             "--out", out, "--model", grader, "--max-iterations", "1", "--quiet",
                             "--cand-sigma", "-1"], capsys)
    assert code == 1
    assert err.strip() == "Error: Expected a finite sigma >= 0. Received: sigma=-1.0"
    assert not os.path.exists(os.path.join(out, "results.h5"))


# ----------------------------------------------------------------------------- progress


def _fake_explain(images, fovs):
    maps = np.stack([np.asarray(f, np.float32) * (i + 1) for i, f in enumerate(fovs)])
    return maps, np.full(len(images), 3.0, np.float32)


def test_refine_tells_progress_and_images_by_the_one_protocol(data, tmp_path):
    records = list(open_dataset(data))
    out = str(tmp_path / "r.h5")
    phases, lines = [], []

    def on_progress(label, total):
        phases.append([label, total, 0])

        def advance(k=1):
            phases[-1][2] += k
        return advance

    config = RefineConfig(max_iterations=1)
    refine_dataset(records[:4], out, explain=_fake_explain, config=config,
                   on_image=lambda image_id, message: lines.append(image_id),
                   on_progress=on_progress)
    assert phases == [["Refining", 4, 4]] and lines == [r.id for r in records[:4]]
    # Resumed: the images already done count at once, so a progress bar ends full.
    refine_dataset(records, out, explain=_fake_explain, config=config, on_progress=on_progress)
    assert phases[1] == ["Refining", len(records), len(records)]
    with pytest.raises(TypeError, match="Received: on_progress=3"):
        refine_dataset(records, out, explain=_fake_explain, config=config, on_progress=3)


# ----------------------------------------------------------------------------- done-markers


def test_a_froc_stopped_while_rewriting_its_folder_leaves_no_done_marker(data, tmp_path, capsys,
                                                                        monkeypatch):
    # metrics.json marks a complete FROC folder (the demo skips its froc step once it exists).
    # Before: a rerun into the folder that stopped while writing kept the earlier metrics.json
    # beside the new files, a folder that claimed to be complete.
    out = str(tmp_path / "r.h5")
    refine_dataset(list(open_dataset(data)), out, explain=_fake_explain,
                   config=RefineConfig(max_iterations=1))
    froc_dir = str(tmp_path / "froc")
    args = ["froc", out, data, "--out", froc_dir, "--bootstrap", "10"]
    code, _, err = run_main(args, capsys)
    assert code == 0, err
    assert os.path.isfile(os.path.join(froc_dir, "metrics.json"))

    from dr_saliency.figures import plots

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(plots, "froc_figure", disk_full)
    code, _, err = run_main(args + ["--lesions"], capsys)
    assert code == 1
    assert err.strip().splitlines()[-1] == "Error: [Errno 28] No space left on device"
    assert not os.path.exists(os.path.join(froc_dir, "metrics.json"))
    # The lesion files written before the stop are whole files (written atomically).
    assert open(os.path.join(froc_dir, "lesion_fate.md")).read().startswith("# Lesion fate")
    assert not [name for name in os.listdir(froc_dir) if ".tmp" in name]
