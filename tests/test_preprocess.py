"""Field of view, crop/pad/resize geometry, lesion preservation and dataset caching.

Synthetic fundus images (a textured, vignetted disc on black, JPEG round-tripped) have an exact
field-of-view truth; the real samples in ../shared/realdata (skipped when absent) check that the
same code finds the FOV of real cameras and keeps every real IDRiD microaneurysm.
"""

import csv
import dataclasses
import functools
import json
import os
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest
from scipy import ndimage

from dr_saliency.fundus.datasets.folder import write_sample
from dr_saliency.fundus.imio import read_image, read_mask
from dr_saliency.fundus.fov import SquareBox, apply_geometry, fov_mask, preprocess_image, square_crop_box
from dr_saliency.fundus.prepare import preprocess_dataset

EIGHT = np.ones((3, 3), dtype=bool)


# ----------------------------------------------------------------------------------------------
# Synthetic fundus images


def _disc(shape, centre, radius):
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius ** 2


def _jpeg(image, quality=90):
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(image[..., ::-1]),
                           [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1])


def fundus(shape=(300, 400), centre=None, radius=135, gain=1.0, seed=0):
    """A fundus-like disc: vignetted (rim ~55% of the centre), textured, JPEG noise.

    Returns:
        ((H, W, 3) uint8 image, (H, W) bool truth disc).
    """
    rng = np.random.default_rng(seed)
    h, w = shape
    centre = centre or (h / 2 - 0.5, w / 2 - 0.5)
    yy, xx = np.mgrid[:h, :w]
    r = np.hypot(yy - centre[0], xx - centre[1]) / radius
    texture = cv2.GaussianBlur(rng.normal(0, 12, shape).astype(np.float32), (0, 0), 3)
    red = 170 * (1 - 0.45 * r ** 2) + texture
    image = np.stack([red, 0.55 * red, 0.25 * red], axis=2) * gain
    truth = _disc(shape, centre, radius)
    image[~truth] = 0
    image += rng.normal(0, 1.0, image.shape)
    return _jpeg(np.clip(image, 0, 255).astype(np.uint8)), truth


def iou(a, b):
    return (a & b).sum() / (a | b).sum()


def _case(name):
    yy, xx = np.mgrid[:300, :400]
    if name == "normal":
        return fundus()
    if name == "dark":  # underexposed: rim at ~11 grey levels, centre ~20
        return fundus(gain=0.12)
    if name == "bright-glare-halo":  # saturated fundus, glare spot, stray light outside the FOV
        image, truth = fundus(gain=2.2)
        d = np.hypot(yy - 149.5, xx - 199.5)
        halo = np.where(truth, 0, 28 * np.exp(-(d - 135) / 12.0))
        glare = 120 * np.exp(-((yy - 60) ** 2 + (xx - 150) ** 2) / 300.0)
        image = np.clip(image + (halo + glare)[..., None], 0, 255).astype(np.uint8)
        return image, truth
    if name == "tab":  # a bright camera tab across the rim, top right: not retina
        image, truth = fundus()
        image[45:63, 285:312] = (200, 110, 50)
        return image, truth
    if name == "notch":  # a black notch cut into the rim
        image, truth = fundus()
        notch = (yy >= 145) & (yy < 155) & (xx >= 60) & (xx < 75)
        image[notch] = 0
        return image, truth & ~notch
    if name == "cut-by-border":  # EyePACS/IDRiD style: the circle cut at top and bottom
        return fundus(radius=180)
    if name == "cut-off-centre":  # cut on three sides
        return fundus(centre=(125, 150), radius=190, seed=3)
    if name == "dark-and-cut":
        return fundus(gain=0.08, radius=180)  # rim ~7 grey levels: near the noise floor
    raise AssertionError(name)


FOV_CASES = ["normal", "dark", "bright-glare-halo", "tab", "notch", "cut-by-border",
             "cut-off-centre", "dark-and-cut"]


# ----------------------------------------------------------------------------------------------
# fov_mask


