"""Sharded jobs: refine, explain and evaluate as N shards on the engine, then one merged output.

Three ways to run a job (docs/training.md#one-machine-an-array-job-or-a-cluster):

1. one process (no option);
2. ``--shard K/N``: one shard per invocation (a scheduler's array job, one per GPU); each writes
   its own output recording its shard, and ``dr-saliency merge`` joins them
   (:func:`merge_outputs`);
3. ``--workers N`` / ``--cluster ADDRESS``: the N shards as tasks on a Dask cluster
   (:mod:`dr_saliency.jobs.engine`), written under ``<OUT>.shards/`` (``<k>-of-<n>.h5`` or
   ``<k>-of-<n>/``, kept so that a rerun resumes) and merged into ``OUT``.

A task (``RefineShard``, ``ExplainShard``, ``EvaluateShard``) is a small frozen object with the
job's settings that the worker process calls with its shard: it opens the data itself (the data
and the model must be at the same path on every worker: a shared file system) and keeps the
loaded model in the worker for the next shard it runs.
"""

import dataclasses
import os
import time
from typing import Any, Optional, Tuple

from dr_saliency.core.files import file_sha256
from dr_saliency.core.shards import Shard
from dr_saliency.explain.options import DEFAULT_BATCH_SIZE
from dr_saliency.jobs import engine

__all__ = ["EvaluateShard", "ExplainShard", "RefineShard", "evaluate_sharded", "evaluation_params",
           "explain_sharded", "merge_outputs", "output_kind", "refine_sharded", "shards_folder"]

#: ``<OUT><SHARDS_SUFFIX>`` holds the shards' outputs of a ``--workers``/``--cluster`` run.
SHARDS_SUFFIX = ".shards"

# One loaded model per worker process (the last one used): a worker runs shard after shard of
# the same job, and two models of the paper's size would not fit a GPU together.
_LOADED = {}


def shards_folder(out):
    """Where a ``--workers``/``--cluster`` run keeps its shards' outputs: ``<out>.shards``."""
    return os.path.normpath(os.fspath(out)) + SHARDS_SUFFIX


def shard_output(folder, shard, suffix=""):
    """The output of ``shard`` in ``folder``: ``<k>-of-<n><suffix>``."""
    return os.path.join(folder, f"{shard.index}-of-{shard.count}{suffix}")


def _loaded(key, load):
    if key not in _LOADED:
        _LOADED.clear()
        _LOADED[key] = load()
    return _LOADED[key]


def _model_key(path):
    stat = os.stat(path)
    return os.path.abspath(path), stat.st_size, stat.st_mtime_ns


def _shard_count(workers, address):
    return workers if address is None or workers is not None else engine.cluster_size(address)


def _run(task, out, count, key, workers, address, on_shard, on_progress, suffix):
    """The shards' outputs and their summaries; a shard an earlier run did counts its images
    as ``already_done`` (when its summary has counts)."""
    folder = shards_folder(out)
    done = engine.run_shards(task, count, folder, key=key, workers=None if address else workers,
                             address=address, on_shard=on_shard, on_progress=on_progress,
                             what=f"the shards of {out!r}")
    summaries = []
    for summary, earlier in done:
        if earlier and "written" in summary:
            summary = {**summary, "written": 0, "replaced": 0, "stop_reasons": {},
                       "already_done": summary["already_done"] + summary["written"]}
        summaries.append(summary)
    return [shard_output(folder, Shard(k, count), suffix) for k in range(1, count + 1)], summaries


# ------------------------------------------------------------------------------------- refine


@dataclasses.dataclass(frozen=True)
class RefineShard:
    """A refine shard's task: the shard's records of ``data`` into ``<folder>/<k>-of-<n>.h5``."""

    model_path: str
    data: str
    folder: str
    layout: Optional[str] = None
    split: str = "all"
    ids: Optional[Tuple[str, ...]] = None
    explanation: Any = None
    config: Any = None
    erase: Any = None
    batch_size: int = DEFAULT_BATCH_SIZE
    keep_images: bool = False
    only_referable: bool = False
    skip_bad: bool = False
    precision: str = "fp32"

    def __call__(self, shard):
        from dr_saliency.fundus.datasets import open_dataset, select_records
        from dr_saliency.jobs import refine as refine_job

        dataset = open_dataset(self.data, layout=self.layout, skip_bad=self.skip_bad)
        records = select_records(dataset, split=self.split, ids=self.ids)
        out = shard_output(self.folder, shard, ".h5")
        grader = _loaded(("refine", _model_key(self.model_path), self.explanation,
                          self.batch_size, self.precision),
                         lambda: refine_job.load_refiner(
                             self.model_path, out, explanation=self.explanation,
                             batch_size=self.batch_size, precision=self.precision))
        # Loaded for another shard's file, maybe: the model is named relative to this one.
        grader = {**grader, "params": {**grader["params"], "model": refine_job.model_reference(
            self.model_path, out)}}
        summary = refine_job.refine_run(
            self.model_path, records, out, explanation=self.explanation, config=self.config,
            erase=self.erase, batch_size=self.batch_size, keep_images=self.keep_images,
            only_referable=self.only_referable, skip_bad=self.skip_bad,
            precision=self.precision, dataset=dataset, grader=grader, shard=shard)
        return {**summary, "skipped": [list(s) for s in summary["skipped"]]}


