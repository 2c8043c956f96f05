"""The method over several seeds: is the gain of S over s_0 a property of the method or of a draw?

For each seed the demo's pipeline runs into ``OUT/seed_<K>/`` with that seed for both the
synthetic data and the training (synth -> train -> evaluate -> refine the referable test
images). The stored maps are then scored under every combination rule of :data:`RULES` (no
re-refinement: S is recombined from the stored maps), s_0 and S always on one scale and with
the same candidates (``core.maps.scored_maps``). Per seed: the grader's kappa and AUC, the stop
reasons, AS10 of s_0 and S and the paired-bootstrap gain per stage and lesion type
(``seed_<K>/scores.json``). Across seeds: mean, standard deviation and range of every figure
(``replicate.json``, ``REPLICATE.md``) and a figure of the per-seed gains (``gains.png``/``.pdf``).

Everything is resumable: a seed's steps are skipped when their outputs are complete, and a
seed's scores when ``scores.json`` exists. ``replicate.json`` records the experiment's settings;
a folder holding another experiment is refused, with the differences listed. No TensorFlow at
import.
"""

import json
import os
import time

import numpy as np

from dr_saliency.jobs import demo as demo_lib
from dr_saliency.core import maps
from dr_saliency.core.errors import FolderInUseError
from dr_saliency.core.files import differences, read_json, write_figure, write_json, write_text
from dr_saliency.core.locks import lock_folder
from dr_saliency.core.progress import relabeled
from dr_saliency.lesions.reports import defined_gains
from dr_saliency.refinement.loop import run_params
from dr_saliency.refinement.store import stop_reason_counts

#: The combination rules every seed is scored with, from the same stored maps: ours (the
#: defaults, chosen on validation data) and the paper's decaying weighted mean.
RULES = {
    "ours": {"combine": maps.DEFAULT_COMBINE, "decay": maps.DEFAULT_DECAY},
    "paper": {"combine": "mean", "decay": 0.5},
}

#: Groups in the tables: the referable stages (the paper's Figure 2) and the lesion types.
GROUPS = ("all", "stage 2", "stage 3", "stage 4", "type MA", "type HE", "type EX", "type SE")

#: What is summarised across seeds, per rule and group.
METRICS = ("s0_as10", "S_as10", "gain_as10", "s0_score", "S_score", "gain_score")

FORMAT = "dr_saliency.replicate/1"


#: The largest seed: numpy's seeding (training, augmentation) takes 0 .. 2**32 - 1.
MAX_SEED = 2 ** 32 - 1


def parse_seeds(text):
    """``"1,2,3"`` -> ``[1, 2, 3]``: distinct integers from 0 to :data:`MAX_SEED`, at least one.

    Raises:
        ValueError: anything else, with the text received.
    """
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    try:
        seeds = [int(p) for p in parts]
    except ValueError:
        seeds = None
    if not seeds or not _good_seeds(seeds):
        raise ValueError(f"Expected comma-separated distinct integer seeds from 0 to {MAX_SEED}, "
                         f"e.g. 1,2,3. Received: seeds={text!r}")
    return seeds


def _good_seeds(seeds):
    return (all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= MAX_SEED
                for s in seeds) and len(set(seeds)) == len(seeds))


def experiment_settings(profile, n_boot):
    """What identifies an experiment (recorded in ``replicate.json``; seeds may be added)."""
    from dr_saliency.lesions.localize import CandidateOptions

    if profile not in demo_lib.PROFILES:
        raise ValueError(f"Expected profile in {sorted(demo_lib.PROFILES)}. "
                         f"Received: profile={profile!r}")
    return {"format": FORMAT, "profile": profile, "pipeline": demo_lib.PROFILES[profile],
            "rules": RULES, "normalize": maps.DEFAULT_NORMALIZE,
            "refine": run_params(), "candidates": CandidateOptions().to_params(),
            "tolerance": 0.0, "n_boot": int(n_boot)}


