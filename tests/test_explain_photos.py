"""`dr-saliency explain`: photographs in, maps and candidates on their own pixels out
(app.photos through the command line), with resume, skips and clear errors."""

import csv
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from dr_saliency.app.cli import cli
from dr_saliency.core.grades import STAGE_NAMES
from dr_saliency.grader import model as model_lib
from dr_saliency.refinement.store import ResultStore
from tests.test_preprocess import fundus

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def grader(tmp_path_factory):
    """A tiny 128 px grader whose every prediction is referable (bias 3)."""
    net = model_lib.build_model((128, 128, 3), weights=None, width=1 / 16)
    rng = np.random.default_rng(0)
    weights = net.get_weights()
    weights[-2] = rng.normal(0, 1e-4, weights[-2].shape).astype(np.float32)
    weights[-1] = np.full_like(weights[-1], 3.0)
    net.set_weights(weights)
    path = str(tmp_path_factory.mktemp("grader") / "grader.h5")
    model_lib.export_model(net, path)
    return path


def _photos(folder):
    """Two photographs of different sizes and formats, a note and a truncated JPEG."""
    os.makedirs(folder, exist_ok=True)
    wide, _ = fundus((300, 420), centre=(150, 230), radius=140, seed=1)
    tall, _ = fundus((260, 200), centre=(130, 100), radius=95, seed=2)
    cv2.imwrite(os.path.join(folder, "wide.png"), wide[..., ::-1])
    cv2.imwrite(os.path.join(folder, "tall.jpg"), tall[..., ::-1])
    with open(os.path.join(folder, "notes.txt"), "w") as f:
        f.write("taken 2026-11-30")
    ok, buf = cv2.imencode(".jpg", wide[..., ::-1])
    with open(os.path.join(folder, "broken.jpg"), "wb") as f:
        f.write(buf.tobytes()[: len(buf) // 2])
    return {"wide": wide.shape[:2], "tall": tall.shape[:2]}


@pytest.mark.slow
def test_explain_writes_maps_table_and_figures_on_the_photographs_pixels(tmp_path, grader):
    shots, out = str(tmp_path / "shots"), str(tmp_path / "out")
    shapes = _photos(shots)
    args = ["explain", shots, "--out", out, "--model", grader, "--max-iterations", "2",
            "--top", "3"]
    runner = CliRunner()

    # A broken photograph stops the run with one line naming it and the way around it.
    result = runner.invoke(cli, args)
    assert result.exit_code != 0
    assert "broken.jpg" in str(result.exception)

    result = runner.invoke(cli, args + ["--skip-bad"])
    assert result.exit_code == 0, result.output
    assert "Ignored 1 file(s) that are not images by their suffix: notes.txt" in result.output
    assert "broken.jpg: could not decode the file as an image" in result.output
    assert "2 photographs explained (2 refined now, 0 already done), 1 skipped" in result.output

    with open(os.path.join(out, "explain.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["id"] for r in rows] == ["tall", "wide"]
    assert list(rows[0])[:8] == ["id", "path", "width", "height", "p0", "pn", "iterations",
                                 "stop_reason"]
    assert list(rows[0])[-3:] == ["x3", "y3", "score3"]
    table = json.load(open(os.path.join(out, "explain.json")))
    assert table["skipped"][0]["path"].endswith("broken.jpg")
    assert table["ignored"][0].endswith("notes.txt")
    for row in table["images"]:
        height, width = shapes[row["id"]]
        assert (row["height"], row["width"]) == (height, width)
        assert row["p0"] > 1 and row["iterations"] == 2 and row["stop_reason"] == "max_iterations"
        assert 1 <= len(row["candidates"]) <= 3
        for c in row["candidates"]:
            # Candidates lie on the photograph, inside its fundus disc.
            assert 0 <= c["x"] < width and 0 <= c["y"] < height
            assert fundus_pixel(os.path.join(shots, os.path.basename(row["path"])), c)
        figure = cv2.imread(row["figure"])
        assert figure is not None and figure.shape[1] > figure.shape[0]

    # The store keeps the maps on the model's grid and where the square came from.
    with ResultStore(os.path.join(out, "results.h5")) as store:
        assert store.complete_ids() == ["tall", "wide"]
        result = store.read("wide")
        assert result.maps.shape[1:] == (128, 128) and result.iterations == 2
        box = result.params["photo"]["box"]
        assert result.params["photo"]["height"] == 300 and box[2] >= 280

    # A rerun continues: nothing refined again, figures kept.
    stamp = os.path.getmtime(os.path.join(out, "figures", "wide.png"))
    again = runner.invoke(cli, args + ["--skip-bad", "--quiet"])
    assert again.exit_code == 0, again.output
    assert "(0 refined now, 2 already done)" in again.output
    assert os.path.getmtime(os.path.join(out, "figures", "wide.png")) == stamp
    # Other settings into the same folder: refused, naming the difference.
    other = runner.invoke(cli, args + ["--skip-bad", "--sign", "abs"])
    assert other.exit_code != 0
    assert 'sign="abs" (file has "negative")' in str(other.exception)


def fundus_pixel(path, candidate):
    image = cv2.imread(path)
    return image[int(round(candidate["y"])), int(round(candidate["x"]))].max() > 20


def test_explain_errors_are_one_line(tmp_path, grader, capsys):
    from tests.test_cli import run_main

    shots = str(tmp_path / "shots")
    _photos(shots)
    out = str(tmp_path / "out")
    code, _, err = run_main(["explain", shots, "--out", out, "--model", grader], capsys)
    assert code == 1
    assert err.count("\n") == 1
    assert err.startswith("Error: ") and "broken.jpg: could not decode the file as an image" in err
    assert "(use --skip-bad to skip bad images)" in err

    notes = str(tmp_path / "notes")
    os.makedirs(notes)
    open(os.path.join(notes, "a.txt"), "w").close()
    code, _, err = run_main(["explain", notes, "--out", out, "--model", grader], capsys)
    assert code == 1 and err.count("\n") == 1
    assert "Expected at least one photograph" in err and "(1 file(s) not images by their suffix)" in err

    text = tmp_path / "model.h5"
    text.write_text("not a model")
    code, _, err = run_main(["explain", shots, "--out", out, "--model", str(text)], capsys)
    assert code == 1 and err.count("\n") == 1 and "Could not load a Keras model" in err

    cut = tmp_path / "cut.h5"
    cut.write_bytes(open(grader, "rb").read()[:5000])
    code, _, err = run_main(["explain", shots, "--out", out, "--model", str(cut)], capsys)
    assert code == 1 and err.count("\n") == 1 and "Could not load a Keras model" in err

    weights = str(tmp_path / "w.weights.h5")
    model_lib.save_checkpoint(model_lib.build_model((128, 128, 3), weights=None, width=1 / 16),
                              weights)
    fresh = str(tmp_path / "fresh")
    code, _, err = run_main(["explain", shots, "--out", fresh, "--model", weights], capsys)
    assert code == 1 and "not a weights-only checkpoint" in err
    assert not os.path.exists(os.path.join(fresh, "results.h5"))


@pytest.mark.slow
def test_explain_bundled_examples_prints_nothing_from_tensorflow(tmp_path):
    """The installed entry point on data/examples with the bundled grader: quiet, complete."""
    env = dict(os.environ)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    out = str(tmp_path / "x")
    proc = subprocess.run([sys.executable, os.path.join(REPO, "bin", "dr-saliency"), "explain",
                           os.path.join(REPO, "data", "examples"), "--out", out],
                          capture_output=True, text=True, env=env, timeout=600, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    for noise in ("oneDNN", "I0000", "absl", "tensorflow", "WARNING"):
        assert noise not in proc.stdout + proc.stderr, proc.stderr
    examples = os.path.join(REPO, "data", "examples")
    n = len([f for f in os.listdir(examples) if os.path.isfile(os.path.join(examples, f))])
    assert f"{n} photographs explained" in proc.stdout
    assert len(os.listdir(os.path.join(out, "figures"))) == n
    # The table's grade, stage name and referable follow core/grades from p0.
    with open(os.path.join(out, "explain.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[8:11] == ["grade", "stage", "referable"]
    for row in rows:
        grade = int(np.clip(np.rint(float(row["p0"])), 0, 4))
        assert (int(row["grade"]), row["referable"]) == (grade, str(grade >= 2))
        assert row["stage"] == STAGE_NAMES[grade]
    table = json.load(open(os.path.join(out, "explain.json")))
    assert all(r["bundled_grader"] for r in table["images"])
    # The overview page: one row per photograph, each with its embedded thumbnail.
    page = open(os.path.join(out, "index.html"), encoding="utf-8").read()
    assert page.count('<img class="thumb"') == n
    assert "trained on synthetic images only" in page


@pytest.mark.slow
def test_wheel_ships_the_bundled_grader_and_its_card(tmp_path):
    import shutil

    # Built from a copy, so that the build leaves nothing in the repository.
    src = tmp_path / "src"
    shutil.copytree(os.path.join(REPO, "dr_saliency"), src / "dr_saliency",
                    ignore=shutil.ignore_patterns("__pycache__"))
    os.makedirs(src / "data")
    for name in ("setup.py", "setup.cfg", "README.md", "MANIFEST.in", "requirements.txt",
                 "data/grader.h5", "data/README.md"):
        shutil.copy(os.path.join(REPO, name), src / name)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                           "-q", "-w", str(tmp_path), str(src)], capture_output=True, text=True,
                          timeout=600, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    import zipfile
    (wheel,) = [f for f in os.listdir(tmp_path) if f.endswith(".whl")]
    names = zipfile.ZipFile(os.path.join(tmp_path, wheel)).namelist()
    assert "dr_saliency/bundled/grader.h5" in names and "dr_saliency/bundled/README.md" in names
    info = zipfile.ZipFile(os.path.join(tmp_path, wheel)).getinfo("dr_saliency/bundled/grader.h5")
    assert info.file_size == os.path.getsize(os.path.join(REPO, "data", "grader.h5"))


def test_load_refiner_records_a_precision_other_than_fp32(tmp_path, grader):
    from dr_saliency.jobs import refine as refine_job

    out = str(tmp_path / "r.h5")
    plain = refine_job.load_refiner(grader, out)
    assert "precision" not in plain["params"] and plain["size"] == 128
    half = refine_job.load_refiner(grader, out, precision="bf16")
    assert half["params"]["precision"] == "bf16"
    assert {k: v for k, v in half["params"].items() if k != "precision"} == plain["params"]
    image, _ = fundus((128, 128), radius=60)
    fov = np.ones((1, 128, 128), bool)
    maps32, p32 = plain["explain"](image[None], fov)
    maps16, p16 = half["explain"](image[None], fov)
    assert maps16.dtype == np.float32 and p16.dtype == np.float32
    assert abs(float(p16[0]) - float(p32[0])) < 0.1