@pytest.mark.parametrize("name", FOV_CASES)
def test_fov_mask_matches_synthetic_truth(name):
    image, truth = _case(name)
    fov = fov_mask(image)
    assert fov.shape == truth.shape and fov.dtype == bool
    assert iou(fov, truth) > 0.97, f"{name}: IoU {iou(fov, truth):.4f}"


def test_fov_mask_drops_the_tab():
    image, truth = _case("tab")
    fov = fov_mask(image)
    # The FOV may reach a few pixels past the circle (the fit's tolerance), not into the tab.
    tab_outside = np.zeros_like(truth)
    tab_outside[45:63, 285:312] = True
    tab_outside &= ndimage.distance_transform_edt(~truth) > 5
    assert tab_outside.sum() > 50
    assert not (fov & tab_outside).any()


def test_fov_mask_large_image_is_right():
    # IDRiD size; uint8 drawing keeps the test's own set-up cheap. Its speed is bench/'s concern.
    shape = (2848, 4288)
    image = np.zeros(shape + (3,), np.uint8)
    cv2.circle(image, (2144, 1424), 1750, (150, 80, 40), -1)
    image = cv2.add(image, np.random.default_rng(0).integers(0, 4, image.shape, dtype=np.uint8))
    truth = _disc(shape, (1424, 2144), 1750)
    assert iou(fov_mask(image), truth) > 0.99


def test_fov_mask_blank_and_full_frame_images():
    assert not fov_mask(np.zeros((64, 80, 3), np.uint8)).any()
    # A fundus cropped inside its FOV: no black surround at all, so everything is FOV.
    image, _ = fundus(radius=400)
    assert fov_mask(image).mean() > 0.99


def test_fov_mask_fixed_threshold():
    image, truth = fundus()
    assert iou(fov_mask(image, threshold=20), truth) > 0.97
    assert not fov_mask(image, threshold=254).any()


