"""The preprocessing job: a whole dataset cropped, squared and resized once, into a folder.

Decoding a 4288x2848 JPEG costs more than the network at 512 (docs/performance.md#where-the-time-goes),
so :func:`preprocess_dataset` applies :func:`dr_saliency.fundus.fov.preprocess_image` to every
record of a dataset once, in a process pool, and writes the package's own folder layout
(docs/file-formats.md#dataset-folder), which training and refinement then read. It is resumable
(images already written are skipped), records what made the folder (source dataset, its
fingerprint, size) so that two datasets or two sizes never mix, and holds the folder's lock while
it writes, so that two runs never write into one folder at once.

Pure numpy / OpenCV: no TensorFlow here.

Public API::

    preprocess_dataset(dataset, out, *, size=512, workers=None, skip_bad=False,
                       on_progress=None, overwrite=False) -> summary dict
"""

import collections
import inspect
import os
import pickle
import time

import cv2
import numpy as np

from dr_saliency._version import __version__
from dr_saliency.core.errors import FolderInUseError
from dr_saliency.core.files import check_record, refuse_other_outputs, write_json
from dr_saliency.core.locks import lock_folder
from dr_saliency.core.procs import run_jobs
from dr_saliency.core.progress import check_callback, phase
from dr_saliency.fundus.datasets.fingerprint import dataset_fingerprint
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


def _check_folder(out, record, overwrite):
    """Refuse an output folder this run must not write into (read only: nothing is changed).

    A folder made from another source dataset or at another size is refused (mixing them would
    make one dataset of two), as is one with images but no record of what made them.
    """
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"Expected a folder. Received: out={out!r}, an existing file")
    refuse_other_outputs(out, "a preprocessed dataset")
    if overwrite:
        return
    previous = check_record(out, PARAMS_FILE, record,
                            "the source dataset and size that made the folder",
                            describe=_differences)
    images = os.path.join(out, "images")
    if previous is None and os.path.isdir(images) and os.listdir(images):
        raise FolderInUseError(f"Expected an empty output folder or one written by "
                               f"preprocess_dataset (with {PARAMS_FILE}); {out}/images/ holds files "
                               f"of unknown origin. Received: out={out!r}", out, can_overwrite=True)


def _differences(stored, given):
    """What keeps a run from resuming into a folder: another source dataset, another size."""
    diffs = []
    source, was = given["source"], stored.get("source")
    name = f"source={source!r}" if source else "the records given"
    if "fingerprint" not in stored:
        diffs.append(f"{name}: the folder does not record which dataset made it")
    elif stored["fingerprint"] != given["fingerprint"]:
        if source and was and source != was:
            diffs.append(f"source={source!r}, another dataset (folder made from {was!r})")
        else:
            diffs.append(f"{name}: ids, grades or image file sizes differ from the dataset that "
                         f"made the folder")
    if stored.get("size") != given["size"]:
        diffs.append(f"size={given['size']} (folder has {stored.get('size')})")
    return diffs


def _write_labels(out, records):
    # Every complete sample of this dataset: a folder holds one dataset (its record says which),
    # so an earlier run's samples are this dataset's too.
    rows = [{"image": rec.id, "level": getattr(rec, "grade", None), "split": getattr(rec, "split", None)}
             for rec in records if os.path.exists(_image_path(out, rec.id))]
    if not any(row["split"] is not None for row in rows):
        rows = [{"image": r["image"], "level": r["level"]} for r in rows]
    return write_labels(out, rows)


