"""The dataset writer: a synthetic dataset folder (images, lesion masks, FOV masks, labels.csv
last, synth.json), resumable, locked, in a process pool."""

import os

import cv2
import numpy as np

from dr_saliency.core.errors import FolderInUseError
from dr_saliency.core.files import check_record, folder_entries, refuse_other_outputs, write_json
from dr_saliency.core.locks import lock_folder
from dr_saliency.core.procs import run_jobs
from dr_saliency.core.progress import check_callback, phase
from dr_saliency.fundus.datasets.folder import LABELS_FILE, LESION_TYPES, write_labels, write_sample
from dr_saliency.fundus.synth.params import (GENERATORS, GENERATOR_VERSION, KAGGLE_COUNTS,
                                             MIN_SIZE, PARAMS_FILE, STAGE_MIXES, _ID_PATTERN)
from dr_saliency.fundus.synth.generator import _check_int, synthesize


def write_dataset(out, n, *, size=512, seed=0, stages="balanced", split=(0.7, 0.15, 0.15), workers=None,
                  on_progress=None, overwrite=False, generator=GENERATOR_VERSION):
    """Write a synthetic dataset folder (docs/file-formats.md) with ``n`` images and their lesion masks.

    The layout is ``labels.csv`` (``image,level,split``), ``images/<id>.png``,
    ``masks/{MA,HE,EX,SE}/<id>.png`` (all four, empty where the image has no lesion of that type),
    ``fov/<id>.png``, and ``synth.json``, the generation parameters. Ids are ``synth_00001`` ...
    Image ``i`` is ``synthesize(stage_i, size=size, rng=numpy.random.default_rng([seed, i]),
    generator=generator)``:
    its bytes depend only on the parameters and ``i``, never on ``workers``.

    Resuming: a folder whose ``synth.json`` holds the same parameters is completed, skipping
    every image whose PNG exists (the PNG is written after its masks, so it marks a complete
    sample); ``labels.csv`` is written last, atomically. The folder is locked while this writes
    (``dr_saliency.core.locks``): a second writer is refused at once with a ``BusyError`` naming
    the first; a killed writer's lock is simply taken over.

    With ``workers`` > 1 the images are drawn in a process pool (:mod:`dr_saliency.core.procs`)
    started with "forkserver" (or "spawn"), not "fork": a process forked after OpenCV has started
    its threads can hang. Its workers die with this process and leave Ctrl-C to it. As with any
    such pool, a script that calls this must do it under ``if __name__ == "__main__":``.

    Args:
        out: str or path, the dataset folder; created if missing.
        n: int >= 1, number of images.
        size: int >= 128, image side in pixels.
        seed: int >= 0.
        stages: ``"balanced"`` (equal counts per stage 0-4) or ``"kaggle"`` (the stage
            frequencies of Kaggle's trainLabels.csv, ``KAGGLE_COUNTS``).
        split: three non-negative fractions (train, val, test) summing to 1, applied within each
            stage (stratified).
        workers: int >= 1 or None (one process per available CPU core). 1 runs in this process.
        on_progress: optional ``on_progress(label, total) -> advance(k=1)``
            (:mod:`dr_saliency.core.progress`): one phase "Synthesizing" of ``n``; ``advance`` is
            called in this process with the number of images finished since the previous call
            (images already present: one first call).
        overwrite: bool; True regenerates everything, deleting this generator's earlier files
            (``synth_*.png``, ``labels.csv``, ``synth.json``) and leaving other files alone.
        generator: int, the generator version (``GENERATORS``; recorded as ``version`` in
            ``synth.json``, so a folder is only ever completed by the version that began it).

    Returns:
        str, the path of ``labels.csv``.

    Raises:
        TypeError, ValueError: for bad arguments.
        FolderInUseError: (a ``ValueError``) a non-empty folder that is not a synthetic dataset
            written with the same parameters, unless ``overwrite`` (``can_overwrite=True``); a
            folder that holds a training run or a result file, even with ``overwrite``.
        BusyError: (an ``OSError``) another process is writing into ``out``.
    """
    n = _check_int(n, "n", "a number of images n >= 1", low=1)
    size = _check_int(size, "size", f"an image side of at least {MIN_SIZE} pixels", low=MIN_SIZE)
    seed = _check_int(seed, "seed", "an integer seed >= 0", low=0)
    if stages not in STAGE_MIXES:
        raise ValueError(f"Expected stages in {STAGE_MIXES}. Received: stages={stages!r}")
    try:
        fractions = [float(f) for f in split]
    except (TypeError, ValueError):
        fractions = []
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"Expected split as three non-negative fractions (train, val, test) summing to 1. "
                         f"Received: split={split!r}")
    if workers is not None:
        workers = _check_int(workers, "workers", "a number of worker processes >= 1 or None", low=1)
    if isinstance(generator, bool) or generator not in GENERATORS:
        raise ValueError(f"Expected a generator version in {sorted(GENERATORS)}. Received: generator={generator!r}")
    check_callback(on_progress, "on_progress")
    out = os.fspath(out)
    params = {"generator": "dr_saliency.synth", "version": int(generator), "n": n, "size": size,
              "seed": seed, "stages": stages, "split": fractions}
    # Refuse before a lock file is made in someone else's folder; check again under the lock,
    # where no other writer can change the folder between the check and the writing.
    _check_folder(out, params, overwrite)
    os.makedirs(out, exist_ok=True)
    with lock_folder(out, "a dataset folder"):
        _check_folder(out, params, overwrite)
        _prepare_folder(out, params, overwrite)
        plan = _plan(n, seed, stages, fractions)
        todo = [job for job in plan if not os.path.exists(os.path.join(out, "images", job[0] + ".png"))]
        step = phase(on_progress, "Synthesizing", n)
        if len(todo) < n:
            step(n - len(todo))
        jobs = [((out, image_id, index, stage, size, seed, int(generator)),) for image_id, index, stage, _ in todo]
        workers = min(workers or len(os.sched_getaffinity(0)), max(len(jobs), 1))
        if workers == 1:
            for job in jobs:
                _write_one(*job)
                step(1)
        else:
            run_jobs(_write_one, jobs, workers=workers, on_result=lambda index: step(1),
                     initializer=_init_worker)
        return write_labels(out, [{"image": image_id, "level": stage, "split": part}
                                  for image_id, _, stage, part in plan])


