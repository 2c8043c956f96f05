"""Why S gains or loses, lesion by lesion: which ground-truth lesions s_0 and S find within a
false-positive budget, which S keeps, loses and gains, and when the refinement inpainted each.

The FROC (:mod:`dr_saliency.lesions.froc`) says how many lesions a map finds; this module says
which. It reuses the FROC's own matching, so its counts are the FROC's numbers:

- **Groups and curves.** The groups are those of :func:`dr_saliency.lesions.localize.froc_report`
  (``"all"``, ``"stage N"``, ``"type T"``; :func:`~dr_saliency.lesions.localize.froc_groups`), with
  the same images, candidates (same normalisation and candidate settings) and tolerance. Each map
  of each group has its own FROC curve.
- **The FP budget.** For ``fp_rate`` false positives per image, each map's operating point on a
  group's curve is the last point with at most ``floor(fp_rate * images)`` false positives
  (:meth:`~dr_saliency.lesions.froc.FROCResult.operating_point`: the lowest score threshold within
  the budget). A lesion of the group is *found* by the map when the highest score among the
  candidates that hit it (:func:`~dr_saliency.lesions.froc.match_lesions`) is at least that
  threshold. The fraction found is then the curve's sensitivity at that point, which is
  ``sensitivity_at(fp_rate)`` whenever the curve has a point at exactly that many false positives
  or ends before it (always when ``fp_rate * images`` is an integer and no two false positives
  share a score); otherwise ``sensitivity_at`` interpolates on towards the next point, which no
  set of found lesions realises, and is higher by less than that point's gain.
- **Fates.** ``kept``: found by s_0 and by S; ``lost``: by s_0, not by S; ``gained``: by S, not
  by s_0; ``missed``: by neither. Each map is read at its own operating point.
- **A lesion** (a row of lesions.csv) is an 8-connected component of one type's mask, as the
  per-type FROC counts it, so its ``fate`` is on its type's curve. ``fate_in_stage`` and
  ``fate_in_all`` are on its image's stage curve and on the all-lesion curve, whose lesions are
  the components of the union of every type: a lesion touching one of another type is one lesion
  there, and both rows carry that union lesion's fate.
- **Inpainted at iteration i**: ``mask_i`` (the binarised ``s_i``, inpainted into ``I_{i+1}``;
  0 is s_0's mask) is the first erase mask that covers at least one pixel of the lesion. Only the
  masks that were inpainted count (``RefineResult.iterations`` of them); None when none covers
  it. ``erased_fraction``: the share of its pixels that any inpainted mask covers.

Pure numpy / scipy: no TensorFlow here.

Public API::

    lesion_fates(items, *, fp_rate=10, stages=(2, 3, 4), tolerance=0) -> LesionFates
    fate_of(found_s0, found_S) -> "kept" | "lost" | "gained" | "missed"
    check_fp_rate(value, name="fp_rate") -> float
"""

import dataclasses
import math

import numpy as np

from dr_saliency.core.checks import is_real
from dr_saliency.fundus.datasets.base import LESION_TYPES
from dr_saliency.lesions import froc as froc_lib
from dr_saliency.lesions.localize import MAP_NAMES, froc_groups

__all__ = ["ANY", "FATES", "GroupFate", "LESION_COLUMNS", "LesionFates", "OperatingPoint",
           "check_fp_rate", "fate_of", "lesion_fates"]

FATES = ("kept", "lost", "gained", "missed")
"""Found by both maps, by s_0 only, by S only, by neither."""

ANY = "any"
"""The type or stage of a summary row that pools all of them."""

LESION_COLUMNS = ("image", "stage", "type", "lesion", "area", "row", "col", "iterations",
                  "stop_reason", "inpainted_at", "erased_fraction", "s0_rank", "s0_score",
                  "S_rank", "S_score", "found_by_s0", "found_by_S", "fate", "fate_in_stage",
                  "fate_in_all")
