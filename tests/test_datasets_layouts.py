"""The released layouts (EyePACS, IDRiD, DIARETDB1, e-ophtha, DDR) on small fixtures written here.

Each fixture mimics the dataset's own file names and formats with tiny images, so the readers'
rules (names, splits, absent files, warnings, bad rows) are checked exactly; the real samples are
in test_datasets_realdata.py.
"""

import os

import cv2
import numpy as np
import pytest

from dr_saliency.fundus.datasets import open_dataset
from dr_saliency.fundus.datasets.diaretdb1 import confidence_maps, read_markings
from dr_saliency.fundus.imio import write_image

H, W = 20, 30


def _image(seed=0, h=H, w=W):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _write_rgb_mask(path, mask, alpha=False):
    # IDRiD-style: lesion pixels (255, 0, 0) on black, optionally RGBA with alpha 255 everywhere.
    rgb = np.zeros(mask.shape + (4 if alpha else 3,), np.uint8)
    rgb[..., 2] = mask * 255  # OpenCV writes BGR(A): channel 2 is red
    if alpha:
        rgb[..., 3] = 255
    os.makedirs(os.path.dirname(path), exist_ok=True)
    assert cv2.imwrite(str(path), rgb)


def _write_mask(path, mask):
    # Grey 0/255, any suffix OpenCV writes (.png for e-ophtha, .tif for DDR).
    os.makedirs(os.path.dirname(path), exist_ok=True)
    assert cv2.imwrite(str(path), mask.astype(np.uint8) * 255)


def _box(r0, r1, c0, c1):
    mask = np.zeros((H, W), bool)
    mask[r0:r1, c0:c1] = True
    return mask


# --- EyePACS ---------------------------------------------------------------------------------

@pytest.fixture
def eyepacs(tmp_path):
    root = tmp_path / "kaggle"
    for name in ("10_left", "10_right", "99_left"):
        write_image(root / "train" / f"{name}.jpeg", _image())
    write_image(root / "test" / "1_left.jpeg", _image())
    write_image(root / "test" / "1_right.jpeg", _image())
    (root / "trainLabels.csv").write_text("image,level\n10_left,0\n10_right,3\n11_left,1\n")
    (root / "retinopathy_solution.csv").write_text(
        "image,level,Usage\n1_left,2,Public\n1_right,4,Private\n2_left,0,Public\n")
    return root


def test_eyepacs_parts_grades_splits_and_warnings(eyepacs):
    ds = open_dataset(eyepacs)
    assert ds.layout == "eyepacs"
    assert ds.ids == ["1_left", "1_right", "10_left", "10_right"]
    assert [r.grade for r in ds] == [2, 4, 0, 3]
    assert [r.split for r in ds] == ["test_public", "test_private", "train", "train"]
    assert ds[0].meta == {"usage": "Public"}
    assert all(r.load_lesions() is None for r in ds)
    assert ds.warnings == [
        "EyePACS: 1 of 3 labelled images have no file under train/ (skipped)",
        "EyePACS: 1 images under train/ have no row in trainLabels.csv (ignored)",
        "EyePACS: 1 of 3 labelled images have no file under test/ (skipped)",
    ]


def test_eyepacs_empty_or_bad_grade_is_a_bad_row(eyepacs):
    (eyepacs / "trainLabels.csv").write_text("image,level\n10_left,\n10_right,3\n")
    with pytest.raises(ValueError, match=r"trainLabels.csv at line 2. Received: level=''"):
        open_dataset(eyepacs, layout="eyepacs")
    ds = open_dataset(eyepacs, layout="eyepacs", skip_bad=True)
    assert "10_left" not in ds.ids and "10_right" in ds.ids


# --- IDRiD -----------------------------------------------------------------------------------

SEG_IMAGES = "A. Segmentation/1. Original Images/{}"
SEG_TRUTH = "A. Segmentation/2. All Segmentation Groundtruths/{}/{}"
TRUTH = {"MA": "1. Microaneurysms", "HE": "2. Haemorrhages", "EX": "3. Hard Exudates",
         "SE": "4. Soft Exudates", "OD": "5. Optic Disc"}


