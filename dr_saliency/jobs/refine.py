"""The refine job: model file -> explainer and predictor -> refinement over a dataset -> result
file whose params record the model and the explanation, written once for the command line, the
demo and ``explain``, so that a run started by one caller resumes with another.

TensorFlow is imported inside :func:`refine_run` only, where a model is loaded.
"""

import os

from dr_saliency.core.files import file_sha256
from dr_saliency.core.shards import parse_shard, select_shard
from dr_saliency.explain.options import DEFAULT_BATCH_SIZE, Explanation
from dr_saliency.refinement.loop import run_params
from dr_saliency.refinement.run import refine_dataset

__all__ = ["load_refiner", "model_reference", "refine_run"]


def model_reference(model_path, out):
    """How a result file names its model: the path relative to the result file's folder.

    Relative, so that a folder holding both (the demo's) can move; the same for every caller that
    names the same files, whatever its working directory.
    """
    return os.path.relpath(os.path.abspath(model_path),
                           os.path.dirname(os.path.abspath(out))).replace(os.sep, "/")


def load_refiner(model_path, out, *, explanation=None, batch_size=DEFAULT_BATCH_SIZE,
                 precision="fp32"):
    """The grader in ``model_path`` as the loop's explainer and predictor.

    Args:
        model_path: str, a full model file (:func:`dr_saliency.grader.model.load_model`).
        out: str, the result file the run writes (the model is recorded relative to it).
        explanation: :class:`~dr_saliency.explain.options.Explanation`, or None (guided
            back-propagation, the negative gradient).
        batch_size: images per pass.
        precision: the network's arithmetic, "fp32" or "bf16"
            (:func:`dr_saliency.grader.model.with_precision`); recorded when not "fp32".

    Returns:
        dict with ``explain`` and ``predict`` (callables), ``size`` (the model's input side) and
        ``params`` (what a result file records of the model: its path relative to ``out`` and
        its SHA-256, so that another model copied over the same path is not mixed in; the
        explanation and the precision).
    """
    explanation = Explanation() if explanation is None else explanation
    if not isinstance(explanation, Explanation):
        raise TypeError(f"Expected an Explanation or None. Received: explanation={explanation!r}")
    from dr_saliency.explain.explainer import make_explainer, make_predictor
    from dr_saliency.grader.model import load_model, with_precision

    net = with_precision(load_model(model_path), precision)
    explain = make_explainer(net, explanation.method, explanation.sign, explanation.reduce,
                             explanation.target, batch_size=batch_size,
                             **explanation.method_options())
    # Recorded only when not the default, so that result files made before the option existed
    # (float32) still resume and compare equal.
    extra = {} if precision == "fp32" else {"precision": precision}
    return {"explain": explain, "predict": make_predictor(net, batch_size=batch_size),
            "size": int(net.input_shape[1]),
            "params": {"model": model_reference(model_path, out),
                       "model_sha256": file_sha256(model_path), **explanation.to_params(),
                       **extra}}


def refine_run(model_path, records, out, *, explanation=None, config=None, erase=None,
               batch_size=DEFAULT_BATCH_SIZE, keep_images=False, only_referable=False,
               skip_bad=False, on_image=None, on_progress=None, precision="fp32", dataset=None,
               grader=None, image_params=None, redo=(), shard=None):
    """Refine ``records`` with the grader in ``model_path`` into the result file ``out``.

    The one refine job: ``dr-saliency refine``, the demo and ``explain`` all run it, so a result
    file one of them started resumes with another.

    Args:
        model_path: str, a full model file (a training run's ``model.h5``).
        records: dataset records (:func:`dr_saliency.fundus.datasets.select_records`).
        out: str, the ``.h5`` result file; an existing one made with the same params resumes.
        explanation: :class:`~dr_saliency.explain.options.Explanation`, or None (guided
            back-propagation, the negative gradient).
        config, erase: the loop's :class:`~dr_saliency.refinement.loop.RefineConfig` and erase
            step, or None for the defaults.
        batch_size: images per pass and per refinement batch.
        keep_images, only_referable, skip_bad, on_image, on_progress, image_params, redo: as
            :func:`dr_saliency.refinement.run.refine_dataset`.
        precision: as :func:`load_refiner`.
        dataset: optional, the dataset ``records`` come from
            (:func:`dr_saliency.fundus.datasets.open_dataset`): its fingerprint
            (:func:`~dr_saliency.fundus.datasets.dataset_fingerprint`) is recorded as
            ``params["data"]``, so that results of another dataset are not appended and
            ``froc``/``figures`` can check the dataset they are given.
        grader: optional, what :func:`load_refiner` returned for ``model_path`` and ``out``
            (a caller that needs the model's input size before it makes its records); None:
            loaded here.
        shard: optional :class:`~dr_saliency.core.shards.Shard` or ``"K/N"``: refine only the
            records that shard owns (:mod:`dr_saliency.core.shards`), recorded as
            ``params["shard"]`` (:func:`dr_saliency.refinement.merge.merge_stores` joins the N
            shards' files into the file an unsharded run writes).

    Returns:
        the summary dict of :func:`~dr_saliency.refinement.run.refine_dataset`.
    """
    run_params(config, erase)  # bad settings fail now, before the model is loaded
    if shard is not None:
        shard = parse_shard(shard)
        records = select_shard(records, shard)
    if grader is None:
        grader = load_refiner(model_path, out, explanation=explanation, batch_size=batch_size,
                              precision=precision)
    params = dict(grader["params"])
    if dataset is not None:
        from dr_saliency.fundus.datasets import dataset_fingerprint

        params["data"] = dataset_fingerprint(dataset)
    if shard is not None:
        params["shard"] = shard.to_params()
    return refine_dataset(
        records, out, explain=grader["explain"], predict=grader["predict"], erase=erase,
        config=config, size=grader["size"], params=params, batch_size=batch_size,
        keep_images=keep_images, only_referable=only_referable, skip_bad=skip_bad,
        on_image=on_image, on_progress=on_progress, image_params=image_params, redo=redo)