"""The fields of a lesion row (:attr:`LesionFates.rows`), in lesions.csv's column order."""


def fate_of(found_s0, found_S):
    """``"kept"``, ``"lost"``, ``"gained"`` or ``"missed"``: a lesion found or not by each map."""
    return FATES[(0 if found_s0 else 2) + (0 if found_S else 1)]


def check_fp_rate(value, name="fp_rate"):
    """A finite number of false positives per image >= 0, as float; else ValueError."""
    if not is_real(value) or not 0 <= value < math.inf:
        raise ValueError(f"Expected a finite {name} >= 0 (false positives per image). "
                         f"Received: {name}={value!r}")
    return float(value)


@dataclasses.dataclass(frozen=True)
class OperatingPoint:
    """One map's operating point on one group's FROC curve (module docstring).

    Attributes:
        threshold: float, candidates with a score >= it are kept; inf when the budget keeps none.
        fps_per_image: float, false positives per image there (<= the budget).
        found: int, lesions found there.
        n_lesions: int, the group's lesions.
        sensitivity: float, ``found / n_lesions`` (NaN without lesions): the curve's sensitivity
            at the point.
    """

    threshold: float
    fps_per_image: float
    found: int
    n_lesions: int
    sensitivity: float


@dataclasses.dataclass(frozen=True)
class GroupFate:
    """The lesions of one FROC group at the budget: each map's operating point and the fates.

    Attributes:
        fp_rate: float, the budget, false positives per image.
        n_images: int.
        n_lesions: int, the group's lesions as its FROC counts them.
        points: dict map name (``"s0"``, ``"S"``) -> :class:`OperatingPoint`.
        counts: dict fate -> int, over the group's lesions (in :data:`FATES` order).
    """

    fp_rate: float
    n_images: int
    n_lesions: int
    points: dict
    counts: dict

    def to_dict(self):
        """A JSON-ready dict (an infinite threshold and a NaN sensitivity become None)."""
        def number(v):
            return None if not math.isfinite(v) else v
        return {"fp_rate": self.fp_rate, "n_images": self.n_images, "n_lesions": self.n_lesions,
                "points": {m: {k: number(v) for k, v in dataclasses.asdict(p).items()}
                           for m, p in self.points.items()},
                "counts": dict(self.counts)}


@dataclasses.dataclass(frozen=True)
class LesionFates:
    """What :func:`lesion_fates` finds.

    Attributes:
        fp_rate: float, the budget, false positives per image.
        tolerance: float, the FROC hit tolerance (px).
        groups: dict FROC group name -> :class:`GroupFate`, in the FROC report's order.
        rows: list of dicts with the :data:`LESION_COLUMNS`, one per lesion (by image, type,
            label): ``stage`` the image's grade (None: ungraded); ``lesion`` its label within
            the image's mask of its type (:func:`~dr_saliency.lesions.froc.label_lesions`);
            ``area`` in px; ``row``, ``col`` its centroid; ``iterations``, ``stop_reason`` the
            image's; ``inpainted_at`` int or None; ``<map>_rank`` (1 = the image's
            highest-scoring candidate) and ``<map>_score`` of the candidate that finds it on its
            type's curve, None when none hits it; ``found_by_<map>`` and ``fate`` on its type's
            curve; ``fate_in_stage`` (None when its stage is not reported) and ``fate_in_all``.
    """

    fp_rate: float
    tolerance: float
    groups: dict
    rows: list

    def by_type_and_stage(self):
        """Fates (on the type curves) per lesion type and stage, with :data:`ANY` totals.

        Returns:
            list of dicts: ``type``, ``stage`` (a grade, None for ungraded, or :data:`ANY`),
            ``lesions``, one count per fate, ``s0_found``, ``S_found``.
        """
        return _tally(self.rows, "stage")

    def by_iteration(self):
        """Fates (on the type curves) per lesion type and the iteration that inpainted it.

        Returns:
            list of dicts as :meth:`by_type_and_stage` with ``inpainted_at`` (an iteration, or
            None: never) in place of ``stage``.
        """
        return _tally(self.rows, "inpainted_at")


