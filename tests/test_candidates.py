"""Tests of dr_saliency.lesions.candidates: local maxima of exact small maps, exclusions, disc estimate."""

import re

import cv2
import numpy as np
import pytest

from dr_saliency.lesions import candidates as cd
from dr_saliency.lesions.candidates import detect_candidates, disc_mask, estimate_optic_disc


def gaussian_blobs(shape, blobs, sigma=2.0):
    """float32 map: a sum of Gaussians ``a * exp(-d**2 / (2 sigma**2))`` at (row, col, a)."""
    rows, cols = np.mgrid[:shape[0], :shape[1]]
    smap = np.zeros(shape, dtype=np.float64)
    for r, c, a in blobs:
        smap += a * np.exp(-((rows - r) ** 2 + (cols - c) ** 2) / (2 * sigma ** 2))
    return smap.astype(np.float32)


def spikes(shape, points):
    smap = np.zeros(shape, dtype=np.float32)
    for r, c, a in points:
        smap[r, c] = a
    return smap


def positions(result):
    return [(int(r), int(c)) for r, c, _ in result]


# ----------------------------------------------------------------------------- detect_candidates


def test_defaults_are_named_constants():
    assert cd.DEFAULT_SIGMA == 1.0
    assert cd.DEFAULT_MIN_DISTANCE == 4
    assert cd.DEFAULT_THRESHOLD == 0.0
    assert cd.DEFAULT_MAX_CANDIDATES == 200
    assert cd.DEFAULT_BORDER == 0


def test_three_blobs_give_three_candidates_at_their_centres_in_score_order():
    smap = gaussian_blobs((64, 64), [(15, 15, 1.0), (40, 20, 0.6), (30, 50, 0.8)])
    result = detect_candidates(smap)
    assert result.dtype == np.float64 and result.shape == (3, 3)
    assert positions(result) == [(15, 15), (30, 50), (40, 20)]
    # The score is the smoothed map's value: a Gaussian of variance 4 smoothed by one of variance
    # 1 keeps 4 / (4 + 1) of its peak.
    np.testing.assert_allclose(result[:, 2], [0.8, 0.64, 0.48], rtol=1e-4)


def test_score_is_the_smoothed_value_and_sigma_zero_keeps_the_map():
    smap = spikes((21, 21), [(10, 10, 1.0)])
    assert detect_candidates(smap, sigma=0).tolist() == [[10.0, 10.0, 1.0]]
    smoothed = detect_candidates(smap, sigma=1.0)
    assert positions(smoothed) == [(10, 10)]
    # A unit spike smoothed by a normalised Gaussian of sigma 1: its centre weight, about
    # 1 / (2 pi) (scipy truncates the kernel at 4 sigma).
    assert smoothed[0, 2] == pytest.approx(1 / (2 * np.pi), rel=1e-3)


def test_plateau_gives_one_candidate_at_its_centre():
    smap = np.zeros((24, 24), dtype=np.float32)
    smap[10:13, 10:15] = 1.0  # rows 10-12, cols 10-14: centroid (11, 12)
    assert detect_candidates(smap, sigma=0).tolist() == [[11.0, 12.0, 1.0]]


def test_even_plateau_and_flat_map_break_ties_in_raster_order():
    smap = np.zeros((10, 10), dtype=np.float32)
    smap[4:6, 4:6] = 2.0  # centroid (4.5, 4.5): four pixels tie, the upper-left one wins
    assert detect_candidates(smap, sigma=0).tolist() == [[4.0, 4.0, 2.0]]
    flat = np.ones((20, 20), dtype=np.float32)
    assert detect_candidates(flat, sigma=0).tolist() == [[9.0, 9.0, 1.0]]
    assert detect_candidates(flat).tolist() == [[9.0, 9.0, 1.0]]  # smoothing a constant keeps it


def test_min_distance_merges_close_peaks():
    smap = spikes((21, 21), [(10, 10, 1.0), (10, 13, 0.5)])  # 3 px apart
    assert positions(detect_candidates(smap, sigma=0, min_distance=4)) == [(10, 10)]
    assert positions(detect_candidates(smap, sigma=0, min_distance=2)) == [(10, 10), (10, 13)]


