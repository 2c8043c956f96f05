"""Multi-worker training's cluster: who this worker is (``TF_CONFIG``) and the wait for the others.

``tf.distribute.MultiWorkerMirroredStrategy`` waits for its cluster inside one C++ call that holds
Python's global interpreter lock, and installs TensorFlow's own SIGTERM handler (its preemption
notice) as it starts: while it waits no Python code runs, so a Ctrl-C waits with it and a
``kill`` is swallowed. A worker started long before the others, or whose peers never come, could
then only be ended with SIGKILL. So the workers first meet here, over plain sockets on the
addresses of ``TF_CONFIG``, with a deadline, Ctrl-C and SIGTERM working as anywhere else; only
once all of them are there does each build the strategy, whose own wait is then short.

The meeting: the chief (task 0 of job "chief", or of job "worker" when there is no "chief", as
TensorFlow chooses it; it also leads TensorFlow's coordination service) listens on its own
``TF_CONFIG`` address. Every other worker connects there and sends one JSON line: who it is and a
summary of what it is about to train. When every task has said hello with the chief's summary,
the chief answers ``{"go": true}`` to all, waits for each to hang up, and closes its socket: its
port is free again for TensorFlow's server. A worker whose summary differs (other options,
other data, another split) is answered with the differences, and both sides stop: run as they
were, the workers would hang in their first collective or train on different settings.

No TensorFlow here: this module is fast to import and to test.
"""

import dataclasses
import json
import os
import selectors
import socket
import sys
import time

from dr_saliency.core.errors import ClusterTimeoutError
from dr_saliency.core.files import differences

__all__ = ["CLUSTER_JOBS", "Worker", "meet", "print_wait", "this_worker"]

#: The jobs MultiWorkerMirroredStrategy trains with ("ps" and "evaluator" belong to other setups).
CLUSTER_JOBS = ("chief", "worker")
#: Seconds between a waiting worker's tries (connect, read): also how soon it sees the deadline.
POLL = 0.25
#: Seconds the chief waits for a worker to hang up after "go" (it does so at once).
HANG_UP = 5.0
#: Longest hello or answer line accepted, in bytes (anything longer is not a worker's).
MAX_LINE = 1 << 20


@dataclasses.dataclass(frozen=True)
class Worker:
    """This process's task in a ``TF_CONFIG`` cluster.

    Attributes:
        job: "chief" or "worker".
        index: int, the task index within the job.
        cluster: dict job -> tuple of "host:port" addresses.
    """

    job: str
    index: int
    cluster: dict

    @property
    def name(self):
        """"worker 1", "chief 0": as messages name a task."""
        return f"{self.job} {self.index}"

    @property
    def address(self):
        return self.cluster[self.job][self.index]

    @property
    def chief(self):
        """The task TensorFlow makes the chief: "chief" 0, else "worker" 0."""
        return _chief_task(self.cluster)

    @property
    def is_chief(self):
        return (self.job, self.index) == self.chief

    @property
    def tasks(self):
        """Every task of the cluster as (job, index, address), chief first."""
        return [(job, i, address) for job in CLUSTER_JOBS
                for i, address in enumerate(self.cluster.get(job, ()))]


def _chief_task(cluster):
    return ("chief", 0) if cluster.get("chief") else ("worker", 0)


def this_worker(environ=None):
    """This process's task, from the ``TF_CONFIG`` environment variable.

    Args:
        environ: mapping to read ``TF_CONFIG`` from (default ``os.environ``).

    Returns:
        a :class:`Worker`, or None when ``TF_CONFIG`` is unset or empty (one worker alone).

    Raises:
        ValueError: for a ``TF_CONFIG`` that is not JSON, has no ``cluster`` of "worker"
            addresses or no ``task`` in it, or names jobs other than "chief" and "worker".
    """
    text = (os.environ if environ is None else environ).get("TF_CONFIG", "").strip()
    if not text:
        return None
    shown = text if len(text) <= 200 else text[:200] + "..."
    expected = ('Expected TF_CONFIG as JSON: {"cluster": {"worker": ["host:port", ...]}, '
                '"task": {"type": "worker", "index": i}} (docs/training.md)')
    try:
        spec = json.loads(text)
        cluster, task = spec["cluster"], spec["task"]
        cluster = {job: tuple(addresses) for job, addresses in cluster.items()}
        job, index = task["type"], task["index"]
    except (ValueError, TypeError, KeyError, AttributeError):
        raise ValueError(f"{expected}. Received: TF_CONFIG={shown!r}") from None
    others = sorted(set(cluster) - set(CLUSTER_JOBS))
    if others or not cluster.get("worker") and not cluster.get("chief"):
        raise ValueError(f"Expected only the jobs {CLUSTER_JOBS} in TF_CONFIG's cluster "
                         f"(MultiWorkerMirroredStrategy). Received: jobs {sorted(cluster)}")
    if len(cluster.get("chief", ())) > 1:
        raise ValueError("Expected at most one 'chief' in TF_CONFIG's cluster. Received: "
                         f"{len(cluster['chief'])}")
    if job not in cluster or isinstance(index, bool) or not isinstance(index, int) \
            or not 0 <= index < len(cluster[job]):
        raise ValueError(f"Expected TF_CONFIG's task to be one of its cluster's. Received: "
                         f"task type={job!r} index={index!r}, cluster jobs "
                         f"{ {j: len(a) for j, a in cluster.items()} }")
    for address in (a for addresses in cluster.values() for a in addresses):
        _host_port(address)
    return Worker(job, index, cluster)


