"""`dr-saliency explain` at the edges (issue 20, items 2-11), through the command line: odd file
names, replaced photographs, images that are not fundus photographs, a second run into the same
folder, a moved grader, a killed figure write, trailing bytes, another command's folder.

Tiny inputs: 300x420 synthetic fundus photographs and an untrained 128 px, width-1/16 grader whose
predictions are referable (one refinement step each).
"""

import csv
import glob
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys

import cv2
import numpy as np
import pytest

from dr_saliency.fundus import synth
from dr_saliency.fundus.fov import fov_mask
from dr_saliency.fundus.photos import read_photo
from dr_saliency.refinement.store import ResultStore
from tests.test_cli import run_main
from tests.test_faults import _grader
from tests.test_preprocess import fundus

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(REPO, "bin", "dr-saliency")


@pytest.fixture(scope="module")
def grader(tmp_path_factory):
    return _grader(str(tmp_path_factory.mktemp("grader") / "grader.h5"), 0)


def _eye(path, seed=1):
    """A 300x420 fundus photograph; every seed has the same field of view and crop box."""
    image, _ = fundus((300, 420), centre=(150, 210), radius=140, seed=seed)
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    assert cv2.imwrite(str(path), np.ascontiguousarray(image[..., ::-1]))
    return str(path)


def _explain(capsys, inputs, out, grader, *extra):
    return run_main(["explain", *inputs, "--out", out, "--model", grader, "--max-iterations", "1",
                     "--quiet", *extra], capsys)


