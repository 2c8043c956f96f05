"""``dr-saliency explain``: the method on a researcher's own photographs, results on their pixels.

Two phases, each resumable:

1. **Refine.** Every photograph is cropped to its field of view, squared and resized to the
   grader's input (:class:`dr_saliency.fundus.photos.Photo`, the geometry of ``preprocess``) and
   refined into the result store ``OUT/results.h5``; each image's params record the photograph's
   size and the square's box (``params["photo"]``), so the stored maps can be put back on it.
2. **Report.** For every refined photograph: s_0 and S mapped back onto the photograph's own
   pixel grid, the top candidate lesions of S in the photograph's coordinates, a figure
   ``OUT/figures/<id>.png`` (written once), and one row of ``OUT/explain.csv`` and
   ``OUT/explain.json`` (rewritten whole, atomically, at the end).

An interrupted run is continued by the same command: refined photographs are not refined again,
figures already written are kept. TensorFlow is imported when the grader is loaded.
"""

import csv
import io
import os
import time

import cv2
import numpy as np

from dr_saliency.core.errors import BadImageError
from dr_saliency.core.files import write_figure, write_json, write_text
from dr_saliency.explain.options import DEFAULT_BATCH_SIZE
from dr_saliency.fundus.fov import restore_geometry
from dr_saliency.fundus.photos import Photo, find_photos, read_photo
from dr_saliency.lesions.localize import CandidateOptions, image_candidates
from dr_saliency.refinement.loop import run_params
from dr_saliency.refinement.run import describe, refine_dataset
from dr_saliency.refinement.store import ResultStore

__all__ = ["DEFAULT_TOP", "FIGURE_SIDE", "explain_photos"]

RESULTS_FILE = "results.h5"
FIGURES = "figures"
TABLE = "explain"

#: Candidate lesions listed per photograph (CSV columns x1, y1, score1, ...).
DEFAULT_TOP = 5

#: Longest side, in pixels, of the photograph as drawn in a figure: a 4288 px photograph drawn
#: at full size would make a 30 MB PNG and show nothing more at screen size.
FIGURE_SIDE = 1024


def explain_photos(inputs, out_dir, *, model_path=None, explanation=None, config=None,
                   erase=None, batch_size=DEFAULT_BATCH_SIZE, top=DEFAULT_TOP, options=None,
                   skip_bad=False, on_image=None, on_progress=None, precision="fp32"):
    """Refine a researcher's photographs and report the maps and candidates on their pixels.

    Args:
        inputs: list of photograph files and folders (:func:`~dr_saliency.fundus.photos.find_photos`).
        out_dir: str, the output folder (created; a rerun continues it).
        model_path: str, a grader's model file; None: the bundled grader.
        explanation, config, erase, batch_size, precision: as
            :func:`dr_saliency.app.wiring.refine_run`.
        top: int >= 1, candidate lesions listed per photograph.
        options: :class:`~dr_saliency.lesions.localize.CandidateOptions`, or None.
        skip_bad: report and skip photographs that cannot be used instead of failing.
        on_image: optional callable(image_id, message) per photograph and phase.
        on_progress: optional callable(label, length) -> update(k=1), for progress bars.

    Returns:
        dict: ``rows`` (one per refined photograph, as in explain.json), ``skipped`` (list of
        (path, reason)), ``ignored`` (files in the folders that are not images), ``written`` and
        ``already_done`` (refinement counts), ``paths`` (the table files), ``seconds``.

    Raises:
        ValueError: bad options, no photographs, a bad photograph without ``skip_bad``
            (:class:`~dr_saliency.core.errors.BadImageError`), a model file that is not a
            grader, or an output folder made with other settings.
    """
    from dr_saliency.app import wiring
    from dr_saliency.grader.model import bundled_model_path

    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise ValueError(f"Expected top >= 1 candidates per photograph. Received: top={top!r}")
    found, ignored = find_photos(inputs)
    if not found:
        raise ValueError("Expected at least one photograph. Received: inputs="
                         f"{[os.fspath(i) for i in inputs]!r}"
                         + (f" ({len(ignored)} file(s) not images by their suffix)" * bool(ignored)))
    run_params(config, erase)  # bad settings fail before the model is loaded
    model_path = bundled_model_path() if model_path is None else os.fspath(model_path)
    os.makedirs(out_dir, exist_ok=True)
    store_path = os.path.join(out_dir, RESULTS_FILE)
    start = time.time()
    grader = wiring.load_refiner(model_path, store_path, explanation=explanation,
                                 batch_size=batch_size, precision=precision)
    photos = [Photo(image_id, path, grader["size"]) for image_id, path in found]
    update = on_progress("Refining", len(photos)) if on_progress else (lambda k=1: None)

    def refined(rec, result, message):
        update(1)
        if on_image:
            on_image(rec.id, message)

    summary = refine_dataset(
        photos, store_path, explain=grader["explain"], predict=grader["predict"], erase=erase,
        config=config, size=grader["size"], params=grader["params"], batch_size=batch_size,
        skip_bad=skip_bad, on_image=refined, image_params=lambda rec: {"photo": rec.geometry})
    by_id = {p.id: p.image_path for p in photos}
    skipped = [(by_id[image_id], message) for image_id, message in summary["skipped"]]
    bad = {image_id for image_id, _ in summary["skipped"]}
    rows = _report(store_path, [p for p in photos if p.id not in bad], out_dir, top,
                   options or CandidateOptions(), skip_bad, skipped, on_image, on_progress)
    paths = _write_tables(out_dir, rows, top, skipped, ignored, model_path)
    return {"rows": rows, "skipped": skipped, "ignored": ignored, "written": summary["written"],
            "already_done": summary["already_done"], "paths": paths,
            "seconds": time.time() - start}


