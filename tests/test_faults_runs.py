"""Nothing lost at the edges of a run (issue 20, items 1, 12, 13, 14; issue 19, item 7), through
the command line: an interrupted refine that is finished later is whole for froc, demo and
replicate; froc records how its images were chosen; replicate checks its input before any work
and runs alone in its folder; every report gives relative gains by one rule; the demo's report
says what one seed can show.

The demo and replicate folders are laid out as their steps leave them, with the grader's steps
(train, evaluate) already done and the refine step's result file written by
``refine_dataset`` with fake callables, so that no test here loads TensorFlow except the one
that kills a real ``refine``.
"""

import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

from dr_saliency.jobs import demo
from dr_saliency.core.files import write_json
from dr_saliency.fundus import synth
from dr_saliency.fundus.datasets import open_dataset, select_records
from dr_saliency.refinement.loop import RefineConfig
from dr_saliency.refinement.run import refine_dataset
from dr_saliency.refinement.store import ResultStore
from tests.test_cli import run_main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(REPO, "bin", "dr-saliency")


# --------------------------------------------------------------------------------------------
# fixtures: a smoke-sized synthetic set, fake refinement, demo and replicate folders


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The demo smoke profile's synthetic set (40 images of 128 px, seed 0)."""
    path = str(tmp_path_factory.mktemp("runs") / "data")
    p = demo.PROFILES["smoke"]
    synth.write_dataset(path, p["n_images"], size=p["size"], seed=p["seed"], workers=1)
    return path


def n_test(data_dir):
    """The test images of the set: all referable to :func:`fake_explain`."""
    return len(select_records(open_dataset(data_dir), split="test"))


def fake_explain(images, fovs):
    """Dark pixels are salient; the prediction falls as they are inpainted: every test image is
    referable (graded 2 or more), some reach the threshold, others the cap."""
    green = np.asarray(images)[..., 1].astype(np.float32)
    maps = np.where(fovs, 255.0 - green, 0.0).astype(np.float32)
    dark = ((green < 40) & fovs).sum(axis=(1, 2)) / np.maximum(fovs.sum(axis=(1, 2)), 1)
    return maps, (1.6 + 100.0 * (dark - 0.012)).astype(np.float32)


CONFIG = RefineConfig(max_iterations=2)


class Interrupted(KeyboardInterrupt):
    """A Ctrl-C after some images (as the refine step of an interrupted demo)."""


def refine(data_dir, out, *, stop_after=None):
    """What the demo's refine step does, with fake callables: the referable test images into
    ``out``; interrupted (raising :class:`Interrupted`) once ``stop_after`` images are done."""
    records = select_records(open_dataset(data_dir), split="test")
    seen = []

    def on_image(image_id, message):
        seen.append(image_id)
        if stop_after is not None and len(seen) >= stop_after:
            raise Interrupted()

    return refine_dataset(records, out, explain=fake_explain, config=CONFIG,
                          only_referable=True, on_image=on_image, batch_size=2)


def refine_interrupted_then_finished(data_dir, out):
    """An interrupted refine, then the same one rerun to the end: the summary of the rerun."""
    with pytest.raises(Interrupted):
        refine(data_dir, out, stop_after=2)
    with ResultStore(out) as store:
        assert "finished" not in store.runs[-1]  # the first run really was cut short
    return refine(data_dir, out)


def demo_folder(root, data_dir, *, refine_with=refine_interrupted_then_finished):
    """A smoke demo folder whose synth, train and evaluate steps are done and whose refine step
    was interrupted, then rerun until it finished (as the rerun of the demo leaves it)."""
    out = os.path.join(str(root), "demo")
    shutil.copytree(data_dir, os.path.join(out, "data"))
    os.makedirs(os.path.join(out, "run"))
    with open(os.path.join(out, "run", "model.h5"), "wb") as f:
        f.write(b"stands for the trained grader: the steps that load it are done")
    os.makedirs(os.path.join(out, "evaluation"))
    write_json(os.path.join(out, "evaluation", "evaluation.json"),
               {"n_images": 6, "metrics": {"kappa": 0.5, "auc": 0.9}, "kappa_ci": [0.1, 0.8],
                "auc_ci": [0.7, 1.0]})
    summary = refine_with(os.path.join(out, "data"), os.path.join(out, "refine.h5"))
    write_json(os.path.join(out, "refine.done.json"), summary, default=str)
    return out


