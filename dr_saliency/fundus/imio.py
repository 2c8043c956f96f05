"""Image and mask file I/O with OpenCV: RGB in memory, atomic writes, clear errors.

OpenCV reads and writes BGR; everything in this package is RGB, so the conversion lives here and
nowhere else. Writes go to a temporary name in the same folder and are renamed into place, so an
interrupted run never leaves a half-written PNG that a later run would take for a finished one.
"""

import os

import cv2
import numpy as np

from dr_saliency.core.checks import check_image
from dr_saliency.core.files import temp_path


# Markers without a length field: TEM, RST0-7, SOI, EOI.
_JPEG_STANDALONE = {0x01, *range(0xD0, 0xDA)}


def _truncated_jpeg(data):
    """Whether ``data`` (a file's bytes) is a JPEG whose image data stops before its end.

    libjpeg decodes a truncated JPEG with only a warning on stderr, filling the missing rows with
    grey, so OpenCV returns an image. A complete JPEG ends its image with the end-of-image marker
    FF D9, which may be followed by anything (cameras and editors append trailers). So the file's
    segments are walked from the start, over their lengths (an EXIF thumbnail's own FF D9 inside
    the APP1 segment is skipped that way) and through each scan's entropy-coded data (where a
    data byte FF is stuffed as FF 00, and FF D0-D7 are restart markers), to the first FF D9
    outside them: running out of bytes before it is a truncation. A structure that is not a
    JPEG's is left to the decoder to judge.
    """
    if data[:2] != b"\xff\xd8":
        return False
    n, pos = len(data), 2
    while True:
        if pos + 2 > n:
            return True
        if data[pos] != 0xFF:
            return False  # not a marker where one must be: not ours to judge
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker == 0xD9:
            return False
        if marker in _JPEG_STANDALONE:
            pos += 2
            continue
        if pos + 4 > n:
            return True
        pos += 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
        if marker != 0xDA:
            continue
        while True:  # entropy-coded data of a scan: up to the next marker
            pos = data.find(b"\xff", pos)
            if pos < 0 or pos + 1 >= n:
                return True
            follower = data[pos + 1]
            if follower == 0x00 or 0xD0 <= follower <= 0xD7 or follower == 0xFF:
                pos += 1 if follower == 0xFF else 2
                continue
            break


def read_bytes(path):
    """The bytes of the file ``path`` (any name the file system holds, also one that is not
    valid UTF-8: Python's own ``open`` reads it, where OpenCV's ``imread`` may crash on it).

    Raises:
        ValueError: when there is no such file.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"Expected an existing image file. Received: path={path!r}")
    with open(path, "rb") as f:
        return f.read()


def decode_image(data, *, orient=False, name="<bytes>"):
    """Decode an image file's bytes as RGB.

    Args:
        data: bytes, the whole file: any format OpenCV decodes (PNG, JPEG, TIFF, ...).
        orient: apply the file's EXIF orientation, as photo viewers show it. Off for datasets,
            whose lesion masks are drawn on the stored pixel grid; on for a user's own
            photographs (``dr-saliency explain``).
        name: str, what the bytes are (a path), for messages.

    Returns:
        ``(H, W, 3)`` uint8 RGB. 16-bit files are scaled to 8 bits; grey images are replicated
        to three channels; an alpha channel is dropped.

    Raises:
        ValueError: when the bytes are not a decodable image, or a truncated JPEG.
    """
    # IMREAD_UNCHANGED ignores EXIF orientation; IMREAD_COLOR | IMREAD_ANYDEPTH applies it and
    # still keeps 16 bits (grey and alpha become 3-channel BGR either way).
    flags = cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH if orient else cv2.IMREAD_UNCHANGED
    image = cv2.imdecode(np.frombuffer(data, np.uint8), flags) if len(data) else None
    if image is None or image.size == 0 or _truncated_jpeg(data):
        raise ValueError(f"Could not decode the image file (unreadable or truncated). Received: path={name!r}")
    if image.dtype == np.uint16:
        image = (image // 257).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise ValueError(f"Expected an 8- or 16-bit image. Received: path={name!r}, dtype={image.dtype}")
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    if image.shape[2] == 4:
        image = image[:, :, :3]
    return np.ascontiguousarray(image[:, :, ::-1])


def read_image(path, *, orient=False):
    """Read a colour image file as RGB: :func:`decode_image` of :func:`read_bytes`.

    Args:
        path: str, any format OpenCV decodes (PNG, JPEG, TIFF, ...).
        orient: as :func:`decode_image`.

    Returns:
        ``(H, W, 3)`` uint8 RGB.

    Raises:
        ValueError: when the file is missing, unreadable or truncated.
    """
    return decode_image(read_bytes(path), orient=orient, name=os.fspath(path))


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
    raw = read_bytes(path)
    data = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_UNCHANGED) if raw else None
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
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(buf.tobytes())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


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