def run_replicate(out, seeds, *, profile="quick", n_boot=1000, on_seed=None, on_step=None,
                  on_progress=None):
    """Run (or continue) the pipeline for each seed and write the cross-seed summary.

    Args:
        out: str, the experiment folder.
        seeds: list of distinct non-negative ints (see :func:`parse_seeds`).
        profile: key of ``demo.PROFILES`` ("quick": 2,000 images at 256 px, ~7 min a seed).
        n_boot: int >= 10, bootstrap replicates for the paired intervals.
        on_seed: optional callable(seed, index, total) before each seed.
        on_step, on_progress: as ``demo.run_demo``.

    Returns:
        dict, the summary also written to ``out/replicate.json``.

    Raises:
        ValueError: bad seeds or settings, ``out`` holding another experiment or a malformed
            ``replicate.json``.
        BusyError: another process is running an experiment into ``out`` (naming it).
    """
    # Every input is checked before any work: a seed numpy refuses would otherwise fail only
    # once the first seed's data is made.
    if not isinstance(seeds, (list, tuple)) or not seeds or not _good_seeds(seeds):
        raise ValueError(f"Expected a list of distinct integer seeds from 0 to {MAX_SEED}. "
                         f"Received: seeds={seeds!r}")
    if not isinstance(n_boot, int) or n_boot < 10:
        raise ValueError(f"Expected n_boot >= 10. Received: n_boot={n_boot!r}")
    settings = experiment_settings(profile, n_boot)
    _check_record(out, settings)
    os.makedirs(out, exist_ok=True)
    # One run per folder: a second would redo, and overwrite, steps the first is running.
    with lock_folder(out, "a replicate folder"):
        _claim(out, settings)
        per_seed = {}
        for index, seed in enumerate(seeds):
            if on_seed:
                on_seed(seed, index, len(seeds))
            seed_dir = os.path.join(out, f"seed_{seed}")
            steps = [s for s in demo_lib.demo_steps(seed_dir, profile=profile, seed=seed,
                                                    on_step=on_step, on_progress=on_progress)
                     if s.name in ("synth", "train", "evaluate", "refine")]
            demo_lib.run_steps(seed_dir, steps, on_step=on_step)
            per_seed[seed] = score_seed(seed_dir, seed, n_boot=n_boot, on_step=on_step,
                                        on_progress=on_progress)
        summary = summarize(per_seed, settings)
        write_report(summary, out)
        # Last: the record with every seed's figures says the experiment is complete.
        _write_json(os.path.join(out, "replicate.json"), summary)
    return summary


def score_seed(seed_dir, seed, *, n_boot=1000, on_step=None, on_progress=None):
    """Score one seed's stored maps under every rule; cached in ``seed_dir/scores.json``."""
    from dr_saliency.fundus.datasets import open_dataset
    from dr_saliency.jobs.froc import froc_scores
    from dr_saliency.lesions import localize

    path = os.path.join(seed_dir, "scores.json")
    if os.path.isfile(path):
        scores = read_json(path)
        if not (isinstance(scores, dict) and isinstance(scores.get("rules"), dict)):
            raise ValueError(f"Expected a seed's scores in {path}. Received: {_shown(scores)}; "
                             "remove it to score the seed again")
        if on_step:
            on_step("score", "skip", None, f"already done ({path})")
        return scores
    if on_step:
        on_step("score", "start", None, "")
    start = time.time()
    paths = demo_lib.demo_paths(seed_dir)
    results = paths["results"]
    evaluation = read_json(paths["evaluation"])["metrics"]
    # Over the whole file: refine.done.json counts the images of the last refine run only.
    reasons = stop_reason_counts(results)
    # A grader that calls no test image referable leaves nothing to localize: the seed is
    # reported with its kappa and no FROC rows, not dropped.
    records = localize.records_for(results, open_dataset(paths["data"]))[0] \
        if reasons else []
    scores = {"seed": seed, "kappa": evaluation["kappa"], "auc": evaluation["auc"],
              "n_refined": len(records), "stop_reasons": reasons,
              "rules": {rule: {} for rule in RULES}}
    for rule, kwargs in RULES.items():
        if not records:
            break
        _, report = froc_scores(results, records, **kwargs, n_boot=n_boot, seed=seed,
                                on_progress=relabeled(on_progress, f"score ({rule})"))
        scores["rules"][rule] = {row["group"]: _row(row) for row in localize.summary_rows(report)}
    _write_json(path, scores)
    if on_step:
        s = scores["rules"]
        gains = [f"{rule} {s[rule]['stage 3']['gain_as10']:+.1%}" for rule in RULES
                 if s[rule].get("stage 3", {}).get("gain_as10") is not None]
        on_step("score", "done", time.time() - start,
                "AS10 gain of S at stage 3: " + (", ".join(gains) or "none (no stage-3 image)"))
    return scores


