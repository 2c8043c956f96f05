"""What the one meaning of "referable" changes in the loop: the grade rule against the old one.

Before ``core/grades.py`` the loop refined an image while its raw prediction was above 1.0, while
evaluation graded it by rounding (referable: p >= 1.5). Images with p in (1.0, 1.5) were refined as
referable although graded 1. This refines one split of a dataset under both rules with the same
grader and scores both stores with the same candidates and FROC, printing, per rule: the images
refined (by true stage), iterations, images at the cap, and AS10 of s_0 and S (all lesions, stages
2-4).

    python docs/experiments/referable_rule.py MODEL DATA OUT [--split val] [--batch-size 8]

Run on validation data (the rule is chosen from the paper's text, this only measures it).
"""

import argparse
import collections
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, os.pardir))

from dr_saliency.jobs import refine as refine_job  # noqa: E402
from dr_saliency.jobs import froc as froc_job  # noqa: E402
from dr_saliency.fundus.datasets import open_dataset, select_records  # noqa: E402
from dr_saliency.lesions.localize import records_for  # noqa: E402
from dr_saliency.refinement.loop import RefineConfig  # noqa: E402
from dr_saliency.refinement.store import ResultStore  # noqa: E402

RULES = {"grade (p >= 1.5, the rule)": RefineConfig(),
         "old (p > 1.0)": RefineConfig(stop_at=1.0, stop_on="prediction")}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("data")
    parser.add_argument("out")
    parser.add_argument("--split", default="val")
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    dataset = open_dataset(args.data)
    records = select_records(dataset, split=args.split)
    labels = {r.id: r.grade for r in records}
    print("| rule | refined images (true stage 0/1/2/3/4) | mean iterations | at the cap | "
          "AS10 all: s_0 -> S | stage 3 | stage 4 |\n|---|---|---|---|---|---|---|")
    for k, (name, config) in enumerate(RULES.items()):
        path = os.path.join(args.out, f"rule{k}.h5")
        refine_job.refine_run(args.model, records, path, config=config, only_referable=True,
                              batch_size=args.batch_size, dataset=dataset)
        with ResultStore(path, "r") as store:
            results = {i: store.read(i) for i in store.complete_ids()}
        stages = collections.Counter(labels[i] for i in results)
        iterations = np.mean([r.iterations for r in results.values()])
        capped = sum(r.stop_reason == "max_iterations" for r in results.values())
        chosen, _ = records_for(path, dataset)
        report, _ = froc_job.froc_run(path, chosen, os.path.join(args.out, f"froc{k}"), n_boot=200)

        def cell(group):
            if group not in report:
                return "-"
            p = report[group]["paired"].average_sensitivity
            return f"{p.a:.3f} -> {p.b:.3f} ({p.relative:+.1%})"

        print(f"| {name} | {len(results)} ({'/'.join(str(stages[s]) for s in range(5))}) | "
              f"{iterations:.2f} | {capped} | {cell('all')} | {cell('stage 3')} | {cell('stage 4')} |")


if __name__ == "__main__":
    main()
