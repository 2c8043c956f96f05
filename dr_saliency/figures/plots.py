"""Figures. Each function takes data and returns a matplotlib Figure; none calls plt.show().

Figures are built on ``matplotlib.figure.Figure`` directly (no pyplot state), so they work on
headless servers and never accumulate open windows; save them with ``fig.savefig(path)`` (PNG, PDF,
SVG: text stays text, only images are rasters).
Colours: the Okabe-Ito colour-blind-safe palette for lines, perceptually uniform maps
(viridis, inferno) for saliency.

The figures of González-Gonzalo et al. (MIDL 2018, "Improving weakly-supervised lesion
localization with iterative saliency map refinement"):

- :func:`froc_figure`: lesion-level FROC curves of ``s_0`` and ``S``, one panel per group (the
  paper's Figure 2: DR stage 2, 3, 4), with bootstrap bands and the summary scores in the legend.
- :func:`heatmap_panels`: image / ``s_0`` / ``S`` rows (the paper's Figure 1).
- :func:`iteration_strip`: the refinement loop of one image, iteration by iteration.
- :func:`overlay_panel`: a saliency map over its image as an RGB array, for the two above.

Public API::

    froc_figure(panels, *, max_fp=10, title=None) -> Figure
    overlay_panel(image, saliency_map, *, fov=None, lesions=None, alpha=0.9, ...) -> (H, W, 3) uint8
    heatmap_panels(rows, *, titles=("Image", "$s_0$", "$S$"), ...) -> Figure
    iteration_strip(result, image=None, *, fov=None, lesions=None, max_columns=8) -> Figure
    training_curves(log) -> Figure; roc_figure(fpr, tpr, auc, ...) -> Figure;
    confusion_figure(confusion) -> Figure
"""

import collections.abc
import math

import numpy as np

from matplotlib.figure import Figure

from dr_saliency.core.checks import check_fov, check_image, check_saliency_map, is_int, is_real
from dr_saliency.core.maps import NORMALIZE_PERCENTILE, normalize_map, normalize_maps

#: Okabe & Ito (2008) colour-blind-safe palette.
OKABE_ITO = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000")

STYLE = {"font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8,
         # TrueType fonts in PDF/PS: text stays editable and searchable (journals ask for it).
         "pdf.fonttype": 42, "ps.fonttype": 42}

#: Colour map of saliency overlays: perceptually uniform and readable in greyscale and by
#: colour-blind readers.
SALIENCY_CMAP = "inferno"

#: Lesion outline colour: Okabe-Ito sky blue, far from the fundus's reds and oranges and from
#: inferno's black-red-yellow.
LESION_COLOUR = "#56B4E9"

#: Ground-truth outline colour of each lesion type (Okabe-Ito): sky blue, bluish green, reddish
#: purple, yellow; a type not listed takes the next of :data:`OKABE_ITO`. One colour per type in
#: every figure, named in its legend.
LESION_COLOURS = {"MA": "#56B4E9", "HE": "#009E73", "EX": "#CC79A7", "SE": "#F0E442"}

#: Legend names of the lesion types.
LESION_NAMES = {"MA": "microaneurysms", "HE": "haemorrhages", "EX": "hard exudates",
                "SE": "soft exudates"}

#: Predicted candidates: white open squares with a black rim, numbered by rank, so they read
#: apart from the coloured ground-truth outlines on the image and on inferno alike.
CANDIDATE_COLOUR = "white"
CANDIDATE_MARKER = "s"

#: Colour of the binarised masks in :func:`iteration_strip`: Okabe-Ito blue (the lesion types
#: have the other colours).
MASK_COLOUR = "#0072B2"

#: Colour bar label of maps drawn on s_0's scale (:func:`heatmap_panels`, :func:`iteration_strip`).
SHARED_SCALE_LABEL = "saliency on the scored scale,\n÷ robust max of $s_0$ (per image)"

#: FP/image rates of the 7-point FROC score, marked on the curves (CAMELYON16, LUNA16); equal to
#: ``dr_saliency.lesions.froc.DEFAULT_RATES`` (repeated so that importing this module stays light).
FROC_RATES = (1 / 8, 1 / 4, 1 / 2, 1, 2, 4, 8)

_LINESTYLES = ("-", "--", "-.", ":")
_MARKERS = ("o", "s", "^", "D", "v", "P")
# Points of the log-spaced grid the FROC curves are drawn on (plus the curve's own knots).
_FROC_GRID_POINTS = 240


def _figure(width, height):
    import matplotlib

    matplotlib.rcParams.update(STYLE)
    return Figure(figsize=(width, height), layout="constrained")


def training_curves(log):
    """Loss, validation kappa/AUC and learning rate per epoch.

    Args:
        log: dict column -> list of float per epoch, as ``train.read_log`` returns (columns
            ``epoch``, ``loss``, ``val_mse``, ``val_kappa``, ``val_auc``, ``val_accuracy``,
            ``lr``; missing ones are left out).

    Returns:
        matplotlib Figure with three panels.
    """
    epochs = np.asarray(log.get("epoch", range(len(log.get("loss", [])))), float) + 1
    fig = _figure(9, 2.8)
    ax_loss, ax_score, ax_lr = fig.subplots(1, 3)
    for key, label, colour in (("loss", "train loss (MSE)", OKABE_ITO[0]),
                               ("val_mse", "validation MSE", OKABE_ITO[1])):
        if key in log:
            ax_loss.plot(epochs, log[key], label=label, color=colour)
    ax_loss.set(xlabel="epoch", ylabel="mean squared error", title="Loss")
    ax_loss.legend()
    lowest = 0.0
    for key, label, colour in (("val_kappa", "quadratic kappa", OKABE_ITO[2]),
                               ("val_auc", "referable AUC", OKABE_ITO[3]),
                               ("val_accuracy", "accuracy", OKABE_ITO[4])):
        if key in log:
            ax_score.plot(epochs, log[key], label=label, color=colour)
            values = np.asarray(log[key], float)
            if np.isfinite(values).any():
                lowest = min(lowest, float(np.nanmin(values)))
    # Kappa is negative for a grader worse than chance: extend the axis below 0 rather than hide it.
    bottom = 0.0 if lowest >= 0 else max(-1.0, lowest - 0.05)
    ax_score.set(xlabel="epoch", ylabel="validation score", ylim=(bottom, 1), title="Validation")
    if bottom < 0:
        ax_score.axhline(0, color="0.6", lw=0.8, ls="--")
    ax_score.legend(loc="lower right")
    if "lr" in log:
        ax_lr.plot(epochs, log["lr"], color=OKABE_ITO[7])
    ax_lr.set(xlabel="epoch", ylabel="learning rate", title="Schedule")
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    return fig


