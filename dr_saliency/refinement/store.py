"""The HDF5 result store of a refine run: write per image, resume, read (docs/file-formats.md).

One HDF5 file per run. Layout::

    /                         attrs: format = "dr_saliency.results/1",
                                     params = JSON of the run's parameters (sorted keys),
                                     runs = JSON list of the refine runs that wrote the file
    /%plans/<k>      (m,)     str: the ids run k set out to do (its plan; see begin_run)
    /<image id>/              one group per image; attrs: image_id, stop_reason, iterations,
                                     params (JSON of RefineResult.params), complete = True (last)
        maps         (k, H, W)        float16, gzip: s_i / map_scales[i]
        map_scales   (k,)             float32: per-map maximum of |s_i| (1 for an all-zero map)
        masks        (k, H, W)        bool, gzip
        predictions  (n + 1,)         float32
        final_map    (H, W)           float16, gzip: S / final_map.attrs["scale"] (its maximum;
                                      absent in files written before it: scale 1)
        images       (n + 1, H, W, 3) uint8, gzip, only when the run kept images

Maps are stored divided by their own maximum because guided-backprop gradients can be far below
float16's smallest normal number (6e-5): scaled, they keep float16's relative precision (2^-11)
instead of underflowing. Group names are image ids with ``%`` and ``/`` percent-escaped (``/`` is
HDF5's path separator); :meth:`ResultStore.complete_ids` returns the ids unescaped.

Crash safety: each image is written as a transaction with an undo journal
(:mod:`dr_saliency.refinement.journal`, which says why and how), so a kill at any moment leaves
the previously completed images intact and readable, and at most loses the image being written.

Concurrency: a store open for appending holds an exclusive ``flock`` on the file, a store open for
reading a shared one; a second writer, or a reader while a run writes, gets a clear ``OSError``
(as HDF5's own file locking would give; HDF5 cannot be read while another process writes it).

numpy / h5py (and :class:`dr_saliency.refinement.result.RefineResult`): no TensorFlow here.

Public API::

    ResultStore(path, mode="r" | "a", params=None)   # context manager
        .params, .path, .mode, .n_incomplete
        .write(image_id, result, *, overwrite=False);  .copy_from(source_store, image_ids)
        .is_complete(image_id) -> bool;  .complete_ids() -> list[str];  iter(store), len(store)
        .read(image_id) -> RefineResult;  .read_final_map(image_id) -> (H, W) float32
        .stop_reasons() -> {image_id: stop reason}
        .runs;  .begin_run(planned_ids, done);  .finish_run(index, counts);  .unfinished_runs()
    read_final_maps(path, image_ids=None) -> {image_id: (H, W) float32}
    read_params(path) -> dict
    stop_reason_counts(path) -> {stop reason: count}
"""

import datetime
import json
import os
import urllib.parse

import h5py
import numpy as np

from dr_saliency.core.checks import is_int
from dr_saliency.core.errors import BusyError
from dr_saliency.core.files import differences
from dr_saliency.core.locks import describe_holder, lock_file
from dr_saliency.refinement.journal import JOURNAL_SUFFIX, JournaledFile, rollback
from dr_saliency.refinement.result import RefineResult

try:  # POSIX; without it (Windows) stores are not locked against concurrent use
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

__all__ = [
    "FORMAT",
    "ResultStore",
    "read_final_maps",
    "read_params",
    "stop_reason_counts",
]

FORMAT = "dr_saliency.results/1"
"""Value of the file attribute ``format``: what the file is and the layout version."""

PLANS = "%plans"
"""Root group of the runs' plans: dataset ``str(k)`` holds the ids run ``k`` set out to do. No image
group can have this name, since image ids have ``%`` escaped (:func:`_group_name`)."""

_GZIP_LEVEL = 4
_GZIP = dict(compression="gzip", compression_opts=_GZIP_LEVEL)


# ----------------------------------------------------------------------------- helpers


def _group_name(image_id):
    if not isinstance(image_id, str):
        raise TypeError(f"Expected a str image id. Received: image_id={image_id!r}")
    if not image_id or "\0" in image_id:
        raise ValueError(f"Expected a non-empty image id without NUL. Received: image_id={image_id!r}")
    name = image_id.replace("%", "%25").replace("/", "%2F")
    # "." would name the group itself in HDF5 paths.
    return "%2E" if name == "." else name


