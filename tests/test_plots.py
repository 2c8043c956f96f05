"""Figure functions: structure, plotted data against the numbers they stand for, errors, saving."""

import subprocess
import sys

import numpy as np
import pytest
from matplotlib.collections import PolyCollection
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from scipy import ndimage

from dr_saliency.figures import plots
from dr_saliency.lesions.froc import DEFAULT_RATES, bootstrap, froc
from dr_saliency.refinement.loop import RefineResult, refine

SIZE = 64


# ----------------------------------------------------------------------------- inputs


def _lesions_and_candidates(seed, n_images=4, size=SIZE):
    """Square lesions, candidates on some of them plus false positives, scores mixed."""
    rng = np.random.default_rng(seed)
    lesions, candidates = [], []
    for _ in range(n_images):
        mask = np.zeros((size, size), bool)
        cands = []
        for r0, c0 in ((8, 8), (8, 40), (40, 8), (40, 40)):
            mask[r0:r0 + 5, c0:c0 + 5] = True
            if rng.random() < 0.7:
                cands.append((r0 + 2, c0 + 2, rng.uniform(0.3, 1.0)))
        for _ in range(rng.integers(3, 12)):
            cands.append((rng.integers(20, 36), rng.integers(0, size), rng.uniform(0.0, 0.9)))
        lesions.append(mask)
        candidates.append(np.array(cands, float))
    return candidates, lesions


@pytest.fixture(scope="module")
def froc_pair():
    """(FROCResult, BootstrapResult with curve rates) of s_0 and S on the same images."""
    out = {}
    for label, seed in (("s_0", 0), ("S", 1)):
        cands, lesions = _lesions_and_candidates(seed)
        out[label] = (froc(cands, lesions),
                      bootstrap(cands, lesions, n_boot=50, curve_rates=np.geomspace(0.1, 10, 12)))
    return out


@pytest.fixture()
def empty_curve():
    return froc([np.zeros((0, 3))], [np.zeros((SIZE, SIZE), bool)])


def _image(seed=0, size=SIZE):
    rng = np.random.default_rng(seed)
    return rng.integers(40, 200, size=(size, size, 3), dtype=np.uint8)


def _blob(center, size=SIZE, sigma=3.0):
    rows, cols = np.mgrid[:size, :size]
    return np.exp(-((rows - center[0]) ** 2 + (cols - center[1]) ** 2) / (2 * sigma ** 2)).astype(np.float32)


def _result(k, keep_images=True, size=SIZE):
    """A RefineResult with k maps, k inpaintings (stop "normal") and predictions 3, 2.5, ..."""
    maps = np.stack([_blob((10 + 5 * i, 20), size) for i in range(k)])
    masks = maps > 0.5
    predictions = np.linspace(3.0, 0.5, k + 1).astype(np.float32)
    images = np.stack([_image(i, size) for i in range(k + 1)]) if keep_images else None
    return RefineResult(maps=maps, masks=masks, predictions=predictions, images=images,
                        final_map=maps.max(axis=0), stop_reason="normal", iterations=k, params={})


def _image_axes(fig):
    """Axes that show an image (not colour bars)."""
    return [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]


def _titles(fig):
    return [ax.get_title() for ax in fig.axes]


# ----------------------------------------------------------------------------- froc_figure