@pytest.fixture
def idrid(tmp_path):
    root = tmp_path / "idrid"
    train, test = "a. Training Set", "b. Testing Set"
    for image_id, split in (("IDRiD_01", train), ("IDRiD_02", train), ("IDRiD_55", test)):
        write_image(root / SEG_IMAGES.format(split) / f"{image_id}.jpg", _image())
        for kind in ("MA", "HE", "EX", "OD"):
            _write_rgb_mask(root / SEG_TRUTH.format(split, TRUTH[kind]) / f"{image_id}_{kind}.tif",
                            _box(2, 5, 3, 9), alpha=(image_id == "IDRiD_02" and kind == "EX"))
    _write_rgb_mask(root / SEG_TRUTH.format(train, TRUTH["SE"]) / "IDRiD_02_SE.tif", _box(0, 1, 0, 2))
    grading = root / "B. Disease Grading"
    write_image(grading / "1. Original Images" / train / "IDRiD_001.jpg", _image())
    write_image(grading / "1. Original Images" / test / "IDRiD_001b.jpg", _image())
    (grading / "2. Groundtruths").mkdir(parents=True)
    # As released: a trailing space in the last header, and trailing empty columns and rows.
    (grading / "2. Groundtruths" / "a. IDRiD_Disease Grading_Training Labels.csv").write_text(
        "Image name,Retinopathy grade,Risk of macular edema ,,\n"
        "IDRiD_001,3,2,,\nIDRiD_01,4,1,,\nIDRiD_002,2,0,,\n,,,,\n")
    return root


def test_idrid_records_parts_grades_and_splits(idrid):
    ds = open_dataset(idrid)
    assert ds.layout == "idrid"
    assert ds.ids == ["IDRiD_001", "IDRiD_01", "IDRiD_001b", "IDRiD_02", "IDRiD_55"]
    by = {r.id: r for r in ds}
    assert by["IDRiD_01"].grade == 4  # a segmentation image with a grading row
    assert by["IDRiD_01"].meta == {"part": "segmentation", "macular_edema_risk": 1}
    assert by["IDRiD_001"].grade == 3 and by["IDRiD_001"].meta["macular_edema_risk"] == 2
    assert by["IDRiD_02"].grade is None and by["IDRiD_55"].split == "test"
    assert by["IDRiD_001b"].grade is None and by["IDRiD_001b"].split == "test"
    assert by["IDRiD_001"].load_lesions() is None and by["IDRiD_001"].load_optic_disc() is None
    assert ds.warnings == [
        "IDRiD: 1 grading images have no row in the grading CSVs (kept, grade None)",
        "IDRiD: 1 of 3 graded images have no file under 'B. Disease Grading/1. Original Images/' (skipped)",
    ]


def test_idrid_masks_absent_se_is_all_false_and_rgba_is_read(idrid):
    ds = open_dataset(idrid)
    lesions = ds.by_id("IDRiD_01").load_lesions()
    assert list(lesions) == ["MA", "HE", "EX", "SE"]
    np.testing.assert_array_equal(lesions["MA"], _box(2, 5, 3, 9))
    assert lesions["SE"].shape == (H, W) and not lesions["SE"].any()
    lesions = ds.by_id("IDRiD_02").load_lesions()
    np.testing.assert_array_equal(lesions["EX"], _box(2, 5, 3, 9))  # the RGBA one
    np.testing.assert_array_equal(lesions["SE"], _box(0, 1, 0, 2))
    np.testing.assert_array_equal(ds.by_id("IDRiD_55").load_optic_disc(), _box(2, 5, 3, 9))


def test_idrid_missing_ground_truth_file_is_reported(idrid):
    os.remove(idrid / SEG_TRUTH.format("a. Training Set", TRUTH["HE"]) / "IDRiD_02_HE.tif")
    ds = open_dataset(idrid)
    assert ("IDRiD: 1 segmentation ground-truth files missing (treated as no lesion of that "
            "type): IDRiD_02 HE") in ds.warnings
    assert not ds.by_id("IDRiD_02").load_lesions()["HE"].any()


def test_idrid_grading_csv_errors(idrid):
    csv_path = idrid / "B. Disease Grading" / "2. Groundtruths" / "a. IDRiD_Disease Grading_Training Labels.csv"
    csv_path.write_text("Image name,Retinopathy grade,Risk of macular edema \nIDRiD_001,6,0\n")
    with pytest.raises(ValueError, match=r"grade 0-4 in .*Training Labels.csv at line 2. "
                                         r"Received: Retinopathy grade='6'"):
        open_dataset(idrid)
    csv_path.write_text("Image,Grade\nIDRiD_001,1\n")
    with pytest.raises(ValueError, match=r"Expected columns \['Image name', 'Retinopathy grade'\] "
                                         r"in .*Training Labels.csv"):
        open_dataset(idrid)


