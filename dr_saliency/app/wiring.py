"""The wiring of the method's stages, written once for the command line and the demo.

``refine_run``: model file -> explainer and predictor -> refinement over a dataset -> result file
whose params record the model and the explanation, so that a run started by one caller resumes
with the other. ``froc_run``: result file + dataset -> candidates -> FROC report -> files.

TensorFlow is imported inside :func:`refine_run` only, where a model is loaded.
"""

import os

from dr_saliency.core.files import file_sha256
from dr_saliency.explain.options import DEFAULT_BATCH_SIZE, Explanation
from dr_saliency.lesions import fate, localize, reports
from dr_saliency.refinement.loop import run_params
from dr_saliency.refinement.run import refine_dataset

__all__ = ["froc_run", "load_refiner", "model_reference", "refine_run"]


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
               skip_bad=False, on_image=None, precision="fp32", data_fingerprint=None):
    """Refine ``records`` with the grader in ``model_path`` into the result file ``out``.

    Args:
        model_path: str, a full model file (a training run's ``model.h5``).
        records: dataset records (:func:`dr_saliency.fundus.datasets.select_records`).
        out: str, the ``.h5`` result file; an existing one made with the same params resumes.
        explanation: :class:`~dr_saliency.explain.options.Explanation`, or None (guided
            back-propagation, the negative gradient).
        config, erase: the loop's :class:`~dr_saliency.refinement.loop.RefineConfig` and erase
            step, or None for the defaults.
        batch_size: images per pass and per refinement batch.
        keep_images, only_referable, skip_bad, on_image: as
            :func:`dr_saliency.refinement.run.refine_dataset`.
        precision: as :func:`load_refiner`.
        data_fingerprint: optional str, the dataset's fingerprint
            (:func:`dr_saliency.fundus.datasets.dataset_fingerprint`), recorded as ``params["data"]``
            so that results of another dataset are not appended and ``froc``/``figures`` can
            check the dataset they are given.

    Returns:
        the summary dict of :func:`~dr_saliency.refinement.run.refine_dataset`.
    """
    run_params(config, erase)  # bad settings fail now, before the model is loaded
    grader = load_refiner(model_path, out, explanation=explanation, batch_size=batch_size,
                          precision=precision)
    params = dict(grader["params"])
    if data_fingerprint is not None:
        params["data"] = data_fingerprint
    return refine_dataset(
        records, out, explain=grader["explain"], predict=grader["predict"], erase=erase,
        config=config, size=grader["size"], params=params, batch_size=batch_size,
        keep_images=keep_images, only_referable=only_referable, skip_bad=skip_bad,
        on_image=on_image)


def froc_run(results, records, out_dir, *, options=None, stages=(2, 3, 4), tolerance=0.0,
             n_boot=1000, decay=None, combine=None, normalize=None, allow_partial=False,
             force=False, notes=(), params=None, on_image=None, lesions_fp=None):
    """Lesion-level FROC of s_0 and S of a result file against its images' annotations.

    Args:
        results: str, the result file.
        records: the annotated records to evaluate, complete in ``results``
            (:func:`dr_saliency.lesions.localize.records_for`).
        out_dir: str, where metrics.json, curves.csv and the FROC figures go.
        options: :class:`~dr_saliency.lesions.localize.CandidateOptions`, or None.
        stages, tolerance, n_boot: as :func:`dr_saliency.lesions.localize.froc_report`.
        decay, combine, normalize: rescore the stored maps this way (None: the run's setting).
        allow_partial, force: how ``records`` were chosen
            (:func:`~dr_saliency.lesions.localize.records_for`), recorded in metrics.json with
            its ``notes`` (what was left out), so that an evaluation of partial results or of
            another dataset can be told apart later.
        params: extra entries recorded in metrics.json under "params".
        on_image: optional callable(k) as images are done.
        lesions_fp: None, or the false positives per image at which to say which lesions s_0
            and S find (:func:`dr_saliency.lesions.fate.lesion_fates`): then also written are
            lesions.csv, lesion_fate.csv and lesion_fate.md, and each group's counts go into
            the report as ``report[group]["fate"]`` (and metrics.json).

    Returns:
        (report, paths): the :func:`~dr_saliency.lesions.localize.froc_report` report and the files
        written.
    """
    options = localize.CandidateOptions() if options is None else options
    if lesions_fp is not None:
        fate.check_fp_rate(lesions_fp, "lesions_fp")  # before the long part
    items = localize.collect(results, records, options, decay=decay, combine=combine,
                             normalize=normalize, on_image=on_image,
                             erasures=lesions_fp is not None)
    report = localize.froc_report(items, stages=stages, tolerance=tolerance, n_boot=n_boot)
    fates = None
    if lesions_fp is not None:
        fates = fate.lesion_fates(items, fp_rate=lesions_fp, stages=stages, tolerance=tolerance)
        for name, group in fates.groups.items():
            report[name]["fate"] = group
    recorded = {"results": os.path.abspath(results), "tolerance": tolerance, "n_boot": n_boot,
                "combine": combine, "decay": decay, "normalize": normalize,
                "candidates": vars(options), "allow_partial": bool(allow_partial),
                "force": bool(force), "notes": list(notes), **(params or {})}
    if fates is not None:
        recorded["lesions_fp"] = fates.fp_rate
    paths = reports.write_lesion_fate(fates, out_dir) if fates is not None else []
    # Last: write_froc writes metrics.json last, the mark of a complete folder.
    paths += reports.write_froc(report, out_dir, params=recorded)
    return report, paths
