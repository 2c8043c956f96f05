"""Bad inputs found by a user's probes: each fails clearly, by name, in one line on the command
line, or is skipped when asked; stale or lost outputs are not left behind.

Tiny inputs throughout: 128 px images, a width-1/16 grader that is never trained (grading bad
input needs no good grader), a 10-image synthetic set refined with a fake explainer.
"""

import csv
import json
import os
import shutil

import click
import cv2
import numpy as np
import pytest

from test_cli import run_main  # the console-script entry point, called in-process

from dr_saliency.app import cli as cli_module
from dr_saliency.jobs import demo
from dr_saliency.core.errors import BadImageError, ImageSizeError
from dr_saliency.fundus import synth
from dr_saliency.fundus.datasets import open_dataset
from dr_saliency.fundus.datasets.folder import write_labels, write_sample
from dr_saliency.fundus.imio import write_image
from dr_saliency.lesions import panels
from dr_saliency.refinement import run as refine_lib
from dr_saliency.refinement.loop import RefineConfig

SIZE = 128


# --------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------

def _image(seed, size=SIZE):
    img = np.zeros((size, size, 3), np.uint8)
    cv2.circle(img, (size // 2, size // 2), size // 2 - 2, (180, 80, 40), -1)
    img[::7, ::5] = np.random.default_rng(seed).integers(0, 255, 3, dtype=np.uint8)
    return img


def make_data(root, ids=None):
    """A folder dataset of 128 px images, stages 0-4 in turn, no split column."""
    ids = ids or [f"img_{i:03d}" for i in range(10)]
    for i, image_id in enumerate(ids):
        write_sample(str(root), image_id, _image(i))
    write_labels(str(root), [{"image": image_id, "level": i % 5} for i, image_id in enumerate(ids)])
    return str(root)


@pytest.fixture(scope="module")
def grader(tmp_path_factory):
    """(model, path of its model.h5): an untrained 128 px, width-1/16 grader."""
    from dr_saliency.grader import model as model_lib

    net = model_lib.build_model((SIZE, SIZE, 3), weights=None, width=1 / 16)
    path = str(tmp_path_factory.mktemp("grader") / "model.h5")
    model_lib.export_model(net, path)
    return net, path


@pytest.fixture(scope="module")
def refined(tmp_path_factory):
    """(data folder, result file): 10 synthetic images, those not of stage 1 refined with a fake
    explainer (its map: the image's own lesions, faintly noisy)."""
    root = tmp_path_factory.mktemp("refined")
    data = str(root / "data")
    synth.write_dataset(data, 10, size=SIZE, seed=3, workers=1)
    ds = open_dataset(data)
    lesions = {rec.load_image().tobytes(): np.logical_or.reduce(list(rec.load_lesions().values()))
               for rec in ds}

    def explain(images, fovs):
        rng = np.random.default_rng(0)
        maps = [(rng.random(img.shape[:2]).astype(np.float32) * 0.05
                 + lesions.get(img.tobytes(), 0)) * fov for img, fov in zip(images, fovs)]
        return np.stack(maps).astype(np.float32), np.full(len(images), 3.0, np.float32)

    store = str(root / "r.h5")
    refine_lib.refine_dataset([r for r in ds if r.grade != 1], store, explain=explain,
                              predict=lambda images: np.full(len(images), 0.5, np.float32),
                              config=RefineConfig(max_iterations=2))
    return data, store


def _corrupt(path, kind):
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        if kind == "truncated":
            f.write(data[: len(data) // 3])
        elif kind == "garbage":
            f.write(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes())
        # "empty": nothing written, a zero-byte file


# --------------------------------------------------------------------------------------------
# 1. evaluate: a corrupt, truncated or empty image is named, or skipped with skip_bad
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["truncated", "empty", "garbage"])
def test_evaluate_names_a_bad_image_or_skips_it(tmp_path, grader, kind):
    from dr_saliency.grader.evaluate import evaluate

    data = make_data(tmp_path / "data")
    bad = os.path.join(data, "images", "img_003.png")
    _corrupt(bad, kind)
    out = str(tmp_path / "eval")
    with pytest.raises(BadImageError, match=r"^img_003: Could not decode the image file "
                                            r"\(unreadable or truncated\)\. Received: path=.*"
                                            r"img_003\.png") as info:
        evaluate(grader[0], open_dataset(data), out, split="all", n_boot=5)
    assert info.value.image == "img_003" and not os.path.exists(out)

    report = evaluate(grader[0], open_dataset(data), out, split="all", n_boot=5, skip_bad=True)
    assert report["n_images"] == 9
    assert [(s["image"], s["path"]) for s in report["skipped"]] == [("img_003", bad)]
    assert "Could not decode" in report["skipped"][0]["reason"]
    saved = json.load(open(os.path.join(out, "evaluation.json")))
    assert saved["skipped"] == report["skipped"] and saved["n_images"] == 9
    ids = [row[0] for row in csv.reader(open(os.path.join(out, "predictions.csv")))]
    assert len(ids) == 10 and "img_003" not in ids


def test_evaluate_command_one_line_error_and_skip_bad(tmp_path, grader, capsys):
    data = make_data(tmp_path / "data")
    bad = os.path.join(data, "images", "img_003.png")
    _corrupt(bad, "truncated")
    args = ["evaluate", grader[1], data, "--out", str(tmp_path / "eval"), "--split", "all",
            "--bootstrap", "5"]
    code, out, err = run_main(args, capsys)
    assert code == 1 and out == ""
    assert err.strip() == ("Error: img_003: Could not decode the image file (unreadable or "
                           f"truncated). Received: path={bad!r} (use --skip-bad to skip bad "
                           "images)")
    code, out, err = run_main(args + ["--skip-bad"], capsys)
    assert code == 0, err
    assert err.strip() == ("Skipped img_003: Could not decode the image file (unreadable or "
                           f"truncated). Received: path={bad!r}")
    assert out.startswith("9 images (all, 1 skipped): quadratic kappa ")


def test_a_file_only_tensorflow_cannot_decode_is_named(tmp_path, grader):
    """TIFF bytes under a .png name: OpenCV reads it (the check passes), TensorFlow's decoder
    does not; the pipeline's error is traced back to the image."""
    from dr_saliency.grader.evaluate import evaluate
    from dr_saliency.grader.train import predict_records

    data = make_data(tmp_path / "data")
    path = os.path.join(data, "images", "img_004.png")
    ok, buf = cv2.imencode(".tif", _image(4))
    open(path, "wb").write(buf.tobytes())
    records = list(open_dataset(data))
    with pytest.raises(BadImageError, match=r"^img_004: TensorFlow could not decode the image "
                                            r"file \(Unknown image file format.*\)\. "
                                            r"Received: path=.*img_004\.png'$"):
        predict_records(grader[0], records, batch_size=4)
    report = evaluate(grader[0], open_dataset(data), str(tmp_path / "eval"), split="all",
                      n_boot=5, skip_bad=True)
    assert report["n_images"] == 9 and [s["image"] for s in report["skipped"]] == ["img_004"]


# --------------------------------------------------------------------------------------------
# 2. evaluate: images not of the model's input size are refused (or skipped)
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("height, width", [(10, 10), (192, 256)])
def test_evaluate_refuses_images_of_another_size(tmp_path, grader, capsys, height, width):
    from dr_saliency.grader.evaluate import evaluate

    data = make_data(tmp_path / "data")
    path = os.path.join(data, "images", "img_002.png")
    write_image(path, np.zeros((height, width, 3), np.uint8))
    with pytest.raises(ImageSizeError, match=r"^img_002: Expected a 128x128 image \(the "
                                             r"model's input\)\. Received: .*img_002\.png of "
                                             rf"{width}x{height}$") as info:
        evaluate(grader[0], open_dataset(data), str(tmp_path / "e"), split="all", n_boot=5)
    assert info.value.size == SIZE
    report = evaluate(grader[0], open_dataset(data), str(tmp_path / "e"), split="all", n_boot=5,
                      skip_bad=True)
    assert [s["image"] for s in report["skipped"]] == ["img_002"] and report["n_images"] == 9

    code, _, err = run_main(["evaluate", grader[1], data, "--out", str(tmp_path / "e2"),
                             "--split", "all"], capsys)
    assert code == 1
    assert err.strip() == (f"Error: img_002: Expected a 128x128 image (the model's input). "
                           f"Received: {path} of {width}x{height} (preprocess the data to that "
                           "size first: dr-saliency preprocess --size 128)")


def test_evaluate_with_every_image_skipped_is_an_error(tmp_path, grader):
    from dr_saliency.grader.evaluate import evaluate

    data = make_data(tmp_path / "data", ids=["a", "b"])
    for name in ("a", "b"):
        _corrupt(os.path.join(data, "images", f"{name}.png"), "empty")
    with pytest.raises(ValueError, match=r"at least one usable image in split 'all'\. "
                                         r"Received: 2 image\(s\), all skipped as bad"):
        evaluate(grader[0], open_dataset(data), str(tmp_path / "e"), split="all",
                 skip_bad=True)


# --------------------------------------------------------------------------------------------
# 3. evaluate: batch size and bootstrap resamples at least 1
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, value, match", [
    ("batch_size", 0, r"Expected an int batch_size >= 1 \(images per prediction batch\)\. "
                      r"Received: batch_size=0"),
    ("batch_size", 2.5, r"Received: batch_size=2\.5"),
    ("n_boot", 0, r"Expected an int n_boot >= 1 \(bootstrap resamples\)\. Received: n_boot=0"),
    ("n_boot", True, r"Received: n_boot=True"),
])
def test_evaluate_checks_its_counts_first(tmp_path, name, value, match):
    from dr_saliency.grader.evaluate import evaluate

    # Checked before the model or the data are touched: neither is needed.
    with pytest.raises(ValueError, match=match):
        evaluate(None, None, str(tmp_path / "e"), **{name: value})
    assert not os.path.exists(tmp_path / "e")


@pytest.mark.parametrize("option", ["--batch-size", "--bootstrap"])
def test_evaluate_command_refuses_zero_counts(tmp_path, grader, capsys, option):
    data = make_data(tmp_path / "data", ids=["a", "b"])
    code, _, err = run_main(["evaluate", grader[1], data, "--out", str(tmp_path / "e"),
                             option, "0"], capsys)
    assert code == 2
    assert f"Invalid value for '{option}': 0 is not in the range x>=1." in err
    assert "Traceback" not in err and not os.path.exists(tmp_path / "e")


# --------------------------------------------------------------------------------------------
# 4. predictions.csv is CSV: an id with a comma is quoted
# --------------------------------------------------------------------------------------------

def test_predictions_csv_quotes_ids(tmp_path, grader):
    from dr_saliency.grader.evaluate import evaluate

    ids = ["a,b", 'say "hi"', "plain", "d", "e"]
    data = make_data(tmp_path / "data", ids=ids)
    out = str(tmp_path / "e")
    evaluate(grader[0], open_dataset(data), out, split="all", n_boot=5)
    rows = list(csv.reader(open(os.path.join(out, "predictions.csv"), newline="")))
    assert rows[0] == ["image", "level", "prediction"]
    assert sorted(r[0] for r in rows[1:]) == sorted(ids)
    assert all(len(r) == 3 for r in rows)
    assert '"a,b",0,' in open(os.path.join(out, "predictions.csv")).read()


# --------------------------------------------------------------------------------------------
# 5. froc --stages: DR stages 0-4 only; a stage without images gets a note
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value, message", [
    ("9", "expected DR stages 0-4, got 9 in '9'"),
    ("2,-1,5", "expected DR stages 0-4, got -1, 5 in '2,-1,5'"),
    ("2,x", "expected comma-separated DR stages 0-4, got '2,x'"),
])
def test_stages_must_be_dr_stages(tmp_path, capsys, value, message):
    with pytest.raises(click.BadParameter, match=message):
        cli_module._stages(value)
    results = tmp_path / "r.h5"
    results.write_bytes(b"never opened: the options are checked first")
    code, _, err = run_main(["froc", str(results), str(tmp_path), "--out", str(tmp_path / "f"),
                             "--stages", value], capsys)
    assert code == 2 and f"Invalid value for '--stages': {message}" in err


