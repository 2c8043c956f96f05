"""Shards through the command line (the real entry point, in subprocesses): refine, explain and
evaluate with --shard K/N then `dr-saliency merge`, and with --workers 2 (a local Dask cluster),
give what one process gives, file for file, and froc/figures the same numbers; merge refuses
mixed, overlapping and missing shards in one line; --shard and --workers fail in one line when
misused or when the cluster extra is missing."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from dr_saliency.core.shards import Shard, select_shard
from dr_saliency.fundus import synth
from dr_saliency.fundus.datasets import open_dataset, select_records
from dr_saliency.jobs import engine
from dr_saliency.refinement.run import refine_dataset
from tests.test_merge import CONFIG, _arrays, fake_explain

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(REPO, "bin", "dr-saliency")
DASK = pytest.mark.skipif(not engine.have_engine(),
                          reason='Dask distributed is not installed (pip install -e ".[cluster]")')


def cli(*args, cwd, prelude=None):
    """``dr-saliency ARGS`` in a subprocess: (exit code, stdout, stderr)."""
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if prelude is None:
        command = [sys.executable, BIN, *args]
    else:  # code run first in the process (e.g. to hide a dependency)
        command = [sys.executable, "-c", f"{prelude}; import sys; sys.argv = ['dr-saliency'] + "
                   f"sys.argv[1:]; from dr_saliency.app.console import main; main()", *args]
    proc = subprocess.run(command, cwd=str(cwd), capture_output=True, text=True, env=env,
                          timeout=600)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """12 synthetic 128 px images and a tiny random-weight grader (test_faults' recipe)."""
    from tests.test_faults import _grader

    root = tmp_path_factory.mktemp("sharded")
    synth.write_dataset(str(root / "data"), 12, size=128, seed=0, workers=1)
    _grader(str(root / "m.h5"), 0)
    return root


def _same_results(a, b):
    x, y = _arrays(a), _arrays(b)
    assert sorted(x) == sorted(y)
    for name in x:
        assert x[name][1] == y[name][1]
        assert sorted(x[name][0]) == sorted(y[name][0])
        for key in x[name][0]:
            assert np.array_equal(x[name][0][key], y[name][0][key]), (name, key)


def _in_shards(world, command, outs, merged):
    """``COMMAND --out OUTS[k-1] --shard k/2`` for k = 1, 2, each checked to name its shard and
    its output, then ``merge MERGED`` of both (in reverse order): the merge's output line."""
    for k, out_name in enumerate(outs, 1):
        code, out, err = cli(*command, "--out", out_name, "--shard", f"{k}/2", cwd=world)
        assert code == 0, err
        assert f"shard {k}/2" in out and out_name in out
    code, out, err = cli("merge", merged, *outs[::-1], cwd=world)
    assert code == 0, err
    return out.strip()


def _metrics(path):
    with open(path) as f:
        metrics = json.load(f)
    return metrics["groups"], metrics["summary"]


@pytest.mark.slow
def test_refine_in_shards_or_on_two_workers_is_one_process_bit_for_bit(world):
    refine = ["refine", "m.h5", "data", "--max-iterations", "2", "--quiet"]
    assert cli(*refine, "--out", "one.h5", cwd=world)[0] == 0
    assert _in_shards(world, refine, ["s1.h5", "s2.h5"], "merged.h5") == \
        "Merged 2 shards: 12 images in merged.h5"
    _same_results(world / "one.h5", world / "merged.h5")
    # froc and figures on the merged file: the unsharded run's numbers and pictures.
    for results, out_dir in (("one.h5", "f1"), ("merged.h5", "f2")):
        assert cli("froc", results, "data", "--out", out_dir, "--bootstrap", "20",
                   cwd=world)[0] == 0
        assert cli("figures", results, "data", "--out", out_dir + "_fig", "--format", "png",
                   cwd=world)[0] == 0
    assert _metrics(world / "f1" / "metrics.json") == _metrics(world / "f2" / "metrics.json")
    pictures = sorted(n for n in os.listdir(world / "f1_fig") if n.endswith(".png"))
    assert pictures and pictures == sorted(n for n in os.listdir(world / "f2_fig")
                                           if n.endswith(".png"))
    for name in pictures:
        assert (world / "f1_fig" / name).read_bytes() == (world / "f2_fig" / name).read_bytes()


@pytest.mark.slow
@DASK
def test_refine_on_two_local_workers_is_one_process_and_resumes(world):
    refine = ["refine", "m.h5", "data", "--max-iterations", "2", "--quiet"]
    if not (world / "one.h5").exists():
        assert cli(*refine, "--out", "one.h5", cwd=world)[0] == 0
    code, out, err = cli(*refine, "--out", "w.h5", "--workers", "2", cwd=world)
    assert code == 0, err
    assert "12 images refined (max_iterations 12)" in out and "(2 shards merged): w.h5" in out
    _same_results(world / "one.h5", world / "w.h5")
    assert sorted(os.listdir(world / "w.h5.shards")) == [
        ".dr_saliency.lock", "1-of-2.done.json", "1-of-2.h5", "1-of-2.h5.lock",
        "2-of-2.done.json", "2-of-2.h5", "2-of-2.h5.lock"]
    # A rerun: both shards done, nothing refined again, the same merged file.
    code, out, err = cli(*refine, "--out", "w.h5", "--workers", "2", cwd=world)
    assert code == 0, err
    assert "0 images refined (none), 12 already done" in out
    _same_results(world / "one.h5", world / "w.h5")
    # The file of a one-process run is not replaced by a merge.
    code, _, err = cli(*refine, "--out", "one.h5", "--workers", "2", cwd=world)
    assert code == 1 and err.count("\n") == 1
    assert err.startswith("Error: Expected out to be a new result file or the merge of an "
                          "earlier workers=/cluster= run")


@pytest.mark.slow
def test_evaluate_in_shards_and_on_two_workers_is_one_process_file_for_file(world):
    evaluate = ["evaluate", "m.h5", "data", "--split", "all", "--bootstrap", "50"]
    assert cli(*evaluate, "--out", "e1", cwd=world)[0] == 0
    assert _in_shards(world, evaluate, ["es1", "es2"], "em") == "Merged 2 shards: 12 images in em"
    for k in (1, 2):  # a shard writes its predictions, not an evaluation of its own
        assert (world / f"es{k}" / "shard.json").exists()
        assert not (world / f"es{k}" / "evaluation.json").exists()
    outputs = ["em"]
    if engine.have_engine():
        code, out, err = cli(*evaluate, "--out", "ew", "--workers", "2", cwd=world)
        assert code == 0, err
        outputs.append("ew")
    for folder in outputs:
        for name in ("evaluation.json", "predictions.csv"):
            assert (world / "e1" / name).read_text() == (world / folder / name).read_text()
    assert json.loads((world / "e1" / "evaluation.json").read_text())["params"]["model_sha256"]


@pytest.mark.slow
def test_explain_in_shards_and_on_two_workers_is_one_process(world):
    explain = ["explain", "data/images", "--model", "m.h5", "--max-iterations", "1", "--quiet"]
    assert cli(*explain, "--out", "x1", cwd=world)[0] == 0
    assert _in_shards(world, explain, ["xs1", "xs2"], "xm") == \
        "Merged 2 shards: 12 photographs in xm"
    outputs = ["xm"]
    if engine.have_engine():
        code, out, err = cli(*explain, "--out", "xw", "--workers", "2", cwd=world)
        assert code == 0, err
        assert "12 photographs explained (12 refined now, 0 already done)" in out
        outputs.append("xw")

    def table(folder):
        t = json.loads((world / folder / "explain.json").read_text())
        return {**t, "results": None,
                "images": [{**r, "figure": os.path.basename(r["figure"])} for r in t["images"]]}

    for folder in outputs:
        assert (world / "x1" / "explain.csv").read_text() == \
            (world / folder / "explain.csv").read_text()
        assert table("x1") == table(folder)
        for name in os.listdir(world / "x1" / "figures"):
            assert (world / "x1" / "figures" / name).read_bytes() == \
                (world / folder / "figures" / name).read_bytes()
        _same_results(world / "x1" / "results.h5", world / folder / "results.h5")


# --------------------------------------------------------------------------------------------
# refusals (no TensorFlow: result files of the fake refinement)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("refusals")
    synth.write_dataset(str(root / "data"), 12, size=128, seed=4, workers=1)
    records = select_records(open_dataset(str(root / "data")))
    for k, n in ((1, 3), (2, 3), (3, 3), (1, 2)):
        refine_dataset(select_shard(records, f"{k}/{n}"), str(root / f"{k}of{n}.h5"),
                       explain=fake_explain, config=CONFIG,
                       params={"data": "d", "shard": Shard(k, n).to_params()})
    refine_dataset(records, str(root / "whole.h5"), explain=fake_explain, config=CONFIG,
                   params={"data": "d"})
    os.makedirs(root / "evaluation")
    (root / "evaluation" / "shard.json").write_text("{}")
    return root


@pytest.mark.parametrize("inputs, expected", [
    (["1of3.h5", "1of2.h5"], "Error: Expected the shards of one split into N (mixed shards). "
                             "Received: '1of3.h5' is shard 1/3, '1of2.h5' is shard 1/2"),
    (["1of3.h5", "2of3.h5", "1of3.h5"], "Error: Expected each shard once (overlapping shards). "
                                        "Received: shard 1/3 in '1of3.h5' and in '1of3.h5'"),
    (["1of3.h5", "3of3.h5"], "Error: Expected all 3 shards. Received: shard 2/3 missing "
                             "(given: 1/3 ('1of3.h5'), 3/3 ('3of3.h5'))"),
    (["whole.h5", "1of2.h5"], "Error: Expected result files of sharded runs (each made for "
                              "one shard K/N). Received: 'whole.h5' records no shard"),
    (["1of3.h5", "evaluation"], "Error: Expected shard outputs of one kind. Received: '1of3.h5' "
                                "is a result file, 'evaluation' is an evaluate folder"),
])
def test_merge_refuses_mixed_overlapping_and_missing_shards_in_one_line(shards, inputs,
                                                                        expected):
    code, out, err = cli("merge", "m.h5", *inputs, cwd=shards)
    assert code == 1 and out == ""
    assert err.strip() == expected and err.count("\n") == 1
    assert not (shards / "m.h5").exists()


def test_merge_joins_the_shards_given_in_any_order(shards):
    code, out, err = cli("merge", "all.h5", "3of3.h5", "1of3.h5", "2of3.h5", cwd=shards)
    assert code == 0, err
    assert out.strip() == "Merged 3 shards: 12 images in all.h5"
    _same_results(shards / "whole.h5", shards / "all.h5")


def test_merge_again_is_refused_in_one_line_unless_overwrite(shards):
    merge = ("merge", "again.h5", "1of3.h5", "2of3.h5", "3of3.h5")
    assert cli(*merge, cwd=shards)[0] == 0
    code, out, err = cli(*merge, cwd=shards)
    assert code == 1 and out == ""
    assert err.strip() == ("Error: Expected a new merged result file (--overwrite replaces it). "
                           "Received: out='again.h5', which exists")
    code, out, err = cli(*merge, "--overwrite", cwd=shards)
    assert code == 0, err
    _same_results(shards / "whole.h5", shards / "again.h5")


@pytest.mark.parametrize("value", ["3/2", "0/4", "1", "a/b"])
def test_a_bad_shard_is_one_line(shards, value):
    (shards / "model.h5").write_bytes(b"not read: the shard is checked first")
    code, out, err = cli("refine", "model.h5", "data", "--out", "r.h5", "--shard", value,
                         cwd=shards)
    assert code == 1 and err.count("\n") == 1
    assert err.strip() == (f"Error: Expected a shard K/N with 1 <= K <= N, e.g. '2/8'. "
                           f"Received: shard={value!r}")


def test_workers_without_the_cluster_extra_name_it_in_one_line(shards):
    (shards / "model.h5").write_bytes(b"not read")
    hide = "import sys; sys.modules['distributed'] = None"
    for command in (["refine", "model.h5", "data", "--out", "r.h5", "--workers", "2"],
                    ["evaluate", "model.h5", "data", "--out", "e", "--cluster", "tcp://x:1"]):
        code, out, err = cli(*command, cwd=shards, prelude=hide)
        assert code == 1 and err.count("\n") == 1
        assert err.strip() == ("Error: Expected Dask distributed for --workers/--cluster. "
                               "Received: it is not installed (pip install -e \".[cluster]\")")
    code, _, err = cli("refine", "model.h5", "data", "--out", "r.h5", "--workers", "2",
                       "--shard", "1/2", cwd=shards)
    assert code == 2 and "Give --shard K/N (one shard here) or --workers/--cluster" in err


@pytest.mark.slow
@DASK
@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="reads /proc (Linux)")
def test_ctrl_c_closes_the_cluster_and_the_rerun_resumes(world):
    import signal
    import time

    from tests.test_faults_jobs import _alive, _default_sigint, _descendants

    refine = [sys.executable, BIN, "refine", "m.h5", "data", "--max-iterations", "2", "--quiet",
              "--out", "c.h5", "--workers", "2"]
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(refine, cwd=str(world), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True, preexec_fn=_default_sigint, env=env)
    shard = world / "c.h5.shards" / "1-of-2.h5"
    deadline = time.monotonic() + 120
    while not shard.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    seen = set(_descendants(proc.pid))
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.decode().strip().splitlines()[-1] == "Interrupted."
    deadline = time.monotonic() + 15
    while _alive(seen) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = _alive(seen)
    for pid in left:  # leave the machine clean even when the test fails
        os.kill(pid, signal.SIGKILL)
    assert not left, "worker processes outlived the command"
    code, out, err = cli(*refine[2:], cwd=world)
    assert code == 0, err
    if not (world / "one.h5").exists():
        assert cli(*refine[2:8], "--out", "one.h5", cwd=world)[0] == 0
    _same_results(world / "one.h5", world / "c.h5")