def test_idrid_mask_of_wrong_size(idrid):
    path = idrid / SEG_TRUTH.format("a. Training Set", TRUTH["MA"]) / "IDRiD_01_MA.tif"
    _write_rgb_mask(path, np.zeros((H, W + 2), bool))
    with pytest.raises(ValueError, match=r"image's size \(20, 30\).*IDRiD_01_MA.tif.*size=\(20, 32\)"):
        open_dataset(idrid).by_id("IDRiD_01").load_lesions()


# --- DIARETDB1 -------------------------------------------------------------------------------

def _marking(kind, level, region):
    return (f"<marking>{region}<representativepoint><coords2d>0,0</coords2d></representativepoint>"
            f"<confidencelevel>{level}</confidencelevel><markingtype>{kind}</markingtype></marking>")


def _circle(x, y, r):
    return (f'<circleregion><centroid><coords2d>{x},{y}</coords2d></centroid>'
            f'<radius direction="x">{r}</radius></circleregion>')


def _ellipse(x, y, rx, ry, angle):
    return (f'<ellipseregion><centroid><coords2d>{x},{y}</coords2d></centroid>'
            f'<radius direction="x">{rx}</radius><radius direction="y">{ry}</radius>'
            f'<angle>{angle}</angle></ellipseregion>')


def _polygon(points):
    vertices = "".join(f"<coords2d>{x},{y}</coords2d>" for x, y in points)
    return f"<polygonregion><centroid><coords2d>0,0</coords2d></centroid>{vertices}</polygonregion>"


def _xml(markings, dtd=False):
    doctype = ('<!DOCTYPE imgannotool SYSTEM "http://www.it.lut.fi/project/imageret/imgannotool/'
               'downloads/imgannotool_dataformat_v_0_1.dtd">' if dtd else "<!DOCTYPE imgannotool>")
    return (f'<?xml version="1.0" standalone="no"?>\n{doctype}\n<imgannotooldata><header>'
            f"<creator>test</creator></header><markinglist>\n" + "\n".join(markings) +
            "\n</markinglist></imgannotooldata>\n")


DB_H, DB_W = 40, 60
HE_CIRCLE = _circle(20, 15, 4)  # x=20, y=15


@pytest.fixture
def diaretdb1(tmp_path):
    """image001: a haemorrhage circle marked High by experts 1-3 (mean 0.75), a soft exudate
    marked Medium by all four (0.75), a red dot High by expert 1 only (0.25), a disc polygon by
    all; image002: nothing marked; image003: no XML. Expert 1 of image001 also has a _plain
    variant (used) whose non-plain twin would mark nothing."""
    root = tmp_path / "diaretdb1"
    base = root / "ddb1_v02_01"
    gt = base / "groundtruth"
    gt.mkdir(parents=True)
    for n in (1, 2, 3):
        write_image(base / "images" / f"diaretdb1_image00{n}.png", _image(n, DB_H, DB_W))
    disc = _marking("Disc", "High", _polygon([(40, 5), (50, 5), (50, 15), (40, 15)]))
    se = _marking("Soft_exudates", "Medium", _circle(10, 30, 3))
    for expert in (1, 2, 3, 4):
        marks = [disc, se]
        if expert <= 3:
            marks.append(_marking("Haemorrhages", "High", HE_CIRCLE))
        if expert == 1:
            marks.append(_marking("Red_small_dots", "High", _circle(5, 5, 1)))
            marks.append(_marking("IRMA", "Low", _circle(30, 30, 5)))
            (gt / "diaretdb1_image001_01.xml").write_text(_xml([], dtd=True))
            (gt / "diaretdb1_image001_01_plain.xml").write_text(_xml(marks))
        else:
            (gt / f"diaretdb1_image001_0{expert}.xml").write_text(_xml(marks, dtd=True))
        (gt / f"diaretdb1_image002_0{expert}_plain.xml").write_text(_xml([]))
    (base / "ddb1_v02_01_train.txt").write_text(
        "images/diaretdb1_image001.png groundtruth/diaretdb1_image001_01.xml\n")
    (base / "ddb1_v02_01_test_plain.txt").write_text(
        "images/diaretdb1_image002.png groundtruth/diaretdb1_image002_01_plain.xml\n")
    return root


def _circle_mask(x, y, r, shape=(DB_H, DB_W)):
    mask = np.zeros(shape, np.uint8)
    cv2.circle(mask, (x, y), r, 1, thickness=-1)
    return mask.astype(bool)


