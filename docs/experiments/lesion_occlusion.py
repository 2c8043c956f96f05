"""What the grader's prediction rests on: inpaint the annotated lesions of one type and grade again.

For each image of a split that carries lesions of a type, the ground-truth pixels of that type
(dilated by 2 px, so that a lesion's rim goes too) are inpainted with the loop's own inpainter
(``refinement.erase.inpaint``, Navier-Stokes, inside the field of view), and the grader predicts
again. A type the grade rests on lowers the prediction when it is erased; a type the grader does
not use leaves it where it was. Guided back-propagation shows what lowers the grade, so a type
whose erasure does not move the prediction is not expected in s_0 or S either.

Printed per type: the images that carry it, the median (and 10th-90th percentile) change of the
prediction, and the share of images whose prediction drops by 0.25 or more; the same for all
types erased at once.

    python docs/experiments/lesion_occlusion.py MODEL DATA [--split val] [--stages 2,3,4]

Run on validation data (an analysis of a trained grader, not a choice).
"""

import argparse
import os
import sys

import numpy as np
from scipy import ndimage

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, os.pardir))

from dr_saliency.explain.explainer import make_predictor  # noqa: E402
from dr_saliency.fundus.datasets import open_dataset, select_records  # noqa: E402
from dr_saliency.grader.model import load_model  # noqa: E402
from dr_saliency.refinement.erase import inpaint  # noqa: E402

DROP = 0.25


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("data")
    parser.add_argument("--split", default="val")
    parser.add_argument("--stages", default="2,3,4")
    args = parser.parse_args()
    stages = {int(s) for s in args.stages.split(",")}
    predict = make_predictor(load_model(args.model), batch_size=8)
    records = [r for r in select_records(open_dataset(args.data), split=args.split)
               if r.grade in stages and r.lesion_types]
    changes = {}
    for record in records:
        image, fov = record.load_image(), record.load_fov()
        lesions = {k: ndimage.binary_dilation(m, iterations=2) & fov
                   for k, m in record.load_lesions().items() if m.any()}
        if not lesions:
            continue
        erased = {k: inpaint(image, m, fov_mask=fov) for k, m in lesions.items()}
        erased["all"] = inpaint(image, np.logical_or.reduce(list(lesions.values())), fov_mask=fov)
        batch = np.stack([image, *erased.values()])
        p = predict(batch)
        for k, q in zip(erased, p[1:]):
            changes.setdefault(k, []).append(float(q - p[0]))
    print(f"{len(records)} images of stages {sorted(stages)} ({args.split}); change of the "
          f"prediction when a type's annotated pixels are inpainted:\n")
    print("| erased | images | median change | 10th-90th percentile | share dropping >= "
          f"{DROP} |\n|---|---:|---:|---|---:|")
    for k in sorted(changes, key=lambda k: (k == "all", k)):
        d = np.asarray(changes[k])
        low, high = np.percentile(d, [10, 90])
        print(f"| {k} | {d.size} | {np.median(d):+.2f} | {low:+.2f} .. {high:+.2f} | "
              f"{np.mean(d <= -DROP):.0%} |")


if __name__ == "__main__":
    main()
