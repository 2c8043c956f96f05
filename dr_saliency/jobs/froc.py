"""The froc job: result file + dataset -> candidates of s_0 and S -> FROC report -> files."""

import os

from dr_saliency.lesions import fate, localize, reports

__all__ = ["froc_run", "froc_scores"]


def froc_run(results, records, out_dir, *, options=None, stages=(2, 3, 4), tolerance=0.0,
             n_boot=1000, decay=None, combine=None, normalize=None, allow_partial=False,
             force=False, notes=(), params=None, on_progress=None, lesions_fp=None):
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
        on_progress: optional ``on_progress(label, total) -> advance(k=1)``
            (:mod:`dr_saliency.core.progress`): one phase, "Candidates".
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
    items, report = froc_scores(results, records, options=options, stages=stages,
                                tolerance=tolerance, n_boot=n_boot, decay=decay, combine=combine,
                                normalize=normalize, on_progress=on_progress,
                                erasures=lesions_fp is not None)
    fates = None
    if lesions_fp is not None:
        fates = fate.lesion_fates(items, fp_rate=lesions_fp, stages=stages, tolerance=tolerance)
        for name, group in fates.groups.items():
            report[name]["fate"] = group
    recorded = {"results": os.path.abspath(results), "tolerance": tolerance, "n_boot": n_boot,
                "combine": combine, "decay": decay, "normalize": normalize,
                "candidates": options.to_params(), "allow_partial": bool(allow_partial),
                "force": bool(force), "notes": list(notes), **(params or {})}
    if fates is not None:
        recorded["lesions_fp"] = fates.fp_rate
    # metrics.json marks a complete folder (the demo's froc step is done once it exists): an
    # earlier evaluation's goes first, so that a run stopped from here on leaves no folder that
    # claims to be complete with the files of two evaluations in it.
    reports.remove_done_marker(out_dir)
    paths = reports.write_lesion_fate(fates, out_dir) if fates is not None else []
    # Last: write_froc writes metrics.json last.
    paths += reports.write_froc(report, out_dir, params=recorded)
    return report, paths


def froc_scores(results, records, *, options=None, stages=(2, 3, 4), tolerance=0.0, n_boot=1000,
                seed=0, decay=None, combine=None, normalize=None, on_progress=None,
                erasures=False):
    """Candidates of s_0 and S of ``records`` in the result file ``results``, and their FROC.

    The one scoring of a result file: :func:`froc_run` writes it, ``replicate`` scores each seed
    with it under several combination rules.

    Args:
        results: str, the result file.
        records: the annotated records to evaluate
            (:func:`dr_saliency.lesions.localize.records_for`).
        options: :class:`~dr_saliency.lesions.localize.CandidateOptions`, or None.
        stages, tolerance, n_boot, seed: as :func:`dr_saliency.lesions.localize.froc_report`.
        decay, combine, normalize, on_progress, erasures: as
            :func:`dr_saliency.lesions.localize.collect`.

    Returns:
        (items, report): what :func:`~dr_saliency.lesions.localize.collect` and
        :func:`~dr_saliency.lesions.localize.froc_report` return.
    """
    items = localize.collect(results, records, options, decay=decay, combine=combine,
                             normalize=normalize, on_progress=on_progress, erasures=erasures)
    return items, localize.froc_report(items, stages=stages, tolerance=tolerance, n_boot=n_boot,
                                       seed=seed)
