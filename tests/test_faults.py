"""Nothing lost, nothing mixed: the provenance, resume and overwrite probes of issue 14, through
the command line (the job-process probes are in test_faults_jobs.py, the input probes in
test_faults_inputs.py)."""

import os
import shutil

import numpy as np
import pytest

from dr_saliency.grader import model as model_lib
from dr_saliency.refinement.store import ResultStore, read_params
from tests.test_cli import run_main
from dr_saliency.fundus import synth


def _grader(path, seed):
    """A tiny 128 px grader with random (seeded) weights whose predictions are referable."""
    net = model_lib.build_model((128, 128, 3), weights=None, width=1 / 16)
    rng = np.random.default_rng(seed)
    weights = net.get_weights()
    weights[-2] = rng.normal(0, 1e-4, weights[-2].shape).astype(np.float32)
    weights[-1] = np.full_like(weights[-1], 3.0)
    net.set_weights(weights)
    model_lib.export_model(net, path)
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Two synthetic datasets with lesion masks and the same ids, other pictures."""
    root = tmp_path_factory.mktemp("world")
    for name, seed in (("data", 0), ("other", 9)):
        synth.write_dataset(str(root / name), 12, size=128, seed=seed, workers=1)
    return {"data": str(root / "data"), "other": str(root / "other")}


IDS = ("synth_00001", "synth_00002")


def _refine(model, data, out, capsys, *extra):
    return run_main(["refine", model, data, "--out", out, "--ids", ",".join(IDS),
                     "--max-iterations", "1", "--quiet", *extra], capsys)


@pytest.mark.slow
def test_results_record_the_model_by_content_and_refuse_another(world, tmp_path, capsys):
    model = _grader(str(tmp_path / "m.h5"), 0)
    out = str(tmp_path / "r.h5")
    code, stdout, err = _refine(model, world["data"], out, capsys)
    assert code == 0, err
    params = read_params(out)
    assert params["model"] == "m.h5" and len(params["model_sha256"]) == 64
    assert len(params["data"]) == 64
    # Another model copied over the same path: refused, not resumed into a mixed file.
    _grader(model, 1)
    code, _, err = _refine(model, world["data"], out, capsys)
    assert code == 1 and err.count("\n") == 1
    assert "model_sha256=" in err and "(file has" in err
    with ResultStore(out) as store:
        assert store.complete_ids() == list(IDS)


@pytest.mark.slow
def test_results_refuse_another_dataset_with_the_same_ids(world, tmp_path, capsys):
    model = _grader(str(tmp_path / "m.h5"), 0)
    out = str(tmp_path / "r.h5")
    assert _refine(model, world["data"], out, capsys)[0] == 0
    code, _, err = _refine(model, world["other"], out, capsys)
    assert code == 1 and err.count("\n") == 1 and "data=" in err

    # froc and figures on another dataset: refused with the way around it; --force goes on.
    froc = ["froc", out, world["other"], "--out", str(tmp_path / "froc"), "--bootstrap", "5"]
    code, _, err = run_main(froc, capsys)
    assert code == 1 and err.count("\n") == 1
    assert "Expected the dataset" in err and "was made from (or --force)" in err
    assert "(pass --force to use it anyway)" in err
    figures = ["figures", out, world["other"], "--out", str(tmp_path / "fig"), "--format", "png"]
    code, _, err = run_main(figures, capsys)
    assert code == 1 and "was made from" in err
    assert not os.path.exists(tmp_path / "fig" / "done.json")


@pytest.mark.slow
def test_froc_refuses_the_results_of_an_interrupted_run(world, tmp_path, capsys):
    model = _grader(str(tmp_path / "m.h5"), 0)
    out = str(tmp_path / "r.h5")
    assert _refine(model, world["data"], out, capsys)[0] == 0
    with ResultStore(out, "a") as store:
        store.begin_run(12, done=2)  # as a refine killed after its start
    code, _, err = run_main(["froc", out, world["data"], "--out", str(tmp_path / "f"),
                             "--bootstrap", "5"], capsys)
    assert code == 1 and err.count("\n") == 1
    assert "did not finish: it planned 12 images, and 2 are complete" in err
    assert "(use --allow-partial" in err
    code, stdout, err = run_main(["froc", out, world["data"], "--out", str(tmp_path / "f"),
                                  "--bootstrap", "5", "--allow-partial"], capsys)
    assert code == 0, err
    assert "Note: Partial results: the refine run started" in err


@pytest.mark.slow
def test_a_refine_that_failed_before_its_first_image_does_not_block_the_rerun(world, tmp_path,
                                                                              capsys):
    data = str(tmp_path / "data")
    shutil.copytree(world["data"], data)
    with open(os.path.join(data, "images", IDS[0] + ".png"), "wb") as f:
        f.write(b"broken")
    model = _grader(str(tmp_path / "m.h5"), 0)
    out = str(tmp_path / "r.h5")
    code, _, err = _refine(model, data, out, capsys)
    assert code == 1 and IDS[0] in err and "(use --skip-bad" in err
    # The corrected command, with other settings, runs: the file held no result.
    code, _, err = _refine(model, data, out, capsys, "--skip-bad", "--decay", "0.5")
    assert code == 0, err
    assert read_params(out)["decay"] == 0.5


def test_model_export_never_replaces_a_file_unasked(tmp_path, capsys):
    target = tmp_path / "model.h5"
    target.write_bytes(b"a trained grader")
    args = ["model", "--input-size", "128", "--width", "0.0625", "--export", str(target)]
    code, _, err = run_main(args, capsys)
    assert code == 1 and err.count("\n") == 1
    assert "Expected a new file to export to (pass --overwrite to replace it)" in err
    assert target.read_bytes() == b"a trained grader"
    code, _, err = run_main(args + ["--overwrite"], capsys)
    assert code == 0, err
    assert model_lib.load_model(str(target)).input_shape == (None, 128, 128, 3)


def test_train_resume_takes_no_options_it_would_ignore(world, tmp_path, capsys):
    code, _, err = run_main(["train", world["data"], "--resume", str(tmp_path), "--epochs", "12"],
                            capsys)
    assert code == 2
    assert "--resume continues the run with its own settings (config.json); it takes no --epochs" in err
