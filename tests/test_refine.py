"""Tests of dr_saliency.refinement.loop with fake explainers and predictors (no network).

The fake "grader" sees dark 2x2 spots (lesions) on a bright background: its prediction is the
number of lesions left, and its saliency map is the darkness of the lesion pixels. Lesions have
different darknesses, so binarising with ``fraction_of_max`` at level 1 picks exactly the darkest
lesion, and each iteration inpaints one lesion: an image with L lesions has p_i = L - i.
"""


import numpy as np
import pytest

from dr_saliency.refinement.erase import binarize
from dr_saliency.refinement.loop import (ImageError, RefineResult, STOP_REASONS, combine_maps,
                                normalize_map, normalize_maps, refine, refine_batch, scored_maps)

SIZE = 24
BACKGROUND = 200
#: Top-left corners of up to 5 lesions, far enough apart not to touch after inpainting.
SPOTS = [(3, 3), (3, 15), (11, 9), (18, 3), (18, 17)]
#: One lesion per iteration, no dilation, so that counts are exact.
ONE_LESION = dict(binarize_rule="fraction_of_max", binarize_level=1.0, dilation=0)


def lesion_image(n_lesions, image_id=0):
    """A (SIZE, SIZE, 3) uint8 image with n lesions; its id is written in pixel (0, 0)."""
    image = np.full((SIZE, SIZE, 3), BACKGROUND, dtype=np.uint8)
    for i, (r, c) in enumerate(SPOTS[:n_lesions]):
        image[r:r + 2, c:c + 2] = 10 + 15 * i  # the first lesion is the darkest
    image[0, 0] = image_id
    return image


def fov():
    """Everything but row 0 (where the id pixel lives, so inpainting never touches it)."""
    mask = np.ones((SIZE, SIZE), dtype=bool)
    mask[0] = False
    return mask


class FakeGrader:
    """Records which images (by id) every call received."""

    def __init__(self, explain_predicts, constant_prediction=None):
        self.explain_predicts = explain_predicts
        self.constant_prediction = constant_prediction
        self.explain_calls, self.predict_calls = [], []

    def _predictions(self, images):
        if self.constant_prediction is not None:
            return np.full(len(images), self.constant_prediction, dtype=np.float32)
        dark = images[:, 1:, :, 0] < 100
        return dark.sum(axis=(1, 2)) / 4.0  # lesions left

    def explain(self, images, fovs):
        assert images.dtype == np.uint8 and fovs.dtype == bool and fovs.shape == images.shape[:3]
        self.explain_calls.append(images[:, 0, 0, 0].tolist())
        grey = images[..., 0].astype(np.float32)
        maps = np.where(grey < 100, 255 - grey, 0).astype(np.float32)
        if self.explain_predicts:
            return maps, self._predictions(images)
        return maps

    def predict(self, images):
        self.predict_calls.append(images[:, 0, 0, 0].tolist())
        return self._predictions(images)


def run(n_lesions, explain_predicts=True, **kwargs):
    grader = FakeGrader(explain_predicts, kwargs.pop("constant_prediction", None))
    options = {**ONE_LESION, **kwargs}
    result = refine(lesion_image(n_lesions), explain=grader.explain, predict=grader.predict,
                    fov_mask=fov(), **options)
    return result, grader


def check_layout(r):
    """The invariants of RefineResult stated in the refine module docstring."""
    k, n = r.maps.shape[0], r.iterations
    assert r.stop_reason in STOP_REASONS
    assert r.maps.dtype == np.float32 and r.masks.dtype == bool and r.masks.shape == r.maps.shape
    assert r.predictions.dtype == np.float32 and r.predictions.shape == (n + 1,)
    assert k >= 1 and k in (n, n + 1)
    assert r.final_map.dtype == np.float32 and r.final_map.shape == r.maps.shape[1:]
    if r.images is not None:
        assert r.images.shape == (n + 1, *r.maps.shape[1:], 3) and r.images.dtype == np.uint8


# ----------------------------------------------------------------------------- stop reasons


