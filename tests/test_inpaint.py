"""Tests of dr_saliency.refinement.erase: binarisation rules on exact small maps, and inpainting."""

import cv2
import numpy as np
import pytest

from dr_saliency.refinement import erase as ip
from dr_saliency.refinement.erase import binarize, disk, inpaint


def _where(mask):
    return sorted(map(tuple, np.argwhere(mask).tolist()))


# ----------------------------------------------------------------------------- binarize


def test_defaults_follow_the_validation_search():
    # docs/choices.md: 0.5% of the FOV per iteration, 1 px dilation (within the range in docs/results.md).
    assert ip.DEFAULT_RULE == "top_fraction"
    assert ip.DEFAULT_LEVELS["top_fraction"] == 0.005
    assert ip.DEFAULT_DILATION == 1
    assert ip.DEFAULT_INPAINT_METHOD == "ns"


def test_top_fraction_picks_exactly_the_largest_pixels():
    smap = np.arange(20, dtype=np.float32).reshape(4, 5)  # 0..19, 19 at (3, 4)
    # round(0.1 * 20) = 2 pixels: values 19 and 18.
    mask = binarize(smap, rule="top_fraction", level=0.1, dilation=0)
    assert mask.dtype == bool and mask.shape == (4, 5)
    assert _where(mask) == [(3, 3), (3, 4)]


def test_top_fraction_breaks_ties_in_raster_order():
    smap = np.ones((4, 4), dtype=np.float32)
    smap[3, 3] = 2.0
    # 0.25 * 16 = 4 pixels: the 2, then the first three 1s in row-major order.
    mask = binarize(smap, rule="top_fraction", level=0.25, dilation=0)
    assert _where(mask) == [(0, 0), (0, 1), (0, 2), (3, 3)]


def test_top_fraction_never_selects_zero_and_selects_at_least_one_pixel():
    smap = np.zeros((4, 4), dtype=np.float32)
    smap[1, 2], smap[2, 1] = 0.5, 0.25
    # Half of 16 = 8 pixels asked for, but only 2 are positive.
    assert _where(binarize(smap, rule="top_fraction", level=0.5, dilation=0)) == [(1, 2), (2, 1)]
    # 0.001 * 16 rounds to 0: still one pixel.
    assert _where(binarize(smap, rule="top_fraction", level=0.001, dilation=0)) == [(1, 2)]


def test_top_fraction_counts_and_selects_inside_the_fov_only():
    smap = np.arange(16, dtype=np.float32).reshape(4, 4)
    fov = np.zeros((4, 4), dtype=bool)
    fov[:2, :] = True  # 8 FOV pixels, values 0..7; the larger values outside must be ignored
    mask = binarize(smap, fov, rule="top_fraction", level=0.25, dilation=0)
    assert _where(mask) == [(1, 2), (1, 3)]  # 0.25 * 8 = 2 pixels: 7 and 6


def test_fraction_of_max():
    smap = np.array([[0.2, 0.5, 1.0], [0.49, 0.0, 0.75]], dtype=np.float32)
    mask = binarize(smap, rule="fraction_of_max", level=0.5, dilation=0)
    assert _where(mask) == [(0, 1), (0, 2), (1, 2)]


def test_otsu_separates_a_bimodal_map():
    rng = np.random.default_rng(0)
    smap = rng.uniform(0.05, 0.15, (32, 32)).astype(np.float32)
    smap[10:14, 20:26] = rng.uniform(0.85, 0.95, (4, 6))
    mask = binarize(smap, rule="otsu", dilation=0)
    expected = np.zeros((32, 32), dtype=bool)
    expected[10:14, 20:26] = True
    np.testing.assert_array_equal(mask, expected)


def test_disk_structuring_elements():
    assert disk(0).tolist() == [[1]]
    assert disk(1).tolist() == [[0, 1, 0], [1, 1, 1], [0, 1, 0]]
    assert disk(2).sum() == 13  # as skimage.morphology.disk(2)


def test_dilation_by_a_disk_stays_inside_the_fov():
    smap = np.zeros((7, 7), dtype=np.float32)
    smap[3, 3] = 1.0
    one = binarize(smap, rule="fraction_of_max", level=1.0, dilation=1)
    assert _where(one) == [(2, 3), (3, 2), (3, 3), (3, 4), (4, 3)]
    assert binarize(smap, rule="fraction_of_max", level=1.0, dilation=2).sum() == 13
    fov = np.ones((7, 7), dtype=bool)
    fov[:, 4:] = False
    clipped = binarize(smap, fov, rule="fraction_of_max", level=1.0, dilation=1)
    assert _where(clipped) == [(2, 3), (3, 2), (3, 3), (4, 3)]


