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


def test_evaluate_on_ungraded_images_gives_no_split_advice(tmp_path, capsys):
    from dr_saliency.fundus.datasets.folder import write_labels, write_sample
    import numpy as np
    from dr_saliency.grader import model as model_lib

    data = tmp_path / "data"
    write_sample(data, "a", np.full((128, 128, 3), 100, np.uint8))
    write_labels(data, [{"image": "a", "split": "test"}])
    model = tmp_path / "model.h5"
    model_lib.export_model(model_lib.build_model((128, 128, 3), weights=None, width=1 / 16),
                           str(model))
    code, _, err = run_main(["evaluate", str(model), str(data), "--split", "all", "--out",
                             str(tmp_path / "eval")], capsys)
    assert code == 1
    assert err.strip() == ("Error: Expected graded images in split 'all' (splits present: none). "
                           "Received: split='all'")


@pytest.mark.parametrize("error, advice", [
    (errors.BadImageError("im1", "unreadable"), "use --skip-bad to skip bad images"),
    (errors.ImageSizeError("im1", "64x64", 512),
     "preprocess the data to that size first: dr-saliency preprocess --size 512"),
    (errors.EmptySplitError("none", "val", ["train"]), "use --split all for every image"),
    (errors.EmptySplitError("none", "all", []), None),
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


# --------------------------------------------------------------------------------------------
# One command line: every option has help, one default style, one meaning per name
# --------------------------------------------------------------------------------------------

def _options():
    """(command name, click.Option, its help line) for every option of every command."""
    import click

    root = click.Context(cli, info_name="dr-saliency", show_default=True)
    for name, command in sorted(cli.commands.items()):
        ctx = click.Context(command, parent=root, info_name=name)
        for param in command.params:
            if isinstance(param, click.Option):
                yield name, param, param.get_help_record(ctx)


def test_every_option_has_help_and_shows_its_default_one_way():
    import click

    for name, param, record in _options():
        where = f"{name} {param.opts[0]}"
        assert record is not None and param.help and param.help.strip(), f"{where}: no help"
        text = " ".join(record[1].split())
        # Defaults are "[default: text]": never a Python value, never "(default: ...)" in prose.
        assert text.lower().count("default:") == text.count("[default: "), where
        assert "[default: (" not in text and "None" not in text and "{" not in text, where
        has_default = param.default not in (None, click.core.UNSET) and not (
            param.is_flag and not param.secondary_opts)
        if has_default:
            assert "[default: " in text, f"{where}: default {param.default!r} not shown"
        for alias in getattr(param, "aliases", ()):
            assert alias not in record[0].split(", ") and alias not in record[0].split(" / "), \
                f"{where}: alias {alias} shown"


#: Option names that differ between commands on purpose: why.
_DIFFERENT_ON_PURPOSE = {
    "--out": "a folder everywhere, refine's result file; each command's own default",
    "--profile": "train's training settings, the demo's data and network: cli.PROFILES_HELP "
                 "says what each name means and where it exists",
    "--batch-size": "train: images per optimiser step (a training setting); evaluate, refine, "
                    "explain: images per network pass (memory only), one default",
    "--seed": "one type everywhere; the demo's default is its profile's",
    "--split": "which split: evaluate grades the test images, refine any",
    "--ids": "refine: every image of --split; figures: picked automatically",
    "--combine": "froc recombines the stored maps; default: the run's",
    "--decay": "froc recombines the stored maps; default: the run's",
    "--normalize": "froc recombines the stored maps; default: the run's",
    "--input-size": "train's default follows --profile (model's is the paper profile's)",
    "--width": "train's default follows --profile (model's is the paper profile's)",
    "--weights": "train's default follows --profile (model's is none)",
}


def test_an_option_name_means_one_thing_in_every_command():
    import collections

    seen = collections.defaultdict(set)
    kinds = collections.defaultdict(set)
    for name, param, _ in _options():
        choices = tuple(getattr(param.type, "choices", ()))
        seen[param.opts[0]].add((param.type.name, choices, str(param.default)))
        kinds[param.opts[0]].add((param.type.name, tuple(sorted(set(choices) & {"quick"}))))
    for option, variants in seen.items():
        if option in _DIFFERENT_ON_PURPOSE:
            continue
        assert len(variants) == 1, f"{option} differs between commands: {sorted(variants)}"
    # Even where defaults differ on purpose, the kind of value is one (profile names aside).
    for option in _DIFFERENT_ON_PURPOSE:
        if option not in ("--profile", "--out"):
            assert len(kinds[option]) == 1, (option, kinds[option])
    # Hidden old names take no other option's name, except synth's two that were renamed
    # because evaluate's --split (which split) and froc's --stages (which stages) differ.
    names = {opt for _, p, _ in _options() for opt in p.opts
             if opt not in getattr(p, "aliases", ())}
    aliases = {a for _, p, _ in _options() for a in getattr(p, "aliases", ())}
    assert names & aliases == {"--split", "--stages"}


def test_top_level_help_shows_each_whole_summary():
    result = CliRunner().invoke(cli, ["--help"], terminal_width=80)
    assert result.exit_code == 0
    shown = " ".join(result.output.split())
    for name, command in cli.commands.items():
        summary = " ".join(command.help.split("\n\n")[0].split())
        assert summary in shown, name


def test_level_and_weights_show_readable_defaults():
    runner = CliRunner()
    refine = " ".join(runner.invoke(cli, ["refine", "--help"]).output.split())
    assert "[default: top_fraction 0.005; fraction_of_max 0.5]" in refine
    model = " ".join(runner.invoke(cli, ["model", "--help"]).output.split())
    train = " ".join(runner.invoke(cli, ["train", "--help"]).output.split())
    assert "[default: none]" in model
    assert "[default: imagenet (paper), none (quick, reference)]" in train


def test_profile_names_are_explained_in_every_command_that_takes_them():
    for command in ("train", "demo", "replicate"):
        text = " ".join(CliRunner().invoke(cli, [command, "--help"]).output.split())
        for name in ("quick:", "reference:", "paper (train only):",
                     "smoke (demo and replicate only):"):
            assert name in text, (command, name)


@pytest.mark.parametrize("args", [
    ["synth", "--out", "{d}", "--n", "2", "--size", "128", "--workers", "1"],
    ["synth", "{d}", "--n", "2", "--size", "128", "--workers", "1"],
    ["synth", "{d}", "--out", "{d}", "--n", "2", "--size", "128", "--workers", "1"],
])
def test_synth_takes_out_as_option_or_argument(tmp_path, capsys, args):
    d = str(tmp_path / "data")
    code, out, err = run_main([a.format(d=d) for a in args], capsys)
    assert code == 0, err
    assert out.startswith("2 synthetic images of 128x128") and os.path.isdir(d)


@pytest.mark.parametrize("args, message", [
    (["synth", "a", "--out", "b"], "Give the output folder once: OUT 'a' and --out 'b' differ."),
    (["synth"], "Missing the output folder: give --out OUT (or OUT last)."),
])
def test_synth_out_given_twice_or_never_is_a_usage_error(tmp_path, capsys, monkeypatch, args,
                                                        message):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_main(args, capsys)
    assert code == 2 and message in err
    assert not os.listdir(tmp_path)


def test_preprocess_takes_out_as_option(tmp_path, capsys):
    src, out = str(tmp_path / "src"), str(tmp_path / "out")
    assert run_main(["synth", src, "--n", "2", "--size", "128", "--workers", "1"], capsys)[0] == 0
    code, stdout, err = run_main(["preprocess", src, "--out", out, "--size", "128",
                                  "--workers", "1"], capsys)
    assert code == 0, err
    assert "2 images written" in stdout


def test_old_option_names_still_parse_but_are_not_shown(tmp_path):
    results, data = tmp_path / "r.h5", tmp_path / "data"
    results.write_bytes(b"")
    data.mkdir()
    froc = cli.commands["froc"]
    ctx = froc.make_context("froc", [str(results), str(data), "--out", "o", "--border", "3",
                                     "--min-distance", "5", "--max-candidates", "7",
                                     "--keep-disc"])
    assert (ctx.params["border"], ctx.params["min_distance"], ctx.params["max_candidates"],
            ctx.params["exclude_disc"]) == (3, 5, 7, False)
    ctx = cli.commands["synth"].make_context("synth", ["o", "--stages", "kaggle",
                                                       "--split", "0.5,0.25,0.25"])
    assert ctx.params["stages"] == "kaggle" and ctx.params["split"] == (0.5, 0.25, 0.25)
    shown = CliRunner().invoke(cli, ["froc", "--help"]).output
    for old in ("--border", "--min-distance", "--max-candidates", "--exclude-disc"):
        assert f" {old} " not in shown and f"--cand-{old[2:]}" in shown.replace(
            "--cand-max ", "--cand-max-candidates ")


def test_explain_takes_the_candidate_options_of_froc(tmp_path, monkeypatch):
    from dr_saliency.jobs import explain as photos

    def names(command):
        return {o for p in cli.commands[command].params for o in p.opts if o.startswith("--cand")}

    assert names("froc") == names("explain") and "--cand-border" in names("explain")
    seen = {}

    def fake(inputs, out_dir, **kwargs):
        seen.update(kwargs)
        raise ValueError("stopped by the test")

    monkeypatch.setattr(photos, "explain_photos", fake)
    image = tmp_path / "a.png"
    image.write_bytes(b"")
    result = CliRunner().invoke(cli, ["explain", str(image), "--out", str(tmp_path / "x"),
                                      "--cand-border", "9", "--cand-max", "11"])
    assert "stopped by the test" in str(result.exception)
    assert (seen["options"].border, seen["options"].max_candidates) == (9, 11)


def test_demo_takes_a_seed(tmp_path, monkeypatch, capsys):
    from dr_saliency.jobs import demo

    seen = {}

    def fake(out, **kwargs):
        seen.update(kwargs)
        return os.path.join(out, "REPORT.md")

    monkeypatch.setattr(demo, "run_demo", fake)
    code, out, err = run_main(["demo", "--profile", "smoke", "--seed", "7",
                               "--out", str(tmp_path / "d")], capsys)
    assert code == 0, err
    assert seen["seed"] == 7 and seen["profile"] == "smoke"
    code, _, err = run_main(["demo", "--seed", "-1"], capsys)
    assert code == 2 and "Invalid value for '--seed': -1 is not in the range" in err


@pytest.mark.parametrize("command", ["froc", "replicate", "evaluate"])
def test_bootstrap_is_range_checked_everywhere(tmp_path, capsys, command):
    files = []
    if command in ("froc", "evaluate"):
        (tmp_path / "f.h5").write_bytes(b"")
        (tmp_path / "data").mkdir()
        files = [str(tmp_path / "f.h5"), str(tmp_path / "data")]
    code, _, err = run_main([command, *files, "--out", str(tmp_path / "o"), "--bootstrap", "0"],
                            capsys)
    assert code == 2
    assert "Invalid value for '--bootstrap': 0 is not in the range x>=1." in err
    assert not os.path.exists(tmp_path / "o")


def test_evaluate_and_refine_batch_size_share_one_default():
    defaults = {name: p.default for name, p, _ in _options() if p.opts[0] == "--batch-size"}
    del defaults["train"]  # a training setting, its default follows --profile
    assert sorted(defaults) == ["evaluate", "explain", "refine"]
    assert len(set(defaults.values())) == 1, defaults