@pytest.mark.parametrize("explain_predicts", [True, False])
def test_normal_stop_one_lesion_per_iteration(explain_predicts):
    r, _ = run(4, explain_predicts)
    check_layout(r)
    assert r.stop_reason == "normal"
    assert r.iterations == 3 and r.maps.shape == (3, SIZE, SIZE)
    np.testing.assert_array_equal(r.predictions, [4, 3, 2, 1])
    for i, (row, col) in enumerate(SPOTS[:3]):  # the darkest lesion first
        expected = np.zeros((SIZE, SIZE), dtype=bool)
        expected[row:row + 2, col:col + 2] = True
        np.testing.assert_array_equal(r.masks[i], expected)
    assert r.params["max_iterations"] == 10 and r.params["binarize_rule"] == "fraction_of_max"


def test_max_iterations_stop():
    r, _ = run(5, max_iterations=2)
    check_layout(r)
    assert r.stop_reason == "max_iterations" and r.iterations == 2
    np.testing.assert_array_equal(r.predictions, [5, 4, 3])
    assert r.maps.shape[0] == 2


def test_reaching_the_threshold_at_the_cap_is_a_normal_stop():
    r, _ = run(3, max_iterations=2)
    assert r.stop_reason == "normal" and r.iterations == 2
    np.testing.assert_array_equal(r.predictions, [3, 2, 1])


@pytest.mark.parametrize("n_lesions", [0, 1])
def test_not_referable_image_still_gets_its_plain_map(n_lesions):
    r, grader = run(n_lesions)
    check_layout(r)
    assert r.stop_reason == "not_referable" and r.iterations == 0
    np.testing.assert_array_equal(r.predictions, [n_lesions])
    assert r.maps.shape == (1, SIZE, SIZE) and r.masks.shape == (1, SIZE, SIZE)
    # masks[0] is what binarize makes of s_0, not inpainted: one lesion, or empty for a zero map.
    assert r.masks[0].sum() == 4 * n_lesions
    assert grader.explain_calls == [[0]]


def test_max_iterations_zero_gives_s0_only():
    r, grader = run(3, max_iterations=0, keep_images=True)
    check_layout(r)
    assert r.stop_reason == "max_iterations" and r.iterations == 0
    assert r.maps.shape == (1, SIZE, SIZE) and r.masks[0].sum() == 4
    np.testing.assert_array_equal(r.predictions, [3])
    assert r.images.shape == (1, SIZE, SIZE, 3)
    assert grader.explain_calls == [[0]] and grader.predict_calls == []
    # p_0 <= stop_at wins over the cap.
    assert run(1, max_iterations=0)[0].stop_reason == "not_referable"


def test_empty_mask_stop_keeps_the_all_zero_map():
    # The grader stays referable (constant 3) after both lesions are gone: s_2 is all zero.
    r, _ = run(2, constant_prediction=3.0)
    check_layout(r)
    assert r.stop_reason == "empty_mask" and r.iterations == 2
    assert r.maps.shape == (3, SIZE, SIZE)
    assert not r.maps[2].any() and not r.masks[2].any() and r.masks[:2].any(axis=(1, 2)).all()
    np.testing.assert_array_equal(r.predictions, [3, 3, 3])


def test_empty_mask_when_min_component_size_removes_everything():
    r, _ = run(3, min_component_size=5)  # lesions are 4 px
    assert r.stop_reason == "empty_mask" and r.iterations == 0 and r.maps.shape[0] == 1
    assert r.maps[0].any() and not r.masks[0].any()


# ----------------------------------------------------------------------------- calls and batching


def test_prediction_reuse_when_explain_returns_predictions():
    # 4 lesions, stops at I_3: explain on I_0..I_3 (s_3 discarded), never a separate predict.
    r, grader = run(4, explain_predicts=True)
    assert len(grader.explain_calls) == 4 and grader.predict_calls == []
    # At the cap, the last image only needs a forward pass: predict, not explain.
    _, grader = run(5, explain_predicts=True, max_iterations=2)
    assert len(grader.explain_calls) == 2 and len(grader.predict_calls) == 1


def test_predict_on_every_image_when_explain_returns_maps_only():
    _, grader = run(4, explain_predicts=False)
    assert len(grader.predict_calls) == 4  # I_0..I_3
    assert len(grader.explain_calls) == 3  # s_0..s_2; I_3 is not referable, not explained


