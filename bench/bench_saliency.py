"""Benchmark of dr_saliency.explain (docs/performance.md): prints times and ratios from one run.

1. Guided back-propagation vs a plain input gradient (``tape.gradient`` in a ``tf.function``, the
   physical floor of any gradient method) on the full-width VGG-16 grader at 512 px, batch 1 and
   4. Target: ratio <= 1.10.
2. Against tf-keras-vis 0.8 (``Saliency`` with the ``GuidedBackpropagation`` model modifier; it
   clones the model, swaps the activations, and runs eagerly): the same raw gradients (max
   absolute difference <= 1e-5 of the gradient's largest magnitude) and at least as fast.
3. One refinement iteration's network work: the explainer (saliency map and prediction from one
   forward+backward pass) vs a saliency map plus a separate ``predict``.

Usage (benchmark-only dependency: ``pip install "tf-keras-vis==0.8.*"``)::

    python bench/bench_saliency.py                      # full network at 512, ~2-3 minutes
    python bench/bench_saliency.py --size 128 --width 0.0625 --repeats 2 --repeats-batched 2

Random weights (``weights=None``; the output layer, zero-initialised by ``build_model``, gets small
random weights so that gradients are not zero) and random images: speed does not depend on them.
"""

import argparse
import os
import platform
import statistics
import sys
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dr_saliency.explain import explainer, gradients, surgery  # noqa: E402
from dr_saliency.core._tf import keras, tf  # noqa: E402
from dr_saliency.grader.model import build_model, preprocess_input  # noqa: E402


def interleaved(fns, repeats):
    """Median and minimum wall time of each callable (after the caller's warm-up).

    Calls are interleaved so that load changes on a shared machine hit all alike; the minimum is
    printed beside the median because other users' jobs only ever add time.
    """
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return ({name: statistics.median(t) for name, t in times.items()},
            {name: min(t) for name, t in times.items()})