def _row(row):
    keep = ("images", "lesions", "s0_as10", "S_as10", "gain_as10", "gain_as10_ci", "s0_score",
            "S_score", "gain_score", "gain_score_ci")
    return {k: (list(row[k]) if isinstance(row[k], tuple) else row[k]) for k in keep}


def summarize(per_seed, settings):
    """Cross-seed mean, sample standard deviation and range of every figure.

    Args:
        per_seed: dict seed -> the dict :func:`score_seed` returns.
        settings: :func:`experiment_settings`.

    Returns:
        dict with ``settings``, ``seeds``, ``per_seed`` and ``across`` (rule -> group -> metric ->
        {"mean", "sd", "min", "max", "n"}; plus "grader" -> kappa/auc).
    """
    seeds = list(per_seed)
    per_seed = {s: _defined_gains(per_seed[s]) for s in seeds}
    across = {"grader": {m: _stats([per_seed[s][m] for s in seeds]) for m in ("kappa", "auc")}}
    for rule in RULES:
        across[rule] = {}
        for group in GROUPS:
            rows = [per_seed[s]["rules"][rule].get(group) for s in seeds]
            rows = [r for r in rows if r is not None]
            if rows:
                across[rule][group] = {m: _stats([r[m] for r in rows]) for m in METRICS}
    return {"settings": settings, "seeds": seeds, "per_seed": {str(s): per_seed[s] for s in seeds},
            "across": across}


def _defined_gains(scores):
    """A seed's scores with the relative gains over an s_0 below MIN_GAIN_BASE set to None
    (the rule of every report, :func:`dr_saliency.lesions.reports.defined_gains`)."""
    return dict(scores, rules={rule: {group: defined_gains(row) for group, row in groups.items()}
                               for rule, groups in scores["rules"].items()})


def _stats(values):
    v = np.asarray([np.nan if x is None else x for x in values], dtype=float)
    v = v[np.isfinite(v)]
    if not v.size:
        return {"mean": None, "sd": None, "min": None, "max": None, "n": 0}
    return {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if v.size > 1 else None,
            "min": float(v.min()), "max": float(v.max()), "n": int(v.size)}


def _pct(value):
    return "n/a" if value is None or not np.isfinite(value) else f"{value:+.1%}"


def _spread(value):
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.1%}"


def _num(value):
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.3f}"


def report_markdown(summary):
    """The cross-seed tables as Markdown (what ``REPLICATE.md`` holds)."""
    seeds, per_seed, across = summary["seeds"], summary["per_seed"], summary["across"]
    lines = [f"# Replication over seeds {', '.join(map(str, seeds))}", "",
             f"Profile `{summary['settings']['profile']}`; data seed = training seed; the "
             f"referable test images of each seed refined once; s_0 and S scored on one scale "
             f"(normalize `{summary['settings']['normalize']}`) with the same candidates. AS10: "
             f"average FROC sensitivity up to 10 FP/image; gain: relative AS10 gain of S over "
             f"s_0 with its paired-bootstrap 95% interval.", "",
             "| seed | kappa | AUC | refined | stop reasons |", "|---|---|---|---|---|"]
    for s in seeds:
        p = per_seed[str(s)]
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(p["stop_reasons"].items()))
        lines.append(f"| {s} | {_num(p['kappa'])} | {_num(p['auc'])} | {p['n_refined']} | "
                     f"{reasons} |")
    g = across["grader"]
    lines.append(f"| mean ± sd | {_num(g['kappa']['mean'])} ± {_num(g['kappa']['sd'])} | "
                 f"{_num(g['auc']['mean'])} ± {_num(g['auc']['sd'])} | | |")
    for rule, kwargs in RULES.items():
        lines += ["", f"## Rule `{rule}`: combine {kwargs['combine']}, decay {kwargs['decay']}", "",
                  "| group | " + " | ".join(f"seed {s}: AS10 s_0 -> S, gain [95% CI]" for s in seeds)
                  + " | AS10 s_0 mean ± sd | AS10 S mean ± sd | gain mean ± sd | gain range |",
                  "|---|" + "---|" * (len(seeds) + 4)]
        for group in GROUPS:
            if group not in across[rule]:
                continue
            cells = []
            for s in seeds:
                r = per_seed[str(s)]["rules"][rule].get(group)
                if r is None:
                    cells.append("-")
                    continue
                lo, hi = r["gain_as10_ci"]
                cells.append(f"{_num(r['s0_as10'])} -> {_num(r['S_as10'])}, "
                             f"{_pct(r['gain_as10'])} [{_pct(lo)}, {_pct(hi)}]")
            a = across[rule][group]
            lines.append(
                f"| {group} | " + " | ".join(cells) +
                f" | {_num(a['s0_as10']['mean'])} ± {_num(a['s0_as10']['sd'])}"
                f" | {_num(a['S_as10']['mean'])} ± {_num(a['S_as10']['sd'])}"
                f" | {_pct(a['gain_as10']['mean'])} ± {_spread(a['gain_as10']['sd'])}"
                f" | {_pct(a['gain_as10']['min'])} to {_pct(a['gain_as10']['max'])} |")
    return "\n".join(lines) + "\n"