def _tally(rows, key):
    """Counts of ``fate`` per (type, value of ``key``), types in LESION_TYPES order then ANY;
    per type, the values (ints) ascending, then None, then ANY."""
    types = [t for t in LESION_TYPES if any(r["type"] == t for r in rows)]
    out = []
    for t in types + [ANY]:
        chosen = [r for r in rows if t in (ANY, r["type"])]
        values = sorted({r[key] for r in chosen}, key=lambda v: (v is None, v or 0))
        for value in values + [ANY]:
            fates = [r["fate"] for r in chosen if value in (ANY, r[key])]
            counts = {f: fates.count(f) for f in FATES}
            out.append({"type": t, key: value, "lesions": len(fates), **counts,
                        "s0_found": counts["kept"] + counts["lost"],
                        "S_found": counts["kept"] + counts["gained"]})
    return out


def _score_group(items, indices, masks, fp_rate, tolerance):
    """One group's fates: (GroupFate, {map: [LesionMatch per image]}, {map: [found per image]})."""
    matches, found, points = {}, {}, {}
    for name in MAP_NAMES:
        cands = [items[k].candidates[name] for k in indices]
        curve = froc_lib.froc(cands, masks, tolerance=tolerance)
        j = curve.operating_point(fp_rate)
        threshold = float(curve.thresholds[j]) if j >= 0 else math.inf
        matches[name] = froc_lib.match_lesions(cands, masks, tolerance=tolerance)
        found[name] = [m.best_score >= threshold for m in matches[name]]
        n_found = int(sum(int(f.sum()) for f in found[name]))
        points[name] = OperatingPoint(
            threshold=threshold, fps_per_image=float(curve.fps_per_image[j]) if j >= 0 else 0.0,
            found=n_found, n_lesions=curve.n_lesions,
            sensitivity=n_found / curve.n_lesions if curve.n_lesions else math.nan)
    s0 = np.concatenate(found["s0"]) if found["s0"] else np.zeros(0, bool)
    S = np.concatenate(found["S"]) if found["S"] else np.zeros(0, bool)
    counts = {f: int(np.count_nonzero(c)) for f, c in
              zip(FATES, (s0 & S, s0 & ~S, ~s0 & S, ~s0 & ~S))}
    group = GroupFate(fp_rate=fp_rate, n_images=len(indices),
                      n_lesions=points["s0"].n_lesions, points=points, counts=counts)
    return group, matches, found


def _components(labels, erased_at):
    """Per label 1..L of ``labels`` (consecutive, as the FROC numbers them): area, centroid,
    first pixel, first inpainting iteration (-1: never) and the number of its pixels any
    inpainted mask covers (``erased_at``: :func:`~dr_saliency.lesions.localize.erasure_order`)."""
    n = int(labels.max()) if labels.size else 0
    rows, cols = np.nonzero(labels)     # raster order
    lab = labels[rows, cols].astype(np.int64)
    area = np.bincount(lab, minlength=n + 1)[1:]
    centroid = np.column_stack([np.bincount(lab, rows, n + 1)[1:],
                                np.bincount(lab, cols, n + 1)[1:]]) / np.maximum(area, 1)[:, None]
    _, first = np.unique(lab, return_index=True)
    when = erased_at[rows, cols].astype(np.int64)
    hit = when >= 0
    never = np.iinfo(np.int64).max
    first_iteration = np.full(n + 1, never)
    np.minimum.at(first_iteration, lab[hit], when[hit])
    first_iteration = np.where(first_iteration == never, -1, first_iteration)
    covered = np.bincount(lab[hit], minlength=n + 1)
    return area, centroid, (rows[first], cols[first]), first_iteration[1:], covered[1:]


