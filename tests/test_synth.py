"""Tests of dr_saliency.fundus.synth: the synthetic fundus generator and its dataset writer."""

import csv
import hashlib
import json
import os

import cv2
import numpy as np
import pytest

from dr_saliency.core.errors import FolderInUseError
from dr_saliency.core.locks import LOCK_NAME
from dr_saliency.fundus import synth
from dr_saliency.fundus.datasets.folder import LESION_TYPES

SMALL = 160
#: Lesion parameters of generator 2 at 160 px, seeds 40-44, stages 0-4, computed on the code
#: before generator 3 was added (test_generator_2_draws_what_it_always_drew).
V2_LESIONS_DIGEST = "3c17ccdf72628975"


@pytest.fixture(scope="module")
def examples():
    """Three images per stage at a small size, shared by the content tests."""
    return {stage: [synth.synthesize(stage, size=SMALL, rng=100 * stage + k) for k in range(3)]
            for stage in range(5)}


def _count(result, kind):
    return sum(1 for lesion in result.lesions if lesion.type == kind)


def _components(mask):
    n, _ = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    return n - 1


# ----- synthesize -------------------------------------------------------------------------------
def test_same_seed_gives_identical_result():
    a = synth.synthesize(3, size=SMALL, rng=7)
    b = synth.synthesize(3, size=SMALL, rng=np.random.default_rng(7))
    np.testing.assert_array_equal(a.image, b.image)
    for kind in LESION_TYPES:
        np.testing.assert_array_equal(a.masks[kind], b.masks[kind])
    assert a.lesions == b.lesions and a.eye == b.eye


def test_different_seeds_differ():
    a = synth.synthesize(2, size=SMALL, rng=1)
    b = synth.synthesize(2, size=SMALL, rng=2)
    assert np.abs(a.image.astype(int) - b.image.astype(int)).mean() > 5


def test_shapes_and_dtypes_at_512():
    r = synth.synthesize(4, size=512, rng=0)
    assert r.image.shape == (512, 512, 3) and r.image.dtype == np.uint8
    assert r.fov.shape == (512, 512) and r.fov.dtype == bool
    assert set(r.masks) == set(LESION_TYPES)
    assert all(m.shape == (512, 512) and m.dtype == bool for m in r.masks.values())
    assert r.stage == 4 and r.eye in ("left", "right")
    # Disc diameter 1/6-1/8 of the FOV diameter; FOV almost fills the frame.
    assert 1 / 8 < r.disc_radius / r.fov_radius < 1 / 6
    assert 0.45 * 512 < r.fov_radius < 0.49 * 512


@pytest.mark.parametrize("size", [128, 200, 256])
def test_any_size_from_128(size):
    r = synth.synthesize(3, size=size, rng=3)
    assert r.image.shape == (size, size, 3)
    assert all(m.shape == (size, size) for m in r.masks.values())


def test_outside_fov_is_black_and_masks_inside(examples):
    for results in examples.values():
        for r in results:
            assert r.image[~r.fov].max() == 0
            assert r.image[r.fov].mean() > 20
            for mask in r.masks.values():
                assert not (mask & ~r.fov).any()


def test_stage_0_has_no_lesion(examples):
    for r in examples[0]:
        assert r.lesions == [] and not any(m.any() for m in r.masks.values())


def test_stage_1_has_only_microaneurysms(examples):
    for r in examples[1]:
        assert {lesion.type for lesion in r.lesions} == {"MA"}
        assert not (r.masks["HE"].any() or r.masks["EX"].any() or r.masks["SE"].any())


def _he_quadrants(r):
    return {(l.center[0] >= r.fov_center[0], l.center[1] >= r.fov_center[1]) for l in r.lesions if l.type == "HE"}


def test_stage_2_has_haemorrhages_in_at_most_three_quadrants(examples):
    for r in examples[2]:
        assert _count(r, "HE") >= 1 and _count(r, "NV") == 0
        assert 1 <= len(_he_quadrants(r)) <= 3


def test_stage_3_has_haemorrhages_in_all_four_quadrants(examples):
    for r in examples[3]:
        assert len(_he_quadrants(r)) == 4
        assert _count(r, "NV") == 0


