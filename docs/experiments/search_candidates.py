"""Candidate settings searched on a validation store: where candidates sit decides what is found.

For one result file (refined validation images) and its dataset, scores s_0 and S (each on the
run's own scale, docs/contracts.md) under every candidate setting of the grid, at FROC tolerance
0 (the rule) and 2 px (reported beside it), for all images, stages 3 and 4 and microaneurysms.
No network: only candidates change. The tables in docs/choices.md ("Candidates") come from it.

    python docs/experiments/search_candidates.py VAL.h5 DATA [--json rows.json]
"""

import argparse
import itertools
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, os.pardir))

from dr_saliency.fundus.datasets import open_dataset  # noqa: E402
from dr_saliency.lesions import froc as froc_lib  # noqa: E402
from dr_saliency.lesions import localize  # noqa: E402

GRID = {
    "method": ("peaks", "components"),
    "sigma": (1.0, 2.0, 3.0, 4.0),
    "level": (0.1, 0.2, 0.3),
    "min_distance": (4,),
}
GROUPS = {"all": lambda item: True, "stage 3": lambda item: item.grade == 3,
          "stage 4": lambda item: item.grade == 4}


def as10(items, name, types, tolerance):
    lesions = [localize.lesion_union(i.lesions, types) for i in items]
    keep = [k for k, m in enumerate(lesions) if m is not None]
    if not keep:
        return float("nan")
    result = froc_lib.froc([items[k].candidates[name] for k in keep], [lesions[k] for k in keep],
                           tolerance=tolerance)
    return result.average_sensitivity(10)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results")
    parser.add_argument("data")
    parser.add_argument("--json", help="Also write every row here.")
    args = parser.parse_args()
    records, _ = localize.records_for(args.results, open_dataset(args.data))
    rows = []
    for method, sigma, level, min_distance in itertools.product(*GRID.values()):
        if method == "peaks" and level != GRID["level"][0]:
            continue  # level only matters for components
        options = localize.CandidateOptions(sigma=sigma, min_distance=min_distance,
                                            method=method, level=level)
        items = localize.collect(args.results, records, options)
        row = {"method": method, "sigma": sigma, "level": level if method == "components" else "-"}
        for tolerance in (0, 2):
            for group, keep in GROUPS.items():
                chosen = [i for i in items if keep(i)]
                for name in ("s0", "S"):
                    row[f"{name} {group} t{tolerance}"] = as10(chosen, name, localize.LESION_TYPES,
                                                             tolerance)
            row[f"S MA t{tolerance}"] = as10(items, "S", ("MA",), tolerance)
        rows.append(row)
        print(json.dumps(row), flush=True)
    keys = ["method", "sigma", "level", "s0 all t0", "S all t0", "S stage 3 t0", "S stage 4 t0",
            "S MA t0", "S all t2", "S MA t2"]
    print("\n| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
    for row in sorted(rows, key=lambda r: -r["S all t0"]):
        print("| " + " | ".join(f"{row[k]:.3f}" if isinstance(row[k], float) else str(row[k])
                                for k in keys) + " |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
