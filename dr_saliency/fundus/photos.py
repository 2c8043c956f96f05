"""A researcher's own photographs: found in files and folders, read as photo viewers show them,
and cropped to the model's input with the geometry kept, so that maps go back onto the photograph.

No labels, no dataset layout: a photograph is a file. Each becomes a :class:`Photo` record that
:func:`dr_saliency.refinement.run.refine_dataset` can refine like a dataset record; its
:attr:`Photo.geometry` records where the model's square came from (:class:`~.fov.SquareBox`), so
:func:`~.fov.restore_geometry` and :meth:`~.fov.SquareBox.to_source` map results back.

numpy / OpenCV: no TensorFlow here.

Public API::

    PHOTO_EXTENSIONS, MIN_PHOTO_SIZE
    find_photos(inputs) -> (photos, ignored)
    Photo(id, image_path, size).load_image() / .load_fov(image) / .geometry / .box
    read_photo(path) -> (H, W, 3) uint8
"""

import dataclasses
import os

import numpy as np

from dr_saliency.core.errors import BadImageError
from dr_saliency.fundus.fov import SquareBox, fov_mask, preprocess_image, square_crop_box
from dr_saliency.fundus.imio import read_image

__all__ = ["MIN_PHOTO_SIZE", "PHOTO_EXTENSIONS", "Photo", "find_photos", "read_photo"]

#: File suffixes taken from a folder (case-insensitive); other files in a folder are listed as
#: ignored. A file named on the command line is read whatever its suffix.
PHOTO_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp", ".jp2", ".ppm")

#: Smallest side of a photograph: below it there is no fundus detail left to explain.
MIN_PHOTO_SIZE = 64

# A photograph whose grey levels span fewer levels than this (all black, all white, one
# colour) has no field of view to find.
_BLANK_RANGE = 8


def find_photos(inputs):
    """The photographs named by files and folders (a folder: its image files, not its subfolders).

    Args:
        inputs: sequence of str paths, files or folders.

    Returns:
        ``(photos, ignored)``: list of ``(id, path)`` in the order given (a folder's files sorted
        by name), the id being the file name without its suffix; list of paths of the files in
        the folders that are not images by their suffix (hidden files are not listed).

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
            raise ValueError(f"Expected photograph files or folders that exist. Received: path={path!r}")
    out = []
    for path in photos:
        image_id = os.path.splitext(os.path.basename(path))[0]
        if image_id in seen:
            if os.path.abspath(seen[image_id]) == os.path.abspath(path):
                continue  # named twice: once is enough
            raise ValueError(f"Expected one photograph per name (results are kept by name). "
                             f"Received: {seen[image_id]!r} and {path!r} are both {image_id!r}")
        seen[image_id] = path
        out.append((image_id, path))
    return out, ignored


def read_photo(path):
    """Read a photograph as a photo viewer shows it (EXIF orientation applied), and check it.

    Args:
        path: str, an image file: JPEG, PNG, TIFF, ..., 8 or 16 bits, grey, RGB or RGBA.

    Returns:
        ``(H, W, 3)`` uint8 RGB.

    Raises:
        BadImageError: unreadable or truncated, smaller than ``MIN_PHOTO_SIZE``, or blank.
    """
    try:
        image = read_image(path, orient=True)
    except ValueError as exc:
        raise BadImageError(os.fspath(path), "could not decode the file as an image "
                                             "(unreadable, truncated, or not an image)") from exc
    height, width = image.shape[:2]
    if min(height, width) < MIN_PHOTO_SIZE:
        raise BadImageError(os.fspath(path), f"Expected a photograph of at least {MIN_PHOTO_SIZE} "
                                             f"px a side. Received: {width}x{height} px")
    grey = image.max(axis=2)
    low, high = int(grey.min()), int(grey.max())
    if high - low < _BLANK_RANGE:
        raise BadImageError(os.fspath(path), f"no field of view to find: the image is blank "
                                             f"(grey levels {low}-{high})")
    return image


@dataclasses.dataclass
class Photo:
    """One photograph as a record :func:`~dr_saliency.refinement.run.refine_dataset` refines.

    :meth:`load_image` reads the photograph, finds its field of view and returns the model's
    square input; afterwards :attr:`box` and :attr:`geometry` say where the square came from.

    Attributes:
        id: str, the file name without its suffix.
        image_path: str.
        size: int, the model's input side.
        box: :class:`~dr_saliency.fundus.fov.SquareBox` after :meth:`load_image`, else None.
        shape: ``(H, W)`` of the photograph after :meth:`load_image`, else None.
    """

    id: str
    image_path: str
    size: int
    box: SquareBox = None
    shape: tuple = None
    _fov: np.ndarray = dataclasses.field(default=None, repr=False)

    def load_image(self, photo=None):
        """The model's input: the photograph cropped to its field of view, squared and resized.

        Args:
            photo: optional ``(H, W, 3)`` uint8, the photograph already read
                (:func:`read_photo`); read from :attr:`image_path` when None.

        Returns:
            ``(size, size, 3)`` uint8 RGB, black outside the field of view.

        Raises:
            BadImageError: as :func:`read_photo`, or when no field of view is found.
        """
        photo = read_photo(self.image_path) if photo is None else photo
        fov = fov_mask(photo)
        if fov.sum() < 0.01 * fov.size:
            raise BadImageError(self.image_path, "no field of view found (is it a fundus "
                                                 "photograph? an all-dark image has none)")
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
