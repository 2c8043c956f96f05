"""Lesion-level evaluation of refined saliency maps: results + annotations -> FROC of s_0 and S.

For every image complete in a result store and annotated in the dataset, the lesion candidates of
its first map s_0 and of its final map S (:mod:`dr_saliency.lesions.candidates`) are matched against its
lesions (:mod:`dr_saliency.lesions.froc`): all lesion types together, per DR stage, and per lesion type.
Both maps are recomputed from the stored per-iteration maps (:mod:`dr_saliency.core.maps`), so they
pass through the same normalisation and the same candidate settings (docs/choices.md); with
decay 0 (combine "mean" or "max") S is s_0 and their FROCs are identical.
The paper compares s_0 and S per stage (its Figure 2); the per-type curves measure which lesions
the iterations add. No TensorFlow.
"""

import dataclasses

import numpy as np

from dr_saliency.lesions import candidates as cand_lib
from dr_saliency.lesions import froc as froc_lib
from dr_saliency.fundus.datasets.base import LESION_TYPES
from dr_saliency.core.checks import is_int, is_real
from dr_saliency.core.errors import PartialResultsError, ProvenanceError
from dr_saliency.core.maps import Combination
from dr_saliency.core.progress import phase
from dr_saliency.refinement.store import ResultStore

MAP_NAMES = ("s0", "S")

CURVE_RATES = np.geomspace(1 / 16, 10, 49)
"""FP/image rates at which the bootstrap gives pointwise curve bands (the FROC figures' grid)."""


@dataclasses.dataclass(frozen=True)
class CandidateOptions:
    """How a saliency map becomes lesion candidates (see ``candidates.detect_candidates``).

    Frozen and checked when made, like :class:`~dr_saliency.refinement.erase.Eraser`: a bad
    value fails here, naming it, not in the middle of an evaluation.

    Attributes:
        sigma, min_distance, max_candidates, border, method, level: as ``detect_candidates``
            (border in px).
        exclude_disc: bool, no candidates on the optic disc (the dataset's disc mask where it
            has one, else ``candidates.estimate_optic_disc``).
        disc_radius_fraction: float > 0, radius of the estimated disc, fraction of the FOV
            radius.
    """

    # 2 px, chosen on the synthetic validation split (docs/choices.md): guided-backprop maps are
    # edge-like, and peaks of a map smoothed at 1 px often sit beside a lesion.
    sigma: float = 2.0
    min_distance: int = cand_lib.DEFAULT_MIN_DISTANCE
    max_candidates: int = cand_lib.DEFAULT_MAX_CANDIDATES
    # Chosen on the synthetic validation split at 256 px (docs/choices.md). Since lesions reach
    # the rim (generator v2) it is worth only +0.001 AS10 there: kept for real photographs, whose
    # rim carries halo and reflections the synthetic images lack.
    border: int = 6
    exclude_disc: bool = True
    disc_radius_fraction: float = cand_lib.DEFAULT_DISC_RADIUS_FRACTION
    method: str = cand_lib.DEFAULT_METHOD
    level: float = cand_lib.DEFAULT_LEVEL

    def __post_init__(self):
        cand_lib.check_options(self.sigma, self.min_distance, 0.0, self.max_candidates,
                               self.border, self.method, self.level)
        if not isinstance(self.exclude_disc, (bool, np.bool_)):
            raise TypeError("Expected exclude_disc to be True or False. "
                            f"Received: exclude_disc={self.exclude_disc!r}")
        if not is_real(self.disc_radius_fraction) or not 0 < self.disc_radius_fraction < np.inf:
            raise ValueError("Expected a finite disc_radius_fraction > 0. "
                             f"Received: disc_radius_fraction={self.disc_radius_fraction!r}")
        # Plain Python numbers: the params are JSON, and two equal settings compare equal.
        for name, kind in (("sigma", float), ("min_distance", int), ("exclude_disc", bool),
                           ("disc_radius_fraction", float), ("level", float)):
            object.__setattr__(self, name, kind(getattr(self, name)))
        if self.max_candidates is not None:
            object.__setattr__(self, "max_candidates", int(self.max_candidates))
        object.__setattr__(self, "border",
                           int(self.border) if is_int(self.border) else float(self.border))

    def to_params(self):
        """The options as metrics.json and replicate.json record them (``"candidates"``): one
        entry per attribute, under its own name (the keys files written before this method
        existed hold)."""
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}

    @classmethod
    def from_params(cls, params):
        """The options a record was made with (:meth:`to_params`' keys; other keys ignored).

        Records written before ``method`` and ``level`` existed found peaks (the defaults).
        """
        names = {field.name for field in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in params.items() if k in names})


