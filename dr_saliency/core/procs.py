"""Process pools whose workers die with the caller and leave Ctrl-C to it.

The synthetic generator (:mod:`dr_saliency.fundus.synth`) and preprocessing
(:mod:`dr_saliency.fundus.prepare`) run their jobs through :func:`run_jobs`; worker set-up lives
here once.

- **Start method**: ``"forkserver"`` (or ``"spawn"`` where there is none), never ``"fork"``: a
  child forked after OpenCV (or TensorFlow) started threads in the parent can hang for good. Like
  any non-fork pool, it needs the calling script guarded by ``if __name__ == "__main__":``.
- **No orphans**: a worker waits on its task queue, and under ``"forkserver"`` every worker
  holds a write end of that queue and of the fork server's "alive" pipe. When the caller dies
  without closing the pool (``kill -9``, the OOM killer), no one ever sees end-of-file: the
  workers, the fork server and the resource tracker would live on for good (measured: all four
  still there after the caller's ``SIGKILL``). ``PR_SET_PDEATHSIG`` does not help: a worker's
  parent is the fork server, which the workers themselves keep alive. So each worker runs a
  watchdog thread that ends the worker once the caller is gone (checked every
  ``WATCH_INTERVAL`` seconds); with the workers gone, the fork server and the resource tracker
  see end-of-file and exit on their own.
- **Ctrl-C**: a terminal sends SIGINT to the whole foreground process group, workers and fork
  server included. Workers ignore it (from birth: SIGINT is held back while the pool starts,
  and the fork server and workers inherit that signal mask), so no worker prints a traceback or
  breaks the pool; the caller gets its ``KeyboardInterrupt`` and shuts the pool down.

POSIX first; elsewhere the pool still works, without the signal mask.
"""

import concurrent.futures
import contextlib
import multiprocessing
import os
import signal
import threading
import time

__all__ = ["WATCH_INTERVAL", "pool_context", "run_jobs"]

#: Seconds between a worker's checks that the process that started the pool still lives.
WATCH_INTERVAL = 0.5


def pool_context(preload=()):
    """The multiprocessing context of the package's pools: "forkserver", else "spawn".

    Args:
        preload: module names the fork server imports once for all workers (ignored by
            "spawn", and once the fork server runs).

    Returns:
        a ``multiprocessing`` context.
    """
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        if preload:
            ctx.set_forkserver_preload(list(preload))
        return ctx
    return multiprocessing.get_context("spawn")


def run_jobs(fn, jobs, *, workers, on_result, initializer=None, initargs=(), preload=()):
    """Run ``fn(*job)`` for every job in a process pool; hand each result to ``on_result``.

    Workers die within about ``WATCH_INTERVAL`` seconds of this process's death, however it
    dies, and ignore SIGINT. On any exception here (a job's, ``on_result``'s, or
    ``KeyboardInterrupt``), queued jobs are dropped, running ones finish, and the exception
    propagates once the pool is shut down.

    Args:
        fn: picklable callable (a module-level function).
        jobs: iterable of argument tuples.
        workers: int >= 1, worker processes.
        on_result: callable(result), called in this process as each job finishes (completion
            order, not job order).
        initializer: optional picklable callable, run once in each worker with ``initargs``.
        initargs: tuple.
        preload: module names for the fork server to import (:func:`pool_context`).

    Raises:
        TypeError: for a non-callable ``fn``, ``on_result`` or ``initializer``, or a
            non-integer ``workers``.
        ValueError: for ``workers`` < 1.
    """
    if not callable(fn) or not callable(on_result):
        raise TypeError(f"Expected callables fn and on_result. Received: fn={fn!r}, "
                        f"on_result={on_result!r}")
    if initializer is not None and not callable(initializer):
        raise TypeError(f"Expected a callable initializer or None. Received: initializer={initializer!r}")
    if isinstance(workers, bool) or not hasattr(workers, "__index__"):
        raise TypeError(f"Expected an int workers >= 1. Received: workers={workers!r}")
    if workers < 1:
        raise ValueError(f"Expected an int workers >= 1. Received: workers={workers!r}")
    pool = None
    try:
        with _sigint_held():
            pool = concurrent.futures.ProcessPoolExecutor(
                int(workers), mp_context=pool_context(preload), initializer=_init_worker,
                initargs=(os.getpid(), _start_token(os.getpid()), initializer, tuple(initargs)))
            futures = [pool.submit(fn, *job) for job in jobs]
        for future in concurrent.futures.as_completed(futures):
            on_result(future.result())
    except BaseException:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


@contextlib.contextmanager
def _sigint_held():
    """Hold Ctrl-C back while a pool starts; raise its ``KeyboardInterrupt`` afterwards.

    A ``KeyboardInterrupt`` in the middle of starting a worker leaves a process the pool does
    not know of, which then fails with a traceback once this process has gone. Two things hold
    it back:

    - SIGINT is blocked in this thread. Processes started meanwhile (the fork server, "spawn"
      workers) inherit the mask, so they never receive a Ctrl-C, nor do the workers the fork
      server forks. The resource tracker is started first: starting it unblocks SIGINT in the
      calling thread.
    - The mask does not stop the kernel from handing the signal to another thread (numpy's
      BLAS threads, OpenCV's), after which Python would still raise ``KeyboardInterrupt`` here;
      so the Python handler only records it meanwhile.
    """
    if not hasattr(signal, "pthread_sigmask"):  # pragma: no cover - not POSIX
        yield
        return
    from multiprocessing import resource_tracker
    resource_tracker.ensure_running()
    caught = []
    try:
        handler = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    except ValueError:  # not the main thread, where alone Python runs signal handlers
        handler = None
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # a blocked SIGINT arrives here
        if handler is not None:
            signal.signal(signal.SIGINT, handler)
            if caught and callable(handler):
                handler(signal.SIGINT, None)  # Python's default: raise KeyboardInterrupt
            elif caught and handler == signal.SIG_DFL:
                signal.raise_signal(signal.SIGINT)


def _init_worker(owner, token, initializer, initargs):
    """Each worker's set-up: ignore Ctrl-C, die with ``owner``, then the job's own set-up."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_watch, args=(owner, token), name="dr_saliency-watchdog",
                     daemon=True).start()
    if initializer is not None:
        initializer(*initargs)


def _watch(owner, token):
    while _start_token(owner) == token:
        time.sleep(WATCH_INTERVAL)
    # Nothing to report to and no one to take results: leave at once, without clean-up that
    # could block on the dead caller's queues.
    os._exit(1)


def _start_token(pid):
    """What identifies process ``pid`` while it runs, or None once it has ended.

    On Linux its start time from ``/proc`` (so a recycled pid does not pass for it; a zombie
    counts as ended); elsewhere whether a signal can be sent to it.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except FileNotFoundError:
        if os.path.isdir("/proc/self"):
            return None
    except OSError:
        pass
    else:
        return None if fields[0] in (b"Z", b"X") else fields[19].decode()
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return "running"
