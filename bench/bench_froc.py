"""Benchmark of dr_saliency.lesions.froc and dr_saliency.lesions.candidates: prints times from one run.

1. ``froc`` on many images (default 1,000 lesion maps of 256x256 with about 20 lesions each and
   200 candidates per image), split into its parts: building label maps from bool masks
   (``label_lesions``: scipy.ndimage.label, 8-connected) and the matching + curve given label
   maps, at tolerance 0 and > 0. Target: matching + curve of 1,000 images under 1 s at
   tolerance 0.
2. ``bootstrap`` and ``paired_bootstrap`` with 1,000 replicates on a few hundred images, against
   a literal resample-and-recompute (``froc`` on each resampled list) timed on a few replicates
   and checked equal. Target: a few seconds at most.
3. ``detect_candidates`` on a 512x512 map, for scale.

Usage::

    python bench/bench_froc.py                      # ~1 minute here
    python bench/bench_froc.py --images 200 --repeats 1 --boot-images 100
"""

import argparse
import os
import platform
import statistics
import sys
import time

import numpy as np
import scipy

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dr_saliency.lesions import froc as froc_lib  # noqa: E402
from dr_saliency.lesions.candidates import detect_candidates  # noqa: E402


def make_case(n_images, size, lesions, candidates, rng):
    """Random bool lesion masks (disks of radius 1-6 px) and candidates, 30% near lesion centres
    (Gaussian offsets of 3 px) and scoring higher."""
    masks, cands = [], []
    rows = np.arange(size)[:, None]
    cols = np.arange(size)[None, :]
    for _ in range(n_images):
        n = rng.poisson(lesions)
        centres = rng.uniform(8, size - 8, size=(n, 2))
        radii = rng.uniform(1, 6, size=n)
        mask = np.zeros((size, size), dtype=bool)
        for (r, c), rad in zip(centres, radii):
            r0, r1 = int(r - rad) - 1, int(r + rad) + 2
            c0, c1 = int(c - rad) - 1, int(c + rad) + 2
            mask[r0:r1, c0:c1] |= (rows[r0:r1] - r) ** 2 + (cols[:, c0:c1] - c) ** 2 <= rad ** 2
        near = int(0.3 * candidates) if n else 0
        pick = centres[rng.integers(0, n, size=near)] + rng.normal(0, 3, size=(near, 2)) if near else \
            np.empty((0, 2))
        points = np.concatenate([pick, rng.uniform(0, size - 1, size=(candidates - near, 2))])
        points = np.clip(points, 0, size - 1)
        # Candidates near lesions score higher on average, as a useful detector's would.
        scores = np.concatenate([rng.uniform(0.3, 1.0, size=near),
                                 rng.uniform(0.0, 0.7, size=candidates - near)])
        cands.append(np.column_stack([points, scores]))
        masks.append(mask)
    return cands, masks