def test_stages_are_kept_once_in_order():
    assert cli_module._stages("4,2,4, 3") == (4, 2, 3)
    assert cli_module._stages("") == ()


def test_froc_notes_a_requested_stage_without_images(refined, tmp_path, capsys):
    data, store = refined
    code, out, err = run_main(["froc", store, data, "--out", str(tmp_path / "f"),
                               "--stages", "1,2", "--bootstrap", "10"], capsys)
    assert code == 0, err
    notes = [line for line in err.splitlines() if line.startswith("Note: ")]
    assert notes == ["Note: no image of stage 1 among the 8 evaluated: stage 1 gets no FROC "
                     "of its own"]
    groups = json.load(open(tmp_path / "f" / "metrics.json"))["groups"]
    assert "stage 2" in groups and "stage 1" not in groups


# --------------------------------------------------------------------------------------------
# 6. labels.csv: an unknown split value is a bad row, not a silently dropped image
# --------------------------------------------------------------------------------------------

def _labelled(root, split):
    for name in ("a", "b", "c"):
        write_sample(str(root), name, np.zeros((8, 8, 3), np.uint8))
    write_labels(str(root), [{"image": "a", "level": 0, "split": "train"},
                             {"image": "b", "level": 2, "split": split},
                             {"image": "c", "level": 1, "split": ""}])
    return str(root)