def test_min_component_size_uses_8_connectivity():
    smap = np.zeros((8, 8), dtype=np.float32)
    smap[1, 1] = smap[2, 2] = 1.0  # diagonal neighbours: one 8-connected component of 2 px
    smap[6, 6] = 1.0  # isolated pixel
    kwargs = dict(rule="fraction_of_max", level=1.0, dilation=0)
    assert binarize(smap, **kwargs, min_component_size=0).sum() == 3
    assert _where(binarize(smap, **kwargs, min_component_size=2)) == [(1, 1), (2, 2)]
    # Every component removed: an empty mask, not an error (refine stops with "empty_mask").
    assert not binarize(smap, **kwargs, min_component_size=3).any()


def test_smoothing_prefers_a_cluster_to_an_isolated_spike():
    smap = np.zeros((16, 16), dtype=np.float32)
    smap[2, 2] = 1.0  # isolated spike
    smap[9:12, 9:12] = 0.6  # 3x3 cluster
    kwargs = dict(rule="top_fraction", level=1 / 256, dilation=0)  # exactly 1 pixel
    assert _where(binarize(smap, **kwargs)) == [(2, 2)]
    assert _where(binarize(smap, **kwargs, smooth_sigma=1.5)) == [(10, 10)]


def test_integer_maps_are_accepted():
    smap = np.array([[0, 3], [1, 2]], dtype=np.int64)
    assert _where(binarize(smap, rule="fraction_of_max", level=1.0, dilation=0)) == [(0, 1)]


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(rule="top_ten"), ValueError, "Expected rule in .*Received: rule='top_ten'"),
    (dict(rule="top_fraction", level=0.0), ValueError, r"level in \(0, 1\].*Received: level=0.0"),
    (dict(rule="fraction_of_max", level=1.5), ValueError, "Received: level=1.5"),
    (dict(dilation=-1), ValueError, "Received: dilation=-1"),
    (dict(dilation=1.5), ValueError, "Received: dilation=1.5"),
    (dict(min_component_size=-2), ValueError, "Received: min_component_size=-2"),
    (dict(smooth_sigma=-1.0), ValueError, "Received: smooth_sigma=-1.0"),
])
def test_binarize_rejects_bad_options(kwargs, error, match):
    with pytest.raises(error, match=match):
        binarize(np.ones((4, 4), dtype=np.float32), **kwargs)


def test_binarize_rejects_bad_maps():
    with pytest.raises(ValueError, match="finite saliency map.*NaN"):
        binarize(np.array([[1.0, np.nan]], dtype=np.float32))
    with pytest.raises(ValueError, match="all-zero map"):
        binarize(np.zeros((4, 4), dtype=np.float32))
    fov = np.zeros((4, 4), dtype=bool)
    fov[0, 0] = True
    smap = np.ones((4, 4), dtype=np.float32)
    smap[0, 0] = 0
    with pytest.raises(ValueError, match="no positive value inside the field of view"):
        binarize(smap, fov)
    with pytest.raises(ValueError, match=r"shape \(H, W\). Received: saliency_map.shape=\(1, 4, 4\)"):
        binarize(np.ones((1, 4, 4), dtype=np.float32))
    with pytest.raises(TypeError, match="Received: saliency_map.dtype=bool"):
        binarize(np.ones((4, 4), dtype=bool))
    with pytest.raises(ValueError, match=r"Received: fov_mask.shape=\(3, 4\)"):
        binarize(np.ones((4, 4), dtype=np.float32), np.ones((3, 4), dtype=bool))
    with pytest.raises(TypeError, match="Received: fov_mask.dtype=uint8"):
        binarize(np.ones((4, 4), dtype=np.float32), np.ones((4, 4), dtype=np.uint8))


# ----------------------------------------------------------------------------- inpaint


def _dark_spot_image():
    rng = np.random.default_rng(1)
    image = np.empty((48, 48, 3), dtype=np.uint8)
    image[...] = (180, 90, 40)  # a fundus-like orange
    image = np.clip(image + rng.integers(-2, 3, image.shape), 0, 255).astype(np.uint8)
    image[20:26, 22:27] = (40, 20, 10)  # a dark lesion
    mask = np.zeros((48, 48), dtype=bool)
    mask[19:27, 21:28] = True  # the lesion and a 1 px margin
    return image, mask


