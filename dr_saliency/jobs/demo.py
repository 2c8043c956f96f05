"""The end-to-end demonstration: synth -> train -> evaluate -> refine -> froc -> figures -> report.

Every step writes into one folder and is skipped when its output is already complete (its marker
file, written after the step's other files), so a rerun (or a run after an interruption at any
moment) continues where the previous one stopped; one demo at a time runs in a folder (its lock).
Each step calls the same library functions as its own ``dr-saliency`` command. REPORT.md says what
one seed can show: the seed's status, where the spread across seeds is measured, the images at the
iteration cap, and examples picked by id (:data:`EXAMPLES_RULE`), not where S gains most.
"""

import dataclasses
import os
import time

from dr_saliency.core.files import read_json, write_json, write_text
from dr_saliency.core.locks import lock_folder
from dr_saliency.core.progress import check_callback, relabeled
from dr_saliency.grader.config import QUICK_PROFILE, REFERENCE_PROFILE, TrainConfig

#: Profiles of the demo. "quick": a narrow VGG-16 at 256 px trained from scratch on a synthetic
#: set; about 4 minutes on an idle 2-core CPU (docs/performance.md). "reference": the paper's 512 px
#: with a quarter-width VGG-16 (the reference training profile), about 40 minutes.
#: "smoke": the same steps in seconds (tiny data and network, one epoch) for tests; its numbers
#: mean nothing.
PROFILES = {
    "quick": dict(n_images=2000, size=256, seed=2026, train={}, refine_batch=8, figure_rows=4),
    "reference": dict(n_images=2000, size=512, seed=2026, train=REFERENCE_PROFILE,
                      refine_batch=4, figure_rows=4),
    "smoke": dict(n_images=40, size=128, seed=0, refine_batch=4, figure_rows=2,
                  train=dict(input_size=128, width=1 / 16, epochs=1, batch_size=4)),
}


#: What a demo folder holds, where (relative to it, "/"-separated): every step's outputs and its
#: done-marker (written last), the report and the page. The demo, its report and replicate (one
#: demo folder per seed) all find them here.
FILES = {
    "data": "data", "labels": "data/labels.csv", "synth": "data/synth.json",
    "run": "run", "model": "run/model.h5", "config": "run/config.json",
    "eval": "evaluation", "evaluation": "evaluation/evaluation.json",
    "results": "refine.h5", "refine_done": "refine.done.json",
    "froc": "froc", "metrics": "froc/metrics.json",
    "figures": "figures", "figures_done": "figures/done.json",
    "timings": "timings.json", "report": "REPORT.md", "page": "index.html",
}


def demo_paths(out):
    """:data:`FILES` as paths in the demo folder ``out``."""
    return {key: os.path.join(out, *name.split("/")) for key, name in FILES.items()}


#: The data seed on whose validation split the defaults of the refinement and the scoring were
#: chosen (docs/choices.md): the quick demo's. REPORT.md says whether the demo's seed is it.
CHOICE_SEED = 2026

#: How the demo picks its example figures: by id, not by result (an example chosen where S gains
#: most would show the method at its best, not as it is).
EXAMPLES_RULE = "evenly spaced over the refined test images sorted by id"


def example_ids(ids, n):
    """The demo's examples: ``n`` of ``ids`` evenly spaced over them sorted (first and last
    included; all when there are at most ``n``)."""
    ids = sorted(ids)
    if len(ids) <= n:
        return ids
    return [ids[round(k * (len(ids) - 1) / (n - 1))] for k in range(n)] if n > 1 else ids[:1]


@dataclasses.dataclass
class Step:
    """One demo step: its name, the file that proves it complete, and the function to run."""

    name: str
    done_file: str
    run: object


def run_demo(out, *, profile="quick", seed=None, on_step=None, on_progress=None):
    """Run (or continue) the whole method on synthetic data into ``out``.

    Args:
        out: str, the demo folder.
        profile: key of :data:`PROFILES`.
        seed: int, the data seed and the training seed together; None: the profile's (as
            :func:`demo_steps`).
        on_step: optional callable(name, status, seconds, message) for progress lines.
        on_progress: optional ``on_progress(label, total) -> advance(k=1)``
            (:mod:`dr_saliency.core.progress`), each phase labelled with its step's name.

    Returns:
        str, the path of ``REPORT.md``.

    Raises:
        ValueError: for an unknown profile, or from any step.
        BusyError: another process is running a demo into ``out`` (naming it).
    """
    steps = demo_steps(out, profile=profile, seed=seed, on_step=on_step, on_progress=on_progress)
    from dr_saliency.refinement.store import ResultStore

    paths = demo_paths(out)
    os.makedirs(out, exist_ok=True)
    # One demo per folder: a second would redo the steps the first has not finished yet.
    with lock_folder(out, "a demo folder"):
        timings = run_steps(out, steps, on_step=on_step)
        # Figures of a folder made by an earlier version were picked where S gains most: the
        # report says so rather than claim the rule.
        shown = (read_json(paths["figures_done"]) or {}).get("ids")
        with ResultStore(paths["results"]) as store:
            by_rule = example_ids(store.complete_ids(), PROFILES[profile]["figure_rows"])
        report = write_demo_report(out, profile=profile, timings=timings, choice_seed=CHOICE_SEED,
                                   examples_rule=EXAMPLES_RULE if shown == by_rule else None)
        write_page(out)
        return report