def test_froc_figure_curves_are_sensitivity_at_their_x(froc_pair):
    fig = plots.froc_figure({"stage 3": froc_pair}, max_fp=10)
    assert isinstance(fig, Figure)
    (ax,) = fig.axes
    handles, labels = ax.get_legend_handles_labels()
    assert len(handles) == 2
    for (label, (result, _)), line, text in zip(froc_pair.items(), handles, labels):
        x, y = line.get_data()
        assert x.min() <= 1 / 8 and x.max() == pytest.approx(10)
        np.testing.assert_allclose(y, result.sensitivity_at(x), rtol=0, atol=1e-12)
        # The curve passes through every operating point in range (its knots are plotted).
        knots = result.fps_per_image[(result.fps_per_image > x.min()) & (result.fps_per_image < 10)]
        assert np.isin(knots, x).all()
        assert text.startswith(label)
        assert f"score {result.score():.2f}" in text
        assert f"AS10 {result.average_sensitivity(10):.2f}" in text
    assert ax.get_xscale() == "log"
    assert ax.get_xlim()[0] < 1 / 8 and ax.get_xlim()[1] >= 10
    assert ax.get_ylim()[0] == 0 and ax.get_ylim()[1] >= 1


def test_froc_figure_marks_the_seven_rates(froc_pair):
    fig = plots.froc_figure({"p": froc_pair})
    ax = fig.axes[0]
    assert plots.FROC_RATES == DEFAULT_RATES
    marked = [line for line in ax.get_lines() if line.get_linestyle() == "None"]
    assert len(marked) == 2
    for line, (result, _) in zip(marked, froc_pair.values()):
        x, y = line.get_data()
        np.testing.assert_allclose(x, DEFAULT_RATES)
        np.testing.assert_allclose(y, result.sensitivity_at(DEFAULT_RATES))


def test_froc_figure_styles_differ_and_use_okabe_ito(froc_pair):
    ax = plots.froc_figure({"p": froc_pair}).axes[0]
    lines, _ = ax.get_legend_handles_labels()
    assert [line.get_color() for line in lines] == list(plots.OKABE_ITO[:2])
    assert lines[0].get_linestyle() != lines[1].get_linestyle()


def test_froc_figure_bands_only_with_bootstrap_curves(froc_pair):
    ax = plots.froc_figure({"p": froc_pair}).axes[0]
    bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(bands) == 2
    bare = {label: (result, None) for label, (result, _) in froc_pair.items()}
    ax = plots.froc_figure({"p": bare}).axes[0]
    assert not [c for c in ax.collections if isinstance(c, PolyCollection)]


def test_froc_figure_key_explains_score_and_band(froc_pair):
    def key(fig):
        (legend,) = fig.legends
        return [t.get_text() for t in legend.get_texts()]

    texts = key(plots.froc_figure({"p": froc_pair}, max_fp=10))
    assert texts[0] == "marked: the 7 rates of the score, 1/8 to 8 FP/image"
    assert texts[1] == ("score: mean sensitivity at those 7 rates; AS10: average sensitivity "
                        "from 1/8 to 10 FP/image")
    assert texts[2] == "shaded: pointwise 95% bootstrap band (images resampled)"
    bare = {label: (result, None) for label, (result, _) in froc_pair.items()}
    texts = key(plots.froc_figure({"p": bare}, max_fp=4))
    assert len(texts) == 2 and "AS4: average sensitivity from 1/8 to 4 FP/image" in texts[1]
    # A bare FROCResult is taken as (result, None).
    bare = {label: result for label, (result, _) in froc_pair.items()}
    assert len(plots.froc_figure({"p": bare}).axes[0].get_legend_handles_labels()[0]) == 2


def test_froc_figure_band_follows_bootstrap_interval(froc_pair):
    result, boot = froc_pair["S"]
    ax = plots.froc_figure({"p": {"S": (result, boot)}}).axes[0]
    (band,) = [c for c in ax.collections if isinstance(c, PolyCollection)]
    vertices = band.get_paths()[0].vertices
    keep = (boot.curve_rates >= 0.1) & (boot.curve_rates <= 10)
    # fill_between's polygon runs along the lower edge and back along the upper one.
    for x, low, high in zip(boot.curve_rates[keep], boot.curve_low[keep], boot.curve_high[keep]):
        ys = vertices[np.isclose(vertices[:, 0], x), 1]
        assert np.isclose(ys, low).any() and np.isclose(ys, high).any()


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6])
def test_froc_figure_one_axes_per_panel(froc_pair, n):
    fig = plots.froc_figure({f"stage {i}": froc_pair for i in range(n)})
    assert len(fig.axes) == n
    assert [ax.get_title().split("\n")[0] for ax in fig.axes] == [f"stage {i}" for i in range(n)]
    # Every column keeps x tick labels on its lowest panel (with 5 panels in 2x3: the top right).
    labelled = [ax for ax in fig.axes if ax.xaxis.get_tick_params()["labelbottom"]]
    assert len(labelled) == min(n, {1: 1, 2: 2, 3: 3, 4: 2, 5: 3, 6: 3}[n])


