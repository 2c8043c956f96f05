"""DDR (Li et al., 2019, Information Sciences): lesion segmentation and DR grading parts.

```
lesion_segmentation/<train|valid|test>/image/<id>.jpg
lesion_segmentation/<split>/label/<EX|HE|MA|SE>/<id>.tif     (non-zero = lesion)
DR_grading/<train|valid|test>/<id>.jpg
DR_grading/<split>.txt                                        lines "<file> <grade>", 5 = ungradable
```

Splits are reported as ``train``/``val``/``test`` (DDR's ``valid`` renamed to the project's
``val``). Some copies name the validation label folder ``segmentation label``: any sub-folder of
the split holding the type folders is taken. DDR annotates all four lesion types on every
segmentation image, so a missing type file is an all-false mask (as IDRiD). Ungradable images
(grade 5) are skipped with one warning per list. A segmentation image whose id is also in a
grading list gets that grade (and appears once).
"""

import os

from dr_saliency.fundus.datasets.base import (
    LESION_TYPES,
    Record,
    list_files,
    merge_parts,
    parse_grade,
    subfolders,
)

NAME = "ddr"
LOOKED_FOR = "lesion_segmentation/ or DR_grading/ (ddr)"
OPTIONS = ()

SEGMENTATION = "lesion_segmentation"
GRADING = "DR_grading"
SPLITS = {"train": "train", "valid": "val", "val": "val", "test": "test"}
UNGRADABLE = "5"


def matches(root):
    """Whether ``root`` holds this layout: ``lesion_segmentation/`` or ``DR_grading/``."""
    return any(os.path.isdir(os.path.join(root, part)) for part in (SEGMENTATION, GRADING))


def _label_root(split_root):
    # "label" in most copies, "segmentation label" in some: the sub-folder with type folders.
    for name in subfolders(split_root):
        if name != "image" and set(LESION_TYPES) & set(subfolders(os.path.join(split_root, name))):
            return os.path.join(split_root, name)
    return None


def _segmentation_records(root, grades):
    records = []
    for split in subfolders(os.path.join(root, SEGMENTATION)):
        split_root = os.path.join(root, SEGMENTATION, split)
        label_root = _label_root(split_root)
        masks = {t: list_files(os.path.join(label_root, t)) for t in LESION_TYPES} if label_root else None
        for image_id, path in list_files(os.path.join(split_root, "image")).items():
            lesion_files = None if masks is None else {t: masks[t].get(image_id) for t in LESION_TYPES}
            records.append(Record(image_id, path, grade=grades.get(image_id),
                                  split=SPLITS.get(split, split), lesion_files=lesion_files))
    return records


def _read_list(path, problems):
    # [(line, file name, grade text)], checked for shape and duplicates; grade text unchecked.
    rows, seen = [], set()
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        for line, text in enumerate(f, start=1):
            if not text.strip():
                continue
            parts = text.rsplit(maxsplit=1)
            if len(parts) != 2 or parts[0] in seen:
                problems.bad_row(f"Expected '<file> <grade>' lines, each file once, in {path}. "
                                 f"Received: line {line}={text.strip()!r}")
                continue
            seen.add(parts[0])
            rows.append((line, parts[0].strip(), parts[1]))
    return rows


def _grading_records(root, problems):
    records, grades = [], {}
    grading_root = os.path.join(root, GRADING)
    for list_path in sorted(list_files(grading_root, (".txt",)).values()):
        split = os.path.splitext(os.path.basename(list_path))[0]
        images = list_files(os.path.join(grading_root, split))
        rows = _read_list(list_path, problems)
        n_ungradable = n_graded = n_missing = 0
        for line, name, grade_text in rows:
            image_id = os.path.splitext(name)[0]
            if grade_text == UNGRADABLE:
                n_ungradable += 1
                continue
            try:
                grade = parse_grade(grade_text, path=list_path, line=line, column="grade",
                                    allow_empty=False)
            except ValueError as err:
                problems.bad_row(str(err))
                continue
            grades[image_id] = grade
            n_graded += 1
            if image_id not in images:
                n_missing += 1
                continue
            records.append(Record(image_id, images[image_id], grade=grade,
                                  split=SPLITS.get(split, split)))
        if n_ungradable:
            problems.warn(f"DDR: {n_ungradable:,} images graded 5 (ungradable) in "
                          f"{GRADING}/{split}.txt (skipped)")
        problems.missing("DDR", n_missing, n_graded, "graded images",
                         f"{GRADING}/{split}/")
    return records, grades


def load(root, problems):
    """Read the DDR records of both parts, where present (paths and labels; nothing decoded).

    Args:
        root: str, the folder holding ``lesion_segmentation/`` and/or ``DR_grading/``.
        problems: :class:`~dr_saliency.fundus.datasets.base.Problems`.

    Returns:
        list of :class:`~dr_saliency.fundus.datasets.base.Record`.

    Raises:
        ValueError: for a bad list line (not ``<file> <grade>``, grade not 0-5, duplicate file)
            unless skipping bad rows.
    """
    grading, grades = _grading_records(root, problems)
    return merge_parts(_segmentation_records(root, grades), grading)