def test_equal_separate_peaks_within_min_distance_keep_the_first():
    smap = spikes((21, 21), [(10, 13, 1.0), (10, 10, 1.0), (16, 10, 1.0)])
    # (10, 10) and (10, 13) tie within 4 px: the first by (row, col) stays; (16, 10) is 6 away.
    assert positions(detect_candidates(smap, sigma=0, min_distance=4)) == [(10, 10), (16, 10)]
    assert positions(detect_candidates(smap, sigma=0, min_distance=2)) == [(10, 10), (10, 13), (16, 10)]


def test_ties_in_score_are_sorted_by_row_then_column():
    smap = spikes((30, 30), [(20, 5, 1.0), (5, 20, 1.0), (5, 5, 1.0), (12, 12, 2.0)])
    assert positions(detect_candidates(smap, sigma=0)) == [(12, 12), (5, 5), (5, 20), (20, 5)]


def test_threshold_and_zero():
    smap = spikes((21, 21), [(5, 5, 1.0), (15, 15, 0.25)])
    assert positions(detect_candidates(smap, sigma=0, threshold=0.25)) == [(5, 5)]
    assert positions(detect_candidates(smap, sigma=0, threshold=0.2)) == [(5, 5), (15, 15)]
    # Nothing positive: no candidate, even with a negative threshold.
    empty = detect_candidates(np.zeros((8, 8), np.float32), threshold=-1.0)
    assert empty.shape == (0, 3) and empty.dtype == np.float64


def test_max_candidates_keeps_the_highest_scores():
    smap = spikes((40, 40), [(5, 5, 0.125), (5, 20, 0.375), (20, 5, 0.25), (20, 20, 0.1875), (35, 35, 0.5)])
    result = detect_candidates(smap, sigma=0, max_candidates=2)
    assert result.tolist() == [[35.0, 35.0, 0.5], [5.0, 20.0, 0.375]]
    assert len(detect_candidates(smap, sigma=0, max_candidates=None)) == 5


def test_fov_is_respected_and_the_map_outside_it_ignored():
    smap = spikes((30, 30), [(5, 5, 1.0), (20, 20, 0.5)])
    fov = np.zeros((30, 30), dtype=bool)
    fov[10:, 10:] = True  # (5, 5) lies outside
    assert positions(detect_candidates(smap, fov, sigma=0)) == [(20, 20)]
    # With smoothing, the value outside the FOV must not leak in either: the map is set to 0 there.
    assert positions(detect_candidates(smap, fov)) == [(20, 20)]


def test_exclude_removes_the_structure_not_just_its_peak():
    # A wide bright blob (an optic disc) whose peak lies in the excluded region: no candidate on
    # its slopes just outside the region either.
    smap = gaussian_blobs((60, 60), [(20, 20, 1.0), (45, 45, 0.3)], sigma=5.0)
    exclude = disc_mask((60, 60), (20, 20), 6)
    assert positions(detect_candidates(smap)) == [(20, 20), (45, 45)]
    assert positions(detect_candidates(smap, exclude=exclude)) == [(45, 45)]


def test_border_excludes_the_fov_rim():
    smap = spikes((40, 40), [(10, 20, 1.0), (20, 20, 0.5)])
    fov = np.zeros((40, 40), dtype=bool)
    fov[8:, :] = True
    # (10, 20) is 3 px from the nearest non-FOV pixel (7, 20); (20, 20) is 13 px.
    assert positions(detect_candidates(smap, fov, sigma=0, border=0)) == [(10, 20), (20, 20)]
    assert positions(detect_candidates(smap, fov, sigma=0, border=2.9)) == [(10, 20), (20, 20)]
    assert positions(detect_candidates(smap, fov, sigma=0, border=3)) == [(20, 20)]


def test_border_counts_the_image_edge_as_fov_edge():
    smap = spikes((30, 30), [(1, 15, 1.0), (15, 15, 0.5)])
    # Without a FOV mask the image is the FOV: (1, 15) is 2 px from the (padded) edge at row -1.
    assert positions(detect_candidates(smap, sigma=0, border=1)) == [(1, 15), (15, 15)]
    assert positions(detect_candidates(smap, sigma=0, border=2)) == [(15, 15)]


