"""``dr-saliency explain``: the method on a researcher's own photographs, results on their pixels.

Two phases, each resumable:

1. **Refine.** Every photograph is cropped to its field of view, squared and resized to the
   grader's input (:class:`dr_saliency.fundus.photos.Photo`, the geometry of ``preprocess``) and
   refined into the result store ``OUT/results.h5``; each image's params record the photograph's
   size, the square's box, its bytes' SHA-256 and its path (``params["photo"]``), so that the
   stored maps can be put back on it and a result is reused only for the same photograph.
2. **Report.** For every photograph in the store: s_0 and S mapped back onto the photograph's own
   pixel grid, the top candidate lesions of S in the photograph's coordinates, a figure
   ``OUT/figures/<id>.png`` (redrawn only when what it shows changed), and one row of
   ``OUT/explain.csv`` and ``OUT/explain.json`` (rewritten whole, atomically, at the end).

An interrupted run is continued by the same command: refined photographs are not refined again,
figures already right are kept. A later run with other photographs adds them: the tables list
every photograph of the store, those of earlier runs too. A photograph whose bytes differ from
those its result was made from (another eye under the same name, a file replaced in place) is
refined again. The folder is locked while a run writes it; a folder another command made (a
training run, a dataset) is refused. TensorFlow is imported when the grader is loaded.
"""

import csv
import hashlib
import io
import json
import os
import shutil
import time

import cv2
import numpy as np

from dr_saliency.core.errors import BadImageError
from dr_saliency.core.grades import grade_facts
from dr_saliency.core.files import (file_sha256, read_json, refuse_other_outputs,
                                    remove_stale_temps, temp_path, write_figure, write_json,
                                    write_text)
from dr_saliency.core.locks import lock_folder
from dr_saliency.core.progress import check_callback, phase
from dr_saliency.core.shards import check_shards, parse_shard, select_shard
from dr_saliency.explain.options import DEFAULT_BATCH_SIZE
from dr_saliency.figures import overview
from dr_saliency.fundus import prepare, synth
from dr_saliency.fundus.datasets import LAYOUTS
from dr_saliency.fundus.fov import restore_geometry
from dr_saliency.fundus.photos import Photo, find_photos, printable
from dr_saliency.lesions.localize import CandidateOptions, image_candidates
from dr_saliency.refinement.loop import run_params
from dr_saliency.refinement.run import describe
from dr_saliency.refinement.store import ResultStore, read_params

__all__ = ["DEFAULT_TOP", "FIGURE_SIDE", "explain_photos", "merge_explains"]

RESULTS_FILE = "results.h5"
FIGURES = "figures"
TABLE = "explain"
PAGE = "index.html"

#: Candidate lesions listed per photograph (CSV columns x1, y1, score1, ...).
DEFAULT_TOP = 5

#: Longest side, in pixels, of the photograph as drawn in a figure: a 4288 px photograph drawn
#: at full size would make a 30 MB PNG and show nothing more at screen size.
FIGURE_SIDE = 1024

#: What a figure looks like, in its signature: a figure drawn in an older style is redrawn.
FIGURE_STYLE = 2

#: The PNG text key holding what a figure shows (:func:`_signature`): a figure is redrawn when
#: its row says otherwise (another --top, another photograph, other results).
FIGURE_KEY = "dr_saliency.explain"

# Longest file name where the file system does not say (ext4, XFS, APFS, NTFS: 255 bytes).
_NAME_MAX = 255

# What the photograph's record in the store holds besides its path.
_RECORDED = ("height", "width", "box", "sha256")