def write_page(out, top=5):
    """The demo's overview page ``out/index.html``: one row per refined test image (its
    iteration strip as thumbnail where the figures step drew one, its top candidates of S)."""
    from dr_saliency.figures import overview
    from dr_saliency.fundus.datasets import open_dataset
    from dr_saliency.lesions.localize import image_candidates
    from dr_saliency.refinement.store import ResultStore

    paths = demo_paths(out)
    by_id = {rec.id: rec for rec in open_dataset(paths["data"])}
    rows = []
    with ResultStore(paths["results"]) as store:
        for image_id in store.complete_ids():
            result, rec = store.read(image_id), by_id.get(image_id)
            candidates = []
            if rec is not None:
                image = rec.load_image()
                found, _ = image_candidates(result, image, rec.load_fov(image))
                candidates = [{"x": round(float(c), 1), "y": round(float(r), 1),
                               "score": round(float(v), 4)} for r, c, v in found["S"][:top]]
            figure = os.path.join(paths["figures"], f"iterations_{image_id}.png")
            rows.append({"id": image_id, "p0": float(result.predictions[0]),
                         "pn": float(result.predictions[-1]), "iterations": result.iterations,
                         "stop_reason": result.stop_reason, "candidates": candidates,
                         "figure": figure if os.path.isfile(figure) else "",
                         "extra": "" if rec is None or rec.grade is None
                         else f"true stage {rec.grade}"})
    rows.sort(key=lambda r: (not r["figure"], r["id"]))  # the drawn examples first
    done = read_json(paths["refine_done"]) or {}
    skipped = [tuple(s) for s in done.get("skipped", []) if len(s) == 2]
    return overview.write_overview(
        paths["page"], rows, title="dr-saliency demo", skipped=skipped,
        notes=["Referable test images of the synthetic data, refined by the demo's grader "
               "(trained on synthetic images only). See REPORT.md and figures/figure1_panels.png.",
               "Grade: p0 rounded (0-4); referable: grade 2 or higher. Candidates: (x, y) in "
               "pixels, score: S at the candidate's peak."])