def roc_figure(fpr, tpr, auc, auc_ci=None, title="Referable DR (stage >= 2)"):
    """ROC curve of a referable-DR score.

    Args:
        fpr, tpr: 1-D sequences of the curve.
        auc: float; auc_ci: optional (low, high) 95% interval.
        title: str.

    Returns:
        matplotlib Figure.
    """
    fig = _figure(3.4, 3.2)
    ax = fig.subplots()
    label = f"AUC {auc:.3f}"
    if auc_ci is not None and np.all(np.isfinite(auc_ci)):
        label += f" (95% CI {auc_ci[0]:.3f}-{auc_ci[1]:.3f})"
    ax.plot(fpr, tpr, color=OKABE_ITO[0], label=label)
    ax.plot([0, 1], [0, 1], color="0.6", lw=0.8, ls="--")
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", xlim=(0, 1), ylim=(0, 1.01), title=title)
    ax.set_aspect("equal")
    ax.legend(loc="lower right")
    return fig


def confusion_figure(confusion, title="Grades"):
    """Confusion matrix of true stage (rows) against predicted grade (columns), with counts.

    Args:
        confusion: (5, 5) array-like of counts.
        title: str.

    Returns:
        matplotlib Figure.
    """
    confusion = np.asarray(confusion)
    fig = _figure(3.6, 3.2)
    ax = fig.subplots()
    rows = confusion.sum(axis=1, keepdims=True)
    share = np.divide(confusion, rows, out=np.zeros(confusion.shape, float), where=rows > 0)
    im = ax.imshow(share, cmap="viridis", vmin=0, vmax=1)
    for (i, j), count in np.ndenumerate(confusion):
        ax.text(j, i, str(count), ha="center", va="center",
                color="black" if share[i, j] > 0.6 else "white")
    ticks = range(confusion.shape[0])
    ax.set(xticks=ticks, yticks=ticks, xlabel="predicted grade", ylabel="true stage", title=title)
    fig.colorbar(im, ax=ax, label="share of true stage", shrink=0.8)
    return fig


# ----------------------------------------------------------------------------- FROC


def _rate_label(rate):
    """'1/8', '1/2', '1', '10' for a tick at ``rate`` FP/image."""
    if rate < 1 and math.isclose(1 / rate, round(1 / rate)):
        return f"1/{round(1 / rate)}"
    return f"{rate:g}"


def _grid_shape(n):
    """(rows, cols) of a panel grid: 1-3 in one row, 4 as 2x2, 5-6 as 2x3."""
    return {1: (1, 1), 2: (1, 2), 3: (1, 3), 4: (2, 2), 5: (2, 3), 6: (2, 3)}[n]


def _check_froc_panels(panels):
    """``panels`` as a list of (title, [(label, FROCResult, BootstrapResult or None), ...]).

    The curve types are recognised by what they offer (this wing imports no other): a FROC curve
    has ``sensitivity_at``, a bootstrap ``curve_rates``.
    """
    if not isinstance(panels, collections.abc.Mapping):
        raise TypeError("Expected panels as a dict {panel title: {curve label: (FROCResult, "
                        f"BootstrapResult or None)}}. Received: panels of type {type(panels).__name__}")
    if not 1 <= len(panels) <= 6:
        raise ValueError(f"Expected 1 to 6 panels. Received: len(panels)={len(panels)}")
    checked = []
    for title, curves in panels.items():
        if not isinstance(curves, collections.abc.Mapping) or not curves:
            raise ValueError(f"Expected panels[{title!r}] to be a non-empty dict {{curve label: "
                             f"(FROCResult, BootstrapResult or None)}}. Received: {curves!r}")
        entries = []
        for label, value in curves.items():
            name = f"panels[{title!r}][{label!r}]"
            if _is_curve(value):  # a bare curve: no band
                value = (value, None)
            if not (isinstance(value, tuple) and len(value) == 2 and _is_curve(value[0])
                    and (value[1] is None or hasattr(value[1], "curve_rates"))):
                raise TypeError(f"Expected {name} to be a (FROCResult, BootstrapResult or None) "
                                f"pair. Received: {value!r}")
            entries.append((str(label), value[0], value[1]))
        checked.append((str(title), entries))
    return checked


def _is_curve(value):
    return callable(getattr(value, "sensitivity_at", None))


def _froc_label(label, result, max_fp):
    """Legend text: the label, the 7-point score and the average sensitivity up to ``max_fp``."""
    if result.n_lesions == 0:
        return f"{label}  no lesions"
    return f"{label}  score {result.score():.2f}, AS{max_fp:g} {result.average_sensitivity(max_fp):.2f}"


