"""Make the figures and tables of docs/synthetic.md.

    python docs/make_synthetic_figures.py                 # figures -> docs/img/synth_*.png
    python docs/make_synthetic_figures.py --stats DIR     # also print the lesion tables of DIR,
                                                          # a folder written by write_dataset

Real photographs are read from ../shared/realdata (see its README.md); they are shown, never copied.
"""

import argparse
import os

import cv2
import numpy as np
from matplotlib.figure import Figure

from dr_saliency.figures.plots import outline_masks
from dr_saliency.fundus import synth
from dr_saliency.fundus.imio import read_image

HERE = os.path.dirname(os.path.abspath(__file__))
IMG = os.path.join(HERE, "img")
REAL = os.path.join(HERE, "..", "..", "shared", "realdata")
# Only IDRiD (CC BY 4.0) goes into the repository's figures: DIARETDB1's licence is restricted
# and EyePACS's is non-commercial. Compare with those locally, not in committed images.
_IDRID = "idrid/A. Segmentation/1. Original Images/a. Training Set/{}.jpg"
REAL_SAMPLES = [(f"{name} (IDRiD)", _IDRID.format(name))
                for name in ("IDRiD_03", "IDRiD_05", "IDRiD_13", "IDRiD_17")]


def save(fig, name, dpi=100):
    path = os.path.join(IMG, name)
    fig.savefig(path, dpi=dpi)
    print("wrote", os.path.relpath(path, os.path.join(HERE, "..")))


def masks_figure(result, box):
    """A detail of one image, plain and with its masks outlined, magnified 3x."""
    top, left, side = box
    crop = (slice(top, top + side), slice(left, left + side))
    fig = Figure(figsize=(10, 5.3), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, im, title in ((axes[0], result.image, "detail (512 px image)"),
                          (axes[1], outline_masks(result.image, result.masks, synth.MASK_COLOURS),
                           "masks: MA cyan, HE green, EX blue, SE magenta")):
        ax.imshow(im[crop], interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    return fig


def scales_figure(result, box):
    """The same detail as the grader sees it at 512, 256 and 128 px input."""
    top, left, side = box
    fig = Figure(figsize=(10, 3.7), layout="constrained")
    axes = fig.subplots(1, 3)
    for ax, size in zip(axes, (512, 256, 128)):
        small = cv2.resize(result.image, (size, size), interpolation=cv2.INTER_AREA)
        k = size / 512
        ax.imshow(small[int(top * k):int((top + side) * k), int(left * k):int((left + side) * k)],
                  interpolation="nearest")
        ax.set_title(f"input {size} px", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    return fig


def markdown_tables(rows):
    """Per lesion type, a table of counts per image, footprint areas and contrasts per stage."""
    out = []
    for kind in synth.LESION_TYPES:
        out.append(f"\n**{kind}**\n")
        out.append("| stage | images with | per image: mean (min-max) | area px: p10 / median / p90 "
                   "| contrast: p10 / median / p90 |")
        out.append("|---|---|---|---|---|")
        for r in (r for r in rows if r["type"] == kind):
            if r["with_lesion"] == 0:
                out.append(f"| {r['stage']} | 0 / {r['images']} | 0 | - | - |")
                continue
            out.append(f"| {r['stage']} | {r['with_lesion']} / {r['images']} | {r['count_mean']:.1f} "
                       f"({r['count_min']}-{r['count_max']}) | {r['area_p10']:.0f} / {r['area_median']:.0f} / "
                       f"{r['area_p90']:.0f} | {r['contrast_p10']:.0f} / {r['contrast_median']:.0f} / "
                       f"{r['contrast_p90']:.0f} |")
    return "\n".join(out)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stats", help="dataset folder to tabulate")
    args = parser.parse_args()
    os.makedirs(IMG, exist_ok=True)

    save(synth.example_grid(4, size=512, seed=0), "synth_stages.png", dpi=110)

    rng = np.random.default_rng([0, 3, 0])
    detail = synth.synthesize(3, size=512, rng=rng)
    fr, fc = (int(v) for v in detail.fovea)
    box = (max(0, min(512 - 200, fr - 100)), max(0, min(512 - 200, fc - 100)), 200)
    save(masks_figure(detail, box), "synth_masks.png")
    save(scales_figure(detail, box), "synth_scales.png")

    synthetic = [synth.synthesize(stage, size=512, rng=np.random.default_rng([1, stage])).image for stage in (0, 2, 4)]
    real = [read_image(os.path.join(REAL, path)) for _, path in REAL_SAMPLES]
    titles = [f"synthetic, stage {s}" for s in (0, 2, 4)] + [t for t, _ in REAL_SAMPLES]
    save(synth.comparison_figure(synthetic, real, titles=titles, zoom=(0.3, 0.3, 0.4)), "synth_vs_real.png")

    if args.stats:
        print(markdown_tables(synth.lesion_statistics(args.stats)))


if __name__ == "__main__":
    main()