def _init_worker():
    # The pool already uses every core; OpenCV's own threads would only contend with it.
    cv2.setNumThreads(1)


def _write_one(job):
    out, image_id, index, stage, size, seed, generator = job
    result = synthesize(stage, size=size, rng=np.random.default_rng([seed, index]), generator=generator)
    write_sample(out, image_id, result.image, result.masks, result.fov)
    return index


def _check_folder(out, params, overwrite):
    """Refuse a folder this run must not write into (read only: nothing is changed)."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"Expected a folder. Received: out={out!r}, an existing file")
    refuse_other_outputs(out, "a synthetic dataset")
    if overwrite or not folder_entries(out):
        return
    previous = check_record(out, PARAMS_FILE, params,
                            "a synthetic dataset written with the same parameters")
    if previous is None:
        raise FolderInUseError(
            f"Expected an empty folder or a synthetic dataset to resume (or overwrite=True to write "
            f"into it anyway). Received: out={out!r}, a non-empty folder without a readable {PARAMS_FILE}",
            out, can_overwrite=True)


def _prepare_folder(out, params, overwrite):
    """Delete this generator's earlier files for ``overwrite``; record the parameters."""
    if overwrite:
        for sub in ["images", "fov"] + [os.path.join("masks", t) for t in LESION_TYPES]:
            folder = os.path.join(out, sub)
            for name in os.listdir(folder) if os.path.isdir(folder) else ():
                if _ID_PATTERN.match(name):
                    os.remove(os.path.join(folder, name))
        for name in (LABELS_FILE, PARAMS_FILE):
            if os.path.exists(os.path.join(out, name)):
                os.remove(os.path.join(out, name))
    write_json(os.path.join(out, PARAMS_FILE), params)


def _apportion(total, weights):
    """Split ``total`` into integers proportional to ``weights`` (largest remainder)."""
    w = np.asarray(weights, float) / np.sum(weights)
    exact = total * w
    counts = np.floor(exact).astype(int)
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[:total - counts.sum()]] += 1
    return counts


def _split_counts(sizes, split):
    """Images per (stage, split): each stage split in the given proportions, and the totals too.

    Stage by stage rounding alone would put every image of a small set in ``train`` (two images
    at 0.7/0.15/0.15 round to 2/0/0); so the split totals are fixed first (largest remainder) and
    the leftover images go to the (stage, split) cells with the largest remainders that still
    have room in both.
    """
    exact = np.outer(sizes, split)
    counts = np.floor(exact).astype(int)
    totals = _apportion(int(np.sum(sizes)), split)
    for cell in np.argsort(-(exact - counts), axis=None, kind="stable"):
        stage, part = np.unravel_index(cell, counts.shape)
        if counts[stage].sum() < sizes[stage] and counts[:, part].sum() < totals[part]:
            counts[stage, part] += 1
    for stage in range(len(sizes)):   # should the greedy pass leave a stage short
        while counts[stage].sum() < sizes[stage]:
            counts[stage, int(np.argmax(totals - counts.sum(axis=0)))] += 1
    return counts


def _plan(n, seed, stages, split):
    """Ids, generator indices, stages and splits of a dataset: ``[(id, index, stage, split)]``.

    The stage sequence is shuffled, and each stage's images are split train/val/test in the
    given proportions (stratified), by a generator of its own (index 0; images use 1..n).
    """
    rng = np.random.default_rng([seed, 0])
    sizes = _apportion(n, [1] * 5 if stages == "balanced" else KAGGLE_COUNTS)
    stage_of = rng.permutation(np.repeat(np.arange(5), sizes))
    part_of = np.empty(n, object)
    for stage, counts in enumerate(_split_counts(sizes, split)):
        members = rng.permutation(np.flatnonzero(stage_of == stage))
        part_of[members] = np.repeat(["train", "val", "test"], counts)
    width = max(5, len(str(n)))
    return [(f"synth_{i + 1:0{width}d}", i + 1, int(stage_of[i]), str(part_of[i])) for i in range(n)]
