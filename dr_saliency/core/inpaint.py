"""Inpainting: fill the masked pixels of an image from their surroundings (from inside the field
of view when it is given), and how a result file records the fill.

The refinement's erase step (:class:`dr_saliency.refinement.erase.Eraser`) fills with it; lesion
figures replay a stored run's fills with it (:func:`stored_fill`) without the erase step.
numpy / OpenCV / scipy: no TensorFlow here.
"""

import cv2
import numpy as np
from scipy import ndimage

from dr_saliency.core.checks import check_fov, check_image, is_real

__all__ = ["DEFAULT_INPAINT_METHOD", "DEFAULT_INPAINT_RADIUS", "INPAINT_METHODS", "inpaint",
           "stored_fill"]

INPAINT_METHODS = {"ns": cv2.INPAINT_NS, "telea": cv2.INPAINT_TELEA}
"""``method`` of :func:`inpaint` -> OpenCV flag: Navier-Stokes (Bertalmio et al. 2001, the
paper's choice) or fast marching (Telea 2004)."""

DEFAULT_INPAINT_METHOD = "ns"
"""The paper's inpainting method."""

DEFAULT_INPAINT_RADIUS = 3
"""Neighbourhood radius (px) that ``cv2.inpaint`` fills each pixel from (the paper does not say)."""


def inpaint(image, mask, *, method=DEFAULT_INPAINT_METHOD, radius=DEFAULT_INPAINT_RADIUS,
            fov_mask=None):
    """Fill the masked pixels of an image from their surroundings.

    ``cv2.inpaint`` with ``cv2.INPAINT_NS`` (Navier-Stokes, Bertalmio et al., CVPR 2001; the
    method of González-Gonzalo et al., MIDL 2018) or ``cv2.INPAINT_TELEA`` (fast marching, Telea,
    J. Graphics Tools 2004). Both treat the three channels alike, so RGB order is kept as it is.
    Only masked pixels change.

    With ``fov_mask``, the fill takes colour from inside the field of view only: within reach of
    the mask, every pixel outside the FOV is first given the colour of the nearest known fundus
    pixel (inside the FOV and not masked), then restored afterwards. Masked pixels outside the
    FOV are left as they are.

    Args:
        image: (H, W, 3) uint8 RGB image.
        mask: (H, W) bool, True where the image is to be filled.
        method: ``"ns"`` or ``"telea"`` (:data:`INPAINT_METHODS`).
        radius: neighbourhood radius (px) each filled pixel is computed from, >= 1.
        fov_mask: (H, W) bool field of view, or None: every pixel is fundus (plain ``cv2.inpaint``).

    Returns:
        (H, W, 3) uint8 RGB image, a new array (a copy when the mask is empty).

    Raises:
        TypeError: image not a numpy array, mask not bool.
        ValueError: wrong dtype or shapes, unknown method, radius < 1.
    """
    check_image(image)
    if not isinstance(mask, np.ndarray) or mask.dtype != bool:
        raise TypeError("Expected a bool mask. Received: "
                        f"mask.dtype={getattr(mask, 'dtype', type(mask).__name__)}")
    if mask.shape != image.shape[:2]:
        raise ValueError(f"Expected a mask of shape {image.shape[:2]}. Received: mask.shape={mask.shape}")
    _check_fill_options(method, radius)

    fov = None if fov_mask is None else check_fov(fov_mask, image.shape[:2])
    if fov is not None:
        mask = mask & fov
    if not mask.any():
        return image.copy()
    if fov is None or fov.all():
        return _cv_inpaint(image, mask, radius, method)
    # Work in the mask's bounding box grown by the fill's reach: only pixels there can be read.
    reach = int(np.ceil(radius)) + 2
    rows, cols = np.nonzero(mask)
    r0, r1 = max(rows.min() - reach, 0), min(rows.max() + reach + 1, mask.shape[0])
    c0, c1 = max(cols.min() - reach, 0), min(cols.max() + reach + 1, mask.shape[1])
    window_fov = fov[r0:r1, c0:c1]
    out = image.copy()
    if window_fov.all():
        out[r0:r1, c0:c1] = _cv_inpaint(image[r0:r1, c0:c1], mask[r0:r1, c0:c1], radius, method)
        return out
    window = image[r0:r1, c0:c1]
    known = window_fov & ~mask[r0:r1, c0:c1]
    if not known.any():  # nothing known nearby: fill from the whole image as cv2 would
        return _cv_inpaint(image, mask, radius, method)
    # The index of the nearest known fundus pixel, for every pixel of the window.
    _, (near_r, near_c) = ndimage.distance_transform_edt(~known, return_indices=True)
    extended = window[near_r, near_c]
    extended[known] = window[known]
    filled = _cv_inpaint(extended, mask[r0:r1, c0:c1], radius, method)
    out[r0:r1, c0:c1] = np.where(window_fov[:, :, None], filled, window)
    return out


def _cv_inpaint(image, mask, radius, method):
    # A bool array is one byte of 0/1 per pixel: viewing it as uint8 avoids a copy; cv2.inpaint
    # treats any non-zero mask value as "fill".
    return cv2.inpaint(np.ascontiguousarray(image), np.ascontiguousarray(mask).view(np.uint8),
                       float(radius), INPAINT_METHODS[method])


def _check_fill_options(method, radius):
    if method not in INPAINT_METHODS:
        raise ValueError(f"Expected method in {tuple(INPAINT_METHODS)}. Received: method={method!r}")
    if not is_real(radius) or not radius >= 1:
        raise ValueError(f"Expected radius >= 1. Received: radius={radius!r}")


def stored_fill(params):
    """``(method, radius, inside_fov)`` of the fill a result file's params record (the Eraser's
    ``inpaint_*`` keys). Files written before ``inpaint_inside_fov`` existed filled from the whole
    image."""
    return (params["inpaint_method"], params["inpaint_radius"],
            params.get("inpaint_inside_fov", False))
