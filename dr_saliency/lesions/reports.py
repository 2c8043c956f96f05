"""Files made from evaluation results: metrics JSON, curve CSV, FROC figures, summary tables.

Kept apart from the computations (:mod:`dr_saliency.lesions.localize`, :mod:`dr_saliency.lesions.froc`) so that
those return data and this module decides how it is written. No TensorFlow.
"""

import csv
import io
import math
import os

import numpy as np

from dr_saliency.core.files import write_figure, write_json, write_text
from dr_saliency.figures import plots
from dr_saliency.lesions.fate import FATES, LESION_COLUMNS
from dr_saliency.lesions.localize import MAP_NAMES, report_to_dict, summary_rows

MAP_LABELS = {"s0": "s_0 (one map)", "S": "S (iterative)"}

#: A relative gain of S over an s_0 below this (AS10 or 7-point score) is not reported, in any
#: report (the froc table, the demo's REPORT.md, replicate's tables): over a map that finds
#: almost nothing it is noise that reads as +1076% or -100%.
MIN_GAIN_BASE = 0.01

#: (s_0's figure, its relative gain) in a summary row (:func:`localize.summary_rows`).
GAIN_BASES = (("s0_as10", "gain_as10"), ("s0_score", "gain_score"))


def relative_gain(base, gain):
    """``gain``, or None where s_0's figure ``base`` is below :data:`MIN_GAIN_BASE`."""
    if base is None or gain is None or base < MIN_GAIN_BASE:
        return None
    return gain


def defined_gains(row):
    """A summary row (dict) with its relative gains over an s_0 below :data:`MIN_GAIN_BASE`, and
    their intervals, set to None; the row given is left alone."""
    row = dict(row)
    for base, gain in GAIN_BASES:
        if row.get(base) is not None and relative_gain(row[base], row[gain]) is None:
            row[gain], row[gain + "_ci"] = None, [None, None]
    return row


def _panels(report, prefix):
    return {name: {MAP_LABELS[m]: (entry[m]["froc"], entry[m]["bootstrap"]) for m in MAP_NAMES}
            for name, entry in report.items() if name.startswith(prefix)}


#: The file that marks a complete FROC folder, written last.
METRICS_FILE = "metrics.json"


def remove_done_marker(out_dir):
    """Remove the metrics.json of an earlier evaluation in ``out_dir`` (none: nothing to do)."""
    try:
        os.remove(os.path.join(out_dir, METRICS_FILE))
    except FileNotFoundError:
        pass


def write_froc(report, out_dir, *, params=None, formats=("png", "pdf")):
    """Write a FROC evaluation: curves.csv, figures per stage and per type, then metrics.json.

    metrics.json is written last, each file atomically, so that its presence means the whole
    evaluation is there (the demo's froc step is done once it exists).

    Args:
        report: :func:`dr_saliency.lesions.localize.froc_report` output.
        out_dir: str, created if missing.
        params: dict stored in metrics.json under "params".
        formats: figure formats.

    Returns:
        list of str paths written (metrics.json last).
    """
    os.makedirs(out_dir, exist_ok=True)
    remove_done_marker(out_dir)
    paths = []
    rows = io.StringIO(newline="")
    writer = csv.writer(rows)
    writer.writerow(["group", "map", "threshold", "fps_per_image", "sensitivity"])
    for name, entry in report.items():
        for m in MAP_NAMES:
            r = entry[m]["froc"]
            for t, fp, se in zip(r.thresholds, r.fps_per_image, r.sensitivity):
                writer.writerow([name, m, f"{t:.6g}", f"{fp:.6g}", f"{se:.6g}"])
    path = os.path.join(out_dir, "curves.csv")
    write_text(path, rows.getvalue())
    paths.append(path)
    for prefix, stem, title in (("stage", "froc_stages", "FROC per DR stage"),
                                ("type", "froc_types", "FROC per lesion type"),
                                ("all", "froc_all", "FROC, all lesions")):
        panels = _panels(report, prefix)
        if not panels:
            continue
        fig = plots.froc_figure(panels, title=title)
        for fmt in formats:
            path = os.path.join(out_dir, f"{stem}.{fmt}")
            write_figure(fig, path, dpi=200)
            paths.append(path)
    metrics = {"params": params or {}, "groups": report_to_dict(report),
               "summary": summary_rows(report)}
    path = os.path.join(out_dir, METRICS_FILE)
    write_json(path, metrics, default=_json_default)
    paths.append(path)
    return paths


def write_lesion_fate(fates, out_dir):
    """Write the per-lesion analysis: lesions.csv, lesion_fate.csv and lesion_fate.md.

    Args:
        fates: :class:`dr_saliency.lesions.fate.LesionFates`.
        out_dir: str, created if missing (the FROC's folder).

    Returns:
        list of str paths written.
    """
    os.makedirs(out_dir, exist_ok=True)
    paths = [os.path.join(out_dir, name)
             for name in ("lesions.csv", "lesion_fate.csv", "lesion_fate.md")]
    _write_csv(paths[0], LESION_COLUMNS, fates.rows)
    summary = [_fate_group_row(name, g) for name, g in fates.groups.items()]
    summary += [{"by": "type x stage", **r, "stage": _shown_value(r, "stage")}
                for r in fates.by_type_and_stage()]
    summary += [{"by": "type x iteration", **r, "iteration": _shown_value(r, "inpainted_at")}
                for r in fates.by_iteration()]
    _write_csv(paths[1], _FATE_COLUMNS, summary)
    budget = f"{fates.fp_rate:g} FP/image"
    lines = [f"# Lesion fate at {budget}", "",
             f"Which lesions s_0 and S find within {budget}: each map at the last point of each "
             "group's own FROC curve with at most that many false positives (candidates, "
             "normalisation, images and hit rule of the FROC; tolerance "
             f"{fates.tolerance:g} px). kept: found by both; lost: by s_0 only; gained: by S "
             "only; missed: by neither. One row per lesion: lesions.csv "
             "(docs/file-formats.md#froc-folder).", "",
             "## Per FROC group", "", _fate_group_table(fates.groups), "",
             "## Per lesion type and stage (each type on its own curve)", "",
             _fate_tally_table(fates.by_type_and_stage(), "stage"), "",
             "## Per lesion type and the iteration that first inpainted it", "",
             "Iteration i: the erase mask of s_i (inpainted into I_{i+1}) is the first to cover "
             "part of the lesion; never: no inpainted mask touches it.", "",
             _fate_tally_table(fates.by_iteration(), "inpainted_at"), ""]
    write_text(paths[2], "\n".join(lines))
    return paths


