"""Argument checks shared by every wing: numbers, images, field-of-view masks, saliency maps.

One contract each (docs/contracts.md#arrays): an image is an (H, W, 3) uint8 RGB numpy array; a
field-of-view (FOV) mask is an (H, W) bool array of the image's size, and None means the whole
image; a saliency map is a finite real (H, W) array, returned as float32. Errors state what was
expected and ``Received: name=value`` (docs/conventions.md).

Where a check runs over a batch, ``index`` says which item failed: the error is then an
:class:`ImageError` (a ``ValueError`` carrying ``.index``), so that a caller can drop that item
and run the others again.
"""

import numbers

import numpy as np

__all__ = ["ImageError", "check_fov", "check_image", "check_saliency_map", "is_int", "is_real"]


class ImageError(ValueError):
    """A bad image (or its FOV, or its saliency map) in a batch; ``index`` is its position."""

    def __init__(self, message, index):
        super().__init__(message)
        self.index = index


def is_int(value):
    """True for an integer that is not a bool (``True`` is an ``Integral`` in Python)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value):
    """True for a real number that is not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _fail(error, message, index):
    raise (error(message) if index is None else ImageError(message, index))


def check_image(image, name="image", *, index=None):
    """Check an RGB image and return it unchanged.

    Args:
        image: (H, W, 3) uint8 numpy array, H, W >= 1.
        name: how the argument is named in error messages.
        index: position in a batch, or None.

    Returns:
        The same array.

    Raises:
        TypeError: not a numpy array (ImageError when ``index`` is given).
        ValueError: wrong dtype or shape.
    """
    if not isinstance(image, np.ndarray):
        _fail(TypeError, "Expected an (H, W, 3) uint8 RGB numpy array. "
                         f"Received: {name} of type {type(image).__name__}", index)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
        _fail(ValueError, "Expected a non-empty (H, W, 3) uint8 RGB image. "
                          f"Received: {name}.shape={image.shape}, {name}.dtype={image.dtype}", index)
    return image


def check_fov(fov_mask, shape, name="fov_mask", *, index=None):
    """Check a field-of-view mask; None means the whole image.

    Only bool is accepted: a 0/255 uint8 PNG passed by mistake would work, but a float
    probability map would silently not, and the contract says bool.

    Args:
        fov_mask: (H, W) bool array, or None.
        shape: the (H, W) it must have (or (N, H, W) for a batch of masks).
        name: how the argument is named in error messages.
        index: position in a batch, or None.

    Returns:
        bool array of ``shape`` (all True for None).

    Raises:
        TypeError: not bool (ImageError when ``index`` is given).
        ValueError: wrong shape.
    """
    shape = tuple(int(s) for s in shape)
    if fov_mask is None:
        return np.ones(shape, dtype=bool)
    fov = np.asarray(fov_mask)
    if fov.dtype != bool:
        _fail(TypeError, f"Expected a bool field-of-view mask of shape {shape}. "
                         f"Received: {name}.dtype={fov.dtype}", index)
    if fov.shape != shape:
        _fail(ValueError, f"Expected a bool field-of-view mask of shape {shape}. "
                          f"Received: {name}.shape={fov.shape}", index)
    return fov


def check_saliency_map(saliency_map, name="saliency_map"):
    """Check a saliency map and return it as float32 (no copy when it already is).

    Args:
        saliency_map: (H, W) real array, larger = more salient.
        name: how the argument is named in error messages.

    Returns:
        (H, W) float32 array.

    Raises:
        TypeError: not real-valued.
        ValueError: not 2-D, or holding NaN or infinite values.
    """
    array = np.asarray(saliency_map)
    if array.dtype == bool or not (np.issubdtype(array.dtype, np.integer)
                                   or np.issubdtype(array.dtype, np.floating)):
        raise TypeError(f"Expected a real-valued saliency map. Received: {name}.dtype={array.dtype}")
    if array.ndim != 2:
        raise ValueError(f"Expected a saliency map of shape (H, W). Received: {name}.shape={array.shape}")
    array = array.astype(np.float32, copy=False)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"Expected a finite saliency map. Received: {name} containing NaN or "
                         "infinite values (did the network diverge?)")
    return array
