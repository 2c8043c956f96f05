"""Figures of synthetic examples (one row per DR stage) and of synthetic beside real images."""

import numpy as np

from dr_saliency.fundus.synth.params import _TYPES_AND_NV
from dr_saliency.fundus.synth.generator import synthesize


MASK_COLOURS = {"MA": "#00ffff", "HE": "#00ff00", "EX": "#2850ff", "SE": "#ff00ff"}
"""Outline colour per lesion type in :func:`example_grid`."""


def example_grid(n_per_stage=4, *, size=512, seed=0, outline=False):
    """A figure of synthetic examples: one row per DR stage 0-4.

    Args:
        n_per_stage: int, images per row.
        size: int, image side.
        seed: int; example ``j`` of stage ``k`` uses ``default_rng([seed, k, j])``.
        outline: bool, outline the lesion masks (:data:`MASK_COLOURS`).

    Returns:
        ``matplotlib.figure.Figure`` (no pyplot: nothing is shown, no global state).
    """
    from matplotlib.figure import Figure

    from dr_saliency.figures.plots import outline_masks

    fig = Figure(figsize=(2.4 * n_per_stage, 2.5 * 5), layout="constrained")
    axes = fig.subplots(5, n_per_stage, squeeze=False)
    for stage in range(5):
        for j in range(n_per_stage):
            r = synthesize(stage, size=size, rng=np.random.default_rng([seed, stage, j]))
            ax = axes[stage, j]
            ax.imshow(outline_masks(r.image, r.masks, MASK_COLOURS) if outline else r.image)
            ax.set_xticks([])
            ax.set_yticks([])
            n = {t: sum(1 for l in r.lesions if l.type == t) for t in _TYPES_AND_NV}
            ax.set_title(" ".join(f"{t} {c}" for t, c in n.items() if c) or "no lesion", fontsize=7)
            if j == 0:
                ax.set_ylabel(f"stage {stage}")
    return fig


def comparison_figure(synthetic, real, *, titles=None, size=512, zoom=(0.25, 0.25, 0.5)):
    """Synthetic and real photographs side by side at one scale, with a zoomed detail of each.

    Real photographs are cropped to their field of view, squared and resized as the
    preprocessing does (:func:`dr_saliency.fundus.fov.preprocess_image`), so that the FOV spans
    ``size`` pixels in every panel; the second row magnifies the same relative
    region of each panel (nearest neighbour, so that pixels stay pixels).

    Args:
        synthetic: list of ``(size, size, 3)`` uint8 RGB synthetic images.
        real: list of ``(H, W, 3)`` uint8 RGB photographs, any size.
        titles: optional list of panel titles, synthetic first.
        size: int, the common scale (FOV diameter in pixels).
        zoom: ``(top, left, side)`` of the detail, as fractions of ``size``.

    Returns:
        ``matplotlib.figure.Figure``.
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    from dr_saliency.fundus.fov import preprocess_image

    panels = ([np.asarray(im, np.uint8) for im in synthetic]
              + [preprocess_image(np.asarray(im, np.uint8), size)[0] for im in real])
    titles = list(titles) if titles is not None else ["synthetic"] * len(synthetic) + ["real"] * len(real)
    fig = Figure(figsize=(3.0 * len(panels), 6.2), layout="constrained")
    axes = fig.subplots(2, len(panels), squeeze=False)
    top, left, side = (int(round(v * size)) for v in zoom)
    for j, (im, title) in enumerate(zip(panels, titles)):
        axes[0, j].imshow(im)
        axes[0, j].add_patch(Rectangle((left - 0.5, top - 0.5), side, side, fill=False, edgecolor="white",
                                       linewidth=0.8))
        axes[0, j].set_title(title, fontsize=9)
        axes[1, j].imshow(im[top:top + side, left:left + side], interpolation="nearest")
        for ax in axes[:, j]:
            ax.set_xticks([])
            ax.set_yticks([])
    return fig
