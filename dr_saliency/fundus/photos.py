"""A researcher's own photographs: found in files and folders, read as photo viewers show them,
and cropped to the model's input with the geometry kept, so that maps go back onto the photograph.

No labels, no dataset layout: a photograph is a file. Each becomes a :class:`Photo` record that
:func:`dr_saliency.refinement.run.refine_dataset` can refine like a dataset record; its
:attr:`Photo.geometry` records where the model's square came from (:class:`~.fov.SquareBox`), so
:func:`~.fov.restore_geometry` and :meth:`~.fov.SquareBox.to_source` map results back, and its
:attr:`Photo.sha256` which photograph it was (its bytes), so that results are reused by content.

An image that does not look like a fundus photograph (noise, a page, a scene) is refused
(:func:`fundus_problem`), with limits measured on real photographs (docs/preprocessing.md).

numpy / OpenCV: no TensorFlow here.

Public API::

    PHOTO_EXTENSIONS, MIN_PHOTO_SIZE
    find_photos(inputs) -> (photos, ignored)
    Photo(id, image_path, size).read() / .load_image() / .load_fov(image) / .geometry / .box
        / .sha256 / .record
    read_photo(path) -> (H, W, 3) uint8
    fundus_measures(image, fov) -> dict;  fundus_problem(image, fov) -> str or None
    printable(path) -> str
"""

import dataclasses
import hashlib
import os

import cv2
import numpy as np

from dr_saliency.core.errors import BadImageError
from dr_saliency.fundus.fov import SquareBox, fov_mask, preprocess_image, square_crop_box
from dr_saliency.fundus.imio import decode_image, read_bytes

__all__ = ["FUNDUS_LIMITS", "MIN_PHOTO_SIZE", "PHOTO_EXTENSIONS", "Photo", "find_photos",
           "fundus_measures", "fundus_problem", "printable", "read_photo"]

#: File suffixes taken from a folder (case-insensitive); other files in a folder are listed as
#: ignored. A file named on the command line is read whatever its suffix.
PHOTO_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp", ".jp2", ".ppm")

#: Smallest side of a photograph: below it there is no fundus detail left to explain.
MIN_PHOTO_SIZE = 64

# A photograph whose grey levels span fewer levels than this (all black, all white, one
# colour) has no field of view to find.
_BLANK_RANGE = 8

#: What a fundus photograph is, as limits on :func:`fundus_measures`. Measured on the 36 real
#: photographs of ../shared/realdata (IDRiD, DIARETDB1, EyePACS) and the 4 of data/examples,
#: extremes in brackets, and on what must be refused
#: (docs/preprocessing.md#not-a-fundus-photograph-fundus_problem):
#:
#: - ``fov``: at most this fraction of the image is field of view, the rest the dark surround
#:   of the camera's round aperture [real 0.47-0.83; random noise and a page of text 1.00];
#: - ``surround``: the surround's median brightness over the field of view's, at most
#:   [real 0.000-0.032];
#: - ``texture``: fine-grained texture inside the field of view (mean absolute difference from a
#:   Gaussian blur of 1.5 px on a copy at most 256 px long, over the mean), at most [real
#:   0.007-0.023; noise 0.093, the page 0.053, a portrait photograph 0.071];
#: - ``red_blue``: mean red over mean blue inside it, at least (the retina is red to orange; a
#:   grey red-free photograph is 1) [real 1.24-149].
FUNDUS_LIMITS = {"fov": 0.95, "surround": 0.25, "texture": 0.04, "red_blue": 0.9}

_MEASURE_SIDE = 512
_TEXTURE_SIDE = 256
_TEXTURE_SIGMA = 1.5


def find_photos(inputs):
    """The photographs named by files and folders (a folder: its image files, not its subfolders).

    Args:
        inputs: sequence of str paths, files or folders.

    Returns:
        ``(photos, ignored)``: list of ``(id, path)`` in the order given (a folder's files sorted
        by name), the id being the file name without its suffix (:func:`printable`: bytes that
        are not UTF-8 written as ``\\xNN``); list of paths of the files in the folders that are
        not images by their suffix (hidden files are not listed).

    Raises:
        ValueError: no inputs, a path that does not exist, or two photographs with one id
            (naming both).
    """
    if isinstance(inputs, (str, os.PathLike)) or not inputs:
        raise ValueError(f"Expected a list of photograph files or folders. Received: inputs={inputs!r}")
    photos, ignored, seen = [], [], {}
    for item in inputs:
        path = os.fspath(item)
        if os.path.isdir(path):
            names = sorted(n for n in os.listdir(path) if not n.startswith("."))
            files = [os.path.join(path, n) for n in names if os.path.isfile(os.path.join(path, n))]
            for f in files:
                (photos if f.lower().endswith(PHOTO_EXTENSIONS) else ignored).append(f)
        elif os.path.isfile(path):
            photos.append(path)
        else:
            raise ValueError(f"Expected photograph files or folders that exist. "
                             f"Received: path={printable(path)!r}")
    out = []
    for path in photos:
        image_id = printable(os.path.splitext(os.path.basename(path))[0])
        if image_id in seen:
            if os.path.abspath(seen[image_id]) == os.path.abspath(path):
                continue  # named twice: once is enough
            raise ValueError(f"Expected one photograph per name (results are kept by name). "
                             f"Received: {printable(seen[image_id])!r} and {printable(path)!r} "
                             f"are both {image_id!r}")
        seen[image_id] = path
        out.append((image_id, path))
    return out, ignored


