"""Binarise a saliency map and inpaint the pixels it marks.

One refinement step of González-Gonzalo et al. (MIDL 2018, "Improving weakly-supervised lesion
localization with iterative saliency map refinement") removes what the grader found: the most
salient pixels of the map are turned into a mask (:func:`binarize`) and filled in from their
surroundings (:func:`inpaint`) with Navier-Stokes inpainting (Bertalmio, Bertozzi and Sapiro,
"Navier-Stokes, fluid dynamics, and image and video inpainting", CVPR 2001), the paper's choice;
Telea's fast-marching method (Telea, "An image inpainting technique based on the fast marching
method", J. Graphics Tools 2004) is offered as an alternative. Both are OpenCV's ``cv2.inpaint``.

The paper does not say how the map is binarised. The default keeps the top 0.5% of the field of
view (FOV) and dilates it by 1 px, chosen on the synthetic validation split (docs/choices.md); a
prototype of the method had found that removing 0.5-1% of the FOV per iteration with 0-2 px of
dilation beat larger masks. These defaults are module constants.

Inpainting fills a pixel from every known neighbour. At the FOV rim those include the black
surround, so a masked patch touching the rim would be filled with a dark blob that the grader can
read as a red lesion. Given the FOV, :func:`inpaint` first extends the fundus outward (each pixel
outside the FOV takes the colour of the nearest known fundus pixel), so the fill takes colour from
inside the FOV only; pixels outside the FOV are never changed.

Pure numpy / OpenCV / scipy: no TensorFlow here.

Public API::

    Eraser(rule="top_fraction", level=None, smooth_sigma=0.0, dilation=1, min_component_size=0,
           method="ns", radius=3, inside_fov=True)          the loop's erase step, checked
        eraser(image, saliency_map, fov) -> (mask, erased image or None)
        .mask(saliency_map, fov) -> (H, W) bool;  .fill(image, mask, fov) -> (H, W, 3) uint8
        .to_params() -> dict;  Eraser.from_params(params)
    binarize(saliency_map, fov_mask=None, *, rule="top_fraction", level=None, smooth_sigma=0.0,
             dilation=1, min_component_size=0) -> (H, W) bool
    inpaint(image, mask, *, method="ns", radius=3, fov_mask=None) -> (H, W, 3) uint8

A different erase step (another inpainter, a learned one) is any callable with the Eraser's call
signature and a ``to_params()`` method; the loop needs nothing else.
"""

import dataclasses

import cv2
import numpy as np
from scipy import ndimage

from dr_saliency.core.checks import check_fov, check_image, check_saliency_map, is_int, is_real
# The fill lives in core so that lesion figures replay a run's inpainting without the erase step;
# its public names stay importable from here.
from dr_saliency.core.inpaint import (DEFAULT_INPAINT_METHOD, DEFAULT_INPAINT_RADIUS,
                                      INPAINT_METHODS, _check_fill_options, inpaint, stored_fill)

__all__ = [
    "BINARIZE_RULES",
    "DEFAULT_DILATION",
    "DEFAULT_INPAINT_METHOD",
    "DEFAULT_INPAINT_RADIUS",
    "DEFAULT_LEVELS",
    "DEFAULT_MIN_COMPONENT_SIZE",
    "DEFAULT_RULE",
    "DEFAULT_SMOOTH_SIGMA",
    "INPAINT_METHODS",
    "Eraser",
    "binarize",
    "disk",
    "inpaint",
]

BINARIZE_RULES = ("top_fraction", "otsu", "fraction_of_max")
"""How :func:`binarize` chooses pixels: the top ``level`` fraction of the FOV by value; Otsu's
threshold of the map inside the FOV; or every pixel >= ``level`` times the map's maximum."""

DEFAULT_RULE = "top_fraction"
"""Default binarisation rule: a fixed, small fraction of the FOV per iteration (docs/choices.md)."""

DEFAULT_LEVELS = {"top_fraction": 0.005, "otsu": None, "fraction_of_max": 0.5}
"""Default ``level`` per rule: 0.5% of the FOV (chosen on the synthetic validation split,
docs/choices.md); Otsu has no level; half of the maximum."""

DEFAULT_SMOOTH_SIGMA = 0.0
"""Gaussian smoothing (px) of the map before thresholding; 0 = none."""

DEFAULT_DILATION = 1
"""Radius (px) of the disk the mask is dilated by: the salient pixels of a guided-backprop map sit
on a lesion's edges, and a 1 px ring lets inpainting remove the lesion rather than its outline."""

DEFAULT_MIN_COMPONENT_SIZE = 0
"""8-connected mask components smaller than this (px) are dropped; 0 = keep all."""


# 8-connectivity for mask components: diagonal neighbours belong to the same lesion.
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def disk(radius):
    """Disk structuring element: the pixels within Euclidean distance ``radius`` of the centre.

    Args:
        radius: int >= 0.

    Returns:
        (2 * radius + 1, 2 * radius + 1) uint8 array of 0/1 (radius 1 is the 4-connected cross,
        radius 2 has 13 pixels, as ``skimage.morphology.disk``).
    """
    offsets = np.arange(-radius, radius + 1)
    return (offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius ** 2).astype(np.uint8)


