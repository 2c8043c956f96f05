"""Merge the result files of the shards of one refine run into one result file.

A refine run split with ``shard=K/N`` (:mod:`dr_saliency.core.shards`) writes one result file per
shard, whose params record the shard. :func:`merge_stores` checks that the files are the N shards
of one run (each once, the same model by SHA-256, the same data fingerprint and parameters),
that every shard's runs finished and each image is in the shard that owns it, then writes every
image into one new result file, atomically (built under a temporary name and renamed). The
merged file's params are the shards' without ``shard``: those of an unsharded run, so ``froc``,
``figures`` and a later ``refine`` treat it as one; its stored arrays are those of the shards bit
for bit (HDF5 copies each image's group with its compressed chunks as they are:
:meth:`~dr_saliency.refinement.store.ResultStore.copy_from`).

Reads and writes through :class:`~dr_saliency.refinement.store.ResultStore` only; no TensorFlow.
"""

import os

from dr_saliency.core.files import temp_path
from dr_saliency.core.locks import lock_file
from dr_saliency.core.progress import phase
from dr_saliency.core.shards import Shard, check_shards
from dr_saliency.refinement.store import ResultStore

__all__ = ["merge_stores", "shard_store_params"]

#: Images copied per transaction of the merge.
_COPY_SLICE = 64


def shard_store_params(path):
    """``(shard, params)`` of a result file: its :class:`~dr_saliency.core.shards.Shard` (None
    for an unsharded run) and its recorded params."""
    with ResultStore(path) as store:
        params = store.params
    record = params.get("shard")
    return (None if record is None else Shard.from_params(record)), params


def merge_stores(out, inputs, *, overwrite=False, on_progress=None):
    """Merge the result files of the N shards of one refine run into ``out``.

    Args:
        out: str, the merged result file (``.h5``); must not exist unless ``overwrite``.
        inputs: list of str, the shards' result files, in any order.
        overwrite: replace an existing ``out`` (the engine's own merge, under its lock).
        on_progress: optional ``on_progress(label, total) -> advance(k=1)`` (the package's
            progress protocol, :mod:`dr_saliency.core.progress`) as images are copied.

    Returns:
        dict: ``images`` (count), ``shards`` (N), ``inputs`` (in shard order).

    Raises:
        ValueError: (one line) not the shards of one run: a file without a shard, mixed or
            overlapping shards, missing shards, other parameters (model, data, settings), a
            shard whose refine did not finish (naming its missing images), an image in a shard
            that does not own it or in two files; ``out`` exists (without ``overwrite``) or is
            one of the inputs.
    """
    out = os.fspath(out)
    inputs = [os.fspath(p) for p in inputs]
    if any(os.path.abspath(p) == os.path.abspath(out) for p in inputs):
        raise ValueError(f"Expected an output other than the inputs. Received: out={out!r}")
    if os.path.exists(out) and not overwrite:
        raise ValueError(f"Expected a new merged result file (overwrite=True replaces it). "
                         f"Received: out={out!r}, which exists")
    stores = []
    try:
        for path in inputs:
            stores.append(ResultStore(path))
        # The model is named relative to each file: only its SHA-256 must agree.
        count, params = check_shards([(s.path, s.params) for s in stores],
                                     what="result files", ignore=("model",))
        stores.sort(key=lambda s: s.params["shard"]["index"])
        owner = {}
        for store in stores:
            shard = Shard.from_params(store.params["shard"])
            _check_finished(store, shard)
            for image_id in store.complete_ids():
                if not shard.owns(image_id):
                    raise ValueError(f"Expected only images of shard {shard} in {store.path!r}. "
                                     f"Received: image_id={image_id!r} (it belongs to another "
                                     "shard)")
                if image_id in owner:  # only with hand-made params: shards own disjoint ids
                    raise ValueError(f"Expected each image in one shard. Received: "
                                     f"image_id={image_id!r} in {owner[image_id]!r} and "
                                     f"{store.path!r}")
                owner[image_id] = store.path
        if "model" in stores[0].params:
            model = os.path.join(os.path.dirname(os.path.abspath(stores[0].path)),
                                 stores[0].params["model"])
            params["model"] = os.path.relpath(
                os.path.normpath(model), os.path.dirname(os.path.abspath(out))).replace(os.sep, "/")
        with lock_file(out, "a merged result file"):
            _write(out, params, stores, sorted(owner), phase(on_progress, "Merging", len(owner)))
    finally:
        for store in stores:
            store.close()
    return {"images": len(owner), "shards": count, "inputs": [s.path for s in stores]}


def _check_finished(store, shard):
    unfinished = store.unfinished_runs()
    if unfinished:
        missing = sorted({i for run in unfinished for i in run.get("missing_ids", ())})
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise ValueError(
            f"Expected shards whose refine finished. Received: shard {shard} ({store.path!r}) did "
            f"not finish" + (f": {len(missing)} image(s) missing ({shown})" if missing else "")
            + "; rerun its refine command to finish it")


def _write(out, params, stores, ids, advance):
    tmp = temp_path(out)
    try:
        with ResultStore(tmp, "a", params=params) as merged:
            run = merged.begin_run(ids, 0)
            for store in stores:
                mine = store.complete_ids()
                # In slices, so that progress moves and a transaction stays bounded.
                for first in range(0, len(mine), _COPY_SLICE):
                    part = mine[first:first + _COPY_SLICE]
                    merged.copy_from(store, part)
                    advance(len(part))
            merged.finish_run(run, {"written": len(ids), "merged": [os.path.abspath(s.path)
                                                                    for s in stores]})
        os.replace(tmp, out)
    finally:
        for leftover in (tmp, tmp + ".lock"):
            if os.path.exists(leftover):
                os.remove(leftover)
