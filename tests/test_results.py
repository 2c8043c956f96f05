"""Tests of dr_saliency.refinement.store: layout, resume, parameters, locking and crash safety.

The crash tests kill a writer with SIGKILL: (1) in a forked child, just before each of the file
writes of one image in turn and half-way through each journal record, then check the file is
byte-for-byte what it was before that image; (2) a subprocess writing in a loop, killed at several
moments (slow). Without the undo journal, (1) fails at the metadata-flush kill points.
"""

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import h5py
import numpy as np
import pytest

from dr_saliency.refinement import journal
from dr_saliency.refinement.loop import RefineResult
from dr_saliency.refinement.store import FORMAT, ResultStore, read_final_maps, read_params

posix_only = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork and SIGKILL")

#: Shared with the writer subprocess (exec'd there): deterministic results from an index.
MAKE_RESULT = textwrap.dedent('''
    import numpy as np
    from dr_saliency.refinement.loop import RefineResult

    PARAMS = {"decay": 0.5, "max_iterations": 3, "model": "fake.h5", "combine": "mean"}

    def make_result(i, size=32, with_images=None):
        rng = np.random.default_rng(i)
        k = 1 + i % 3
        n = k if i % 2 else k - 1
        maps = (rng.random((k, size, size)) * 10.0 ** -rng.integers(2, 7)).astype(np.float32)
        images = rng.integers(0, 256, (n + 1, size, size, 3), dtype=np.uint8)
        keep = (i % 2 == 1) if with_images is None else with_images
        return RefineResult(
            maps=maps, masks=maps > np.median(maps), predictions=rng.random(n + 1).astype(np.float32) * 4,
            images=images if keep else None, final_map=rng.random((size, size)).astype(np.float32),
            stop_reason=["normal", "max_iterations", "empty_mask"][i % 3], iterations=n,
            params={"decay": 0.5, "index": i})
''')
_namespace = {}
exec(MAKE_RESULT, _namespace)
PARAMS, make_result = _namespace["PARAMS"], _namespace["make_result"]


def assert_same(read, written):
    assert isinstance(read, RefineResult)
    assert read.maps.dtype == np.float32 and read.maps.shape == written.maps.shape
    for got, want in zip(read.maps, written.maps):  # float16 relative to each map's maximum
        np.testing.assert_allclose(got, want, rtol=0, atol=np.abs(want).max() * 2.0 ** -11)
    np.testing.assert_array_equal(read.masks, written.masks)
    np.testing.assert_array_equal(read.predictions, written.predictions)
    np.testing.assert_allclose(read.final_map, written.final_map, rtol=0,
                               atol=np.abs(written.final_map).max() * 2.0 ** -11)
    if written.images is None:
        assert read.images is None
    else:
        np.testing.assert_array_equal(read.images, written.images)
    assert read.stop_reason == written.stop_reason and read.iterations == written.iterations
    assert read.params == written.params


@pytest.fixture
def path(tmp_path):
    return str(tmp_path / "refine.h5")


# ----------------------------------------------------------------------------- layout and API


def test_write_read_round_trip_and_layout(path):
    with ResultStore(path, "a", params=PARAMS) as store:
        for i in range(4):
            store.write(f"synth_{i:05d}", make_result(i))
        assert store.complete_ids() == [f"synth_{i:05d}" for i in range(4)]
        assert_same(store.read("synth_00001"), make_result(1))  # readable while appending
    with ResultStore(path) as store:
        assert store.mode == "r" and store.params == PARAMS and len(store) == 4
        assert list(store) == store.complete_ids() and "synth_00002" in store
        assert store.is_complete("synth_00003") and not store.is_complete("synth_00009")
        for i in range(4):
            assert_same(store.read(f"synth_{i:05d}"), make_result(i))
        with pytest.raises(KeyError, match="synth_00009"):
            store.read("synth_00009")
    with h5py.File(path, "r") as f:
        assert f.attrs["format"] == FORMAT
        g = f["synth_00002"]
        assert g["maps"].dtype == np.float16 and g["maps"].compression == "gzip"
        assert g["masks"].dtype == bool and g["final_map"].dtype == np.float16
        assert g["predictions"].dtype == np.float32 and "images" not in g
        assert f["synth_00001"]["images"].dtype == np.uint8
        assert g.attrs["complete"] and g.attrs["stop_reason"] == "empty_mask"
        assert g.attrs["iterations"] == 2