@dataclasses.dataclass
class ImageCandidates:
    """What the FROC needs of one image: its grade, lesion label maps and candidates per map."""

    id: str
    grade: object
    lesions: dict           # type -> (H, W) bool
    candidates: dict        # map name -> (K, 3) float64
    stop_reason: str
    iterations: int
    # (H, W) int16: the first inpainted erase mask covering each pixel, -1 where none
    # (:func:`erasure_order`); None unless collected with ``erasures=True``.
    erased_at: object = None


def match_ids(store_ids, dataset, *, allow_partial=False):
    """Pair the result store's images with annotated dataset records.

    Args:
        store_ids: iterable of complete image ids in the result store.
        dataset: dataset (records with ``id`` and ``lesion_types``).
        allow_partial: evaluate on the intersection when ids are missing on either side.

    Returns:
        (records, notes): the annotated records to evaluate (dataset order) and a list of
        notes about what was left out.

    Raises:
        ValueError: when ids are missing on either side (listing them) without
            ``allow_partial``, or when nothing is left to evaluate.
    """
    store_ids = set(store_ids)
    by_id = {r.id: r for r in dataset}
    not_in_data = sorted(store_ids - set(by_id))
    annotated = {i for i in store_ids & set(by_id) if by_id[i].lesion_types}
    unannotated = sorted((store_ids & set(by_id)) - annotated)
    notes = []
    if not_in_data:
        message = (f"{len(not_in_data)} result(s) have no image in the dataset: "
                   f"{_shown(not_in_data)}")
        if not allow_partial:
            raise PartialResultsError("Expected every result to have an image in the dataset "
                                      f"(or allow_partial=True). Received: {message}", not_in_data)
        notes.append(message)
    if unannotated:
        notes.append(f"{len(unannotated)} image(s) have no lesion annotation and are left out: "
                     f"{_shown(unannotated)}")
    records = [r for r in dataset if r.id in annotated]
    if not records:
        raise ValueError("Expected results for annotated images. Received: no image in both the "
                         "result file and the dataset has lesion annotations")
    return records, notes


def records_for(results, dataset, *, allow_partial=False, force=False):
    """The annotated records to evaluate for a result file, and notes on what is left out.

    :func:`match_ids` on the file's complete images; images of an interrupted run that are not
    complete are left out and counted in the first note. A file whose last refine run did not
    finish (its record in the file has no end) holds only part of what the run planned.

    Args:
        results: str, result file.
        dataset: the dataset the results were made from.
        allow_partial: as :func:`match_ids`; also evaluate the results of an unfinished run.
        force: evaluate against a dataset whose fingerprint differs from the one the results
            were made from (recorded as ``params["data"]`` by refine runs that know it).

    Returns:
        (records, notes) as :func:`match_ids`.

    Raises:
        ProvenanceError: another dataset than the results', without ``force``.
        PartialResultsError: a run that did not finish, without ``allow_partial``.
        ValueError: as :func:`match_ids`.
    """
    with ResultStore(results) as store:
        ids, incomplete = store.complete_ids(), store.n_incomplete
        unfinished, made_from = store.unfinished_runs(), store.params.get("data")
    check_dataset(made_from, dataset, results, force=force)
    if unfinished:
        last = unfinished[-1]
        message = (f"the refine run started {last['started']} did not finish: it planned "
                   f"{last['planned']} images, and {len(ids)} are complete in {results!r} "
                   "(rerun the same refine command to finish it)")
        if not allow_partial:
            raise PartialResultsError("Expected results of finished refine runs (or "
                                      f"allow_partial=True). Received: {message}", ())
        notes = [f"Partial results: {message}."]
    else:
        notes = []
    records, more = match_ids(ids, dataset, allow_partial=allow_partial)
    notes += more
    if incomplete:
        notes.insert(0, f"{incomplete} image(s) of an interrupted run are incomplete and left "
                        f"out; {len(ids)} complete.")
    return records, notes


def check_dataset(made_from, dataset, results, *, force=False):
    """Refuse a dataset whose fingerprint differs from ``made_from`` (a result file's
    ``params["data"]``; None: not recorded, nothing to check) unless ``force``."""
    from dr_saliency.fundus.datasets import dataset_fingerprint

    if made_from is None or force:
        return
    given = dataset_fingerprint(dataset)
    if given != made_from:
        raise ProvenanceError(
            f"Expected the dataset {results!r} was made from (or force=True). Received: a "
            f"dataset whose fingerprint {given[:12]} differs from the results' {made_from[:12]}",
            ["data"])


def _shown(ids, limit=8):
    return ", ".join(ids[:limit]) + (" ..." if len(ids) > limit else "")