def _check_binarize_options(rule, level, smooth_sigma, dilation, min_component_size):
    if rule not in BINARIZE_RULES:
        raise ValueError(f"Expected rule in {BINARIZE_RULES}. Received: rule={rule!r}")
    if level is None:
        level = DEFAULT_LEVELS[rule]
    elif rule != "otsu" and (not is_real(level) or not 0 < level <= 1):
        raise ValueError(f"Expected level in (0, 1] for rule={rule!r}. Received: level={level!r}")
    if not is_real(smooth_sigma) or not smooth_sigma >= 0:
        raise ValueError(f"Expected smooth_sigma >= 0. Received: smooth_sigma={smooth_sigma!r}")
    if not is_int(dilation) or dilation < 0:
        raise ValueError(f"Expected an integer dilation >= 0. Received: dilation={dilation!r}")
    if not is_int(min_component_size) or min_component_size < 0:
        raise ValueError("Expected an integer min_component_size >= 0. "
                         f"Received: min_component_size={min_component_size!r}")
    return level


def binarize(saliency_map, fov_mask=None, *, rule=DEFAULT_RULE, level=None,
             smooth_sigma=DEFAULT_SMOOTH_SIGMA, dilation=DEFAULT_DILATION,
             min_component_size=DEFAULT_MIN_COMPONENT_SIZE):
    """Turn a saliency map into the mask of pixels to inpaint.

    Steps, in order: optional Gaussian smoothing of the map; thresholding by ``rule`` inside the
    field of view (pixels with value <= 0 are never selected); dilation by a disk of radius
    ``dilation``; restriction to the FOV; removal of 8-connected components smaller than
    ``min_component_size`` pixels.

    Rules:
        - ``"top_fraction"``: the ``round(level * n_fov)`` (at least 1) FOV pixels of highest value,
          or every positive one if fewer are positive. Ties at the cut are broken by raster order
          (row-major: upper, then left pixels first), so the result is deterministic.
        - ``"otsu"``: the map inside the FOV is scaled to 0-255 (``round(255 * v / max)``) and Otsu's
          threshold ``t`` of those values (``cv2.THRESH_OTSU``) keeps the pixels above ``t``.
          ``level`` is ignored.
        - ``"fraction_of_max"``: the pixels >= ``level * max`` (max inside the FOV).

    Args:
        saliency_map: (H, W) float32 (any real dtype), larger = more salient, finite.
        fov_mask: (H, W) bool field of view, or None for the whole image.
        rule: one of :data:`BINARIZE_RULES`.
        level: fraction in (0, 1] for ``"top_fraction"`` (e.g. 0.01 = 1% of the FOV) and
            ``"fraction_of_max"``; None = :data:`DEFAULT_LEVELS` of the rule.
        smooth_sigma: standard deviation (px) of the Gaussian smoothing; 0 = none.
        dilation: radius (px) of the disk the thresholded pixels are dilated by; 0 = none.
        min_component_size: smallest 8-connected component (px) kept; 0 = keep all.

    Returns:
        (H, W) bool mask, False outside the FOV. It can be empty when ``min_component_size`` removes
        every component.

    Raises:
        TypeError: map not real-valued, FOV not bool.
        ValueError: bad shapes or options; a map with NaN/inf; a map with no positive value inside
            the FOV (an all-zero map: there is nothing to choose pixels from).
    """
    smap = check_saliency_map(saliency_map)
    fov = check_fov(fov_mask, smap.shape)
    level = _check_binarize_options(rule, level, smooth_sigma, dilation, min_component_size)

    if smooth_sigma > 0:
        # (0, 0) kernel size: OpenCV derives it from sigma (about 6 sigma wide); much faster than
        # scipy.ndimage.gaussian_filter at 512 px.
        smap = cv2.GaussianBlur(smap, (0, 0), sigmaX=float(smooth_sigma), sigmaY=float(smooth_sigma))
    values = smap[fov]  # FOV pixels in raster order
    vmax = values.max() if values.size else 0.0
    if not vmax > 0:
        raise ValueError("Cannot choose pixels from a saliency map with no positive value inside "
                         f"the field of view (an all-zero map). Received: saliency_map max={vmax!r} "
                         f"over {values.size} FOV pixels")

    if rule == "top_fraction":
        selected = _top_n(values, max(1, int(np.floor(level * values.size + 0.5))))
    elif rule == "otsu":
        scaled = np.rint(np.clip(values, 0, None) * (255.0 / vmax)).astype(np.uint8)
        threshold, _ = cv2.threshold(scaled.reshape(-1, 1), 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        selected = (scaled > threshold) & (values > 0)
    else:  # fraction_of_max
        selected = values >= level * vmax

    mask = np.zeros(smap.shape, dtype=bool)
    mask[fov] = selected
    if dilation > 0:
        mask = cv2.dilate(mask.view(np.uint8), disk(dilation)).view(bool)
        mask &= fov
    if min_component_size > 1:
        labels, _ = ndimage.label(mask, structure=_EIGHT_CONNECTED)
        keep = np.bincount(labels.ravel()) >= min_component_size
        keep[0] = False  # background
        mask = keep[labels]
    return mask


def _top_n(values, n):
    """Boolean selection of the n largest positive values, ties broken by position (first wins)."""
    positive = values > 0
    if np.count_nonzero(positive) <= n:
        return positive
    # The n-th largest value; everything above it is in, and the first of the values equal to it
    # fill the remaining places (np.partition alone would break ties arbitrarily).
    cut = np.partition(values, values.size - n)[values.size - n]
    selected = values > cut
    remaining = n - np.count_nonzero(selected)
    selected[np.flatnonzero(values == cut)[:remaining]] = True
    return selected


# ----------------------------------------------------------------------------- the erase step


@dataclasses.dataclass(frozen=True)
class Eraser:
    """The erase step of the refinement loop: binarise a saliency map, inpaint its mask.

    The options are those of :func:`binarize` (``rule`` .. ``min_component_size``) and of
    :func:`inpaint` (``method``, ``radius``; ``inside_fov`` passes the image's FOV to it, so the
    black surround never bleeds in). They are checked when the Eraser is made; ``level`` None is
    resolved to the rule's default, so two erasers that act alike are equal and store equal
    params.
    """

    rule: str = DEFAULT_RULE
    level: float | None = None
    smooth_sigma: float = DEFAULT_SMOOTH_SIGMA
    dilation: int = DEFAULT_DILATION
    min_component_size: int = DEFAULT_MIN_COMPONENT_SIZE
    method: str = DEFAULT_INPAINT_METHOD
    radius: float = DEFAULT_INPAINT_RADIUS
    inside_fov: bool = True

    def __post_init__(self):
        level = _check_binarize_options(self.rule, self.level, self.smooth_sigma, self.dilation,
                                        self.min_component_size)
        _check_fill_options(self.method, self.radius)
        if not isinstance(self.inside_fov, (bool, np.bool_)):
            raise TypeError(f"Expected inside_fov to be True or False. Received: inside_fov={self.inside_fov!r}")
        object.__setattr__(self, "level", None if level is None else float(level))
        object.__setattr__(self, "inside_fov", bool(self.inside_fov))

    def __call__(self, image, saliency_map, fov_mask=None):
        """Erase what a map marks: ``mask = binarize(map)``, ``I' = inpaint(I, mask)``.

        Args:
            image: (H, W, 3) uint8 RGB, I_i.
            saliency_map: (H, W) float32 s_i, >= 0, 0 outside the FOV.
            fov_mask: (H, W) bool, or None for the whole image.

        Returns:
            (mask, erased): (H, W) bool mask_i, and I_{i+1} as a new (H, W, 3) uint8 array, or
            None when the mask is empty (nothing to erase: the loop stops).
        """
        mask = self.mask(saliency_map, fov_mask)
        return mask, (self.fill(image, mask, fov_mask) if mask.any() else None)

    def mask(self, saliency_map, fov_mask=None):
        """The pixels to erase: :func:`binarize`; an all-zero map (inside the FOV) gives an
        empty mask, not an error: it has nothing left to point at."""
        smap = check_saliency_map(saliency_map)
        fov = check_fov(fov_mask, smap.shape)
        if not smap[fov].max(initial=0) > 0:
            return np.zeros(smap.shape, dtype=bool)
        return binarize(smap, fov, rule=self.rule, level=self.level,
                        smooth_sigma=self.smooth_sigma, dilation=self.dilation,
                        min_component_size=self.min_component_size)

    def fill(self, image, mask, fov_mask=None):
        """``image`` with ``mask`` inpainted (:func:`inpaint`), from inside the FOV if so set."""
        return inpaint(image, mask, method=self.method, radius=self.radius,
                       fov_mask=fov_mask if self.inside_fov else None)

    def to_params(self):
        """The options as a result file stores them (JSON-serialisable, the loop's names)."""
        return {"binarize_rule": self.rule, "binarize_level": self.level,
                "smooth_sigma": float(self.smooth_sigma), "dilation": int(self.dilation),
                "min_component_size": int(self.min_component_size),
                "inpaint_method": self.method,
                "inpaint_radius": self.radius if is_int(self.radius) else float(self.radius),
                "inpaint_inside_fov": self.inside_fov}

    @classmethod
    def from_params(cls, params):
        """The Eraser a result file was made with (:meth:`to_params`' keys; other keys ignored).

        Files written before ``inpaint_inside_fov`` existed filled from the whole image.
        """
        method, radius, inside_fov = stored_fill(params)
        return cls(rule=params["binarize_rule"], level=params["binarize_level"],
                   smooth_sigma=params["smooth_sigma"], dilation=params["dilation"],
                   min_component_size=params["min_component_size"],
                   method=method, radius=radius, inside_fov=inside_fov)
