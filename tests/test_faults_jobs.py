"""Faults of the jobs that write dataset folders (synth, preprocess), found by a user's probes.

1. ``kill -9`` of the command left its fork server, resource tracker and pool workers running
   for good: every child must die within seconds of its parent, however the parent dies.
2. Ctrl-C at some moments printed a traceback (main process or worker): it must end with the one
   line "Interrupted." and exit code 130.
3. Two writers into one folder: the second is refused at once, naming the first; a killed
   writer's lock is taken over.
4. Provenance: a preprocessed folder records what made it (source, fingerprint, size) and
   refuses another source or size; no dataset is written into a training run or beside a
   result file.

The process tests run the real entry point (``bin/dr-saliency``) in a session of its own and
read the process tree from ``/proc`` (Linux only). Data stay tiny: 40 synthetic 128 px images,
or 40 copies of one upscaled image for preprocessing (large enough that the pool lives a few
seconds).
"""

import hashlib
import json
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

from test_cli import run_main  # the console-script entry point, called in-process

from dr_saliency._version import __version__
from dr_saliency.core import procs
from dr_saliency.core.errors import BusyError, FolderInUseError
from dr_saliency.core.locks import LOCK_NAME, lock_folder
from dr_saliency.fundus import synth
from dr_saliency.fundus.datasets import dataset_fingerprint, open_dataset
from dr_saliency.fundus.datasets.folder import write_labels, write_sample
from dr_saliency.fundus.prepare import preprocess_dataset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(REPO, "bin", "dr-saliency")
LINUX = pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="reads /proc (Linux)")
#: How long the children of a killed command may outlive it (the watchdog checks every 0.5 s).
ORPHAN_DEADLINE = 10.0
#: The first line of the BusyError a second writer gets (dr_saliency.core.locks).
BUSY = r"Error: Expected a dataset folder no other process is writing\. Received: "


# --------------------------------------------------------------------------------------------
# Process helpers (/proc)
# --------------------------------------------------------------------------------------------

def _parents():
    """{pid: parent pid} of every live process (zombies left out)."""
    found = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            if fields[0] not in (b"Z", b"X"):
                found[int(name)] = int(fields[1])
    return found


def _descendants(pid):
    """Live descendants of ``pid``: {pid: parent pid}."""
    parents = _parents()
    out, todo = {}, [pid]
    while todo:
        p = todo.pop()
        for child, parent in parents.items():
            if parent == p and child not in out:
                out[child] = parent
                todo.append(child)
    return out


def _alive(pids):
    parents = _parents()
    return [p for p in pids if p in parents]