def run_demo(out, capsys):
    return run_main(["demo", "--out", out, "--profile", "smoke"], capsys)


def holding_the_lock(folder):
    """A process that holds ``folder``'s lock (as a running job would) until killed."""
    code = ("import sys, time; from dr_saliency.core.locks import lock_folder; "
            "lock = lock_folder(sys.argv[1], 'a folder').__enter__(); print('locked', flush=True); "
            "time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", code, folder], cwd=REPO,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def stop(proc):
    proc.kill()
    proc.wait()
    proc.stdout.close()


# --------------------------------------------------------------------------------------------
# 1. an interrupted refine, finished later, is whole for froc, demo and replicate


def test_froc_takes_a_file_whose_interrupted_run_was_finished_by_a_rerun(data, tmp_path, capsys):
    out = str(tmp_path / "r.h5")
    refine_interrupted_then_finished(data, out)
    code, _, err = run_main(["froc", out, data, "--out", str(tmp_path / "f"), "--bootstrap",
                             "5"], capsys)
    assert code == 0, err
    assert "did not finish" not in err
    assert os.path.isfile(tmp_path / "f" / "metrics.json")


def test_froc_takes_a_file_whose_every_planned_image_is_complete(data, tmp_path, capsys):
    # Killed after its last image was written, before it could record its end: nothing is
    # missing, whatever the run record says.
    out = str(tmp_path / "r.h5")
    records = select_records(open_dataset(data), split="test")

    def stop_at_the_end(image_id, message):
        if image_id == records[-1].id:
            raise Interrupted()

    with pytest.raises(Interrupted):
        refine_dataset(records, out, explain=fake_explain, config=CONFIG,
                       on_image=stop_at_the_end)
    code, _, err = run_main(["froc", out, data, "--out", str(tmp_path / "f"), "--bootstrap",
                             "5"], capsys)
    assert code == 0, err


def test_froc_still_refuses_a_run_whose_images_are_missing_and_records_allow_partial(
        data, tmp_path, capsys):
    out = str(tmp_path / "r.h5")
    with pytest.raises(Interrupted):
        refine(data, out, stop_after=2)
    froc = ["froc", out, data, "--out", str(tmp_path / "f"), "--bootstrap", "5"]
    code, _, err = run_main(froc, capsys)
    assert code == 1 and err.count("\n") == 1
    assert f"did not finish: it planned {n_test(data)} images, and 2 are complete" in err
    assert "(use --allow-partial to evaluate the images in both)" in err
    code, _, err = run_main(froc + ["--allow-partial"], capsys)
    assert code == 0, err
    params = json.load(open(tmp_path / "f" / "metrics.json"))["params"]
    assert params["allow_partial"] is True and params["force"] is False
    assert params["notes"][0].startswith("Partial results: the refine run started")


