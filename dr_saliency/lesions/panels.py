"""Paper figures from a result file and its dataset: Figure-1 panels and per-iteration strips.

The inpainted images I_1..I_n are not stored by default; they are replayed here from I_0 and the
stored masks with the run's own inpainting settings (``cv2.inpaint`` is deterministic), so a strip
shows exactly what the network saw. No TensorFlow.
"""

import dataclasses
import os

import numpy as np

from dr_saliency.core.files import read_json, write_figure, write_json
from dr_saliency.core.inpaint import inpaint, stored_fill
from dr_saliency.lesions import candidates as cand_lib
from dr_saliency.figures import plots
from dr_saliency.core.maps import Combination
from dr_saliency.lesions.localize import LESION_TYPES, check_dataset, lesion_union
from dr_saliency.refinement.store import ResultStore

#: Written last into a figures folder: the chosen ids and the figure files (its presence means
#: the folder is complete; the next call into the folder removes what it lists and does not
#: rewrite).
DONE_FILE = "done.json"


def replay_images(image, result, fov=None):
    """I_0..I_n of a result: ``image`` inpainted with its stored masks, as the run did.

    Args:
        image: (H, W, 3) uint8 RGB, I_0.
        result: RefineResult (masks, iterations, and the params of its fill,
            :func:`dr_saliency.core.inpaint.stored_fill`).
        fov: (H, W) bool field of view of the image (used when the run filled inside it).

    Returns:
        (n + 1, H, W, 3) uint8.
    """
    method, radius, inside_fov = stored_fill(result.params)
    images = [image]
    for i in range(result.iterations):
        images.append(inpaint(images[-1], result.masks[i], method=method, radius=radius,
                              fov_mask=fov if inside_fov else None))
    return np.stack(images)


def lesions_found(saliency_map, lesions, fov, exclude=None, top=10):
    """How many distinct lesions the ``top`` candidates of a map hit (for picking examples)."""
    from dr_saliency.lesions.froc import label_lesions

    labels = label_lesions(lesions)
    found = cand_lib.detect_candidates(saliency_map, fov, max_candidates=top, exclude=exclude)
    hits = labels[found[:, 0].astype(int), found[:, 1].astype(int)]
    return len(set(hits[hits > 0].tolist()))


def pick_examples(store, records, n_rows, stages=(3, 4)):
    """Automatic choice: the images of ``stages`` whose S finds most more lesions than s_0.

    Args:
        store: open ResultStore.
        records: dataset records (annotated) present in the store.
        n_rows: number of images.
        stages: DR stages to pick from (all when none of them is present).

    Returns:
        list of records.
    """
    pool = [r for r in records if r.grade in stages] or list(records)
    scored = []
    for rec in pool:
        result = store.read(rec.id)
        lesions = lesion_union(rec.load_lesions())
        if lesions is None or result.iterations == 0:
            continue
        fov = np.asarray(rec.load_fov(), bool)
        gain = (lesions_found(result.final_map, lesions, fov)
                - lesions_found(result.maps[0], lesions, fov))
        scored.append((gain, result.iterations, rec.id, rec))
    scored.sort(key=lambda t: (-t[0], -t[1], t[2]))
    return [t[3] for t in scored[:n_rows]]