def _now():
    return datetime.datetime.now().isoformat(timespec="seconds")


def _image_id(group_name):
    return urllib.parse.unquote(group_name)


def _json_default(value):
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"Expected JSON-serialisable parameters. Received: {value!r} "
                    f"({type(value).__name__})")


def _canonical(params):
    """Params as they read back from the file (tuples -> lists, numpy -> Python)."""
    return json.loads(json.dumps(params, sort_keys=True, default=_json_default))


def _check_result(result):
    maps = np.asarray(result.maps)
    if maps.ndim != 3 or maps.shape[0] < 1:
        raise ValueError(f"Expected result.maps of shape (k, H, W), k >= 1. Received: shape={maps.shape}")
    if not np.all(np.isfinite(maps)):
        raise ValueError("Expected finite result.maps. Received: NaN or infinite values")
    masks = np.asarray(result.masks)
    if masks.shape != maps.shape or masks.dtype != bool:
        raise ValueError(f"Expected bool result.masks of shape {maps.shape}. "
                         f"Received: shape={masks.shape}, dtype={masks.dtype}")
    predictions = np.asarray(result.predictions, dtype=np.float32)
    if predictions.ndim != 1 or predictions.size < 1:
        raise ValueError("Expected result.predictions of shape (n + 1,). "
                         f"Received: shape={predictions.shape}")
    final_map = np.asarray(result.final_map)
    if final_map.shape != maps.shape[1:]:
        raise ValueError(f"Expected result.final_map of shape {maps.shape[1:]}. "
                         f"Received: shape={final_map.shape}")
    images = result.images
    if images is not None:
        images = np.asarray(images)
        expected = (predictions.size, *maps.shape[1:], 3)
        if images.shape != expected or images.dtype != np.uint8:
            raise ValueError(f"Expected uint8 result.images of shape {expected}. "
                             f"Received: shape={images.shape}, dtype={images.dtype}")
    if not isinstance(result.stop_reason, str):
        raise TypeError(f"Expected a str result.stop_reason. Received: {result.stop_reason!r}")
    return maps, masks, predictions, final_map, images


# ----------------------------------------------------------------------------- the store