def explain_photos(inputs, out_dir, *, model_path=None, explanation=None, config=None,
                   erase=None, batch_size=DEFAULT_BATCH_SIZE, top=DEFAULT_TOP, options=None,
                   skip_bad=False, on_image=None, on_progress=None, precision="fp32",
                   shard=None):
    """Refine a researcher's photographs and report the maps and candidates on their pixels.

    Args:
        inputs: list of photograph files and folders (:func:`~dr_saliency.fundus.photos.find_photos`).
        out_dir: str, the output folder (created; a rerun continues it, a run with other
            photographs adds them).
        model_path: str, a grader's model file; None: the bundled grader. A folder made with
            another copy of the same file (same SHA-256) is continued.
        explanation, config, erase, batch_size, precision: as
            :func:`dr_saliency.jobs.refine.refine_run`.
        top: int >= 1, candidate lesions listed per photograph.
        options: :class:`~dr_saliency.lesions.localize.CandidateOptions`, or None.
        skip_bad: report and skip photographs that cannot be used instead of failing.
        on_image, on_progress: optional callbacks of the package's progress protocol
            (:mod:`dr_saliency.core.progress`): ``on_image(image_id, message)`` per photograph
            and phase; two phases, "Refining" and "Reporting".
        shard: optional :class:`~dr_saliency.core.shards.Shard` or ``"K/N"``: only the
            photographs that shard owns (by id), recorded in ``results.h5``'s params and in
            ``explain.json`` (``"shard"``, ``"top"``); :func:`merge_explains` joins the N
            shards' folders into the folder an unsharded run writes.

    Returns:
        dict: ``rows`` (one per photograph of the store, as in explain.json), ``skipped`` (list
        of (path, reason)), ``ignored`` (files in the folders that are not images), ``written``
        and ``already_done`` (refinement counts), ``replaced`` (refined again: their file
        changed), ``earlier`` (rows of photographs of earlier runs), ``paths`` (the table
        files), ``seconds``.

    Raises:
        ValueError: bad options, no photographs, a bad photograph without ``skip_bad``
            (:class:`~dr_saliency.core.errors.BadImageError`), a model file that is not a
            grader, an output folder made with other settings, or another command's folder
            (:class:`~dr_saliency.core.errors.FolderInUseError`).
        BusyError: another process writes the folder.
    """
    from dr_saliency.grader.model import bundled_model_path

    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise ValueError(f"Expected top >= 1 candidates per photograph. Received: top={top!r}")
    found, ignored = find_photos(inputs)
    if not found:
        raise ValueError("Expected at least one photograph. Received: inputs="
                         f"{[printable(i) for i in inputs]!r}"
                         + (f" ({len(ignored)} file(s) not images by their suffix)" * bool(ignored)))
    run_params(config, erase)  # bad settings fail before the model is loaded
    check_callback(on_image, "on_image")
    check_callback(on_progress, "on_progress")
    model_path = bundled_model_path() if model_path is None else os.fspath(model_path)
    if shard is not None:
        shard = parse_shard(shard)
        found = select_shard(found, shard, key=lambda item: item[0])
    _check_folder(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    with lock_folder(out_dir, "an explain folder"):
        return _explain(found, ignored, out_dir, model_path, dict(
            explanation=explanation, config=config, erase=erase, batch_size=batch_size,
            precision=precision, shard=shard), top, options or CandidateOptions(), skip_bad,
            on_image, on_progress)


def _check_folder(out_dir):
    """Refuse another command's folder: a training run, a dataset, a model or other results."""
    others = []
    if os.path.isdir(out_dir):
        others += [f"a dataset ({name} layout)" for name, module in LAYOUTS.items()
                   if module.matches(out_dir)]
        others += [f"a dataset's record ({name})"
                   for name in (synth.PARAMS_FILE, prepare.PARAMS_FILE)
                   if os.path.isfile(os.path.join(out_dir, name))]
    refuse_other_outputs(out_dir, "explain's results", own=(RESULTS_FILE,), others=others)


def _explain(found, ignored, out_dir, model_path, settings, top, options, skip_bad, on_image,
             on_progress):
    from dr_saliency.jobs import refine as refine_job

    store_path = os.path.join(out_dir, RESULTS_FILE)
    start = time.time()
    grader = refine_job.load_refiner(model_path, store_path, explanation=settings["explanation"],
                                     batch_size=settings["batch_size"],
                                     precision=settings["precision"])
    photos = [Photo(image_id, path, grader["size"]) for image_id, path in found]
    redo = _changed(store_path, photos)
    summary = refine_job.refine_run(
        model_path, photos, store_path, config=settings["config"], erase=settings["erase"],
        batch_size=settings["batch_size"], skip_bad=skip_bad, on_image=on_image,
        on_progress=on_progress,
        grader={**grader, "params": _same_model(store_path, grader["params"])},
        image_params=lambda rec: {"photo": rec.record}, redo=redo, shard=settings["shard"])
    by_id = {p.id: p.name for p in photos}
    skipped = [(by_id[image_id], message) for image_id, message in summary["skipped"]]
    bad = {image_id for image_id, _ in summary["skipped"]}
    report = _Report(out_dir, grader["size"], top, options, skip_bad, skipped, on_image,
                     _is_bundled(model_path, grader["params"]["model_sha256"]))
    rows, earlier = report.rows(store_path, [p for p in photos if p.id not in bad],
                                on_progress)
    shard = settings["shard"]
    paths = _write_tables(out_dir, rows, top, skipped, ignored, model_path,
                          shard={"shard": shard.to_params(), "top": top} if shard else None)
    return {"rows": rows, "skipped": skipped, "ignored": ignored, "written": summary["written"],
            "already_done": summary["already_done"],
            "replaced": len(redo - bad), "earlier": earlier, "paths": paths,
            "seconds": time.time() - start}


def _is_bundled(model_path, sha256):
    """Whether ``model_path`` (whose SHA-256 is ``sha256``) holds the bundled grader (by
    content: any copy of it counts)."""
    from dr_saliency.grader.model import bundled_model_path

    bundled = bundled_model_path()
    try:
        return os.path.samefile(model_path, bundled) or sha256 == file_sha256(bundled)
    except OSError:
        return False


def _same_model(store_path, params):
    """The model as the store already names it, when it is the same file by content.

    A result file records its model by a path relative to it and by SHA-256; the same grader
    reached by another path (a moved folder, a reinstalled package) is the same grader.
    """
    try:
        stored = read_params(store_path) if os.path.isfile(store_path) else {}
    except (OSError, ValueError):
        return params  # refine_dataset names what is wrong with the file
    if stored.get("model_sha256") == params["model_sha256"] and "model" in stored:
        return {**params, "model": stored["model"]}
    return params


def _changed(store_path, photos):
    """Ids of the photographs whose stored result was made from other bytes (or from bytes not
    recorded, by an earlier version): they are refined again."""
    if not os.path.isfile(store_path):
        return set()
    changed = set()
    with ResultStore(store_path) as store:
        for photo in photos:
            if photo.id not in store:
                continue
            try:
                digest = file_sha256(photo.image_path)
            except OSError:
                continue  # unreadable: the refinement names it
            recorded = (store.read(photo.id).params.get("photo") or {}).get("sha256")
            if recorded != digest:
                changed.add(photo.id)
    return changed


class _Report:
    """Phase 2: the row (and the figure) of every photograph in the store."""

    def __init__(self, out_dir, size, top, options, skip_bad, skipped, on_image, bundled):
        self.figures = os.path.join(out_dir, FIGURES)
        self.bundled = bundled
        self.previous = _previous_rows(out_dir)
        self.size, self.top, self.options = size, top, options
        self.skip_bad, self.skipped, self.on_image = skip_bad, skipped, on_image

    def rows(self, store_path, photos, on_progress):
        """``(rows sorted by id, number of rows of photographs from earlier runs)``."""
        os.makedirs(self.figures, exist_ok=True)
        # Left by a run killed while writing a figure or a table (this run holds the lock).
        remove_stale_temps(self.figures, earlier=True)
        remove_stale_temps(os.path.dirname(self.figures))
        rows = []
        with ResultStore(store_path) as store:
            named = {p.id for p in photos}
            todo = [p for p in photos if p.id in store]
            earlier = [image_id for image_id in store.complete_ids() if image_id not in named]
            update = phase(on_progress, "Reporting", len(todo) + len(earlier))
            for photo in todo:
                try:
                    rows.append(self.photo_row(store.read(photo.id), photo))
                except BadImageError as exc:
                    if not self.skip_bad:
                        raise
                    self.skip(photo.id, photo.name, exc.reason)
                update(1)
            n_rows = len(rows)
            for image_id in earlier:
                row = self.earlier_row(store.read(image_id), image_id)
                if row is not None:
                    rows.append(row)
                update(1)
        return sorted(rows, key=lambda r: r["id"]), len(rows) - n_rows

    def skip(self, image_id, name, reason):
        self.skipped.append((name, reason))
        if self.on_image:
            self.on_image(image_id, f"skipped: {reason}")

    def earlier_row(self, result, image_id):
        """The row of a photograph refined by an earlier run: made again from its file when that
        still holds the same photograph, else the earlier table's row (and its figure) as it was.
        """
        record = result.params.get("photo") or {}
        path = record.get("path")
        try:
            if path and os.path.isfile(path) and file_sha256(path) == record.get("sha256"):
                return self.photo_row(result, Photo(image_id, path, self.size))
        except (BadImageError, OSError):
            pass  # as if it were gone
        row = self.previous.get(image_id)
        if row is not None and row.get("sha256") == record.get("sha256"):
            # Where the figure is from here (the earlier run may have named it from elsewhere).
            figure = row.get("figure") and os.path.join(self.figures,
                                                        os.path.basename(row["figure"]))
            row = {**row, "figure": figure or ""}
            # A figure drawn for another row (or gone) is not this row's; one drawn before
            # figures carried their row's signature is taken as the row's, as it was then.
            if figure and (not os.path.isfile(figure)
                           or _figure_signature(figure) not in (None, _signature(row))):
                row = {**row, "figure": ""}
            return _graded(row)
        self.skip(image_id, printable(path or image_id),
                  "refined by an earlier run, but its photograph is gone or changed and the "
                  "earlier table has no row for it: not listed")
        return None

    def photo_row(self, result, photo):
        """One photograph's row; (re)draws its figure unless it already shows this row."""
        picture = photo.read()
        image = photo.load_image(picture)
        fov = photo.load_fov(image)
        stored = result.params.get("photo") or {}
        now = photo.record
        if any(stored.get(k) != now[k] for k in _RECORDED):
            raise BadImageError(photo.name, "the photograph changed since it was refined "
                                            "(run the command again to refine it again)")
        found, maps = image_candidates(result, image, fov, self.options)
        best = found["S"][:self.top]
        ys, xs = photo.box.to_source(best[:, 0], best[:, 1], photo.size)
        candidates = [{"x": round(float(x), 1), "y": round(float(y), 1),
                       "score": round(float(s), 4)} for x, y, s in zip(xs, ys, best[:, 2])]
        predictions = [float(p) for p in result.predictions]
        # The photograph's grade is that of its first prediction, p0 (core/grades: one rule).
        row = {"id": photo.id, "path": photo.name, "width": photo.shape[1],
               "height": photo.shape[0], "p0": round(predictions[0], 4),
               "pn": round(predictions[-1], 4), "iterations": int(result.iterations),
               "stop_reason": result.stop_reason, **grade_facts(predictions[0]),
               "candidates": candidates,
               "bundled_grader": self.bundled, "sha256": photo.sha256,
               "figure": os.path.join(self.figures, _figure_name(self.figures, photo.id))}
        signature = _signature(row)
        if _figure_signature(row["figure"]) != signature:
            _write_figure(row, picture, photo, maps, np.stack([ys, xs], axis=1), result,
                          signature)
        return row


def _previous_rows(out_dir):
    """The rows of the table an earlier run wrote, by id ({} when there is none or it is
    unreadable: it is rewritten anyway)."""
    try:
        table = read_json(os.path.join(out_dir, f"{TABLE}.json"), {})
        return {row["id"]: row for row in table.get("images", []) if isinstance(row, dict)}
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return {}


def _signature(row):
    """What a photograph's figure shows, as a digest of its row (everything but where the files
    are) and the figure's size."""
    shown = {k: v for k, v in row.items() if k not in ("path", "figure")}
    text = json.dumps({"row": shown, "side": FIGURE_SIDE, "style": FIGURE_STYLE}, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _figure_signature(path):
    """The signature a figure was drawn with (None: no figure, or one without it)."""
    from PIL import Image  # matplotlib's own PNG writer

    try:
        with Image.open(path) as png:
            return png.text.get(FIGURE_KEY)
    except (OSError, ValueError, SyntaxError, AttributeError):
        return None


def _figure_name(folder, image_id):
    """``<id>.png``, or, where that is longer than the file system allows, the id cut short
    with a digest of the whole id (``<id start>~<digest>.png``)."""
    name = f"{image_id}.png"
    try:
        limit = os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        limit = _NAME_MAX
    encoded = os.fsencode(name)
    if len(encoded) <= limit:
        return name
    digest = hashlib.sha256(os.fsencode(image_id)).hexdigest()[:12]
    keep = os.fsencode(image_id)[:limit - len(digest) - len("~.png")]
    return f"{keep.decode('utf-8', 'ignore')}~{digest}.png"


def _write_figure(row, picture, photo, maps, points, result, signature):
    """Photograph | s_0 over it | S over it with the numbered candidates (``points``, (K, 2)
    (row, col) in the photograph's pixels), drawn at FIGURE_SIDE on the scale the maps are scored
    on; ``signature`` (what it shows, :func:`_signature`) is kept in the PNG."""
    from dr_saliency.figures import plots

    height, width = picture.shape[:2]
    k = min(1.0, FIGURE_SIDE / max(height, width))
    shape = (max(1, round(height * k)), max(1, round(width * k)))
    # Back onto the photograph's grid, then down to the figure's: one resampling per step, both
    # done by OpenCV (area averaging when shrinking).
    shown = cv2.resize(picture, shape[::-1], interpolation=cv2.INTER_AREA)
    drawn = {name: cv2.resize(restore_geometry(m, photo.box, (height, width)), shape[::-1],
                              interpolation=cv2.INTER_AREA) for name, m in maps.items()}
    if result.iterations == 0:
        # Not refined (graded not referable at once, or an empty first mask): S is s_0.
        why = "graded not referable" if result.stop_reason == "not_referable" else result.stop_reason
        refined = f"$S = s_0$ ({why}:\nnot refined), top candidates"
    else:
        refined = f"$S$ (refined, {result.iterations} it.), top candidates"
    fig = plots.heatmap_panels(
        [{"image": shown, "s0": drawn["s0"], "S": drawn["S"], "points": (points + 0.5) * k - 0.5}],
        titles=("Photograph", "$s_0$ (first map)", refined), panel_size=3.2,
        note="grader trained on synthetic images only (the bundled grader)"
        if row["bundled_grader"] else None)
    referable = "referable" if row["referable"] else "not referable"
    # The trajectory is the regression's output; rounded to 2 or more it is referable (core/grades).
    fig.suptitle(f"{photo.id}: grade {row['grade']} ({row['stage']}, {referable}); "
                 f"predicted {describe(result)}", fontsize=10)
    write_figure(fig, row["figure"], dpi=150, metadata={FIGURE_KEY: signature})


def _graded(row):
    """A row of an earlier version's table, with the grade, stage and referable of its p0."""
    return {**grade_facts(row["p0"]), **row}


def _write_tables(out_dir, rows, top, skipped, ignored, model_path, shard=None):
    """explain.csv (one row per photograph, top candidates as columns), explain.json and the
    overview page index.html (:mod:`dr_saliency.figures.overview`); ``shard``: what a shard's
    explain.json records of its shard (None: unsharded)."""
    columns = ["id", "path", "width", "height", "p0", "pn", "iterations", "stop_reason",
               "grade", "stage", "referable"]
    # Rows kept from an earlier run (their photograph gone) may list more candidates.
    top = max([top] + [len(row["candidates"]) for row in rows])
    for k in range(1, top + 1):
        columns += [f"x{k}", f"y{k}", f"score{k}"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        cells = [row[c] for c in columns[:11]]
        for k in range(top):
            c = row["candidates"][k] if k < len(row["candidates"]) else {}
            cells += [c.get("x", ""), c.get("y", ""), c.get("score", "")]
        writer.writerow(cells)
    csv_path = os.path.join(out_dir, f"{TABLE}.csv")
    json_path = os.path.join(out_dir, f"{TABLE}.json")
    write_text(csv_path, buffer.getvalue())
    write_json(json_path, {
        "model": printable(os.path.abspath(model_path)),
        "results": printable(os.path.abspath(os.path.join(out_dir, RESULTS_FILE))),
        "coordinates": "x = column, y = row, in the photograph's pixels (pixel centres at "
                       "integers, origin top left, after EXIF rotation)",
        "images": rows,
        "skipped": [{"path": p, "reason": r} for p, r in skipped],
        "ignored": [printable(p) for p in ignored], **(shard or {})})
    # The page last: it shows what the tables hold.
    page = overview.write_overview(
        os.path.join(out_dir, PAGE), rows, title="dr-saliency explain",
        skipped=list(skipped) + [(printable(p), "not an image by its suffix") for p in ignored],
        notes=[f"Grader: {printable(os.path.abspath(model_path))}"
               + " (trained on synthetic images only)" * any(r.get("bundled_grader") for r in rows),
               "Grade: the first prediction p0 rounded (0-4); referable: grade 2 or higher. "
               "Candidates: (x, y) in the photograph's pixels; score: S at the candidate's peak. "
               "Click a thumbnail for the full figure."])
    return [csv_path, json_path, page]


def merge_explains(out_dir, inputs, *, overwrite=False, on_progress=None):
    """Join the folders of the N shards of one ``explain`` into the folder an unsharded run
    writes: ``results.h5`` merged (:func:`dr_saliency.refinement.merge.merge_stores`), the
    figures copied, the tables and the overview page written for all photographs.

    Args:
        out_dir: str, the merged folder; must hold no explain results unless ``overwrite``.
        inputs: list of str, the shards' folders (``explain --shard K/N``).
        overwrite: replace the results of an earlier merge (the engine's own merge).
        on_progress: optional, the package's progress protocol.

    Returns:
        dict: ``rows``, ``skipped``, ``ignored``, ``paths`` as :func:`explain_photos` returns
        them.

    Raises:
        ValueError: (one line) a folder that is not a finished explain shard, shards that are
            not the N shards of one run (:func:`dr_saliency.core.shards.check_shards`), or an
            output folder that holds other results.
    """
    from dr_saliency.refinement.merge import merge_stores

    tables = []
    for folder in inputs:
        table = read_json(os.path.join(folder, f"{TABLE}.json"))
        if not isinstance(table, dict) or "shard" not in table:
            raise ValueError(f"Expected the folder of a finished explain shard ({TABLE}.json "
                             f"with its shard). Received: {folder!r}")
        tables.append(table)
    # The model is compared by content with the results (merge_stores), not by path here.
    check_shards([(folder, {"shard": t["shard"], "top": t["top"], "ignored": t["ignored"]})
                  for folder, t in zip(inputs, tables)], what="explain folders")
    store_path = os.path.join(out_dir, RESULTS_FILE)
    if os.path.exists(store_path) and not overwrite:
        raise ValueError(
            f"Expected a folder without explain results to merge into (overwrite=True replaces "
            f"them). Received: {out_dir!r} holds {RESULTS_FILE}")
    _check_folder(out_dir)
    os.makedirs(os.path.join(out_dir, FIGURES), exist_ok=True)
    with lock_folder(out_dir, "an explain folder"):
        merge_stores(store_path, [os.path.join(folder, RESULTS_FILE) for folder in inputs],
                     overwrite=overwrite, on_progress=on_progress)
        rows, skipped = [], []
        for folder, table in zip(inputs, tables):
            for row in table["images"]:
                figure = row.get("figure") or ""
                if figure:
                    # Copied as drawn: its signature (what it shows) does not name the folder.
                    name = os.path.basename(figure)
                    target = os.path.join(out_dir, FIGURES, name)
                    shutil.copyfile(os.path.join(folder, FIGURES, name), temp_path(target))
                    os.replace(temp_path(target), target)
                    figure = target
                rows.append({**row, "figure": figure})
            skipped += [(entry["path"], entry["reason"]) for entry in table["skipped"]]
        rows.sort(key=lambda row: row["id"])
        skipped.sort()
        first = tables[0]
        paths = _write_tables(out_dir, rows, first["top"], skipped, first["ignored"],
                              first["model"])
    return {"rows": rows, "skipped": skipped, "ignored": first["ignored"], "paths": paths}
