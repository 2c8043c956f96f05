"""float32 against bfloat16: the speed of a refinement iteration and the fidelity of its maps.

For each grader, in one interleaved run (the variants take turns, so machine noise hits all
alike), one refinement iteration of ``refine_batch`` on one image (guided saliency and prediction
of I_0 in one pass, binarise, inpaint, prediction of I_1) in each precision variant:

- ``fp32``: float32 throughout (the default);
- ``bf16``: Keras' mixed_bfloat16 for every layer but the output unit;
- ``bf16-block1``: the same with block 1 (the two convolutions at full resolution) in float32;
- ``bf16-blocks12``: blocks 1 and 2 in float32.

Graders: the paper's network at 512 px, width 1.0, random weights (speed only: fidelity on random
weights says little), and any trained model files given with ``--model`` (speed and fidelity). For
a trained grader with ``--data`` (a folder at its input size), fidelity on the first ``--images``
test-split images: the median and smallest IoU of the top 0.5% of FOV pixels of s_0 (what one
iteration inpaints) against fp32, the median Spearman correlation inside the FOV, and the largest
prediction difference.

    python bench/bench_precision.py [--model RUN/model.h5 --data DATA]... [--repeats 5]
"""

import argparse
import os
import statistics
import sys
import time

import numpy as np
from scipy import stats

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

from dr_saliency.explain.explainer import make_explainer, make_predictor  # noqa: E402
from dr_saliency.fundus import synth  # noqa: E402
from dr_saliency.fundus.datasets import open_dataset, select_records  # noqa: E402
from dr_saliency.grader.model import build_model, cast_model, load_model  # noqa: E402
from dr_saliency.refinement.loop import RefineConfig, refine_batch  # noqa: E402

VARIANTS = {
    "fp32": None,
    "bf16": (),
    "bf16-block1": ("block1_conv1", "block1_conv2"),
    "bf16-blocks12": ("block1_conv1", "block1_conv2", "block2_conv1", "block2_conv2"),
}


def variant(net, keep):
    return net if keep is None else cast_model(net, "bfloat16", keep_float32=keep)


def top_mask(smap, fov, fraction=0.005):
    """The top ``fraction`` of FOV pixels by value (exactly that many; ties by position)."""
    index = np.flatnonzero(fov.ravel())
    k = max(1, int(round(fraction * index.size)))
    chosen = index[np.argsort(-smap.ravel()[index], kind="stable")[:k]]
    mask = np.zeros(smap.size, bool)
    mask[chosen] = True
    return mask.reshape(smap.shape)


def speed(nets, image, fov, repeats):
    """Median seconds of one refinement iteration per variant, variants interleaved."""
    config = RefineConfig(max_iterations=1, stop_at=-1e9)
    steps = {}
    for name, net in nets.items():
        explain, predict = make_explainer(net, batch_size=1), make_predictor(net, batch_size=1)
        steps[name] = (lambda e=explain, p=predict:
                       refine_batch([image], [fov], explain=e, predict=p, config=config))
        steps[name]()  # warm-up: tracing
    times = {name: [] for name in nets}
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def fidelity(nets, records):
    """Per bf16 variant: top-0.5% IoU (median, min), Spearman (median), max |prediction diff|."""
    explainers = {name: make_explainer(net, batch_size=1) for name, net in nets.items()}
    found = {name: {"iou": [], "rho": [], "dp": []} for name in nets if name != "fp32"}
    for rec in records:
        image = rec.load_image()
        fov = np.asarray(rec.load_fov(image), bool)
        maps, preds = explainers["fp32"](image[None], fov[None])
        reference = top_mask(maps[0], fov)
        for name, out in found.items():
            m, p = explainers[name](image[None], fov[None])
            mask = top_mask(m[0], fov)
            out["iou"].append((mask & reference).sum() / (mask | reference).sum())
            out["rho"].append(stats.spearmanr(maps[0][fov], m[0][fov]).statistic)
            out["dp"].append(abs(float(p[0]) - float(preds[0])))
    return {name: (np.median(v["iou"]), min(v["iou"]), np.median(v["rho"]), max(v["dp"]))
            for name, v in found.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", default=[], help="A trained grader.")
    parser.add_argument("--data", action="append", default=[],
                        help="Its data folder (one per --model, same order).")
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if args.data and len(args.data) != len(args.model):
        parser.error("give one --data per --model")

    random_net = build_model((512, 512, 3), weights=None, width=1.0)
    out = random_net.get_layer("dr_stage")
    rng = np.random.default_rng(0)
    out.set_weights([rng.normal(0, 0.05, w.shape).astype(np.float32) for w in out.get_weights()])
    graders = [("512 px, width 1.0 (random weights)", random_net, None)]
    for k, path in enumerate(args.model):
        graders.append((path, load_model(path), args.data[k] if args.data else None))

    for label, net, data in graders:
        size = int(net.input_shape[1])
        sample = synth.synthesize(3, size=size, rng=0)
        nets = {name: variant(net, keep) for name, keep in VARIANTS.items()}
        seconds = speed(nets, sample.image, sample.fov, args.repeats)
        print(f"\n{label}: one refinement iteration, median of {args.repeats}")
        for name, t in seconds.items():
            print(f"  {name:14s} {t:.3f} s   fp32/this {seconds['fp32'] / t:.2f}x")
        if data:
            records = select_records(open_dataset(data), split="test")[: args.images]
            print(f"  fidelity against fp32 on {len(records)} test images "
                  "(top-0.5% IoU median/min, Spearman median, max |prediction difference|):")
            for name, (iou, iou_min, rho, dp) in fidelity(nets, records).items():
                print(f"  {name:14s} IoU {iou:.3f} / {iou_min:.3f}   Spearman {rho:.3f}   "
                      f"|dp| {dp:.4f}")


if __name__ == "__main__":
    main()