def _fate_group_row(name, group):
    row = {"by": "group", "group": name, "lesions": group.n_lesions, **group.counts}
    for m in MAP_NAMES:
        p = group.points[m]
        row.update({f"{m}_found": p.found, f"{m}_sensitivity": p.sensitivity,
                    f"{m}_fp_per_image": p.fps_per_image, f"{m}_threshold": p.threshold})
    return row


def _shown_value(row, key):
    """A summary row's stage or iteration as shown: None is "ungraded" or "never"."""
    if row[key] is not None:
        return row[key]
    return "ungraded" if key == "stage" else "never"


_FATE_COLUMNS = ("by", "group", "type", "stage", "iteration", "lesions", *FATES, "s0_found",
                 "S_found", "s0_sensitivity", "S_sensitivity", "s0_fp_per_image",
                 "S_fp_per_image", "s0_threshold", "S_threshold")


def _write_csv(path, columns, rows):
    """Rows (dicts) as CSV: None is an empty cell, floats with 6 significant digits."""
    def cell(value):
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return ""
        return f"{value:.6g}" if isinstance(value, float) else value

    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(columns)
    for row in rows:
        writer.writerow([cell(row.get(c)) for c in columns])
    write_text(path, text.getvalue())


def fate_table(report):
    """A Markdown table of the lesion fates of a FROC report's groups (those that have them:
    ``report[group]["fate"]``, :func:`dr_saliency.jobs.froc.froc_run` with ``lesions_fp``)."""
    return _fate_group_table({n: e["fate"] for n, e in report.items() if "fate" in e})


def _fate_group_table(groups):
    lines = ["| group | images | lesions | s_0: FP/image, found | S: FP/image, found | "
             "kept | lost | gained | missed |", "|---|---:|---:|---|---|---:|---:|---:|---:|"]
    for name, g in groups.items():
        found = [f"{g.points[m].fps_per_image:.2f}, {g.points[m].found} "
                 f"({_fmt(g.points[m].sensitivity)})" for m in MAP_NAMES]
        lines.append(f"| {name} | {g.n_images} | {g.n_lesions} | {found[0]} | {found[1]} | "
                     + " | ".join(str(g.counts[f]) for f in FATES) + " |")
    return "\n".join(lines)


def _fate_tally_table(rows, key):
    heading = "stage" if key == "stage" else "iteration"
    lines = [f"| type | {heading} | lesions | s_0 found | S found | kept | lost | gained | "
             "missed |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['type']} | {_shown_value(r, key)} | {r['lesions']} | "
                     f"{r['s0_found']} | {r['S_found']} | "
                     + " | ".join(str(r[f]) for f in FATES) + " |")
    return "\n".join(lines)


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def _fmt(value, ci=None, percent=False):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    scale, unit = (100.0, "%") if percent else (1.0, "")
    text = f"{value * scale:+.1f}{unit}" if percent else f"{value:.3f}"
    if ci is not None and all(c is not None and not math.isnan(c) for c in ci):
        low, high = (c * scale for c in ci)
        text += f" [{low:+.1f}, {high:+.1f}]" if percent else f" [{low:.3f}, {high:.3f}]"
    return text


def summary_table(report):
    """A Markdown table: per group, score and AS10 of s_0 and S with 95% CIs, relative gains."""
    return table_from_rows(summary_rows(report))


def table_from_rows(rows):
    """The Markdown table of :func:`summary_table`, from its rows (also as read from JSON), with
    the relative gains over an s_0 below :data:`MIN_GAIN_BASE` left out (and a line saying so)."""
    lines = ["| group | images | lesions | score s_0 | score S | gain | AS10 s_0 | AS10 S | gain |",
             "|---|---:|---:|---|---|---|---|---|---|"]
    withheld = False
    for given in rows:
        r = defined_gains(given)
        withheld |= any(r[gain] is None and given[gain] is not None for _, gain in GAIN_BASES)
        lines.append(
            f"| {r['group']} | {r['images']} | {r['lesions']} | "
            f"{_fmt(r['s0_score'], r['s0_score_ci'])} | {_fmt(r['S_score'], r['S_score_ci'])} | "
            f"{_fmt(r['gain_score'], r['gain_score_ci'], True)} | "
            f"{_fmt(r['s0_as10'], r['s0_as10_ci'])} | {_fmt(r['S_as10'], r['S_as10_ci'])} | "
            f"{_fmt(r['gain_as10'], r['gain_as10_ci'], True)} |")
    if withheld:
        lines += ["", f"n/a: no relative gain is given over an s_0 below {MIN_GAIN_BASE:g}, where "
                      "it would be noise."]
    return "\n".join(lines)