def _default_workers():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def preprocess_dataset(dataset, out, *, size=DEFAULT_SIZE, workers=None, skip_bad=False,
                       on_progress=None, overwrite=False):
    """Preprocess a whole dataset once into the package's folder layout (docs/file-formats.md).

    Each record is decoded once, cropped to its field of view, padded to a square and resized
    (:func:`preprocess_image`), and written with :func:`~dr_saliency.fundus.datasets.folder.write_sample`:
    ``images/<id>.png``, ``masks/<T>/<id>.png`` for the lesion types the record has (none when its
    lesions are None), ``fov/<id>.png``; then ``labels.csv`` (``image,level`` and ``split`` when
    records have one). ``preprocess.json``, written first, records what made the folder: the
    source folder (``dataset.root``, absolute; null for a plain list of records), the dataset's
    :func:`~dr_saliency.fundus.datasets.fingerprint.dataset_fingerprint`, the size and the
    package version (docs/file-formats.md#preprocessed-folder).

    Resumable: a rerun with the same dataset (same fingerprint) and size skips every record
    whose image is already in ``out`` (the image is written last, atomically, so it marks a
    complete sample); ``labels.csv`` is rewritten at the end, and also when the run stops on an
    error or an interrupt, listing every complete sample. Another dataset or size is refused
    (``FolderInUseError`` naming what differs), as are a folder with images but no
    ``preprocess.json`` and, even with ``overwrite``, a folder that holds a training run or a
    result file. The folder is locked while the run writes (``dr_saliency.core.locks``): a
    second run into it is refused at once with a ``BusyError`` naming the first.

    Records are processed by a process pool (:func:`dr_saliency.core.procs.run_jobs`: workers
    die with this process and leave Ctrl-C to it); workers receive the records (pickled) or,
    when records cannot be pickled but the dataset can, the dataset once and indices.

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
        on_progress: optional ``on_progress(label, total) -> advance(k=1)``
            (:mod:`dr_saliency.core.progress`), one phase "Preprocessing" of ``len(dataset)``;
            ``advance`` is called in this process with the number of records just accounted for
            (done earlier, written or skipped).
        overwrite: bool, redo every record (and allow another dataset or size); images of
            another dataset left in ``out`` are not listed in ``labels.csv``.

    Returns:
        dict: ``out``, ``size``, ``total`` (records), ``written`` (this run), ``already_done``
        (skipped as complete), ``skipped`` (list of ``(id, message)`` for bad records, the
        message naming the file), ``warnings`` (list of str: the dataset's own, then e.g. blank
        images), ``labels`` (path of labels.csv), ``seconds``.

    Raises:
        TypeError: for a non-int size or workers, or a dataset that is not a sequence.
        ValueError: for a size or workers out of range, duplicate record ids, or (unless
            ``skip_bad``) a bad record.
        FolderInUseError: (a ``ValueError``) ``out`` was made from another dataset or at another
            size, or holds images of unknown origin (``can_overwrite=True``), or holds a training
            run or a result file (``can_overwrite=False``).
        BusyError: (an ``OSError``) another process is writing into ``out``.
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
    check_callback(on_progress, "on_progress")
    out = os.fspath(out)
    records = [dataset[i] for i in range(len(dataset))]
    ids = [rec.id for rec in records]
    if len(set(ids)) != len(ids):
        duplicates = sorted(k for k, n in collections.Counter(ids).items() if n > 1)[:5]
        raise ValueError(f"Expected unique record ids. Received: duplicate ids={duplicates}")

    source = getattr(dataset, "root", None)
    record = {"source": None if source is None else os.path.abspath(os.fspath(source)),
              "fingerprint": dataset_fingerprint(records), "size": size, "dr_saliency": __version__}
    # Refuse before a lock file is made in someone else's folder; check again under the lock,
    # where no other writer can change the folder between the check and the writing.
    _check_folder(out, record, overwrite)
    os.makedirs(out, exist_ok=True)
    with lock_folder(out, "a dataset folder"):
        _check_folder(out, record, overwrite)
        write_json(os.path.join(out, PARAMS_FILE), record)
        summary = _preprocess(dataset, records, out, size, workers, skip_bad, on_progress,
                              overwrite)
    summary["seconds"] = time.perf_counter() - start
    return summary


def _preprocess(dataset, records, out, size, workers, skip_bad, on_progress, overwrite):
    """The body of :func:`preprocess_dataset`, in a folder claimed and locked."""
    ids = [rec.id for rec in records]
    progress = phase(on_progress, "Preprocessing", len(records))
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
        summary["labels"] = _write_labels(out, records)
    order = {image_id: i for i, image_id in enumerate(ids)}
    summary["skipped"].sort(key=lambda item: order[item[0]])
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
    fn = _process if by_record else _process_index
    jobs = [(records[i] if by_record else i, out, size, overwrite) for i in todo]
    # Stops at once on an error or Ctrl-C: queued records are dropped, running ones finish
    # (their samples are complete and labels.csv will list them).
    run_jobs(fn, jobs, workers=n_workers, on_result=account, initializer=_init_worker,
             initargs=initargs, preload=["dr_saliency.fundus.prepare"])
