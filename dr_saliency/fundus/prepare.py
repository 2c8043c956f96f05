"""The preprocessing job: a whole dataset cropped, squared and resized once, into a folder.

Decoding a 4288x2848 JPEG costs more than the network at 512 (docs/performance.md#where-the-time-goes),
so :func:`preprocess_dataset` applies :func:`dr_saliency.fundus.fov.preprocess_image` to every
record of a dataset once, in a process pool, and writes the package's own folder layout
(docs/file-formats.md#dataset-folder), which training and refinement then read. It is resumable
(images already written are skipped) and records its parameters so that two sizes never mix.

Pure numpy / OpenCV: no TensorFlow here.

Public API::

    preprocess_dataset(dataset, out, *, size=512, workers=None, skip_bad=False,
                       on_progress=None, overwrite=False) -> summary dict
"""

import collections
import concurrent.futures
import csv
import inspect
import json
import multiprocessing
import os
import pickle
import time

import cv2
import numpy as np

from dr_saliency._version import __version__
from dr_saliency.core.errors import FolderInUseError
from dr_saliency.core.files import write_json
from dr_saliency.fundus.datasets.folder import LESION_TYPES, write_labels, write_sample
from dr_saliency.fundus.fov import DEFAULT_SIZE, MIN_SIZE, preprocess_image

__all__ = ["preprocess_dataset"]

PARAMS_FILE = "preprocess.json"
# ----------------------------------------------------------------------------------------------
# Dataset caching

# Errors that mean "this record's files are bad", as opposed to a bug or a full disk: skippable.
_RECORD_ERRORS = (ValueError, OSError, cv2.error)

_WORKER_DATASET = None


def _image_path(out, image_id):
    return os.path.join(out, "images", f"{image_id}.png")


def _load_fov(rec, image):
    # The package's records take the decoded image, so a computed FOV costs no second decode;
    # a duck-typed record may not.
    load = rec.load_fov
    try:
        takes_image = "image" in inspect.signature(load).parameters
    except (TypeError, ValueError):
        takes_image = False
    return load(image=image) if takes_image else load()


def _remove_outputs(out, image_id):
    # Image first: a sample without its image is "not done", whatever else is left.
    paths = [_image_path(out, image_id), os.path.join(out, "fov", f"{image_id}.png")]
    paths += [os.path.join(out, "masks", t, f"{image_id}.png") for t in LESION_TYPES]
    for path in paths:
        try:
            os.remove(path)
        except FileNotFoundError:
            pass


def _process(rec, out, size, overwrite):
    """Preprocess and write one record; return a small report (runs in a worker)."""
    start = time.perf_counter()
    path = getattr(rec, "image_path", None)
    try:
        image = rec.load_image()
        masks = rec.load_lesions()
        fov = _load_fov(rec, image)
        image, masks, fov = preprocess_image(image, size, masks=masks, fov=fov)
    except _RECORD_ERRORS as err:
        return {"id": rec.id, "path": path, "error": f"{type(err).__name__}: {err}"}
    warnings = []
    if not fov.any():
        warnings.append(f"{rec.id}: no field of view found (blank image?): {path}")
    if overwrite:
        _remove_outputs(out, rec.id)
    write_sample(out, rec.id, image, masks=masks, fov=fov)
    return {"id": rec.id, "path": path, "error": None, "warnings": warnings,
            "seconds": time.perf_counter() - start}


def _init_worker(dataset=None):
    global _WORKER_DATASET
    # One OpenCV thread per process: the pool already uses every core.
    cv2.setNumThreads(1)
    _WORKER_DATASET = dataset


def _process_index(index, out, size, overwrite):
    return _process(_WORKER_DATASET[index], out, size, overwrite)