def test_froc_figure_panel_without_lesions(froc_pair, empty_curve):
    fig = plots.froc_figure({"stage 2": froc_pair,
                             "SE": {"s_0": (empty_curve, None), "S": (empty_curve, None)},
                             "mixed": {"s_0": froc_pair["s_0"], "S": (empty_curve, None)}})
    ax_ok, ax_empty, ax_mixed = fig.axes
    assert "no lesions" in [t.get_text() for t in ax_empty.texts]
    assert ax_empty.get_legend() is None
    assert "0 lesions" in ax_empty.get_title()
    labels = [t.get_text() for t in ax_mixed.get_legend().get_texts()]
    assert labels[1] == "S  no lesions" and "score" in labels[0]
    assert "no lesions" not in [t.get_text() for t in ax_ok.texts]


def test_froc_figure_title_and_max_fp(froc_pair):
    fig = plots.froc_figure({"p": froc_pair}, max_fp=4, title="FROC")
    assert fig.get_suptitle() == "FROC"
    ax = fig.axes[0]
    line = ax.get_legend_handles_labels()[0][0]
    assert line.get_data()[0].max() == pytest.approx(4)
    assert "AS4 " in ax.get_legend_handles_labels()[1][0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1/8", "1/4", "1/2", "1", "2", "4"]


@pytest.mark.parametrize("panels, match", [
    ({}, r"Expected 1 to 6 panels\. Received: len\(panels\)=0"),
    ({str(i): {"a": None} for i in range(7)}, r"Expected 1 to 6 panels\. Received: len\(panels\)=7"),
    ({"p": {}}, r"Expected panels\['p'\] to be a non-empty dict .* Received: \{\}"),
])
def test_froc_figure_bad_panels(panels, match):
    with pytest.raises(ValueError, match=match):
        plots.froc_figure(panels)


def test_froc_figure_bad_types(froc_pair):
    with pytest.raises(TypeError, match=r"Expected panels as a dict .* Received: panels of type list"):
        plots.froc_figure([froc_pair])
    with pytest.raises(TypeError, match=r"Expected panels\['p'\]\['S'\] to be a \(FROCResult, "
                                        r"BootstrapResult or None\) pair\. Received: 0\.5"):
        plots.froc_figure({"p": {"S": 0.5}})


@pytest.mark.parametrize("max_fp", [0.1, 0, -1, float("inf"), "10", True])
def test_froc_figure_bad_max_fp(froc_pair, max_fp):
    with pytest.raises(ValueError, match=r"Expected a finite max_fp > 1/8 .* Received: max_fp="):
        plots.froc_figure({"p": froc_pair}, max_fp=max_fp)


# ----------------------------------------------------------------------------- overlay_panel


def test_overlay_panel_shape_dtype_and_blend():
    image = _image()
    smap = np.zeros((SIZE, SIZE), np.float32)
    smap[20, 30] = 5.0
    out = plots.overlay_panel(image, smap, alpha=0.5, desaturate=0, brightness=1)
    assert out.shape == (SIZE, SIZE, 3) and out.dtype == np.uint8
    # Where the map is 0 the image shows unchanged; at the map's maximum (scaled to 1) the colour
    # map's top colour is blended at opacity alpha.
    zero = np.ones((SIZE, SIZE), bool)
    zero[20, 30] = False
    np.testing.assert_array_equal(out[zero], image[zero])
    import matplotlib

    top = np.array(matplotlib.colormaps[plots.SALIENCY_CMAP](1.0)[:3])
    expected = np.rint((0.5 * image[20, 30] / 255 + 0.5 * top) * 255)
    np.testing.assert_allclose(out[20, 30], expected, atol=1)


def test_overlay_panel_dims_and_greys_the_image():
    image = _image()
    out = plots.overlay_panel(image, np.zeros((SIZE, SIZE)), desaturate=1, brightness=0.5)
    grey = (image.astype(float) / 255) @ [0.299, 0.587, 0.114] * 0.5 * 255
    np.testing.assert_allclose(out[..., 0], grey, atol=1)
    assert np.all(out[..., 0] == out[..., 1]) and np.all(out[..., 1] == out[..., 2])


def test_overlay_panel_map_is_zero_outside_fov():
    image = _image()
    fov = np.zeros((SIZE, SIZE), bool)
    fov[:, :32] = True
    out = plots.overlay_panel(image, np.ones((SIZE, SIZE)), fov=fov, desaturate=0, brightness=1)
    np.testing.assert_array_equal(out[:, 32:], image[:, 32:])
    assert not np.array_equal(out[:, :32], image[:, :32])


def test_overlay_panel_outlines_the_lesion_boundary():
    image = _image()
    smap = _blob((32, 32))
    lesion = np.zeros((SIZE, SIZE), bool)
    lesion[28:36, 28:36] = True
    plain = plots.overlay_panel(image, smap)
    out = plots.overlay_panel(image, smap, lesions=lesion, outline_width=1)
    colour = np.rint(np.array(to_rgb(plots.LESION_COLOUR)) * 255).astype(np.uint8)
    ring = np.zeros((SIZE, SIZE), bool)
    ring[27:37, 27:37] = True
    ring &= ~lesion
    assert np.all(out[ring] == colour)
    # Inside the lesion and away from it nothing changes: the lesion stays visible.
    np.testing.assert_array_equal(out[~ring], plain[~ring])
    # A dict of masks: each type outlined in its own colour; a wider outline reaches further.
    other = np.zeros((SIZE, SIZE), bool)
    other[5:9, 5:9] = True
    both = plots.overlay_panel(image, smap, lesions={"HE": lesion, "EX": other}, outline_width=1)
    for kind, mask in (("HE", lesion), ("EX", other)):
        grown = ndimage.binary_dilation(mask, np.ones((3, 3), bool)) & ~mask
        hue = np.rint(np.array(to_rgb(plots.LESION_COLOURS[kind])) * 255).astype(np.uint8)
        assert np.all(both[grown] == hue)
    assert plots.LESION_COLOURS["HE"] != plots.LESION_COLOURS["EX"]
    wide = plots.overlay_panel(image, smap, lesions=lesion, outline_width=2)
    assert np.all(wide[26, 26:38] == colour)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(image=np.zeros((SIZE, SIZE, 3), np.float32)), ValueError,
     r"Expected a non-empty \(H, W, 3\) uint8 RGB image\. "
     r"Received: image\.shape=\(64, 64, 3\), image\.dtype=float32"),
    (dict(image=np.zeros((SIZE, SIZE), np.uint8)), ValueError,
     r"uint8 RGB image\. Received: image\.shape=\(64, 64\)"),
    (dict(saliency_map=np.zeros((32, 32))), ValueError,
     r"Expected a saliency map of the image's shape \(64, 64\)\. Received: saliency_map\.shape=\(32, 32\)"),
    (dict(saliency_map=np.full((SIZE, SIZE), np.nan)), ValueError,
     r"Expected a finite saliency map\. Received:"),
    (dict(fov=np.ones((SIZE, SIZE), np.uint8)), TypeError,
     r"Expected a bool field-of-view mask of shape \(64, 64\)\. Received: fov\.dtype=uint8"),
    (dict(lesions=np.ones((SIZE, 3), bool)), ValueError,
     r"Expected a bool lesion mask of shape \(64, 64\) .* Received: lesions\.shape=\(64, 3\)"),
    (dict(lesions={"MA": np.ones((SIZE, SIZE), np.uint8)}), ValueError,
     r"Received: lesions\['MA'\]\.shape=\(64, 64\), lesions\['MA'\]\.dtype=uint8"),
    (dict(alpha=1.5), ValueError, r"Expected alpha in \[0, 1\]\. Received: alpha=1\.5"),
    (dict(gamma=0), ValueError, r"Expected a finite gamma > 0\. Received: gamma=0"),
    (dict(outline_width=0), ValueError,
     r"Expected an integer outline_width >= 1\. Received: outline_width=0"),
])
def test_overlay_panel_bad_input(kwargs, error, match):
    args = dict(image=_image(), saliency_map=np.zeros((SIZE, SIZE)))
    args.update(kwargs)
    with pytest.raises(error, match=match):
        plots.overlay_panel(args.pop("image"), args.pop("saliency_map"), **args)