def _host_port(address):
    """("host", port) of "host:port" ("[::1]:port" for IPv6)."""
    host, _, port = str(address).rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"Expected TF_CONFIG addresses as 'host:port'. Received: {address!r}")
    return host.strip("[]"), int(port)


def meet(worker, summary, *, timeout, on_wait=None):
    """Wait until every worker of the cluster is here and about to train the same thing.

    Args:
        worker: :class:`Worker`, this process.
        summary: JSON-serialisable dict of what this worker will train (settings, data, split):
            every worker's must equal the chief's.
        timeout: float > 0, seconds to wait for the others.
        on_wait: optional callable(message) called once if this worker has to wait (what it
            waits for).

    Raises:
        ClusterTimeoutError: the others did not all come within ``timeout`` seconds (naming
            the ones that did not).
        ValueError: a worker's summary differs from the chief's (naming the differences).
        OSError: this worker's own port is taken by another process.
    """
    if timeout is None or not timeout > 0:
        raise ValueError(f"Expected a timeout > 0 seconds. Received: timeout={timeout!r}")
    if len(worker.tasks) == 1:
        return
    deadline = time.monotonic() + timeout
    if worker.is_chief:
        _lead(worker, summary, timeout, deadline, on_wait)
    else:
        _check_port_free(worker)
        _follow(worker, summary, timeout, deadline, on_wait)


def _check_port_free(worker):
    """Fail now, by name, when this worker's own TF_CONFIG port is taken: TensorFlow's server
    could not start there, and the others would wait for it in vain."""
    _listen(worker).close()


def _listen(worker):
    _, port = _host_port(worker.address)
    try:
        if socket.has_dualstack_ipv6():
            return socket.create_server(("", port), family=socket.AF_INET6, dualstack_ipv6=True)
        return socket.create_server(("", port))
    except OSError as exc:
        raise OSError(f"Expected port {port} of this worker ({worker.name}: {worker.address} "
                      f"in TF_CONFIG) free for its TensorFlow server. Received: "
                      f"{exc.strerror or exc}") from None


def _send(sock, message):
    sock.sendall(json.dumps(message).encode() + b"\n")


def _lead(worker, summary, timeout, deadline, on_wait):
    """The chief's side: wait for every other task's hello, then answer them all."""
    expected = {f"{job} {i}": address for job, i, address in worker.tasks
                if (job, i) != (worker.job, worker.index)}
    server = _listen(worker)
    server.setblocking(False)
    pending = {}  # socket -> bytes read so far
    ready = {}  # task name -> socket
    told = False
    try:
        with selectors.DefaultSelector() as sel, server:
            sel.register(server, selectors.EVENT_READ)
            while len(ready) < len(expected):
                left = deadline - time.monotonic()
                if left <= 0:
                    missing = [f"{name} ({address})" for name, address in expected.items()
                               if name not in ready]
                    raise ClusterTimeoutError(
                        f"Expected all {len(expected) + 1} workers of TF_CONFIG within "
                        f"timeout={timeout:g} s. Received: no word from {', '.join(missing)}",
                        missing, timeout)
                for key, _ in sel.select(min(POLL, left)):
                    if key.fileobj is server:
                        try:
                            conn, _ = server.accept()
                        except OSError:
                            continue
                        conn.setblocking(False)
                        pending[conn] = b""
                        sel.register(conn, selectors.EVENT_READ)
                        continue
                    conn = key.fileobj
                    hello = _read_line(conn, pending)
                    if hello is False:  # hung up (a worker that went away), or not a worker
                        _drop(conn, sel, pending, ready)
                    elif hello is not None:
                        _welcome(conn, hello, summary, expected, ready, sel, pending)
                if not told and len(ready) < len(expected) and on_wait:
                    told = True
                    on_wait("Waiting up to {:g} s for the other workers of TF_CONFIG: {}".format(
                        timeout, ", ".join(f"{n} ({a})" for n, a in expected.items()
                                           if n not in ready)))
            for conn in ready.values():
                _answer(conn, {"go": True})
            # Each worker hangs up first, so that no connection closed on this side holds the
            # port that TensorFlow's server is about to take.
            for conn in ready.values():
                conn.settimeout(HANG_UP)
                try:
                    conn.recv(1)
                except OSError:
                    pass
    except (ValueError, OSError) as exc:
        # The workers already here would otherwise wait out their own deadlines.
        for conn in ready.values():
            _answer(conn, {"refused": str(exc)})
        raise
    finally:
        for conn in pending:
            conn.close()


