"""Choose the refinement and scoring defaults on the synthetic VALIDATION split (never the test split).

Every parameter is passed explicitly (nothing depends on the package's current defaults), and s_0
and S are always scored on one scale with the same candidates (``refine.scored_maps``), so the
tables printed here are reproduced exactly by running the script again on the same model and data.

- Stage A re-runs the refinement (the network) for each reading of "negative gradients", each mask
  size, and with the fill kept inside the field of view or not; scored with BASE_SCORING.
- Stage B re-scores the stored maps of the stage-A run with the default refinement settings
  under every normalisation, combination rule and decay (no network). Decay 0 is s_0 itself.
- Stage A is scored again under the best stage-B scoring, so that the refinement settings are
  compared as they would be used.
- Stage C varies the candidate settings (FOV-rim border, optic-disc exclusion, smoothing) for the
  best stage-B scoring.

Score: lesion-level FROC over all lesion types and the referable validation images, average
sensitivity up to 10 FP/image (AS10) of S, with s_0's and the relative gain beside it.

    python docs/experiments/search_defaults.py MODEL DATA WORK_DIR [--split val] [--json OUT]
"""

import argparse
import itertools
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, os.pardir))

from dr_saliency.explain.options import Explanation  # noqa: E402
from dr_saliency.jobs import refine as refine_job  # noqa: E402
from dr_saliency.fundus.datasets import select_records  # noqa: E402
from dr_saliency.lesions import localize  # noqa: E402
from dr_saliency.refinement.erase import Eraser  # noqa: E402
from dr_saliency.refinement.loop import RefineConfig  # noqa: E402
from dr_saliency.fundus.datasets import open_dataset  # noqa: E402
from dr_saliency.refinement.store import ResultStore  # noqa: E402

#: The refinement every stage-A run starts from; each run changes one or two entries.
BASE_REFINE = dict(max_iterations=10, stop_at=1.0, decay=0.9, combine="max", normalize="map",
                   binarize_rule="top_fraction", binarize_level=0.005, smooth_sigma=0.0,
                   dilation=1, min_component_size=0, inpaint_method="ns", inpaint_radius=3,
                   inpaint_inside_fov=True)
BASE_EXPLAIN = dict(method="guided", sign="negative", reduce="max", target="output")
BASE_SCORING = dict(normalize="map", combine="max", decay=0.9)
BASE_CANDIDATES = dict(sigma=1.0, min_distance=4, max_candidates=200, border=6,
                       exclude_disc=True, disc_radius_fraction=0.2)

STAGE_A = [
    ("default", {}, {}),
    ("guided gradient of -output", {"target": "negated", "sign": "positive"}, {}),
    ("fill from the whole image", {}, {"inpaint_inside_fov": False}),
]
# Mask size and dilation (top 0.25/0.5/1/2%, 0-2 px) were searched in Step 4 (docs/choices.md,
# "Earlier search"); add rows here to search them again, e.g.
# ("top 1%", {}, {"binarize_level": 0.01}), ("dilation 2", {}, {"dilation": 2}).
NORMALIZE = ("map", "image", "none")
COMBINE = ("mean", "max", "masked")
DECAYS = (0.0, 0.3, 0.5, 0.7, 0.9, 0.95, 0.99, 1.0)
N_BOOT = 200


def score(store, records, scoring, candidates):
    items = localize.collect(store, records, localize.CandidateOptions(**candidates), **scoring)
    entry = localize.froc_report(items, stages=(), types=(), n_boot=N_BOOT, seed=0)["all"]
    return {"AS10 S": entry["S"]["froc"].average_sensitivity(10),
            "AS10 s0": entry["s0"]["froc"].average_sensitivity(10),
            "gain AS10": entry["paired"].average_sensitivity.relative,
            "score S": entry["S"]["froc"].score(), "score s0": entry["s0"]["froc"].score()}


def stop_reasons(store):
    with ResultStore(store) as st:
        reasons = [st.read(i).stop_reason for i in st.complete_ids()]
    return {r: reasons.count(r) for r in sorted(set(reasons))}