class ResultStore:
    """The HDF5 result file of one refine run (see the module docstring for layout and safety).

    Use as a context manager::

        with ResultStore("out/refine.h5", "a", params=run_params) as store:
            todo = [i for i in ids if not store.is_complete(i)]   # resume
            for image_id in todo:
                store.write(image_id, refine(...))

        with ResultStore("out/refine.h5") as store:
            for image_id in store:                                 # complete images only
                r = store.read(image_id)

    Args:
        path: the ``.h5`` file. Created (atomically) by mode ``"a"`` when absent.
        mode: ``"r"`` read only; ``"a"`` read and append.
        params: the run's parameters, a JSON-serialisable dict. When given, they must equal the
            file's (a ValueError lists the differences: results of one file are made one way);
            a new file records them (``{}`` when None).

    Raises:
        ValueError: bad mode, not a result file, parameters differing from the file's.
        FileNotFoundError: mode ``"r"`` and no such file.
        OSError: the file is being written by another process (or read, for mode ``"a"``).
    """

    def __init__(self, path, mode="r", params=None):
        if mode not in ("r", "a"):
            raise ValueError(f"Expected mode 'r' or 'a'. Received: mode={mode!r}")
        if params is not None and not isinstance(params, dict):
            raise TypeError(f"Expected params as a dict or None. Received: params={params!r}")
        self.path = os.fspath(path)
        self.mode = mode
        self._journal_path = self.path + JOURNAL_SUFFIX
        self._lock_fd = None
        self._writer = None  # mode "a": the lock file naming this process
        self._reset_params = None
        self._h5 = None  # mode "r": the file, open for the store's lifetime
        given = None if params is None else _canonical(params)
        if mode == "r" and not os.path.exists(self.path):
            raise FileNotFoundError(f"Expected an existing result file. Received: path={self.path!r}")
        if mode == "a" and not os.path.exists(self.path):
            self._create(given or {})
        try:
            self._lock()
            if os.path.exists(self._journal_path):
                self._recover()
            with self._open_read() as f:
                self._load_index(f, given)
            if self._reset_params is not None:
                self._reset(self._reset_params)
            if mode == "r":
                self._h5 = self._open_read()
        except BaseException:
            self.close()
            raise

    # --- opening, locking, recovery

    def _create(self, params):
        # Build the empty file under a temporary name and rename it: a kill leaves either no
        # file or a complete empty one, never a half-created one.
        tmp = f"{self.path}.tmp{os.getpid()}"
        try:
            with h5py.File(tmp, "w", locking=False) as f:
                f.attrs["format"] = FORMAT
                f.attrs["params"] = json.dumps(params, sort_keys=True)
            os.replace(tmp, self.path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    def _lock(self):
        if fcntl is None:  # pragma: no cover
            return
        self._lock_fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        kind = fcntl.LOCK_EX if self.mode == "a" else fcntl.LOCK_SH
        try:
            fcntl.flock(self._lock_fd, kind | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = describe_holder(self.path + ".lock")
            raise BusyError(
                f"Expected a result file no other process is {'using' if self.mode == 'a' else 'writing'}"
                f". Received: path={self.path!r}, in use by {holder} (a refine run in "
                "progress? wait for it to finish)", self.path, holder) from None
        if self.mode == "a":
            # Holds no extra lock (the flock above does): it names this process to others.
            self._writer = lock_file(self.path, "a result file").__enter__()

    def _recover(self):
        """Roll back an interrupted write (needs the exclusive lock and write permission)."""
        if self.mode == "r" and fcntl is not None:
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise OSError("Expected a result file no other process is using, to roll back "
                              f"an interrupted write. Received: path={self.path!r}, in use by "
                              "another process") from None
        try:
            rollback(self.path, self._journal_path)
        except PermissionError as exc:
            raise OSError(f"Expected write permission to roll back an interrupted write "
                          f"({self._journal_path} exists). Received: path={self.path!r} ({exc})") from exc
        if self.mode == "r" and fcntl is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_SH)

    def _open_read(self):
        # Locking is ours (flock on self._lock_fd); HDF5's would conflict with our own lock.
        try:
            return h5py.File(self.path, "r", locking=False)
        except OSError as exc:
            raise ValueError(f"Expected an HDF5 result file. Received: path={self.path!r} ({exc})") from exc

    def _load_index(self, f, given):
        if f.attrs.get("format") != FORMAT:
            raise ValueError(f"Expected a dr_saliency result file (format {FORMAT!r}). "
                             f"Received: path={self.path!r} with format={f.attrs.get('format')!r}")
        self._params = json.loads(f.attrs["params"])
        self._runs = json.loads(f.attrs.get("runs", "[]"))
        holds_results = any(name != PLANS for name in f)
        if given is not None and given != self._params and self.mode == "a" and not holds_results:
            # A file that holds no result (a run that failed before its first image) blocks
            # nothing: it takes the new parameters.
            self._reset_params = given
            return
        if given is not None and given != self._params:
            raise ValueError(
                "Expected the parameters this result file was made with (refusing to mix results "
                "made differently; use another output file). Received: "
                + "; ".join(differences(self._params, given)) + f" (path={self.path!r})")
        self._complete, self._incomplete = set(), set()
        for name in f:
            if name == PLANS:
                continue
            try:
                complete = bool(f[name].attrs.get("complete", False))
            except (KeyError, OSError, RuntimeError, AttributeError):
                # An unreadable group (a file damaged outside this module): not a result; the
                # next write of that id replaces it.
                complete = False
            (self._complete if complete else self._incomplete).add(_image_id(name))

    def _reset(self, params):
        """Give a file without results new parameters (and an empty run record)."""
        def body(f):
            f.attrs["params"] = json.dumps(params, sort_keys=True)
            f.attrs["runs"] = "[]"
            if PLANS in f:
                del f[PLANS]

        self._transaction(body, "the new parameters")
        self._params, self._runs = params, []
        self._complete, self._incomplete = set(), set()

    def close(self):
        """Close the file and release the lock (idempotent)."""
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        if hasattr(self, "_lock_fd"):  # __init__ may have failed before setting it
            self.close()

    # --- queries

    @property
    def params(self):
        """The run's parameters recorded in the file (dict)."""
        return dict(self._params)

    @property
    def n_incomplete(self):
        """Number of image groups left incomplete (not counted by :meth:`complete_ids`)."""
        return len(self._incomplete)

    def is_complete(self, image_id):
        """Whether the result of ``image_id`` is fully written."""
        _group_name(image_id)
        return image_id in self._complete

    def complete_ids(self):
        """Sorted ids of the fully written images."""
        return sorted(self._complete)

    def __iter__(self):
        return iter(self.complete_ids())

    def __len__(self):
        return len(self._complete)

    def __contains__(self, image_id):
        return isinstance(image_id, str) and image_id in self._complete

    # --- writing

    def write(self, image_id, result, *, overwrite=False):
        """Write the result of one image, as one crash-safe transaction.

        An incomplete group of the same id (from an interrupted run) is replaced.

        Args:
            image_id: str, e.g. ``"IDRiD_01"``.
            result: a :class:`~dr_saliency.refinement.result.RefineResult` (or an object with its fields).
            overwrite: replace a complete result of the same id instead of raising.

        Raises:
            ValueError: store opened read-only, a complete result exists (and not ``overwrite``),
                or a malformed result.
        """
        name = _group_name(image_id)
        if self.mode != "a":
            raise ValueError(f"Expected a store opened with mode='a' to write. Received: mode={self.mode!r}")
        if image_id in self._complete and not overwrite:
            raise ValueError(f"Expected an image without a complete result (pass overwrite=True to "
                             f"replace it). Received: image_id={image_id!r}")
        maps, masks, predictions, final_map, images = _check_result(result)
        # Everything converted before the transaction, so it stays short.
        scales = np.abs(maps).max(axis=(1, 2)).astype(np.float32)
        scales[scales == 0] = 1
        stored_maps = (maps / scales[:, None, None]).astype(np.float16)
        # S is on the maps' raw scale unless the run normalised them: scaled the same way.
        final_scale = np.float32(np.abs(final_map).max() or 1)
        group_params = json.dumps(_canonical(getattr(result, "params", None) or {}), sort_keys=True)
        k, h, w = maps.shape

        def body(f):
            if name in f:
                del f[name]
            g = f.create_group(name)
            g.create_dataset("maps", data=stored_maps, chunks=(1, h, w), shuffle=True, **_GZIP)
            g.create_dataset("map_scales", data=scales)
            g.create_dataset("masks", data=masks, chunks=(1, h, w), **_GZIP)
            g.create_dataset("predictions", data=predictions)
            g.create_dataset("final_map", data=(final_map / final_scale).astype(np.float16),
                             shuffle=True, **_GZIP)
            g["final_map"].attrs["scale"] = final_scale
            if images is not None:
                g.create_dataset("images", data=images, chunks=(1, h, w, 3), **_GZIP)
            g.attrs["image_id"] = image_id
            g.attrs["stop_reason"] = result.stop_reason
            g.attrs["iterations"] = int(result.iterations)
            g.attrs["params"] = group_params
            f.flush()
            # Written last: with the journal it is belt and braces, but it keeps "complete"
            # meaningful for any file written without one.
            g.attrs["complete"] = True

        self._transaction(body, f"the result of {image_id!r}")
        self._complete.add(image_id)
        self._incomplete.discard(image_id)

    def copy_from(self, source, image_ids):
        """Copy the complete results of ``image_ids`` from the store ``source``, as stored.

        HDF5 copies the groups with their compressed chunks as they are (no decompression, no
        new rounding): the copies are the source's results bit for bit, at a few milliseconds
        an image where reading and writing them again costs tens to hundreds. One transaction
        for all of them: a kill leaves none of them copied.

        Args:
            source: an open :class:`ResultStore` (any mode).
            image_ids: ids complete in ``source`` and not complete here.

        Raises:
            ValueError: this store is read only; an id incomplete or absent in ``source``, or
                already complete here.
        """
        ids = list(image_ids)
        if self.mode != "a":
            raise ValueError(f"Expected a store opened with mode='a' to write. Received: mode={self.mode!r}")
        for image_id in ids:
            if image_id not in source:
                raise ValueError(f"Expected a complete result in {source.path!r}. "
                                 f"Received: image_id={image_id!r}")
            if image_id in self._complete:
                raise ValueError(f"Expected an image without a complete result. "
                                 f"Received: image_id={image_id!r}")
        if not ids:
            return

        def body(f):
            def copy(src):
                for image_id in ids:
                    name = _group_name(image_id)
                    if name in f:
                        del f[name]
                    src.copy(src[name], f, name=name)

            source._from_file(copy)

        self._transaction(body, f"{len(ids)} results copied from {source.path!r}")
        self._complete.update(ids)
        self._incomplete.difference_update(ids)

    def _transaction(self, body, what):
        """Run ``body(h5file)`` as one crash-safe transaction (see the module docstring)."""
        journaled = None
        try:
            journaled = JournaledFile(self.path, self._journal_path)
            with h5py.File(journaled, "r+") as f:
                body(f)
            # h5py.File.close() has flushed all HDF5 metadata through the journaled file, unless
            # a write failed during the close (h5py only prints those).
            if journaled.error is not None:
                raise OSError(f"Expected to write {what}. Received: "
                              f"{type(journaled.error).__name__}: {journaled.error} "
                              f"(path={self.path!r}; the file was rolled back)") from journaled.error
        except BaseException:
            if journaled is not None:
                journaled.close_files()
            if os.path.exists(self._journal_path):
                rollback(self.path, self._journal_path)
            raise
        journaled.close_files()
        os.remove(self._journal_path)  # the commit point

    # --- the record of the refine runs that wrote the file

    @property
    def runs(self):
        """The refine runs that wrote this file, oldest first: list of dicts with ``started``
        (ISO time), ``planned`` (images the run set out to do), ``done`` (images already complete
        when it started) and, once it finished, ``finished`` (ISO time) and its counts."""
        return [dict(r) for r in self._runs]

    def unfinished_runs(self):
        """The runs that never finished (interrupted, or failed) and whose plan is not done since.

        A planned image is done when its result is complete in the file, or when a later run
        that planned it finished (that run stored it, found it not referable, or skipped it as
        bad). So a file in which every planned image is done is whole, whatever runs wrote it:
        rerunning an interrupted command until it finishes leaves no unfinished run here.
        A run recorded with a count only (files written before plans were kept) is done once a
        later run that planned at least as many images finished.

        Returns:
            list of dicts as :attr:`runs`; where the file keeps the run's plan, with
            ``missing``: how many of its planned images are not done, and ``missing_ids``:
            which (sorted).
        """
        plans = self._from_file(_read_plans)
        complete = set(self._complete)
        out = []
        for k, run in enumerate(self._runs):
            if "finished" in run:
                continue
            later = [(j, r) for j, r in enumerate(self._runs) if j > k and "finished" in r]
            if k in plans:
                missing = plans[k] - complete
                for j, r in later:
                    missing -= plans.get(j, set())
                    if j not in plans and r["planned"] >= run["planned"]:
                        missing = set()  # finished by a run recorded with a count only
                if missing:
                    out.append(dict(run, missing=len(missing), missing_ids=sorted(missing)))
            elif not any(r["planned"] >= run["planned"] for _, r in later):
                out.append(dict(run))
        return out

    def begin_run(self, planned, done=0):
        """Record that a run starts; returns its index.

        Args:
            planned: the ids of the images the run sets out to do (list of str), kept in the
                file as the run's plan; or their number alone (int).
            done: int, how many of them were already complete when it started.
        """
        if self.mode != "a":
            raise ValueError(f"Expected a store opened with mode='a'. Received: mode={self.mode!r}")
        ids = None
        if not is_int(planned):
            ids = list(planned)
            for image_id in ids:
                _group_name(image_id)  # a str id, as write() takes
        entry = {"started": _now(), "planned": len(ids) if ids is not None else int(planned),
                 "done": int(done)}
        runs = self._runs + [entry]
        self._set_runs(runs, plan=None if ids is None else (len(runs) - 1, ids))
        return len(runs) - 1

    def finish_run(self, index, counts):
        """Mark run ``index`` finished, with its ``counts`` (dict of JSON-ready numbers)."""
        runs = [dict(r) for r in self._runs]
        runs[index].update(counts, finished=_now())
        self._set_runs(runs)

    def _set_runs(self, runs, plan=None):
        text = json.dumps(runs, sort_keys=True, default=_json_default)

        def body(f):
            f.attrs["runs"] = text
            if plan is not None:
                # One transaction with the record: a run is never recorded without its plan.
                plans = f.require_group(PLANS)
                name, ids = str(plan[0]), np.array(plan[1], dtype=h5py.string_dtype())
                if name in plans:
                    del plans[name]
                plans.create_dataset(name, data=ids, **(_GZIP if ids.size else {}))

        self._transaction(body, "the run record")
        self._runs = runs

    def stop_reasons(self):
        """The stop reason of every complete image (dict id -> str, sorted by id), read without
        the maps."""
        def read(f):
            return {image_id: str(f[_group_name(image_id)].attrs["stop_reason"])
                    for image_id in self.complete_ids()}

        return self._from_file(read)

    # --- reading

    def read(self, image_id):
        """The stored result of one image.

        Returns:
            :class:`~dr_saliency.refinement.result.RefineResult` with ``maps`` (k, H, W) float32 (float16
            precision), ``masks`` bool, ``predictions`` float32, ``images`` uint8 or None,
            ``final_map`` float32, ``stop_reason``, ``iterations`` and the image's ``params``.

        Raises:
            KeyError: no result for ``image_id``.
            ValueError: the result is incomplete (interrupted run?).
        """
        name = _group_name(image_id)
        if image_id in self._incomplete:
            raise ValueError(f"Expected a complete result. Received: image_id={image_id!r} is "
                             "incomplete (interrupted run?); append to the file to redo it")
        if image_id not in self._complete:
            raise KeyError(f"no result for image_id={image_id!r} in {self.path!r}")
        return self._from_group(name, _read_group)

    def read_final_map(self, image_id):
        """S of one image, (H, W) float32, without reading the rest."""
        if image_id not in self._complete:
            raise KeyError(f"no complete result for image_id={image_id!r} in {self.path!r}")
        return self._from_group(_group_name(image_id), _final_map)

    def _from_group(self, name, read):
        """``read(group)`` on the open file, or on the file opened for this read."""
        return self._from_file(lambda f: read(f[name]))

    def _from_file(self, read):
        """``read(h5 file)`` on the open file, or on the file opened for this read."""
        if self._h5 is not None:
            return read(self._h5)
        with self._open_read() as f:
            return read(f)


def _read_plans(f):
    """Run index -> set of planned ids, for the runs whose plan the file keeps."""
    if PLANS not in f:
        return {}
    return {int(name): {v.decode("utf-8") if isinstance(v, bytes) else str(v)
                        for v in f[PLANS][name][()]}
            for name in f[PLANS]}


def _final_map(g):
    dataset = g["final_map"]
    return dataset[()].astype(np.float32) * np.float32(dataset.attrs.get("scale", 1.0))


def _read_group(g):
    scales = g["map_scales"][()]
    return RefineResult(
        maps=g["maps"][()].astype(np.float32) * scales[:, None, None],
        masks=g["masks"][()],
        predictions=g["predictions"][()],
        images=g["images"][()] if "images" in g else None,
        final_map=_final_map(g),
        stop_reason=str(g.attrs["stop_reason"]),
        iterations=int(g.attrs["iterations"]),
        params=json.loads(g.attrs["params"]))


def read_final_maps(path, image_ids=None):
    """Final maps S of a result file.

    Args:
        path: result file.
        image_ids: ids to read; None = every complete image.

    Returns:
        dict image id -> (H, W) float32, in sorted id order for None.
    """
    with ResultStore(path, "r") as store:
        ids = store.complete_ids() if image_ids is None else list(image_ids)
        return {image_id: store.read_final_map(image_id) for image_id in ids}


def stop_reason_counts(path):
    """How many complete images of a result file stopped for each reason (dict reason -> count,
    sorted by reason), whatever runs wrote them."""
    with ResultStore(path, "r") as store:
        reasons = list(store.stop_reasons().values())
    return {reason: reasons.count(reason) for reason in sorted(set(reasons))}


def read_params(path):
    """The run parameters recorded in a result file (dict)."""
    with ResultStore(path, "r") as store:
        return store.params
