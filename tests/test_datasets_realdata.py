"""The dataset readers on the real samples in ../shared/realdata (skipped when it is absent).

Full-size IDRiD files are slow to decode (a 4288x2848 JPEG ~0.15 s, a TIFF mask ~0.4 s): only
IDRiD_01 is decoded, once per module.
"""

import os

import numpy as np
import pytest

from dr_saliency.fundus.datasets import open_dataset

pytestmark = pytest.mark.realdata

EYEPACS_GRADES = {"10_left": 0, "10_right": 0, "13_left": 0, "13_right": 0, "15_left": 1,
                  "15_right": 2, "16_left": 4, "16_right": 4, "17_left": 0, "17_right": 1}


@pytest.fixture(scope="module")
def idrid(realdata):
    return open_dataset(os.path.join(realdata, "idrid"))


@pytest.fixture(scope="module")
def idrid_01(idrid):
    rec = idrid.by_id("IDRiD_01")
    return rec, rec.load_image(), rec.load_lesions()


@pytest.fixture(scope="module")
def diaretdb1(realdata):
    return open_dataset(os.path.join(realdata, "diaretdb1"))


def test_idrid_records(idrid):
    assert idrid.layout == "idrid" and idrid.warnings == []
    assert idrid.ids == [f"IDRiD_{n:02d}" for n in range(1, 21)]
    assert all(r.split == "train" and r.grade is None for r in idrid)
    assert all(r.lesion_types == ("MA", "HE", "EX", "SE") for r in idrid)


def test_idrid_01_masks(idrid_01):
    rec, image, lesions = idrid_01
    assert image.shape == (2848, 4288, 3) and image.dtype == np.uint8
    assert set(lesions) == {"MA", "HE", "EX", "SE"}
    for mask in lesions.values():
        assert mask.shape == (2848, 4288) and mask.dtype == bool
    assert int(lesions["MA"].sum()) == 6941
    assert lesions["HE"].any() and lesions["EX"].any()
    assert not lesions["SE"].any()  # IDRiD_01 has no Soft Exudates file: annotated, none


def test_idrid_01_optic_disc(idrid_01):
    rec, _, lesions = idrid_01
    disc = rec.load_optic_disc()
    assert disc.shape == (2848, 4288) and 0.005 < disc.mean() < 0.05
    assert not (disc & lesions["MA"]).all()


def test_eyepacs_sample(realdata):
    ds = open_dataset(os.path.join(realdata, "eyepacs"))
    assert ds.layout == "eyepacs"
    assert {r.id: r.grade for r in ds} == EYEPACS_GRADES and len(ds) == 10
    assert ds.warnings == ["EyePACS: 35,116 of 35,126 labelled images have no file under train/ (skipped)"]
    assert all(r.split == "train" and r.load_lesions() is None for r in ds)
    image = ds.by_id("15_right").load_image()
    assert image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8
    assert image.shape[1] >= 2592


def test_diaretdb1_records(diaretdb1):
    assert diaretdb1.layout == "diaretdb1" and diaretdb1.warnings == []
    assert diaretdb1.ids == [f"diaretdb1_image{n:03d}" for n in (5, 8, 15, 20, 49, 53)]
    assert [r.split for r in diaretdb1] == ["test", "test", "test", "train", "test", "train"]
    assert all(r.grade is None and len(r.xml_files) == 4 for r in diaretdb1)
    assert all(p.endswith("_plain.xml") for r in diaretdb1 for p in r.xml_files)


def test_diaretdb1_fusion_005_has_lesions_049_has_none(diaretdb1):
    # 005: the four experts agree on large haemorrhage and exudate regions; their red small
    # dots (5 px circles) rarely overlap in three of them, so MA may be empty at 0.75.
    lesions = diaretdb1.by_id("diaretdb1_image005").load_lesions()
    assert all(m.shape == (1152, 1500) and m.dtype == bool for m in lesions.values())
    assert lesions["HE"].sum() > 10_000 and lesions["EX"].sum() > 10_000 and lesions["SE"].any()
    # 049: expert 1 marked only a Fundus_area, experts 2-4 only the disc.
    rec = diaretdb1.by_id("diaretdb1_image049")
    lesions = rec.load_lesions()
    assert sorted(lesions) == ["EX", "HE", "MA", "SE"] and not any(m.any() for m in lesions.values())
    assert rec.load_optic_disc().sum() > 30_000


def test_diaretdb1_threshold_and_confidence_change_the_result(realdata, diaretdb1):
    root = os.path.join(realdata, "diaretdb1")
    default = diaretdb1.by_id("diaretdb1_image005").load_lesions()
    loose = open_dataset(root, threshold=0.25).by_id("diaretdb1_image005").load_lesions()
    assert loose["MA"].sum() > default["MA"].sum()
    assert loose["HE"].sum() > default["HE"].sum() and (loose["HE"] >= default["HE"]).all()
    # High = 0.9: three High experts (mean 0.675) no longer suffice, four (0.9) still do.
    cautious = open_dataset(root, layout="diaretdb1", confidence={"High": 0.9})
    cautious = cautious.by_id("diaretdb1_image005").load_lesions()
    assert 0 < cautious["HE"].sum() < default["HE"].sum() and (cautious["HE"] <= default["HE"]).all()


def test_diaretdb1_049_fov_is_computed_not_its_tiny_fundus_area(diaretdb1):
    pytest.importorskip("dr_saliency.fundus.prepare")
    fov = diaretdb1.by_id("diaretdb1_image049").load_fov()
    assert fov.shape == (1152, 1500) and 0.4 < fov.mean() < 0.95  # not the 44 px circle


def test_detection_on_the_samples(realdata):
    for name in ("idrid", "diaretdb1", "eyepacs"):
        assert open_dataset(os.path.join(realdata, name)).layout == name
    assert open_dataset(os.path.join(realdata, "diaretdb1", "ddb1_v02_01")).layout == "diaretdb1"
    # Their parent holds three datasets: detection refuses to guess, a layout name decides.
    with pytest.raises(ValueError, match=r"found several: diaretdb1 in .*; eyepacs in .*; idrid in"):
        open_dataset(realdata)
    assert open_dataset(realdata, layout="eyepacs").root == os.path.join(realdata, "eyepacs")