def test_diaretdb1_records_and_splits(diaretdb1):
    ds = open_dataset(diaretdb1)
    assert ds.layout == "diaretdb1" and ds.root == str(diaretdb1)
    assert ds.ids == ["diaretdb1_image001", "diaretdb1_image002", "diaretdb1_image003"]
    assert [r.split for r in ds] == ["train", "test", None]
    assert [r.grade for r in ds] == [None, None, None]
    assert ds[0].xml_files[0].endswith("diaretdb1_image001_01_plain.xml")
    assert ds[0].xml_files[1].endswith("diaretdb1_image001_02.xml")
    assert ds.warnings == ["DIARETDB1: 1 images do not have 4 expert XML files (fused over the "
                           "experts found; none: no lesion annotation): diaretdb1_image003"]
    # The folder itself is found too.
    assert open_dataset(diaretdb1 / "ddb1_v02_01").layout == "diaretdb1"


def test_diaretdb1_fusion_default_threshold(diaretdb1):
    ds = open_dataset(diaretdb1)
    lesions = ds[0].load_lesions()
    assert list(lesions) == ["MA", "HE", "EX", "SE"]
    np.testing.assert_array_equal(lesions["HE"], _circle_mask(20, 15, 4))  # 3 of 4 High: 0.75
    np.testing.assert_array_equal(lesions["SE"], _circle_mask(10, 30, 3))  # 4 Medium: 0.75
    assert not lesions["MA"].any() and not lesions["EX"].any()             # 1 of 4: 0.25
    assert lesions["HE"][15, 20] and not lesions["HE"][15, 25]            # (x, y) order
    disc = ds[0].load_optic_disc()
    assert disc.sum() == 11 * 11 and disc[5:16, 40:51].all()
    assert all(not m.any() for m in ds[1].load_lesions().values())
    assert ds[2].load_lesions() is None and ds[2].load_optic_disc() is None


def test_diaretdb1_threshold_and_confidence_change_the_masks(diaretdb1):
    strict = open_dataset(diaretdb1, threshold=0.8)[0].load_lesions()
    assert not strict["HE"].any() and not strict["SE"].any()
    loose = open_dataset(diaretdb1, threshold=0.25)[0].load_lesions()
    np.testing.assert_array_equal(loose["MA"], _circle_mask(5, 5, 1))
    high_only = open_dataset(diaretdb1, confidence={"Medium": 0.5})[0].load_lesions()
    assert high_only["HE"].any() and not high_only["SE"].any()
    with pytest.raises(ValueError, match=r"threshold in \(0, 1\]. Received: threshold=0"):
        open_dataset(diaretdb1, threshold=0)
    with pytest.raises(ValueError, match=r"confidence keys among .*Received: confidence=\{'Sure': 1\}"):
        open_dataset(diaretdb1, confidence={"Sure": 1})
    with pytest.raises(ValueError, match=r"Received: confidence\['Low'\]=2"):
        open_dataset(diaretdb1, confidence={"Low": 2})


def test_diaretdb1_region_shapes():
    shape = (DB_H, DB_W)
    one = lambda region: [[{"type": "Hard_exudates", "confidence": "High", "region": region}]]  # noqa: E731
    square = ("polygon", ((2, 3), (6, 3), (6, 8), (2, 8)))
    maps = confidence_maps(one(square), shape, ["Hard_exudates"])
    assert maps["Hard_exudates"].dtype == np.float32
    assert maps["Hard_exudates"].sum() == 5 * 6 and maps["Hard_exudates"][3:9, 2:7].all()
    # An ellipse 10 px long, 2 px wide, at 45 degrees: the tool's angle turns counter-clockwise
    # on screen, so it runs up-right from the centre (y points down).
    ell = confidence_maps(one(("ellipse", 30.0, 20.0, 10.0, 2.0, 45.0)), shape, ["Hard_exudates"])
    ell = ell["Hard_exudates"] > 0
    assert ell[20 - 5, 30 + 5] and ell[20 + 5, 30 - 5]
    assert not ell[20 + 5, 30 + 5] and not ell[20 - 5, 30 - 5]
    # Experts who marked nothing still count in the mean.
    two = one(("circle", 10.0, 10.0, 2.0)) + [[]]
    assert confidence_maps(two, shape, ["Hard_exudates"])["Hard_exudates"].max() == 0.5