def collect(store_path, records, options=None, *, decay=None, combine=None, normalize=None,
            on_progress=None, erasures=False):
    """Candidates of s_0 and S and the lesion masks of each record.

    Args:
        store_path: str, result file.
        records: the annotated records to evaluate (:func:`match_ids`).
        options: CandidateOptions.
        decay, combine, normalize: how S is combined and both maps are scaled
            (:class:`~dr_saliency.core.maps.Combination`); None takes the run's own setting. Cheap: no network, so combination rules can be
            compared on the same stored maps.
        on_progress: optional ``on_progress(label, total) -> advance(k=1)``
            (:mod:`dr_saliency.core.progress`): one phase, "Candidates", advanced per image.
        erasures: also keep, per image, where each refinement iteration inpainted
            (``ImageCandidates.erased_at``, :func:`erasure_order`), for
            :mod:`dr_saliency.lesions.fate`.

    Returns:
        list of ImageCandidates.
    """
    options = options or CandidateOptions()
    advance = phase(on_progress, "Candidates", len(records))
    out = []
    with ResultStore(store_path) as store:
        for rec in records:
            result = store.read(rec.id)
            image = rec.load_image()
            fov = np.asarray(rec.load_fov(image), bool)
            scoring = Combination.from_params(result.params, decay=decay, combine=combine,
                                              normalize=normalize)
            found, _ = image_candidates(result, image, fov, options, scoring=scoring,
                                        disc=_disc(rec, image, fov, options))
            out.append(ImageCandidates(
                rec.id, rec.grade, rec.load_lesions(), found, result.stop_reason,
                result.iterations,
                erasure_order(result.masks, result.iterations) if erasures else None))
            advance(1)
    return out


def erasure_order(masks, iterations):
    """Where each refinement iteration first inpainted: per pixel, the index ``i`` of the first
    erase mask ``masks[i]`` (the binarised ``s_i``, inpainted into ``I_{i+1}``) that covers it.

    Only the first ``iterations`` masks were inpainted; a last mask kept beyond them (a loop that
    stopped at a map, docs of :mod:`dr_saliency.refinement.loop`) was not, and does not count.

    Args:
        masks: (k, H, W) bool, a result's erase masks.
        iterations: int, n, the number of inpaintings (``RefineResult.iterations``).

    Returns:
        (H, W) int16: the iteration, or -1 where no inpainted mask covers the pixel.
    """
    masks = np.asarray(masks, dtype=bool)
    order = np.full(masks.shape[1:], -1, dtype=np.int16)
    for i in range(min(int(iterations), masks.shape[0]) - 1, -1, -1):
        order[masks[i]] = i   # from the last to the first: the earliest one stays
    return order


def image_candidates(result, image, fov, options=None, *, scoring=None, disc=None):
    """Candidates of s_0 and S of one refined image, and the two maps they come from.

    Args:
        result: the image's :class:`~dr_saliency.refinement.result.RefineResult`.
        image: ``(H, W, 3)`` uint8, the refined image (for the optic disc estimate).
        fov: ``(H, W)`` bool field of view.
        options: :class:`CandidateOptions` (None: the defaults).
        scoring: :class:`~dr_saliency.core.maps.Combination` (None: the run's own setting).
        disc: optional ``(H, W)`` bool optic disc to exclude; None estimates it when
            ``options.exclude_disc``.

    Returns:
        ``(candidates, maps)``: dicts ``{"s0": ..., "S": ...}`` of ``(K, 3)`` float64
        ``(row, col, score)`` arrays and of the ``(H, W)`` float32 maps on one scale.
    """
    options = options or CandidateOptions()
    scoring = Combination.from_params(result.params) if scoring is None else scoring
    if options.exclude_disc and disc is None:
        disc = _disc(None, image, fov, options)
    maps = dict(zip(MAP_NAMES, scoring.scored(result.maps, result.masks, fov)))
    found = {name: cand_lib.detect_candidates(
        smap.astype(np.float32), fov, sigma=options.sigma, min_distance=options.min_distance,
        max_candidates=options.max_candidates, exclude=disc if options.exclude_disc else None,
        border=options.border, method=options.method, level=options.level)
        for name, smap in maps.items()}
    return found, maps


def _disc(rec, image, fov, options):
    if not options.exclude_disc:
        return None
    disc = rec.load_optic_disc() if hasattr(rec, "load_optic_disc") else None
    if disc is not None and disc.any():
        return disc
    return cand_lib.estimate_optic_disc(image, fov,
                                        radius_fraction=options.disc_radius_fraction).mask


def lesion_union(lesions, types=LESION_TYPES):
    """Union of an image's lesion masks of ``types`` ((H, W) bool), or None when it has none
    of them annotated (``lesions`` as ``Record.load_lesions()`` returns, None allowed)."""
    masks = [lesions[t] for t in types if t in (lesions or {})]
    return np.logical_or.reduce(masks) if masks else None