def _report(store_path, photos, out_dir, top, options, skip_bad, skipped, on_image, on_progress):
    """Phase 2: per refined photograph, its row (and its figure when missing)."""
    figures = os.path.join(out_dir, FIGURES)
    os.makedirs(figures, exist_ok=True)
    rows = []
    with ResultStore(store_path) as store:
        todo = [p for p in photos if p.id in store]
        update = on_progress("Reporting", len(todo)) if on_progress else (lambda k=1: None)
        for photo in todo:
            try:
                rows.append(_photo_report(store.read(photo.id), photo, figures, top, options))
            except BadImageError as exc:
                if not skip_bad:
                    raise
                skipped.append((photo.image_path, exc.reason))
                if on_image:
                    on_image(photo.id, f"skipped: {exc.reason}")
            update(1)
    return rows


def _photo_report(result, photo, figures, top, options):
    """One photograph's row; writes its figure unless it exists."""
    picture = read_photo(photo.image_path)
    image = photo.load_image(picture)
    fov = photo.load_fov(image)
    stored = result.params.get("photo")
    if stored != photo.geometry:
        raise BadImageError(photo.image_path, "the photograph changed since it was refined "
                                              f"(stored geometry {stored}, now {photo.geometry}); "
                                              "use another output folder")
    found, maps = image_candidates(result, image, fov, options)
    best = found["S"][:top]
    ys, xs = photo.box.to_source(best[:, 0], best[:, 1], photo.size)
    candidates = [{"x": round(float(x), 1), "y": round(float(y), 1), "score": round(float(s), 4)}
                  for x, y, s in zip(xs, ys, best[:, 2])]
    predictions = [float(p) for p in result.predictions]
    row = {"id": photo.id, "path": photo.image_path, "width": photo.shape[1],
           "height": photo.shape[0], "p0": round(predictions[0], 4),
           "pn": round(predictions[-1], 4), "iterations": int(result.iterations),
           "stop_reason": result.stop_reason, "candidates": candidates,
           "figure": os.path.join(figures, f"{photo.id}.png")}
    if not os.path.isfile(row["figure"]):
        _write_figure(row["figure"], picture, photo, maps, np.stack([ys, xs], axis=1), result)
    return row


def _write_figure(path, picture, photo, maps, points, result):
    """Photograph | s_0 over it | S over it with the numbered candidates (``points``, (K, 2)
    (row, col) in the photograph's pixels), drawn at FIGURE_SIDE."""
    from dr_saliency.figures import plots

    height, width = picture.shape[:2]
    k = min(1.0, FIGURE_SIDE / max(height, width))
    shape = (max(1, round(height * k)), max(1, round(width * k)))
    # Back onto the photograph's grid, then down to the figure's: one resampling per step, both
    # done by OpenCV (area averaging when shrinking).
    shown = cv2.resize(picture, shape[::-1], interpolation=cv2.INTER_AREA)
    drawn = {name: cv2.resize(restore_geometry(m, photo.box, (height, width)), shape[::-1],
                              interpolation=cv2.INTER_AREA) for name, m in maps.items()}
    fig = plots.heatmap_panels(
        [{"image": shown, "s0": drawn["s0"], "S": drawn["S"], "points": (points + 0.5) * k - 0.5}],
        titles=("Photograph", "$s_0$ (first map)", "$S$ (refined), top candidates"),
        panel_size=3.2)
    # Grades are the regression's output (0-4); > 1 is referable.
    fig.suptitle(f"{photo.id}: predicted grade {describe(result)}", fontsize=10)
    write_figure(fig, path, dpi=150)


def _write_tables(out_dir, rows, top, skipped, ignored, model_path):
    """explain.csv (one row per photograph, top candidates as columns) and explain.json."""
    columns = ["id", "path", "width", "height", "p0", "pn", "iterations", "stop_reason"]
    for k in range(1, top + 1):
        columns += [f"x{k}", f"y{k}", f"score{k}"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        cells = [row[c] for c in columns[:8]]
        for k in range(top):
            c = row["candidates"][k] if k < len(row["candidates"]) else {}
            cells += [c.get("x", ""), c.get("y", ""), c.get("score", "")]
        writer.writerow(cells)
    csv_path = os.path.join(out_dir, f"{TABLE}.csv")
    json_path = os.path.join(out_dir, f"{TABLE}.json")
    write_text(csv_path, buffer.getvalue())
    write_json(json_path, {
        "model": os.path.abspath(model_path),
        "results": os.path.abspath(os.path.join(out_dir, RESULTS_FILE)),
        "coordinates": "x = column, y = row, in the photograph's pixels (pixel centres at "
                       "integers, origin top left, after EXIF rotation)",
        "images": rows,
        "skipped": [{"path": p, "reason": r} for p, r in skipped],
        "ignored": list(ignored)})
    return [csv_path, json_path]