def test_fov_mask_rejects_bad_arguments():
    with pytest.raises(ValueError, match=r"Expected a non-empty \(H, W, 3\) uint8 RGB image\. Received: "
                                         r"image\.shape=\(4, 4, 3\), image\.dtype=float32"):
        fov_mask(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(TypeError, match=r"uint8 RGB numpy array\. Received: image of type list"):
        fov_mask([[0]])
    with pytest.raises(ValueError, match=r"Expected 0 <= threshold < 255\. Received: threshold=300"):
        fov_mask(np.zeros((4, 4, 3), np.uint8), threshold=300)
    with pytest.raises(TypeError, match=r"Received: threshold='20'"):
        fov_mask(np.zeros((4, 4, 3), np.uint8), threshold="20")


# ----------------------------------------------------------------------------------------------
# Geometry


def test_square_crop_box_pads_the_short_side_centred():
    fov = np.zeros((100, 200), bool)
    fov[10:50, 20:100] = True  # 40 rows x 80 columns
    assert square_crop_box(fov) == SquareBox(top=-10, left=20, side=80)
    fov[50] = fov[49]  # 41 rows: the odd pixel of padding goes after
    assert square_crop_box(fov) == SquareBox(top=-9, left=20, side=80)
    tall = np.zeros((100, 200), bool)
    tall[0:100, 150:160] = True
    assert square_crop_box(tall) == SquareBox(top=0, left=105, side=100)
    assert square_crop_box(np.zeros((30, 50), bool)) == SquareBox(top=-10, left=0, side=50)


def test_box_maps_pixels_both_ways():
    box = SquareBox(top=-10, left=20, side=80)
    # Source pixel centres r + 0.5, shifted by -top and scaled by 40/80.
    rows, cols = box.to_target(np.array([-10, -9, -8, 69]), np.array([20, 21, 22, 99]), 40)
    np.testing.assert_array_equal(rows, [0, 0, 1, 39])
    np.testing.assert_array_equal(cols, [0, 0, 1, 39])
    # Target pixel 0 is source pixels -10 and -9: its centre is at -9.5.
    rows, cols = box.to_source(np.array([0, 39]), np.array([0, 39]), 40)
    np.testing.assert_allclose(rows, [-9.5, 68.5])
    np.testing.assert_allclose(cols, [20.5, 98.5])
    # Round trip: within half a target pixel (one source pixel here).
    r = np.arange(-10, 70)
    back, _ = box.to_source(*box.to_target(r, r + 30, 40), 40)
    assert np.abs(back - r).max() <= 1.0
    # Upscaling round-trips exactly.
    back, _ = box.to_source(*box.to_target(r, r + 30, 160), 160)
    assert np.abs(back - r).max() <= 0.25


def test_apply_geometry_pads_black_and_keeps_alignment():
    # A wide FOV rectangle (the circle cut by the image border) with a marked square.
    image = np.zeros((120, 200, 3), np.uint8)
    image[:, 20:180] = (120, 60, 30)
    fov = np.zeros((120, 200), bool)
    fov[:, 20:180] = True
    image[40:56, 100:116] = (0, 0, 255)
    spot = np.zeros((120, 200), bool)
    spot[40:56, 100:116] = True
    box = square_crop_box(fov)
    assert box == SquareBox(top=-20, left=20, side=160)
    out_image = apply_geometry(image, box, 80, kind="image")
    out_spot = apply_geometry(spot, box, 80, kind="mask")
    out_fov = apply_geometry(fov, box, 80, kind="fov")
    assert out_image.shape == (80, 80, 3) and out_image.dtype == np.uint8
    assert out_spot.dtype == bool and out_fov.dtype == bool
    # 20 padded rows above and below -> 10 black target rows each side, outside the FOV.
    assert not out_image[:10].any() and not out_image[70:].any()
    assert not out_fov[:10].any() and not out_fov[70:].any() and out_fov[10:70].all()
    # The spot (source rows 40-55, cols 100-115) is at target rows 30-37, cols 40-47.
    expected = np.zeros((80, 80), bool)
    expected[30:38, 40:48] = True
    np.testing.assert_array_equal(out_spot, expected)
    blue = (out_image[..., 2] > 200) & (out_image[..., 0] < 50)
    np.testing.assert_array_equal(blue, expected)


def test_apply_geometry_upscales():
    image = np.full((50, 50, 3), 100, np.uint8)
    mask = np.zeros((50, 50), bool)
    mask[10, 10] = True  # one pixel; bilinear alone would give it a quarter at most
    box = SquareBox(0, 0, 50)
    assert apply_geometry(image, box, 128).shape == (128, 128, 3)
    out = apply_geometry(mask, box, 128, kind="mask")
    rows, cols = box.to_target(np.array([10]), np.array([10]), 128)
    assert out[rows[0], cols[0]]
    assert ndimage.label(out, structure=EIGHT)[1] == 1


def test_mask_resizing_keeps_every_lesion():
    rng = np.random.default_rng(1)
    mask = np.zeros((1000, 1000), bool)
    dots = rng.integers(5, 995, size=(300, 2))
    mask[dots[:, 0], dots[:, 1]] = True  # 1-pixel lesions: 1/64 of a target pixel each
    rr = np.arange(100, 400)
    mask[rr, rr + 300] = True  # a 1-pixel-wide diagonal line
    labels, n = ndimage.label(mask, structure=EIGHT)
    box = SquareBox(0, 0, 1000)
    out = apply_geometry(mask, box, 125, kind="mask")
    plain = cv2.resize(mask.astype(np.uint8) * 255, (125, 125), interpolation=cv2.INTER_AREA) >= 128
    assert not plain.any()  # area + threshold alone loses them all
    _assert_components_kept(mask, labels, n, box, 125, out)
    # Nothing is invented: each lesion pixel of the output holds an original lesion pixel.
    rows, cols = box.to_target(*np.nonzero(mask), 125)
    assert np.isin(np.flatnonzero(out), rows * 125 + cols).all()


def test_lost_component_gets_its_majority_pixel():
    mask = np.zeros((40, 40), bool)
    mask[0:3, 7] = True  # 3 pixels in target pixel (0, 1), none elsewhere
    mask[0, 8] = True    # 1 pixel in target pixel (0, 2): same component (8-connected)
    out = apply_geometry(mask, SquareBox(0, 0, 40), 10, kind="mask")
    assert np.flatnonzero(out).tolist() == [1]


def _assert_components_kept(mask, labels, n, box, size, out):
    rows, cols = np.nonzero(mask)
    trow, tcol = box.to_target(rows, cols, size)
    inside = (trow >= 0) & (trow < size) & (tcol >= 0) & (tcol < size)
    assert inside.all()
    hits = np.bincount(labels[rows, cols], weights=out[trow, tcol], minlength=n + 1)[1:]
    assert (hits > 0).all(), f"{int((hits == 0).sum())} of {n} lesions lost at {size}"


def test_apply_geometry_rejects_bad_arguments():
    box = SquareBox(0, 0, 10)
    with pytest.raises(ValueError,
                       match=r'Expected kind "image", "mask" or "fov"\. Received: kind=\'lesion\''):
        apply_geometry(np.zeros((10, 10), bool), box, 8, kind="lesion")
    with pytest.raises(TypeError, match=r"Expected a SquareBox"):
        apply_geometry(np.zeros((10, 10), bool), (0, 0, 10), 8, kind="mask")
    with pytest.raises(ValueError, match=r"Expected size >= 1\. Received: size=0"):
        apply_geometry(np.zeros((10, 10, 3), np.uint8), box, 0)
    with pytest.raises(ValueError, match=r"Received: array\.shape=\(10, 10, 3\)"):
        apply_geometry(np.zeros((10, 10, 3), bool), box, 8, kind="fov")


# ----------------------------------------------------------------------------------------------
# preprocess_image


def test_preprocess_image_aligns_image_masks_and_fov():
    image, truth = fundus(radius=180)  # cut at top and bottom
    lesion = _disc(truth.shape, (150, 250), 4)
    image[lesion] = (255, 255, 255)
    out_image, out_masks, out_fov = preprocess_image(image, 128, masks={"EX": lesion})
    assert out_image.shape == (128, 128, 3) and out_fov.shape == (128, 128)
    assert set(out_masks) == {"EX"}
    # The FOV (360 px wide, 300 tall) fills the width; rows padded above and below are black.
    assert out_fov[64].all() and not out_fov[0].any() and not out_fov[-1].any()
    assert not out_image[~out_fov].any()
    # The white lesion lands where its mask lands.
    white = out_image.min(axis=2) > 200
    assert out_masks["EX"].any() and (white | ~out_masks["EX"]).all()
    assert iou(white, out_masks["EX"]) > 0.5


def test_preprocess_image_uses_a_given_fov_and_checks_sizes():
    image, truth = fundus()
    out_image, masks, out_fov = preprocess_image(image, 64, fov=truth)
    assert masks is None
    np.testing.assert_array_equal(out_fov, apply_geometry(truth, square_crop_box(truth), 64, "fov"))
    with pytest.raises(ValueError, match=r"Expected an \(H, W\) mask of the image's size \(300, 400\)\. "
                                         r"Received: masks\['MA'\]\.shape=\(30, 40\)"):
        preprocess_image(image, 64, masks={"MA": np.zeros((30, 40), bool)})
    with pytest.raises(ValueError, match=r"Received: fov\.shape=\(300, 401\)"):
        preprocess_image(image, 64, fov=np.zeros((300, 401), bool))
    with pytest.raises(TypeError, match=r"Expected an int size\. Received: size=64\.0"):
        preprocess_image(image, 64.0)


# ----------------------------------------------------------------------------------------------
# preprocess_dataset, on a small folder dataset read through duck-typed fake records


@dataclasses.dataclass
class FakeRecord:
    """The record interface of docs/contracts.md, reading a folder written by write_sample."""

    id: str
    image_path: str
    grade: object = None
    split: object = None
    mask_paths: object = None  # {type: path} or None (no annotation)

    def load_image(self):
        return read_image(self.image_path)

    def load_lesions(self):
        if self.mask_paths is None:
            return None
        shape = self.load_image().shape[:2]
        return {t: read_mask(p, shape=shape) for t, p in self.mask_paths.items()}

    def load_fov(self):
        return fov_mask(self.load_image())


def _source_dataset(root, n=4, types=("MA", "HE")):
    """Write n small fundus images with masks; return FakeRecords (record 1 has no lesions)."""
    records = []
    for i in range(n):
        image, truth = fundus(seed=i)
        masks = None
        if i != 1:
            masks = {t: _disc(truth.shape, (100 + 20 * k, 150 + 10 * i), 3 + k)
                     for k, t in enumerate(types)}
        write_sample(root, f"img{i}", image, masks=masks)
        mask_paths = None if masks is None else {t: os.path.join(root, "masks", t, f"img{i}.png")
                                                 for t in masks}
        records.append(FakeRecord(f"img{i}", os.path.join(root, "images", f"img{i}.png"),
                                  grade=i % 5, split="train" if i % 2 else "test",
                                  mask_paths=mask_paths))
    return records


def _labels(out):
    with open(os.path.join(out, "labels.csv"), newline="") as f:
        return list(csv.DictReader(f))


def _truncate(path):
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 3])