def refine_sharded(model_path, data, out, *, workers=None, address=None, layout=None,
                   split="all", ids=None, explanation=None, config=None, erase=None,
                   batch_size=DEFAULT_BATCH_SIZE, keep_images=False, only_referable=False,
                   skip_bad=False, precision="fp32", on_shard=None, on_progress=None):
    """``refine`` of ``data`` as shards on the engine, merged into the result file ``out``.

    Args:
        model_path, data: the grader's model file and the dataset folder (paths every worker
            reaches).
        out: str, the merged result file: new, or the merge of an earlier run of this function
            (rerunning it resumes the shards and merges again).
        workers: int, local worker processes (and shards); with ``address``: the number of
            shards (None: one per worker of the cluster).
        address: str, an existing cluster's scheduler, or None for a local cluster.
        layout, split, ids: the records, as :func:`dr_saliency.fundus.datasets.select_records`.
        explanation, config, erase, batch_size, keep_images, only_referable, skip_bad,
            precision: as :func:`dr_saliency.jobs.refine.refine_run`.
        on_shard, on_progress: as :func:`dr_saliency.jobs.engine.run_shards` (and the merge's
            progress).

    Returns:
        dict as :func:`~dr_saliency.refinement.run.refine_dataset`'s summary, summed over the
        shards, plus ``shards`` and ``images`` (in the merged file).
    """
    from dr_saliency.fundus.datasets import dataset_fingerprint, open_dataset
    from dr_saliency.refinement.loop import run_params
    from dr_saliency.refinement.merge import merge_stores

    start = time.time()
    settings = run_params(config, erase)  # bad settings fail before any work
    _check_merged_store(out)
    engine.import_engine()
    count = _shard_count(workers, address)
    dataset = open_dataset(data, layout=layout, skip_bad=skip_bad)
    ids = None if ids is None else tuple(ids)
    task = RefineShard(os.path.abspath(model_path), os.path.abspath(data),
                       os.path.abspath(shards_folder(out)), layout, split, ids, explanation,
                       config, erase, batch_size, keep_images, only_referable, skip_bad,
                       precision)
    key = {"job": "refine", "model_sha256": file_sha256(model_path),
           "data": dataset_fingerprint(dataset), "split": split, "ids": ids,
           "explanation": None if explanation is None else explanation.to_params(),
           "settings": settings, "batch_size": batch_size, "keep_images": keep_images,
           "only_referable": only_referable, "skip_bad": skip_bad, "precision": precision}
    paths, summaries = _run(task, out, count, key, workers, address, on_shard, on_progress,
                            ".h5")
    merged = merge_stores(out, paths, overwrite=True, on_progress=on_progress)
    total = {"written": 0, "already_done": 0, "not_referable": 0, "skipped": [],
             "stop_reasons": {}}
    for summary in summaries:
        for name in ("written", "already_done", "not_referable"):
            total[name] += summary[name]
        total["skipped"] += [tuple(s) for s in summary["skipped"]]
        for reason, n in summary["stop_reasons"].items():
            total["stop_reasons"][reason] = total["stop_reasons"].get(reason, 0) + n
    return {**total, "shards": count, "images": merged["images"], "seconds": time.time() - start}


def _check_merged_store(out):
    """Refuse to replace a result file that is not the merge of an earlier sharded run."""
    from dr_saliency.refinement.store import ResultStore

    if not os.path.exists(out):
        return
    with ResultStore(out) as store:
        runs = store.runs
    if not runs or "merged" not in runs[-1]:
        raise ValueError(f"Expected out to be a new result file or the merge of an earlier "
                         f"workers=/cluster= run (continue this file without them, or choose "
                         f"another out). Received: out={out!r}, the results of a refine run")


# ------------------------------------------------------------------------------------- explain