def plain_gradient_function(model):
    """The floor: d output / d input with a plain GradientTape, traced like the guided one."""
    spec = tf.TensorSpec((None,) + tuple(model.inputs[0].shape[1:]), tf.float32)

    @tf.function(input_signature=[spec], reduce_retracing=True)
    def gradient(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = tf.reshape(model(x, training=False), [-1])
            objective = tf.reduce_sum(y)
        return tape.gradient(objective, x), y

    return lambda x: [t.numpy() for t in gradient(x)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs at batch 1")
    parser.add_argument("--repeats-batched", type=int, default=3,
                        help="timed runs at batch sizes > 1 (they dominate the run time)")
    parser.add_argument("--skip-tf-keras-vis", action="store_true")
    args = parser.parse_args(argv)
    # tf-keras-vis passes the input as a list to a model built on a single tensor; Keras 3 warns
    # about the structure on every call, which is noise here.
    warnings.filterwarnings("ignore", message="The structure of `inputs` doesn't match")

    print(f"python {platform.python_version()}, TensorFlow {tf.__version__}, Keras "
          f"{keras.__version__}, {os.cpu_count()} CPUs, load average "
          f"{', '.join(f'{v:.2f}' for v in os.getloadavg())}")
    t0 = time.perf_counter()
    model = build_model((args.size, args.size, 3), weights=None, width=args.width)
    rng = np.random.default_rng(0)
    out = model.get_layer("dr_stage")
    out.set_weights([rng.standard_normal(out.kernel.shape).astype(np.float32) * 0.01,
                     np.zeros(1, np.float32)])
    print(f"model: VGG-16 grader at {args.size} px, width {args.width}, "
          f"{model.count_params():,} parameters (built in {time.perf_counter() - t0:.1f} s); "
          f"after one warm-up, {args.repeats} timed runs at batch 1, {args.repeats_batched} at "
          "larger batches; median (and minimum)")
    images = rng.integers(0, 256, (max(args.batches), args.size, args.size, 3), np.uint8)
    x_all = preprocess_input(images)

    # 1. guided vs the plain gradient
    print("\n[1] guided back-propagation vs plain tape.gradient (both traced tf.functions)")
    plain = plain_gradient_function(model)
    predict = explainer.make_predictor(model, batch_size=max(args.batches))
    t0 = time.perf_counter()
    gradients.guided_backprop(model, x_all[:1])  # first call: builds the clone and traces
    print(f"  first guided call (builds the weight-sharing clone, traces): "
          f"{time.perf_counter() - t0:.2f} s")
    for n in args.batches:
        x = x_all[:n]
        gradients.guided_backprop(model, x)
        plain(x)
        predict(images[:n])
        med, low = interleaved({
            "forward": lambda: predict(images[:n]),
            "plain": lambda: plain(x),
            "guided": lambda: gradients.guided_backprop(model, x, return_outputs=True),
        }, args.repeats if n == 1 else args.repeats_batched)
        print(f"  batch {n}: forward {med['forward']:.3f} s, plain gradient {med['plain']:.3f} s, "
              f"guided {med['guided']:.3f} s -> guided / plain = "
              f"{med['guided'] / med['plain']:.3f} (target <= 1.10) | minima: forward "
              f"{low['forward']:.3f}, plain {low['plain']:.3f}, guided {low['guided']:.3f} -> "
              f"{low['guided'] / low['plain']:.3f}")
    count = surgery._CACHE[model][("guided", "output")].experimental_get_tracing_count()
    print(f"  guided function traces over all batch sizes: {count}")

    # 2. tf-keras-vis
    if not args.skip_tf_keras_vis:
        print("\n[2] tf-keras-vis Saliency + GuidedBackpropagation (raw gradients: keepdims=True, "
              "normalize_map=False, gradient_modifier=None, score = the output)")
        try:
            import tf_keras_vis
            from tf_keras_vis.saliency import Saliency
            from tf_keras_vis.utils.model_modifiers import GuidedBackpropagation
        except Exception as exc:  # report exactly why the comparison could not run
            print(f"  tf-keras-vis unavailable: {type(exc).__name__}: {exc}")
        else:
            t0 = time.perf_counter()
            vis = Saliency(model, model_modifier=GuidedBackpropagation(), clone=True)
            setup = time.perf_counter() - t0
            swapped = sum(getattr(layer, "activation", None) is not None
                          and getattr(layer.activation, "__name__", "") == "guided_activation"
                          for layer in vis.model.layers)
            print(f"  tf-keras-vis {tf_keras_vis.__version__}: clone + set_weights + modifier "
                  f"{setup:.2f} s, {swapped} activations swapped to guided")

            def score(output):
                return output[:, 0]

            def tkv(x):
                return vis(score, x, keepdims=True, normalize_map=False, gradient_modifier=None)

            for n in args.batches:
                x = x_all[:n]
                ref = np.asarray(tkv(x))
                ours = gradients.guided_backprop(model, x)
                diff = float(np.abs(ref - ours).max())
                scale = float(np.abs(ours).max())
                # Not vacuous: the guided gradient is far from the plain one on this model.
                vs_plain = float(np.abs(plain(x)[0] - ours).max()) / scale
                med, low = interleaved({
                    "ours": lambda: gradients.guided_backprop(model, x),
                    "tkv": lambda: tkv(x),
                }, args.repeats if n == 1 else args.repeats_batched)
                print(f"  batch {n}: max |difference| {diff:.3g} = {diff / scale:.2e} of max |grad| "
                      f"{scale:.3g} ({'equal' if diff <= 1e-5 * scale else 'DIFFERENT'} at 1e-5; "
                      f"guided vs plain gradient: {vs_plain:.2f} of max |grad|); "
                      f"tf-keras-vis {med['tkv']:.3f} s, ours {med['ours']:.3f} s -> "
                      f"tf-keras-vis / ours = {med['tkv'] / med['ours']:.2f}x | minima "
                      f"{low['tkv']:.3f} / {low['ours']:.3f} = {low['tkv'] / low['ours']:.2f}x")
            del vis

    # 3. one refinement iteration's network work
    print("\n[3] refinement iteration, batch 1: explainer (map + prediction, one pass) vs "
          "map + separate predict")
    explain = explainer.make_explainer(model)
    image = images[:1]

    def separate():
        maps, _ = explain(image)
        return maps, predict(image)

    explain(image)
    med, low = interleaved({"one_pass": lambda: explain(image), "separate": separate},
                           args.repeats)
    for label, t in (("median", med), ("minimum", low)):
        print(f"  {label}: explainer {t['one_pass']:.3f} s, map + predict {t['separate']:.3f} s "
              f"-> saving {t['separate'] - t['one_pass']:.3f} s per iteration "
              f"({1 - t['one_pass'] / t['separate']:.0%})")


if __name__ == "__main__":
    main()
