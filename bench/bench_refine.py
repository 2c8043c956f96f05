"""What does one refinement iteration cost beyond the network?

Times, in one run, on the paper's VGG-16 at 512 px (random weights; the cost does not depend on
them): (a) one iteration of ``refine_batch`` (guided saliency and prediction of I_0 in one pass,
binarise, Navier-Stokes inpainting, prediction of I_1, bookkeeping) and (b) the network work it
cannot avoid: the explainer's pass on I_0 plus a prediction on I_1. Prints both and the ratio
(target <= 1.10: binarising, inpainting and bookkeeping under 10%).

    python bench/bench_refine.py [--size 512] [--width 1.0] [--batch-size 1] [--repeats 5]
"""

import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

from dr_saliency.explain.explainer import make_explainer, make_predictor  # noqa: E402
from dr_saliency.fundus import synth  # noqa: E402
from dr_saliency.refinement.loop import RefineConfig, refine_batch  # noqa: E402
from dr_saliency.grader.model import build_model  # noqa: E402


def median_time(fn, repeats):
    fn()  # warm-up (tracing)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    net = build_model((args.size, args.size, 3), weights=None, width=args.width)
    # The output layer starts at zero (no gradient): give it weights so maps are non-trivial.
    out = net.get_layer("dr_stage")
    rng = np.random.default_rng(0)
    kernel, bias = out.get_weights()
    # Small random weights and a bias of 3: every image stays graded referable, so the loop
    # never stops before its one iteration (stop_at must be a grade since the grade rule).
    out.set_weights([rng.normal(0, 1e-4, kernel.shape).astype(np.float32),
                     np.full_like(bias, 3.0)])
    samples = [synth.synthesize(3, size=args.size, rng=i) for i in range(args.batch_size)]
    images = np.stack([s.image for s in samples])
    fovs = np.stack([s.fov for s in samples])
    explain = make_explainer(net, batch_size=args.batch_size)
    predict = make_predictor(net, batch_size=args.batch_size)

    def network_only():
        explain(images, fovs)
        predict(images)

    def one_iteration():
        results = refine_batch(images, fovs, explain=explain, predict=predict,
                               config=RefineConfig(max_iterations=1, stop_at=0))
        assert all(r.iterations == 1 for r in results)

    t_net, m_net = median_time(network_only, args.repeats)
    t_it, m_it = median_time(one_iteration, args.repeats)
    print(f"VGG-16 at {args.size}px, width {args.width}, batch {args.batch_size}, "
          f"{os.cpu_count()} CPUs; median (minimum) of {args.repeats}")
    print(f"explainer pass + prediction   : {t_net:.3f} s ({m_net:.3f})")
    print(f"one refinement iteration      : {t_it:.3f} s ({m_it:.3f})")
    print(f"ratio iteration / network     : {t_it / t_net:.3f} ({m_it / m_net:.3f})  (target <= 1.10)")
    print(f"overhead per image            : {(t_it - t_net) / args.batch_size * 1000:.0f} ms")


if __name__ == "__main__":
    main()