def test_tiny_gradients_keep_their_precision(path):
    # 1e-9 is far below float16's smallest subnormal: maps are stored scaled by their maximum.
    r = make_result(0)
    r.maps = (r.maps / np.abs(r.maps).max() * 1e-9).astype(np.float32)
    with ResultStore(path, "a") as store:
        store.write("tiny", r)
        back = store.read("tiny")
    np.testing.assert_allclose(back.maps, r.maps, rtol=0, atol=1e-9 * 2.0 ** -11)
    assert back.maps.max() > 0


def test_image_ids_with_special_characters(path):
    ids = ["IDRiD_01", "10_left", "sub/dir/img", "50%_done", ".", "a b"]
    with ResultStore(path, "a") as store:
        for i, image_id in enumerate(ids):
            store.write(image_id, make_result(i))
    with ResultStore(path) as store:
        assert store.complete_ids() == sorted(ids)
        for i, image_id in enumerate(ids):
            assert_same(store.read(image_id), make_result(i))
        with pytest.raises(ValueError, match="non-empty image id without NUL. Received: image_id=''"):
            store.is_complete("")
        with pytest.raises(TypeError, match="str image id. Received: image_id=3"):
            store.read(3)


def test_a_raw_scale_final_map_keeps_float16_relative_precision(path):
    # With normalize="none", S is on the gradients' raw scale (about 1e-3 here): stored unscaled,
    # most of its pixels would be float16 subnormals with a few bits left.
    result = make_result(0)
    result.final_map = (result.final_map * 2e-3).astype(np.float32)
    with ResultStore(path, "a", params=PARAMS) as store:
        store.write("raw", result)
    with ResultStore(path) as store:
        read = store.read("raw")
        np.testing.assert_array_equal(store.read_final_map("raw"), read.final_map)
    positive = result.final_map > result.final_map.max() / 100
    np.testing.assert_allclose(read.final_map[positive], result.final_map[positive], rtol=2.0 ** -10)
    with h5py.File(path, "r+") as f:  # files written before the scale read as scale 1
        del f["raw/final_map"].attrs["scale"]
    with ResultStore(path) as store:
        assert store.read_final_map("raw").max() <= 1.0


def test_read_final_maps_and_params(path):
    with ResultStore(path, "a", params=PARAMS) as store:
        store.write("b", make_result(1))
        store.write("a", make_result(2))
    maps = read_final_maps(path)
    assert list(maps) == ["a", "b"] and maps["a"].dtype == np.float32
    np.testing.assert_allclose(maps["b"], make_result(1).final_map, atol=2.0 ** -11)
    assert list(read_final_maps(path, ["b"])) == ["b"]
    assert read_params(path) == PARAMS


def test_parameters_must_match_to_append(path):
    with ResultStore(path, "a", params=PARAMS) as store:
        store.write("x", make_result(0))
    with ResultStore(path, "a", params=dict(PARAMS)) as store:  # same: fine
        store.write("y", make_result(1))
    with ResultStore(path, "a") as store:  # None: the file's parameters
        assert store.params == PARAMS
    changed = {**PARAMS, "decay": 0.7, "extra": [1, 2]}
    with pytest.raises(ValueError, match=r"refusing to mix.*decay=0.7 \(file has 0.5\); "
                                         r"extra=\[1, 2\] \(file has \(absent\)\)"):
        ResultStore(path, "a", params=changed)
    with pytest.raises(ValueError, match="refusing to mix"):
        ResultStore(path, "r", params=changed)
    # Tuples and numpy scalars compare as their JSON form.
    ResultStore(path, "a", params={**PARAMS, "max_iterations": np.int64(3)}).close()


