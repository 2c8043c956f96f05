"""How much storing a grader's weights as float16 changes its predictions and maps.

    python docs/experiments/half_weights.py FULL.h5 HALF.h5 DATA [--n 40]

Both model files are run on the first N test-split images of DATA (a preprocessed or synthetic
folder at the models' input size): the largest prediction difference, and for the first saliency
map s_0 (guided back-propagation, negative gradient) the overlap of the top 0.5% of FOV pixels
(what one refinement iteration inpaints) and the Spearman correlation inside the FOV.
The bundled grader's figures in data/README.md come from this script.
"""

import argparse

import numpy as np
from scipy import stats

from dr_saliency.explain.explainer import make_explainer
from dr_saliency.fundus.datasets import open_dataset, select_records
from dr_saliency.grader.model import load_model


def top_mask(smap, fov, fraction=0.005):
    values = smap[fov]
    k = max(1, int(round(fraction * values.size)))
    level = np.partition(values, -k)[-k]
    return (smap >= level) & fov


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("full")
    parser.add_argument("half")
    parser.add_argument("data")
    parser.add_argument("--n", type=int, default=40)
    args = parser.parse_args()
    records = select_records(open_dataset(args.data), split="test")[: args.n]
    explainers = [make_explainer(load_model(p), batch_size=4) for p in (args.full, args.half)]
    diffs, ious, rhos = [], [], []
    for rec in records:
        image = rec.load_image()
        fov = np.asarray(rec.load_fov(image), bool)
        (m_full, p_full), (m_half, p_half) = (e(image[None], fov[None]) for e in explainers)
        diffs.append(abs(float(p_full[0]) - float(p_half[0])))
        a, b = top_mask(m_full[0], fov), top_mask(m_half[0], fov)
        ious.append((a & b).sum() / max(1, (a | b).sum()))
        rhos.append(stats.spearmanr(m_full[0][fov], m_half[0][fov]).statistic)
    print(f"{len(records)} test images: prediction |difference| max {max(diffs):.4f}, "
          f"median {np.median(diffs):.4f}; top-0.5% mask IoU median {np.median(ious):.3f} "
          f"(min {min(ious):.3f}); Spearman median {np.median(rhos):.3f}")


if __name__ == "__main__":
    main()