def _rows(out):
    with open(os.path.join(out, "explain.csv"), newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _sha256(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _one_then_another(tmp_path, grader, capsys, second):
    """Explain a/eye.jpg, then the photograph ``second`` (a path under tmp_path, another eye)
    into the same folder; returns (out, first, second, stdout of the second run)."""
    first, second = _eye(tmp_path / "a" / "eye.jpg", 1), _eye(tmp_path / second, 2)
    out = str(tmp_path / "out")
    assert _explain(capsys, [first], out, grader)[0] == 0
    code, stdout, err = _explain(capsys, [second], out, grader)
    assert code == 0, err
    return out, first, second, stdout


# ------------------------------------------------------------------------ 2. non-UTF-8 names


def test_reading_a_file_whose_name_is_not_utf8(tmp_path):
    """cv2.imread crashed the process (SIGSEGV) on such a name; a child process shows it."""
    folder = os.fsencode(str(tmp_path))
    name = os.path.join(folder, b"eye\xff.png")
    image, _ = fundus((90, 120))
    ok, buf = cv2.imencode(".png", image)
    with open(name, "wb") as f:
        f.write(buf.tobytes())
    code = ("import os, sys; from dr_saliency.fundus.imio import read_image; "
            "print(read_image(os.fsdecode(sys.argv[1])).shape)")
    proc = subprocess.run([sys.executable, "-c", code, name], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": REPO})
    assert proc.returncode == 0, (proc.returncode, proc.stderr)
    assert proc.stdout.strip() == "(90, 120, 3)"


@pytest.mark.slow
def test_explain_reads_a_photograph_whose_name_is_not_utf8(tmp_path, grader):
    shots = tmp_path / "shots"
    _eye(shots / "x.jpg")
    raw = os.path.join(os.fsencode(str(shots)), b"eye\xff.jpg")
    os.rename(os.fsencode(str(shots / "x.jpg")), raw)
    for given, out in ((os.fsencode(str(shots)), "folder"), (raw, "named")):
        proc = subprocess.run([sys.executable, BIN, "explain", given, "--out", out, "--model",
                               grader, "--max-iterations", "1", "--quiet"], cwd=str(tmp_path),
                              capture_output=True, timeout=600)
        assert proc.returncode == 0, (proc.returncode, proc.stderr)
        assert b"1 photographs explained (1 refined now, 0 already done), 0 skipped" in proc.stdout
        (row,) = _rows(str(tmp_path / out))
        # The id and the table show the bad byte escaped; the figure is named after the id.
        assert row["id"] == "eye\\xff" and row["path"].endswith("eye\\xff.jpg")
        assert os.listdir(tmp_path / out / "figures") == ["eye\\xff.png"]


# ----------------------------------------------------------- 3. resume by content, not by name


@pytest.mark.slow
def test_another_photograph_under_the_same_name_is_refined_again(tmp_path, grader, capsys):
    out, first, second, stdout = _one_then_another(tmp_path, grader, capsys, "b/eye.jpg")
    assert "1 refined now, 1 of them again: their file changed, 0 already done" in stdout
    (row,) = json.load(open(os.path.join(out, "explain.json")))["images"]
    assert row["sha256"] == _sha256(second) and row["path"] == second
    with ResultStore(os.path.join(out, "results.h5")) as store:
        assert store.read("eye").params["photo"]["sha256"] == _sha256(second)
    # Unchanged: resumed. Replaced in place: refined again.
    assert "(0 refined now, 1 already done)" in _explain(capsys, [second], out, grader)[1]
    shutil.copy(first, second)
    code, stdout, _ = _explain(capsys, [second], out, grader)
    assert code == 0 and "1 refined now, 1 of them again" in stdout
    (row,) = json.load(open(os.path.join(out, "explain.json")))["images"]
    assert row["sha256"] == _sha256(first)


# ------------------------------------------------------------ 4. not a fundus photograph


def _not_fundus(folder):
    os.makedirs(folder, exist_ok=True)
    noise = np.random.default_rng(5).integers(0, 256, (300, 420, 3), dtype=np.uint8)
    page = np.full((420, 300, 3), 255, np.uint8)
    for i, y in enumerate(range(40, 400, 22)):
        cv2.putText(page, f"Lorem ipsum dolor sit amet {i}", (20, y), cv2.FONT_HERSHEY_SIMPLEX,
                    0.45, (0, 0, 0), 1)
    paths = {"noise": os.path.join(folder, "noise.png"), "page": os.path.join(folder, "page.png")}
    cv2.imwrite(paths["noise"], noise)
    cv2.imwrite(paths["page"], page)
    return paths


@pytest.mark.slow
def test_an_image_that_is_not_a_fundus_photograph_is_refused_by_name(tmp_path, grader, capsys):
    paths = _not_fundus(str(tmp_path / "other"))
    eye = _eye(tmp_path / "other" / "eye.jpg")
    for name in ("noise", "page"):
        code, _, err = _explain(capsys, [paths[name]], str(tmp_path / name), grader)
        assert code == 1 and err.count("\n") == 1
        assert err.startswith(f"Error: {paths[name]}: does not look like a fundus photograph: "
                              "no dark surround")
        assert err.rstrip().endswith("(use --skip-bad to skip bad images)")
    code, stdout, err = _explain(capsys, [str(tmp_path / "other")], str(tmp_path / "all"),
                                 grader, "--skip-bad")
    assert code == 0, err
    assert "1 photographs explained (1 refined now, 0 already done), 2 skipped" in stdout
    assert f"Skipped {paths['noise']}: does not look like a fundus photograph" in err
    assert [r["path"] for r in _rows(str(tmp_path / "all"))] == [eye]


def _measured(paths):
    from dr_saliency.fundus.photos import fundus_measures, fundus_problem

    out = {}
    for path in paths:
        image = read_photo(path)
        fov = fov_mask(image)
        out[path] = (fundus_measures(image, fov), fundus_problem(image, fov))
    return out


def test_fundus_limits_refuse_noise_and_a_page_and_keep_the_examples(tmp_path):
    from dr_saliency.fundus.photos import FUNDUS_LIMITS

    examples = sorted(glob.glob(os.path.join(REPO, "data", "examples", "*.jpg")))
    assert len(examples) == 4
    synth_dir = str(tmp_path / "synth")
    synth.write_dataset(synth_dir, 3, size=128, seed=3, workers=1)
    kept = examples + sorted(glob.glob(os.path.join(synth_dir, "images", "*.png")))
    kept.append(_eye(tmp_path / "eye.jpg"))
    for path, (measures, problem) in _measured(kept).items():
        assert problem is None, (path, measures, problem)
    for path, (measures, problem) in _measured(_not_fundus(str(tmp_path / "no")).values()).items():
        assert problem and "no dark surround" in problem, (path, measures)
        assert measures["texture"] > FUNDUS_LIMITS["texture"]  # refused twice over


@pytest.mark.slow
def test_fundus_limits_keep_every_real_photograph(realdata):
    """The calibration of FUNDUS_LIMITS (docs/preprocessing.md): none of the real photographs
    is refused, each measure inside its limit with the margins written there."""
    from dr_saliency.fundus.photos import FUNDUS_LIMITS

    paths = sorted(glob.glob(os.path.join(realdata, "**", "*.jp*g"), recursive=True)
                   + glob.glob(os.path.join(realdata, "**", "images", "*.png"), recursive=True))
    assert len(paths) == 36
    measured = _measured(paths)
    assert {p: problem for p, (_, problem) in measured.items() if problem} == {}
    worst = {key: [m[key] for m, _ in measured.values()] for key in FUNDUS_LIMITS}
    assert max(worst["fov"]) < 0.85 and max(worst["surround"]) < 0.05
    assert max(worst["texture"]) < 0.025 and min(worst["red_blue"]) > 1.2


# ----------------------------------------------------------------- 5. 250-character names


@pytest.mark.slow
def test_a_250_character_file_name_does_not_stop_the_report(tmp_path, grader, capsys):
    long_name = _eye(tmp_path / "shots" / ("e" * 246 + ".jpg"))
    no_suffix = str(tmp_path / ("f" * 255))
    shutil.copy(_eye(tmp_path / "x.jpg", 2), no_suffix)
    out = str(tmp_path / "out")
    code, stdout, err = _explain(capsys, [str(tmp_path / "shots"), no_suffix], out, grader,
                                 "--skip-bad")
    assert code == 0, err
    assert "2 photographs explained (2 refined now, 0 already done), 0 skipped" in stdout
    rows = {r["id"]: r for r in json.load(open(os.path.join(out, "explain.json")))["images"]}
    assert rows["e" * 246]["path"] == long_name
    assert os.path.basename(rows["e" * 246]["figure"]) == "e" * 246 + ".png"
    # A 255-character id cannot take ".png": cut, with a digest of the whole id.
    figure = os.path.basename(rows["f" * 255]["figure"])
    assert len(figure) == 255 and figure.startswith("f" * 200) and "~" in figure
    assert sorted(os.listdir(os.path.join(out, "figures"))) == sorted(
        os.path.basename(r["figure"]) for r in rows.values())


# ------------------------------------------- 6. a second run keeps the earlier photographs


@pytest.mark.slow
def test_a_second_run_with_other_photographs_keeps_the_earlier_ones(tmp_path, grader, capsys):
    out, first, other, stdout = _one_then_another(tmp_path, grader, capsys, "c/other.jpg")
    assert "2 photographs explained (1 refined now, 0 already done, 1 from earlier runs)" in stdout
    table = json.load(open(os.path.join(out, "explain.json")))
    assert [r["id"] for r in _rows(out)] == [r["id"] for r in table["images"]] == ["eye", "other"]
    with ResultStore(os.path.join(out, "results.h5")) as store:
        assert store.complete_ids() == ["eye", "other"]
    assert sorted(os.listdir(os.path.join(out, "figures"))) == ["eye.png", "other.png"]
    # The earlier photograph gone: its row is kept as it was.
    os.remove(first)
    earlier = table["images"][0]
    assert _explain(capsys, [other], out, grader)[0] == 0
    assert json.load(open(os.path.join(out, "explain.json")))["images"][0] == earlier


# ----------------------------------------------------- 7. the same grader by another path


@pytest.mark.slow
def test_the_same_grader_by_another_path_resumes(tmp_path, grader, capsys):
    eye = _eye(tmp_path / "eye.jpg")
    out = str(tmp_path / "out")
    assert _explain(capsys, [eye], out, grader)[0] == 0
    moved = str(tmp_path / "elsewhere" / "deeper" / "grader.h5")
    os.makedirs(os.path.dirname(moved))
    shutil.copy(grader, moved)
    code, stdout, err = _explain(capsys, [eye], out, moved)
    assert code == 0, err
    assert "(0 refined now, 1 already done)" in stdout
    # Another grader is still refused.
    code, _, err = _explain(capsys, [eye], out, _grader(str(tmp_path / "g2.h5"), 1))
    assert code == 1 and "model_sha256=" in err


# ------------------------------------------------- 8. --top 2 after --top 5: figure and table


@pytest.mark.slow
def test_the_figure_is_redrawn_when_its_row_changes(tmp_path, grader, capsys):
    from PIL import Image

    from dr_saliency.jobs import explain as photos_app

    eye = _eye(tmp_path / "eye.jpg")
    out = str(tmp_path / "out")
    figure = os.path.join(out, "figures", "eye.png")
    assert _explain(capsys, [eye], out, grader, "--top", "5")[0] == 0
    five = open(figure, "rb").read()
    assert _explain(capsys, [eye], out, grader, "--top", "2")[0] == 0
    (row,) = json.load(open(os.path.join(out, "explain.json")))["images"]
    assert len(row["candidates"]) == 2 and open(figure, "rb").read() != five
    with Image.open(figure) as png:
        assert png.text[photos_app.FIGURE_KEY] == photos_app._signature(row)
    # The same settings again: the figure is kept as it is.
    stamp = os.stat(figure).st_mtime_ns
    assert _explain(capsys, [eye], out, grader, "--top", "2")[0] == 0
    assert os.stat(figure).st_mtime_ns == stamp


# ---------------------------------------------- 9. a kill during the figure write leaves no temp


def _dead_pid():
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_temporaries_of_a_killed_figure_write_are_removed(tmp_path, grader, capsys):
    eye = _eye(tmp_path / "eye.jpg")
    out = str(tmp_path / "out")
    assert _explain(capsys, [eye], out, grader)[0] == 0
    figures = os.path.join(out, "figures")
    pid = _dead_pid()
    # What a killed writer leaves: this version's temporary name (core.files.temp_path) and the
    # earlier versions' one; a live process's temporary is not touched.
    live = f".{os.getppid()}.0123456789ab.tmp"
    for name in (f".{pid}.0123456789ab.tmp", f"eye.tmp{pid}.png", live):
        open(os.path.join(figures, name), "wb").write(b"half a PNG")
    table = f".{pid}.{'0' * 12}.tmp"  # of a table
    open(os.path.join(out, table), "w").write("id,pa")
    assert _explain(capsys, [eye], out, grader)[0] == 0
    assert sorted(os.listdir(figures)) == [live, "eye.png"]
    assert table not in os.listdir(out)


@pytest.mark.slow
def test_a_kill_during_the_figure_write_is_cleaned_by_the_next_run(tmp_path, grader):
    eye = _eye(tmp_path / "eye.jpg")
    args = ["explain", eye, "--out", "out", "--model", grader, "--max-iterations", "1", "--quiet"]
    killer = ("import os, signal, sys, matplotlib.figure as mf\n"
              "def savefig(self, fname, *a, **k):\n"
              "    open(fname, 'wb').write(b'half a PNG')\n"
              "    os.kill(os.getpid(), signal.SIGKILL)\n"
              "mf.Figure.savefig = savefig\n"
              f"sys.path.insert(0, {REPO!r})\n"
              "from dr_saliency.app.console import main\n"
              "sys.argv[0] = 'dr-saliency'\n"
              "main()\n")
    proc = subprocess.run([sys.executable, "-c", killer, *args], cwd=str(tmp_path),
                          capture_output=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    figures = tmp_path / "out" / "figures"
    assert len(os.listdir(figures)) == 1 and not os.path.exists(figures / "eye.png")
    proc = subprocess.run([sys.executable, BIN, *args], cwd=str(tmp_path), capture_output=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert os.listdir(figures) == ["eye.png"]


# ------------------------------------------------- 10. trailing bytes after a JPEG's end marker


def test_a_jpeg_with_bytes_after_its_end_marker_is_read(tmp_path, grader, capsys):
    eye = _eye(tmp_path / "eye.jpg")
    data = open(eye, "rb").read()
    trailer = bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8))
    open(eye, "wb").write(data + b"\x00" * 100 + trailer.replace(b"\xff\xd9", b"\xff\x00"))
    code, stdout, err = _explain(capsys, [eye], str(tmp_path / "out"), grader)
    assert code == 0, err
    assert "1 photographs explained (1 refined now" in stdout
    # Cut inside its image data, it is still refused as truncated.
    open(eye, "wb").write(data[: len(data) * 2 // 3])
    code, _, err = _explain(capsys, [eye], str(tmp_path / "cut"), grader)
    assert code == 1 and "could not decode the file as an image" in err


# -------------------------------------------------------------- 11. another command's folder


def test_explain_refuses_a_training_run_or_a_dataset_folder(tmp_path, grader, capsys):
    eye = _eye(tmp_path / "eye.jpg")
    run = tmp_path / "run"
    run.mkdir()
    for name in ("config.json", "split.json"):
        (run / name).write_text("{}")
    data = str(tmp_path / "data")
    synth.write_dataset(data, 2, size=128, seed=3, workers=1)
    for out, what in ((str(run), "a training run (config.json, split.json)"),
                      (data, "a dataset (folder layout)")):
        before = sorted(os.listdir(out))
        code, _, err = _explain(capsys, [eye], out, grader)
        assert code == 1 and err.count("\n") == 1
        assert f"which holds {what}" in err
        assert err.rstrip().endswith("(choose another output folder)")
        assert sorted(os.listdir(out)) == before