def _default_sigint():
    # A job started in the background of a non-interactive shell (as CI may start the tests)
    # inherits SIGINT ignored; a terminal's command does not. Give the command a terminal's.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(*args):
    """The command line in a session (process group) of its own, output captured, with SIGINT
    at its default as under a terminal."""
    return subprocess.Popen([sys.executable, BIN, *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True,
                            preexec_fn=_default_sigint)


def _wait_for_workers(proc, n=2, timeout=60.0):
    """Wait until ``proc`` runs ``n`` pool workers (grandchildren: the fork server's children);
    return every descendant seen."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tree = _descendants(proc.pid)
        if sum(parent != proc.pid for parent in tree.values()) >= n:
            return tree
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    proc.kill()
    out, err = proc.communicate()
    pytest.fail(f"no {n} pool workers seen (exit {proc.returncode}): {err.decode()[-800:]}")


def _kill_and_time_orphans(proc, tree):
    """SIGKILL ``proc``; return (seconds until none of ``tree`` lives, the ones still alive)."""
    proc.kill()
    killed = time.monotonic()
    proc.wait()
    seen = set(tree)
    while True:
        for pid in list(seen):  # a child started at the last moment counts too
            seen.update(_descendants(pid))
        left = _alive(seen)
        waited = time.monotonic() - killed
        if not left or waited > ORPHAN_DEADLINE:
            break
        time.sleep(0.02)
    for pid in left:  # leave the machine clean even when the test fails
        os.kill(pid, signal.SIGKILL)
    proc.communicate()
    return waited, left


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def big_source(tmp_path_factory):
    """A folder dataset of 40 copies of one synthetic image upscaled to 1536 px (JPEG): its
    preprocessing keeps a 2-worker pool busy for a few seconds."""
    root = str(tmp_path_factory.mktemp("big_source"))
    image = synth.synthesize(2, size=128, rng=0).image
    big = cv2.resize(image, (1536, 1536), interpolation=cv2.INTER_LINEAR)
    os.makedirs(os.path.join(root, "images"))
    for i in range(40):
        assert cv2.imwrite(os.path.join(root, "images", f"img{i:02d}.jpg"), big[..., ::-1])
    write_labels(root, [{"image": f"img{i:02d}", "level": i % 5} for i in range(40)])
    return root


def _small_source(root, n=3, seed=0, grades=None):
    """A folder dataset of n 128 px images; returns it opened (its records know their root)."""
    for i in range(n):
        image = synth.synthesize(i % 5, size=128, rng=seed * 100 + i).image
        write_sample(str(root), f"img{i}", image)
    grades = grades or [i % 5 for i in range(n)]
    write_labels(str(root), [{"image": f"img{i}", "level": grades[i]} for i in range(n)])
    return open_dataset(str(root))


def _commands(tmp_path, big_source):
    out = str(tmp_path / "out")
    return {"synth": ["synth", out, "--n", "40", "--size", "128", "--workers", "2"],
            "preprocess": ["preprocess", big_source, out, "--size", "128", "--workers", "2"]}


# --------------------------------------------------------------------------------------------
# 1. kill -9: no orphans; 3. the killed writer's lock is taken over
# --------------------------------------------------------------------------------------------

@LINUX
@pytest.mark.slow
@pytest.mark.parametrize("command", ["synth", "preprocess"])
def test_kill_9_leaves_no_process_behind_and_the_rerun_takes_the_folder_over(
        tmp_path, big_source, command):
    args = _commands(tmp_path, big_source)[command]
    proc = _start(*args)
    tree = _wait_for_workers(proc)
    # The pool as the user saw it: resource tracker, fork server and two workers.
    assert len(tree) >= 3, tree
    waited, left = _kill_and_time_orphans(proc, tree)
    # Before the fix all four were still alive 20 minutes later; now they go within about a
    # second (the workers' watchdog checks every 0.5 s, then the server and tracker see EOF).
    assert not left, f"still alive {ORPHAN_DEADLINE:.0f} s after kill -9 of the command: {left}"
    # The kernel released the dead writer's lock: a rerun takes the folder over and resumes.
    rerun = subprocess.run([sys.executable, BIN, *args], cwd=REPO, capture_output=True,
                           text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert rerun.stderr == ""
    assert re.search(r"synthetic images of 128x128|40 images written|already done", rerun.stdout)
    labels = open(os.path.join(str(tmp_path / "out"), "labels.csv")).read().splitlines()
    assert len(labels) == 41


def test_pool_workers_watch_the_caller_and_ignore_ctrl_c():
    # What each worker is set up with, in the pool that synth and preprocess share.
    seen = []
    procs.run_jobs(_worker_state, [()] * 2, workers=2, on_result=seen.append)
    for ignores, blocked, watchdog in seen:
        assert ignores and blocked and watchdog
    assert multiprocessing.active_children() == []


def test_run_jobs_stops_on_a_failing_job_and_checks_its_arguments():
    with pytest.raises(ZeroDivisionError):
        procs.run_jobs(_inverse, [(1,), (0,), (2,)], workers=2, on_result=lambda r: None)
    assert multiprocessing.active_children() == []  # the pool was shut down
    with pytest.raises(TypeError, match=r"Expected callables fn and on_result\. Received: fn=3, "):
        procs.run_jobs(3, [], workers=1, on_result=print)
    with pytest.raises(TypeError, match=r"Expected an int workers >= 1\. Received: workers=2\.0"):
        procs.run_jobs(_inverse, [], workers=2.0, on_result=print)
    with pytest.raises(ValueError, match=r"Expected an int workers >= 1\. Received: workers=0"):
        procs.run_jobs(_inverse, [], workers=0, on_result=print)


def _inverse(x):
    return 1 / x


def _worker_state():
    import signal as sig
    import threading
    return (sig.getsignal(sig.SIGINT) == sig.SIG_IGN,
            sig.SIGINT in sig.pthread_sigmask(sig.SIG_BLOCK, []),
            any(t.name == "dr_saliency-watchdog" for t in threading.enumerate()))


@LINUX
def test_a_worker_leaves_once_its_caller_has_ended(monkeypatch):
    # The watchdog's test of life: a running process has a start token; a dead one has none,
    # also as a zombie its parent has not reaped yet; then the watchdog ends the worker.
    child = subprocess.Popen(["sleep", "30"])
    token = procs._start_token(child.pid)
    assert token is not None and procs._start_token(os.getpid()) is not None
    child.kill()
    deadline = time.monotonic() + 10
    while procs._start_token(child.pid) is not None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert procs._start_token(child.pid) is None  # a zombie: killed, not yet reaped
    exits = []
    monkeypatch.setattr(os, "_exit", exits.append)
    procs._watch(child.pid, token)
    assert exits == [1]
    child.wait()
    assert procs._start_token(child.pid) is None


# --------------------------------------------------------------------------------------------
# 2. Ctrl-C at any moment: "Interrupted." and exit code 130, no traceback
# --------------------------------------------------------------------------------------------

@LINUX
@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.2, 0.8, 1.2, 1.6, 3.0])
@pytest.mark.parametrize("command", ["synth", "preprocess"])
def test_ctrl_c_at_any_moment_prints_one_line(tmp_path, big_source, command, delay):
    proc = _start(*_commands(tmp_path, big_source)[command])
    time.sleep(delay)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole group
    # communicate() returns once every process holding the pipes (workers, fork server,
    # resource tracker) has ended: worker tracebacks would be in ``err``.
    out, err = proc.communicate(timeout=120)
    out, err = out.decode(), err.decode()
    # (A Ctrl-C while bin/dr-saliency imports the command line, about the first second, is
    # caught by dr_saliency.app.console.)
    assert "Traceback" not in err, err
    finished = bool(re.search(r"synthetic images of|images written", out))
    if proc.returncode == 130:
        assert err == "Interrupted.\n"
    elif finished:
        # The job had ended; a Ctrl-C during the interpreter's last clean-up (after Python has
        # restored SIGINT's default action) ends it by the signal itself, silently.
        assert proc.returncode in (0, -signal.SIGINT) and err == "", (proc.returncode, err)
    else:
        pytest.fail(f"exit {proc.returncode}, stderr {err!r}")


def test_ctrl_c_while_the_pool_starts_is_raised_once_it_has_started(monkeypatch):
    # A Ctrl-C in the middle of starting a worker used to leave a worker the pool did not know
    # of, which failed with a traceback after the command had gone. It is held back until the
    # pool is up, then raised; the pool is shut down and no worker is left.
    original = procs.pool_context

    def interrupted_context(preload=()):
        os.kill(os.getpid(), signal.SIGINT)  # arrives while the pool starts
        return original(preload)

    monkeypatch.setattr(procs, "pool_context", interrupted_context)
    # Python's own Ctrl-C handler, as under a terminal (a background job may inherit SIGINT
    # ignored, and then nothing is raised, rightly).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        results = []
        with pytest.raises(KeyboardInterrupt):
            procs.run_jobs(_slow_square, [(i,) for i in range(20)], workers=2,
                           on_result=results.append)
        assert len(results) < 20
        assert multiprocessing.active_children() == []
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, previous)


def _slow_square(i):
    time.sleep(0.1)
    return i * i


# --------------------------------------------------------------------------------------------
# 3. One writer per folder
# --------------------------------------------------------------------------------------------

@LINUX
@pytest.mark.slow
@pytest.mark.parametrize("command", ["synth", "preprocess"])
def test_a_second_writer_is_refused_at_once_naming_the_first(tmp_path, big_source, command):
    args = _commands(tmp_path, big_source)[command]
    out = str(tmp_path / "out")
    first = _start(*args)
    _wait_for_workers(first)
    # Freeze the first run (its whole group): it holds the folder's lock however fast the
    # machine, until it is let go again.
    os.killpg(first.pid, signal.SIGSTOP)
    try:
        second = subprocess.run([sys.executable, BIN, *args], cwd=REPO, capture_output=True,
                                text=True, timeout=120)
    finally:
        os.killpg(first.pid, signal.SIGCONT)
    assert second.returncode == 1
    lines = second.stderr.splitlines()
    assert len(lines) == 1, second.stderr
    assert re.match(BUSY + re.escape(repr(out)) + rf" is being written by process {first.pid} on \S+ "
                      rf"\(dr-saliency {command} .*, since [0-9T:-]+\); wait for it to finish "
                      r"or stop it$", lines[0]), lines[0]
    # The first run was not disturbed.
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err.decode()


def test_library_writers_are_refused_while_the_folder_is_locked(tmp_path):
    source = _small_source(tmp_path / "src", n=2)
    for name, write in [("synth", lambda out: synth.write_dataset(out, 2, size=128, workers=1)),
                        ("preprocess", lambda out: preprocess_dataset(source, out, size=128,
                                                                      workers=1))]:
        out = str(tmp_path / name)
        os.makedirs(out)
        with lock_folder(out, "a dataset folder"):
            with pytest.raises(BusyError, match=rf"Expected a dataset folder no other process is "
                                                rf"writing\. Received: .* is being written by "
                                                rf"process {os.getpid()} on "):
                write(out)
        assert os.listdir(out) == [LOCK_NAME]  # nothing written while refused
        write(out)  # the lock released: the folder is free again
        assert os.path.exists(os.path.join(out, "labels.csv"))


# --------------------------------------------------------------------------------------------
# 4. Provenance of a preprocessed folder; other outputs are never mixed into
# --------------------------------------------------------------------------------------------

def test_dataset_fingerprint_is_the_documented_hash():
    class Rec:
        def __init__(self, id, grade, image_path):
            self.id, self.grade, self.image_path = id, grade, image_path

    here = os.path.abspath(__file__)
    size = os.path.getsize(here)
    records = [Rec("b", np.int64(1), here), Rec("a", None, "/no/such/file.png")]
    text = f'[["a",null,null],["b",1,{size}]]'
    assert dataset_fingerprint(records) == hashlib.sha256(text.encode()).hexdigest()
    # Record order does not count; ids, grades and file sizes do.
    assert dataset_fingerprint(records[::-1]) == dataset_fingerprint(records)
    assert dataset_fingerprint([Rec("b", 2, here), records[1]]) != dataset_fingerprint(records)
    assert dataset_fingerprint([Rec("c", 1, here), records[1]]) != dataset_fingerprint(records)
    assert dataset_fingerprint([Rec("b", 1, None), records[1]]) != dataset_fingerprint(records)
    with pytest.raises(TypeError, match=r"Expected an iterable of records\. Received: dataset of "
                                        r"type int"):
        dataset_fingerprint(3)
    with pytest.raises(TypeError, match=r"Expected records with a str id\. Received: record="):
        dataset_fingerprint([Rec(7, 1, here)])
    with pytest.raises(TypeError, match=r"Expected an int grade or None\. Received: b: grade='1'"):
        dataset_fingerprint([Rec("b", "1", here)])


def test_preprocessed_folder_records_its_source_and_refuses_another(tmp_path, capsys):
    a = _small_source(tmp_path / "A", seed=0)
    b = _small_source(tmp_path / "B", seed=1)
    out = str(tmp_path / "out")
    preprocess_dataset(a, out, size=160, workers=1)
    with open(os.path.join(out, "preprocess.json")) as f:
        record = json.load(f)
    assert record == {"source": str(tmp_path / "A"), "fingerprint": dataset_fingerprint(a),
                      "size": 160, "dr_saliency": __version__}

    # The same source and size resume.
    assert preprocess_dataset(a, out, size=160, workers=1)["already_done"] == 3
    # Before the fix B merged into A's folder; now each difference is named.
    with pytest.raises(FolderInUseError) as info:
        preprocess_dataset(b, out, size=128, workers=1)
    assert info.value.can_overwrite
    assert list(info.value.differences) == [
        f"source={str(tmp_path / 'B')!r}, another dataset (folder made from {str(tmp_path / 'A')!r})",
        "size=128 (folder has 160)"]
    assert str(info.value) == (
        f"Expected the source dataset and size that made the folder to resume (or overwrite=True "
        f"to redo it). Received: out={out!r}, " + "; ".join(info.value.differences))
    # The same folder with other content (a regraded image) is another dataset too.
    _small_source(tmp_path / "A", seed=0, grades=[4, 1, 2])
    with pytest.raises(FolderInUseError, match=r"Received: out=.*, source='.*A': ids, grades or "
                                               r"image file sizes differ from the dataset that "
                                               r"made the folder$"):
        preprocess_dataset(open_dataset(str(tmp_path / "A")), out, size=160, workers=1)

    # On the command line: one line, with the flag that redoes it.
    code, _, err = run_main(["preprocess", str(tmp_path / "B"), out, "--size", "128",
                             "--workers", "1"], capsys)
    assert code == 1
    assert err.count("\n") == 1
    assert err.startswith("Error: Expected the source dataset and size that made the folder to "
                          "resume")
    assert f"source={str(tmp_path / 'B')!r}, another dataset" in err
    assert "size=128 (folder has 160)" in err and err.rstrip().endswith("--overwrite)")

    # overwrite redoes the folder from B.
    summary = preprocess_dataset(b, out, size=128, workers=1, overwrite=True)
    assert summary["written"] == 3
    with open(os.path.join(out, "preprocess.json")) as f:
        assert json.load(f)["fingerprint"] == dataset_fingerprint(b)


def test_preprocessed_folder_without_a_source_record_is_refused(tmp_path):
    a = _small_source(tmp_path / "A")
    out = str(tmp_path / "out")
    preprocess_dataset(a, out, size=128, workers=1)
    with open(os.path.join(out, "preprocess.json"), "w") as f:  # as older versions wrote it
        json.dump({"size": 128, "dr_saliency": "0.1.0"}, f)
    with pytest.raises(FolderInUseError, match=r"Received: out=.*, source='.*A': the folder does "
                                               r"not record which dataset made it$"):
        preprocess_dataset(a, out, size=128, workers=1)


@pytest.mark.parametrize("files, found", [
    (("config.json", "split.json"), r"a training run \(config\.json, split\.json\)"),
    (("refine.h5",), r"a result or model file \(refine\.h5\)"),
])
def test_no_dataset_is_written_into_a_run_or_beside_a_result_file(tmp_path, files, found):
    source = _small_source(tmp_path / "src", n=1)
    out = tmp_path / "run"
    out.mkdir()
    for name in files:
        (out / name).write_text("{}")
    for what, write in [
            ("synthetic", lambda overwrite: synth.write_dataset(str(out), 2, size=128, workers=1,
                                                                overwrite=overwrite)),
            ("preprocessed", lambda overwrite: preprocess_dataset(source, str(out), size=128,
                                                                  workers=1, overwrite=overwrite))]:
        for overwrite in (False, True):
            with pytest.raises(FolderInUseError,
                               match=rf"Expected a folder free of other outputs to write a {what} "
                                     rf"dataset into\. Received: out=.*, which holds {found}$") as info:
                write(overwrite)
            assert not info.value.can_overwrite
    assert sorted(os.listdir(out)) == sorted(files)  # untouched: not even a lock file
