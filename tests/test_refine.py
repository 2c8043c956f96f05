"""Tests of dr_saliency.refinement.loop with fake explainers and predictors (no network).

The fake "grader" sees dark 2x2 spots (lesions) on a bright background: its prediction is the
number of lesions left, and its saliency map is the darkness of the lesion pixels. Lesions have
different darknesses, so binarising with ``fraction_of_max`` at level 1 picks exactly the darkest
lesion, and each iteration inpaints one lesion: an image with L lesions has p_i = L - i.
"""


import numpy as np
import pytest

from dr_saliency.core.checks import ImageError
from dr_saliency.core.maps import Combination, combine_maps
from dr_saliency.refinement.erase import Eraser, binarize
from dr_saliency.refinement.loop import RefineConfig, refine, refine_batch, run_params
from dr_saliency.refinement.result import STOP_REASONS, RefineResult

SIZE = 24
BACKGROUND = 200
#: Top-left corners of up to 5 lesions, far enough apart not to touch after inpainting.
SPOTS = [(3, 3), (3, 15), (11, 9), (18, 3), (18, 17)]
#: One lesion per iteration, no dilation, so that counts are exact.
ONE_LESION = Eraser(rule="fraction_of_max", level=1.0, dilation=0)


def settings(erase=ONE_LESION, **options):
    """config and erase for refine(): ``options`` under the names a result file stores."""
    params = {**run_params(erase=erase), **options}
    if "binarize_rule" in options and "binarize_level" not in options:
        params["binarize_level"] = None  # the new rule's own default
    return dict(config=RefineConfig.from_params(params), erase=Eraser.from_params(params))


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


def run(n_lesions, explain_predicts=True, keep_images=False, **kwargs):
    grader = FakeGrader(explain_predicts, kwargs.pop("constant_prediction", None))
    result = refine(lesion_image(n_lesions), explain=grader.explain, predict=grader.predict,
                    fov_mask=fov(), keep_images=keep_images, **settings(**kwargs))
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
    r = refine(lesion_image(5), explain=grader.explain, fov_mask=fov(),
               **settings(max_iterations=2))
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
                           erase=ONE_LESION)
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
    single = refine(lesion_image(3), explain=grader.explain, fov_mask=fov(), erase=ONE_LESION)
    batch = refine_batch([lesion_image(3)], [fov()], explain=grader.explain, erase=ONE_LESION)[0]
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
    r = refine(lesion_image(0), explain=explain, fov_mask=field,
               config=RefineConfig(max_iterations=2), erase=Eraser(level=0.05))
    assert r.stop_reason == "max_iterations"
    assert not r.maps[:, ~field].any() and r.maps[:, field].all()
    assert not r.masks[:, ~field].any() and r.masks.any()
    assert not r.final_map[~field].any()


def test_final_map_is_combine_maps_of_the_result():
    for combine in ("mean", "max", "masked"):
        r, _ = run(4, combine=combine, decay=0.7)
        expected = combine_maps(r.maps, r.masks, fov(), decay=0.7, combine=combine,
                                normalize="none")
        np.testing.assert_array_equal(r.final_map, expected)
        assert r.params["combine"] == combine and r.params["decay"] == 0.7


# ----------------------------------------------------------------------------- combination


def test_refine_records_normalize_and_fov_inpainting_in_params():
    r, _ = run(2, normalize="image", inpaint_inside_fov=False)
    assert r.params["normalize"] == "image" and r.params["inpaint_inside_fov"] is False
    np.testing.assert_array_equal(
        r.final_map, combine_maps(r.maps, r.masks, fov(), normalize="image"))
    with pytest.raises(TypeError, match=r"inside_fov to be True or False. "
                                        r"Received: inside_fov='yes'"):
        run(2, inpaint_inside_fov="yes")


# ----------------------------------------------------------------------------- bad input


def test_bad_image_in_a_batch_names_its_index():
    good = lesion_image(2)
    grader = FakeGrader(True)
    with pytest.raises(ValueError, match=r"uint8 RGB image. Received: images\[1\].shape=\(24, 24, 3\), "
                                         r"images\[1\].dtype=float32") as info:
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