def test_complete_results_are_kept_unless_overwritten(path):
    with ResultStore(path, "a") as store:
        store.write("x", make_result(0))
        with pytest.raises(ValueError, match="overwrite=True.*Received: image_id='x'"):
            store.write("x", make_result(1))
        store.write("x", make_result(1), overwrite=True)
        assert_same(store.read("x"), make_result(1))
    with ResultStore(path) as store:
        with pytest.raises(ValueError, match="mode='a' to write. Received: mode='r'"):
            store.write("y", make_result(2))


def test_incomplete_group_is_reported_and_rewritten(path):
    with ResultStore(path, "a") as store:
        store.write("done", make_result(0))
    with h5py.File(path, "a") as f:  # what a writer without the journal could leave behind
        f.create_group("half").create_dataset("maps", data=np.zeros((1, 4, 4), np.float16))
    with ResultStore(path) as store:
        assert store.complete_ids() == ["done"] and store.n_incomplete == 1
        assert not store.is_complete("half")
        with pytest.raises(ValueError, match=r"incomplete \(interrupted run\?\)"):
            store.read("half")
    with ResultStore(path, "a") as store:
        store.write("half", make_result(3))
        assert store.n_incomplete == 0
        assert_same(store.read("half"), make_result(3))


def test_bad_results_and_files_are_rejected(path, tmp_path):
    r = make_result(0)
    with ResultStore(path, "a") as store:
        bad = make_result(0)
        bad.masks = bad.masks.astype(np.uint8)
        with pytest.raises(ValueError, match="bool result.masks"):
            store.write("x", bad)
        bad = make_result(0)
        bad.maps = bad.maps.copy()
        bad.maps[0, 0, 0] = np.nan
        with pytest.raises(ValueError, match="finite result.maps"):
            store.write("x", bad)
        assert store.complete_ids() == []
        store.write("x", r)
    with pytest.raises(ValueError, match="Received: mode='w'"):
        ResultStore(path, "w")
    with pytest.raises(FileNotFoundError, match="existing result file"):
        ResultStore(str(tmp_path / "none.h5"))
    other = str(tmp_path / "other.h5")
    with h5py.File(other, "w") as f:
        f["x"] = 1
    with pytest.raises(ValueError, match="Expected a dr_saliency result file"):
        ResultStore(other, "a")
    text = tmp_path / "text.h5"
    text.write_text("not hdf5")
    with pytest.raises(ValueError, match="Expected an HDF5 result file"):
        ResultStore(str(text))


@posix_only
def test_a_second_writer_or_a_reader_during_a_run_is_refused(path):
    with ResultStore(path, "a") as store:
        store.write("x", make_result(0))
        # The writer is named: its process id and command.
        with pytest.raises(OSError, match=rf"no other process is using.*in use by process "
                                          rf"{os.getpid()} on .*\(.*since "):
            ResultStore(path, "a")
        with pytest.raises(OSError, match=rf"no other process is writing.*process {os.getpid()}"):
            ResultStore(path, "r")
    with ResultStore(path) as reader, ResultStore(path) as other_reader:
        assert reader.complete_ids() == other_reader.complete_ids() == ["x"]
        # Readers hold it now; the last writer, long gone, is not named.
        with pytest.raises(OSError, match=r"in use by another process \(a refine run"):
            ResultStore(path, "a")


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_an_exception_during_a_write_rolls_back(path, monkeypatch):
    with ResultStore(path, "a") as store:
        store.write("x", make_result(0))
    before = open(path, "rb").read()
    calls = []

    def failing_save(self, start, end, original=journal.JournaledFile._save):
        calls.append(1)
        if len(calls) == 5:
            raise OSError("disk full (simulated)")
        return original(self, start, end)

    monkeypatch.setattr(journal.JournaledFile, "_save", failing_save)
    with ResultStore(path, "a") as store:
        # The failing write happens while h5py closes the file, where h5py only prints errors
        # (hence the filterwarnings): the store must notice, roll back and raise.
        with pytest.raises(OSError, match="the result of 'y'. Received: OSError: disk full"):
            store.write("y", make_result(1))
        assert store.complete_ids() == ["x"]
    assert open(path, "rb").read() == before
    assert not os.path.exists(path + ".journal")
    monkeypatch.undo()
    with ResultStore(path, "a") as store:
        store.write("y", make_result(1))
        assert_same(store.read("y"), make_result(1))


