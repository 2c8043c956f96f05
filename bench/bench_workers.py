"""One process against N local Dask workers: `dr-saliency refine` on the same images.

Times, through the command line (wall clock, model load and cluster start included, as a user
sees them): (a) `refine MODEL DATA --out one.h5`, (b) `refine ... --workers N --out many.h5`
(N shards on a local cluster of N processes, then the merge), and checks that the two result
files hold the same arrays. Prints both times, the ratio and the per-image cost of each. A
grader with random weights whose images are all referable (so every image runs the loop to its
cap), the quick profile's network (256 px, width 1/8) by default.

    python bench/bench_workers.py [--images 32] [--size 256] [--width 0.125] [--workers 2]
                                  [--max-iterations 3] [--repeats 1]

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
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--width", type=float, default=0.125)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--max-iterations", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()

    root = tempfile.mkdtemp(prefix="bench_workers_")
    try:
        data, model = os.path.join(root, "data"), os.path.join(root, "m.h5")
        synth.write_dataset(data, args.images, size=args.size, seed=0, workers=1)
        grader(model, args.size, args.width)
        common = ["refine", model, data, "--quiet", "--max-iterations", str(args.max_iterations)]
        rows = []
        for repeat in range(args.repeats):
            one, many = os.path.join(root, f"one{repeat}.h5"), os.path.join(root, f"many{repeat}.h5")
            t1, _ = timed(common + ["--out", one])
            tn, _ = timed(common + ["--out", many, "--workers", str(args.workers)])
            rows.append((t1, tn, same(one, many)))
        print(f"{args.images} images of {args.size} px, width {args.width:g}, "
              f"{args.max_iterations} iterations each (all referable), {os.cpu_count()} CPUs; "
              f"wall clock of the command, model load and cluster start included")
        for t1, tn, identical in rows:
            print(f"1 process          : {t1:7.1f} s  ({t1 / args.images:.3f} s/image)")
            print(f"{args.workers} Dask workers     : {tn:7.1f} s  ({tn / args.images:.3f} s/image)")
            print(f"ratio 1 / {args.workers}         : {t1 / tn:7.2f}")
            print(f"results identical  : {identical}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