def test_preprocess_dataset_writes_the_folder_layout(tmp_path):
    records = _source_dataset(str(tmp_path / "src"))
    out = str(tmp_path / "out")
    calls = []
    summary = preprocess_dataset(records, out, size=128, workers=1, on_progress=lambda label, total: calls.append)
    assert summary["written"] == 4 and summary["already_done"] == 0 and summary["skipped"] == []
    assert sum(calls) == 4
    assert sorted(os.listdir(os.path.join(out, "images"))) == [f"img{i}.png" for i in range(4)]
    assert sorted(os.listdir(os.path.join(out, "fov"))) == [f"img{i}.png" for i in range(4)]
    for kind in ("MA", "HE"):  # record 1 has no annotation: no mask files for it
        assert sorted(os.listdir(os.path.join(out, "masks", kind))) == ["img0.png", "img2.png", "img3.png"]
    assert not os.path.exists(os.path.join(out, "masks", "EX"))
    assert read_image(os.path.join(out, "images", "img2.png")).shape == (128, 128, 3)
    ma = read_mask(os.path.join(out, "masks", "MA", "img2.png"))
    assert ma.shape == (128, 128) and ma.any()
    assert _labels(out) == [{"image": f"img{i}", "level": str(i % 5),
                             "split": "train" if i % 2 else "test"} for i in range(4)]
    with open(os.path.join(out, "preprocess.json")) as f:
        assert json.load(f)["size"] == 128