def _check_params(out, size, overwrite):
    """Refuse to resume into a folder made with other parameters; write ours."""
    path = os.path.join(out, PARAMS_FILE)
    if os.path.exists(path) and not overwrite:
        try:
            with open(path, encoding="utf-8") as f:
                previous = json.load(f)
            previous_size = previous["size"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ValueError(f"Expected a readable {PARAMS_FILE} with a size in {out} to resume. "
                             f"Received: path={path!r} ({err})") from None
        if previous_size != size:
            raise FolderInUseError(
                f"Expected size={previous_size} to resume into {out}, which an earlier run made at "
                f"that size (see {PARAMS_FILE}); or overwrite=True to redo it. Received: size={size}",
                out, [f"size={size} (folder has {previous_size})"], can_overwrite=True)
    elif not os.path.exists(path) and not overwrite and os.path.isdir(os.path.join(out, "images")) \
            and os.listdir(os.path.join(out, "images")):
        raise FolderInUseError(f"Expected an empty output folder or one written by "
                               f"preprocess_dataset (with {PARAMS_FILE}); {out}/images/ holds files "
                               f"of unknown size. Received: out={out!r}", out, can_overwrite=True)
    os.makedirs(out, exist_ok=True)
    write_json(path, {"size": size, "dr_saliency": __version__})


def _previous_rows(out, ids):
    """Rows of an earlier labels.csv for images not in this dataset but still on disk."""
    path = os.path.join(out, "labels.csv")
    if not os.path.exists(path):
        return []
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error):
        return []
    kept = []
    for row in rows:
        image_id = (row.get("image") or "").strip()
        if image_id and image_id not in ids and os.path.exists(_image_path(out, image_id)):
            kept.append({"image": image_id, "level": row.get("level") or None,
                         "split": row.get("split") or None})
    return kept


def _write_labels(out, records, previous):
    rows = list(previous)
    rows += [{"image": rec.id, "level": getattr(rec, "grade", None), "split": getattr(rec, "split", None)}
             for rec in records if os.path.exists(_image_path(out, rec.id))]
    if not any(row["split"] is not None for row in rows):
        rows = [{"image": r["image"], "level": r["level"]} for r in rows]
    return write_labels(out, rows)


def _default_workers():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _pool_context():
    # Not "fork": a forked child hung for good in cv2.setNumThreads(1) once OpenCV had used its
    # thread pool in the parent (opencv-python 5.0), and the caller may hold TensorFlow's threads.
    # "forkserver" (Python 3.14's default on POSIX) forks workers from a clean server process,
    # which imports this module once for all of them. Like "spawn", it needs the calling script
    # to guard its entry point with `if __name__ == "__main__":`.
    methods = multiprocessing.get_all_start_methods()
    if "forkserver" in methods:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["dr_saliency.fundus.prepare"])
        return ctx
    return multiprocessing.get_context("spawn")