# ----------------------------------------------------------------------------- heatmap_panels


def _row(seed, label="synth_00012, stage 3, 3.1 -> 0.9"):
    lesion = np.zeros((SIZE, SIZE), bool)
    lesion[10:14, 10:14] = True
    return dict(image=_image(seed), fov=np.ones((SIZE, SIZE), bool), lesions=lesion,
                s0=_blob((12, 12)), S=_blob((12, 12)) + _blob((40, 40)), label=label)


def test_heatmap_panels_layout():
    fig = plots.heatmap_panels([_row(0), _row(1, label=None)])
    images = _image_axes(fig)
    assert len(images) == 6 and len(fig.axes) == 7  # one colour bar for the figure
    assert [ax.get_title() for ax in images[:3]] == ["Image", "$s_0$", "$S$"]
    assert images[0].get_ylabel() == "synth_00012, stage 3, 3.1 -> 0.9"
    assert images[3].get_ylabel() == ""
    for ax in images:
        assert not ax.get_xticks().size and not ax.get_yticks().size
    # Column (a) is the image with the lesion outlined, (b) and (c) the overlays.
    shown = images[0].get_images()[0].get_array()
    colour = np.rint(np.array(to_rgb(plots.LESION_COLOUR)) * 255)
    np.testing.assert_array_equal(shown[9, 9], colour)
    np.testing.assert_array_equal(shown[30, 30], _row(0)["image"][30, 30])
    row = _row(0)
    np.testing.assert_array_equal(images[1].get_images()[0].get_array(),
                                  plots.overlay_panel(row["image"], row["s0"], fov=row["fov"]))