def test_predict_may_be_omitted_when_explain_predicts():
    grader = FakeGrader(explain_predicts=True)
    r = refine(lesion_image(5), explain=grader.explain, fov_mask=fov(), max_iterations=2,
               **ONE_LESION)
    assert r.stop_reason == "max_iterations"
    np.testing.assert_array_equal(r.predictions, [5, 4, 3])
    assert len(grader.explain_calls) == 3  # the last one only for its prediction
    with pytest.raises(TypeError, match="explain returned maps only.*Received: predict=None"):
        refine(lesion_image(2), explain=FakeGrader(explain_predicts=False).explain)


@pytest.mark.parametrize("explain_predicts", [True, False])
def test_batch_images_stop_at_different_iterations(explain_predicts):
    grader = FakeGrader(explain_predicts)
    lesions = [4, 2, 1, 3]
    images = np.stack([lesion_image(n, image_id=j) for j, n in enumerate(lesions)])
    results = refine_batch(images, [fov()] * 4, explain=grader.explain, predict=grader.predict,
                           **ONE_LESION)
    assert [r.iterations for r in results] == [3, 1, 0, 2]
    assert [r.stop_reason for r in results] == ["normal", "normal", "not_referable", "normal"]
    for r, expected in zip(results, [[4, 3, 2, 1], [2, 1], [1], [3, 2, 1]]):
        check_layout(r)
        np.testing.assert_array_equal(r.predictions, expected)
    if explain_predicts:
        # Each iteration explains the active images in one call; no separate predictions.
        assert grader.explain_calls == [[0, 1, 2, 3], [0, 1, 3], [0, 3], [0]]
        assert grader.predict_calls == []
    else:
        # predict on the active images; explain only on those still referable.
        assert grader.predict_calls == [[0, 1, 2, 3], [0, 1, 3], [0, 3], [0]]
        assert grader.explain_calls == [[0, 1, 2, 3], [0, 3], [0]]
    np.testing.assert_array_equal(images[:, 0, 0, 0], [0, 1, 2, 3])  # inputs untouched
    assert images[0, 3, 3, 0] == 10


def test_refine_equals_a_batch_of_one():
    grader = FakeGrader(True)
    single = refine(lesion_image(3), explain=grader.explain, fov_mask=fov(), **ONE_LESION)
    batch = refine_batch([lesion_image(3)], [fov()], explain=grader.explain, **ONE_LESION)[0]
    np.testing.assert_array_equal(single.maps, batch.maps)
    np.testing.assert_array_equal(single.final_map, batch.final_map)
    assert refine_batch([], explain=grader.explain) == []


def test_kept_images_are_the_inpainting_sequence():
    image = lesion_image(3)
    r, _ = run(3, keep_images=True)
    np.testing.assert_array_equal(r.images[0], image)
    for i in range(r.iterations):
        changed = np.any(r.images[i + 1] != r.images[i], axis=-1)
        assert changed.any() and not (changed & ~r.masks[i]).any()  # only inside mask_i
    assert run(3)[0].images is None


def test_maps_are_zero_outside_the_fov_and_masks_stay_inside():
    def explain(images, fovs):
        return np.ones(images.shape[:3], dtype=np.float32), np.array([2.0] * len(images))

    field = np.zeros((SIZE, SIZE), dtype=bool)
    field[4:20, 4:20] = True
    r = refine(lesion_image(0), explain=explain, fov_mask=field, max_iterations=2,
               binarize_level=0.05)
    assert r.stop_reason == "max_iterations"
    assert not r.maps[:, ~field].any() and r.maps[:, field].all()
    assert not r.masks[:, ~field].any() and r.masks.any()
    assert not r.final_map[~field].any()


def test_final_map_is_combine_maps_of_the_result():
    for combine in ("mean", "max", "masked"):
        r, _ = run(4, combine=combine, decay=0.7)
        expected = combine_maps(r.maps, r.masks, fov(), decay=0.7, combine=combine)
        np.testing.assert_array_equal(r.final_map, expected)
        assert r.params["combine"] == combine and r.params["decay"] == 0.7