def test_unknown_split_value_is_an_error_naming_the_row(tmp_path):
    root = _labelled(tmp_path, "training")
    labels = os.path.join(root, "labels.csv")
    with pytest.raises(ValueError) as info:
        open_dataset(root)
    assert str(info.value) == (
        f"Expected a split among train, val, test, test_public, test_private (or empty) in "
        f"{labels} at line 3. Received: image='b', split='training'")
    ds = open_dataset(root, skip_bad=True)
    assert ds.ids == ["a", "c"] and [r.split for r in ds] == ["train", None]
    assert ds.warnings == [f"{info.value} (row skipped)"]


@pytest.mark.parametrize("split", ["train", "val", "test", "test_public", "test_private"])
def test_known_split_values_are_read(tmp_path, split):
    assert open_dataset(_labelled(tmp_path, split)).by_id("b").split == split


def test_train_command_refuses_an_unknown_split(tmp_path, capsys):
    root = _labelled(tmp_path / "data", "training")
    code, _, err = run_main(["train", root, "--out", str(tmp_path / "run"), "--profile", "quick"],
                            capsys)
    assert code == 1
    assert err.strip().splitlines() == [
        f"Error: Expected a split among train, val, test, test_public, test_private (or empty) "
        f"in {os.path.join(root, 'labels.csv')} at line 3. Received: image='b', split='training'"]