def test_generator_2_stage_3_always_has_cotton_wool_spots():
    for k in range(3):
        r = synth.synthesize(3, size=SMALL, rng=300 + k, generator=2)
        assert len(_he_quadrants(r)) == 4 and _count(r, "SE") >= 1


def test_stage_4_has_neovascularisation(examples):
    for r in examples[4]:
        nv = [l for l in r.lesions if l.type == "NV"]
        assert 1 <= len(nv) <= 3
        assert all(l.shape in ("disc", "elsewhere") and l.area == 0 for l in nv)
        assert _count(r, "HE") >= 1


@pytest.mark.parametrize("generator", [2, 3])
def test_counts_follow_the_stage_rules(generator):
    for stage in range(5):
        r = synth.synthesize(stage, size=384, rng=stage, generator=generator)
        rule = synth.GENERATORS[generator].stage_rules[stage]
        for kind in LESION_TYPES + ("NV",):
            low, high = getattr(rule, kind.lower())
            share = {"EX": rule.ex_share, "SE": rule.se_share}.get(kind, 1.0)
            # With a share below 1, an image may hold none of the type at all.
            assert low <= _count(r, kind) <= high or (share < 1.0 and _count(r, kind) == 0), (stage, kind)


def test_generator_2_draws_what_it_always_drew():
    # The lesion parameters of generator 2 as drawn before generator 3 existed: datasets written
    # with it are redrawn exactly (numpy's Generator streams are stable across versions).
    digest = hashlib.sha256()
    for stage in range(5):
        r = synth.synthesize(stage, size=SMALL, rng=40 + stage, generator=2)
        for l in r.lesions:
            digest.update(f"{l.type} {l.center[0]:.4f} {l.center[1]:.4f} {l.radius:.4f} "
                          f"{l.contrast:.4f} {l.shape};".encode())
    assert digest.hexdigest()[:16] == V2_LESIONS_DIGEST


def test_generator_3_is_the_default_and_differs():
    assert synth.GENERATOR_VERSION == 3 and synth.STAGE_RULES is synth.GENERATORS[3].stage_rules
    a = synth.synthesize(3, size=SMALL, rng=5)
    b = synth.synthesize(3, size=SMALL, rng=5, generator=3)
    c = synth.synthesize(3, size=SMALL, rng=5, generator=2)
    np.testing.assert_array_equal(a.image, b.image)
    assert not np.array_equal(a.image, c.image)


def test_generator_3_exudates_and_cotton_wool_in_a_share_of_images_only():
    # Stage 2 is carried by red lesions: exudates in about 35% of images, not almost all.
    with_ex = [_count(synth.synthesize(2, size=128, rng=1000 + k), "EX") > 0 for k in range(60)]
    assert 0.15 <= np.mean(with_ex) <= 0.55


@pytest.mark.slow
def test_generator_3_contrast_between_types_is_the_photographs():
    # Median contrast relative to haemorrhages, measured as docs/experiments/realism_gap.py does,
    # against the IDRiD/DIARETDB1 samples: MA 1.0, EX 1.29, SE 1.71 (docs/synthetic.md).
    contrasts = {}
    for stage in (2, 3, 4):
        for j in range(6):
            r = synth.synthesize(stage, size=512, rng=np.random.default_rng([7, stage, j]))
            for kind, m in synth.measure_lesions(r.image, r.masks).items():
                contrasts.setdefault(kind, []).extend(m["contrast"])
    he = np.median(contrasts["HE"])
    assert 0.8 <= np.median(contrasts["MA"]) / he <= 1.25
    assert 1.05 <= np.median(contrasts["EX"]) / he <= 1.55


def test_unknown_generator_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"generator version in \[2, 3\]. Received: generator=4"):
        synth.synthesize(1, size=SMALL, rng=0, generator=4)
    with pytest.raises(ValueError, match="Received: generator=1"):
        synth.write_dataset(str(tmp_path / "d"), 2, size=128, generator=1)


def test_one_component_per_lesion_and_areas_add_up(examples):
    for results in examples.values():
        for r in results:
            for kind in LESION_TYPES:
                lesions = [l for l in r.lesions if l.type == kind]
                assert _components(r.masks[kind]) == len(lesions)
                assert r.masks[kind].sum() == sum(l.area for l in lesions)
                for l in lesions:   # each lesion's centre lies in its own footprint
                    assert r.masks[kind][int(round(l.center[0])), int(round(l.center[1]))]


