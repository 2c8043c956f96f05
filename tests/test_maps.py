"""Tests of dr_saliency.core.maps: the scale maps are scored on, and the final map S."""

import numpy as np
import pytest

from dr_saliency.core.maps import (Combination, combine_maps, normalize_map, normalize_maps,
                                   scored_maps)


def test_normalize_map_uses_the_999th_percentile_of_positive_fov_values():
    smap = np.arange(1, 1001, dtype=np.float32).reshape(20, 50)  # 1..1000
    out = normalize_map(smap)
    robust_max = np.percentile(np.arange(1, 1001), 99.9)  # 999.001
    assert out.dtype == np.float32 and out.max() == 1.0
    np.testing.assert_allclose(out[9, 49], 500 / robust_max, rtol=1e-6)
    assert out[19, 49] == 1.0  # 1000 > robust max: clipped
    sparse = np.zeros((8, 8), dtype=np.float32)
    sparse[2, 3] = 1e-6  # one positive pixel: it is its own robust maximum
    assert normalize_map(sparse)[2, 3] == 1.0 and normalize_map(sparse).sum() == 1.0
    assert not normalize_map(np.zeros((8, 8), dtype=np.float32)).any()


def _two_level_maps():
    """s_0: left 2, right 1; s_1: left 0, right 3; s_2: left 4, right 2 (4x4, halves by column).

    Normalised (robust max = the larger value, held by half the pixels):
    n_0 = (1, 0.5), n_1 = (0, 1), n_2 = (1, 0.5) for (left, right).
    """
    maps = np.zeros((3, 4, 4), dtype=np.float32)
    maps[0][:, :2], maps[0][:, 2:] = 2, 1
    maps[1][:, :2], maps[1][:, 2:] = 0, 3
    maps[2][:, :2], maps[2][:, 2:] = 4, 2
    return maps


def test_combine_mean_is_the_decaying_weighted_mean():
    # decay 0.5: w = 1, 0.5, 0.25, sum 1.75.
    # left  = (1 * 1 + 0.5 * 0 + 0.25 * 1)   / 1.75 = 1.25  / 1.75 = 5/7  = 0.714286
    # right = (1 * 0.5 + 0.5 * 1 + 0.25 * 0.5) / 1.75 = 1.125 / 1.75 = 9/14 = 0.642857
    out = combine_maps(_two_level_maps(), decay=0.5, combine="mean", normalize="map")
    np.testing.assert_allclose(out[:, :2], 5 / 7, rtol=1e-6)
    np.testing.assert_allclose(out[:, 2:], 9 / 14, rtol=1e-6)
    # Constant maps 1, 2, 3 all normalise to 1: S = 1 inside the FOV, 0 outside.
    field = np.zeros((4, 4), dtype=bool)
    field[1:3, 1:3] = True
    constant = np.stack([np.full((4, 4), v, dtype=np.float32) for v in (1, 2, 3)])
    out = combine_maps(constant, fov_mask=field, decay=0.5, combine="mean", normalize="map")
    np.testing.assert_allclose(out[field], 1.0, rtol=1e-6)
    assert not out[~field].any()
    # decay 0: S = n_0.
    np.testing.assert_allclose(combine_maps(_two_level_maps(), decay=0.0, combine="mean",
                                            normalize="map")[0], [1, 1, .5, .5])


def test_combine_max_and_masked():
    maps = _two_level_maps()
    # max: left = max(1, 0.5 * 0, 0.25 * 1) = 1; right = max(0.5, 0.5 * 1, 0.25 * 0.5) = 0.5
    out = combine_maps(maps, decay=0.5, combine="max", normalize="map")
    np.testing.assert_allclose(out[0], [1, 1, 0.5, 0.5])
    # masked, with mask_0 = left half, mask_1 and mask_2 empty; w_k = 0.5 ** 3 = 0.125 outside:
    # left  = max(n_0 * 1, n_1 * 0.125, n_2 * 0.125) = max(1, 0, 0.125)         = 1
    # right = max(n_0 * 0.125, n_1 * 0.125, n_2 * 0.125) = max(0.0625, 0.125, 0.0625) = 0.125
    masks = np.zeros((3, 4, 4), dtype=bool)
    masks[0][:, :2] = True
    out = combine_maps(maps, masks, decay=0.5, combine="masked", normalize="map")
    np.testing.assert_allclose(out[0], [1, 1, 0.125, 0.125])
    # With decay 1 every weight is 1: masked == max.
    np.testing.assert_allclose(combine_maps(maps, masks, decay=1.0, combine="masked", normalize="map"),
                               combine_maps(maps, decay=1.0, combine="max", normalize="map"))


