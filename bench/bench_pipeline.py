"""Is the tf.data input pipeline the bottleneck of training?

Times, in one run and on the same compiled model, (a) training steps fed by the real pipeline
(PNG decoding, balancing, augmentation, preprocessing, prefetch: ``train.make_dataset``) and
(b) the same number of training steps on batches already in memory (the floor: no input work).
Prints images/s of both and their ratio; the pipeline is not the bottleneck when the ratio is
close to 1 (target >= 0.9).

    python bench/bench_pipeline.py                       # quick profile on a fresh synthetic set
    python bench/bench_pipeline.py --data DIR --size 256 --width 0.125 --batch-size 16
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

from dr_saliency.fundus import synth  # noqa: E402
from dr_saliency.grader import train as train_lib  # noqa: E402
from dr_saliency.grader.config import QUICK_PROFILE, TrainConfig  # noqa: E402
from dr_saliency.fundus.datasets import open_dataset  # noqa: E402


def timed_epoch(net, dataset, steps):
    """Seconds of one ``fit`` epoch of ``steps`` steps on ``dataset``."""
    start = time.perf_counter()
    net.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0, shuffle=False)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="dataset folder (default: generate a synthetic one)")
    parser.add_argument("--n", type=int, default=400, help="images to generate without --data")
    parser.add_argument("--size", type=int, default=QUICK_PROFILE["input_size"])
    parser.add_argument("--width", type=float, default=QUICK_PROFILE["width"])
    parser.add_argument("--batch-size", type=int, default=QUICK_PROFILE["batch_size"])
    parser.add_argument("--steps", type=int, default=30, help="timed steps per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    tmp = None
    data = args.data
    if data is None:
        tmp = tempfile.TemporaryDirectory()
        data = tmp.name
        synth.write_dataset(data, args.n, size=args.size, seed=0)
    config = TrainConfig(**dict(QUICK_PROFILE, input_size=args.size,
                                          width=args.width, batch_size=args.batch_size))
    records = [r for r in open_dataset(data) if r.grade is not None]
    net = train_lib.build_compiled(config, 100, train_lib.get_strategy("default"))
    from dr_saliency.core._tf import tf

    pipeline = train_lib.make_dataset(records, config, training=True, seed=0)
    # The in-memory floor: the same kind of batches, decoded and augmented once, then reused.
    cached = list(pipeline.take(8))
    memory = tf.data.Dataset.from_tensor_slices(
        (tf.stack([x for x, _ in cached]), tf.stack([y for _, y in cached]))).repeat()
    timed_epoch(net, pipeline, 5)  # warm-up: tracing, thread pools, prefetch buffers
    timed_epoch(net, memory, 5)
    t_pipe, t_mem = [], []
    for _ in range(args.repeats):  # interleaved, so drift of the machine hits both alike
        t_pipe.append(timed_epoch(net, pipeline, args.steps))
        t_mem.append(timed_epoch(net, memory, args.steps))
    images = args.steps * args.batch_size
    pipe_rate = images / statistics.median(t_pipe)
    mem_rate = images / statistics.median(t_mem)
    print(f"input {args.size}px, width {args.width}, batch {args.batch_size}, "
          f"{len(records)} images, {os.cpu_count()} CPUs")
    print(f"train steps on in-memory batches : {mem_rate:7.1f} images/s")
    print(f"train steps through the pipeline : {pipe_rate:7.1f} images/s")
    print(f"ratio pipeline / in-memory       : {pipe_rate / mem_rate:7.3f}  (target >= 0.9)")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