def test_preprocess_dataset_matches_preprocess_image(tmp_path):
    records = _source_dataset(str(tmp_path / "src"), n=1)
    out = str(tmp_path / "out")
    preprocess_dataset(records, out, size=128, workers=1)
    image = records[0].load_image()
    expected, masks, fov = preprocess_image(image, 128, masks=records[0].load_lesions())
    np.testing.assert_array_equal(read_image(os.path.join(out, "images", "img0.png")), expected)
    np.testing.assert_array_equal(read_mask(os.path.join(out, "fov", "img0.png")), fov)
    np.testing.assert_array_equal(read_mask(os.path.join(out, "masks", "HE", "img0.png")), masks["HE"])


def test_preprocess_dataset_resumes(tmp_path):
    records = _source_dataset(str(tmp_path / "src"), n=3)
    out = str(tmp_path / "out")
    preprocess_dataset(records, out, size=128, workers=1)
    # An interrupted run: one sample missing, labels.csv not yet rewritten.
    os.remove(os.path.join(out, "images", "img2.png"))
    os.remove(os.path.join(out, "labels.csv"))
    image0 = os.path.join(out, "images", "img0.png")
    before = os.stat(image0).st_mtime_ns
    calls = []
    summary = preprocess_dataset(records, out, size=128, workers=1, on_progress=lambda label, total: calls.append)
    assert summary["already_done"] == 2 and summary["written"] == 1
    assert calls == [2, 1]
    assert os.stat(image0).st_mtime_ns == before
    assert [row["image"] for row in _labels(out)] == ["img0", "img1", "img2"]