def test_masked_pixels_differ_visibly_from_their_surroundings(examples):
    for stage in (1, 2, 3, 4):
        for r in examples[stage]:
            measured = synth.measure_lesions(r.image, r.masks)
            for kind in LESION_TYPES:
                assert (measured[kind]["contrast"] >= 4.0).all(), kind
            red = [l.peak_change for l in r.lesions if l.type in ("MA", "HE")]
            assert min(red) >= synth.VISIBLE_CHANGE


def test_dark_and_bright_lesions_have_the_right_sign():
    r = synth.synthesize(3, size=256, rng=5)
    green = r.image[:, :, 1].astype(float)
    ring = cv2.dilate(np.any(list(r.masks.values()), axis=0).astype(np.uint8), np.ones((7, 7), np.uint8)) > 0
    background = np.median(green[r.fov & ~ring])
    assert green[r.masks["HE"]].mean() < background < green[r.masks["EX"]].mean()


def test_lesions_keep_away_from_the_optic_disc(examples):
    for results in examples.values():
        for r in results:
            rows, cols = np.nonzero(np.any(list(r.masks.values()), axis=0))
            if len(rows):
                dist = np.hypot(rows - r.disc_center[0], cols - r.disc_center[1])
                assert dist.min() >= synth.DISC_EXCLUSION * r.disc_radius - 1


def test_microaneurysms_stay_visible_when_downscaled_to_256():
    areas = [l.area for k in range(4) for l in synth.synthesize(1, size=256, rng=k).lesions]
    assert min(areas) >= 5   # a radius of at least about 1.3 px


def test_both_eyes_with_the_disc_on_the_nasal_side():
    eyes = set()
    for k in range(8):
        r = synth.synthesize(0, size=128, rng=k)
        eyes.add(r.eye)
        disc_right = r.disc_center[1] > r.fov_center[1]
        assert disc_right == (r.eye == "right")
        assert (r.fovea[1] < r.disc_center[1]) == disc_right
    assert eyes == {"left", "right"}


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"at least 128 pixels\. Received: size=127"):
        synth.synthesize(0, size=127)
    with pytest.raises(ValueError, match=r"Received: stage=5"):
        synth.synthesize(5)
    with pytest.raises(ValueError, match=r"Received: stage=-1"):
        synth.synthesize(-1)
    with pytest.raises(TypeError, match=r"Received: stage=2\.0"):
        synth.synthesize(2.0)
    with pytest.raises(TypeError, match=r"Received: stage=True"):
        synth.synthesize(True)
    with pytest.raises(TypeError, match=r"Received: rng='x'"):
        synth.synthesize(0, size=128, rng="x")


# ----- write_dataset ----------------------------------------------------------------------------
def _read_labels(root):
    with open(os.path.join(root, "labels.csv"), newline="") as f:
        return list(csv.DictReader(f))


def _files(root):
    out = {}
    for folder, _, names in os.walk(root):
        for name in names:
            if name == LOCK_NAME:  # names the writer's process and start time, not content
                continue
            with open(os.path.join(folder, name), "rb") as f:
                out[os.path.relpath(os.path.join(folder, name), root)] = f.read()
    return out


@pytest.fixture(scope="module")
def tiny_sets(tmp_path_factory):
    """The same 10-image set written with one and with two worker processes."""
    root = tmp_path_factory.mktemp("synth")
    calls = []
    one = str(root / "one")
    two = str(root / "two")
    synth.write_dataset(one, 10, size=128, seed=3, workers=1)
    synth.write_dataset(two, 10, size=128, seed=3, workers=2, on_progress=lambda label, total: calls.append)
    return one, two, calls


def test_dataset_layout_and_labels(tiny_sets):
    root, _, _ = tiny_sets
    rows = _read_labels(root)
    assert list(rows[0]) == ["image", "level", "split"]
    assert [r["image"] for r in rows] == [f"synth_{i:05d}" for i in range(1, 11)]
    assert sorted(int(r["level"]) for r in rows) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    for r in rows:
        assert os.path.isfile(os.path.join(root, "images", r["image"] + ".png"))
        assert os.path.isfile(os.path.join(root, "fov", r["image"] + ".png"))
        for kind in LESION_TYPES:   # all four types, empty or not: annotated
            assert os.path.isfile(os.path.join(root, "masks", kind, r["image"] + ".png"))
    with open(os.path.join(root, "synth.json")) as f:
        assert json.load(f)["size"] == 128


