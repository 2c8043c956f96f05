"""One process against N local Dask workers: `dr-saliency refine` on the same images.

Times, through the command line (wall clock, model load and cluster start included, as a user
sees them): (a) `refine MODEL DATA --out one.h5`, (b) `refine ... --workers N --out many.h5`
(N shards on a local cluster of N processes, then the merge), and checks that the two result
files hold the same arrays. Prints both times and the ratio for two image counts, and from
their difference each way's fixed cost and cost per image. A
grader with random weights whose images are all referable (so every image runs the loop to its
cap), the quick profile's network (256 px, width 1/8) by default.

    python bench/bench_workers.py [--images 48] [--small 4] [--size 256] [--width 0.125]
                                  [--workers 2] [--max-iterations 3]

Needs the cluster extra (pip install -e ".[cluster]").
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir)
sys.path.insert(0, REPO)

from dr_saliency.fundus import synth  # noqa: E402
from dr_saliency.grader import model as model_lib  # noqa: E402
from dr_saliency.refinement.store import ResultStore  # noqa: E402

BIN = os.path.join(REPO, "bin", "dr-saliency")


def grader(path, size, width):
    """A random-weight grader whose predictions stay referable (the loop runs to its cap)."""
    net = model_lib.build_model((size, size, 3), weights=None, width=width)
    rng = np.random.default_rng(0)
    weights = net.get_weights()
    weights[-2] = rng.normal(0, 1e-4, weights[-2].shape).astype(np.float32)
    weights[-1] = np.full_like(weights[-1], 3.0)
    net.set_weights(weights)
    model_lib.export_model(net, path)


def timed(args):
    env = dict(os.environ, PYTHONPATH=os.path.abspath(REPO))
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, BIN, *args], capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if proc.returncode:
        sys.exit(f"failed: dr-saliency {' '.join(args)}\n{proc.stderr}")
    return seconds, proc.stdout


def same(a, b):
    with ResultStore(a) as x, ResultStore(b) as y:
        if x.complete_ids() != y.complete_ids():
            return False
        for image_id in x.complete_ids():
            ra, rb = x.read(image_id), y.read(image_id)
            if not (np.array_equal(ra.maps, rb.maps) and np.array_equal(ra.masks, rb.masks)
                    and np.array_equal(ra.predictions, rb.predictions)):
                return False
    return True


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--small", type=int, default=4,
                        help="Also time this many images: the difference gives the fixed cost "
                             "(start-up, model load, cluster, merge) and the cost per image.")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--width", type=float, default=0.125)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--max-iterations", type=int, default=3)
    args = parser.parse_args()

    root = tempfile.mkdtemp(prefix="bench_workers_")
    try:
        model = os.path.join(root, "m.h5")
        grader(model, args.size, args.width)
        times = {}
        for n in (args.small, args.images):
            data = os.path.join(root, f"data{n}")
            synth.write_dataset(data, n, size=args.size, seed=0, workers=1)
            common = ["refine", model, data, "--quiet", "--max-iterations", str(args.max_iterations)]
            one, many = os.path.join(root, f"one{n}.h5"), os.path.join(root, f"many{n}.h5")
            t1, _ = timed(common + ["--out", one])
            tn, _ = timed(common + ["--out", many, "--workers", str(args.workers)])
            times[n] = (t1, tn, same(one, many))
        print(f"refine, {args.size} px, width {args.width:g}, {args.max_iterations} iterations per "
              f"image (all referable), {os.cpu_count()} CPUs; wall clock of the command")
        for n, (t1, tn, identical) in times.items():
            print(f"{n:4d} images: 1 process {t1:6.1f} s, {args.workers} Dask workers {tn:6.1f} s, "
                  f"ratio {t1 / tn:.2f}, results identical: {identical}")
        dn = args.images - args.small
        for label, k in (("1 process", 0), (f"{args.workers} Dask workers", 1)):
            per = (times[args.images][k] - times[args.small][k]) / dn
            fixed = times[args.small][k] - args.small * per
            print(f"{label:16s}: {fixed:5.1f} s fixed (start-up, model load{', cluster, merge' * k}), "
                  f"{per:.3f} s per image")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