def demo_steps(out, *, profile="quick", seed=None, on_step=None, on_progress=None):
    """The demo's steps (synth, train, evaluate, refine, froc, figures) into folder ``out``.

    Args:
        out: str, the folder.
        profile: key of :data:`PROFILES`.
        seed: int, the data seed and the training seed together; None: the profile's data seed
            and TrainConfig's default training seed.
        on_step, on_progress: as :func:`run_demo`.

    Returns:
        list of :class:`Step`, in order.
    """
    if profile not in PROFILES:
        raise ValueError(f"Expected profile in {sorted(PROFILES)}. Received: profile={profile!r}")
    p = dict(PROFILES[profile])
    if seed is not None:  # without one, training keeps TrainConfig's seed (the demo's as before)
        p["seed"] = int(seed)
        p["train"] = dict(p["train"], seed=int(seed))
    paths = demo_paths(out)
    check_callback(on_progress, "on_progress")

    def progress(step):
        return relabeled(on_progress, step)

    def synth_step():
        from dr_saliency.fundus import synth
        synth.write_dataset(paths["data"], p["n_images"], size=p["size"], seed=p["seed"],
                            on_progress=progress("synth"))
        return f"{p['n_images']} images of {p['size']} px in {paths['data']}"

    def train_step():
        from dr_saliency.grader import train as train_lib
        from dr_saliency.fundus.datasets import open_dataset

        config = TrainConfig(**dict(QUICK_PROFILE, **p["train"]))
        resume = train_lib.is_run_dir(paths["run"])
        summary = train_lib.train(open_dataset(paths["data"]), paths["run"], config,
                                  resume=resume, data_path=paths["data"], verbose=0,
                                  on_epoch=lambda e, m: on_step and on_step(
                                      "train", "epoch", None,
                                      f"epoch {e}/{config.epochs}: loss {m['loss']:.3f}, "
                                      f"val kappa {m['val_kappa']:.3f}, val AUC {m['val_auc']:.3f}"))
        return (f"best validation kappa {summary['best_kappa']:.3f} at epoch "
                f"{summary['best_epoch']}")

    def evaluate_step():
        from dr_saliency.grader import evaluate as evaluate_lib
        from dr_saliency.grader.model import load_model
        from dr_saliency.fundus.datasets import open_dataset

        report = evaluate_lib.evaluate(load_model(paths["model"]), open_dataset(paths["data"]),
                                       paths["eval"])
        m = report["metrics"]
        return f"test kappa {m['kappa']:.3f}, referable AUC {m['auc']:.3f}"

    def refine_step():
        from dr_saliency.jobs import refine as refine_job
        from dr_saliency.fundus.datasets import open_dataset, select_records

        dataset = open_dataset(paths["data"])
        records = select_records(dataset, split="test")
        summary = refine_job.refine_run(paths["model"], records, paths["results"],
                                        batch_size=p["refine_batch"], only_referable=True,
                                        on_progress=progress("refine"),
                                        dataset=dataset)
        write_json(paths["refine_done"], summary, default=str)
        return (f"{summary['written'] + summary['already_done']} referable test images refined "
                f"({summary['not_referable']} not referable); stop reasons {summary['stop_reasons']}")

    def froc_step():
        from dr_saliency.jobs import froc as froc_job
        from dr_saliency.fundus.datasets import open_dataset
        from dr_saliency.lesions import reports
        from dr_saliency.lesions.localize import records_for

        records, notes = records_for(paths["results"], open_dataset(paths["data"]))
        report, _ = froc_job.froc_run(paths["results"], records, paths["froc"], notes=notes,
                                      on_progress=progress("candidates"))
        entry = report["all"]["paired"].average_sensitivity
        gain = reports.relative_gain(entry.a, entry.relative)
        return (f"AS10 s_0 {entry.a:.3f} -> S {entry.b:.3f} "
                f"({'gain n/a' if gain is None else f'{gain:+.1%}'})")

    def figures_step():
        from dr_saliency.lesions import panels
        from dr_saliency.fundus.datasets import open_dataset
        from dr_saliency.refinement.store import ResultStore

        with ResultStore(paths["results"]) as store:
            ids = example_ids(store.complete_ids(), p["figure_rows"])
        written = panels.write_figures(paths["results"], open_dataset(paths["data"]),
                                       paths["figures"], ids=ids)
        return f"{len(written)} files in {paths['figures']} ({EXAMPLES_RULE})"

    steps = [
        Step("synth", paths["labels"], synth_step),
        Step("train", paths["model"], train_step),
        Step("evaluate", paths["evaluation"], evaluate_step),
        Step("refine", paths["refine_done"], refine_step),
        Step("froc", paths["metrics"], froc_step),
        Step("figures", paths["figures_done"], figures_step),
    ]
    return steps


def run_steps(out, steps, *, on_step=None):
    """Run each step whose ``done_file`` is missing; time them into ``out/timings.json``.

    A step skipped as already done keeps the time an earlier run recorded for it. A step whose
    ``done_file`` appears although the step was interrupted afterwards (Ctrl-C while it closes)
    is timed all the same, since a rerun skips it.

    Returns:
        dict step name -> seconds, every step of ``steps`` in order (None for one done without
        a recorded time, e.g. by a ``dr-saliency`` command into the folder), then the other
        steps timings.json holds.
    """
    os.makedirs(out, exist_ok=True)
    path = demo_paths(out)["timings"]
    recorded = read_json(path) or {}
    timings = dict(recorded) if isinstance(recorded, dict) else {}
    for step in steps:
        if os.path.isfile(step.done_file):
            if on_step:
                on_step(step.name, "skip", None, f"already done ({step.done_file})")
            continue
        if on_step:
            on_step(step.name, "start", None, "")
        start = time.time()
        try:
            message = step.run()
        except BaseException:
            # Stopped once its output was complete: a rerun skips the step, so time it now.
            if os.path.isfile(step.done_file):
                timings[step.name] = time.time() - start
                write_json(path, timings)
            raise
        timings[step.name] = time.time() - start
        write_json(path, timings)
        if on_step:
            on_step(step.name, "done", timings[step.name], message)
    ordered = {step.name: timings.get(step.name) for step in steps}
    ordered.update((name, seconds) for name, seconds in timings.items() if name not in ordered)
    return ordered


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
    from dr_saliency.lesions import reports

    paths = demo_paths(out)
    evaluation, metrics, refine, figures, config, data = (
        read_json(paths[key]) for key in ("evaluation", "metrics", "refine_done", "figures_done",
                                          "config", "synth"))
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
    refined = _refined(paths["results"]) if refine else None
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
                  reports.table_from_rows(metrics["summary"]), "",
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
    write_text(paths["report"], "\n".join(lines))
    return paths["report"]


def _refined(results):
    """What a demo's result file holds: ``n`` images, ``stop_reasons`` (reason -> count, over the
    whole file, whatever runs wrote it) and ``max_iterations`` (the loop's cap); None without a
    file."""
    from dr_saliency.refinement.store import read_params, stop_reason_counts

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