@pytest.mark.slow
def test_refine_killed_then_rerun_to_the_end_is_whole_for_froc(data, tmp_path, capsys):
    from tests.test_faults import _grader

    model = _grader(str(tmp_path / "m.h5"), 0)
    out = str(tmp_path / "r.h5")
    args = [sys.executable, BIN, "refine", model, data, "--out", out, "--max-iterations", "2",
            "--batch-size", "1"]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"), text=True)
    try:
        assert "iteration" in proc.stdout.readline()  # the first image is written
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    with ResultStore(out) as store:
        assert "finished" not in store.runs[-1] and len(store) < 40  # killed mid-run
    rerun = subprocess.run(args + ["--quiet"], cwd=REPO, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    code, _, err = run_main(["froc", out, data, "--out", str(tmp_path / "f"), "--bootstrap",
                             "5"], capsys)
    assert code == 0, err


def test_the_demo_gives_no_advice_to_use_an_option_it_does_not_have(data, tmp_path, capsys):
    # A result file that really is partial (its run was cut short, never rerun) behind a refine
    # step marked done: the froc step refuses it, in one line that names no --allow-partial.
    def interrupted(data_dir, out):
        with pytest.raises(Interrupted):
            refine(data_dir, out, stop_after=2)
        return {"written": 2, "already_done": 0, "not_referable": 0, "stop_reasons": {}}

    out = demo_folder(tmp_path, data, refine_with=interrupted)
    code, _, err = run_demo(out, capsys)
    assert code == 1 and err.count("\n") == 1
    assert f"did not finish: it planned {n_test(data)} images, and 2 are complete" in err
    assert "--allow-partial" not in err


def test_replicate_scores_a_seed_whose_refine_was_interrupted_then_finished(data, tmp_path,
                                                                           capsys):
    rep = str(tmp_path / "rep")
    demo_folder(tmp_path, data)
    os.makedirs(rep)
    os.rename(os.path.join(str(tmp_path), "demo"), os.path.join(rep, "seed_0"))
    code, stdout, err = run_main(["replicate", "--seeds", "0", "--profile", "smoke", "--out",
                                  rep, "--bootstrap", "10"], capsys)
    assert code == 0, err
    scores = json.load(open(os.path.join(rep, "seed_0", "scores.json")))
    with ResultStore(os.path.join(rep, "seed_0", "refine.h5")) as store:
        reasons = [store.read(i).stop_reason for i in store.complete_ids()]
    # Stop reasons over the whole file, not only the images of the last refine run.
    assert scores["stop_reasons"] == {r: reasons.count(r) for r in set(reasons)}
    assert scores["n_refined"] == len(reasons) == n_test(data)


# --------------------------------------------------------------------------------------------
# 12. froc records --force and --allow-partial


def test_froc_records_force_in_metrics_json(data, tmp_path, capsys):
    out = str(tmp_path / "r.h5")
    records = select_records(open_dataset(data), split="test")
    refine_dataset(records, out, explain=fake_explain, config=CONFIG,
                   params={"data": "0" * 64})  # made from another dataset
    froc = ["froc", out, data, "--out", str(tmp_path / "f"), "--bootstrap", "5"]
    code, _, err = run_main(froc, capsys)
    assert code == 1 and "(pass --force to use it anyway)" in err
    code, _, err = run_main(froc + ["--force"], capsys)
    assert code == 0, err
    params = json.load(open(tmp_path / "f" / "metrics.json"))["params"]
    assert params["force"] is True and params["allow_partial"] is False
    assert params["notes"] == []


# --------------------------------------------------------------------------------------------
# 13. replicate: every input checked before any work, one run per folder


def test_replicate_refuses_a_seed_numpy_cannot_take_before_any_work(tmp_path, capsys):
    out = str(tmp_path / "rep")
    code, stdout, err = run_main(["replicate", "--seeds", "4294967296", "--profile", "smoke",
                                  "--out", out], capsys)
    assert code == 1 and stdout == ""
    assert err.strip().splitlines() == [
        "Error: Expected comma-separated distinct integer seeds from 0 to 4294967295, e.g. "
        "1,2,3. Received: seeds='4294967296'"]
    assert not os.path.exists(out)


@pytest.mark.parametrize("content, expected", [
    ("[]", "Error: Expected a replicate record in {path}: an object with the experiment's "
           "settings. Received: list []; remove it or choose another folder"),
    ('{"settings": 3}', "Error: Expected a replicate record in {path}: an object with the "
                        "experiment's settings. Received: dict {{\"settings\": 3}}; remove it "
                        "or choose another folder"),
    ("{broken", "Error: Expected a replicate record (JSON) in {path}. Received: a file that "
                "cannot be read as JSON (Expecting property name enclosed in double quotes: "
                "line 1 column 2 (char 1)); remove it or choose another folder"),
])
def test_replicate_refuses_a_malformed_record_in_one_line(tmp_path, capsys, content, expected):
    out = tmp_path / "rep"
    out.mkdir()
    (out / "replicate.json").write_text(content)
    code, stdout, err = run_main(["replicate", "--seeds", "4", "--profile", "smoke", "--out",
                                  str(out)], capsys)
    assert code == 1 and stdout == ""
    assert err.strip().splitlines() == [expected.format(path=out / "replicate.json")]
    assert os.listdir(out) == ["replicate.json"]


def test_a_second_replicate_into_one_folder_is_refused_at_once(tmp_path, capsys):
    out = str(tmp_path / "rep")
    os.makedirs(out)
    first = holding_the_lock(out)
    try:
        code, stdout, err = run_main(["replicate", "--seeds", "4", "--profile", "smoke",
                                      "--out", out], capsys)
    finally:
        stop(first)
    assert code == 1 and stdout == "" and err.count("\n") == 1
    assert err.startswith(f"Error: Expected a replicate folder no other process is writing. "
                          f"Received: {out!r} is being written by process {first.pid} on ")
    assert os.listdir(out) == [".dr_saliency.lock"]  # no step run, nothing recorded


def test_replicate_refuses_a_malformed_cached_score_in_one_line(data, tmp_path, capsys):
    rep = str(tmp_path / "rep")
    demo_folder(tmp_path, data)
    os.makedirs(rep)
    seed_dir = os.path.join(rep, "seed_0")
    os.rename(os.path.join(str(tmp_path), "demo"), seed_dir)
    with open(os.path.join(seed_dir, "scores.json"), "w") as f:
        f.write("[]")
    code, _, err = run_main(["replicate", "--seeds", "0", "--profile", "smoke", "--out", rep,
                             "--bootstrap", "10"], capsys)
    assert code == 1 and err.count("\n") == 1
    assert (f"Error: Expected a seed's scores in {seed_dir}/scores.json. Received: list []; "
            "remove it to score the seed again") in err


def test_a_second_demo_into_one_folder_is_refused_at_once(tmp_path, capsys):
    out = str(tmp_path / "demo")
    os.makedirs(out)
    first = holding_the_lock(out)
    try:
        code, _, err = run_demo(out, capsys)
    finally:
        stop(first)
    assert code == 1 and err.count("\n") == 1
    assert err.startswith("Error: Expected a demo folder no other process is writing.")
    assert os.listdir(out) == [".dr_saliency.lock"]


# --------------------------------------------------------------------------------------------
# 14. one rule for relative gains; the froc step's marker written last


@pytest.mark.slow
def test_the_froc_step_writes_its_marker_after_its_figures(data, tmp_path, capsys):
    out = demo_folder(tmp_path, data, refine_with=refine)
    blocker = os.path.join(out, "froc", "froc_types.png")
    os.makedirs(blocker)  # the figure cannot be written: the step stops half-way
    code, _, err = run_demo(out, capsys)
    assert code == 1 and "froc_types" in err
    assert not os.path.exists(os.path.join(out, "froc", "metrics.json"))
    os.rmdir(blocker)
    code, stdout, err = run_demo(out, capsys)
    assert code == 0, err
    assert "[froc] done" in stdout
    for name in ("froc_types.png", "froc_stages.png", "curves.csv", "metrics.json"):
        assert os.path.isfile(os.path.join(out, "froc", name))


# --------------------------------------------------------------------------------------------
# issue 19, item 7: what one seed can show


@pytest.mark.slow
def test_the_demo_finishes_after_an_interrupted_refine_and_says_what_one_seed_can_show(
        data, tmp_path, capsys):
    out = demo_folder(tmp_path, data)  # its refine step interrupted, then rerun to the end
    code, stdout, err = run_demo(out, capsys)
    assert code == 0, err
    assert "[froc] done" in stdout and "[figures] done" in stdout
    report = open(os.path.join(out, "REPORT.md")).read()
    assert ("- Data seed 0: not the seed the defaults were chosen on (2026, docs/choices.md)."
            in report)
    assert "`dr-saliency replicate --profile smoke --seeds 1,2,3`" in report
    assert "docs/results.md" in report
    # The images at the cap, counted over the whole result file.
    with ResultStore(os.path.join(out, "refine.h5")) as store:
        ids = store.complete_ids()
        capped = sum(store.read(i).stop_reason == "max_iterations" for i in ids)
    assert 0 < capped < len(ids)
    assert (f"- {capped} of the {len(ids)} refined images ({capped / len(ids):.0%}) ran to the "
            "iteration cap of 2 (stop reason max_iterations)") in report
    # The examples: evenly spaced over the refined images by id, whatever S does on them.
    n = demo.PROFILES["smoke"]["figure_rows"]
    expected = [ids[round(k * (len(ids) - 1) / (n - 1))] for k in range(n)]
    assert json.load(open(os.path.join(out, "figures", "done.json")))["ids"] == expected
    assert (f"Picked evenly spaced over the refined test images sorted by id, not by their "
            f"result") in report and f"Images: {', '.join(expected)}." in report

    def report_after(edit, *parts):
        """REPORT.md rewritten (every step done) after ``edit`` of the JSON file ``parts``."""
        path = os.path.join(out, *parts)
        record = json.load(open(path))
        write_json(path, edit(record) or record)
        code, _, err = run_demo(out, capsys)
        assert code == 0, err
        return open(os.path.join(out, "REPORT.md")).read()

    # The seed the defaults were chosen on is named as such.
    report = report_after(lambda r: dict(r, seed=demo.CHOICE_SEED), "data", "synth.json")
    assert ("- Data seed 2026: the seed on whose validation split the defaults of the refinement "
            "and the scoring were chosen (docs/choices.md).") in report

    # Figures an earlier version picked (where S gains most) are not passed off as the rule's.
    report = report_after(lambda r: dict(r, ids=r["ids"][::-1]), "figures", "done.json")
    assert ("Not picked by the demo's rule (by id): an earlier version picked the images where S "
            "finds most more lesions than s_0, which favours S") in report

    # Issue 20, item 14: no relative gain over an s_0 that finds almost nothing, as replicate.
    # As the demo had it: s_0 barely finds the exudates, S a few more.
    def barely(metrics):
        row = next(r for r in metrics["summary"] if r["group"] == "type EX")
        row.update(s0_as10=0.003, s0_as10_ci=[0.001, 0.006], S_as10=0.0353,
                   S_as10_ci=[0.01, 0.06], gain_as10=10.761, gain_as10_ci=[2.0, 30.0])

    report = report_after(barely, "froc", "metrics.json")
    line = next(r for r in report.splitlines() if r.startswith("| type EX |"))
    assert line.endswith("| 0.003 [0.001, 0.006] | 0.035 [0.010, 0.060] | n/a |"), line
    assert "1076" not in report
    assert "n/a: no relative gain is given over an s_0 below 0.01" in report


# --------------------------------------------------------------------------------------------
# the result store's rule: a run's plan is done when its images are complete or a later
# finished run planned them


def test_a_run_is_unfinished_only_while_its_plan_is_not_done(tmp_path):
    from tests.test_results import make_result

    path = str(tmp_path / "r.h5")
    with ResultStore(path, "a") as store:
        store.begin_run(["a", "b", "c"])
        store.write("a", make_result(0))
    with ResultStore(path) as store:
        assert [r["missing"] for r in store.unfinished_runs()] == [2]
    with ResultStore(path, "a") as store:  # a rerun that finds b not referable, stores c
        run = store.begin_run(["a", "b", "c"], done=1)
        store.write("c", make_result(2))
        store.finish_run(run, {"written": 1, "not_referable": 1})
        store.begin_run(["d"])  # another run, cut short
    with ResultStore(path) as store:
        assert [(r["planned"], r["missing"]) for r in store.unfinished_runs()] == [(1, 1)]
    with ResultStore(path, "a") as store:
        store.write("d", make_result(3))
    with ResultStore(path) as store:
        assert store.unfinished_runs() == []
    # Files written before plans were kept: a later finished run that planned as many.
    legacy = str(tmp_path / "legacy.h5")
    with ResultStore(legacy, "a") as store:
        store.begin_run(3)
        store.write("a", make_result(0))
        assert len(store.unfinished_runs()) == 1
        store.finish_run(store.begin_run(3, done=1), {"written": 2})
        assert store.unfinished_runs() == []