def timed(fn, repeats):
    """(median, minimum) wall time of ``repeats`` calls and the last call's result."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times), result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--lesions", type=float, default=20, help="mean lesions per image (Poisson)")
    parser.add_argument("--candidates", type=int, default=200)
    parser.add_argument("--boot-images", type=int, default=300)
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    print(f"python {platform.python_version()}, numpy {np.__version__}, scipy {scipy.__version__}, "
          f"{os.cpu_count()} CPUs, load average {', '.join(f'{v:.2f}' for v in os.getloadavg())}")
    rng = np.random.default_rng(0)
    cands, masks = make_case(args.images, args.size, args.lesions, args.candidates, rng)
    print(f"case: {args.images} images {args.size}x{args.size}, {args.candidates} candidates each, "
          f"mean {args.lesions:g} lesions drawn per image; median (minimum) of {args.repeats} runs")

    print("\n[1] froc")
    med, low, labels = timed(lambda: [froc_lib.label_lesions(m) for m in masks], args.repeats)
    n_lesions = sum(int(lab.max()) for lab in labels)
    print(f"  label maps from bool masks (label_lesions): {med:.3f} s ({low:.3f}) "
          f"-> {args.images / med:,.0f} images/s; {n_lesions} lesions "
          f"({n_lesions / args.images:.1f} per image after merging overlaps)")
    for tolerance in (0, 2, 5):
        med, low, result = timed(lambda: froc_lib.froc(cands, labels, tolerance), args.repeats)
        print(f"  matching + curve, label maps, tolerance {tolerance}: {med:.3f} s ({low:.3f}) "
              f"-> {args.images / med:,.0f} images/s; {result.thresholds.size} points, "
              f"score {result.score():.4f}" + ("   [target < 1 s]" if tolerance == 0 else ""))
    med, low, from_masks = timed(lambda: froc_lib.froc(cands, masks, 0), args.repeats)
    same = np.array_equal(from_masks.sensitivity, froc_lib.froc(cands, labels, 0).sensitivity)
    print(f"  froc from bool masks (labelling included), tolerance 0: {med:.3f} s ({low:.3f}) "
          f"-> {args.images / med:,.0f} images/s; same curve as from label maps: {same}")

    print(f"\n[2] bootstrap, {args.n_boot} replicates on {args.boot_images} images")
    b_cands, b_labels = cands[:args.boot_images], labels[:args.boot_images]
    # A second candidate set B, a worse detector: A's scores with Gaussian noise (sd 0.1) added.
    other = [np.column_stack([c[:, :2], c[:, 2] + rng.normal(0, 0.1, size=len(c))]) for c in b_cands]
    boot_times = {}
    for tolerance in (0, 2):
        med, low, boot = timed(lambda: froc_lib.bootstrap(b_cands, b_labels, tolerance=tolerance,
                                                          n_boot=args.n_boot, seed=0), args.repeats)
        print(f"  bootstrap, tolerance {tolerance}: {med:.3f} s ({low:.3f}); score {boot.score:.4f} "
              f"[{boot.score_interval[0]:.4f}, {boot.score_interval[1]:.4f}], average sensitivity "
              f"{boot.average_sensitivity:.4f} [{boot.average_sensitivity_interval[0]:.4f}, "
              f"{boot.average_sensitivity_interval[1]:.4f}]   [target: a few seconds]")
        boot_times[tolerance] = med
    med, low, paired = timed(lambda: froc_lib.paired_bootstrap(b_cands, other, b_labels,
                                                               n_boot=args.n_boot, seed=0), args.repeats)
    print(f"  paired_bootstrap, tolerance 0: {med:.3f} s ({low:.3f}); score B - A "
          f"{paired.score.difference:+.4f} [{paired.score.difference_interval[0]:+.4f}, "
          f"{paired.score.difference_interval[1]:+.4f}], B > A in "
          f"{100 * paired.score.fraction_b_greater:.1f}% of replicates")

    # The literal way: froc on each resampled list of images. Same numbers, replicate by replicate.
    literal_n = 5
    indices = np.random.default_rng(1).integers(0, len(b_labels), size=(literal_n, len(b_labels)))
    events, _ = froc_lib._prepare(b_cands, b_labels, 0)
    t0 = time.perf_counter()
    fast = froc_lib._replicate_summaries(events, indices, np.asarray(froc_lib.DEFAULT_RATES),
                                         float(froc_lib.DEFAULT_MAX_FP))
    t_fast = time.perf_counter() - t0
    t0 = time.perf_counter()
    slow = [froc_lib.froc([b_cands[i] for i in row], [b_labels[i] for i in row]) for row in indices]
    t_slow = time.perf_counter() - t0
    equal = all(fast["score"][k] == slow[k].score() and
                fast["average_sensitivity"][k] == slow[k].average_sensitivity() for k in range(literal_n))
    print(f"  literal resample + froc: {t_slow / literal_n * 1e3:.1f} ms per replicate "
          f"(-> {t_slow / literal_n * args.n_boot:.1f} s for {args.n_boot}) vs vectorised "
          f"{t_fast / literal_n * 1e3:.2f} ms per replicate on {literal_n} replicates "
          f"(the {args.n_boot}-replicate run above, matching included: "
          f"{boot_times[0] / args.n_boot * 1e3:.2f} ms per replicate); "
          f"bit-identical scores and average sensitivities: {equal}")

    print("\n[3] detect_candidates, 512x512 map")
    smap = np.zeros((512, 512), dtype=np.float32)
    yy, xx = np.mgrid[:512, :512]
    for r, c, a in rng.uniform([0, 0, 0.2], [512, 512, 1.0], size=(300, 3)):
        smap += a * np.exp(-((yy - r) ** 2 + (xx - c) ** 2) / (2 * 2.0 ** 2))
    smap += rng.uniform(0, 0.05, size=smap.shape).astype(np.float32)  # speckle
    fov = (yy - 255.5) ** 2 + (xx - 255.5) ** 2 <= 240 ** 2
    for border in (0, 10):
        med, low, found = timed(lambda: detect_candidates(smap, fov, border=border), args.repeats)
        print(f"  border {border}: {med * 1e3:.1f} ms ({low * 1e3:.1f}) per map, {len(found)} candidates")


if __name__ == "__main__":
    main()