def test_diaretdb1_fov_from_fundus_area_or_computed(diaretdb1, monkeypatch):
    import dr_saliency.fundus.datasets.diaretdb1 as module

    calls = []
    monkeypatch.setattr(module, "compute_fov",
                        lambda image: calls.append(1) or np.ones(image.shape[:2], bool))
    gt = diaretdb1 / "ddb1_v02_01" / "groundtruth"
    big = _marking("Fundus_area", "High", _circle(30, 20, 25))
    (gt / "diaretdb1_image002_02_plain.xml").write_text(_xml([big]))
    ds = open_dataset(diaretdb1)
    np.testing.assert_array_equal(ds[1].load_fov(), _circle_mask(30, 20, 25))
    assert calls == []
    (gt / "diaretdb1_image002_02_plain.xml").write_text(
        _xml([_marking("Fundus_area", "High", _circle(30, 20, 2))]))  # too small to be a FOV
    assert open_dataset(diaretdb1)[1].load_fov().all() and calls == [1]


def test_diaretdb1_bad_xml_names_the_file(diaretdb1):
    gt = diaretdb1 / "ddb1_v02_01" / "groundtruth"
    (gt / "diaretdb1_image002_03_plain.xml").write_text("<imgannotooldata><markinglist>")
    with pytest.raises(ValueError, match=r"XML file. Received: path=.*image002_03_plain.xml"):
        open_dataset(diaretdb1)[1].load_lesions()
    (gt / "diaretdb1_image002_03_plain.xml").write_text(
        _xml([_marking("Haemorrhages", "Unsure", _circle(5, 5, 2))]))
    with pytest.raises(ValueError, match=r"confidence levels among .*image002_03_plain.xml.*\['Unsure'\]"):
        open_dataset(diaretdb1)[1].load_lesions()
    no_radius = "<circleregion><centroid><coords2d>5,5</coords2d></centroid></circleregion>"
    (gt / "diaretdb1_image002_03_plain.xml").write_text(_xml([_marking("Haemorrhages", "High", no_radius)]))
    with pytest.raises(ValueError, match=r"every marking of .*image002_03_plain.xml. "
                                         r"Received: a 'Haemorrhages' marking"):
        open_dataset(diaretdb1)[1].load_lesions()


def test_diaretdb1_reads_markings_without_network(diaretdb1):
    # The non-plain file references the DTD by URL; ElementTree never fetches it.
    markings = read_markings(str(diaretdb1 / "ddb1_v02_01" / "groundtruth" / "diaretdb1_image001_02.xml"))
    assert {m["type"] for m in markings} == {"Disc", "Soft_exudates", "Haemorrhages"}
    assert markings[0]["region"][0] == "polygon" and len(markings[0]["region"][1]) == 4


# --- e-ophtha --------------------------------------------------------------------------------

@pytest.fixture
def eophtha(tmp_path):
    """MA: E01/C1 (annotated), E01/C2 (no annotation file); MA healthy: E02/C3.
    EX: E01/C1 annotated as C1_EX.png (the same image as MA's), E03/D4.JPG; EX healthy: E02/C3.
    Plus a Thumbs.db, ignored."""
    root = tmp_path / "eophtha"
    ma, ex = root / "e_optha_MA", root / "e_optha_EX"
    write_image(ma / "MA" / "E01" / "C1.jpg", _image(1))
    write_image(ma / "MA" / "E01" / "C2.jpg", _image(2))
    (ma / "MA" / "E01" / "Thumbs.db").write_bytes(b"\0")
    _write_mask(ma / "Annotation_MA" / "E01" / "C1.png", _box(1, 3, 1, 3))
    write_image(ma / "healthy" / "E02" / "C3.jpg", _image(3))
    write_image(ex / "EX" / "E01" / "C1.jpg", _image(1))
    write_image(ex / "EX" / "E03" / "D4.JPG", _image(4))
    _write_mask(ex / "Annotation_EX" / "E01" / "C1_EX.png", _box(5, 9, 5, 9))
    _write_mask(ex / "Annotation_EX" / "E03" / "D4.png", _box(0, 2, 0, 2))  # no _EX: tolerated
    write_image(ex / "healthy" / "E02" / "C3.jpg", _image(3))
    return root