def test_preprocess_dataset_refuses_another_size(tmp_path):
    records = _source_dataset(str(tmp_path / "src"), n=1)
    out = str(tmp_path / "out")
    preprocess_dataset(records, out, size=128, workers=1)
    with pytest.raises(ValueError, match=r"Expected the source dataset and size that made the folder to "
                                         r"resume .* Received: out=.*out.*, size=160 \(folder has 128\)"):
        preprocess_dataset(records, out, size=160, workers=1)
    summary = preprocess_dataset(records, out, size=160, workers=1, overwrite=True)
    assert summary["written"] == 1
    assert read_image(os.path.join(out, "images", "img0.png")).shape == (160, 160, 3)


def test_preprocess_dataset_refuses_a_folder_of_unknown_origin(tmp_path):
    records = _source_dataset(str(tmp_path / "src"), n=1)
    with pytest.raises(ValueError, match=r"Expected an empty output folder or one written by "
                                         r"preprocess_dataset .* Received: out="):
        preprocess_dataset(records, str(tmp_path / "src"), size=128, workers=1)


def test_preprocess_dataset_skips_bad_records(tmp_path):
    records = _source_dataset(str(tmp_path / "src"))
    _truncate(records[1].image_path)
    # A mask of the wrong size: the mask reader names the mask file.
    cv2.imwrite(records[2].mask_paths["HE"], np.zeros((10, 10), np.uint8))
    out = str(tmp_path / "out")
    calls = []
    summary = preprocess_dataset(records, out, size=128, workers=1, skip_bad=True,
                                 on_progress=lambda label, total: calls.append)
    assert sum(calls) == 4 and summary["written"] == 2
    assert [item[0] for item in summary["skipped"]] == ["img1", "img2"]
    assert records[1].image_path in summary["skipped"][0][1]
    assert "truncated" in summary["skipped"][0][1]
    assert records[2].mask_paths["HE"] in summary["skipped"][1][1]
    assert [row["image"] for row in _labels(out)] == ["img0", "img3"]


def test_preprocess_dataset_stops_on_a_bad_record_and_stays_valid(tmp_path):
    records = _source_dataset(str(tmp_path / "src"))
    _truncate(records[2].image_path)
    out = str(tmp_path / "out")
    with pytest.raises(ValueError, match=r"Could not preprocess record 'img2' \(.*"
                                         + re.escape(records[2].image_path) + r".*skip_bad=True"):
        preprocess_dataset(records, out, size=128, workers=1)
    # What was complete is listed, and only that.
    assert [row["image"] for row in _labels(out)] == ["img0", "img1"]
    assert sorted(os.listdir(os.path.join(out, "images"))) == ["img0.png", "img1.png"]


def test_preprocess_dataset_rejects_bad_arguments(tmp_path):
    out = str(tmp_path / "out")
    with pytest.raises(ValueError, match=r"Expected size >= 128\. Received: size=100"):
        preprocess_dataset([], out, size=100)
    with pytest.raises(TypeError, match=r"Expected an int size\. Received: size=512\.0"):
        preprocess_dataset([], out, size=512.0)
    with pytest.raises(ValueError, match=r"Expected workers >= 1 or None\. Received: workers=0"):
        preprocess_dataset([], out, workers=0)
    with pytest.raises(TypeError, match=r"Expected an int workers or None\. Received: workers='2'"):
        preprocess_dataset([], out, workers="2")
    with pytest.raises(TypeError, match=r"Expected a sequence of records .* Received: dataset of type int"):
        preprocess_dataset(3, out)
    twins = [FakeRecord("a", "x.png"), FakeRecord("a", "y.png")]
    with pytest.raises(ValueError, match=r"Expected unique record ids\. Received: duplicate ids=\['a'\]"):
        preprocess_dataset(twins, out)
    assert not os.path.exists(out)  # nothing written for bad arguments