def froc_groups(items, *, stages=(2, 3, 4), types=LESION_TYPES):
    """The image groups :func:`froc_report` scores, and the lesion mask of each image in each.

    ``"all"`` (every lesion type), ``"stage N"`` (every type, images graded N; stages without
    images left out) and ``"type T"`` (T's mask, images where T is annotated); images without a
    mask of the group's types are left out of it.

    Args:
        items: list of ImageCandidates.
        stages, types: as :func:`froc_report`.

    Returns:
        dict name -> (indices into ``items``, list of (H, W) bool masks, one per index).
    """
    groups = {"all": (range(len(items)), LESION_TYPES)}
    for stage in stages:
        chosen = [k for k, i in enumerate(items) if i.grade == stage]
        if chosen:
            groups[f"stage {stage}"] = (chosen, LESION_TYPES)
    for t in types:
        if any(t in i.lesions for i in items):
            groups[f"type {t}"] = ([k for k, i in enumerate(items) if t in i.lesions], (t,))
    out = {}
    for name, (chosen, kinds) in groups.items():
        masks = [lesion_union(items[k].lesions, kinds) for k in chosen]
        keep = [j for j, m in enumerate(masks) if m is not None]
        out[name] = ([chosen[j] for j in keep], [masks[j] for j in keep])
    return out


def froc_report(items, *, stages=(2, 3, 4), types=LESION_TYPES, tolerance=0, n_boot=1000, seed=0):
    """FROC of s_0 and S: all images, per DR stage and per lesion type, with bootstraps.

    Groups: ``"all"`` (every image, every lesion type), ``"stage N"`` for each stage in
    ``stages`` that has images, ``"type T"`` for each lesion type present in the annotations
    (a candidate that hits no lesion of that type is a false positive for that type's curve).

    Args:
        items: list of ImageCandidates (:func:`collect`).
        stages: DR stages to report separately (the paper: referable stages 2-4); "all" and
            the stage groups count every lesion type.
        types: lesion types reported separately (empty: none).
        tolerance: float, FROC hit tolerance in px (docs/contracts.md#froc-rules).
        n_boot: int, bootstrap replicates (over images) for the 95% intervals.
        seed: int.

    Returns:
        dict group -> {"n_images", "n_lesions", "s0": {"froc", "bootstrap"}, "S": {...},
        "paired": PairedBootstrapResult (S against s_0)}; ``froc`` are FROCResult objects.
    """
    report = {}
    for name, (indices, lesions) in froc_groups(items, stages=stages, types=types).items():
        chosen = [items[k] for k in indices]
        entry = {"n_images": len(chosen)}
        for map_name in MAP_NAMES:
            cands = [i.candidates[map_name] for i in chosen]
            result = froc_lib.froc(cands, lesions, tolerance=tolerance)
            boot = froc_lib.bootstrap(cands, lesions, tolerance=tolerance, n_boot=n_boot,
                                      seed=seed, curve_rates=CURVE_RATES)
            entry[map_name] = {"froc": result, "bootstrap": boot}
        entry["n_lesions"] = entry["s0"]["froc"].n_lesions
        entry["paired"] = froc_lib.paired_bootstrap(
            [i.candidates["s0"] for i in chosen], [i.candidates["S"] for i in chosen], lesions,
            tolerance=tolerance, n_boot=n_boot, seed=seed)
        report[name] = entry
    return report


def report_to_dict(report):
    """JSON-ready form of :func:`evaluate`'s report (curves, summaries, intervals, gains)."""
    out = {}
    for name, entry in report.items():
        out[name] = {"n_images": entry["n_images"], "n_lesions": int(entry["n_lesions"]),
                     "paired_S_minus_s0": entry["paired"].to_dict()}
        for map_name in MAP_NAMES:
            out[name][map_name] = {"froc": entry[map_name]["froc"].to_dict(),
                                   "bootstrap": entry[map_name]["bootstrap"].to_dict()}
        if "fate" in entry:  # the lesion fates at the budget (dr_saliency.lesions.fate)
            out[name]["lesion_fate"] = entry["fate"].to_dict()
    return out


def summary_rows(report):
    """One row per group: score and average sensitivity of s_0 and S, relative gains, CIs."""
    rows = []
    for name, entry in report.items():
        p = entry["paired"]
        row = {"group": name, "images": entry["n_images"], "lesions": int(entry["n_lesions"])}
        for map_name in MAP_NAMES:
            b = entry[map_name]["bootstrap"]
            row[f"{map_name}_score"] = b.score
            row[f"{map_name}_score_ci"] = tuple(b.score_interval)
            row[f"{map_name}_as10"] = b.average_sensitivity
            row[f"{map_name}_as10_ci"] = tuple(b.average_sensitivity_interval)
        row["gain_score"] = p.score.relative
        row["gain_score_ci"] = tuple(p.score.relative_interval)
        row["gain_as10"] = p.average_sensitivity.relative
        row["gain_as10_ci"] = tuple(p.average_sensitivity.relative_interval)
        rows.append(row)
    return rows