def preprocess_dataset(dataset, out, *, size=DEFAULT_SIZE, workers=None, skip_bad=False,
                       on_progress=None, overwrite=False):
    """Preprocess a whole dataset once into the package's folder layout (docs/file-formats.md).

    Each record is decoded once, cropped to its field of view, padded to a square and resized
    (:func:`preprocess_image`), and written with :func:`~dr_saliency.fundus.datasets.folder.write_sample`:
    ``images/<id>.png``, ``masks/<T>/<id>.png`` for the lesion types the record has (none when its
    lesions are None), ``fov/<id>.png``; then ``labels.csv`` (``image,level`` and ``split`` when
    records have one) and ``preprocess.json`` (the size).

    Resumable: a record whose image is already in ``out`` (the image is written last, atomically,
    so it marks a complete sample) is skipped; ``labels.csv`` is rewritten at the end, and also
    when the run stops on an error or an interrupt, listing every complete sample, those of
    earlier runs included. Resuming into a folder made at another size is refused.

    Records are processed by a process pool; workers receive the records (pickled) or, when
    records cannot be pickled but the dataset can, the dataset once and indices.

    Args:
        dataset: a sequence of records with ``id``, ``grade``, ``split``, ``image_path``,
            ``load_image()``, ``load_lesions()`` and ``load_fov()`` (docs/contracts.md), e.g. from
            :func:`dr_saliency.fundus.datasets.open_dataset`; its ``warnings`` are passed on.
        out: str or path-like, the output folder (created).
        size: int >= ``MIN_SIZE``, side of the square output images.
        workers: int >= 1 or None (one per available core); 1 runs in this process.
        skip_bad: bool. False: the first bad record (unreadable or truncated image, mask of
            the wrong size) stops the run with a ``ValueError`` naming its file; what was written
            stays valid. True: bad records are skipped and reported in ``summary["skipped"]``.
        on_progress: optional callable ``on_progress(k)``, called in this process with the number
            of records just accounted for (done earlier, written or skipped); the calls add up to
            ``len(dataset)``.
        overwrite: bool, redo records already in ``out`` (and allow another size); rows of
            an earlier ``labels.csv`` for images not in this dataset are then dropped.

    Returns:
        dict: ``out``, ``size``, ``total`` (records), ``written`` (this run), ``already_done``
        (skipped as complete), ``skipped`` (list of ``(id, message)`` for bad records, the
        message naming the file), ``warnings`` (list of str: the dataset's own, then e.g. blank
        images), ``labels`` (path of labels.csv), ``seconds``.

    Raises:
        TypeError: for a non-int size or workers, or a dataset that is not a sequence.
        ValueError: for a size or workers out of range, duplicate record ids, an output folder
            made at another size, or (unless ``skip_bad``) a bad record.
    """
    start = time.perf_counter()
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
        raise TypeError(f"Expected an int size. Received: size={size!r}")
    if size < MIN_SIZE:
        raise ValueError(f"Expected size >= {MIN_SIZE}. Received: size={size!r}")
    size = int(size)
    if workers is not None:
        if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)):
            raise TypeError(f"Expected an int workers or None. Received: workers={workers!r}")
        if workers < 1:
            raise ValueError(f"Expected workers >= 1 or None. Received: workers={workers!r}")
    if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
        raise TypeError(f"Expected a sequence of records (len and indexing). "
                        f"Received: dataset of type {type(dataset).__name__}")
    if on_progress is not None and not callable(on_progress):
        raise TypeError(f"Expected a callable or None. Received: on_progress={on_progress!r}")
    out = os.fspath(out)
    records = [dataset[i] for i in range(len(dataset))]
    ids = [rec.id for rec in records]
    if len(set(ids)) != len(ids):
        duplicates = sorted(k for k, n in collections.Counter(ids).items() if n > 1)[:5]
        raise ValueError(f"Expected unique record ids. Received: duplicate ids={duplicates}")

    _check_params(out, size, overwrite)
    previous = [] if overwrite else _previous_rows(out, set(ids))
    progress = on_progress or (lambda k: None)
    todo = [i for i, rec in enumerate(records)
            if overwrite or not os.path.exists(_image_path(out, rec.id))]
    summary = {"out": out, "size": size, "total": len(records), "written": 0,
               "already_done": len(records) - len(todo), "skipped": [],
               "warnings": list(getattr(dataset, "warnings", []) or []), "labels": None,
               "seconds": 0.0}
    if summary["already_done"]:
        progress(summary["already_done"])

    def account(report):
        if report["error"] is None:
            summary["written"] += 1
            summary["warnings"].extend(report["warnings"])
        else:
            rec_path = report["path"]
            message = f"{rec_path}: {report['error']}" if rec_path else report["error"]
            if not skip_bad:
                raise ValueError(f"Could not preprocess record {report['id']!r} ({message}). "
                                 f"Pass skip_bad=True to skip bad records.")
            summary["skipped"].append((report["id"], message))
        progress(1)

    n_workers = min(workers or _default_workers(), max(1, len(todo)))
    try:
        if n_workers == 1:
            for i in todo:
                account(_process(records[i], out, size, overwrite))
        else:
            _run_pool(records, dataset, todo, out, size, overwrite, n_workers, account, summary)
    finally:
        summary["labels"] = _write_labels(out, records, previous)
    order = {image_id: i for i, image_id in enumerate(ids)}
    summary["skipped"].sort(key=lambda item: order[item[0]])
    summary["seconds"] = time.perf_counter() - start
    return summary


def _run_pool(records, dataset, todo, out, size, overwrite, n_workers, account, summary):
    try:
        pickle.dumps(records[todo[0]])
        by_record = True
    except Exception:  # noqa: BLE001 - any pickling failure means "send indices instead"
        by_record = False
    initargs = ()
    if not by_record:
        try:
            pickle.dumps(dataset)
            initargs = (dataset,)
        except Exception:  # noqa: BLE001
            summary["warnings"].append("Records and dataset cannot be pickled: preprocessing "
                                       "in this process only (workers=1).")
            for i in todo:
                account(_process(records[i], out, size, overwrite))
            return
    executor = concurrent.futures.ProcessPoolExecutor(
        max_workers=n_workers, mp_context=_pool_context(), initializer=_init_worker,
        initargs=initargs)
    try:
        if by_record:
            futures = [executor.submit(_process, records[i], out, size, overwrite) for i in todo]
        else:
            futures = [executor.submit(_process_index, i, out, size, overwrite) for i in todo]
        for future in concurrent.futures.as_completed(futures):
            account(future.result())
    except BaseException:
        # Stop at once: queued records are dropped, running ones finish (their samples are
        # complete and labels.csv will list them).
        executor.shutdown(wait=True, cancel_futures=True)
        raise
    executor.shutdown(wait=True)
