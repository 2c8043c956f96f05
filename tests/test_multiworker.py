"""Multi-worker training (issue 20, item 15): the documented command, on two local workers.

``train --strategy multiworker``, run as docs/training.md says (the same command on every worker,
each with its ``TF_CONFIG``, ``--out`` on a shared folder), did not run: worker 1 found the run
folder locked by worker 0 and exited, and worker 0 then waited in TensorFlow's start of the
cluster for ever, deaf to SIGTERM. Here the workers are processes of this machine talking over
127.0.0.1 (free ports found at run time), on tiny data; every process still running at the end
of a test is killed. The workers' meeting (:mod:`dr_saliency.grader.cluster`) is tested
in-process too, with threads and short timeouts.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from dr_saliency.core.errors import ClusterTimeoutError
from dr_saliency.grader import cluster
from test_train import make_folder

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(REPO, "bin", "dr-saliency")
LINUX = pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="POSIX signals")
#: A tiny grader, one epoch of three steps (12 training images, global batch 4).
TRAIN = ["--strategy", "multiworker", "--profile", "quick", "--input-size", "128",
         "--width", "0.0625", "--batch-size", "4", "--epochs", "1"]
#: Bound on any one command here (it takes well under a minute on an idle 2-core machine).
WAIT = 300
#: The files of a finished run folder (besides its lock file): the chief's alone.
RUN_FILES = {"best.weights.h5", "best.weights.h5.json", "config.json", "curves.png",
             "last.weights.h5", "last.weights.h5.json", "log.csv", "model.h5", "split.json"}


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _tf_config(ports, index):
    return json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                       "task": {"type": "worker", "index": index}})


def _default_sigint():
    # A test run in the background of a non-interactive shell inherits SIGINT ignored; give
    # the command a terminal's, so that a Ctrl-C reaches it.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Workers:
    """Worker processes of ``bin/dr-saliency``, output in files; all killed on leaving."""

    def __init__(self, tmp_path):
        self.tmp_path, self.procs = tmp_path, []

    def start(self, index, ports, *args):
        out, err = (open(self.tmp_path / f"w{len(self.procs)}.{k}", "w") for k in ("out", "err"))
        env = dict(os.environ, TF_CONFIG=_tf_config(ports, index))
        proc = subprocess.Popen([sys.executable, BIN, *args], cwd=REPO, env=env, stdout=out,
                                stderr=err, text=True, preexec_fn=_default_sigint)
        proc.files = (out.name, err.name)
        out.close()
        err.close()
        self.procs.append(proc)
        return proc

    def result(self, proc, timeout=WAIT):
        """(exit code, stdout, stderr) once ``proc`` has ended."""
        proc.wait(timeout=timeout)
        out, err = (open(name).read() for name in proc.files)
        return proc.returncode, out, err

    def wait_for(self, proc, text, timeout=WAIT):
        """Wait until ``proc``'s stderr shows ``text``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in open(proc.files[1]).read():
                return
            if proc.poll() is not None:
                break
            time.sleep(0.1)
        pytest.fail(f"no {text!r} (exit {proc.poll()}): {open(proc.files[1]).read()[-2000:]}")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("mw_data"), n=20)


def _models(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("model.h5"))


def _entries(folder):
    return {name for name in os.listdir(folder) if name != ".dr_saliency.lock"}


def _last_line(err):
    return err.strip().splitlines()[-1]


# --------------------------------------------------------------------------------------------
# Through the command line (slow: each worker imports TensorFlow and trains)
# --------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_two_workers_train_together_and_only_the_chief_writes(data, tmp_path):
    ports = _free_ports(2)
    run = tmp_path / "run"
    with Workers(tmp_path) as w:
        procs = [w.start(i, ports, "train", data, "--out", str(run), *TRAIN, "--timeout", "120")
                 for i in (0, 1)]
        (code0, out0, err0), (code1, out1, err1) = (w.result(p) for p in procs)
    assert (code0, code1) == (0, 0), (err0[-2000:], err1[-2000:])
    assert "Model: " + str(run / "model.h5") in out0
    assert "as worker 1 of the cluster" in out1 and "The chief validates" in out1
    assert _models(tmp_path) == ["run/model.h5"]
    assert _entries(run) == RUN_FILES  # nothing of worker 1's
    with open(run / "log.csv") as f:
        assert len(f.read().strip().splitlines()) == 2  # header and the one epoch
    # No TensorFlow error report from either side (a worker ending before the chief had
    # finished writing showed as a crash in the chief's log).
    assert "Error" not in err0 + err1 and "Traceback" not in err0 + err1


