"""The engine (dr_saliency.jobs.engine): shards of a refine run (the fake refinement of
test_merge, no TensorFlow) on a 2-worker local Dask cluster give the unsharded run's results bit
for bit, a worker killed mid-shard has its images redone, never lost or doubled, and a finished
shard is not run again."""

import os

import numpy as np
import pytest

from dr_saliency.jobs import engine
from dr_saliency.core.shards import select_shard
from dr_saliency.fundus.datasets import open_dataset, select_records
from dr_saliency.refinement.merge import merge_stores
from dr_saliency.refinement.run import refine_dataset
from dr_saliency.refinement.store import ResultStore
from tests.test_merge import CONFIG, _arrays, _refine, data, fake_explain  # noqa: F401 (fixture)

pytestmark = [pytest.mark.skipif(not engine.have_engine(),
                                 reason='Dask distributed is not installed (pip install -e ".[cluster]")'),
              pytest.mark.slow]


class RefineShard:
    """A shard's task: the fake refinement of its images into ``folder/<k>.h5``; the first
    attempt of ``die_in`` kills its own worker process after two images."""

    def __init__(self, data, folder, die_in=None):
        self.data, self.folder, self.die_in = data, folder, die_in

    def __call__(self, shard):
        out = os.path.join(self.folder, f"{shard.index}.h5")
        first_try = os.path.join(self.folder, f"{shard.index}.tried")
        dying = shard.index == self.die_in and not os.path.exists(first_try)
        open(first_try, "a").close()
        seen = []

        def on_image(image_id, message):
            seen.append(image_id)
            if dying and len(seen) == 2:
                os._exit(9)  # as a worker killed by the OOM killer

        records = select_shard(select_records(open_dataset(self.data)), shard)
        summary = refine_dataset(records, out, explain=fake_explain, config=CONFIG, batch_size=3,
                                 params={"data": "fingerprint", "shard": shard.to_params()},
                                 on_image=on_image)
        return {"written": summary["written"], "already_done": summary["already_done"],
                "pid": os.getpid()}


def test_two_workers_give_the_unsharded_results_and_survive_a_killed_worker(data, tmp_path):
    whole = str(tmp_path / "whole.h5")
    _refine(data, whole)
    folder = str(tmp_path / "shards")
    os.makedirs(folder)
    seen = []
    done = engine.run_shards(RefineShard(data, folder, die_in=2), 2, folder, key="k1",
                                  workers=2, on_shard=lambda s, summary, skipped:
                                  seen.append((str(s), skipped)))
    assert sorted(seen) == [("1/2", False), ("2/2", False)]
    assert [earlier for _, earlier in done] == [False, False]
    summaries = [summary for summary, _ in done]
    # Shard 2's worker died after writing two images; the rerun resumed its file.
    assert summaries[1]["already_done"] >= 1
    assert sum(s["written"] for s in summaries) == 16 - summaries[1]["already_done"]
    merged = str(tmp_path / "merged.h5")
    merge_stores(merged, [os.path.join(folder, f"{k}.h5") for k in (1, 2)])
    a, b = _arrays(whole), _arrays(merged)
    assert sorted(a) == sorted(b)
    for name in a:
        assert all(np.array_equal(a[name][0][k], b[name][0][k]) for k in a[name][0])
    with ResultStore(os.path.join(folder, "2.h5")) as store:
        assert len(store.runs) == 2 and not store.unfinished_runs()

    # Rerun: both shards are done (same key), nothing runs; another key runs them again.
    again = []
    engine.run_shards(RefineShard(data, folder), 2, folder, key="k1", workers=2,
                      on_shard=lambda s, summary, skipped: again.append(skipped))
    assert again == [True, True]
    rerun = engine.run_shards(RefineShard(data, folder), 2, folder, key="k2", workers=2)
    assert [s["written"] for s, earlier in rerun] == [0, 0] and not any(e for _, e in rerun)


class Fails:
    def __call__(self, shard):
        if shard.index == 2:
            raise ValueError("Expected a good image. Received: image='x'")
        return {}


def test_a_task_error_is_raised_as_it_is_and_not_marked_done(tmp_path):
    folder = str(tmp_path / "shards")
    with pytest.raises(ValueError, match=r"^Expected a good image\. Received: image='x'$"):
        engine.run_shards(Fails(), 2, folder, key="k", workers=2)
    assert not os.path.exists(os.path.join(folder, "2-of-2.done.json"))
