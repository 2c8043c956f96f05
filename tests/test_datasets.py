"""Dataset reading: the shared record and dataset, the folder layout, open_dataset, bad input.

The other layouts are in test_datasets_layouts.py (small fixtures written here) and
test_datasets_realdata.py (the real samples in ../shared/realdata).
"""

import os
import sys

import numpy as np
import pytest

from dr_saliency.fundus.datasets import LAYOUTS, Dataset, Record, open_dataset
from dr_saliency.fundus.datasets.base import natural_key, read_table
from dr_saliency.fundus.datasets.folder import write_labels, write_sample
from dr_saliency.fundus.imio import write_image, write_mask

H, W = 12, 16


def _image(seed=0):
    return np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)


def _disc(value=True):
    mask = np.zeros((H, W), bool)
    mask[2:10, 3:13] = value
    return mask


@pytest.fixture
def fake_fov(monkeypatch):
    """Replace dr_saliency.fundus.fov.fov_mask by a recorder, so that computed FOVs are tested
    without its algorithm."""
    calls = []

    def fov_mask(image):
        calls.append(image.shape)
        return image[:, :, 0] > 127

    from dr_saliency.fundus import fov

    monkeypatch.setattr(fov, "fov_mask", fov_mask)
    return calls


@pytest.fixture
def folder_ds(tmp_path):
    """A folder dataset: 3 images (one jpg), masks of some types, one FOV file, splits."""
    root = tmp_path / "data"
    masks = {"MA": _disc(), "HE": np.zeros((H, W), bool)}
    write_sample(root, "img10", _image(1), masks=masks, fov=_disc())
    write_sample(root, "img2", _image(2), masks={"EX": _disc()})
    write_image(root / "images" / "img3.jpg", _image(3))
    write_labels(root, [{"image": "img10", "level": 3, "split": "train"},
                        {"image": "img2", "level": None, "split": "val"},
                        {"image": "img3", "level": 0, "split": "test"},
                        {"image": "gone", "level": 1, "split": "test"}])
    return root


# --- shared pieces ---------------------------------------------------------------------------

def test_natural_key_orders_digit_runs_by_value():
    ids = ["IDRiD_10", "IDRiD_2", "10_right", "9_left", "10_left"]
    assert sorted(ids, key=natural_key) == ["9_left", "10_left", "10_right", "IDRiD_2", "IDRiD_10"]


def test_record_is_lazy_and_checks_its_arguments(tmp_path):
    rec = Record("a", tmp_path / "missing.png", grade=2)
    assert rec.grade == 2 and rec.split is None and rec.lesion_types is None
    assert rec.load_lesions() is None and rec.load_optic_disc() is None
    with pytest.raises(ValueError, match="missing.png"):
        rec.load_image()
    with pytest.raises(ValueError, match=r"grade 0-4 or None. Received: grade=5"):
        Record("a", "x.png", grade=5)
    with pytest.raises(TypeError, match="Received: grade='2'"):
        Record("a", "x.png", grade="2")
    with pytest.raises(ValueError, match=r"lesion types among .* Received: types=\['XX'\]"):
        Record("a", "x.png", lesion_files={"XX": None})


def test_dataset_sequence_protocol_and_duplicate_ids():
    ds = Dataset([Record("b10", "x"), Record("b9", "y")], layout="folder", root="r",
                 warnings=["w"])
    assert len(ds) == 2 and ds.ids == ["b9", "b10"] and ds[-1].id == "b10"
    assert [r.id for r in ds] == ["b9", "b10"] and ds.by_id("b10") is ds[1]
    assert ds.filter(lambda r: r.id == "b9").ids == ["b9"] and ds[:1].warnings == ["w"]
    with pytest.raises(KeyError, match="nope"):
        ds.by_id("nope")
    with pytest.raises(ValueError, match="duplicate id='a'"):
        Dataset([Record("a", "x"), Record("a", "y")], layout="folder", root="r")