def test_accepts_other_real_dtypes():
    smap = spikes((21, 21), [(10, 10, 3)]).astype(np.int32)
    assert detect_candidates(smap, sigma=0).tolist() == [[10.0, 10.0, 3.0]]


@pytest.mark.parametrize("kwargs, message", [
    (dict(sigma=-1.0), "Expected a finite sigma >= 0. Received: sigma=-1.0"),
    (dict(min_distance=0), "Expected an integer min_distance >= 1. Received: min_distance=0"),
    (dict(min_distance=2.5), "Received: min_distance=2.5"),
    (dict(threshold=float("nan")), "Expected a finite threshold. Received: threshold=nan"),
    (dict(max_candidates=0), "Received: max_candidates=0"),
    (dict(border=-2), "Expected a finite border >= 0. Received: border=-2"),
    (dict(method="blobs"), "Expected method in ('peaks', 'components'). Received: method='blobs'"),
    (dict(level=1.0), "Expected level in (0, 1). Received: level=1.0"),
])
def test_bad_options(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        detect_candidates(np.ones((8, 8), np.float32), **kwargs)


def _ring(shape, centre, radius, value=1.0):
    rows, cols = np.mgrid[:shape[0], :shape[1]]
    d = np.hypot(rows - centre[0], cols - centre[1])
    return np.where((d > radius - 0.5) & (d < radius + 1.0), value, 0).astype(np.float32)


def test_components_put_the_candidate_inside_an_outlined_lesion():
    # A guided-backprop map outlines a lesion: a ring of radius 4 around (20, 20). Its peaks lie
    # on the ring; its region's centroid is the lesion's centre.
    smap = _ring((64, 64), (20, 20), 4) + 0.5 * spikes((64, 64), [(40, 45, 1.0)])
    peaks = detect_candidates(smap, sigma=0)
    assert np.hypot(peaks[0, 0] - 20, peaks[0, 1] - 20) >= 3
    found = detect_candidates(smap, sigma=0, method="components", level=0.2)
    assert positions(found) == [(20, 20), (40, 45)]
    assert found[:, 2].tolist() == [1.0, 0.5]  # each region's largest value, sorted


def test_components_join_near_arcs_and_respect_level_and_exclusions():
    smap = _ring((64, 64), (30, 30), 6)
    smap[30, 22:39] = 0  # the ring broken into two arcs, 1 px apart at the break
    assert len(detect_candidates(smap, sigma=0, method="components", min_distance=1)) == 2
    assert positions(detect_candidates(smap, sigma=0, method="components")) == [(30, 30)]
    weak = smap + 0.1 * spikes((64, 64), [(5, 5, 1.0)])
    assert len(detect_candidates(weak, sigma=0, method="components", level=0.2)) == 1
    assert len(detect_candidates(weak, sigma=0, method="components", level=0.05)) == 2
    # A centroid in an excluded region (a ring around the disc) moves to the region's nearest
    # allowed pixel.
    exclude = np.zeros((64, 64), bool)
    exclude[28:33, 28:33] = True
    (row, col, _), = detect_candidates(smap, sigma=0, method="components", exclude=exclude)
    assert not exclude[int(row), int(col)] and smap[int(row), int(col)] > 0
    assert detect_candidates(np.zeros((8, 8), np.float32), method="components").shape == (0, 3)


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"Expected a saliency map of shape \(H, W\). "
                                         r"Received: saliency_map.shape=\(8, 8, 1\)"):
        detect_candidates(np.ones((8, 8, 1), np.float32))
    bad = np.ones((8, 8), np.float32)
    bad[2, 2] = np.nan
    with pytest.raises(ValueError, match="Expected a finite saliency map"):
        detect_candidates(bad)
    with pytest.raises(ValueError, match=r"Received: fov_mask.shape=\(8, 9\)"):
        detect_candidates(np.ones((8, 8), np.float32), np.ones((8, 9), bool))
    with pytest.raises(TypeError, match="Received: exclude.dtype=uint8"):
        detect_candidates(np.ones((8, 8), np.float32), exclude=np.ones((8, 8), np.uint8))
    with pytest.raises(TypeError, match="Received: saliency_map.dtype=bool"):
        detect_candidates(np.ones((8, 8), bool))


# ----------------------------------------------------------------------------- optic disc