def froc_figure(panels, *, max_fp=10, title=None):
    """Lesion-level FROC curves, one panel per group (González-Gonzalo et al. 2018, Figure 2).

    In each panel, one curve per named map (``s_0`` and ``S``, or more): sensitivity (pooled over
    lesions) against mean false positives per image on a log axis from 1/8 (a little less) to
    ``max_fp``. A curve is :meth:`FROCResult.sensitivity_at` evaluated on a fine log-spaced grid
    joined with the curve's own operating points, so the line passes exactly through the values
    the summaries are computed from; the 7 rates of the score (1/8 .. 8) are marked. With a
    :class:`~dr_saliency.lesions.froc.BootstrapResult` computed with ``curve_rates``, its pointwise
    percentile band (``curve_low`` .. ``curve_high``) is shaded. The legend gives each curve's
    7-point score (:meth:`FROCResult.score`) and average sensitivity up to ``max_fp``
    (:meth:`FROCResult.average_sensitivity`). Curves are told apart by Okabe-Ito colour, line style
    and marker. A curve without lesions (NaN) is left out and said so in the legend; a panel
    whose curves all have none says "no lesions". A key under the panels says what the markers,
    "score", "AS" and the shaded band are.

    Args:
        panels: ordered dict ``{panel title: {curve label: (FROCResult, BootstrapResult or None)}}``
            with 1 to 6 panels (laid out 1x1, 1x2, 1x3, 2x2, 2x3, 2x3); a bare ``FROCResult`` is
            taken as ``(result, None)``. Curve labels may use mathtext, e.g. ``"$s_0$"``.
        max_fp: float > 1/8, right end of the x axis (FP/image) and of the average sensitivity.
        title: optional figure title.

    Returns:
        matplotlib Figure with one axes per panel; the curve of panel ``p``, label ``j`` is the
        ``Line2D`` labelled with the legend text, its x data the FP rates and y data the
        sensitivities.

    Raises:
        TypeError: ``panels`` not a dict of dicts of (FROCResult, BootstrapResult or None).
        ValueError: no or more than 6 panels, an empty panel, ``max_fp`` not > 1/8.
    """
    from matplotlib.ticker import NullLocator
    from matplotlib.transforms import offset_copy

    checked = _check_froc_panels(panels)
    if not is_real(max_fp) or not FROC_RATES[0] < max_fp < np.inf:
        raise ValueError(f"Expected a finite max_fp > 1/8 (FP per image). Received: max_fp={max_fp!r}")
    max_fp = float(max_fp)
    x_low = FROC_RATES[0] / 1.25
    rates = np.array([r for r in FROC_RATES if r <= max_fp])
    grid = np.geomspace(x_low, max_fp, _FROC_GRID_POINTS)
    # The right end gets a tick label of its own unless it would crowd the last rate's (8 and 10).
    ticks = list(rates) + ([max_fp] if max_fp >= 1.6 * rates[-1] else [])

    n_rows, n_cols = _grid_shape(len(checked))
    # Each row of panels has its legends under it: 0.45 in of the height.
    fig = _figure(2.65 * n_cols + 0.3, 3.0 * n_rows + (0.25 if title else 0))
    axes = fig.subplots(n_rows, n_cols, squeeze=False, sharex=True, sharey=True)
    for extra in axes.ravel()[len(checked):]:
        extra.remove()
    for p, (panel_title, entries) in enumerate(checked):
        row, col = divmod(p, n_cols)
        ax = axes[row, col]
        drawn = 0
        for j, (label, result, boot) in enumerate(entries):
            colour = OKABE_ITO[j % len(OKABE_ITO)]
            text = _froc_label(label, result, max_fp)
            if result.n_lesions == 0:
                # An empty line keeps the curve's legend entry ("no lesions") in its style.
                ax.plot([], [], color=colour, ls=_LINESTYLES[j % 4], label=text)
                continue
            drawn += 1
            knots = np.asarray(result.fps_per_image, float)
            x = np.union1d(grid, knots[(knots > x_low) & (knots < max_fp)])
            x = np.union1d(x, rates)
            ax.plot(x, result.sensitivity_at(x), color=colour, ls=_LINESTYLES[j % 4], lw=1.4,
                    label=text, zorder=3 + j)
            ax.plot(rates, result.sensitivity_at(rates), ls="none", marker=_MARKERS[j % 6], ms=3.8,
                    color=colour, markeredgecolor="white", markeredgewidth=0.5, zorder=3.5 + j)
            if boot is not None and boot.curve_rates is not None:
                band_x = np.asarray(boot.curve_rates, float)
                keep = (band_x >= x_low) & (band_x <= max_fp) & np.isfinite(boot.curve_low) \
                    & np.isfinite(boot.curve_high)
                if keep.any():
                    ax.fill_between(band_x[keep], np.asarray(boot.curve_low)[keep],
                                    np.asarray(boot.curve_high)[keep], color=colour, alpha=0.18,
                                    lw=0, zorder=1 + j)
        counts = {(r.n_images, r.n_lesions) for _, r, _ in entries}
        subtitle = ""
        if len(counts) == 1:
            n_images, n_lesions = counts.pop()
            subtitle = (f"\n{n_images} image{'s' * (n_images != 1)}, "
                        f"{n_lesions} lesion{'s' * (n_lesions != 1)}")
        ax.set_title(panel_title + subtitle)
        if drawn == 0:
            ax.text(0.5, 0.5, "no lesions", transform=ax.transAxes, ha="center", va="center",
                    color="0.35")
        ax.grid(True, which="major", color="0.9", lw=0.6)
        ax.set_axisbelow(True)
        # Tick labels and axis labels on the outer panels; a panel with no panel below it (the
        # 2x3 grid of five) gets its own x tick labels.
        below_missing = (row + 1) * n_cols + col >= len(checked)
        ax.tick_params(labelbottom=below_missing, labelleft=col == 0)
        if below_missing:
            ax.set_xlabel("mean false positives per image")
        if drawn:
            # Under the panel, below its tick and axis labels (an offset in points, so it holds
            # at any panel size): never over the curves or the y axis's top tick. Constrained
            # layout makes the room.
            below = offset_copy(ax.transAxes, fig=fig, y=-30 if below_missing else -4,
                                units="points")
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, 0), bbox_transform=below,
                      handlelength=2.6, borderaxespad=0.0, frameon=False)
        if col == 0:
            ax.set_ylabel("sensitivity")
    ax0 = axes[0, 0]
    ax0.set_xscale("log")
    ax0.set_xlim(x_low, max_fp * 1.04)
    ax0.set_ylim(0, 1.02)  # a curve at sensitivity 1 stays off the frame
    ax0.set_xticks(ticks, [_rate_label(t) for t in ticks])
    ax0.xaxis.set_minor_locator(NullLocator())
    ax0.set_yticks(np.linspace(0, 1, 6))
    levels = {boot.level for _, entries in checked for _, _, boot in entries
              if boot is not None and boot.curve_rates is not None}
    _froc_key(fig, max_fp, levels)
    if title:
        fig.suptitle(title)
    return fig


