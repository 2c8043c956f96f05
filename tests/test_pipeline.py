"""Tests of dr_saliency.refinement.run (dataset -> refine -> result store) with fake callables."""

import cv2
import numpy as np
import pytest

from dr_saliency.core.errors import BadImageError, EmptySplitError, ImageSizeError
from dr_saliency.core.grades import is_referable
from dr_saliency.core.maps import scored_maps
from dr_saliency.fundus.datasets import open_dataset, select_records
from dr_saliency.refinement import run as pipeline
from dr_saliency.refinement.erase import Eraser
from dr_saliency.refinement.loop import RefineConfig, refine, run_params
from dr_saliency.fundus.datasets.folder import write_labels, write_sample
from dr_saliency.refinement.store import ResultStore


#: A small mask per iteration, no dilation.
ERASE = Eraser(level=0.02, dilation=0)

def make_data(root, n=6, size=64):
    rows = []
    for i in range(n):
        img = np.zeros((size, size, 3), np.uint8)
        cv2.circle(img, (size // 2, size // 2), size // 2 - 2, (180, 80, 40), -1)
        # Stage i % 5 as that many dark dots, so the fakes below can "grade" from the image.
        for k in range(i % 5):
            cv2.circle(img, (12 + 10 * k, size // 2), 3, (20, 5, 5), -1)
        write_sample(str(root), f"im{i}", img)
        rows.append({"image": f"im{i}", "level": i % 5, "split": "test" if i % 2 else "train"})
    write_labels(str(root), rows)
    return open_dataset(str(root))


def dark(img):
    return (img[..., 0] > 0) & (img[..., 0] < 60)  # the dots, not the black surround


def fake_predict(images):
    # The number of dark dot pixels, scaled (a dot is 29 px): inpainting the dots lowers it.
    return np.array([dark(img).sum() / 25.0 for img in images], np.float32)


def fake_explain(images, fovs):
    maps = np.stack([dark(img) * (255.0 - img[..., 0]) for img in images]).astype(np.float32)
    return maps * fovs, fake_predict(images)


def test_select_records_by_split_and_ids(tmp_path):
    ds = make_data(tmp_path / "d")
    assert [r.id for r in select_records(ds, split="test")] == ["im1", "im3", "im5"]
    assert [r.id for r in select_records(ds, ids=["im4", "im0"])] == ["im0", "im4"]
    with pytest.raises(ValueError, match=r"1 unknown id\(s\): nope"):
        select_records(ds, ids=["im0", "nope"])
    with pytest.raises(EmptySplitError, match=r"Expected images in split 'val'.*Received: split='val'"):
        select_records(ds, split="val")
    with pytest.raises(ValueError, match=r"Expected split in .*Received: split='dev'"):
        select_records(ds, split="dev")


def test_refine_dataset_writes_resumes_and_filters_referable(tmp_path):
    ds = make_data(tmp_path / "d")
    out = str(tmp_path / "r.h5")
    lines = []
    summary = pipeline.refine_dataset(list(ds), out, explain=fake_explain, predict=fake_predict,
                                      size=64, batch_size=4, only_referable=True,
                                      on_image=lambda image_id, msg: lines.append((image_id, msg)),
                                      config=RefineConfig(max_iterations=5), erase=ERASE)
    p0 = fake_predict([r.load_image() for r in ds])
    referable = [r.id for r, p in zip(ds, p0) if is_referable(p)]
    assert summary["written"] == len(referable)
    assert summary["not_referable"] == len(ds) - len(referable)
    with ResultStore(out) as store:
        assert sorted(store.complete_ids()) == sorted(referable)
        for image_id in referable:
            r = store.read(image_id)
            assert is_referable(r.predictions[0]) and r.stop_reason in ("normal", "max_iterations")
        assert store.params["only_referable"] is True and store.params["max_iterations"] == 5
    assert any("->" in msg for _, msg in lines)
    assert any("not referable" in msg for _, msg in lines)
    again = pipeline.refine_dataset(list(ds), out, explain=fake_explain, predict=fake_predict,
                                    size=64, only_referable=True,
                                    config=RefineConfig(max_iterations=5), erase=ERASE)
    assert again["written"] == 0 and again["already_done"] == len(referable)
    with pytest.raises(ValueError, match=r"max_iterations=3 \(file has 5\)"):
        pipeline.refine_dataset(list(ds), out, explain=fake_explain, predict=fake_predict,
                                only_referable=True, config=RefineConfig(max_iterations=3),
                                erase=ERASE)


def test_bad_images_are_reported_and_skipped(tmp_path):
    ds = make_data(tmp_path / "d")
    bad = ds.by_id("im2").image_path
    data = open(bad, "rb").read()
    open(bad, "wb").write(data[: len(data) // 4])
    out = str(tmp_path / "r.h5")
    with pytest.raises(BadImageError, match=r"im2: .*im2.png") as info:
        pipeline.refine_dataset(list(ds), out, explain=fake_explain, predict=fake_predict)
    assert info.value.image == "im2"
    summary = pipeline.refine_dataset(list(ds), out, explain=fake_explain, predict=fake_predict,
                                      skip_bad=True)
    assert [i for i, _ in summary["skipped"]] == ["im2"]
    assert summary["written"] == len(ds) - 1


def test_wrong_size_names_preprocess(tmp_path):
    ds = make_data(tmp_path / "d", n=2)
    with pytest.raises(ImageSizeError, match=r"im0: Expected a 128x128 image .*of 64x64") as info:
        pipeline.refine_dataset(list(ds), str(tmp_path / "r.h5"), explain=fake_explain,
                                predict=fake_predict, size=128)
    assert info.value.size == 128 and info.value.image == "im0"


def test_nan_map_skips_only_that_image(tmp_path):
    ds = make_data(tmp_path / "d", n=4)

    def explain(images, fovs):
        maps, preds = fake_explain(images, fovs)
        maps[[i for i, img in enumerate(images) if dark(img).sum() > 50]] = np.nan  # 2+ dots
        return maps, preds

    summary = pipeline.refine_dataset(list(ds), str(tmp_path / "r.h5"), explain=explain,
                                      predict=fake_predict, skip_bad=True, batch_size=4)
    assert sorted(i for i, _ in summary["skipped"]) == ["im2", "im3"]
    assert "NaN" in summary["skipped"][0][1] or "nan" in summary["skipped"][0][1].lower()
    assert summary["written"] == 2


def test_describe():
    class R:
        predictions = np.array([2.5, 1.25, 0.5])
        iterations = 2
        stop_reason = "normal"
    assert pipeline.describe(R) == "2.50 -> 1.25 -> 0.50 (2 iterations, normal)"


def test_a_store_written_before_fov_inpainting_is_refused_for_appending_but_still_scored(tmp_path):
    # Stores written before Step 6 lack "normalize" and "inpaint_inside_fov": appending to one
    # (which would mix two inpainting rules) is refused with the differences named.
    ds = make_data(tmp_path / "d")
    out = str(tmp_path / "old.h5")
    config = RefineConfig(max_iterations=2)
    old_params = run_params(config)
    del old_params["normalize"], old_params["inpaint_inside_fov"]
    result = refine(ds[1].load_image(), explain=fake_explain, predict=fake_predict, config=config)
    result.params = dict(old_params)
    with ResultStore(out, "a", params=dict(old_params, only_referable=False)) as store:
        store.write(ds[1].id, result)
    with pytest.raises(ValueError, match=r"inpaint_inside_fov=true \(file has \(absent\)\); "
                                         r"normalize=\"\w+\" \(file has \(absent\)\)"):
        pipeline.refine_dataset(list(ds), out, explain=fake_explain, predict=fake_predict,
                                config=config)
    # Its maps are raw, so s_0 and S are still recomputed on one scale from them.
    with ResultStore(out) as store:
        stored = store.read(ds[1].id)
    first, final = scored_maps(stored.maps, stored.masks, decay=0.0, combine="max")
    np.testing.assert_array_equal(first, final)
