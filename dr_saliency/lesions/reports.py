"""Files made from evaluation results: metrics JSON, curve CSV, FROC figures, summary tables.

Kept apart from the computations (:mod:`dr_saliency.lesions.localize`, :mod:`dr_saliency.lesions.froc`) so that
those return data and this module decides how it is written. No TensorFlow.
"""

import csv
import io
import json
import math
import os

import numpy as np

from dr_saliency.core.files import write_figure, write_json, write_text
from dr_saliency.figures import plots
from dr_saliency.lesions.fate import FATES, LESION_COLUMNS
from dr_saliency.lesions.localize import MAP_NAMES, report_to_dict, summary_rows
from dr_saliency.refinement.store import read_params, stop_reason_counts

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
    path = os.path.join(out_dir, "metrics.json")
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
    with open(paths[2], "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
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

    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([cell(row.get(c)) for c in columns])


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
    return _table_from_rows(summary_rows(report))


def _timing_line(timings):
    """REPORT.md's line of step times (``- Time per step (s): synth 3, train 95, ...; total
    130 s.``), every step listed; a step done without a recorded time (None) shows as "not
    timed" and is left out of the total."""
    untimed = [k for k, v in timings.items() if v is None]
    total = sum(v for v in timings.values() if v is not None)
    shown = ", ".join(f"{k} {v:.0f}" if v is not None else f"{k} not timed"
                      for k, v in timings.items())
    return (f"- Time per step (s): {shown}; total {total:.0f} s"
            + (f" (without {', '.join(untimed)})" if untimed else "") + ".")


def write_demo_report(out, *, profile, timings, choice_seed=None, examples_rule=None):
    """Write ``REPORT.md`` of a demo folder from the files its steps wrote.

    Args:
        out: str, the demo folder (see :func:`dr_saliency.jobs.demo.run_demo`).
        profile: str, the demo profile.
        timings: dict step -> seconds (steps run in this or an earlier invocation), in step
            order; None for a step done without a recorded time. Every step is listed.
        choice_seed: int, the data seed on whose validation split the defaults were chosen
            (docs/choices.md); the report says whether the demo's data seed is that one.
        examples_rule: str, how the example images were picked, or None when the figures in
            ``out/figures`` were not picked by the demo's rule (said in the report).

    Returns:
        str, the path of REPORT.md.
    """
    def load(*parts):
        path = os.path.join(out, *parts)
        if not os.path.isfile(path):
            return None
        with open(path, encoding="utf-8") as f:
            return json.load(f)

    evaluation = load("evaluation", "evaluation.json")
    metrics = load("froc", "metrics.json")
    refine = load("refine.done.json")
    figures = load("figures", "done.json")
    config = load("run", "config.json")
    data = load("data", "synth.json")
    lines = [f"# dr-saliency demo ({profile} profile)", "",
             "Synthetic fundus images -> VGG-16 grader -> guided back-propagation saliency with "
             "iterative inpainting refinement -> lesion-level FROC of s_0 (one map) against S "
             "(the refined map), on the test split.", ""]
    if config:
        c = config["config"]
        lines += [f"- Training: {config['n_train']} images, validation {config['n_val']}; "
                  f"input {c['input_size']} px, width {c['width']}, {c['epochs']} epochs, "
                  f"{c['optimizer']} lr {c['learning_rate']} ({c['schedule']}, warm-up "
                  f"{c['warmup_epochs']} epoch)."]
    if evaluation:
        m = evaluation["metrics"]
        lines += [f"- Grading, test split ({evaluation['n_images']} images): quadratic kappa "
                  f"{m['kappa']:.3f} (95% CI {evaluation['kappa_ci'][0]:.3f}-"
                  f"{evaluation['kappa_ci'][1]:.3f}), referable AUC {m['auc']:.3f} (95% CI "
                  f"{evaluation['auc_ci'][0]:.3f}-{evaluation['auc_ci'][1]:.3f}); "
                  "[ROC](evaluation/roc.png), [confusion matrix](evaluation/confusion.png)."]
    refined = _refined(os.path.join(out, "refine.h5")) if refine else None
    if refined:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(refined["stop_reasons"].items()))
        lines += [f"- Refinement: {refined['n']} referable test images (stop reasons: "
                  f"{reasons or 'none'}); {refine['not_referable']} test images graded "
                  "non-referable were not refined."]
    lines += [_timing_line(timings), ""]
    lines += _one_seed_section(profile, data, config, choice_seed, refined)
    if metrics:
        lines += ["## Lesion-level FROC, s_0 against S", "",
                  "Score: mean sensitivity at 1/8, 1/4, 1/2, 1, 2, 4, 8 false positives per image; "
                  "AS10: average sensitivity from 0 to 10 FP/image; gain: (S - s_0) / s_0; "
                  "[brackets]: 95% bootstrap intervals over images (paired for the gain).", "",
                  _table_from_rows(metrics["summary"]), "",
                  "![FROC per stage](froc/froc_stages.png)", "",
                  "![FROC per lesion type](froc/froc_types.png)", ""]
    if figures:
        picked = (f"Picked {examples_rule}, not by their result, so they show the method as it "
                  "does on an ordinary image rather than where S gains most."
                  if examples_rule else
                  "Not picked by the demo's rule (by id): an earlier version picked the images "
                  "where S finds most more lesions than s_0, which favours S; remove figures/ "
                  "and rerun the demo to pick them by id.")
        lines += ["## Examples", "", f"{picked} Images: {', '.join(figures['ids'])}.", "",
                  "![Image, s_0 and S](figures/figure1_panels.png)", ""]
        lines += [f"![Iterations of {i}](figures/iterations_{i}.png)" for i in figures["ids"][:2]]
        lines += [""]
    path = os.path.join(out, "REPORT.md")
    write_text(path, "\n".join(lines))
    return path


