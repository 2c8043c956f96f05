"""The engine: the N shards of a job on N worker processes, or on an existing cluster (Dask).

A job (refine, explain, evaluate) split into shards (:mod:`dr_saliency.core.shards`) is a set of
independent tasks, one per shard, each writing its own resumable output. :func:`run_shards` runs
them on a Dask distributed cluster: a ``LocalCluster`` of ``workers`` processes with one thread
each on 127.0.0.1 (``--workers N``), or the cluster whose scheduler is at ``address``
(``--cluster tcp://host:8786``, started with ``dask scheduler`` and ``dask worker``). Why Dask and
not Ray: docs/choices.md.

What holds, as in one process:

- **Resume.** A task is a shard run that resumes its own output; a shard that finished (its
  marker ``<folder>/<k>-of-<n>.done.json`` names the same job ``key``) is not run again.
- **A worker that dies** (killed, out of memory) has its task rescheduled by Dask's scheduler on
  another worker (up to ``distributed.scheduler.allowed-failures`` times, 3): the rerun resumes
  that shard's output, whose journal rolled back the image being written, so images are redone,
  never lost or doubled. An exception in a task (a bad image, settings refused) is not retried:
  it is raised here, as it is, and the other tasks are cancelled.
- **One writer.** The shards' folder is locked for the whole run (a second run is refused,
  naming the first), and each shard output keeps its own lock.
- **Ctrl-C** cancels the tasks and closes the cluster (a local one's worker processes end); what
  the shards wrote stays valid and the same command resumes.

The worker processes import the task's function by name, so it must live in an importable
module (not ``__main__``); a worker keeps what a task caches in module globals (a loaded model)
for the next task it runs.

Dask is an optional dependency (``pip install -e ".[cluster]"``): it is imported only here, only
when a job uses the engine.
"""

import contextlib
import json
import logging
import os

from dr_saliency.core.errors import MissingExtraError
from dr_saliency.core.files import read_json, write_json
from dr_saliency.core.locks import lock_folder
from dr_saliency.core.progress import check_callback, phase
from dr_saliency.core.shards import Shard

__all__ = ["EXTRA", "cluster_size", "have_engine", "import_engine", "run_shards", "shard_marker"]

#: The pip extra that installs the engine.
EXTRA = "cluster"

#: Seconds to wait for a cluster (local or remote) to answer.
CONNECT_TIMEOUT = 60


def import_engine():
    """The ``distributed`` module, or a :class:`~dr_saliency.core.errors.MissingExtraError`
    naming the extra that installs it."""
    try:
        import distributed
    except ImportError as exc:
        raise MissingExtraError(
            "Expected Dask distributed for workers=/cluster= (install it with pip install -e "
            f"\".[{EXTRA}]\" or pip install \"dask[distributed]\"). Received: {exc}", EXTRA) from None
    return distributed


def have_engine():
    """Whether the engine's dependency is installed."""
    try:
        import_engine()
    except MissingExtraError:
        return False
    return True


def cluster_size(address):
    """How many workers the cluster at ``address`` has now (at least 1 to be useful)."""
    distributed = import_engine()
    with distributed.Client(address, timeout=CONNECT_TIMEOUT) as client:
        workers = len(client.scheduler_info().get("workers", {}))
    if workers < 1:
        raise ValueError(f"Expected a cluster with workers. Received: address={address!r} has none")
    return workers


def shard_marker(folder, shard):
    """The done-marker of ``shard``'s task in ``folder``."""
    return os.path.join(folder, f"{shard.index}-of-{shard.count}.done.json")