@LINUX
@pytest.mark.slow
def test_a_lost_worker_ends_the_others_in_one_line_and_the_cluster_resumes(data, tmp_path):
    ports = _free_ports(2)
    run = tmp_path / "run"
    # Epoch 2 is long enough (30 steps) to be stopped in.
    args = [*TRAIN[:-1], "2", "--steps-per-epoch", "30", "--timeout", "120"]
    with Workers(tmp_path) as w:
        procs = [w.start(i, ports, "train", data, "--out", str(run), *args) for i in (0, 1)]
        deadline = time.monotonic() + WAIT
        while not (run / "last.weights.h5.json").exists() and time.monotonic() < deadline \
                and procs[0].poll() is None:
            time.sleep(0.05)
        procs[0].send_signal(signal.SIGTERM)  # the chief, during epoch 2
        code0, _, _ = w.result(procs[0])
        code1, _, err1 = w.result(procs[1])
    assert code0 == -signal.SIGTERM
    assert code1 == 1, err1[-2000:]
    assert _last_line(err1).startswith("Error: Expected every worker of TF_CONFIG to keep "
                                       "training (worker 1 here). Received: ")
    assert _last_line(err1).endswith("(start every worker again with --resume to continue from "
                                     "the last finished epoch)")
    with open(run / "last.weights.h5.json") as f:
        assert json.load(f)["epoch"] == 1

    # The same command on every worker, --resume: it continues from the chief's checkpoint.
    ports = _free_ports(2)
    with Workers(tmp_path) as w:
        procs = [w.start(i, ports, "train", data, "--resume", str(run), "--timeout", "120")
                 for i in (1, 0)]
        (code1, _, err1), (code0, out0, err0) = (w.result(p) for p in procs)
    assert (code0, code1) == (0, 0), (err0[-2000:], err1[-2000:])
    with open(run / "last.weights.h5.json") as f:
        assert json.load(f)["epoch"] == 2
    with open(run / "log.csv") as f:
        assert [row.split(",")[0] for row in f.read().strip().splitlines()] == ["epoch", "0", "1"]
    assert _models(tmp_path) == ["run/model.h5"] and _entries(run) == RUN_FILES


@pytest.mark.slow
@pytest.mark.parametrize("index, waited_for", [
    (0, "Error: Expected all 2 workers of TF_CONFIG within timeout=2 s. Received: no word from "
        "worker 1 (127.0.0.1:{1})"),
    (1, "Error: Expected the chief (worker 0, 127.0.0.1:{0}) within timeout=2 s. Received: "
        "no answer"),
], ids=["chief", "worker"])
def test_a_worker_whose_peers_never_come_fails_in_one_line(data, tmp_path, index, waited_for):
    ports = _free_ports(2)  # nobody listens on the other one
    run = tmp_path / "run"
    with Workers(tmp_path) as w:
        proc = w.start(index, ports, "train", data, "--out", str(run), *TRAIN, "--timeout", "2")
        code, _, err = w.result(proc)
    assert code == 1
    errors = [line for line in err.splitlines() if line.startswith("Error")]
    assert errors == [waited_for.format(*ports) + " (start the same command there with its "
                                                  "TF_CONFIG, or give --timeout more seconds)"]
    assert _last_line(err) == errors[0] and "Traceback" not in err
    assert not run.exists() or _entries(run) == set()  # nothing written


@LINUX
@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_sigterm_and_ctrl_c_end_a_waiting_worker(data, tmp_path, signum):
    ports = _free_ports(2)
    with Workers(tmp_path) as w:
        proc = w.start(0, ports, "train", data, "--out", str(tmp_path / "run"), *TRAIN,
                       "--timeout", "3600")
        w.wait_for(proc, "Waiting up to 3600 s for the other workers of TF_CONFIG: worker 1")
        proc.send_signal(signum)
        code, _, err = w.result(proc, timeout=120)  # long before its hour is up
    if signum == signal.SIGTERM:
        assert code == -signal.SIGTERM
    else:
        assert code == 130 and _last_line(err) == "Interrupted."


# --------------------------------------------------------------------------------------------
# The workers' meeting, in-process
# --------------------------------------------------------------------------------------------

def test_this_worker_reads_tf_config():
    assert cluster.this_worker({}) is None
    config = json.dumps({"cluster": {"chief": ["a:1"], "worker": ["b:2", "c:3"]},
                         "task": {"type": "worker", "index": 0}})
    worker = cluster.this_worker({"TF_CONFIG": config})
    assert (worker.name, worker.address, worker.chief, worker.is_chief) == \
        ("worker 0", "b:2", ("chief", 0), False)
    assert [t[:2] for t in worker.tasks] == [("chief", 0), ("worker", 0), ("worker", 1)]