def _refined(results):
    """What a demo's result file holds: ``n`` images, ``stop_reasons`` (reason -> count, over the
    whole file, whatever runs wrote it) and ``max_iterations`` (the loop's cap); None without a
    file."""
    if not os.path.isfile(results):
        return None
    reasons = stop_reason_counts(results)
    return {"n": sum(reasons.values()), "stop_reasons": reasons,
            "max_iterations": read_params(results).get("max_iterations")}


def _one_seed_section(profile, data, config, choice_seed, refined):
    """REPORT.md's lines on what one seed can show: the seed's status, where the spread across
    seeds is measured, and how many images ran to the iteration cap."""
    lines = ["## What one seed can show", ""]
    if data is not None:
        seed = data.get("seed")
        training = f" (training seed {config['config']['seed']})" if config else ""
        if choice_seed is not None and seed == choice_seed:
            status = ("the seed on whose validation split the defaults of the refinement and "
                      "the scoring were chosen (docs/choices.md). The test split was used for no "
                      "choice, but the settings were tuned to this draw of data and grader")
        else:
            status = (f"not the seed the defaults were chosen on ({choice_seed}, docs/choices.md)"
                      if choice_seed is not None else "one draw of data and grader")
        lines += [f"- Data seed {seed}{training}: {status}."]
    lines += ["- One seed is one draw: from seed to seed the grader, and with it the gain of S over "
              "s_0, changes more than between combination rules (docs/results.md gives the "
              "spread measured over seeds used for no choice). To measure it, run "
              f"`dr-saliency replicate --profile {profile} --seeds 1,2,3`: these steps once per "
              "seed, then the mean, standard deviation and range of every figure (REPLICATE.md)."]
    if refined and refined["n"]:
        capped = refined["stop_reasons"].get("max_iterations", 0)
        cap = refined["max_iterations"]
        lines += [f"- {capped} of the {refined['n']} refined images ({capped / refined['n']:.0%}) "
                  f"ran to the iteration cap{f' of {cap}' if cap is not None else ''} (stop "
                  "reason max_iterations): the grader still graded them referable with their "
                  "most salient regions inpainted, so S also combines maps of images that look "
                  "diseased to it after their lesions are gone."]
    return lines + [""]


def _table_from_rows(rows):
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
