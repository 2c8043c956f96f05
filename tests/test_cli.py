"""Command-line tests: click's CliRunner for behaviour, one subprocess for the real entry point."""

import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from dr_saliency import __version__
from dr_saliency.app import cli as cli_module
from dr_saliency.app.cli import cli, main
from dr_saliency.core import errors

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_main(args, capsys):
    """Call the console-script entry point in-process; return (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as info:
        main(args)
    out = capsys.readouterr()
    return info.value.code, out.out, out.err


def test_version_and_help():
    runner = CliRunner()
    result = runner.invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"dr-saliency, version {__version__}"
    result = runner.invoke(cli, ["--help"])
    assert result.exit_code == 0
    for command in ("model", "demo", "synth", "preprocess", "train", "evaluate", "refine",
                    "froc", "figures"):
        assert command in result.output


def test_model_command_prints_layers_and_exports(tmp_path):
    path = tmp_path / "m.h5"
    result = CliRunner().invoke(cli, ["model", "--input-size", "128", "--width", "0.0625",
                                      "--export", str(path)])
    assert result.exit_code == 0, result.output
    assert "block5_pool" in result.output and "1x1x32" in result.output
    assert "dr_stage" in result.output
    assert "Total parameters: 132,325" in result.output
    assert path.is_file()


def test_bad_input_is_one_line_and_exit_1(capsys):
    code, out, err = run_main(["model", "--input-size", "64"], capsys)
    assert code == 1
    assert err.strip().splitlines() == [
        "Error: Expected input height and width of at least 128 pixels, so that block5_pool is "
        "at least 1x1. Received: input_shape=(64, 64, 3)"]
    assert "Traceback" not in out + err


def test_usage_error_exits_2(capsys):
    code, _, err = run_main(["model", "--input-size", "abc"], capsys)
    assert code == 2
    assert "Invalid value for '--input-size'" in err


def test_debug_shows_the_exception(capsys):
    with pytest.raises(ValueError, match="at least 128 pixels"):
        main(["--debug", "model", "--input-size", "64"])


@pytest.mark.slow
def test_demo_smoke_profile_runs_every_step_and_reuses_them(tmp_path, capsys, monkeypatch):
    out = str(tmp_path / "demo")
    result = CliRunner().invoke(cli, ["demo", "--out", out, "--profile", "smoke"])
    assert result.exit_code == 0, result.output
    for step in ("synth", "train", "evaluate", "refine", "froc", "figures"):
        assert f"[{step}] done in" in result.output
    report = open(os.path.join(out, "REPORT.md"), encoding="utf-8").read()
    assert "## Lesion-level FROC, s_0 against S" in report and "| stage 2 |" in report
    for path in ("froc/froc_stages.png", "froc/froc_types.pdf", "figures/figure1_panels.png",
                 "evaluation/roc.png", "run/model.h5"):
        assert os.path.isfile(os.path.join(out, path)), path
    again = CliRunner().invoke(cli, ["demo", "--out", out, "--profile", "smoke"])
    assert again.exit_code == 0, again.output
    assert again.output.count("already done") == 6
    # The demo and `dr-saliency refine` are wired by one function: the command resumes the
    # demo's result file (same params) instead of refusing it, from another working directory.
    monkeypatch.chdir(tmp_path)
    args = ["refine", os.path.join(out, "run", "model.h5"), os.path.join(out, "data"),
            "--out", os.path.join("demo", "refine.h5"), "--split", "test", "--only-referable",
            "--quiet"]
    code, stdout, err = run_main(args, capsys)
    assert code == 0, err
    assert stdout.startswith("0 images refined") and "already done" in stdout
    # ... and refuses other settings, naming them.
    code, _, err = run_main(args + ["--sign", "abs"], capsys)
    assert code == 1 and 'sign="abs" (file has "negative")' in err


@pytest.mark.slow
def test_installed_entry_point_keeps_tensorflow_chatter_out_of_stdout():
    env = dict(os.environ)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    proc = subprocess.run([sys.executable, os.path.join(REPO, "bin", "dr-saliency"), "model",
                           "--input-size", "128", "--width", "0.0625"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("layer")
    assert "oneDNN" not in proc.stdout + proc.stderr
    bad = subprocess.run([sys.executable, os.path.join(REPO, "bin", "dr-saliency"), "model",
                          "--weights", "/no/such.h5"], capture_output=True, text=True, env=env,
                         timeout=300)
    assert bad.returncode == 1
    assert bad.stderr.strip().startswith("Error: Expected weights")
    assert "Traceback" not in bad.stderr


@pytest.mark.slow
def test_synth_train_evaluate_refine_end_to_end(tmp_path, capsys):
    data, run, out = str(tmp_path / "data"), str(tmp_path / "run"), str(tmp_path / "res.h5")
    runner = CliRunner()
    result = runner.invoke(cli, ["synth", data, "--n", "30", "--size", "128", "--workers", "1"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli, ["train", data, "--out", run, "--profile", "quick",
                                 "--input-size", "128", "--width", "0.0625", "--epochs", "1",
                                 "--batch-size", "4"])
    assert result.exit_code == 0, result.output
    assert "Trained on 21 images, validated on 5" in result.output
    result = runner.invoke(cli, ["evaluate", f"{run}/model.h5", data, "--out", f"{run}/eval",
                                 "--bootstrap", "20"])
    assert result.exit_code == 0, result.output
    assert "images (test): quadratic kappa" in result.output
    args = ["refine", f"{run}/model.h5", data, "--out", out, "--split", "test",
            "--stop-at", "0", "--max-iterations", "2"]
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "images refined" in result.output and "synth_" in result.output
    again = runner.invoke(cli, args)
    assert "0 images refined" in again.output and "already done" in again.output
    # Another decay on the same file: refused, in one line, exit 1.
    code, _, err = run_main(args[:-2] + ["--max-iterations", "3"], capsys)
    assert code == 1
    assert err.startswith("Error: ") and "max_iterations=3 (file has 2)" in err
    assert len(err.strip().splitlines()) == 1


def test_library_errors_get_the_flag_that_works_around_them(tmp_path, capsys):
    from dr_saliency.fundus.datasets.folder import write_labels, write_sample
    import numpy as np

    data = tmp_path / "data"
    write_sample(data, "a", np.full((16, 16, 3), 100, np.uint8))
    write_labels(data, [{"image": "a", "level": 2, "split": "train"}])
    model = tmp_path / "model.h5"
    model.write_bytes(b"not loaded: the split is checked first")
    code, _, err = run_main(["refine", str(model), str(data), "--out", str(tmp_path / "r.h5"),
                             "--split", "val"], capsys)
    assert code == 1
    assert err.strip() == ("Error: Expected images in split 'val' (splits present: train). "
                           "Received: split='val' (use --split all for every image)")


@pytest.mark.parametrize("error, advice", [
    (errors.BadImageError("im1", "unreadable"), "use --skip-bad to skip bad images"),
    (errors.ImageSizeError("im1", "64x64", 512),
     "preprocess the data to that size first: dr-saliency preprocess --size 512"),
    (errors.EmptySplitError("none", "val", ["train"]), "use --split all for every image"),
    (errors.PartialResultsError("ids differ", ["x"]),
     "use --allow-partial to evaluate the images in both"),
    (errors.RunExistsError("a run", "run"), "continue it with --resume, or choose another --out"),
    (errors.FolderInUseError("other", "out"), "choose another output folder"),
    (errors.FolderInUseError("other", "out", can_overwrite=True),
     "choose another output folder, or pass --overwrite"),
    (errors.NoValidationError("none"), "give the data a 'val' split, or set --val-fraction"),
    (errors.OutOfMemoryError("oom", 8), "try a smaller --batch-size, e.g. 4"),
    (ValueError("plain"), None),
])
def test_advice_for_each_typed_error(error, advice):
    assert cli_module._advice(error) == advice


def test_train_needs_exactly_one_of_out_and_resume(tmp_path, capsys):
    code, _, err = run_main(["train", str(tmp_path)], capsys)
    assert code == 2 and "exactly one of --out RUN_DIR" in err


def test_preprocess_command_on_a_folder(tmp_path):
    from dr_saliency.fundus.datasets import open_dataset
    runner = CliRunner()
    src, out = str(tmp_path / "src"), str(tmp_path / "out")
    assert runner.invoke(cli, ["synth", src, "--n", "4", "--size", "256", "--workers", "1"]).exit_code == 0
    result = runner.invoke(cli, ["preprocess", src, out, "--size", "128", "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "4 images written, 0 already done, 0 skipped" in result.output
    ds = open_dataset(out)
    assert len(ds) == 4 and ds[0].load_image().shape == (128, 128, 3)
    result = runner.invoke(cli, ["preprocess", src, out, "--size", "128", "--workers", "1"])
    assert "0 images written, 4 already done" in result.output
