"""Runs over datasets: refine every selected image into a result store, resumably.

Ties together :mod:`dr_saliency.fundus.datasets` (records), :mod:`dr_saliency.refinement.loop` (the loop) and
:mod:`dr_saliency.refinement.store` (the HDF5 store). No TensorFlow: the explainer and predictor are
callables (``dr_saliency.explain.saliency.make_explainer`` / ``make_predictor`` in the CLI).
"""

import time

import numpy as np

from dr_saliency.refinement import loop as refine_lib
from dr_saliency.refinement.store import ResultStore

SPLITS = ("test", "val", "train", "all")


def select_records(dataset, *, split="all", ids=None):
    """Records of one split, optionally only the given ids (in dataset order).

    Args:
        dataset: a dataset from ``open_dataset``.
        split: "test", "val", "train" or "all".
        ids: optional iterable of record ids; unknown ids are an error.

    Returns:
        list of records.

    Raises:
        ValueError: for an unknown split, unknown ids, or an empty selection.
    """
    if split not in SPLITS:
        raise ValueError(f"Expected split in {SPLITS}. Received: split={split!r}")
    records = list(dataset)
    if ids is not None:
        wanted = list(dict.fromkeys(ids))
        known = {r.id for r in records}
        missing = [i for i in wanted if i not in known]
        if missing:
            shown = ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else "")
            raise ValueError(f"Expected ids of the dataset. Received: {len(missing)} unknown id(s): {shown}")
        chosen = set(wanted)
        records = [r for r in records if r.id in chosen]
    if split != "all":
        records = [r for r in records if r.split == split]
    if not records:
        raise ValueError(f"Expected at least one image to refine. Received: none in split={split!r}"
                         + ("" if ids is None else " among the given ids"))
    return records


def refine_dataset(records, out, *, explain, predict=None, size=None, params=None,
                   batch_size=4, only_referable=False, skip_bad=False, on_image=None,
                   **refine_options):
    """Refine the saliency maps of records into the result store ``out``; resumable.

    Images already complete in ``out`` are skipped, so rerunning the same command continues an
    interrupted run. Images of a batch advance together (:func:`refine.refine_batch`).

    Args:
        records: sequence of dataset records (``id``, ``load_image()``, ``load_fov(image)``).
        out: str, the ``.h5`` result file (created or appended to).
        explain, predict: the callables of :func:`refine.refine_batch`.
        size: optional int, the side the images must have (the model's input): a record of
            another size is a bad image ("preprocess the data to SIZE first").
        params: dict of extra run parameters stored with the refine options (e.g. the model
            and explainer); appending to a file made with other parameters is refused.
        batch_size: int >= 1, images refined together.
        only_referable: store only images whose initial prediction is above ``stop_at`` (the
            paper refines referable images only); the others are counted, not stored.
        skip_bad: report and skip unreadable or wrongly sized images instead of failing.
        on_image: optional callable(record, result or None, message) after each image: result
            is None for a skipped image and ``message`` says why.
        **refine_options: options of :func:`refine.refine_batch` (max_iterations, stop_at, ...).

    Returns:
        dict: ``written``, ``already_done``, ``not_referable`` (not stored), ``skipped``
        (list of (id, message)), ``stop_reasons`` (counts), ``seconds``.

    Raises:
        ValueError: bad options, a bad image without ``skip_bad`` (naming it), or a result file
            made with other parameters.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"Expected batch_size >= 1. Received: batch_size={batch_size!r}")
    run_params = dict(refine_lib.refine_params(**_refine_only(refine_options)))
    run_params.update(params or {}, only_referable=bool(only_referable))
    stop_at = run_params["stop_at"]
    summary = {"written": 0, "already_done": 0, "not_referable": 0, "skipped": [],
               "stop_reasons": {}, "seconds": 0.0}
    start = time.time()
    with ResultStore(out, "a", params=run_params) as store:
        done = set(store.complete_ids())
        todo = [r for r in records if r.id not in done]
        summary["already_done"] = len(records) - len(todo)
        for first in range(0, len(todo), batch_size):
            batch = []
            for rec in todo[first:first + batch_size]:
                try:
                    batch.append((rec, *_load(rec, size)))
                except ValueError as exc:
                    _bad(rec, exc, skip_bad, summary, on_image)
            batch, results = _refine_good(batch, explain, predict, refine_options,
                                          skip_bad, summary, on_image)
            for (rec, _, _), result in zip(batch, results):
                if only_referable and result.predictions[0] <= stop_at:
                    summary["not_referable"] += 1
                    if on_image:
                        on_image(rec, None, f"not referable (p0={result.predictions[0]:.2f} <= "
                                            f"{stop_at:g}): not stored")
                    continue
                store.write(rec.id, result)
                summary["written"] += 1
                reasons = summary["stop_reasons"]
                reasons[result.stop_reason] = reasons.get(result.stop_reason, 0) + 1
                if on_image:
                    on_image(rec, result, describe(result))
    summary["seconds"] = time.time() - start
    return summary


def describe(result):
    """One log line for a refined image: prediction trajectory, iterations, stop reason."""
    trajectory = " -> ".join(f"{p:.2f}" for p in result.predictions)
    return f"{trajectory} ({result.iterations} iteration{'s' * (result.iterations != 1)}, {result.stop_reason})"


def _refine_only(options):
    names = ("max_iterations", "stop_at", "decay", "combine", "normalize", "binarize_rule",
             "binarize_level", "smooth_sigma", "dilation", "min_component_size", "inpaint_method",
             "inpaint_radius", "inpaint_inside_fov")
    unknown = sorted(set(options) - set(names) - {"keep_images"})
    if unknown:
        raise TypeError(f"Expected refine options among {names}. Received: {unknown}")
    return {k: v for k, v in options.items() if k in names}


def _load(rec, size):
    image = rec.load_image()
    if size is not None and image.shape[:2] != (size, size):
        raise ValueError(f"Expected a {size}x{size} image (the model's input; preprocess the data "
                         f"to that size first: dr-saliency preprocess --size {size}). "
                         f"Received: {rec.image_path} of {image.shape[1]}x{image.shape[0]}")
    return image, np.asarray(rec.load_fov(image), bool)


def _refine_good(batch, explain, predict, options, skip_bad, summary, on_image):
    """refine_batch on (record, image, fov) triples, dropping (and reporting) bad images."""
    batch = list(batch)
    while batch:
        try:
            results = refine_lib.refine_batch([b[1] for b in batch], [b[2] for b in batch],
                                              explain=explain, predict=predict, **options)
            return batch, results
        except refine_lib.ImageError as exc:
            _bad(batch[exc.index][0], exc, skip_bad, summary, on_image)
            del batch[exc.index]
    return [], []


def _bad(rec, exc, skip_bad, summary, on_image):
    message = str(exc)
    if not skip_bad:
        raise ValueError(f"{rec.id}: {message} (use --skip-bad to skip bad images)") from exc
    summary["skipped"].append((rec.id, message))
    if on_image:
        on_image(rec, None, f"skipped: {message}")