# --------------------------------------------------------------------------------------------
# 7. figures: a rerun into the same folder removes the earlier run's figures, nothing else
# --------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_figures_rerun_removes_its_stale_figures_only(refined, tmp_path, capsys):
    data, store = refined
    out = tmp_path / "fig"
    ids = sorted(r.id for r in open_dataset(data) if r.grade != 1)
    code, _, err = run_main(["figures", store, data, "--out", str(out), "--ids",
                             f"{ids[0]},{ids[1]}", "--format", "png,pdf"], capsys)
    assert code == 0, err
    mine = {"notes.txt", "iterations_mine.png"}  # the user's files, not listed in done.json
    for name in mine:
        (out / name).write_text("keep")
    # A refused call (unknown id) leaves the earlier figures in place.
    code, _, err = run_main(["figures", store, data, "--out", str(out), "--ids", "nope"], capsys)
    assert code == 1 and os.path.isfile(out / f"iterations_{ids[0]}.pdf")

    code, out_text, err = run_main(["figures", store, data, "--out", str(out), "--ids", ids[2],
                                    "--format", "png"], capsys)
    assert code == 0, err
    assert out_text.strip() == f"Wrote 2 figure files to {out}"
    assert set(os.listdir(out)) == mine | {f"iterations_{ids[2]}.png", "figure1_panels.png",
                                           "done.json"}
    done = json.load(open(out / "done.json"))
    assert done["ids"] == [ids[2]]
    assert sorted(os.path.basename(p) for p in done["files"]) == [
        "figure1_panels.png", f"iterations_{ids[2]}.png"]


def test_stale_figures_of_a_run_from_another_directory(refined, tmp_path, monkeypatch):
    """done.json lists paths as given (relative to the first run's working directory): the
    files are found by name in the folder."""
    data, store = refined
    ds = open_dataset(data)
    ids = sorted(r.id for r in ds if r.grade != 1)
    monkeypatch.chdir(tmp_path)
    panels.write_figures(store, ds, "fig", ids=ids[:1], formats=("png",))
    os.makedirs("elsewhere")
    monkeypatch.chdir("elsewhere")
    panels.write_figures(store, ds, os.path.join("..", "fig"), ids=ids[1:2], formats=("png",))
    assert sorted(os.listdir(tmp_path / "fig")) == ["done.json", "figure1_panels.png",
                                                    f"iterations_{ids[1]}.png"]