def printable(path):
    """``path`` as text that can be printed and written to UTF-8 files: a name the file system
    holds that is not valid UTF-8 has its bad bytes written as ``\\xNN`` (Python keeps them as
    lone surrogates, which no UTF-8 output takes)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def read_photo(path, data=None):
    """Read a photograph as a photo viewer shows it (EXIF orientation applied), and check it.

    Args:
        path: str, an image file: JPEG, PNG, TIFF, ..., 8 or 16 bits, grey, RGB or RGBA.
        data: optional bytes, the file's content already read (then ``path`` names it only).

    Returns:
        ``(H, W, 3)`` uint8 RGB.

    Raises:
        BadImageError: unreadable or truncated, smaller than ``MIN_PHOTO_SIZE``, or blank; the
            image is named by :func:`printable` ``(path)``.
    """
    name = printable(path)
    try:
        image = decode_image(read_bytes(path) if data is None else data, orient=True, name=name)
    except ValueError as exc:
        raise BadImageError(name, "could not decode the file as an image "
                                  "(unreadable, truncated, or not an image)") from exc
    height, width = image.shape[:2]
    if min(height, width) < MIN_PHOTO_SIZE:
        raise BadImageError(name, f"Expected a photograph of at least {MIN_PHOTO_SIZE} "
                                  f"px a side. Received: {width}x{height} px")
    grey = image.max(axis=2)
    low, high = int(grey.min()), int(grey.max())
    if high - low < _BLANK_RANGE:
        raise BadImageError(name, f"no field of view to find: the image is blank "
                                  f"(grey levels {low}-{high})")
    return image


def fundus_measures(image, fov):
    """What tells a fundus photograph from other images (the keys of ``FUNDUS_LIMITS``).

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        fov: ``(H, W)`` bool, its field of view (:func:`~dr_saliency.fundus.fov.fov_mask`), not
            empty.

    Returns:
        dict of float: ``fov`` (fraction of the image), ``surround`` (median brightness outside
        the FOV over inside; 1 when less than 1% of the image is outside), ``texture``,
        ``red_blue``; brightness is the maximum over the colour channels.
    """
    # Measured on a copy of at most _MEASURE_SIDE px (area averaging), so that they do not
    # depend on the photograph's size and cost little on a 4288 px one.
    k = min(1.0, _MEASURE_SIDE / max(image.shape[:2]))
    image = cv2.resize(image, None, fx=k, fy=k, interpolation=cv2.INTER_AREA)
    fov = cv2.resize(fov.astype(np.uint8), image.shape[1::-1], interpolation=cv2.INTER_NEAREST) > 0
    if not fov.any():
        fov = np.ones(fov.shape, bool)
    grey = image.max(axis=2).astype(np.float32)
    inside = float(np.median(grey[fov]))
    outside = float(np.median(grey[~fov])) if (~fov).mean() >= 0.01 else inside
    # Texture at most _TEXTURE_SIDE px: area averaging smooths JPEG noise and the finest vessels
    # of a large photograph alike, and leaves noise as noise.
    k = min(1.0, _TEXTURE_SIDE / max(grey.shape))
    small = cv2.resize(grey, None, fx=k, fy=k, interpolation=cv2.INTER_AREA)
    inner = cv2.resize(fov.astype(np.uint8), small.shape[::-1], interpolation=cv2.INTER_NEAREST)
    inner = cv2.erode(inner, np.ones((7, 7), np.uint8)) > 0  # away from the FOV's edge
    if not inner.any():
        inner = np.ones_like(inner, bool)
    detail = np.abs(small - cv2.GaussianBlur(small, (0, 0), _TEXTURE_SIGMA))
    red, blue = (float(image[..., c][fov].mean()) for c in (0, 2))
    return {"fov": float(fov.mean()), "surround": outside / max(inside, 1.0),
            "texture": float(detail[inner].mean()) / max(float(small[inner].mean()), 1.0),
            "red_blue": red / max(blue, 1.0)}


def fundus_problem(image, fov):
    """Why ``image`` does not look like a fundus photograph, or None when it does.

    Args:
        image, fov: as :func:`fundus_measures`.

    Returns:
        str (one clause, with the measure and its limit) or None.
    """
    m, limit = fundus_measures(image, fov), FUNDUS_LIMITS
    if m["fov"] > limit["fov"]:
        return (f"no dark surround around a round field of view (the bright area covers "
                f"{m['fov']:.0%} of the image, a fundus photograph's at most {limit['fov']:.0%})")
    if m["surround"] > limit["surround"]:
        return (f"the surround of the bright area is not dark (brightness {m['surround']:.2f} "
                f"of the inside, a fundus photograph's at most {limit['surround']})")
    if m["texture"] > limit["texture"]:
        return (f"too much fine-grained texture, as in noise or print (texture {m['texture']:.3f}, "
                f"a fundus photograph's at most {limit['texture']})")
    if m["red_blue"] < limit["red_blue"]:
        return (f"bluer than red (red/blue {m['red_blue']:.2f}, a fundus photograph's at least "
                f"{limit['red_blue']})")
    return None


@dataclasses.dataclass
class Photo:
    """One photograph as a record :func:`~dr_saliency.refinement.run.refine_dataset` refines.

    :meth:`load_image` reads the photograph, finds its field of view and returns the model's
    square input; afterwards :attr:`box` and :attr:`geometry` say where the square came from,
    :attr:`sha256` which bytes were read.

    Attributes:
        id: str, the file name without its suffix (:func:`printable`).
        image_path: str, the file (as the file system names it).
        size: int, the model's input side.
        box: :class:`~dr_saliency.fundus.fov.SquareBox` after :meth:`load_image`, else None.
        shape: ``(H, W)`` of the photograph after :meth:`load_image`, else None.
        sha256: str, hex SHA-256 of the file's bytes after :meth:`read`, else None.
    """

    id: str
    image_path: str
    size: int
    box: SquareBox = None
    shape: tuple = None
    sha256: str = None
    _fov: np.ndarray = dataclasses.field(default=None, repr=False)

    @property
    def name(self):
        """The file's path as printable text (:func:`printable`), for messages and tables."""
        return printable(self.image_path)

    def read(self):
        """The photograph (:func:`read_photo`), its bytes' SHA-256 kept in :attr:`sha256`."""
        try:
            data = read_bytes(self.image_path)
        except (OSError, ValueError) as exc:
            raise BadImageError(self.name, f"could not read the file ({exc})") from exc
        self.sha256 = hashlib.sha256(data).hexdigest()
        return read_photo(self.image_path, data)

    def load_image(self, photo=None):
        """The model's input: the photograph cropped to its field of view, squared and resized.

        Args:
            photo: optional ``(H, W, 3)`` uint8, the photograph already read (:meth:`read`);
                read from :attr:`image_path` when None.

        Returns:
            ``(size, size, 3)`` uint8 RGB, black outside the field of view.

        Raises:
            BadImageError: as :func:`read_photo`, when no field of view is found, or when the
                image does not look like a fundus photograph (:func:`fundus_problem`).
        """
        photo = self.read() if photo is None else photo
        fov = fov_mask(photo)
        if fov.sum() < 0.01 * fov.size:
            raise BadImageError(self.name, "no field of view found (is it a fundus "
                                           "photograph? an all-dark image has none)")
        problem = fundus_problem(photo, fov)
        if problem:
            raise BadImageError(self.name, f"does not look like a fundus photograph: {problem}")
        image, _, self._fov = preprocess_image(photo, self.size, fov=fov)
        self.box, self.shape = square_crop_box(fov), tuple(photo.shape[:2])
        return image

    def load_fov(self, image):
        """The field of view of the model's input (after :meth:`load_image`), ``(size, size)`` bool."""
        if self._fov is None:
            raise ValueError(f"Expected load_image() before load_fov(). Received: photo {self.id!r}")
        return self._fov

    @property
    def geometry(self):
        """JSON-ready: the photograph's ``height`` and ``width`` and the square ``box``
        ``[top, left, side]`` in its pixels (after :meth:`load_image`)."""
        if self.box is None:
            raise ValueError(f"Expected load_image() before geometry. Received: photo {self.id!r}")
        return {"height": int(self.shape[0]), "width": int(self.shape[1]),
                "box": [int(self.box.top), int(self.box.left), int(self.box.side)]}

    @property
    def record(self):
        """JSON-ready, what a result records of the photograph (after :meth:`load_image`):
        :attr:`geometry`, its ``sha256`` and its absolute ``path`` (as ``os.fsdecode`` gives
        it: a name that is not UTF-8 keeps its bytes as lone surrogates, which JSON escapes)."""
        if self.sha256 is None:
            raise ValueError(f"Expected load_image() before record. Received: photo {self.id!r}")
        return {**self.geometry, "sha256": self.sha256, "path": os.path.abspath(self.image_path)}