def test_heatmap_panels_options():
    fig = plots.heatmap_panels([{k: v for k, v in _row(0).items() if k in ("image", "s0", "S")}],
                               titles=("a", "b", "c"), outline_maps=True)
    assert [ax.get_title() for ax in _image_axes(fig)] == ["a", "b", "c"]
    row = _row(0)
    fig = plots.heatmap_panels([row], outline_maps=True)
    shown = _image_axes(fig)[2].get_images()[0].get_array()
    np.testing.assert_array_equal(shown, plots.overlay_panel(row["image"], row["S"], fov=row["fov"],
                                                             lesions=row["lesions"]))


@pytest.mark.parametrize("rows, kwargs, match", [
    ([], {}, r"Expected a non-empty list of row dicts\. Received: rows=\[\]"),
    ({"image": 1}, {}, r"Expected a non-empty list of row dicts\. Received:"),
    ([{"image": _image(), "s0": np.zeros((SIZE, SIZE))}], {},
     r"Expected rows\[0\] to be a dict with keys \('image', 's0', 'S'\) .* "
     r"Received: rows\[0\] keys=\['image', 's0'\]"),
    ([_row(0)], {"titles": ("a", "b")}, r"Expected three titles\. Received: titles=\('a', 'b'\)"),
])
def test_heatmap_panels_bad_input(rows, kwargs, match):
    with pytest.raises(ValueError, match=match):
        plots.heatmap_panels(rows, **kwargs)