@dataclasses.dataclass(frozen=True)
class ExplainShard:
    """An explain shard's task: the shard's photographs into ``<folder>/<k>-of-<n>/``."""

    inputs: Tuple[str, ...]
    model_path: str
    folder: str
    explanation: Any = None
    config: Any = None
    erase: Any = None
    batch_size: int = DEFAULT_BATCH_SIZE
    top: int = 5
    options: Any = None
    skip_bad: bool = False
    precision: str = "fp32"

    def __call__(self, shard):
        from dr_saliency.jobs.explain import explain_photos

        summary = explain_photos(
            list(self.inputs), shard_output(self.folder, shard), model_path=self.model_path,
            explanation=self.explanation, config=self.config, erase=self.erase,
            batch_size=self.batch_size, top=self.top, options=self.options,
            skip_bad=self.skip_bad, precision=self.precision, shard=shard)
        return {"written": summary["written"], "already_done": summary["already_done"],
                "replaced": summary["replaced"], "rows": len(summary["rows"]),
                "skipped": [list(s) for s in summary["skipped"]]}


def explain_sharded(inputs, out_dir, *, workers=None, address=None, model_path=None,
                    explanation=None, config=None, erase=None, batch_size=DEFAULT_BATCH_SIZE,
                    top=5, options=None, skip_bad=False, precision="fp32", on_shard=None,
                    on_progress=None):
    """``explain`` of ``inputs`` as shards on the engine, merged into ``out_dir``.

    Arguments as :func:`dr_saliency.jobs.explain.explain_photos`, plus ``workers``,
    ``address``, ``on_shard`` as :func:`refine_sharded`. ``out_dir`` must hold no explain
    results but those of an earlier run of this function.

    Returns:
        dict as :func:`~dr_saliency.jobs.explain.merge_explains`, plus ``written``,
        ``already_done``, ``replaced`` (summed over the shards), ``earlier`` (0: the folder
        holds the shards' photographs only), ``shards``, ``seconds``.
    """
    from dr_saliency.fundus.photos import find_photos
    from dr_saliency.grader.model import bundled_model_path
    from dr_saliency.jobs.explain import RESULTS_FILE, merge_explains
    from dr_saliency.lesions.localize import CandidateOptions
    from dr_saliency.refinement.loop import run_params

    start = time.time()
    settings = run_params(config, erase)
    _check_merged_store(os.path.join(out_dir, RESULTS_FILE))
    engine.import_engine()
    model_path = os.path.abspath(bundled_model_path() if model_path is None else model_path)
    options = CandidateOptions() if options is None else options
    count = _shard_count(workers, address)
    found, _ = find_photos(list(inputs))
    # The photographs as given: their names in the tables are the paths given (a local
    # cluster's workers start in this folder; on another cluster give absolute paths).
    task = ExplainShard(tuple(os.fspath(p) for p in inputs), model_path,
                        os.path.abspath(shards_folder(out_dir)), explanation, config, erase,
                        batch_size, top, options, skip_bad, precision)
    key = {"job": "explain", "model_sha256": file_sha256(model_path),
           "photos": sorted([os.path.abspath(path), os.path.getsize(path),
                             os.stat(path).st_mtime_ns] for _, path in found),
           "explanation": None if explanation is None else explanation.to_params(),
           "settings": settings, "top": top, "candidates": options.to_params(),
           "skip_bad": skip_bad, "precision": precision, "batch_size": batch_size}
    paths, summaries = _run(task, out_dir, count, key, workers, address, on_shard, on_progress,
                            "")
    merged = merge_explains(out_dir, paths, overwrite=True, on_progress=on_progress)
    return {**merged, **{name: sum(s[name] for s in summaries)
                         for name in ("written", "already_done", "replaced")},
            "earlier": 0, "shards": count, "seconds": time.time() - start}


# ------------------------------------------------------------------------------------ evaluate


def evaluation_params(model_path, dataset):
    """What an evaluation records of what made it (``evaluate(..., params=)``): the model's
    SHA-256 and the data's fingerprint; the shards of one evaluation must agree on them."""
    from dr_saliency.fundus.datasets import dataset_fingerprint

    return {"model_sha256": file_sha256(model_path), "data": dataset_fingerprint(dataset)}


