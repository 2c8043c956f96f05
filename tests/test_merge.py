"""Merging the result files of shards (dr_saliency.refinement.merge), with the fake refinement of
test_faults_runs (no TensorFlow): the merged file is the unsharded run's, bit for bit, and its
FROC the same; every way of not being the N shards of one run is refused in one line."""

import json
import os

import h5py
import numpy as np
import pytest

from dr_saliency.core.shards import Shard, select_shard
from dr_saliency.fundus import synth
from dr_saliency.fundus.datasets import open_dataset, select_records
from dr_saliency.lesions import localize
from dr_saliency.refinement.loop import RefineConfig
from dr_saliency.refinement.merge import merge_stores
from dr_saliency.refinement.run import refine_dataset
from dr_saliency.refinement.store import ResultStore, read_params

CONFIG = RefineConfig(max_iterations=2)


def fake_explain(images, fovs):
    """As tests/test_faults_runs.py's: dark pixels salient, prediction falls as they go."""
    green = np.asarray(images)[..., 1].astype(np.float32)
    maps = np.where(fovs, 255.0 - green, 0.0).astype(np.float32)
    dark = ((green < 40) & fovs).sum(axis=(1, 2)) / np.maximum(fovs.sum(axis=(1, 2)), 1)
    return maps, (1.6 + 100.0 * (dark - 0.012)).astype(np.float32)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("merge") / "data")
    synth.write_dataset(path, 16, size=128, seed=3, workers=1)
    return path


def _refine(data, out, shard=None, **params):
    records = select_shard(select_records(open_dataset(data)), shard)
    extra = {"data": "fingerprint", **params}
    if shard is not None:
        extra["shard"] = Shard(*map(int, shard.split("/"))).to_params()
    return refine_dataset(records, out, explain=fake_explain, config=CONFIG, batch_size=3,
                          params=extra)


def _arrays(path):
    """Every image group's datasets and attributes (except params' run-level record)."""
    out = {}
    with h5py.File(path, "r", locking=False) as f:
        for name in f:
            if name.startswith("%"):
                continue
            g = f[name]
            out[name] = ({k: g[k][()] for k in g},
                         {k: g.attrs[k] for k in g.attrs},
                         g["final_map"].attrs["scale"])
    return out


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    whole = str(root / "whole.h5")
    _refine(data, whole)
    shards = [str(root / f"s{k}.h5") for k in (1, 2, 3)]
    for k, path in enumerate(shards, 1):
        _refine(data, path, f"{k}/3")
    return {"whole": whole, "shards": shards, "root": root}


def test_merged_shards_are_the_unsharded_run_bit_for_bit(data, runs, tmp_path):
    out = str(tmp_path / "merged.h5")
    done = []
    summary = merge_stores(out, runs["shards"][::-1], on_progress=lambda label, total: done.append)
    assert summary["images"] == 16 == sum(done) and summary["shards"] == 3
    whole, merged = _arrays(runs["whole"]), _arrays(out)
    assert sorted(whole) == sorted(merged)
    for name in whole:
        (a, attrs_a, scale_a), (b, attrs_b, scale_b) = whole[name], merged[name]
        assert attrs_a == attrs_b and scale_a == scale_b
        assert sorted(a) == sorted(b)
        for key in a:
            assert a[key].dtype == b[key].dtype and np.array_equal(a[key], b[key]), (name, key)
    assert read_params(out) == read_params(runs["whole"])
    with ResultStore(out) as store:
        assert not store.unfinished_runs() and len(store.runs) == 1
    assert not [n for n in os.listdir(tmp_path) if n != "merged.h5" and n != "merged.h5.lock"]

    # The FROC of the merged file is the unsharded run's, number for number.
    records = [r for r in select_records(open_dataset(data))]
    reports = [localize.froc_report(localize.collect(path, records), n_boot=20)
               for path in (runs["whole"], out)]
    assert json.dumps(reports[0], sort_keys=True, default=str) == \
        json.dumps(reports[1], sort_keys=True, default=str)