@pytest.mark.parametrize("make, match", [
    (lambda: RefineConfig(max_iterations=-1), "Received: max_iterations=-1"),
    (lambda: RefineConfig(max_iterations=2.5), "Received: max_iterations=2.5"),
    (lambda: RefineConfig(stop_at=float("nan")), "grade 0-3 .*Received: stop_at=nan"),
    (lambda: RefineConfig(stop_at=1.5), "grade 0-3 .*Received: stop_at=1.5"),
    (lambda: RefineConfig(stop_at=float("nan"), stop_on="prediction"), "Received: stop_at=nan"),
    (lambda: RefineConfig(stop_on="p"), "Received: stop_on='p'"),
    (lambda: Combination(decay=-0.1), "Received: decay=-0.1"),
    (lambda: Combination(combine="median"), "Received: combine='median'"),
    (lambda: Eraser(rule="top"), "Received: rule='top'"),
    (lambda: Eraser(method="fmm"), "Received: method='fmm'"),
    (lambda: Eraser(radius=0.5), "Received: radius=0.5"),
])
def test_bad_settings_fail_when_made(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_settings_are_objects_and_round_trip_through_params():
    grader = FakeGrader(True)
    with pytest.raises(TypeError, match=r"Expected a RefineConfig or None. Received: config=\{"):
        refine(lesion_image(2), explain=grader.explain, config={"max_iterations": 2})
    with pytest.raises(TypeError, match=r"an Eraser or a callable with a to_params\(\) method"):
        refine(lesion_image(2), explain=grader.explain, erase=lambda i, s, f: (s > 0, i))
    r, _ = run(3, max_iterations=2, decay=0.5)
    assert RefineConfig.from_params(r.params) == RefineConfig(
        max_iterations=2, combination=Combination(decay=0.5))
    assert Eraser.from_params(r.params) == ONE_LESION
    assert r.params == run_params(RefineConfig(max_iterations=2,
                                               combination=Combination(decay=0.5)), ONE_LESION)


def test_a_custom_erase_step_replaces_binarise_and_inpaint():
    class PaintWhite:
        """Erases every pixel above half the map's maximum by painting it white."""

        def __call__(self, image, saliency_map, fov):
            mask = saliency_map > 0.5 * saliency_map.max()
            if not mask.any():
                return mask, None
            out = image.copy()
            out[mask] = 255
            return mask, out

        def to_params(self):
            return {"erase": "paint_white"}

    r = refine(lesion_image(3), explain=FakeGrader(True).explain, fov_mask=fov(),
               erase=PaintWhite())
    # Every dark lesion is above half the maximum darkness: one erasure removes all three.
    assert r.stop_reason == "normal" and r.iterations == 1
    np.testing.assert_array_equal(r.predictions, [3, 0])
    assert r.params["erase"] == "paint_white" and "binarize_rule" not in r.params
    with pytest.raises(ValueError, match=r"erase to return a bool mask of shape \(24, 24\)"):
        refine(lesion_image(3), explain=FakeGrader(True).explain,
               erase=type("Bad", (PaintWhite,), {"__call__": lambda self, i, s, f: (s, i)})())
    with pytest.raises(ValueError, match=r"erase to return a uint8 image of shape \(24, 24, 3\) "
                                         r"or None. Received: ndarray \(24, 24\)"):
        refine(lesion_image(3), explain=FakeGrader(True).explain,
               erase=type("Bad", (PaintWhite,), {"__call__": lambda self, i, s, f: (s > 0, i[..., 0])})())


def test_result_type_is_a_plain_dataclass():
    r, _ = run(2)
    assert isinstance(r, RefineResult)
    np.testing.assert_array_equal(r.masks[0], binarize(r.maps[0], fov(), rule="fraction_of_max",
                                                       level=1.0, dilation=0))


def test_the_loop_stops_once_the_image_is_graded_non_referable():
    # One rule (core/grades.py): a prediction is referable when it rounds to stage 2 or more,
    # p >= 1.5; the loop stops at the first image graded 1 or lower.
    config = RefineConfig()
    np.testing.assert_array_equal(config.stops([0.2, 1.0, 1.49, 1.5, 2.4]),
                                  [True, True, True, False, False])
    assert run(1, constant_prediction=1.4)[0].stop_reason == "not_referable"
    assert run(1, constant_prediction=1.6)[0].stop_reason != "not_referable"


def test_files_made_before_the_grade_rule_are_read_with_their_own():
    old = {**RefineConfig().to_params(), "stop_at": 1.0}
    del old["stop_on"]
    config = RefineConfig.from_params(old)
    assert config.stop_on == "prediction" and config.stop_at == 1.0
    np.testing.assert_array_equal(config.stops([1.0, 1.2]), [True, False])
    assert RefineConfig.from_params(RefineConfig().to_params()) == RefineConfig()