def table(rows, keys):
    head = "| " + " | ".join(keys) + " |\n|" + "---|" * len(keys)
    body = ["| " + " | ".join(f"{r[k]:.3f}" if isinstance(r[k], float) else str(r[k])
                              for k in keys) + " |" for r in rows]
    return "\n".join([head] + body)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("data")
    parser.add_argument("work")
    parser.add_argument("--split", default="val")
    parser.add_argument("--json", help="Also write every row here.")
    args = parser.parse_args()
    os.makedirs(args.work, exist_ok=True)

    ds = open_dataset(args.data)
    records = select_records(ds, split=args.split)
    metrics = ("AS10 S", "AS10 s0", "gain AS10", "score S", "score s0")

    rows_a = []
    for name, explain_change, refine_change in STAGE_A:
        explain_kw = dict(BASE_EXPLAIN, **explain_change)
        refine_kw = dict(BASE_REFINE, **refine_change)
        store = os.path.join(args.work, name.replace(" ", "_").replace("%", "pc") + ".h5")
        refine_job.refine_run(args.model, records, store, explanation=Explanation(**explain_kw),
                              config=RefineConfig.from_params(refine_kw),
                              erase=Eraser.from_params(refine_kw), batch_size=8, only_referable=True)
        scored, _ = localize.records_for(store, ds)
        row = {"run": name, "store": store, "images": len(scored),
               "stop reasons": stop_reasons(store)}
        row.update(score(store, scored, BASE_SCORING, BASE_CANDIDATES))
        rows_a.append(row)
        print(row, flush=True)
    print(f"\nStage A (refinement settings; scored with {BASE_SCORING}, candidates "
          f"{BASE_CANDIDATES})\n")
    print(table(rows_a, ("run", "images") + metrics + ("stop reasons",)))

    default_store = rows_a[0]["store"]
    scored, _ = localize.records_for(default_store, ds)
    rows_b = []
    for normalize, combine, decay in itertools.product(NORMALIZE, COMBINE, DECAYS):
        if decay == 0.0 and combine != "max":
            continue  # decay 0 is s_0 for mean and max alike; masked at 0 is s_0 inside mask_0
        scoring = {"normalize": normalize, "combine": combine, "decay": decay}
        row = dict(scoring)
        row.update(score(default_store, scored, scoring, BASE_CANDIDATES))
        rows_b.append(row)
        print(row, flush=True)
    print(f"\nStage B (maps of the default run; candidates {BASE_CANDIDATES})\n")
    print(table(rows_b, ("normalize", "combine", "decay") + metrics))

    best_b = max(rows_b, key=lambda r: r["AS10 S"])
    best_scoring = {k: best_b[k] for k in ("normalize", "combine", "decay")}
    rows_a2 = []
    for row_a in rows_a:  # every stage-A run again, under the best stage-B scoring
        row = {"run": row_a["run"], "images": row_a["images"]}
        store = row_a["store"]
        row.update(score(store, localize.records_for(store, ds)[0], best_scoring, BASE_CANDIDATES))
        rows_a2.append(row)
        print(row, flush=True)
    print(f"\nStage A again, scored with {best_scoring}\n")
    print(table(rows_a2, ("run", "images") + metrics))
    rows_c = []
    for border, exclude_disc, sigma in itertools.product((0, 6), (True, False), (1.0, 2.0)):
        candidates = dict(BASE_CANDIDATES, border=border, exclude_disc=exclude_disc, sigma=sigma)
        row = {"border": border, "exclude disc": exclude_disc, "sigma": sigma}
        row.update(score(default_store, scored, best_scoring, candidates))
        rows_c.append(row)
        print(row, flush=True)
    print(f"\nStage C (candidates; scoring {best_scoring})\n")
    print(table(rows_c, ("border", "exclude disc", "sigma") + metrics))

    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"A": rows_a, "B": rows_b, "A2": rows_a2, "C": rows_c}, f, indent=1)


if __name__ == "__main__":
    main()
