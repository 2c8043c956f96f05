"""Choose the refinement defaults on the synthetic VALIDATION split (never the test split).

Stage A re-runs the refinement (the network) for each reading of "negative gradients" and each
mask size; stage B re-scores the stored maps of the best stage-A run with other combination rules,
decays and candidate settings (no network needed). Score: lesion-level FROC of S over all lesion
types and referable images, average sensitivity up to 10 FP/image (AS10), with the 7-point score
and the relative gain over s_0 beside it. Prints Markdown tables for docs/choices.md.

    python docs/experiments/search_defaults.py MODEL DATA WORK_DIR [--split val]
"""

import argparse
import itertools
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, os.pardir))

from dr_saliency import localize, pipeline, saliency  # noqa: E402
from dr_saliency.datasets import open_dataset  # noqa: E402
from dr_saliency.model import load_model  # noqa: E402
from dr_saliency.results import ResultStore  # noqa: E402

READINGS = {"negative part of d(output)": dict(target="output", sign="negative"),
            "guided gradient of -output": dict(target="negated", sign="positive")}
LEVELS = (0.005, 0.01, 0.02)
DILATIONS = (0, 1, 2)


def score(store, data, records, options=None, **recombine):
    items = localize.collect(store, records, options or localize.CandidateOptions(), **recombine)
    entry = localize.evaluate(items, stages=(), types=(), n_boot=200)["all"]
    with ResultStore(store) as st:
        reasons = [st.read(i).stop_reason for i in st.complete_ids()]
    normal = sum(r == "normal" for r in reasons) / max(len(reasons), 1)
    return {"AS10 S": entry["S"]["froc"].average_sensitivity(10),
            "AS10 s0": entry["s0"]["froc"].average_sensitivity(10),
            "score S": entry["S"]["froc"].score(), "score s0": entry["s0"]["froc"].score(),
            "gain AS10": entry["paired"].average_sensitivity.relative,
            "stopped normal": normal}


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
    args = parser.parse_args()
    os.makedirs(args.work, exist_ok=True)

    net = load_model(args.model)
    ds = open_dataset(args.data)
    records = pipeline.select_records(ds, split=args.split)
    predict = saliency.make_predictor(net, batch_size=8)
    size = int(net.input_shape[1])
    metrics = ("AS10 S", "AS10 s0", "gain AS10", "score S", "score s0", "stopped normal")

    rows_a = []
    for (reading, explain_kw), level, dilation in itertools.product(READINGS.items(), LEVELS,
                                                                      DILATIONS):
        if dilation != 1 and (level != 0.01 or explain_kw["target"] != "output"):
            continue  # dilation is varied at the middle level of the default reading only
        explain = saliency.make_explainer(net, batch_size=8, **explain_kw)
        store = os.path.join(args.work, f"{explain_kw['target']}_{level}_{dilation}.h5")
        pipeline.refine_dataset(records, store, explain=explain, predict=predict, size=size,
                                params=explain_kw, batch_size=8, only_referable=True,
                                binarize_level=level, dilation=dilation)
        scored, _ = localize.records_for(store, ds)
        row = {"reading": reading, "level": level, "dilation": dilation, "store": store}
        row.update(score(store, ds, scored))
        rows_a.append(row)
        print(row, flush=True)
    print("\nStage A (refinement settings, mean combination, decay 0.5)\n")
    print(table(rows_a, ("reading", "level", "dilation") + metrics))

    best = max(rows_a, key=lambda r: r["AS10 S"])
    scored, _ = localize.records_for(best["store"], ds)
    rows_b = []
    for combine, decay in itertools.product(("mean", "max", "masked"), (0.3, 0.5, 0.7, 0.9)):
        row = {"combine": combine, "decay": decay}
        row.update(score(best["store"], ds, scored, combine=combine, decay=decay))
        rows_b.append(row)
    print(f"\nStage B (maps of: {best['reading']}, level {best['level']}, dilation "
          f"{best['dilation']})\n")
    print(table(rows_b, ("combine", "decay") + metrics))

    best_b = max(rows_b, key=lambda r: r["AS10 S"])
    rows_c = []
    for border, exclude_disc, min_distance in itertools.product((0, 6, 12), (True, False), (2, 4)):
        options = localize.CandidateOptions(border=border, exclude_disc=exclude_disc,
                                            min_distance=min_distance)
        row = {"border": border, "exclude disc": exclude_disc, "min distance": min_distance}
        row.update(score(best["store"], ds, scored, options, combine=best_b["combine"],
                         decay=best_b["decay"]))
        rows_c.append(row)
    print(f"\nStage C (candidates; combine {best_b['combine']}, decay {best_b['decay']})\n")
    print(table(rows_c, ("border", "exclude disc", "min distance") + metrics))


if __name__ == "__main__":
    main()
