"""The package's own dataset folder layout (docs/file-formats.md): writer and reader.

```
labels.csv                 image,level[,split]     (as Kaggle's trainLabels.csv, plus a split)
images/<image>.png         RGB (the reader also takes .jpg/.jpeg/.tif)
masks/<TYPE>/<image>.png   0/255, TYPE in MA, HE, EX, SE (only where the type is annotated)
fov/<image>.png            0/255 field of view (optional)
```
"""

import csv
import os

from dr_saliency.fundus.datasets.base import (
    LESION_TYPES,
    Record,
    image_level_rows,
    list_files,
    parse_split,
    read_table,
)
from dr_saliency.fundus.imio import write_image, write_mask

LABELS_FILE = "labels.csv"

NAME = "folder"
LOOKED_FOR = "labels.csv + images/ (folder)"
OPTIONS = ()


def write_sample(root, image_id, image, masks=None, fov=None):
    """Write one image with its lesion masks and field of view into a dataset folder.

    Masks and FOV are written before the image, so that a folder whose image exists is complete
    for that sample (each file is itself written atomically).

    Args:
        root: str, dataset folder.
        image_id: str, file stem (no suffix, no path separators).
        image: ``(H, W, 3)`` uint8 RGB.
        masks: optional dict ``{type: (H, W) bool}`` with types from ``LESION_TYPES``; a type
            present with an all-false mask means "annotated, no lesion of that type".
        fov: optional ``(H, W)`` bool field-of-view mask.

    Returns:
        str, the path of the written image.

    Raises:
        ValueError: for a bad id, an unknown lesion type, or a mask whose size differs.
    """
    image_id = str(image_id)
    if not image_id or os.sep in image_id or "/" in image_id or image_id.startswith("."):
        raise ValueError(f"Expected an image id usable as a file stem. Received: image_id={image_id!r}")
    shape = tuple(image.shape[:2])
    for kind, mask in (masks or {}).items():
        if kind not in LESION_TYPES:
            raise ValueError(f"Expected lesion types among {LESION_TYPES}. Received: type={kind!r}")
        if tuple(mask.shape) != shape:
            raise ValueError(f"Expected a {kind} mask of size {shape}. Received: size={tuple(mask.shape)}, image_id={image_id!r}")
        write_mask(os.path.join(root, "masks", kind, image_id + ".png"), mask)
    if fov is not None:
        if tuple(fov.shape) != shape:
            raise ValueError(f"Expected a FOV mask of size {shape}. Received: size={tuple(fov.shape)}, image_id={image_id!r}")
        write_mask(os.path.join(root, "fov", image_id + ".png"), fov)
    path = os.path.join(root, "images", image_id + ".png")
    write_image(path, image)
    return path


def write_labels(root, rows):
    """Write ``labels.csv`` atomically.

    Args:
        root: str, dataset folder.
        rows: iterable of dicts with keys ``image`` and ``level`` (int 0-4 or None for unknown,
            written empty) and optionally ``split`` (``train``/``val``/``test``); the column set
            is taken from the first row.

    Returns:
        str, the path of ``labels.csv``.
    """
    rows = list(rows)
    columns = ["image", "level"] + (["split"] if rows and "split" in rows[0] else [])
    os.makedirs(root, exist_ok=True)
    path = os.path.join(root, LABELS_FILE)
    tmp = path + f".tmp{os.getpid()}"
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
    os.replace(tmp, path)
    return path


def matches(root):
    """Whether ``root`` holds this layout: ``labels.csv`` and ``images/``."""
    return os.path.isfile(os.path.join(root, LABELS_FILE)) and os.path.isdir(os.path.join(root, "images"))


def load(root, problems):
    """Read a dataset folder's records (paths and labels only; nothing decoded).

    A labelled image without a file under ``images/`` is skipped and counted in one warning.
    Lesions: with no ``masks/`` folder at all, every record's ``load_lesions()`` is None; with
    one, a record's lesion dict holds the types whose mask file exists for that image (None
    when it has none). ``level`` may be empty (grade None); ``split`` is one of
    :data:`~dr_saliency.fundus.datasets.base.SPLIT_VALUES` or empty (None).

    Args:
        root: str, the dataset folder.
        problems: :class:`~dr_saliency.fundus.datasets.base.Problems`.

    Returns:
        list of :class:`~dr_saliency.fundus.datasets.base.Record`.

    Raises:
        ValueError: for a ``labels.csv`` without ``image``/``level`` columns, or a bad row
            (grade outside 0-4, unknown split, empty or duplicate image name) unless skipping
            bad rows.
    """
    path = os.path.join(root, LABELS_FILE)
    table = []
    for line, row in read_table(path, ["image", "level"], ["split"]):
        try:
            row["split"] = parse_split(row.get("split", ""), path=path, line=line,
                                       image=row["image"])
        except ValueError as err:
            problems.bad_row(str(err))
            continue
        table.append((line, row))
    images = list_files(os.path.join(root, "images"))
    # Listed once per folder: a stat per row and suffix would be slow on 35,000 rows.
    has_masks = os.path.isdir(os.path.join(root, "masks"))
    masks = {t: list_files(os.path.join(root, "masks", t)) for t in LESION_TYPES}
    fovs = list_files(os.path.join(root, "fov"))
    rows, seen, n_missing = image_level_rows(table, path, images, problems)
    records = []
    for row, image_id, grade, image_path in rows:
        lesion_files = None
        if has_masks:
            lesion_files = {t: masks[t][image_id] for t in LESION_TYPES if image_id in masks[t]} or None
        records.append(Record(image_id, image_path, grade=grade, split=row["split"],
                              lesion_files=lesion_files, fov_file=fovs.get(image_id)))
    problems.missing("folder", n_missing, len(seen), "labelled images", "images/")
    return records