def test_normalize_maps_modes():
    maps = _two_level_maps()  # robust maxima 2, 3, 4
    np.testing.assert_allclose(normalize_maps(maps, normalize="map")[:, 0],
                               [[1, 1, .5, .5], [0, 0, 1, 1], [1, 1, .5, .5]])
    # image: every map by s_0's robust maximum (2), clipped to 1.
    np.testing.assert_allclose(normalize_maps(maps, normalize="image")[:, 0],
                               [[1, 1, .5, .5], [0, 0, 1, 1], [1, 1, 1, 1]])
    field = np.ones((4, 4), dtype=bool)
    field[0] = False
    raw = normalize_maps(maps, field, normalize="none")
    np.testing.assert_array_equal(raw[:, 1:], maps[:, 1:])
    assert not raw[:, 0].any()
    with pytest.raises(ValueError, match=r"normalize in \('map', 'image', 'none'\). "
                                         r"Received: normalize='rank'"):
        normalize_maps(maps, normalize="rank")


@pytest.mark.parametrize("normalize", ["map", "image", "none"])
@pytest.mark.parametrize("combine", ["mean", "max"])
def test_scored_s0_and_s_share_one_scale_and_are_equal_at_decay_0(normalize, combine):
    rng = np.random.default_rng(1)
    maps = rng.gamma(1.0, 3.0, (4, 16, 16)).astype(np.float32)
    first, final = scored_maps(maps, decay=0.0, combine=combine, normalize=normalize)
    np.testing.assert_array_equal(first, final)
    np.testing.assert_array_equal(first, normalize_maps(maps, normalize=normalize)[0])
    _, final = scored_maps(maps, decay=0.9, combine=combine, normalize=normalize)
    np.testing.assert_array_equal(
        final, combine_maps(maps, decay=0.9, combine=combine, normalize=normalize))


def test_combine_maps_rejects_bad_input():
    maps = _two_level_maps()
    with pytest.raises(ValueError, match=r"decay in \[0, 1\]. Received: decay=1.5"):
        combine_maps(maps, decay=1.5)
    with pytest.raises(ValueError, match="Received: combine='sum'"):
        combine_maps(maps, combine="sum")
    with pytest.raises(ValueError, match="masks .* for combine='masked'. Received: masks=None"):
        combine_maps(maps, combine="masked")
    with pytest.raises(ValueError, match=r"\(k, H, W\), k >= 1. Received: maps.shape=\(4, 4\)"):
        combine_maps(maps[0])
    with pytest.raises(ValueError, match=r"Received: maps\[1\] containing NaN"):
        bad = maps.copy()
        bad[1, 0, 0] = np.nan
        combine_maps(bad, combine="max")


def test_combination_checks_and_round_trips_through_params():
    c = Combination(decay=0.5, combine="mean", normalize="image")
    assert Combination.from_params(c.to_params()) == c
    assert c.to_params()["normalize_percentile"] == 99.9
    # A result file written before normalize was a setting: each map by its own maximum.
    assert Combination.from_params({"decay": 0.9, "combine": "max"}).normalize == "map"
    assert Combination.from_params(c.to_params(), decay=0.0, combine="max").decay == 0.0
    with pytest.raises(ValueError, match=r"Received: decay=2"):
        Combination(decay=2)
    with pytest.raises(ValueError, match=r"Received: normalize='rank'"):
        Combination(normalize="rank")
    maps = np.random.default_rng(0).random((3, 8, 8), dtype=np.float32)
    masks = maps > 0.8
    np.testing.assert_array_equal(c.final_map(maps, masks),
                                  combine_maps(maps, masks, decay=0.5, combine="mean",
                                               normalize="image"))
    np.testing.assert_array_equal(c.scored(maps, masks)[1], c.final_map(maps, masks))