def write_report(summary, out, formats=("png", "pdf")):
    """``REPLICATE.md`` and the per-seed gain figure; returns the paths written."""
    from dr_saliency.figures import plots
    paths = [os.path.join(out, "REPLICATE.md")]
    write_text(paths[0], report_markdown(summary))
    fig = plots.seed_gains_figure(_gain_panels(summary))
    for fmt in formats:
        path = os.path.join(out, f"gains.{fmt}")
        write_figure(fig, path, dpi=150)
        paths.append(path)
    return paths


def _gain_panels(summary):
    """rule -> {"groups": [...], "seeds": [...], "gain": (seeds, groups), "low", "high"}."""
    panels = {}
    for rule in RULES:
        groups = [g for g in GROUPS if g in summary["across"][rule]]
        shape = (len(summary["seeds"]), len(groups))
        gain, low, high = np.full(shape, np.nan), np.full(shape, np.nan), np.full(shape, np.nan)
        for i, s in enumerate(summary["seeds"]):
            rows = summary["per_seed"][str(s)]["rules"][rule]
            for j, group in enumerate(groups):
                r = rows.get(group)
                if r is not None:
                    gain[i, j] = _nan(r["gain_as10"])
                    low[i, j], high[i, j] = (_nan(v) for v in r["gain_as10_ci"])
        kwargs = RULES[rule]
        panels[f"{rule}: {kwargs['combine']}, decay {kwargs['decay']}"] = {
            "groups": groups, "seeds": summary["seeds"], "gain": gain, "low": low, "high": high}
    return panels


def _nan(value):
    return np.nan if value is None else float(value)


def _check_record(out, settings):
    """Refuse a folder whose ``replicate.json`` holds another experiment, or is not one."""
    path = os.path.join(out, "replicate.json")
    try:
        record = read_json(path)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"Expected a replicate record (JSON) in {path}. Received: a file that "
                         f"cannot be read as JSON ({exc}); remove it or choose another "
                         "folder") from None
    if record is None:
        return
    stored = record.get("settings") if isinstance(record, dict) else None
    if not isinstance(stored, dict):
        raise ValueError(f"Expected a replicate record in {path}: an object with the "
                         "experiment's settings. Received: "
                         f"{_shown(record)}; remove it or choose another folder")
    fresh = json.loads(json.dumps(settings, default=_json_default))
    if stored != fresh:
        diffs = differences(stored, fresh, "folder")
        raise FolderInUseError("Expected an empty folder or one holding this same experiment "
                               f"(refusing to mix). Received: {out} holds one with "
                               f"{'; '.join(diffs) or 'other settings'}", out, diffs)


def _claim(out, settings):
    """Check ``out``'s record (under the folder's lock) and write one if there is none yet."""
    _check_record(out, settings)
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "replicate.json")
    # Recorded now, so that an interrupted run is also protected against mixing.
    if not os.path.isfile(path):
        _write_json(path, {"settings": settings, "seeds": [], "per_seed": {}, "across": {}})


def _shown(value, limit=60):
    text = json.dumps(value, default=str)
    return f"{type(value).__name__} {text[:limit]}{' ...' if len(text) > limit else ''}"


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    return str(value)


def _write_json(path, data):
    write_json(path, data, default=_json_default)