def test_heatmap_panels_bad_image():
    row = _row(0)
    row["image"] = row["image"][..., 0]
    match = r"uint8 RGB image\. Received: rows\[0\]\['image'\]\.shape=\(64, 64\)"
    with pytest.raises(ValueError, match=match):
        plots.heatmap_panels([row])


# ----------------------------------------------------------------------------- iteration_strip


def _map_titles(fig, n_columns):
    return [ax.get_title() for ax in _image_axes(fig)[:n_columns]]


def test_iteration_strip_columns_and_titles():
    result = _result(3)
    fig = plots.iteration_strip(result)
    # 3 rows (I_i, s_i, mask_i) x (3 maps + the final column), plus one colour bar.
    assert len(_image_axes(fig)) == 12 and len(fig.axes) == 13
    titles = _map_titles(fig, 4)
    assert titles[:3] == ["i=0  p=3.00", "i=1  p=2.17", "i=2  p=1.33"]
    assert titles[3] == "end: n=3  p=0.50\nnormal"
    axes = np.array(_image_axes(fig)).reshape(3, 4)
    assert [ax.get_ylabel() for ax in axes[:, 0]] == ["$I_i$", "$s_i$", "mask$_i$"]
    # Row 0 column i shows I_i, row 1 the overlay of s_i on I_i; the final column I_n and S on I_0.
    np.testing.assert_array_equal(axes[0, 1].get_images()[0].get_array(), result.images[1])
    np.testing.assert_array_equal(axes[1, 2].get_images()[0].get_array(),
                                  plots.overlay_panel(result.images[2], result.maps[2]))
    np.testing.assert_array_equal(axes[0, 3].get_images()[0].get_array(), result.images[3])
    np.testing.assert_array_equal(axes[1, 3].get_images()[0].get_array(),
                                  plots.overlay_panel(result.images[0], result.final_map))
    # The mask row colours exactly the mask (fill plus a 1 px outline around it).
    mask_cell = axes[2, 0].get_images()[0].get_array()
    changed = np.any(mask_cell != result.images[0], axis=-1)
    assert changed[result.masks[0]].all()
    assert not changed[~_grow(result.masks[0])].any()


def _grow(mask):
    from scipy import ndimage

    return ndimage.binary_dilation(mask, structure=np.ones((3, 3), bool))


def test_iteration_strip_single_map():
    fov = np.ones((SIZE, SIZE), bool)
    result = refine(_image(), explain=lambda im, f: np.stack([_blob((20, 20))] * len(im)),
                    predict=lambda im: np.full(len(im), 0.4), fov_mask=fov, keep_images=True)
    assert result.stop_reason == "not_referable" and result.maps.shape[0] == 1
    fig = plots.iteration_strip(result, fov=fov)
    assert len(_image_axes(fig)) == 6
    assert _map_titles(fig, 2) == ["i=0  p=0.40", "end: n=0  p=0.40\nnot_referable"]
    fig = plots.iteration_strip(result, show_final=False)
    assert len(_image_axes(fig)) == 3


def test_iteration_strip_from_refine_with_fakes():
    image = _image()
    predictions = iter([3.0, 2.0, 1.6, 0.8])
    result = refine(image, explain=lambda im, f: np.stack([_blob((20, 20 + 8 * i)) for i in range(len(im))]),
                    predict=lambda im: np.array([next(predictions) for _ in im]), keep_images=True)
    assert result.stop_reason == "normal" and result.iterations == 3
    fig = plots.iteration_strip(result, lesions=np.zeros((SIZE, SIZE), bool))
    assert _map_titles(fig, 4) == ["i=0  p=3.00", "i=1  p=2.00", "i=2  p=1.60",
                                   "end: n=3  p=0.80\nnormal"]