class _IndexedDataset:
    """A picklable dataset whose records are not (they hold a lambda): sent by index."""

    def __init__(self, records):
        self.records = records
        self.warnings = ["a dataset warning"]

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        rec = dataclasses.replace(self.records[i])
        rec.unpicklable = lambda: None
        return rec


def test_preprocess_dataset_in_a_process_pool(tmp_path):
    records = _source_dataset(str(tmp_path / "src"))
    _truncate(records[3].image_path)
    out = str(tmp_path / "pool")
    calls = []
    summary = preprocess_dataset(records, out, size=128, workers=2, skip_bad=True,
                                 on_progress=lambda label, total: calls.append)
    assert sum(calls) == 4 and summary["written"] == 3
    assert [item[0] for item in summary["skipped"]] == ["img3"]
    # Same bytes as in-process.
    single = str(tmp_path / "single")
    preprocess_dataset(records[:3], single, size=128, workers=1)
    for i in range(3):
        np.testing.assert_array_equal(read_image(os.path.join(out, "images", f"img{i}.png")),
                                      read_image(os.path.join(single, "images", f"img{i}.png")))
    # Records that cannot be pickled: the dataset goes to the workers once, then indices.
    indexed = str(tmp_path / "indexed")
    summary = preprocess_dataset(_IndexedDataset(records[:3]), indexed, size=128, workers=2)
    assert summary["written"] == 3 and summary["warnings"] == ["a dataset warning"]
    assert [row["image"] for row in _labels(indexed)] == ["img0", "img1", "img2"]


def test_preprocess_does_not_import_tensorflow():
    code = "import sys, dr_saliency.fundus.prepare; sys.exit('tensorflow' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# ----------------------------------------------------------------------------------------------
# Real images (../shared/realdata)

IDRID_IMAGES = os.path.join("idrid", "A. Segmentation", "1. Original Images", "a. Training Set")
IDRID_TRUTH = os.path.join("idrid", "A. Segmentation", "2. All Segmentation Groundtruths",
                           "a. Training Set")
IDRID_FOLDERS = {"MA": "1. Microaneurysms", "HE": "2. Haemorrhages", "EX": "3. Hard Exudates",
                 "SE": "4. Soft Exudates"}
REAL_IMAGES = [
    *(os.path.join(IDRID_IMAGES, f"IDRiD_{n}.jpg") for n in ("01", "04", "09", "17")),
    *(os.path.join("diaretdb1", "ddb1_v02_01", "images", f"diaretdb1_image{n}.png")
      for n in ("005", "020", "049", "053")),  # 049, 053: one side underexposed
    *(os.path.join("eyepacs", "train", f"{n}.jpeg")
      for n in ("10_right", "13_left", "15_left", "16_left")),  # dark, tab, tab, glare
]


def _idrid_mask(realdata, number, kind, shape):
    path = os.path.join(realdata, IDRID_TRUTH, IDRID_FOLDERS[kind], f"IDRiD_{number}_{kind}.tif")
    return read_mask(path, shape=shape) if os.path.exists(path) else np.zeros(shape, bool)


@functools.lru_cache(maxsize=None)
def _idrid_fov(realdata, number):
    # Decoding a 4288x2848 JPEG costs ~0.2 s: once per image for the whole module.
    return fov_mask(read_image(os.path.join(realdata, IDRID_IMAGES, f"IDRiD_{number}.jpg")))