def test_disc_mask_is_euclidean():
    mask = disc_mask((5, 5), (2, 2), 1.5)
    expected = np.array([[0, 0, 0, 0, 0],
                         [0, 1, 1, 1, 0],
                         [0, 1, 1, 1, 0],
                         [0, 1, 1, 1, 0],
                         [0, 0, 0, 0, 0]], dtype=bool)
    np.testing.assert_array_equal(mask, expected)
    assert disc_mask((5, 5), (2, 2), 1).sum() == 5          # the 4-connected cross
    assert disc_mask((5, 5), (0.5, 10.0), 2).sum() == 0      # centre off the image
    with pytest.raises(ValueError, match="Received: radius=-1"):
        disc_mask((5, 5), (2, 2), -1)
    with pytest.raises(ValueError, match=r"Received: shape=\(5,\)"):
        disc_mask((5,), (2, 2), 1)


def fundus_like(size=128, disc=(40.0, 90.0), disc_radius=9.0):
    """A reddish FOV disc with a bright optic disc and a few small bright exudate-like spots."""
    rows, cols = np.mgrid[:size, :size]
    fov = (rows - size / 2 + 0.5) ** 2 + (cols - size / 2 + 0.5) ** 2 <= (0.47 * size) ** 2
    image = np.zeros((size, size, 3), dtype=np.uint8)
    image[fov] = (150, 60, 30)
    on_disc = (rows - disc[0]) ** 2 + (cols - disc[1]) ** 2 <= disc_radius ** 2
    image[on_disc] = (240, 200, 150)
    for r, c in [(80, 40), (90, 60), (60, 30)]:
        image[r - 1:r + 2, c - 1:c + 2] = (255, 255, 120)
    return image, fov


def test_estimate_optic_disc_finds_the_bright_disc():
    image, fov = fundus_like()
    disc = estimate_optic_disc(image, fov)
    assert abs(disc.center[0] - 40) <= 1 and abs(disc.center[1] - 90) <= 1
    assert fov.any(axis=0).sum() == 120  # the FOV's bounding box is 120 px wide: radius 60
    fov_radius = 60.0
    assert disc.radius == pytest.approx(cd.DEFAULT_DISC_RADIUS_FRACTION * fov_radius)
    assert disc.mask.dtype == bool and disc.mask.shape == fov.shape
    assert disc.mask[40, 90] and not disc.mask[80, 40]
    assert not (disc.mask & ~fov).any()


def test_estimate_optic_disc_at_a_large_size_maps_back_to_input_pixels():
    image, fov = fundus_like()
    # 12x taller and wider: searched at 512 px, the centre mapped back.
    big = cv2.resize(image, (1536, 1536), interpolation=cv2.INTER_NEAREST)
    big_fov = cv2.resize(fov.view(np.uint8), (1536, 1536), interpolation=cv2.INTER_NEAREST).view(bool)
    disc = estimate_optic_disc(big, big_fov)
    # Pixel 40 of the small image covers rows 480..491 of the big one: centre 485.5.
    assert abs(disc.center[0] - 485.5) <= 6 and abs(disc.center[1] - 1085.5) <= 6


def test_estimate_optic_disc_on_synthetic_fundi():
    from dr_saliency.fundus import synth
    # A heuristic: when the defaults were chosen it was within one disc radius on 59 of 60
    # synthetic images. Here: at least 4 of 5, one per stage.
    hits = 0
    for stage in range(5):
        result = synth.synthesize(stage, size=256, rng=10 + stage)
        disc = estimate_optic_disc(result.image, result.fov)
        distance = np.hypot(disc.center[0] - result.disc_center[0], disc.center[1] - result.disc_center[1])
        hits += distance < result.disc_radius
    assert hits >= 4


def test_estimate_optic_disc_bad_inputs():
    image, fov = fundus_like(size=32)
    with pytest.raises(ValueError, match=r"uint8 RGB image. Received: image.shape=\(32, 32, 3\), image.dtype=float32"):
        estimate_optic_disc(image.astype(np.float32), fov)
    with pytest.raises(ValueError, match="Received: radius_fraction=0"):
        estimate_optic_disc(image, fov, radius_fraction=0)
    with pytest.raises(ValueError, match="Expected a non-empty field of view"):
        estimate_optic_disc(image, np.zeros_like(fov))