def _froc_key(fig, max_fp, levels):
    """The FROC figure's key under its panels: what the markers, ``score``, ``AS`` and the
    shaded band (bootstrap ``levels``, a set of confidence levels in (0, 1)) are."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [Line2D([], [], ls="none", marker="o", ms=3.8, color="0.35",
                      label="marked: the 7 rates of the score, 1/8 to 8 FP/image"),
               Patch(facecolor="none", edgecolor="none",
                     label=f"score: mean sensitivity at those 7 rates; AS{max_fp:g}: average "
                           f"sensitivity from 1/8 to {max_fp:g} FP/image")]
    if levels:
        level = " / ".join(f"{100 * v:g}%" for v in sorted(levels))
        handles.append(Patch(facecolor="0.35", alpha=0.18, lw=0,
                             label=f"shaded: pointwise {level} bootstrap band (images resampled)"))
    fig.legend(handles=handles, loc="outside lower center", frameon=False, ncols=1, fontsize=7,
               handlelength=1.6)


# ----------------------------------------------------------------------------- saliency overlays


def _check_lesions(lesions, shape, name="lesions"):
    """A bool (H, W) union of lesion masks from a mask or a dict of masks; None stays None."""
    if lesions is None:
        return None
    if isinstance(lesions, collections.abc.Mapping):
        union = np.zeros(shape, dtype=bool)
        for kind, mask in lesions.items():
            union |= _check_lesions(mask, shape, f"{name}[{kind!r}]")
        return union
    array = np.asarray(lesions)
    if array.dtype != bool or array.shape != tuple(shape):
        raise ValueError(f"Expected a bool lesion mask of shape {tuple(shape)} (or a dict of them). "
                         f"Received: {name}.shape={array.shape}, {name}.dtype={array.dtype}")
    return array


def _lesion_layers(lesions, shape, name="lesions"):
    """``{type: (H, W) bool}`` of the lesions to outline, each type in its own colour: a dict of
    masks as given (types in :data:`LESION_COLOURS` order first), a bare mask as ``{"lesions":
    mask}``; None: {}."""
    if lesions is None:
        return {}
    if not isinstance(lesions, collections.abc.Mapping):
        return {"lesions": _check_lesions(lesions, shape, name)}
    order = sorted(lesions, key=lambda t: (list(LESION_COLOURS).index(t)
                                           if t in LESION_COLOURS else len(LESION_COLOURS), str(t)))
    return {t: _check_lesions(lesions[t], shape, f"{name}[{t!r}]") for t in order}


def lesion_colour(kind):
    """The outline colour of a lesion type (:data:`LESION_COLOURS`; a bare mask, ``"lesions"``,
    in MA's sky blue; another type a colour of :data:`OKABE_ITO` chosen by its name)."""
    if kind in LESION_COLOURS:
        return LESION_COLOURS[kind]
    if kind == "lesions":
        return LESION_COLOUR
    spare = [c for c in OKABE_ITO if c not in LESION_COLOURS.values() and c != MASK_COLOUR]
    return spare[sum(map(ord, str(kind))) % len(spare)]


def _outline_layers(rgb, layers, width):
    """Float RGB with every layer's outline drawn in its type's colour."""
    for kind, mask in layers.items():
        rgb = _draw_outline(rgb, mask, lesion_colour(kind), width)
    return rgb


def _rgb(colour):
    from matplotlib.colors import to_rgb

    return np.array(to_rgb(colour), dtype=np.float32)


def _outline(mask, width):
    """Pixels just outside ``mask`` (within ``width`` px, 8-connected): the lesion stays visible."""
    from scipy import ndimage

    grown = ndimage.binary_dilation(mask, structure=np.ones((3, 3), bool), iterations=width)
    return grown & ~mask


def _auto_width(shape):
    """Outline width (px) that stays visible when an image is shown at a few hundred pixels."""
    return max(1, round(max(shape) / 320))


def _draw_outline(rgb, lesions, colour, width):
    if lesions is not None and lesions.any():
        rgb[_outline(lesions, width)] = _rgb(colour)
    return rgb


def outline_masks(image, masks, colours, width=1):
    """An RGB copy of ``image`` with each mask outlined just outside it, in its own colour.

    Args:
        image: (H, W, 3) uint8 RGB.
        masks: dict ``{name: (H, W) bool}``, e.g. lesion masks by type.
        colours: dict ``{name: matplotlib colour}``; a name without one is outlined in white.
        width: int >= 1, outline width in pixels (8-connected, outside the mask).

    Returns:
        (H, W, 3) uint8 RGB.
    """
    check_image(image)
    if not is_int(width) or width < 1:
        raise ValueError(f"Expected an integer width >= 1. Received: width={width!r}")
    out = image.astype(np.float32) / 255
    for name, mask in masks.items():
        out = _draw_outline(out, _check_lesions(mask, image.shape[:2], f"masks[{name!r}]"),
                            colours.get(name, "white"), width)
    return _to_uint8(out)


def _to_uint8(rgb):
    return np.clip(np.rint(rgb * 255), 0, 255).astype(np.uint8)


def _normalized(saliency_map, fov, shape, name, vmax=None):
    """The map in [0, 1]: divided by ``vmax`` (clipped), or by its own robust maximum."""
    smap = check_saliency_map(saliency_map, name)
    fov = check_fov(fov, shape, "fov")
    if smap.shape != tuple(shape):
        raise ValueError(f"Expected a saliency map of the image's shape {tuple(shape)}. "
                         f"Received: {name}.shape={smap.shape}")
    if vmax is None:
        return normalize_map(smap, fov), fov
    out = np.clip(smap / np.float32(vmax), 0, 1).astype(np.float32)
    out[~fov] = 0
    return out, fov


def shared_vmax(s0, fov=None):
    """The value maps of one image are drawn up to: s_0's robust maximum inside the FOV (the
    scale :func:`dr_saliency.core.maps.normalize_maps` calls ``"image"``), so that a later map
    weaker than s_0 looks weaker; 1.0 where s_0 has no positive value."""
    smap = check_saliency_map(s0, "s0")
    fov = check_fov(fov, smap.shape, "fov")
    values = smap[fov]
    values = values[values > 0]
    if not values.size:
        return 1.0
    # As core.maps's robust maximum (numpy's linear-interpolation percentile).
    return float(np.percentile(values, NORMALIZE_PERCENTILE))


def overlay_panel(image, saliency_map, *, fov=None, lesions=None, alpha=0.9, gamma=0.75,
                  cmap=SALIENCY_CMAP, desaturate=0.85, brightness=0.8,
                  outline_colour=None, outline_width=None, vmax=None):
    """A saliency map drawn over its image, as an RGB array ready for ``imshow`` or saving.

    The map is scaled to [0, 1] by ``vmax`` (clipped), or without one by its own robust maximum
    inside the FOV (:func:`dr_saliency.core.maps.normalize_map`), coloured with ``cmap`` and blended over the image
    with a per-pixel opacity ``alpha * n ** gamma``: salient pixels show the colour map, the rest
    the image. The image is first partly desaturated so that the fundus's own reds and oranges do
    not read as saliency, and dimmed so that bright exudates stay darker than the colour map's
    top. Lesion outlines are drawn just outside each lesion, so the lesion and the
    saliency on it stay visible.

    Args:
        image: (H, W, 3) uint8 RGB.
        saliency_map: (H, W) real, finite, larger = more salient.
        fov: (H, W) bool field of view, or None (whole image). The map is 0 outside it.
        lesions: (H, W) bool union of lesion masks, a dict ``{type: mask}`` (each type
            outlined in its colour, :func:`lesion_colour`), or None.
        alpha: float in [0, 1], opacity of the colour map where the map is 1.
        gamma: float > 0, opacity exponent (< 1 makes moderately salient pixels more visible).
        cmap: matplotlib colour map name.
        desaturate: float in [0, 1], how far the image is moved toward its grey level.
        brightness: float in [0, 1], factor on the image under the map.
        outline_colour: matplotlib colour of every lesion outline; None: each type its own.
        outline_width: int >= 1, outline width in pixels; None: 1 px per 320 px of image side
            (at least 1), so that outlines stay visible when a large image is shown small.
        vmax: float > 0, the map value drawn at the colour map's top (a shared scale, e.g.
            s_0's robust maximum); None: the map's own robust maximum.

    Returns:
        (H, W, 3) uint8 RGB.

    Raises:
        TypeError: a map that is not real-valued, a FOV that is not bool.
        ValueError: bad shapes or dtypes, NaN in the map, options out of range.
    """
    import matplotlib

    image = check_image(image)
    shape = image.shape[:2]
    for name, value, low, high in (("alpha", alpha, 0, 1), ("desaturate", desaturate, 0, 1),
                                   ("brightness", brightness, 0, 1)):
        if not is_real(value) or not low <= value <= high:
            raise ValueError(f"Expected {name} in [{low}, {high}]. Received: {name}={value!r}")
    if not is_real(gamma) or not 0 < gamma < np.inf:
        raise ValueError(f"Expected a finite gamma > 0. Received: gamma={gamma!r}")
    if outline_width is None:
        outline_width = _auto_width(shape)
    if not is_int(outline_width) or outline_width < 1:
        raise ValueError(f"Expected an integer outline_width >= 1. Received: outline_width={outline_width!r}")
    if vmax is not None and (not is_real(vmax) or not 0 < vmax < np.inf):
        raise ValueError(f"Expected a finite vmax > 0. Received: vmax={vmax!r}")
    n, _ = _normalized(saliency_map, fov, shape, "saliency_map", vmax)
    layers = _lesion_layers(lesions, shape)
    colours = matplotlib.colormaps[cmap](n)[..., :3].astype(np.float32)
    base = image.astype(np.float32) / 255
    grey = base @ np.array([0.299, 0.587, 0.114], np.float32)
    base = brightness * ((1 - desaturate) * base + desaturate * grey[..., None])
    weight = (alpha * n ** gamma)[..., None]
    out = (1 - weight) * base + weight * colours
    if outline_colour is not None:
        return _to_uint8(_draw_outline(out, _check_lesions(lesions, shape), outline_colour,
                                       outline_width))
    return _to_uint8(_outline_layers(out, layers, outline_width))


def _heat(saliency_map, fov, shape, name, cmap=SALIENCY_CMAP, vmax=None):
    """A plain colour-mapped map (no image under it), black outside the FOV."""
    import matplotlib

    n, fov = _normalized(saliency_map, fov, shape, name, vmax)
    rgb = matplotlib.colormaps[cmap](n)[..., :3].astype(np.float32)
    rgb[~fov] = 0
    return rgb


def _mask_over(image, mask, colour=MASK_COLOUR, opacity=0.6):
    """Float RGB: ``mask`` filled in ``colour`` over an image (None: a dark background)."""
    if image is None:
        base = np.full((*mask.shape, 3), 0.12, np.float32)
    else:
        base = image.astype(np.float32) / 255
    out = base.copy()
    out[mask] = (1 - opacity) * base[mask] + opacity * _rgb(colour)
    return _draw_outline(out, mask, colour, 1)


def _bare(ax):
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def _saliency_colorbar(fig, axes, cmap=SALIENCY_CMAP, label=SHARED_SCALE_LABEL, **kwargs):
    """One colour bar for the figure's maps, saying what scale they are drawn on."""
    import matplotlib
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    mappable = ScalarMappable(norm=Normalize(0, 1), cmap=matplotlib.colormaps[cmap])
    bar = fig.colorbar(mappable, ax=axes, label=label, extend="max", **kwargs)
    bar.set_ticks([0, 0.5, 1])
    return bar


_ROW_KEYS = ("image", "s0", "S")


def heatmap_panels(rows, *, titles=("Image", "$s_0$", "$S$"), outline_maps=False, panel_size=1.9,
                   scale="s0", note=None):
    """Image / ``s_0`` / ``S`` rows, as in González-Gonzalo et al. (2018), Figure 1.

    Each row is one image: (a) the image, with its lesions outlined (one colour per type) when
    given; (b) ``s_0`` and (c) ``S`` over the image (:func:`overlay_panel`). With ``scale="s0"``
    both maps of a row are drawn on one scale, up to s_0's robust maximum (:func:`shared_vmax`):
    pass the maps as they are scored (``Combination.scored``), and a weak S looks weak. The
    row label (id, stage, predictions) is written to the left of the row. One colour bar for the
    figure, saying the scale; one legend naming the outlines and the candidate marker; no ticks.

    Args:
        rows: list of dicts, one per image, with keys ``image`` ((H, W, 3) uint8 RGB), ``s0`` and
            ``S`` ((H, W) float maps), and optionally ``fov`` ((H, W) bool), ``lesions`` ((H, W)
            bool union of lesion masks, a dict ``{type: mask}``, or None), ``label`` (str, e.g.
            ``"synth_00012, stage 3, 3.1 -> 0.9"``; a newline is allowed) and ``points``
            ((K, 2) ``(row, col)`` of lesion candidates, marked and numbered 1..K on ``S``).
        titles: three column titles (mathtext allowed).
        outline_maps: also outline the lesions on the two maps.
        panel_size: float, side of one panel in inches.
        scale: ``"s0"`` (both maps of a row up to s_0's robust maximum) or ``"own"`` (each map
            up to its own: the colour bar says so).
        note: optional str written under the figure (e.g. what the grader was trained on).

    Returns:
        matplotlib Figure with ``3 * len(rows)`` image axes and a colour bar axes.

    Raises:
        ValueError: no rows, a row without a required key, bad arrays, not three titles.
    """
    if isinstance(rows, collections.abc.Mapping) or not isinstance(rows, collections.abc.Sequence) \
            or len(rows) == 0:
        raise ValueError(f"Expected a non-empty list of row dicts. Received: rows={rows!r:.80}")
    if len(titles) != 3:
        raise ValueError(f"Expected three titles. Received: titles={titles!r}")
    if not is_real(panel_size) or not panel_size > 0:
        raise ValueError(f"Expected panel_size > 0. Received: panel_size={panel_size!r}")
    if scale not in ("s0", "own"):
        raise ValueError(f"Expected scale in ('s0', 'own'). Received: scale={scale!r}")
    panels, kinds = [], {}
    for r, row in enumerate(rows):
        if not isinstance(row, collections.abc.Mapping) or any(k not in row for k in _ROW_KEYS):
            keys = sorted(row) if isinstance(row, collections.abc.Mapping) else type(row).__name__
            raise ValueError(f"Expected rows[{r}] to be a dict with keys {_ROW_KEYS} (and optionally "
                             f"fov, lesions, label). Received: rows[{r}] keys={keys}")
        image = check_image(row["image"], f"rows[{r}]['image']")
        layers = _lesion_layers(row.get("lesions"), image.shape[:2], f"rows[{r}]['lesions']")
        kinds.update((kind, None) for kind, mask in layers.items())
        shown = _to_uint8(_outline_layers(image.astype(np.float32) / 255, layers,
                                          _auto_width(image.shape[:2])))
        vmax = None
        if scale == "s0":
            check_saliency_map(row["s0"], f"rows[{r}]['s0']")
            vmax = shared_vmax(row["s0"], check_fov(row.get("fov"), np.shape(row["s0"]), "fov"))
        maps = [overlay_panel(image, row[key], fov=row.get("fov"), vmax=vmax,
                              lesions=layers if outline_maps else None) for key in ("s0", "S")]
        points = np.asarray(row.get("points", np.zeros((0, 2))), dtype=np.float64)
        if points.ndim != 2 or points.shape[1] != 2 or not np.all(np.isfinite(points)):
            raise ValueError(f"Expected rows[{r}]['points'] as a (K, 2) array of (row, col). "
                             f"Received: shape={points.shape}")
        panels.append(([shown, *maps], row.get("label"), points))

    fig = _figure(3 * panel_size + 0.9, panel_size * len(rows) + 0.3)
    axes = fig.subplots(len(rows), 3, squeeze=False)
    fig.get_layout_engine().set(w_pad=0.01, h_pad=0.01, wspace=0.01, hspace=0.01)
    for r, (images, label, points) in enumerate(panels):
        for c, shown in enumerate(images):
            ax = axes[r, c]
            ax.imshow(shown, interpolation="antialiased")
            _bare(ax)
            if r == 0:
                ax.set_title(titles[c])
        _mark_points(axes[r, 2], points, images[0].shape[:2])
        if label:
            axes[r, 0].set_ylabel(str(label), fontsize=8)
    bar_label = (SHARED_SCALE_LABEL if scale == "s0"
                 else "saliency, each map ÷ its own\nrobust max (rescaled per panel)")
    _saliency_colorbar(fig, axes, shrink=min(0.9, 0.9 / len(rows) ** 0.5), aspect=15, pad=0.02,
                       label=bar_label)
    has_points = any(len(p) for _, _, p in panels)
    _legend(fig, list(kinds), candidates=has_points, note=note)
    return fig


def _legend(fig, kinds, *, candidates=False, masks=False, note=None):
    """One legend under the figure: the ground-truth outline colour of each lesion type, the
    candidate marker, the masks; ``note`` as its last line."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [Patch(facecolor="none", edgecolor=lesion_colour(k), linewidth=1.5,
                     label=f"ground truth: {LESION_NAMES.get(k, k)}") for k in kinds]
    if candidates:
        handles.append(Line2D([], [], ls="none", marker=CANDIDATE_MARKER, ms=6, mfc="none",
                              mec=CANDIDATE_COLOUR, markeredgewidth=1.2,
                              label="predicted candidate, numbered by score (S at its peak)"))
    if masks:
        handles.append(Patch(facecolor=MASK_COLOUR, alpha=0.6,
                             label="mask$_i$: pixels of $s_i$ above the threshold, inpainted "
                                   "to make $I_{i+1}$"))
    if note:
        handles.append(Patch(facecolor="none", edgecolor="none", label=note))
    if handles:
        legend = fig.legend(handles=handles, loc="outside lower center", frameon=False,
                            ncols=min(2, len(handles)), fontsize=7, handlelength=1.6)
        # The candidate marker is white: a grey face behind the legend keeps it visible.
        if candidates:
            legend.get_frame().set(facecolor="0.55", alpha=1, visible=True, linewidth=0)
    return handles


def _label_spots(points, shape, gap):
    """Where to write each candidate's number: ``(x, y)`` text positions, near its point but
    clear of every point and of the numbers placed before it (greedy, rings of growing radius,
    inside the image); a number moved off its ring 1 gets a leader line."""
    height, width = shape
    directions = [(1, -1), (-1, -1), (1, 1), (-1, 1), (0, -1.4), (1.4, 0), (0, 1.4), (-1.4, 0)]
    placed, spots = [], []
    for row, col in points:
        best = None
        for ring in (1, 2, 3, 4):
            for dx, dy in directions:
                x, y = col + dx * gap * ring, row + dy * gap * ring
                if not (gap * 0.5 <= x <= width - gap * 0.5 and gap * 0.5 <= y <= height - gap * 0.5):
                    continue
                clear = all(abs(x - px) > 1.3 * gap or abs(y - py) > gap for px, py in placed)
                clear = clear and all(math.hypot(x - c, y - r) > 0.9 * gap for r, c in points)
                if clear:
                    best = (x, y, ring)
                    break
            if best:
                break
        if best is None:  # a crowd: the last ring's first direction, inside the image
            best = (min(max(col + gap * 4, gap), width - gap), max(row - gap * 4, gap), 4)
        placed.append(best[:2])
        spots.append(best)
    return spots


def _mark_points(ax, points, shape):
    """Candidates: open squares numbered by rank at (row, col) points, the numbers placed apart
    (:func:`_label_spots`, leader lines where moved out); the axes keep the image's extent."""
    from matplotlib import patheffects

    if not len(points):
        return
    outline = [patheffects.withStroke(linewidth=1.8, foreground="black")]
    ax.plot(points[:, 1], points[:, 0], ls="none", marker=CANDIDATE_MARKER, ms=7, mfc="none",
            mec=CANDIDATE_COLOUR, markeredgewidth=1.1, path_effects=outline)
    # A number's distance from its point: just clear of the square at the figures' sizes.
    gap = max(shape) / 28
    for k, ((row, col), (x, y, ring)) in enumerate(zip(points, _label_spots(points, shape, gap)),
                                                   1):
        arrow = dict(arrowstyle="-", color=CANDIDATE_COLOUR, lw=0.9, shrinkA=3, shrinkB=4,
                     path_effects=[patheffects.withStroke(linewidth=2, foreground="black")]) \
            if ring > 1 else None
        ax.annotate(str(k), (col, row), xytext=(x, y), color=CANDIDATE_COLOUR, fontsize=6.5,
                    fontweight="bold", ha="center", va="center", arrowprops=arrow,
                    path_effects=outline)
    ax.set_xlim(-0.5, shape[1] - 0.5)
    ax.set_ylim(shape[0] - 0.5, -0.5)


def _strip_columns(k, max_columns):
    """Map indices shown: all when k <= max_columns, else the first max_columns - 1 and the last."""
    if k <= max_columns:
        return list(range(k))
    return list(range(max_columns - 1)) + [k - 1]


def iteration_strip(result, image=None, *, fov=None, lesions=None, max_columns=8, show_final=True):
    """The refinement loop of one image, iteration by iteration.

    Column ``i`` shows iteration ``i``: the image ``I_i`` (with the lesion outlines), its map
    ``s_i`` over it (:func:`overlay_panel`) and the mask ``mask_i`` (the pixels inpainted to make
    ``I_{i+1}``) filled over ``I_i``; the column title gives the prediction ``p_i`` on ``I_i``.
    A final column shows, when ``show_final``: the last image ``I_n``, the final map ``S`` over
    ``I_0`` and the union of the inpainted masks over ``I_0``; its title gives ``n``, ``p_n`` and
    the stop reason. With more than ``max_columns`` maps, the first ``max_columns - 1`` and the
    last are shown (the last title starts with "..."). Every map (s_i and S) is drawn on one
    scale, up to s_0's robust maximum (:func:`shared_vmax`): a late map weaker than s_0 looks
    weaker. Where the result's params name how its maps are scored
    (:class:`~dr_saliency.core.maps.Combination`), s_0 and S are drawn as scored. A legend
    under the figure names the lesion outlines and the masks.

    Without ``result.images`` (``refine(..., keep_images=False)``), ``image`` stands for ``I_0``
    and is shown alone in the image row; the maps are then drawn as plain heat maps (the images
    they were computed on are unknown) and the masks over ``I_0``. Without either, the image row
    is left out and the masks are drawn on a dark background.

    Args:
        result: :class:`dr_saliency.refinement.result.RefineResult`: ``maps`` (k, H, W), ``masks`` (k, H, W)
            bool, ``predictions`` (n + 1,), ``images`` (n + 1, H, W, 3) uint8 or None,
            ``final_map`` (H, W), ``stop_reason``, ``iterations`` (n).
        image: (H, W, 3) uint8 RGB ``I_0``, used when ``result.images`` is None.
        fov: (H, W) bool field of view, or None.
        lesions: (H, W) bool union of lesion masks, a dict ``{type: mask}``, or None.
        max_columns: int >= 2, most map columns shown.
        show_final: add the final column.

    Returns:
        matplotlib Figure with ``n_rows * n_columns`` image axes (3 rows when an image is known,
        else 2; columns: the maps shown plus the final one) and one colour bar axes.

    Raises:
        ValueError: a result without maps, shapes or dtypes that do not match, bad
            ``max_columns``.
    """
    maps = np.asarray(getattr(result, "maps", None))
    if maps.ndim != 3 or maps.shape[0] < 1:
        raise ValueError(f"Expected a RefineResult with maps of shape (k, H, W), k >= 1. "
                         f"Received: result.maps.shape={maps.shape}")
    k, shape = maps.shape[0], maps.shape[1:]
    masks = np.asarray(getattr(result, "masks", None))
    if masks.shape != maps.shape or masks.dtype != bool:
        raise ValueError(f"Expected bool result.masks of shape {maps.shape}. "
                         f"Received: result.masks.shape={masks.shape}, dtype={masks.dtype}")
    predictions = np.asarray(getattr(result, "predictions", None), dtype=np.float64).reshape(-1)
    if predictions.size < max(k - 1, 1):
        raise ValueError(f"Expected at least {max(k - 1, 1)} predictions for {k} maps. "
                         f"Received: result.predictions.shape={predictions.shape}")
    if not is_int(max_columns) or max_columns < 2:
        raise ValueError(f"Expected an integer max_columns >= 2. Received: max_columns={max_columns!r}")
    images = getattr(result, "images", None)
    if images is not None:
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (*shape, 3):
            raise ValueError(f"Expected result.images of shape (n + 1, {shape[0]}, {shape[1]}, 3) "
                             f"uint8. Received: shape={images.shape}, dtype={images.dtype}")
        first = images[0]
    elif image is not None:
        first = check_image(image)
        if first.shape[:2] != shape:
            raise ValueError(f"Expected an image of the maps' shape {shape}. "
                             f"Received: image.shape={first.shape}")
    else:
        first = None
    layers = _lesion_layers(lesions, shape)
    n_done = int(getattr(result, "iterations", predictions.size - 1))
    final_map = np.asarray(getattr(result, "final_map", maps[0]))
    maps, final_map = _scored(result, maps, masks, final_map, fov)
    vmax = shared_vmax(maps[0], fov)

    def image_at(i):
        return images[i] if images is not None and i < len(images) else None

    def with_outlines(im):
        return _to_uint8(_outline_layers(im.astype(np.float32) / 255, layers, _auto_width(shape)))

    columns = _strip_columns(k, max_columns)
    n_columns = len(columns) + bool(show_final)
    has_images = first is not None
    n_rows = 3 if has_images else 2
    side = min(1.5, 10.5 / n_columns)
    fig = _figure(side * n_columns + 1.1, side * n_rows + 0.55)
    axes = fig.subplots(n_rows, n_columns, squeeze=False)
    fig.get_layout_engine().set(w_pad=0.01, h_pad=0.01, wspace=0.01, hspace=0.01)
    row_s, row_mask = n_rows - 2, n_rows - 1
    for c, i in enumerate(columns):
        under = image_at(i)
        if has_images:
            shown = under if under is not None else (first if i == 0 else None)
            if shown is not None:
                axes[0, c].imshow(with_outlines(shown))
            elif c == 1:
                axes[0, c].text(0.5, 0.5, "images not kept", transform=axes[0, c].transAxes,
                                ha="center", va="center", color="0.4", fontsize=8)
        # Overlays only when the map's own image is known; else plain heat maps (then for every
        # column, since result.images is all or nothing), so the row reads the same throughout.
        if under is not None:
            cell = overlay_panel(under, maps[i], fov=fov, vmax=vmax)
        else:
            cell = _to_uint8(_heat(maps[i], fov, shape, f"result.maps[{i}]", vmax=vmax))
        axes[row_s, c].imshow(cell)
        axes[row_mask, c].imshow(_to_uint8(_mask_over(under if under is not None else first,
                                                       masks[i])))
        p = f"  p={predictions[i]:.2f}" if i < predictions.size else ""
        gap = "... " if c > 0 and i != columns[c - 1] + 1 else ""
        axes[0, c].set_title(f"{gap}i={i}{p}", fontsize=8)
    if show_final:
        c = n_columns - 1
        inpainted = masks[:n_done].any(axis=0) if n_done > 0 else np.zeros(shape, bool)
        labels = ["$S$", "masks$_{<n}$"]
        if has_images:
            last = image_at(n_done)
            labels.insert(0, "$I_n$" if last is not None else "")
            if last is not None:
                axes[0, c].imshow(with_outlines(last))
        if images is not None:
            axes[row_s, c].imshow(overlay_panel(first, final_map, fov=fov, vmax=vmax))
        else:
            axes[row_s, c].imshow(_to_uint8(_heat(final_map, fov, shape, "result.final_map",
                                                  vmax=vmax)))
        axes[row_mask, c].imshow(_to_uint8(_mask_over(first, inpainted)))
        for r, text in enumerate(labels):
            axes[r, c].set_ylabel(text, fontsize=8, labelpad=2)
        reason = getattr(result, "stop_reason", "")
        axes[0, c].set_title(f"end: n={n_done}  p={predictions[-1]:.2f}\n{reason}", fontsize=8)
    for ax in axes.ravel():
        _bare(ax)
    row_names = (["$I_i$"] if has_images else []) + ["$s_i$", "mask$_i$"]
    for r, name in enumerate(row_names):
        axes[r, 0].set_ylabel(name)
    # On the whole grid (a colour bar on one row would narrow that row's panels), about one row
    # high: with three rows it sits beside the map row.
    _saliency_colorbar(fig, axes, shrink=0.9 / n_rows, aspect=12, pad=0.01)
    _legend(fig, list(layers), masks=True)
    return fig


def _scored(result, maps, masks, final_map, fov):
    """The maps s_i and S as the result's params score them (``Combination``: s_i on the
    scored scale, S combined from them); as given where the params do not say."""
    from dr_saliency.core.maps import Combination

    params = getattr(result, "params", None) or {}
    if not {"decay", "combine"} <= set(params):
        return maps, final_map
    scoring = Combination.from_params(params)
    check_fov(fov, maps.shape[1:], "fov")
    scaled = normalize_maps(maps, fov, normalize=scoring.normalize)
    return scaled, scoring.final_map(maps, masks, fov)


#: The journal version of the paper's relative AS10 gain of S over s_0 (+11.2% +- 2.0%).
PAPER_GAIN = 0.112


def seed_gains_figure(panels, *, reference=PAPER_GAIN):
    """Per-seed relative gains of S over s_0, one panel per combination rule.

    Args:
        panels: dict title -> {"groups": list of G group names, "seeds": list of N seeds,
            "gain", "low", "high": (N, G) float arrays (NaN where a seed has no such group)}:
            the relative AS10 gain and its 95% interval per seed and group.
        reference: float or None, a dashed line at this gain (the paper's).

    Returns:
        Figure: per group, one marker per seed with its interval, and the seeds' mean as a bar.
    """
    if not isinstance(panels, dict) or not panels:
        raise ValueError(f"Expected a non-empty dict of panels. Received: panels={panels!r}")
    fig = _figure(3.2 * len(panels) + 0.6, 3.2)
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    for ax, (title, p) in zip(axes, panels.items()):
        gain, low, high = (np.asarray(p[k], float) * 100 for k in ("gain", "low", "high"))
        n_seeds, n_groups = gain.shape
        x = np.arange(n_groups)
        counts = np.isfinite(gain).sum(axis=0)
        mean = np.where(counts > 0, np.nansum(gain, axis=0) / np.maximum(counts, 1), np.nan)
        ax.bar(x, mean, width=0.7, color="#D0D0D0", label="mean over seeds", zorder=1)
        offsets = (np.arange(n_seeds) - (n_seeds - 1) / 2) * (0.6 / max(n_seeds, 1))
        for i, seed in enumerate(p["seeds"]):
            ok = np.isfinite(gain[i])
            err = np.vstack([gain[i] - low[i], high[i] - gain[i]])[:, ok]
            ax.errorbar(x[ok] + offsets[i], gain[i][ok], yerr=np.abs(err), fmt=_MARKERS[i % 6],
                        color=OKABE_ITO[i % len(OKABE_ITO)], ms=4, lw=0.9, capsize=1.5,
                        label=f"seed {seed}", zorder=3)
        ax.axhline(0, color="black", lw=0.8, zorder=2)
        if reference is not None:
            ax.axhline(reference * 100, color="black", lw=0.8, ls="--", zorder=2,
                       label=f"paper +{reference:.1%}")
        ax.set_xticks(x)
        ax.set_xticklabels([g.replace("type ", "") for g in p["groups"]], rotation=45, ha="right")
        ax.set_title(title)
        ax.grid(axis="y", color="#E0E0E0", lw=0.6)
    axes[0].set_ylabel("relative AS10 gain of S over $s_0$ (%)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right upper", frameon=False)
    return fig
