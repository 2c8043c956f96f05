"""The gap between synthetic and real fundus photographs, in numbers (docs/synthetic.md).

Real images (IDRiD and DIARETDB1 samples, any layout ``open_dataset`` reads) and synthetic ones are
brought to one scale with the preprocessing itself (FOV crop, square, 512 px) and measured the same
way:

- colour: mean R, G, B inside the FOV, and their spread between images;
- illumination: mean brightness of the outer FOV ring (0.8-0.95 R) over that of the centre
  (< 0.5 R), i.e. vignetting;
- texture: standard deviation of the green channel minus its 8 px Gaussian blur, inside the FOV
  and away from the rim (fine structure: noise, vessels, nerve-fibre striation);
- lesions: size (px at 512) and contrast per type (``synth.measure_lesions``), 10th / 50th / 90th
  percentiles, and lesions per image.

    python docs/experiments/realism_gap.py REAL_DIR [REAL_DIR ...] [--synthetic-per-stage 10]
        [--generators 2,3]

The last table gives each lesion type's median contrast over the haemorrhages' median in each set:
the relative conspicuity that generator 3 takes from the real samples (docs/synthetic.md).
"""

import argparse
import os
import sys

import cv2
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, os.pardir))

from dr_saliency.fundus import synth  # noqa: E402
from dr_saliency.fundus.datasets import LESION_TYPES, open_dataset  # noqa: E402
from dr_saliency.fundus.fov import preprocess_image  # noqa: E402

SIZE = 512


def image_measures(image, fov):
    """Colour, vignetting and texture of one (SIZE, SIZE, 3) image inside its FOV."""
    rows, cols = np.nonzero(fov)
    centre = np.array([rows.mean(), cols.mean()])
    radius = np.sqrt(fov.sum() / np.pi)
    rr, cc = np.mgrid[:fov.shape[0], :fov.shape[1]]
    d = np.hypot(rr - centre[0], cc - centre[1]) / radius
    grey = image.astype(np.float64).mean(axis=2)
    inner, outer = fov & (d < 0.5), fov & (d > 0.8) & (d < 0.95)
    green = image[:, :, 1].astype(np.float64)
    detail = green - cv2.GaussianBlur(green, (0, 0), 8)
    core = fov & (d < 0.85)
    return {"R": image[fov, 0].mean(), "G": image[fov, 1].mean(), "B": image[fov, 2].mean(),
            "vignetting": grey[outer].mean() / max(grey[inner].mean(), 1e-6),
            "texture": detail[core].std()}


def real_samples(roots):
    for root in roots:
        for rec in open_dataset(root):
            image = rec.load_image()
            lesions = rec.load_lesions() or {}
            small, masks, fov = preprocess_image(image, SIZE, masks=lesions or None,
                                                 fov=np.asarray(rec.load_fov(image), bool))
            yield rec.id, small, masks or {}, fov


def synthetic_samples(per_stage, generator):
    for stage in (2, 3, 4):
        for j in range(per_stage):
            r = synth.synthesize(stage, size=SIZE, rng=np.random.default_rng([7, stage, j]),
                                 generator=generator)
            yield f"synth_{stage}_{j}", r.image, r.masks, r.fov


def summarise(samples):
    measures, areas, contrasts, counts = [], {}, {}, {}
    for _, image, masks, fov in samples:
        measures.append(image_measures(image, fov))
        for kind, m in synth.measure_lesions(image, masks).items():
            areas.setdefault(kind, []).extend(m["area"])
            contrasts.setdefault(kind, []).extend(m["contrast"])
            counts.setdefault(kind, []).append(len(m["area"]))
    keys = measures[0].keys()
    out = {k: (np.mean([m[k] for m in measures]), np.std([m[k] for m in measures])) for k in keys}
    out["n"] = len(measures)
    for kind in LESION_TYPES:
        a, c = areas.get(kind, []), contrasts.get(kind, [])
        out[kind] = (np.percentile(a, [10, 50, 90]) if a else None,
                     np.percentile(c, [10, 50, 90]) if c else None,
                     np.mean(counts[kind]) if kind in counts else 0.0)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("real", nargs="+", help="real dataset folders")
    parser.add_argument("--synthetic-per-stage", type=int, default=10)
    parser.add_argument("--generators", default="2,3", help="generator versions to measure")
    args = parser.parse_args()
    sets = {"real (" + ", ".join(os.path.basename(os.path.normpath(r)) for r in args.real) + ")":
            summarise(real_samples(args.real))}
    for version in (int(v) for v in args.generators.split(",")):
        sets[f"synthetic v{version} (stages 2-4)"] = summarise(
            synthetic_samples(args.synthetic_per_stage, version))
    print("| set | images | mean R / G / B in the FOV | outer ring / centre brightness | "
          "fine texture (green, sd) |\n|---|---|---|---|---|")
    for name, s in sets.items():
        print(f"| {name} | {s['n']} | {s['R'][0]:.0f} / {s['G'][0]:.0f} / {s['B'][0]:.0f} "
              f"(sd between images {s['R'][1]:.0f} / {s['G'][1]:.0f} / {s['B'][1]:.0f}) | "
              f"{s['vignetting'][0]:.2f} ± {s['vignetting'][1]:.2f} | "
              f"{s['texture'][0]:.1f} ± {s['texture'][1]:.1f} |")
    print("\n| type | set | lesions per image | area px p10 / p50 / p90 | contrast p10 / p50 / p90 |"
          "\n|---|---|---|---|---|")
    for kind in LESION_TYPES:
        for name, s in sets.items():
            area, contrast, per_image = s[kind]
            fmt = (lambda v: " / ".join(f"{x:.0f}" for x in v) if v is not None else "-")
            print(f"| {kind} | {name} | {per_image:.1f} | {fmt(area)} | {fmt(contrast)} |")
    print("\n| set | median contrast / haemorrhages': MA | EX | SE |\n|---|---|---|---|")
    for name, s in sets.items():
        he = s["HE"][1][1]
        ratio = (lambda kind: f"{s[kind][1][1] / he:.2f}" if s[kind][1] is not None else "-")
        print(f"| {name} | {ratio('MA')} | {ratio('EX')} | {ratio('SE')} |")


if __name__ == "__main__":
    main()