def run_shards(task, count, folder, *, key, workers=None, address=None, on_shard=None,
               on_progress=None, what="a sharded job's folder"):
    """Run ``task(shard)`` for the ``count`` shards of a job on a Dask cluster.

    Args:
        task: picklable callable(:class:`~dr_saliency.core.shards.Shard`) -> JSON-ready dict
            (the shard's summary), defined in an importable module; it writes the shard's
            output and resumes it when rerun.
        count: int >= 1, the number of shards.
        folder: str, where the shards' markers go (created); locked while the job runs.
        key: JSON-ready value naming the job's settings: a marker with another key does not
            count as done (the task then runs, and its output refuses other settings itself).
        workers: int >= 1, local worker processes (one thread each); None with ``address``.
        address: str, the scheduler of an existing cluster (``tcp://host:8786``), or None for
            a local cluster.
        on_shard: optional callable(shard, summary, skipped: bool) as each shard finishes
            (in the calling process, in completion order; ``skipped``: done by an earlier run).
        on_progress: optional, the package's progress protocol (:mod:`dr_saliency.core.progress`):
            one phase, "Shards", advanced as each shard finishes.
        what: what ``folder`` is, for the lock's message.

    Returns:
        list of ``(summary, earlier)`` in shard order: each shard's summary, and whether an
        earlier run did it (its summary is that run's).

    Raises:
        MissingExtraError: Dask distributed is not installed.
        ValueError: bad arguments; or whatever a task raised (the first, as it is).
        BusyError: another run holds ``folder``.
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"Expected a shard count >= 1. Received: count={count!r}")
    if (workers is None) == (address is None):
        raise ValueError(f"Expected either workers or a cluster address. "
                         f"Received: workers={workers!r}, address={address!r}")
    check_callback(on_shard, "on_shard")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)
                                or workers < 1):
        raise ValueError(f"Expected workers >= 1. Received: workers={workers!r}")
    distributed = import_engine()
    key = json.loads(json.dumps(key, sort_keys=True, default=str))  # as a marker reads back
    os.makedirs(folder, exist_ok=True)
    shards = [Shard(k, count) for k in range(1, count + 1)]
    summaries = {}
    advance = phase(on_progress, "Shards", count)
    with lock_folder(folder, what):
        todo = []
        for shard in shards:
            marker = read_json(shard_marker(folder, shard))
            if marker is not None and marker.get("key") == key:
                summaries[shard.index] = (marker["summary"], True)
                advance(1)
                if on_shard:
                    on_shard(shard, marker["summary"], True)
            else:
                todo.append(shard)
        if todo:
            with _client(distributed, workers, address) as client:
                futures = {client.submit(task, shard, key=f"dr-saliency-shard-{shard.index}-of-"
                                         f"{count}-{os.getpid()}", pure=False, retries=0): shard
                           for shard in todo}
                try:
                    for future in distributed.as_completed(list(futures)):
                        shard = futures[future]
                        summary = future.result()  # raises the task's own exception
                        write_json(shard_marker(folder, shard), {"key": key, "summary": summary})
                        summaries[shard.index] = (summary, False)
                        advance(1)
                        if on_shard:
                            on_shard(shard, summary, False)
                except BaseException:
                    # An error or Ctrl-C: nothing more is started; the cluster is closed below.
                    client.cancel(list(futures), force=True)
                    raise
    return [summaries[shard.index] for shard in shards]


@contextlib.contextmanager
def _client(distributed, workers, address):
    """A Client on a new LocalCluster (closed on exit, workers and all) or on ``address``."""
    if address is not None:
        with distributed.Client(address, timeout=CONNECT_TIMEOUT) as client:
            yield client
        return
    # One task thread per worker: the network's own threads do the parallel work inside a task,
    # and the machine's cores are shared out among the workers, so that N workers do not run
    # N times as many threads as there are cores (measured: docs/performance.md).
    # memory_limit=0: Dask must not pause or kill a worker that holds a large network.
    threads = str(max(1, (os.cpu_count() or 1) // workers))
    with distributed.LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
            dashboard_address=None, memory_limit=0, silence_logs=logging.ERROR,
            env={"TF_NUM_INTRAOP_THREADS": threads, "OMP_NUM_THREADS": threads}) as cluster:
        with distributed.Client(cluster, timeout=CONNECT_TIMEOUT) as client:
            yield client