def test_iteration_strip_more_maps_than_columns():
    fig = plots.iteration_strip(_result(9), max_columns=4)
    assert len(_image_axes(fig)) == 3 * 5
    assert [t.split("  ")[0] for t in _map_titles(fig, 4)] == ["i=0", "i=1", "i=2", "... i=8"]


def test_iteration_strip_without_kept_images():
    result = _result(3, keep_images=False)
    image = _image(0)
    fig = plots.iteration_strip(result, image)
    axes = np.array(_image_axes(fig)).reshape(3, 4)
    # Only I_0 is known: the other image cells are empty, the maps plain heat maps, the masks on I_0.
    np.testing.assert_array_equal(axes[0, 0].get_images()[0].get_array(), image)
    assert all(not ax.get_images() for ax in axes[0, 1:])
    assert "images not kept" in [t.get_text() for t in axes[0, 1].texts]
    heat = axes[1, 0].get_images()[0].get_array()
    assert heat.shape == (SIZE, SIZE, 3) and heat[0, 0].tolist() != image[0, 0].tolist()
    assert len(axes[2, 1].get_images()) == 1
    # Without any image: two rows.
    fig = plots.iteration_strip(result)
    assert len(_image_axes(fig)) == 2 * 4
    assert [ax.get_ylabel() for ax in np.array(_image_axes(fig)).reshape(2, 4)[:, 0]] == ["$s_i$", "mask$_i$"]


@pytest.mark.parametrize("change, kwargs, match", [
    (dict(maps=np.zeros((0, SIZE, SIZE), np.float32)), {},
     r"Expected a RefineResult with maps of shape \(k, H, W\), k >= 1\. "
     r"Received: result\.maps\.shape=\(0, 64, 64\)"),
    (dict(masks=np.zeros((3, SIZE, SIZE), np.uint8)), {},
     r"Expected bool result\.masks of shape \(3, 64, 64\)\. Received:"),
    (dict(predictions=np.zeros(1, np.float32)), {},
     r"Expected at least 2 predictions for 3 maps\. Received:"),
    (dict(images=np.zeros((4, 32, 32, 3), np.uint8)), {},
     r"Expected result\.images of shape \(n \+ 1, 64, 64, 3\) uint8\. Received:"),
    ({}, dict(max_columns=1), r"Expected an integer max_columns >= 2\. Received: max_columns=1"),
    (dict(images=None), dict(image=np.zeros((32, 32, 3), np.uint8)),
     r"Expected an image of the maps' shape \(64, 64\)\. Received: image\.shape=\(32, 32, 3\)"),
])
def test_iteration_strip_bad_input(change, kwargs, match):
    import dataclasses

    result = dataclasses.replace(_result(3), **change)
    with pytest.raises(ValueError, match=match):
        plots.iteration_strip(result, **kwargs)


# ----------------------------------------------------------------------------- the older figures


def test_training_curves_shows_negative_kappa():
    log = {"epoch": [0, 1, 2], "loss": [2, 1, 0.5], "val_kappa": [-0.3, 0.2, 0.6], "val_auc": [0.5, 0.7, 0.9]}
    ax_score = plots.training_curves(log).axes[1]
    assert ax_score.get_ylim()[0] < -0.3 and ax_score.get_ylim()[1] == 1
    log["val_kappa"] = [0.1, float("nan"), 0.6]
    assert plots.training_curves(log).axes[1].get_ylim() == (0, 1)


# ----------------------------------------------------------------------------- saving, no pyplot


