"""Runs over datasets: refine every selected image into a result store, resumably.

Ties together dataset records (:mod:`dr_saliency.fundus.datasets`), the loop
(:mod:`dr_saliency.refinement.loop`) and the HDF5 store (:mod:`dr_saliency.refinement.store`).
No TensorFlow: the explainer and predictor are callables (:func:`dr_saliency.jobs.refine.refine_run`
makes them from a model).
"""

import dataclasses
import time

import numpy as np

from dr_saliency.core.checks import ImageError, is_int
from dr_saliency.core.errors import BadImageError, ImageSizeError
from dr_saliency.core.grades import to_grades
from dr_saliency.core.progress import check_callback, phase
from dr_saliency.refinement.loop import RefineConfig, refine_batch, run_params
from dr_saliency.refinement.store import ResultStore

def refine_dataset(records, out, *, explain, predict=None, erase=None, config=None, size=None,
                   params=None, batch_size=4, keep_images=False, only_referable=False,
                   skip_bad=False, on_image=None, on_progress=None, image_params=None,
                   redo=()):
    """Refine the saliency maps of records into the result store ``out``; resumable.

    Images already complete in ``out`` are skipped, so rerunning the same command continues an
    interrupted run. Images of a batch advance together (:func:`dr_saliency.refinement.loop.refine_batch`).

    Args:
        records: sequence of dataset records (``id``, ``load_image()``, ``load_fov(image)``).
        out: str, the ``.h5`` result file (created or appended to).
        explain, predict, erase, config, keep_images: as
            :func:`dr_saliency.refinement.loop.refine_batch` (kept images are stored).
        size: optional int, the side the images must have (the model's input): a record of
            another size is a bad image (:class:`~dr_saliency.core.errors.ImageSizeError`).
        params: dict of extra run parameters stored with the loop's settings (the model and the
            explainer); appending to a file made with other parameters is refused.
        batch_size: int >= 1, images refined together.
        only_referable: store only images that do not stop the loop at once (graded above
            ``stop_at``, by default referable: the paper refines referable images only); the
            others are counted, not stored.
        skip_bad: report and skip unreadable or wrongly sized images instead of failing.
        on_image: optional ``on_image(image_id, message)`` after each image refined, skipped
            or not stored (``message`` says which and why).
        on_progress: optional ``on_progress(label, total) -> advance(k=1)``
            (:mod:`dr_saliency.core.progress`): one phase "Refining" of ``len(records)``, the
            images already complete counted at once.
        image_params: optional callable(record) -> dict of facts about the image (after its
            ``load_image()``), stored with its result's params (e.g. a photograph's geometry).
        redo: ids to refine again although complete in ``out`` (their input has changed); their
            results are replaced.

    Returns:
        dict: ``written``, ``already_done``, ``not_referable`` (not stored), ``skipped``
        (list of (id, message)), ``stop_reasons`` (counts), ``seconds``.

    Raises:
        BadImageError: a bad image without ``skip_bad`` (naming it).
        ValueError: bad options, or a result file made with other parameters.
    """
    if not is_int(batch_size) or batch_size < 1:
        raise ValueError(f"Expected batch_size >= 1. Received: batch_size={batch_size!r}")
    stored = {**run_params(config, erase), **(params or {}), "only_referable": bool(only_referable)}
    rule = config if config is not None else RefineConfig()
    summary = {"written": 0, "already_done": 0, "not_referable": 0, "skipped": [],
               "stop_reasons": {}, "seconds": 0.0}
    start = time.time()
    advance = phase(on_progress, "Refining", len(records))
    check_callback(on_image, "on_image")

    def tell(image_id, message):
        advance(1)
        if on_image is not None:
            on_image(image_id, message)

    with ResultStore(out, "a", params=stored) as store:
        redo = set(redo)
        done = set(store.complete_ids()) - redo
        todo = [r for r in records if r.id not in done]
        summary["already_done"] = len(records) - len(todo)
        # The file records each run; one that never finishes tells the FROC its images are
        # not all there.
        run = store.begin_run([r.id for r in records], summary["already_done"])
        if summary["already_done"]:
            advance(summary["already_done"])
        for first in range(0, len(todo), batch_size):
            batch = []
            for rec in todo[first:first + batch_size]:
                try:
                    batch.append((rec, *_load(rec, size)))
                except ValueError as exc:
                    _bad(rec, exc, skip_bad, summary, tell)
            batch, results = _refine_good(batch, dict(explain=explain, predict=predict,
                                                      erase=erase, config=config,
                                                      keep_images=keep_images),
                                          skip_bad, summary, tell)
            for (rec, _, _), result in zip(batch, results):
                if only_referable and rule.stops(result.predictions[0]):
                    summary["not_referable"] += 1
                    tell(rec.id, f"not referable (p0={result.predictions[0]:.2f}, graded "
                                 f"{int(to_grades(result.predictions[0]))}): not stored")
                    continue
                if image_params:
                    result = dataclasses.replace(result, params={**result.params,
                                                                 **image_params(rec)})
                store.write(rec.id, result, overwrite=rec.id in redo)
                summary["written"] += 1
                reasons = summary["stop_reasons"]
                reasons[result.stop_reason] = reasons.get(result.stop_reason, 0) + 1
                tell(rec.id, describe(result))
        summary["seconds"] = time.time() - start
        store.finish_run(run, {"written": summary["written"],
                               "not_referable": summary["not_referable"],
                               "skipped": len(summary["skipped"])})
    return summary


def describe(result):
    """One log line for a refined image: prediction trajectory, iterations, stop reason."""
    trajectory = " -> ".join(f"{p:.2f}" for p in result.predictions)
    return f"{trajectory} ({result.iterations} iteration{'s' * (result.iterations != 1)}, {result.stop_reason})"


def _load(rec, size):
    image = rec.load_image()
    if size is not None and image.shape[:2] != (size, size):
        raise ImageSizeError(rec.id, f"Expected a {size}x{size} image (the model's input). "
                                     f"Received: {rec.image_path} of {image.shape[1]}x"
                                     f"{image.shape[0]}", size)
    return image, np.asarray(rec.load_fov(image), bool)


def _refine_good(batch, settings, skip_bad, summary, tell):
    """refine_batch on (record, image, fov) triples, dropping (and reporting) bad images."""
    batch = list(batch)
    while batch:
        try:
            results = refine_batch([b[1] for b in batch], [b[2] for b in batch], **settings)
            return batch, results
        except ImageError as exc:
            _bad(batch[exc.index][0], exc, skip_bad, summary, tell)
            del batch[exc.index]
    return [], []


def _bad(rec, exc, skip_bad, summary, tell):
    message = exc.reason if isinstance(exc, BadImageError) else str(exc)
    if not skip_bad:
        if isinstance(exc, BadImageError):
            raise exc
        raise BadImageError(rec.id, message) from exc
    summary["skipped"].append((rec.id, message))
    tell(rec.id, f"skipped: {message}")