# ----------------------------------------------------------------------------- crash safety


def _killed_child(action):
    """Run ``action`` in a forked child that SIGKILLs itself where the action says; wait for it."""
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        try:
            action()
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    return os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


def _write_new_image(path, kill_at_write=None, kill_in_journal_call=None):
    """Append "new" to the store; SIGKILL just before the N-th file write, or half-way through
    the N-th journal write (1 = its header)."""
    if kill_at_write is not None:
        original, count = journal.JournaledFile.write, [0]

        def write(self, buffer):
            count[0] += 1
            if count[0] == kill_at_write:
                os.kill(os.getpid(), signal.SIGKILL)
            return original(self, buffer)

        journal.JournaledFile.write = write
    if kill_in_journal_call is not None:
        original_all, journal_count = journal._write_all, [0]

        def write_all(fd, data):
            journal_count[0] += 1
            if journal_count[0] == kill_in_journal_call:
                os.write(fd, bytes(data)[:len(data) // 2])
                os.kill(os.getpid(), signal.SIGKILL)
            original_all(fd, data)

        journal._write_all = write_all
    with ResultStore(path, "a", params=PARAMS) as store:
        store.write("new", make_result(7, size=64, with_images=True))


def _count_writes(path):
    counts = {"file": 0, "journal": 0}
    original, original_all = journal.JournaledFile.write, journal._write_all

    def write(self, buffer):
        counts["file"] += 1
        return original(self, buffer)

    def write_all(fd, data):
        counts["journal"] += 1
        original_all(fd, data)

    try:
        journal.JournaledFile.write, journal._write_all = write, write_all
        _write_new_image(path)
    finally:
        journal.JournaledFile.write, journal._write_all = original, original_all
    return counts


def _base_store(tmp_path):
    base = str(tmp_path / "base.h5")
    with ResultStore(base, "a", params=PARAMS) as store:
        for i in range(4):
            store.write(f"synth_{i:05d}", make_result(i, size=64))
    return base


def _check_intact(path, base_bytes, expect_new):
    """The store after a crash: the old images intact, "new" there or not, nothing half-done."""
    with ResultStore(path) as store:
        ids = [f"synth_{i:05d}" for i in range(4)]
        assert store.complete_ids() == sorted(ids + (["new"] if expect_new else []))
        assert store.n_incomplete == 0
        for i, image_id in enumerate(ids):
            assert_same(store.read(image_id), make_result(i, size=64))
    assert not os.path.exists(path + ".journal")
    if not expect_new:  # the roll-back restores the file byte for byte
        assert open(path, "rb").read() == base_bytes


@posix_only
def test_sigkill_at_every_write_of_an_image_leaves_earlier_images_intact(tmp_path):
    base = _base_store(tmp_path)
    base_bytes = open(base, "rb").read()
    work = str(tmp_path / "work.h5")
    shutil.copy(base, work)
    counts = _count_writes(work)
    assert counts["file"] >= 10 and counts["journal"] >= 2  # header + overwritten metadata
    # HDF5 rewrites existing metadata (superblock, root B-tree, heaps) near the end: every
    # kill point, including those, must roll back to exactly the base file.
    for n in range(1, counts["file"] + 1):
        shutil.copy(base, work)
        assert _killed_child(lambda: _write_new_image(work, kill_at_write=n)), n
        assert os.path.exists(work + ".journal")
        _check_intact(work, base_bytes, expect_new=False)
    for n in range(1, counts["journal"] + 1):
        shutil.copy(base, work)
        assert _killed_child(lambda: _write_new_image(work, kill_in_journal_call=n)), n
        _check_intact(work, base_bytes, expect_new=False)
    # And appending goes on after a crash.
    with ResultStore(work, "a", params=PARAMS) as store:
        store.write("new", make_result(7, size=64, with_images=True))
    _check_intact(work, base_bytes, expect_new=True)
    with ResultStore(work) as store:
        assert_same(store.read("new"), make_result(7, size=64, with_images=True))


@posix_only
def test_a_killed_rollback_is_redone(tmp_path):
    base = _base_store(tmp_path)
    base_bytes = open(base, "rb").read()
    work = str(tmp_path / "work.h5")
    shutil.copy(base, work)
    n_writes = _count_writes(work)["file"]
    shutil.copy(base, work)
    assert _killed_child(lambda: _write_new_image(work, kill_at_write=n_writes))  # after overwrites

    def killed_rollback():
        original, count = journal._write_all_at, [0]

        def write_all_at(fd, data, offset):
            count[0] += 1
            if count[0] == 2:
                os.kill(os.getpid(), signal.SIGKILL)
            original(fd, data, offset)

        journal._write_all_at = write_all_at
        ResultStore(work).close()

    assert _killed_child(killed_rollback)
    assert os.path.exists(work + ".journal")
    _check_intact(work, base_bytes, expect_new=False)


WRITER = MAKE_RESULT + textwrap.dedent('''
    import sys
    from dr_saliency.refinement.store import ResultStore

    with ResultStore(sys.argv[1], "a", params=PARAMS) as store:
        i = 0
        while True:
            image_id = f"synth_{i:05d}"
            if not store.is_complete(image_id):
                store.write(image_id, make_result(i, size=128))
                print(i, flush=True)
            i += 1
''')


@posix_only
@pytest.mark.slow
def test_a_writer_killed_at_random_moments_resumes_without_losing_results(path):
    # A subprocess writing in a loop, killed with SIGKILL at different moments after it has
    # written 2 more images. Each rerun appends where the last one stopped.
    n_complete = 0
    for delay in (0.0, 0.004, 0.011, 0.019, 0.027):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, path], stdout=subprocess.PIPE,
                                text=True)
        try:
            for _ in range(2):
                assert proc.stdout.readline(), "the writer died on its own"
            time.sleep(delay)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            proc.stdout.close()
        with ResultStore(path) as store:
            ids = store.complete_ids()
            assert store.n_incomplete == 0
            assert ids == [f"synth_{i:05d}" for i in range(len(ids))]  # no gaps
            assert len(ids) >= n_complete + 2
            for image_id in ids[n_complete:]:
                assert_same(store.read(image_id), make_result(int(image_id[6:]), size=128))
            n_complete = len(ids)