@pytest.mark.realdata
@pytest.mark.parametrize("relative", REAL_IMAGES, ids=lambda p: os.path.basename(p))
def test_fov_mask_on_real_images(realdata, relative):
    image = read_image(os.path.join(realdata, relative))
    fov = fov_mask(image)
    h, w = fov.shape
    assert fov[h // 2, w // 2]
    assert not (fov[0, 0] or fov[0, -1] or fov[-1, 0] or fov[-1, -1])
    assert 0.4 < fov.mean() < 0.9
    # Checked at 1/8 scale (cheap): one component, no holes; and the boundary sits on the step
    # of the FOV edge: a band just outside is much darker than a band just inside (stray light
    # and camera tabs stay out; dark rims stay in).
    small_fov = cv2.resize(fov.view(np.uint8), (w // 8, h // 8), interpolation=cv2.INTER_NEAREST)
    assert ndimage.label(small_fov)[1] == 1
    assert ndimage.binary_fill_holes(small_fov).sum() == small_fov.sum()
    value = cv2.resize(image, (w // 8, h // 8), interpolation=cv2.INTER_AREA).max(axis=2)
    kernel = np.ones((5, 5), np.uint8)
    inner = small_fov.astype(bool) & ~cv2.erode(small_fov, kernel).astype(bool)
    outer = cv2.dilate(small_fov, kernel).astype(bool) & ~small_fov.astype(bool)
    assert np.median(value[outer]) < 0.35 * np.median(value[inner])


@pytest.mark.realdata
@pytest.mark.parametrize("number", ["01", "17"])  # IDRiD_17: a haemorrhage reaching the rim
def test_idrid_lesions_lie_inside_the_fov(realdata, number):
    fov = _idrid_fov(realdata, number)
    lesions = np.zeros(fov.shape, bool)
    for kind in IDRID_FOLDERS:
        lesions |= _idrid_mask(realdata, number, kind, fov.shape)
    assert (lesions & fov).sum() > 0.995 * lesions.sum()


@pytest.mark.realdata
@pytest.mark.parametrize("number", ["01", "04", "17"])
def test_idrid_microaneurysms_survive_resizing(realdata, number):
    fov = _idrid_fov(realdata, number)
    mask = _idrid_mask(realdata, number, "MA", fov.shape)
    box = square_crop_box(fov)
    labels, n = ndimage.label(mask, structure=EIGHT)
    assert n >= 3
    rows, cols = np.nonzero(mask)
    for size in (512, 256, 128):
        out = apply_geometry(mask, box, size, kind="mask")
        _assert_components_kept(mask, labels, n, box, size, out)
        # Nothing invented: each output lesion pixel holds an original lesion pixel.
        trow, tcol = box.to_target(rows, cols, size)
        assert np.isin(np.flatnonzero(out), trow * size + tcol).all()


@pytest.mark.realdata
def test_preprocess_dataset_through_open_dataset(realdata, tmp_path):
    datasets = pytest.importorskip("dr_saliency.fundus.datasets")
    if not hasattr(datasets, "open_dataset"):
        pytest.skip("dr_saliency.fundus.datasets.open_dataset is not there yet")
    idrid = datasets.open_dataset(os.path.join(realdata, "idrid"))
    out = str(tmp_path / "idrid")
    summary = preprocess_dataset(idrid[:1], out, size=256, workers=1)
    assert summary["written"] == 1 and summary["skipped"] == []
    cached = datasets.open_dataset(out)
    assert cached.ids == ["IDRiD_01"]
    rec = cached[0]
    assert rec.load_image().shape == (256, 256, 3)
    lesions = rec.load_lesions()
    assert set(lesions) == {"MA", "HE", "EX", "SE"}
    assert not lesions["SE"].any()  # annotated, none: an all-false mask file
    assert ndimage.label(lesions["MA"], structure=EIGHT)[1] >= 1
    fov = rec.load_fov()
    assert fov.shape == (256, 256) and 0.6 < fov.mean() < 0.8


@pytest.mark.realdata
@pytest.mark.slow
def test_preprocess_dataset_pool_with_real_records(realdata, tmp_path):
    datasets = pytest.importorskip("dr_saliency.fundus.datasets")
    if not hasattr(datasets, "open_dataset"):
        pytest.skip("dr_saliency.fundus.datasets.open_dataset is not there yet")
    eyepacs = datasets.open_dataset(os.path.join(realdata, "eyepacs"))
    out = str(tmp_path / "eyepacs")
    summary = preprocess_dataset(eyepacs[:3], out, size=128, workers=2)
    assert summary["written"] == 3
    assert summary["warnings"] == list(eyepacs.warnings)
    assert [(r["image"], r["level"]) for r in _labels(out)] == [
        (rec.id, str(rec.grade)) for rec in eyepacs[:3]]