def test_eophtha_records_and_lesion_sets(eophtha):
    ds = open_dataset(eophtha)
    assert ds.layout == "eophtha"
    assert ds.ids == ["E01_C1", "E01_C2", "E02_C3", "E03_D4"]
    assert [r.lesion_types for r in ds] == [("MA", "EX"), None, ("MA", "EX"), ("EX",)]
    assert all(r.grade is None and r.split is None for r in ds)
    c1 = ds.by_id("E01_C1").load_lesions()
    np.testing.assert_array_equal(c1["MA"], _box(1, 3, 1, 3))
    np.testing.assert_array_equal(c1["EX"], _box(5, 9, 5, 9))
    healthy = ds.by_id("E02_C3").load_lesions()
    assert sorted(healthy) == ["EX", "MA"] and not any(m.any() for m in healthy.values())
    np.testing.assert_array_equal(ds.by_id("E03_D4").load_lesions()["EX"], _box(0, 2, 0, 2))
    assert ds.by_id("E01_C2").load_lesions() is None
    assert ds.warnings == ["e-ophtha: 1 images under e_optha_MA/MA/ have no annotation under "
                           "Annotation_MA/ (their MA is left out)"]


# --- DDR -------------------------------------------------------------------------------------

@pytest.fixture
def ddr(tmp_path):
    """Segmentation: train/a (EX and MA files), valid/b (labels under 'segmentation label');
    grading: train.txt with a (2), c (0), u (5, ungradable), m (1, no file); test.txt with d."""
    root = tmp_path / "DDR-dataset"
    seg = root / "lesion_segmentation"
    write_image(seg / "train" / "image" / "a.jpg", _image(1))
    for kind in ("HE", "SE"):
        os.makedirs(seg / "train" / "label" / kind)
    _write_mask(seg / "train" / "label" / "EX" / "a.tif", _box(0, 4, 0, 4))
    _write_mask(seg / "train" / "label" / "MA" / "a.tif", _box(10, 11, 10, 11))
    write_image(seg / "valid" / "image" / "b.jpg", _image(2))
    _write_mask(seg / "valid" / "segmentation label" / "HE" / "b.tif", _box(1, 2, 1, 2))
    grading = root / "DR_grading"
    for name in ("a", "c", "u"):
        write_image(grading / "train" / f"{name}.jpg", _image())
    write_image(grading / "test" / "d.jpg", _image())
    (grading / "train.txt").write_text("a.jpg 2\nc.jpg 0\nu.jpg 5\nm.jpg 1\n")
    (grading / "test.txt").write_text("d.jpg 4\n")
    return root


def test_ddr_records_grades_splits_and_warnings(ddr, tmp_path):
    ds = open_dataset(tmp_path)  # one level above DDR-dataset/
    assert ds.layout == "ddr" and ds.root == str(ddr)
    assert ds.ids == ["a", "b", "c", "d"]
    assert [r.grade for r in ds] == [2, None, 0, 4]
    assert [r.split for r in ds] == ["train", "val", "train", "test"]
    assert ds.by_id("a").image_path.endswith(os.path.join("lesion_segmentation", "train", "image", "a.jpg"))
    assert ds.warnings == ["DDR: 1 images graded 5 (ungradable) in DR_grading/train.txt (skipped)",
                           "DDR: 1 of 3 graded images have no file under DR_grading/train/ (skipped)"]


def test_ddr_lesions(ddr):
    ds = open_dataset(ddr)
    a = ds.by_id("a").load_lesions()
    assert list(a) == ["MA", "HE", "EX", "SE"]
    np.testing.assert_array_equal(a["EX"], _box(0, 4, 0, 4))
    np.testing.assert_array_equal(a["MA"], _box(10, 11, 10, 11))
    assert not a["HE"].any() and not a["SE"].any()
    np.testing.assert_array_equal(ds.by_id("b").load_lesions()["HE"], _box(1, 2, 1, 2))
    assert ds.by_id("c").load_lesions() is None


def test_ddr_bad_list_lines(ddr):
    (ddr / "DR_grading" / "test.txt").write_text("d.jpg 7\n")
    with pytest.raises(ValueError, match=r"grade 0-4 in .*test.txt at line 1. Received: grade='7'"):
        open_dataset(ddr)
    (ddr / "DR_grading" / "test.txt").write_text("d.jpg\n")
    with pytest.raises(ValueError, match=r"'<file> <grade>' lines.*test.txt. Received: line 1='d.jpg'"):
        open_dataset(ddr)
    assert "d" not in open_dataset(ddr, skip_bad=True).ids


# --- detection of every layout ---------------------------------------------------------------

@pytest.mark.parametrize("name", ["eyepacs", "idrid", "diaretdb1", "eophtha", "ddr"])
def test_each_layout_is_detected_in_its_folder_and_one_level_up(name, request, tmp_path):
    root = request.getfixturevalue(name)
    assert open_dataset(root).layout == name
    assert open_dataset(root.parent).layout == name
    assert open_dataset(root, layout=name).layout == name