def test_the_file_records_each_run_and_which_did_not_finish(path):
    with ResultStore(path, "a", params={"decay": 0.9}) as store:
        first = store.begin_run(3)
        store.write("a", make_result(0))
        store.finish_run(first, {"written": 1})
        second = store.begin_run(5, done=1)  # then "killed"
        store.write("b", make_result(1))
    with ResultStore(path) as store:
        runs = store.runs
        assert [r["planned"] for r in runs] == [3, 5] and runs[1]["done"] == 1
        assert runs[0]["written"] == 1 and "finished" in runs[0] and "finished" not in runs[1]
        assert store.unfinished_runs() == [runs[1]] and second == 1
        assert store.complete_ids() == ["a", "b"]
    with pytest.raises(ValueError, match="Received: mode='r'"):
        ResultStore(path).begin_run(1)


def test_a_file_without_results_takes_new_parameters(path):
    # A run that failed before its first image left an empty file with its (wrong) settings.
    with ResultStore(path, "a", params={"model": "wrong.h5"}) as store:
        store.begin_run(4)
    with ResultStore(path, "a", params={"model": "right.h5"}) as store:
        assert store.params == {"model": "right.h5"} and store.runs == []
        store.write("a", make_result(0))
    assert read_params(path) == {"model": "right.h5"}
    # Once it holds a result, other settings are refused as before.
    with pytest.raises(ValueError, match=r'model="other.h5" \(file has "right.h5"\)'):
        ResultStore(path, "a", params={"model": "other.h5"})