def _all_figures(froc_pair, empty_curve):
    yield plots.froc_figure({"a": froc_pair, "b": {"s_0": (empty_curve, None)}})
    yield plots.heatmap_panels([_row(0)])
    yield plots.iteration_strip(_result(2))
    yield plots.training_curves({"loss": [1, 0.5], "val_kappa": [-0.1, 0.4], "lr": [0.1, 0.1]})


def test_figures_save_as_png_and_pdf(tmp_path, froc_pair, empty_curve):
    for i, fig in enumerate(_all_figures(froc_pair, empty_curve)):
        for ext, magic in (("png", b"\x89PNG"), ("pdf", b"%PDF")):
            path = tmp_path / f"fig{i}.{ext}"
            fig.savefig(path, dpi=50)
            assert path.read_bytes()[:4] == magic


def test_no_pyplot():
    code = ("import sys, numpy as np; from dr_saliency.figures import plots; "
            "fig = plots.heatmap_panels([dict(image=np.zeros((64, 64, 3), np.uint8), "
            "s0=np.ones((64, 64)), S=np.ones((64, 64)))]); "
            "import io; fig.savefig(io.BytesIO(), format='png'); fig.savefig(io.BytesIO(), format='pdf'); "
            "print('matplotlib.pyplot' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("n", [1, 3, 4, 5])
def test_froc_figure_legends_sit_under_their_panels_inside_the_figure(froc_pair, n):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = plots.froc_figure({f"stage {i}": froc_pair for i in range(n)}, title="FROC")
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    page = fig.bbox
    for ax in fig.axes:
        legend = ax.get_legend().get_window_extent(renderer)
        # Below the panel and its x tick labels (display y grows upwards): not over the data or
        # the top y tick ("1.0").
        assert legend.y1 <= ax.get_window_extent(renderer).y0
        labels = ax.xaxis.get_tightbbox(renderer)  # None on a panel without x tick labels
        assert labels is None or legend.y1 <= labels.y0 + 1
        assert page.x0 <= legend.x0 and legend.x1 <= page.x1 and page.y0 <= legend.y0


def test_candidate_numbers_do_not_overlap():
    """Five candidates in a clump: every number is drawn, none over another (leader lines)."""
    row = _row(0)
    points = np.array([[30, 30], [31, 33], [33, 30], [29, 28], [32, 35]], float)
    fig = plots.heatmap_panels([{**row, "points": points}], panel_size=2)
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    numbers = [t for t in _image_axes(fig)[2].texts if t.get_text().isdigit()]
    assert sorted(t.get_text() for t in numbers) == ["1", "2", "3", "4", "5"]
    boxes = [t.get_window_extent(renderer) for t in numbers]
    for i, a in enumerate(boxes):
        assert not any(a.overlaps(b) for b in boxes[i + 1:])
    # One legend names the outlines and the candidate marker; the colour bar names the scale.
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert any(label.startswith("ground truth") for label in labels)
    assert any("candidate" in label for label in labels)
    assert "s_0" in fig.axes[-1].get_ylabel()


def test_maps_are_drawn_on_the_scale_of_s0():
    """A late map ten times weaker than s_0 looks weaker, not as strong (issue 21)."""
    row = _row(0)
    fig = plots.heatmap_panels([{**row, "S": row["s0"] * 0.1}])
    s0, weak = (ax.get_images()[0].get_array() for ax in _image_axes(fig)[1:])
    blank = plots.overlay_panel(row["image"], np.zeros((SIZE, SIZE))).astype(int)
    assert np.abs(weak.astype(int) - blank).sum() < 0.5 * np.abs(s0.astype(int) - blank).sum()
    own = plots.heatmap_panels([{**row, "S": row["s0"] * 0.1}], scale="own")
    s0_own, weak_own = (ax.get_images()[0].get_array() for ax in _image_axes(own)[1:])
    np.testing.assert_array_equal(s0_own, weak_own)
    assert "own" in own.axes[-1].get_ylabel()