def write_figures(results, dataset, out_dir, *, ids=None, n_rows=4, formats=("png", "pdf"),
                  force=False):
    """Write Figure-1 style panels and one iteration strip per chosen image.

    Args:
        results: str, result file.
        dataset: the dataset the results were made from.
        out_dir: str.
        ids: optional list of ids; default: :func:`pick_examples`.
        n_rows: images in the panel figure when picking automatically.
        formats: figure formats.
        force: draw on a dataset whose fingerprint differs from the one the results were made
            from (:func:`dr_saliency.lesions.localize.check_dataset`).

    An earlier call into ``out_dir`` listed its figures in ``done.json``: those this call does
    not rewrite (strips of images not chosen now, formats not asked for now) are removed first,
    so the folder shows this call's figures only. Files it did not write are never touched.

    Returns:
        list of str paths written (the last is ``done.json`` listing the chosen ids and files).

    Raises:
        ValueError: for ids not complete in the results or not in the dataset, or another
            dataset than the results' (``ProvenanceError``) without ``force``.
    """
    os.makedirs(out_dir, exist_ok=True)
    by_id = {r.id: r for r in dataset}
    written = []
    with ResultStore(results) as store:
        check_dataset(store.params.get("data"), dataset, results, force=force)
        complete = set(store.complete_ids())
        if ids:
            missing = [i for i in ids if i not in complete or i not in by_id]
            if missing:
                raise ValueError(f"Expected ids complete in the results and present in the "
                                 f"dataset. Received: {', '.join(missing)}")
            chosen = [by_id[i] for i in ids]
        else:
            annotated = [by_id[i] for i in sorted(complete) if i in by_id and by_id[i].lesion_types]
            chosen = (pick_examples(store, annotated, n_rows) if annotated
                      else [by_id[i] for i in sorted(complete) if i in by_id][:n_rows])
        if not chosen:
            raise ValueError("Expected complete results for images of the dataset. Received: none")
        # Only once the choice is valid: a refused call leaves the earlier figures in place.
        _remove_stale(out_dir, [f"iterations_{r.id}" for r in chosen] + ["figure1_panels"],
                      formats)
        rows = []
        for rec in chosen:
            result = store.read(rec.id)
            image = rec.load_image()
            fov = np.asarray(rec.load_fov(image), bool)
            # Each type outlined in its own colour; the maps as they are scored (one scale).
            lesions = _typed(rec.load_lesions())
            s0, final = Combination.from_params(result.params).scored(result.maps, result.masks,
                                                                      fov)
            stage = "" if rec.grade is None else f", stage {rec.grade}"
            rows.append({"image": image, "fov": fov, "lesions": lesions, "s0": s0, "S": final,
                         "label": f"{rec.id}{stage}\np {result.predictions[0]:.2f} -> "
                                  f"{result.predictions[-1]:.2f}, {result.iterations} it."})
            strip = plots.iteration_strip(
                _with_images(result, replay_images(image, result, fov)), fov=fov, lesions=lesions)
            written += _save(strip, os.path.join(out_dir, f"iterations_{rec.id}"), formats)
        written += _save(plots.heatmap_panels(rows), os.path.join(out_dir, "figure1_panels"),
                         formats)
    done = os.path.join(out_dir, DONE_FILE)
    write_json(done, {"ids": [r.id for r in chosen], "files": written})
    return written + [done]


def _typed(lesions):
    """The lesion masks of the evaluated types, by type (None: not annotated)."""
    typed = {t: lesions[t] for t in LESION_TYPES if t in (lesions or {})}
    return typed or None


def _figure_name(name):
    # The names write_figures gives: iterations_<id>.<format> and figure1_panels.<format>.
    stem = os.path.splitext(name)[0]
    return stem == "figure1_panels" or stem.startswith("iterations_")


def _remove_stale(out_dir, stems, formats):
    """Remove the figures an earlier call listed in ``out_dir/done.json`` that this call (figure
    ``stems`` in ``formats``) will not rewrite, and that done.json, which no longer holds."""
    done = os.path.join(out_dir, DONE_FILE)
    try:
        listed = read_json(done, {}).get("files", [])
    except (OSError, ValueError, AttributeError):
        listed = []  # an unreadable done.json names nothing that can be removed safely
    keep = {f"{stem}.{fmt}" for stem in stems for fmt in formats}
    # By name inside out_dir: the listed paths may be relative to another working directory.
    names = {os.path.basename(str(p)) for p in listed if isinstance(p, str)}
    if os.path.isfile(done):
        os.remove(done)
    for name in sorted(names - keep):
        path = os.path.join(out_dir, name)
        if _figure_name(name) and os.path.isfile(path):
            os.remove(path)


def _with_images(result, images):
    return dataclasses.replace(result, images=images)


def _save(fig, stem, formats):
    paths = []
    for fmt in formats:
        path = f"{stem}.{fmt}"
        write_figure(fig, path, dpi=200)
        paths.append(path)
    return paths
