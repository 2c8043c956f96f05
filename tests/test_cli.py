"""Command-line tests: click's CliRunner for behaviour, one subprocess for the real entry point."""

import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from dr_saliency import __version__
from dr_saliency.cli import cli, main

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
    for command in ("model", "demo"):
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


def test_demo_reports_geometry():
    result = CliRunner().invoke(cli, ["demo", "--input-size", "128", "--width", "0.0625"])
    assert result.exit_code == 0, result.output
    assert "Total parameters" in result.output
    assert "block5_pool (1, 1, 32)" in result.output


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