def test_read_table_matches_columns_loosely_and_skips_blank_rows(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("\ufeffImage name , Retinopathy grade,Risk of macular edema ,,\n"
                    "IDRiD_001,3,2,,\n,,,,\n", encoding="utf-8")
    rows = read_table(str(path), ["Image name", "Retinopathy grade"], ["Risk of macular edema"])
    assert rows == [(2, {"Image name": "IDRiD_001", "Retinopathy grade": "3",
                         "Risk of macular edema": "2"})]


# --- folder layout ---------------------------------------------------------------------------

def test_folder_records_labels_and_splits(folder_ds):
    ds = open_dataset(folder_ds)
    assert ds.layout == "folder" and ds.root == str(folder_ds)
    assert ds.ids == ["img2", "img3", "img10"]
    assert [r.grade for r in ds] == [None, 0, 3]
    assert [r.split for r in ds] == ["val", "test", "train"]
    assert ds.warnings == ["folder: 1 of 4 labelled images have no file under images/ (skipped)"]
    assert ds.by_id("img3").image_path.endswith("img3.jpg")


def test_folder_lesions_hold_the_types_whose_mask_exists(folder_ds):
    ds = open_dataset(folder_ds)
    lesions = ds.by_id("img10").load_lesions()
    assert sorted(lesions) == ["HE", "MA"]
    assert lesions["MA"].dtype == bool and lesions["MA"].shape == (H, W)
    np.testing.assert_array_equal(lesions["MA"], _disc())
    assert not lesions["HE"].any()
    assert list(ds.by_id("img2").load_lesions()) == ["EX"]
    assert ds.by_id("img3").load_lesions() is None  # no mask file at all for it


def test_folder_without_masks_folder_has_no_annotation(tmp_path):
    write_sample(tmp_path, "a", _image())
    write_labels(tmp_path, [{"image": "a", "level": 1}])
    rec = open_dataset(tmp_path)[0]
    assert rec.load_lesions() is None and rec.split is None and rec.lesion_types is None
    image = rec.load_image()
    assert image.dtype == np.uint8 and image.shape == (H, W, 3)
    np.testing.assert_array_equal(image, _image())


def test_folder_fov_given_or_computed(folder_ds, fake_fov):
    ds = open_dataset(folder_ds)
    np.testing.assert_array_equal(ds.by_id("img10").load_fov(), _disc())
    assert fake_fov == []
    rec = ds.by_id("img2")
    fov = rec.load_fov()
    assert fov.dtype == bool and fov.shape == (H, W) and fake_fov == [(H, W, 3)]
    np.testing.assert_array_equal(fov, _image(2)[:, :, 0] > 127)
    rec.load_fov(image=_image(2))  # a given image is not decoded again
    assert len(fake_fov) == 2


def test_computed_fov_with_the_real_fov_mask(folder_ds):
    from dr_saliency.fundus.fov import fov_mask

    fov = open_dataset(folder_ds).by_id("img2").load_fov()
    assert fov.dtype == bool and fov.shape == (H, W)
    np.testing.assert_array_equal(fov, fov_mask(_image(2)))


# --- open_dataset: arguments and detection ---------------------------------------------------

def test_open_dataset_rejects_bad_arguments(tmp_path, folder_ds):
    with pytest.raises(ValueError, match=r"existing dataset folder. Received: root=.*nowhere"):
        open_dataset(tmp_path / "nowhere")
    with pytest.raises(TypeError, match="Received: root=42"):
        open_dataset(42)
    with pytest.raises(ValueError, match=r"layout among \['ddr', .*Received: layout='kaggle'"):
        open_dataset(folder_ds, layout="kaggle")
    with pytest.raises(TypeError, match="Received: skip_bad='yes'"):
        open_dataset(folder_ds, skip_bad="yes")
    with pytest.raises(TypeError, match=r"options of the folder layout among \[\]. Received: threshold=0.5"):
        open_dataset(folder_ds, threshold=0.5)


def test_undetectable_layout_names_what_was_looked_for(tmp_path):
    (tmp_path / "stuff").mkdir()
    with pytest.raises(ValueError) as info:
        open_dataset(tmp_path)
    message = str(info.value)
    assert message.startswith(f"Could not detect a dataset layout in {tmp_path}: looked for")
    for module in LAYOUTS.values():
        assert module.LOOKED_FOR in message
    assert message.endswith(f"Received: root={str(tmp_path)!r}")
    with pytest.raises(ValueError, match=r"Expected a idrid dataset in .*A. Segmentation"):
        open_dataset(tmp_path, layout="idrid")


def test_detection_one_level_up_and_ambiguity(tmp_path, folder_ds):
    ds = open_dataset(tmp_path)  # folder_ds is tmp_path/data
    assert ds.layout == "folder" and ds.root == str(folder_ds)
    write_sample(tmp_path / "other", "a", _image())
    write_labels(tmp_path / "other", [{"image": "a", "level": 1}])
    with pytest.raises(ValueError, match=r"found several: folder in .*data; folder in .*other"):
        open_dataset(tmp_path)


# --- bad input -------------------------------------------------------------------------------

def test_csv_missing_columns_names_file_and_columns(tmp_path):
    write_sample(tmp_path, "a", _image())
    (tmp_path / "labels.csv").write_text("image,grade\na,1\n")
    with pytest.raises(ValueError, match=r"Expected columns \['level'\] in .*labels.csv. "
                                         r"Received: columns=\['image', 'grade'\]"):
        open_dataset(tmp_path)


def test_grade_outside_range_raises_or_is_skipped(tmp_path):
    for name in "abc":
        write_sample(tmp_path, name, _image())
    (tmp_path / "labels.csv").write_text("image,level\na,1\nb,7\nc,x\n")
    with pytest.raises(ValueError, match=r"grade 0-4 in .*labels.csv at line 3. Received: level='7'"):
        open_dataset(tmp_path)
    ds = open_dataset(tmp_path, skip_bad=True)
    assert ds.ids == ["a"]
    assert len(ds.warnings) == 2 and all(w.endswith("(row skipped)") for w in ds.warnings)
    assert "line 4. Received: level='x'" in ds.warnings[1]


def test_duplicate_row_is_a_bad_row(tmp_path):
    write_sample(tmp_path, "a", _image())
    (tmp_path / "labels.csv").write_text("image,level\na,1\na,2\n")
    with pytest.raises(ValueError, match=r"Received: image='a' again at line 3"):
        open_dataset(tmp_path)
    assert [r.grade for r in open_dataset(tmp_path, skip_bad=True)] == [1]


def test_many_bad_rows_are_summarised(tmp_path):
    write_sample(tmp_path, "a", _image())
    rows = "".join(f"b{i},9\n" for i in range(25))
    (tmp_path / "labels.csv").write_text("image,level\na,1\n" + rows)
    ds = open_dataset(tmp_path, skip_bad=True)
    assert len(ds.warnings) == 21
    assert ds.warnings[-1] == "... and 5 more bad rows skipped (25 in all)"


def test_unreadable_and_truncated_images_name_the_file(tmp_path):
    write_sample(tmp_path, "ok", _image())
    (tmp_path / "images" / "junk.png").write_bytes(b"not an image")
    big = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    for suffix in (".png", ".jpg"):
        write_image(tmp_path / "images" / f"cut{suffix}", big)
        data = (tmp_path / "images" / f"cut{suffix}").read_bytes()
        (tmp_path / "images" / f"cut{suffix}").write_bytes(data[: len(data) // 2])
    write_labels(tmp_path, [{"image": i, "level": 0} for i in ("ok", "junk", "cut")])
    ds = open_dataset(tmp_path)  # nothing decoded at open time
    with pytest.raises(ValueError, match=r"unreadable or truncated.*junk.png"):
        ds.by_id("junk").load_image()
    with pytest.raises(ValueError, match=r"unreadable or truncated.*cut.png"):
        ds.by_id("cut").load_image()  # .png wins over .jpg for one stem
    with pytest.raises(ValueError, match=r"unreadable or truncated.*cut.jpg"):
        Record("cut", tmp_path / "images" / "cut.jpg").load_image()


def test_mask_of_wrong_size_names_the_mask_file(tmp_path):
    write_sample(tmp_path, "a", _image(), masks={"MA": _disc()})
    write_mask(tmp_path / "masks" / "MA" / "a.png", np.ones((H + 1, W), bool))
    write_labels(tmp_path, [{"image": "a", "level": 1}])
    with pytest.raises(ValueError, match=rf"image's size \({H}, {W}\).*masks.MA.a.png"):
        open_dataset(tmp_path)[0].load_lesions()


def test_datasets_package_does_not_import_tensorflow():
    # A fresh interpreter: this test session may have imported TensorFlow for other tests.
    import subprocess

    code = ("import sys, dr_saliency.fundus.datasets; "
            "sys.exit(1 if any(m.split('.')[0] in ('tensorflow', 'keras') for m in sys.modules) else 0)")
    assert subprocess.run([sys.executable, "-c", code], cwd=os.path.dirname(__file__)).returncode == 0