def lesion_fates(items, *, fp_rate=froc_lib.DEFAULT_MAX_FP, stages=(2, 3, 4), tolerance=0):
    """Which lesions s_0 and S find within ``fp_rate`` false positives per image, and when the
    refinement inpainted each (rules: module docstring).

    Args:
        items: list of :class:`~dr_saliency.lesions.localize.ImageCandidates` collected with
            ``erasures=True`` (:func:`~dr_saliency.lesions.localize.collect`), as for the FROC.
        fp_rate: float >= 0, false positives per image of the operating point (default 10, the
            upper end of AS10).
        stages: DR stages with a group of their own, as
            :func:`~dr_saliency.lesions.localize.froc_report`.
        tolerance: float >= 0, the FROC hit tolerance (px), as the FROC's.

    Returns:
        :class:`LesionFates`.

    Raises:
        ValueError: a bad ``fp_rate``; no items; items collected without ``erasures=True``;
            as :func:`~dr_saliency.lesions.froc.froc` for bad candidates or masks.
    """
    fp_rate = check_fp_rate(fp_rate)
    if not items:
        raise ValueError("Expected at least one image. Received: items=[]")
    missing = [i.id for i in items if i.erased_at is None]
    if missing:
        raise ValueError("Expected candidates collected with erasures=True (where each iteration "
                         f"inpainted). Received: none for {len(missing)} image(s), e.g. "
                         f"{missing[0]!r}")
    groups, scored = {}, {}
    for name, (indices, masks) in froc_groups(items, stages=stages).items():
        group, matches, found = _score_group(items, indices, masks, fp_rate, tolerance)
        groups[name] = group
        scored[name] = ({k: p for p, k in enumerate(indices)}, matches, found)

    def union_fate(group_name, k, point):
        """The fate of the union lesion at ``point`` of item ``k`` in a union group."""
        if group_name not in scored:
            return None
        position, matches, found = scored[group_name]
        p = position[k]
        label = matches["s0"][p].labels[point] - 1
        return fate_of(found["s0"][p][label], found["S"][p][label])

    rows = []
    for t in LESION_TYPES:
        if f"type {t}" not in scored:
            continue
        position, matches, found = scored[f"type {t}"]
        for k, p in position.items():
            item = items[k]
            labels = matches["s0"][p].labels
            area, centroid, first, first_iteration, covered = _components(labels, item.erased_at)
            for j in range(area.size):
                point = (first[0][j], first[1][j])
                row = {"image": item.id, "stage": item.grade, "type": t, "lesion": j + 1,
                       "area": int(area[j]), "row": round(float(centroid[j, 0]), 1),
                       "col": round(float(centroid[j, 1]), 1), "iterations": item.iterations,
                       "stop_reason": item.stop_reason,
                       "inpainted_at": int(first_iteration[j]) if first_iteration[j] >= 0 else None,
                       "erased_fraction": round(float(covered[j] / area[j]), 4)}
                for name in MAP_NAMES:
                    best = int(matches[name][p].best_candidate[j])
                    row[f"{name}_rank"] = best + 1 if best >= 0 else None
                    row[f"{name}_score"] = (float(matches[name][p].best_score[j])
                                            if best >= 0 else None)
                    row[f"found_by_{name}"] = bool(found[name][p][j])
                row["fate"] = fate_of(row["found_by_s0"], row["found_by_S"])
                row["fate_in_stage"] = union_fate(f"stage {item.grade}", k, point)
                row["fate_in_all"] = union_fate("all", k, point)
                rows.append((k, row))
    rows.sort(key=lambda kr: (kr[0], LESION_TYPES.index(kr[1]["type"]), kr[1]["lesion"]))
    return LesionFates(fp_rate=fp_rate, tolerance=float(tolerance), groups=groups,
                       rows=[r for _, r in rows])