def _answer(conn, message):
    """Send ``message`` to a worker, whose going away is no error here."""
    try:
        conn.setblocking(True)
        _send(conn, message)
    except OSError:
        pass


def _read_line(conn, pending):
    """The JSON line of ``conn`` once complete; None while incomplete; False when the peer
    hung up or sent something that is not a worker's line."""
    try:
        data = conn.recv(65536)
    except (BlockingIOError, InterruptedError):
        return None
    except OSError:
        return False
    if not data:
        return False
    buf = pending.get(conn, b"") + data
    if b"\n" not in buf:
        if len(buf) > MAX_LINE:
            return False
        pending[conn] = buf
        return None
    pending[conn] = b""
    try:
        message = json.loads(buf.split(b"\n", 1)[0])
    except ValueError:
        return False
    return message if isinstance(message, dict) else False


def _drop(conn, sel, pending, ready):
    sel.unregister(conn)
    pending.pop(conn, None)
    for name, sock in list(ready.items()):
        if sock is conn:
            del ready[name]
    conn.close()


def _welcome(conn, hello, summary, expected, ready, sel, pending):
    """Take a hello: a task of the cluster with the chief's summary is ready; another summary
    stops both sides."""
    name = hello.get("task")
    if name not in expected:  # another cluster's worker, or not a worker at all
        if isinstance(name, str):
            _answer(conn, {"refused": f"Expected a task of the chief's TF_CONFIG cluster "
                                      f"({', '.join(expected)}). Received: {name}"})
        _drop(conn, sel, pending, ready)
        return
    if name in ready:
        _answer(conn, {"refused": f"Expected one process per task. Received: a second {name}"})
        _drop(conn, sel, pending, {})
        return
    ready[name] = conn
    differ = differences(summary, hello.get("summary") or {}, holder="the chief")
    if differ:
        raise ValueError(f"Expected the same training on every worker (the same command, data "
                         f"and TF_CONFIG cluster). Received: {name} differs from the chief: "
                         + "; ".join(differ))


def _follow(worker, summary, timeout, deadline, on_wait):
    """A worker's side: reach the chief, say hello, wait for its answer."""
    job, index = worker.chief
    address = worker.cluster[job][index]
    target = f"the chief ({job} {index}, {address})"
    told = reached = False
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            received = ("it was reached but still waited for other workers" if reached
                        else "no answer")
            raise ClusterTimeoutError(
                f"Expected {target} within timeout={timeout:g} s. Received: {received}",
                [f"{job} {index} ({address})"], timeout)
        try:
            conn = socket.create_connection(_host_port(address), timeout=min(POLL * 4, left))
        except OSError:
            if not told and on_wait:
                told = True
                on_wait(f"Waiting up to {timeout:g} s for {target}")
            time.sleep(min(POLL, max(0.0, deadline - time.monotonic())))
            continue
        reached = True
        with conn:
            answer = _hello(conn, worker, summary, deadline)
        if answer is None:  # the chief went away before answering: it may come back
            time.sleep(min(POLL, max(0.0, deadline - time.monotonic())))
            continue
        if answer.get("go"):
            return
        raise ValueError(str(answer.get("refused") or answer))


def _hello(conn, worker, summary, deadline):
    """Send this worker's hello on ``conn``; the chief's answer, or None if there is none."""
    try:
        _send(conn, {"task": worker.name, "summary": summary})
        buf = b""
        while b"\n" not in buf and len(buf) <= MAX_LINE:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            conn.settimeout(min(POLL, left))
            try:
                data = conn.recv(65536)
            except socket.timeout:
                continue
            if not data:
                return None
            buf += data
        answer = json.loads(buf.split(b"\n", 1)[0])
    except (OSError, ValueError):
        return None
    return answer if isinstance(answer, dict) else None


def print_wait(message):
    """An ``on_wait`` for :func:`meet` that tells the user on stderr."""
    print(message, file=sys.stderr, flush=True)
