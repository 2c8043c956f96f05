"""Image and mask file I/O with OpenCV: RGB in memory, atomic writes, clear errors.

OpenCV reads and writes BGR; everything in this package is RGB, so the conversion lives here and
nowhere else. Writes go to a temporary name in the same folder and are renamed into place, so an
interrupted run never leaves a half-written PNG that a later run would take for a finished one.
"""

import os

import cv2
import numpy as np

from dr_saliency.core.checks import check_image


def _truncated_jpeg(path):
    # libjpeg decodes a truncated JPEG with only a warning on stderr, filling the missing rows
    # with grey, so OpenCV returns an image. A complete JPEG ends with the end-of-image marker
    # FF D9; some writers pad after it, hence a search of the last KiB rather than the last two
    # bytes (FF D9 cannot occur inside the entropy-coded data, where FF is stuffed as FF 00).
    with open(path, "rb") as f:
        if f.read(2) != b"\xff\xd8":
            return False
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 1024))
        return b"\xff\xd9" not in f.read()


def read_image(path, *, orient=False):
    """Read a colour image file as RGB.

    Args:
        path: str, any format OpenCV decodes (PNG, JPEG, TIFF, ...).
        orient: apply the file's EXIF orientation, as photo viewers show it. Off for datasets,
            whose lesion masks are drawn on the stored pixel grid; on for a user's own
            photographs (``dr-saliency explain``).

    Returns:
        ``(H, W, 3)`` uint8 RGB. 16-bit files are scaled to 8 bits; grey images are replicated
        to three channels; an alpha channel is dropped.

    Raises:
        ValueError: when the file is missing, unreadable or truncated.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"Expected an existing image file. Received: path={path!r}")
    # IMREAD_UNCHANGED ignores EXIF orientation; IMREAD_COLOR | IMREAD_ANYDEPTH applies it and
    # still keeps 16 bits (grey and alpha become 3-channel BGR either way).
    flags = cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH if orient else cv2.IMREAD_UNCHANGED
    data = cv2.imread(path, flags)
    if data is None or data.size == 0 or _truncated_jpeg(path):
        raise ValueError(f"Could not decode the image file (unreadable or truncated). Received: path={path!r}")
    if data.dtype == np.uint16:
        data = (data // 257).astype(np.uint8)
    elif data.dtype != np.uint8:
        raise ValueError(f"Expected an 8- or 16-bit image. Received: path={path!r}, dtype={data.dtype}")
    if data.ndim == 2:
        return np.repeat(data[:, :, None], 3, axis=2)
    if data.shape[2] == 4:
        data = data[:, :, :3]
    return np.ascontiguousarray(data[:, :, ::-1])


def read_mask(path, shape=None):
    """Read a lesion or field-of-view mask: any non-zero colour channel is foreground.

    Args:
        path: str, image file (PNG, TIFF, ...), grey, RGB or RGBA; an alpha channel is ignored
            (IDRiD ships one RGBA mask with alpha 255 everywhere).
        shape: optional (H, W) the mask must have (its image's size).

    Returns:
        ``(H, W)`` bool.

    Raises:
        ValueError: when the file is unreadable or its size differs from ``shape``.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"Expected an existing mask file. Received: path={path!r}")
    data = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if data is None or data.size == 0:
        raise ValueError(f"Could not decode the mask file (unreadable or truncated). Received: path={path!r}")
    if data.ndim == 3:
        data = data[:, :, :3].any(axis=2)
    mask = data > 0
    if shape is not None and tuple(mask.shape) != tuple(shape[:2]):
        raise ValueError(
            f"Expected a mask of the image's size {tuple(shape[:2])}. "
            f"Received: path={path!r}, size={mask.shape}"
        )
    return mask


def _atomic_write(path, ok_and_buffer):
    path = os.fspath(path)
    ok, buf = ok_and_buffer
    if not ok:
        raise ValueError(f"OpenCV could not encode the image. Received: path={path!r}")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(buf.tobytes())
    os.replace(tmp, path)


def write_image(path, image):
    """Write an RGB image atomically; the format follows the suffix (PNG is lossless).

    Args:
        path: str, e.g. ``images/x.png``.
        image: ``(H, W, 3)`` uint8 RGB.

    Raises:
        ValueError: for a wrong shape or dtype.
    """
    check_image(np.asarray(image))
    ext = os.path.splitext(os.fspath(path))[1] or ".png"
    _atomic_write(path, cv2.imencode(ext, np.ascontiguousarray(image[:, :, ::-1])))


def write_mask(path, mask):
    """Write a bool mask atomically as a 0/255 single-channel PNG.

    Args:
        path: str ending in ``.png``.
        mask: ``(H, W)`` bool (or anything whose non-zero pixels are foreground).

    Raises:
        ValueError: for a mask that is not 2-D.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"Expected an (H, W) mask. Received: shape={mask.shape}")
    _atomic_write(path, cv2.imencode(".png", (mask > 0).astype(np.uint8) * 255))
