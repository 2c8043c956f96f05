"""Kaggle's Diabetic Retinopathy Detection data (EyePACS): grades only, no lesion annotation.

```
trainLabels.csv            image,level          (35,126 rows)
train/<image>.jpeg
retinopathy_solution.csv   image,level,Usage    (the test set's labels, released after the contest)
test/<image>.jpeg
```

Either part may be absent. Labelled images without a file (a partial download, as the project's
real sample with 10 of 35,126 images) are skipped and counted in one warning per part.
"""

import os

from dr_saliency.fundus.datasets.base import Record, image_level_rows, list_files, read_table

NAME = "eyepacs"
LOOKED_FOR = "trainLabels.csv or retinopathy_solution.csv (eyepacs)"
OPTIONS = ()

# (labels file, image folder, split) per part. The test part's split comes from its Usage
# column: "test_public" / "test_private" (Kaggle's public and private leaderboard halves).
PARTS = (
    ("trainLabels.csv", "train", "train"),
    ("retinopathy_solution.csv", "test", "test"),
)


def matches(root):
    """Whether ``root`` holds this layout: one of the Kaggle label files."""
    return any(os.path.isfile(os.path.join(root, labels)) for labels, _, _ in PARTS)


def load(root, problems):
    """Read the EyePACS records (paths and grades; nothing decoded).

    Args:
        root: str, the folder holding ``trainLabels.csv`` and/or ``retinopathy_solution.csv``.
        problems: :class:`~dr_saliency.fundus.datasets.base.Problems`.

    Returns:
        list of :class:`~dr_saliency.fundus.datasets.base.Record`; ``load_lesions()`` is None for all,
        ``meta["usage"]`` is the test set's Usage.

    Raises:
        ValueError: for a labels file without its columns, or a bad row (grade missing or
            outside 0-4, duplicate image) unless skipping bad rows.
    """
    records = []
    for labels, folder, split in PARTS:
        path = os.path.join(root, labels)
        if not os.path.isfile(path):
            continue
        table = read_table(path, ["image", "level"], ["Usage"])
        images = list_files(os.path.join(root, folder))
        rows, seen, n_missing = image_level_rows(table, path, images, problems,
                                                 allow_empty=False)
        for row, image_id, grade, image_path in rows:
            usage = row.get("Usage") or None
            records.append(Record(image_id, image_path, grade=grade,
                                  split=f"{split}_{usage.lower()}" if usage else split,
                                  meta={"usage": usage} if usage else None))
        problems.missing("EyePACS", n_missing, len(seen), "labelled images", f"{folder}/")
        unlabelled = len(set(images) - seen)
        if unlabelled:
            problems.warn(f"EyePACS: {unlabelled:,} images under {folder}/ have no row in "
                          f"{labels} (ignored)")
    return records