def test_dataset_content_is_synthesize_of_seed_and_index(tiny_sets):
    root, _, _ = tiny_sets
    row = _read_labels(root)[4]
    expected = synth.synthesize(int(row["level"]), size=128, rng=np.random.default_rng([3, 5]))
    image = cv2.imread(os.path.join(root, "images", row["image"] + ".png"))[:, :, ::-1]
    np.testing.assert_array_equal(image, expected.image)
    he = cv2.imread(os.path.join(root, "masks", "HE", row["image"] + ".png"), cv2.IMREAD_GRAYSCALE)
    np.testing.assert_array_equal(he > 0, expected.masks["HE"])


def test_same_bytes_whatever_the_number_of_workers(tiny_sets):
    one, two, calls = tiny_sets
    assert _files(one) == _files(two)
    assert sum(calls) == 10


def test_split_is_stratified_and_matches_the_proportions():
    plan = synth._plan(1000, 0, "kaggle", [0.7, 0.15, 0.15])
    stages = np.array([p[2] for p in plan])
    parts = np.array([p[3] for p in plan])
    assert np.bincount(stages).tolist() == [735, 69, 151, 25, 20]   # 1000 x Kaggle's prior
    assert [(parts == p).sum() for p in ("train", "val", "test")] == [700, 150, 150]
    for stage in range(5):
        n = (stages == stage).sum()
        for part, fraction in (("train", 0.7), ("val", 0.15), ("test", 0.15)):
            assert abs(((stages == stage) & (parts == part)).sum() - fraction * n) < 1.5
    small = synth._plan(10, 0, "balanced", [0.7, 0.15, 0.15])
    assert sorted(p[3] for p in small).count("train") == 7


def test_resume_skips_existing_images_and_rewrites_missing(tmp_path):
    root = str(tmp_path / "set")
    synth.write_dataset(root, 5, size=128, workers=1)
    image = os.path.join(root, "images", "synth_00002.png")
    with open(image, "rb") as f:
        original = f.read()
    kept = os.path.join(root, "images", "synth_00001.png")
    stamp = os.stat(kept).st_mtime_ns
    os.remove(image)
    os.remove(os.path.join(root, "labels.csv"))
    calls = []
    synth.write_dataset(root, 5, size=128, workers=1, on_progress=lambda label, total: calls.append)
    assert calls == [4, 1]
    assert os.stat(kept).st_mtime_ns == stamp
    with open(image, "rb") as f:
        assert f.read() == original
    assert len(_read_labels(root)) == 5


def test_refuses_other_parameters_or_foreign_folders(tmp_path):
    root = str(tmp_path / "set")
    synth.write_dataset(root, 3, size=128, workers=1)
    with pytest.raises(FolderInUseError, match=r"same parameters.*Received: out=.*size=160 \(folder has 128\)"):
        synth.write_dataset(root, 3, size=160, workers=1)
    synth.write_dataset(root, 3, size=160, workers=1, overwrite=True)
    assert json.load(open(os.path.join(root, "synth.json")))["size"] == 160
    assert cv2.imread(os.path.join(root, "images", "synth_00001.png")).shape == (160, 160, 3)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"non-empty folder without a readable synth\.json"):
        synth.write_dataset(str(foreign), 3, size=128)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"n": 0}, ValueError, r"Received: n=0"),
    ({"n": 2.5}, TypeError, r"Received: n=2\.5"),
    ({"size": 100}, ValueError, r"Received: size=100"),
    ({"stages": "uniform"}, ValueError, r"Received: stages='uniform'"),
    ({"split": (0.7, 0.2, 0.2)}, ValueError, r"summing to 1\. Received: split=\(0\.7, 0\.2, 0\.2\)"),
    ({"split": (1.2, -0.1, -0.1)}, ValueError, r"non-negative"),
    ({"split": (0.5, 0.5)}, ValueError, r"Received: split=\(0\.5, 0\.5\)"),
    ({"workers": 0}, ValueError, r"Received: workers=0"),
    ({"on_progress": 3}, TypeError, r"Received: on_progress=3"),
])
def test_write_dataset_checks_arguments_first(tmp_path, kwargs, error, match):
    args = {"n": 2, "size": 128} | kwargs
    with pytest.raises(error, match=match):
        synth.write_dataset(str(tmp_path / "never"), **args)
    assert not (tmp_path / "never").exists()