@pytest.mark.parametrize("method", ["ns", "telea"])
def test_inpaint_fills_a_dark_spot_with_the_background_and_changes_nothing_else(method):
    image, mask = _dark_spot_image()
    before = image.copy()
    out = inpaint(image, mask, method=method, radius=3)
    assert out.dtype == np.uint8 and out.shape == image.shape
    np.testing.assert_array_equal(image, before)  # input untouched
    np.testing.assert_array_equal(out[~mask], image[~mask])  # only masked pixels change
    filled = out[mask].astype(int)
    assert np.abs(filled - (180, 90, 40)).max() <= 4  # nearly the background colour
    assert np.abs(image[mask].astype(int) - (180, 90, 40)).max() > 100  # it was dark before


def test_inpaint_with_an_empty_mask_returns_an_unchanged_copy():
    image, _ = _dark_spot_image()
    out = inpaint(image, np.zeros(image.shape[:2], dtype=bool))
    assert out is not image
    np.testing.assert_array_equal(out, image)


def test_inpaint_rejects_bad_input():
    image, mask = _dark_spot_image()
    with pytest.raises(ValueError, match=r"uint8 RGB image. Received: image.shape=\(48, 48, 3\), image.dtype=float32"):
        inpaint(image.astype(np.float32), mask)
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8 RGB image. Received: image.shape=\(48, 48\)"):
        inpaint(image[..., 0], mask)
    with pytest.raises(TypeError, match="bool mask. Received: mask.dtype=uint8"):
        inpaint(image, mask.astype(np.uint8))
    with pytest.raises(ValueError, match=r"Received: mask.shape=\(47, 48\)"):
        inpaint(image, mask[1:])
    with pytest.raises(ValueError, match="Received: method='fast'"):
        inpaint(image, mask, method="fast")
    with pytest.raises(ValueError, match="radius >= 1. Received: radius=0"):
        inpaint(image, mask, radius=0)


def _uniform_fundus(size=96, colour=(180, 90, 40), radius=40):
    fov = np.zeros((size, size), np.uint8)
    cv2.circle(fov, (size // 2, size // 2), radius, 1, -1)
    fov = fov.astype(bool)
    image = np.zeros((size, size, 3), np.uint8)
    image[fov] = colour
    return image, fov


@pytest.mark.parametrize("method", ["ns", "telea"])
def test_inpaint_at_the_fov_rim_takes_colour_from_inside_the_fov_only(method):
    image, fov = _uniform_fundus()
    col = np.flatnonzero(fov[48])[-1]          # the rim on row 48
    mask = np.zeros(fov.shape, bool)
    mask[44:53, col - 5:col + 1] = True        # 9x6, touching the rim
    mask &= fov
    colour = np.array([180, 90, 40], float)
    inside = inpaint(image, mask, method=method, fov_mask=fov)
    # Within 3% of the fundus colour (Euclidean in RGB; Telea rounds to +-2 even on a flat image).
    assert (np.linalg.norm(inside[mask] - colour, axis=1) <= 0.03 * np.linalg.norm(colour)).all()
    np.testing.assert_array_equal(inside[~mask], image[~mask])   # outside the FOV untouched
    # Without the FOV the black surround bleeds in: a dark blob (this is what the option fixes).
    plain = inpaint(image, mask, method=method)
    assert (plain[mask].mean(axis=0) < 0.9 * colour).all()


def test_inpaint_inside_the_fov_equals_plain_inpainting_away_from_the_rim():
    rng = np.random.default_rng(0)
    image, fov = _uniform_fundus()
    image = np.where(fov[:, :, None], rng.integers(60, 200, image.shape), 0).astype(np.uint8)
    mask = np.zeros(fov.shape, bool)
    mask[40:46, 30:37] = mask[50:53, 55:60] = True
    np.testing.assert_array_equal(inpaint(image, mask, fov_mask=fov), inpaint(image, mask))


def test_inpaint_leaves_masked_pixels_outside_the_fov_alone():
    image, fov = _uniform_fundus()
    mask = np.zeros(fov.shape, bool)
    mask[0:3, 0:3] = True                      # outside the FOV only
    out = inpaint(image, mask, fov_mask=fov)
    np.testing.assert_array_equal(out, image)
    with pytest.raises(TypeError, match=r"bool field-of-view mask of shape \(\d+, \d+\). Received: fov_mask.dtype=uint8"):
        inpaint(image, mask, fov_mask=fov.astype(np.uint8))