@dataclasses.dataclass(frozen=True)
class EvaluateShard:
    """An evaluate shard's task: the shard's images graded into ``<folder>/<k>-of-<n>/``."""

    model_path: str
    data: str
    folder: str
    params: Any
    layout: Optional[str] = None
    split: str = "test"
    batch_size: int = 16
    n_boot: int = 1000
    skip_bad: bool = False
    precision: str = "fp32"

    def __call__(self, shard):
        from dr_saliency.fundus.datasets import open_dataset
        from dr_saliency.grader import evaluate as evaluate_lib
        from dr_saliency.grader import model as model_lib

        net = _loaded(("evaluate", _model_key(self.model_path), self.precision),
                      lambda: model_lib.with_precision(model_lib.load_model(self.model_path),
                                                       self.precision))
        record = evaluate_lib.evaluate(
            net, open_dataset(self.data, layout=self.layout, skip_bad=self.skip_bad),
            shard_output(self.folder, shard), split=self.split, batch_size=self.batch_size,
            n_boot=self.n_boot, skip_bad=self.skip_bad, shard=shard, params=self.params)
        return {"n_images": record["n_images"], "skipped": len(record["skipped"])}


def evaluate_sharded(model_path, data, out_dir, *, workers=None, address=None, layout=None,
                     split="test", batch_size=16, n_boot=1000, skip_bad=False, precision="fp32",
                     on_shard=None, on_progress=None):
    """``evaluate`` as shards on the engine, merged into ``out_dir``
    (:func:`dr_saliency.grader.evaluate.merge_evaluations`): the same files, number for number,
    as one process writes.

    Returns:
        dict, the content of ``evaluation.json``.
    """
    from dr_saliency.fundus.datasets import open_dataset
    from dr_saliency.grader.evaluate import merge_evaluations

    engine.import_engine()
    count = _shard_count(workers, address)
    params = evaluation_params(model_path, open_dataset(data, layout=layout, skip_bad=skip_bad))
    task = EvaluateShard(os.path.abspath(model_path), os.path.abspath(data),
                         os.path.abspath(shards_folder(out_dir)), params, layout, split,
                         batch_size, n_boot, skip_bad, precision)
    key = {"job": "evaluate", **params, "split": split, "batch_size": batch_size,
           "n_boot": n_boot, "skip_bad": skip_bad, "precision": precision}
    paths, _ = _run(task, out_dir, count, key, workers, address, on_shard, on_progress, "")
    return merge_evaluations(out_dir, paths, overwrite=True)


# --------------------------------------------------------------------------------------- merge


def output_kind(path):
    """What shard output ``path`` is: "results" (a result file), "explain" (an explain folder),
    "evaluation" (an evaluate folder), or None."""
    from dr_saliency.grader.evaluate import SHARD_FILE
    from dr_saliency.jobs.explain import TABLE

    if os.path.isfile(path):
        return "results"
    if os.path.isfile(os.path.join(path, SHARD_FILE)):
        return "evaluation"
    if os.path.isfile(os.path.join(path, f"{TABLE}.json")):
        return "explain"
    return None


_KINDS = {"results": "a result file", "explain": "an explain folder",
          "evaluation": "an evaluate folder"}


def merge_outputs(out, inputs, *, overwrite=False, on_progress=None):
    """``dr-saliency merge OUT INPUT...``: join the outputs of the N shards of one job, of one
    kind (result files, explain folders or evaluate folders), into ``out``.

    ``overwrite``: replace an earlier merge in ``out`` (refused without it).

    Returns:
        dict: ``kind``, ``shards``, ``images``.

    Raises:
        ValueError: (one line) ``out`` holds a merge already (without ``overwrite``); inputs of no kind or of several kinds, or what the merge of
            their kind refuses (mixed, overlapping or missing shards, other settings, ...).
    """
    from dr_saliency.grader.evaluate import merge_evaluations
    from dr_saliency.jobs.explain import merge_explains
    from dr_saliency.refinement.merge import merge_stores

    inputs = [os.fspath(p) for p in inputs]
    kinds = {p: output_kind(p) for p in inputs}
    unknown = [p for p, kind in kinds.items() if kind is None]
    if unknown:
        raise ValueError(f"Expected shard outputs: result files, explain folders or evaluate "
                         f"folders. Received: {unknown[0]!r} is none of them")
    if len(set(kinds.values())) > 1:
        shown = ", ".join(f"{p!r} is {_KINDS[k]}" for p, k in kinds.items())
        raise ValueError(f"Expected shard outputs of one kind. Received: {shown}")
    kind = kinds[inputs[0]]
    if kind == "results":
        merged = merge_stores(out, inputs, overwrite=overwrite, on_progress=on_progress)
        return {"kind": kind, "shards": merged["shards"], "images": merged["images"]}
    if kind == "explain":
        merged = merge_explains(out, inputs, overwrite=overwrite, on_progress=on_progress)
        return {"kind": kind, "shards": len(inputs), "images": len(merged["rows"])}
    report = merge_evaluations(out, inputs, overwrite=overwrite)
    return {"kind": kind, "shards": len(inputs), "images": report["n_images"]}