# ----- statistics and figures -------------------------------------------------------------------
def test_statistics_from_folder_equal_statistics_from_results(tiny_sets):
    root, _, _ = tiny_sets
    rows = _read_labels(root)
    results = [synth.synthesize(int(r["level"]), size=128, rng=np.random.default_rng([3, i + 1]))
               for i, r in enumerate(rows)]
    from_folder = synth.lesion_statistics(root)
    from_results = synth.lesion_statistics(results)
    assert len(from_folder) == 20
    for a, b in zip(from_folder, from_results):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key] == b[key] or (np.isnan(a[key]) and np.isnan(b[key])), key
    stage1_ma = next(r for r in from_folder if r["stage"] == 1 and r["type"] == "MA")
    assert stage1_ma["with_lesion"] == 2 and stage1_ma["count_min"] >= 2


def test_measure_lesions_on_a_hand_made_image():
    image = np.full((20, 20, 3), 100, np.uint8)
    image[5:8, 5:8] = (40, 100, 100)
    mask = np.zeros((20, 20), bool)
    mask[5:8, 5:8] = True
    m = synth.measure_lesions(image, {"HE": mask, "EX": np.zeros_like(mask)})
    assert m["HE"]["area"].tolist() == [9]
    assert m["HE"]["contrast"].tolist() == [60.0]
    assert len(m["EX"]["area"]) == 0


def test_figures_are_matplotlib_figures_without_pyplot():
    from matplotlib.figure import Figure

    grid = synth.example_grid(1, size=128, outline=True)
    assert isinstance(grid, Figure) and len(grid.axes) == 5
    real = np.zeros((90, 120, 3), np.uint8)
    cv2.circle(real, (60, 45), 44, (190, 90, 30), -1)
    fig = synth.comparison_figure([synth.synthesize(2, size=128, rng=0).image], [real], size=128)
    assert isinstance(fig, Figure) and len(fig.axes) == 4


def test_outline_masks_draws_outside_the_mask_in_its_colour():
    from dr_saliency.figures.plots import outline_masks

    image = np.zeros((9, 9, 3), np.uint8)
    mask = np.zeros((9, 9), bool)
    mask[4, 4] = True
    out = outline_masks(image, {"EX": mask, "MA": np.zeros((9, 9), bool)}, synth.MASK_COLOURS)
    assert (out[4, 4] == 0).all() and out[3, 3].tolist() == [40, 80, 255]  # #2850ff
    assert (out[0, 0] == 0).all() and (out[2, 2] == 0).all()
    assert (outline_masks(image, {"XX": mask}, {}, width=2)[2, 2] == 255).all()  # white, 2 px
    with pytest.raises(ValueError, match=r"Received: width=0"):
        outline_masks(image, {"EX": mask}, synth.MASK_COLOURS, width=0)


def test_lesions_reach_the_fov_rim_and_the_disc_neighbourhood():
    # Real lesions lie up to the FOV edge and right beside the disc: the generator must put some
    # there, or candidate exclusions of those zones look free of cost.
    near_rim = near_disc = 0
    for k in range(24):
        r = synth.synthesize(3, size=256, rng=100 + k)
        rows, cols = np.nonzero(np.any([r.masks[t] for t in ("MA", "HE", "EX", "SE")], axis=0))
        d_fov = np.hypot(rows - r.fov_center[0], cols - r.fov_center[1]) / r.fov_radius
        d_disc = np.hypot(rows - r.disc_center[0], cols - r.disc_center[1]) / r.disc_radius
        assert d_fov.max() <= synth.LESION_ZONE + 2 / r.fov_radius
        near_rim += bool((d_fov > 0.9).any())
        near_disc += bool((d_disc < 1.5).any())
    assert near_rim >= 3 and near_disc >= 1, (near_rim, near_disc)