# --------------------------------------------------------------------------------------------
# 8. the command line names its options, not the library's keywords
# --------------------------------------------------------------------------------------------

def test_synth_into_a_used_folder_names_overwrite_option(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "other.txt").write_text("x")
    code, _, err = run_main(["synth", str(out), "--n", "2", "--size", "128"], capsys)
    assert code == 1
    assert err.strip() == (
        "Error: Expected an empty folder or a synthetic dataset to resume (or --overwrite to "
        f"write into it anyway). Received: out={str(out)!r}, a non-empty folder without a "
        "readable synth.json (choose another output folder, or pass --overwrite)")


def test_preprocess_bad_image_names_skip_bad_option(tmp_path, capsys):
    src = make_data(tmp_path / "src", ids=["a", "b"])
    _corrupt(os.path.join(src, "images", "b.png"), "truncated")
    code, _, err = run_main(["preprocess", src, str(tmp_path / "out"), "--size", "128",
                             "--workers", "1"], capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert err.startswith("Error: Could not preprocess record 'b' (")
    assert err.strip().endswith("Pass --skip-bad to skip bad records.")
    assert "skip_bad" not in err


def test_froc_partial_results_names_allow_partial_option(refined, tmp_path, capsys):
    data, store = refined
    partial = str(tmp_path / "data")
    shutil.copytree(data, partial)
    ds = open_dataset(partial)
    gone = next(r.id for r in ds if r.grade == 3)
    write_labels(partial, [{"image": r.id, "level": r.grade, "split": r.split}
                           for r in ds if r.id != gone])
    code, _, err = run_main(["froc", store, partial, "--out", str(tmp_path / "f")], capsys)
    assert code == 1
    assert err.strip() == (
        "Error: Expected every result to have an image in the dataset (or --allow-partial). "
        f"Received: 1 result(s) have no image in the dataset: {gone} (use --allow-partial to "
        "evaluate the images in both)")


@pytest.mark.parametrize("message, args, expected", [
    ("pass skip_bad=True or overwrite=True", ["preprocess", "a", "b"],
     "pass --skip-bad or --overwrite"),
    ("or resume=True to continue it", ["--debug", "train", "d"], "or --resume to continue it"),
    # No such option in the command: the keyword stays, rather than name a flag that fails.
    ("pass overwrite=True to replace it", ["refine", "m", "d"], "pass overwrite=True to replace it"),
    # A value received is shown as it was received.
    ("Expected a bool. Received: skip_bad=True", ["preprocess"],
     "Expected a bool. Received: skip_bad=True"),
    ("or allow_partial=True", [], "or allow_partial=True"),
])
def test_keywords_become_the_commands_options(message, args, expected):
    assert cli_module._as_options(message, args) == expected


# --------------------------------------------------------------------------------------------
# 9. the demo keeps the times of steps finished before an interruption
# --------------------------------------------------------------------------------------------

def test_demo_timings_survive_an_interruption(tmp_path):
    out = str(tmp_path)
    ran = []

    def step(name, interrupt=False):
        def run():
            ran.append(name)
            open(os.path.join(out, f"{name}.done"), "w").close()
            if interrupt:
                raise KeyboardInterrupt  # Ctrl-C once the step's output is complete
            return name
        return demo.Step(name, os.path.join(out, f"{name}.done"), run)

    with pytest.raises(KeyboardInterrupt):
        demo.run_steps(out, [step("synth"), step("train", interrupt=True), step("evaluate")])
    assert ran == ["synth", "train"]
    # An earlier step done without a recorded time (e.g. by a dr-saliency command).
    open(os.path.join(out, "evaluate.done"), "w").close()
    timings = demo.run_steps(out, [step("synth"), step("train"), step("evaluate"), step("froc")])
    assert ran == ["synth", "train", "froc"]
    assert list(timings) == ["synth", "train", "evaluate", "froc"]
    assert timings["evaluate"] is None
    assert all(isinstance(timings[k], float) for k in ("synth", "train", "froc"))
    assert set(json.load(open(os.path.join(out, "timings.json")))) == {"synth", "train", "froc"}

    report = open(demo.write_demo_report(out, profile="smoke", timings=timings)).read()
    line = next(x for x in report.splitlines() if x.startswith("- Time per step"))
    assert line == ("- Time per step (s): synth 0, train 0, evaluate not timed, froc 0; "
                    "total 0 s (without evaluate).")
