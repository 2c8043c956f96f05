"""A dataset's fingerprint: which images, graded how, with which image files.

Outputs made from a dataset (a preprocessed folder, and in time result files and training runs)
record it, so that work made from one dataset is never resumed with another
(docs/file-formats.md#dataset-fingerprint). It reads no pixels: one ``stat`` per image file.
"""

import hashlib
import json
import os

import numpy as np

__all__ = ["dataset_fingerprint"]


def dataset_fingerprint(dataset):
    """Hex SHA-256 over the sorted ``(id, grade, image file size)`` of every record.

    The hashed bytes are the UTF-8 JSON text (``separators=(",", ":")``, ``ensure_ascii=False``)
    of the list ``[[id, grade, size], ...]``, sorted by id, then grade, then size (None sorting
    first): ``grade`` an int or null, ``size`` the image file's size in bytes, or null when the
    record has no ``image_path`` or the file cannot be read. Record order, paths and pixels do
    not count: the same images under another folder give the same fingerprint; a record added,
    removed or regraded, or an image file replaced by one of another size, gives another.

    Args:
        dataset: an iterable of records with ``id`` (str), ``grade`` (int 0-4 or None) and
            ``image_path`` (docs/contracts.md), e.g. a :class:`~dr_saliency.fundus.datasets.Dataset`
            or a list of records.

    Returns:
        str, 64 lowercase hex digits.

    Raises:
        TypeError: for a dataset that is not iterable, or a record without a str ``id`` or
            with a grade that is not an int or None.
    """
    try:
        records = iter(dataset)
    except TypeError:
        raise TypeError(f"Expected an iterable of records. Received: dataset of type "
                        f"{type(dataset).__name__}") from None
    rows = []
    for rec in records:
        image_id = getattr(rec, "id", None)
        if not isinstance(image_id, str):
            raise TypeError(f"Expected records with a str id. Received: record={rec!r}")
        grade = getattr(rec, "grade", None)
        if grade is not None:
            if isinstance(grade, bool) or not isinstance(grade, (int, np.integer)):
                raise TypeError(f"Expected an int grade or None. Received: {image_id}: grade={grade!r}")
            grade = int(grade)
        rows.append([image_id, grade, _file_size(getattr(rec, "image_path", None))])
    rows.sort(key=lambda row: (row[0], -1 if row[1] is None else row[1], -1 if row[2] is None else row[2]))
    text = json.dumps(rows, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _file_size(path):
    if path is None:
        return None
    try:
        return os.stat(path).st_size
    except (OSError, TypeError, ValueError):
        return None