# ----------------------------------------------------------------------------- combination


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


def test_refine_records_normalize_and_fov_inpainting_in_params():
    r, _ = run(2, normalize="image", inpaint_inside_fov=False)
    assert r.params["normalize"] == "image" and r.params["inpaint_inside_fov"] is False
    np.testing.assert_array_equal(
        r.final_map, combine_maps(r.maps, r.masks, fov(), normalize="image"))
    with pytest.raises(TypeError, match=r"inpaint_inside_fov to be True or False. "
                                        r"Received: inpaint_inside_fov='yes'"):
        run(2, inpaint_inside_fov="yes")


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


# ----------------------------------------------------------------------------- bad input


def test_bad_image_in_a_batch_names_its_index():
    good = lesion_image(2)
    grader = FakeGrader(True)
    with pytest.raises(ValueError, match=r"uint8 RGB image. Received: images\[1\].dtype=float32") as info:
        refine_batch([good, good.astype(np.float32), good], explain=grader.explain)
    assert isinstance(info.value, ImageError) and info.value.index == 1
    with pytest.raises(ImageError, match=r"shape of images\[0\].*Received: images\[2\].shape") as info:
        refine_batch([good, good, good[:20]], explain=grader.explain)
    assert info.value.index == 2
    with pytest.raises(ImageError, match=r"Received: images\[0\].shape=\(24, 24\)"):
        refine_batch([good[..., 0]], explain=grader.explain)
    with pytest.raises(ImageError, match=r"Received: fov_masks\[1\].shape=\(3, 3\)"):
        refine_batch([good, good], [None, np.ones((3, 3), dtype=bool)], explain=grader.explain)
    with pytest.raises(ImageError, match=r"Received: image.shape=\(24, 24, 4\)"):
        refine(np.zeros((SIZE, SIZE, 4), dtype=np.uint8), explain=grader.explain)
    assert grader.explain_calls == []  # checked before any work


def test_nan_maps_and_bad_explainer_outputs_are_clear_errors():
    images = [lesion_image(2), lesion_image(3, image_id=1)]

    def nan_explain(batch, fovs):
        maps = np.ones(batch.shape[:3], dtype=np.float32)
        maps[1, 5, 5] = np.nan
        return maps, np.full(len(batch), 3.0)

    with pytest.raises(ImageError, match=r"NaN or infinite values in the map of images\[1\]") as info:
        refine_batch(images, explain=nan_explain)
    assert info.value.index == 1
    with pytest.raises(ValueError, match=r"maps of shape \(2, 24, 24\). Received: shape=\(2, 24\)"):
        refine_batch(images, explain=lambda b, f: np.ones(b.shape[:2], dtype=np.float32))
    with pytest.raises(ValueError, match="Expected explain to return 2 predictions. Received: 3"):
        refine_batch(images, explain=lambda b, f: (np.ones(b.shape[:3]), np.ones(3)))
    with pytest.raises(ImageError, match=r"finite predictions from predict.*images\[0\]"):
        refine_batch(images, explain=lambda b, f: np.ones(b.shape[:3]),
                     predict=lambda b: np.array([np.nan, 1.0]))


@pytest.mark.parametrize("kwargs, match", [
    (dict(max_iterations=-1), "Received: max_iterations=-1"),
    (dict(max_iterations=2.5), "Received: max_iterations=2.5"),
    (dict(stop_at=float("nan")), "Received: stop_at=nan"),
    (dict(decay=-0.1), "Received: decay=-0.1"),
    (dict(combine="median"), "Received: combine='median'"),
    (dict(binarize_rule="top"), "Received: rule='top'"),
    (dict(inpaint_method="fmm"), "Received: inpaint_method='fmm'"),
    (dict(inpaint_radius=0.5), "Received: inpaint_radius=0.5"),
])
def test_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        refine(lesion_image(2), explain=FakeGrader(True).explain, **kwargs)


def test_result_type_is_a_plain_dataclass():
    r, _ = run(2)
    assert isinstance(r, RefineResult)
    np.testing.assert_array_equal(r.masks[0], binarize(r.maps[0], fov(), rule="fraction_of_max",
                                                       level=1.0, dilation=0))