def test_merge_refuses_what_is_not_the_shards_of_one_run(data, runs, tmp_path):
    s1, s2, s3 = runs["shards"]
    out = str(tmp_path / "m.h5")

    def refused(inputs, pattern, **kwargs):
        with pytest.raises(ValueError, match=pattern) as info:
            merge_stores(out, inputs, **kwargs)
        assert "\n" not in str(info.value)
        assert not os.path.exists(out)
        return str(info.value)

    message = refused([s1, s2], r"Expected all 3 shards\. Received: shard 3/3 missing")
    assert "1/3" in message and "s2.h5" in message
    refused([s1, s1, s2, s3], r"overlapping shards\). Received: shard 1/3 in .*s1\.h5.* and in")
    half = str(tmp_path / "half.h5")
    _refine(data, half, "1/2")
    refused([s1, half], r"mixed shards\). Received: .*s1\.h5' is shard 1/3, .*half\.h5' is "
                        r"shard 1/2")
    refused([runs["whole"], s1], r"Received: .*whole\.h5' records no shard")
    other = str(tmp_path / "other.h5")
    _refine(data, other, "2/3", model_sha256="another model")
    refused([s1, other, s3], r"made the same way .*Received: .*other\.h5' differs: "
                             r"model_sha256=\"another model\" \(.*s1\.h5' has \(absent\)\)")


def test_merge_names_the_images_of_a_shard_that_did_not_finish(data, runs, tmp_path):
    s1, _, s3 = runs["shards"]
    cut = str(tmp_path / "cut.h5")
    _refine(data, cut, "2/3")
    with ResultStore(cut, "a") as store:
        store.begin_run(["synth_99999"], 0)  # a run killed before its image
    with pytest.raises(ValueError, match=r"shard 2/3 .*cut\.h5'\) did not finish: 1 image\(s\) "
                                         r"missing \(synth_99999\); rerun"):
        merge_stores(str(tmp_path / "m.h5"), [s1, cut, s3])


def test_merge_refuses_an_image_in_a_shard_that_does_not_own_it(data, runs, tmp_path):
    s1, s2, s3 = runs["shards"]
    wrong = str(tmp_path / "wrong.h5")
    with ResultStore(s1) as store:
        params, image_id = store.params, store.complete_ids()[0]
        result = store.read(image_id)
    with ResultStore(wrong, "a", params={**params, "shard": Shard(2, 3).to_params()}) as store:
        store.write(image_id, result)
    with pytest.raises(ValueError, match=rf"Expected only images of shard 2/3 in .*wrong\.h5'\. "
                                         rf"Received: image_id='{image_id}'"):
        merge_stores(str(tmp_path / "m.h5"), [s1, wrong, s3])
    existing = str(tmp_path / "exists.h5")
    open(existing, "wb").close()
    with pytest.raises(ValueError, match="Expected a new merged result file"):
        merge_stores(existing, [s1, s2, s3])
    with pytest.raises(ValueError, match="Expected an output other than the inputs"):
        merge_stores(s1, [s1, s2, s3], overwrite=True)


# --------------------------------------------------------------------------------------------
# evaluation predictions


@pytest.fixture(scope="module")
def grader(tmp_path_factory):
    from tests.test_faults import _grader

    return _grader(str(tmp_path_factory.mktemp("grader") / "m.h5"), 0)


@pytest.mark.slow
def test_merged_evaluation_shards_are_the_unsharded_evaluation(data, grader, tmp_path):
    from dr_saliency.grader import evaluate as ev
    from dr_saliency.grader.model import load_model

    net, ds = load_model(grader), open_dataset(data)
    whole = str(tmp_path / "whole")
    ev.evaluate(net, ds, whole, split="all", n_boot=50, batch_size=3, params={"model": "x"})
    shards = []
    for k in (1, 2, 3):
        shards.append(str(tmp_path / f"s{k}"))
        ev.evaluate(net, ds, shards[-1], split="all", n_boot=50, batch_size=3, shard=f"{k}/3",
                    params={"model": "x"})
        assert not os.path.exists(os.path.join(shards[-1], "evaluation.json"))
    merged = str(tmp_path / "merged")
    ev.merge_evaluations(merged, shards[::-1])
    for name in ("evaluation.json", "predictions.csv"):
        assert open(os.path.join(whole, name)).read() == open(os.path.join(merged, name)).read()

    with pytest.raises(ValueError, match=r"Expected all 3 shards\. Received: shard 2/3 missing"):
        ev.merge_evaluations(str(tmp_path / "m2"), [shards[0], shards[2]])
    with pytest.raises(ValueError, match=r"Received: .*whole' , an unsharded evaluation|"
                                         r"Received: .*whole', an unsharded evaluation"):
        ev.merge_evaluations(str(tmp_path / "m2"), [whole, *shards])
    other = str(tmp_path / "other")
    ev.evaluate(net, ds, other, split="all", n_boot=50, shard="2/3", params={"model": "y"})
    with pytest.raises(ValueError, match=r"other' differs: model=\"y\""):
        ev.merge_evaluations(str(tmp_path / "m3"), [shards[0], other, shards[2]])
    with pytest.raises(ValueError, match="holds one"):
        ev.merge_evaluations(merged, shards)