@pytest.mark.parametrize("tf_config, match", [
    ("{not json", r"Expected TF_CONFIG as JSON: .* Received: TF_CONFIG='\{not json'"),
    ('{"cluster": {"worker": ["a:1"]}}', r"Expected TF_CONFIG as JSON"),
    ('{"cluster": {"ps": ["a:1"], "worker": ["b:2"]}, "task": {"type": "worker", "index": 0}}',
     r"Expected only the jobs \('chief', 'worker'\).*Received: jobs \['ps', 'worker'\]"),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 1}}',
     r"Expected TF_CONFIG's task to be one of its cluster's. Received: task type='worker' "
     r"index=1"),
    ('{"cluster": {"worker": ["a:1", "b"]}, "task": {"type": "worker", "index": 0}}',
     r"Expected TF_CONFIG addresses as 'host:port'. Received: 'b'"),
])
def test_this_worker_refuses_a_bad_tf_config(tf_config, match):
    with pytest.raises(ValueError, match=match):
        cluster.this_worker({"TF_CONFIG": tf_config})


def _meet_all(workers, summaries, timeout):
    """Run meet() for each worker in a thread; {name: "ok" or the exception}."""
    results = {}

    def meet(worker, summary):
        try:
            cluster.meet(worker, summary, timeout=timeout)
            results[worker.name] = "ok"
        except Exception as exc:  # noqa: BLE001 - collected for the test to check
            results[worker.name] = exc

    threads = [threading.Thread(target=meet, args=args) for args in zip(workers, summaries)]
    for thread in threads:
        thread.start()
        time.sleep(0.05)
    for thread in threads:
        thread.join()
    return results


def _cluster(n):
    addresses = [f"127.0.0.1:{p}" for p in _free_ports(n)]
    return [cluster.Worker("worker", i, {"worker": tuple(addresses)}) for i in range(n)], addresses


def test_workers_meet_and_leave_their_ports_free():
    workers, addresses = _cluster(3)
    # Started in any order: worker 2 first, the chief last.
    results = _meet_all(workers[::-1], [{"a": 1}] * 3, timeout=30)
    assert results == {"worker 0": "ok", "worker 1": "ok", "worker 2": "ok"}
    for address in addresses:  # free for TensorFlow's servers
        socket.create_server(("", int(address.rsplit(":", 1)[1]))).close()


def test_a_worker_alone_names_whom_it_waited_for():
    workers, addresses = _cluster(3)
    with pytest.raises(ClusterTimeoutError, match=(
            rf"Expected all 3 workers of TF_CONFIG within timeout=0.5 s. Received: no word "
            rf"from worker 1 \({addresses[1]}\), worker 2 \({addresses[2]}\)")) as info:
        cluster.meet(workers[0], {}, timeout=0.5)
    assert info.value.missing == (f"worker 1 ({addresses[1]})", f"worker 2 ({addresses[2]})")
    with pytest.raises(ClusterTimeoutError, match=(
            rf"Expected the chief \(worker 0, {addresses[0]}\) within timeout=0.5 s. "
            rf"Received: no answer")):
        cluster.meet(workers[2], {}, timeout=0.5)
    # Reached, but the chief still waits for worker 2: both say whom they waited for.
    results = _meet_all(workers[:2], [{}, {}], timeout=1)
    assert str(results["worker 0"]).endswith(f"no word from worker 2 ({addresses[2]})")
    assert str(results["worker 1"]).endswith("Received: it was reached but still waited for "
                                             "other workers") or \
        str(results["worker 1"]) == str(results["worker 0"])  # the chief's answer came first


def test_workers_about_to_train_differently_are_all_stopped():
    workers, _ = _cluster(2)
    results = _meet_all(workers, [{"config": {"batch_size": 4}}, {"config": {"batch_size": 2}}],
                        timeout=30)
    message = ("Expected the same training on every worker (the same command, data and TF_CONFIG "
               "cluster). Received: worker 1 differs from the chief: config.batch_size=2 (the "
               "chief has 4)")
    assert {name: str(exc) for name, exc in results.items()} == \
        {"worker 0": message, "worker 1": message}
    assert all(type(exc) is ValueError for exc in results.values())


def test_a_taken_port_is_named():
    workers, addresses = _cluster(2)
    port = int(addresses[1].rsplit(":", 1)[1])
    with socket.create_server(("", port)):
        with pytest.raises(OSError, match=rf"Expected port {port} of this worker \(worker 1: "
                                          rf"{addresses[1]} in TF_CONFIG\) free"):
            cluster.meet(workers[1], {}, timeout=5)


def test_a_worker_of_another_cluster_is_told_so():
    workers, addresses = _cluster(2)
    stranger = cluster.Worker("worker", 2, {"worker": (*addresses, "127.0.0.1:1")})
    results = {}

    def chief():
        try:
            cluster.meet(workers[0], {}, timeout=1.5)
        except ClusterTimeoutError as exc:  # worker 1 never came: the stranger does not count
            results["chief"] = exc

    thread = threading.Thread(target=chief)
    thread.start()
    with pytest.raises(ValueError, match=r"Expected a task of the chief's TF_CONFIG cluster "
                                         r"\(worker 1\). Received: worker 2"):
        cluster.meet(stranger, {}, timeout=30)
    thread.join()
    assert "no word from worker 1" in str(results["chief"])
