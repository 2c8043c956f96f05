"""IDRiD, the Indian Diabetic Retinopathy Image Dataset (Porwal et al., 2018), as released.

```
A. Segmentation/1. Original Images/<a. Training Set|b. Testing Set>/IDRiD_NN.jpg
A. Segmentation/2. All Segmentation Groundtruths/<split>/
    1. Microaneurysms/IDRiD_NN_MA.tif   2. Haemorrhages/IDRiD_NN_HE.tif
    3. Hard Exudates/IDRiD_NN_EX.tif    4. Soft Exudates/IDRiD_NN_SE.tif   5. Optic Disc/IDRiD_NN_OD.tif
B. Disease Grading/1. Original Images/<split>/IDRiD_NNN.jpg
B. Disease Grading/2. Groundtruths/a. IDRiD_Disease Grading_Training Labels.csv  (and b. ... Testing)
    columns: Image name, Retinopathy grade, Risk of macular edema
```

IDRiD annotates all four lesion types on every segmentation image and ships a type's file only
where the image has that type (Soft Exudates for some images only): a missing file is an
all-false mask, not a missing annotation. Masks are RGB (one is RGBA): any non-zero colour
channel is lesion. The two parts number their images differently (``IDRiD_01`` vs
``IDRiD_001``), so segmentation images get a grade only where a grading row has their id.
"""

import os

from dr_saliency.fundus.datasets.base import (
    Record,
    list_files,
    merge_parts,
    parse_grade,
    read_table,
    subfolders,
)

NAME = "idrid"
LOOKED_FOR = "'A. Segmentation/' or 'B. Disease Grading/' (idrid)"
OPTIONS = ()

SEGMENTATION = "A. Segmentation"
GRADING = "B. Disease Grading"
IMAGES = "1. Original Images"
SEGMENTATION_TRUTH = "2. All Segmentation Groundtruths"
GRADING_TRUTH = "2. Groundtruths"
# Ground-truth folders by the words their names end with ("1. Microaneurysms", ...).
TRUTH_FOLDERS = {"MA": "microaneurysms", "HE": "haemorrhages", "EX": "hard exudates",
                 "SE": "soft exudates", "OD": "optic disc"}
GRADE_COLUMN = "Retinopathy grade"
EDEMA_COLUMN = "Risk of macular edema"


def _split_of(folder_name):
    # "a. Training Set" -> "train", "b. Testing Set" -> "test"; anything else kept as named.
    name = folder_name.lower()
    return "train" if "train" in name else "test" if "test" in name else folder_name


def matches(root):
    """Whether ``root`` holds this layout: ``A. Segmentation/`` or ``B. Disease Grading/``."""
    return any(os.path.isdir(os.path.join(root, part)) for part in (SEGMENTATION, GRADING))


def _truth_files(truth_root):
    # {type: {image id: path}} for one split; the suffix "_MA" etc. is cut from the stem.
    files = {}
    for folder in subfolders(truth_root):
        for kind, words in TRUTH_FOLDERS.items():
            if folder.lower().endswith(words):
                suffix = "_" + kind
                files[kind] = {stem[: -len(suffix)]: path
                               for stem, path in list_files(os.path.join(truth_root, folder)).items()
                               if stem.upper().endswith(suffix)}
    return files


def _segmentation_records(root, grades, problems):
    records, incomplete = [], []
    images_root = os.path.join(root, SEGMENTATION, IMAGES)
    for split_folder in subfolders(images_root):
        images = list_files(os.path.join(images_root, split_folder))
        truth_root = os.path.join(root, SEGMENTATION, SEGMENTATION_TRUTH, split_folder)
        annotated = os.path.isdir(truth_root)
        truth = _truth_files(truth_root)
        for image_id, path in images.items():
            lesion_files = None
            if annotated:
                lesion_files = {t: truth.get(t, {}).get(image_id) for t in ("MA", "HE", "EX", "SE")}
                # The release has MA, HE and EX files for every image; their absence is more
                # likely an incomplete copy than a lesion-free image, so say so once.
                incomplete += [f"{image_id} {t}" for t in ("MA", "HE", "EX") if lesion_files[t] is None]
            grade, edema = grades.get(image_id, (None, None))
            records.append(Record(image_id, path, grade=grade, split=_split_of(split_folder),
                                  lesion_files=lesion_files,
                                  optic_disc_file=truth.get("OD", {}).get(image_id),
                                  meta={"part": "segmentation", "macular_edema_risk": edema}))
    if incomplete:
        shown = ", ".join(incomplete[:10]) + (", ..." if len(incomplete) > 10 else "")
        problems.warn(f"IDRiD: {len(incomplete)} segmentation ground-truth files missing "
                      f"(treated as no lesion of that type): {shown}")
    return records


def _read_grades(root, problems):
    # {image id: (grade, macular edema risk)} from every CSV in "2. Groundtruths".
    truth_root = os.path.join(root, GRADING, GRADING_TRUTH)
    grades = {}
    for path in sorted(list_files(truth_root, (".csv",)).values()):
        for line, row in read_table(path, ["Image name", GRADE_COLUMN], [EDEMA_COLUMN]):
            image_id = os.path.splitext(row["Image name"])[0]
            try:
                if not image_id or image_id in grades:
                    raise ValueError(f"Expected each image once, named, in the IDRiD grading CSVs. "
                                     f"Received: Image name={image_id!r} in {path} at line {line}")
                grade = parse_grade(row[GRADE_COLUMN], path=path, line=line, column=GRADE_COLUMN,
                                    allow_empty=False)
            except ValueError as err:
                problems.bad_row(str(err))
                continue
            edema = row.get(EDEMA_COLUMN)
            grades[image_id] = (grade, int(edema) if edema and edema.isdigit() else None)
    return grades


def _grading_records(root, grades, problems):
    records, found = [], set()
    images_root = os.path.join(root, GRADING, IMAGES)
    for split_folder in subfolders(images_root):
        for image_id, path in list_files(os.path.join(images_root, split_folder)).items():
            found.add(image_id)
            grade, edema = grades.get(image_id, (None, None))
            records.append(Record(image_id, path, grade=grade, split=_split_of(split_folder),
                                  meta={"part": "grading", "macular_edema_risk": edema}))
    ungraded = sum(1 for rec in records if rec.grade is None)
    if ungraded:
        problems.warn(f"IDRiD: {ungraded} grading images have no row in the grading CSVs "
                      f"(kept, grade None)")
    return records, found


def load(root, problems):
    """Read the IDRiD records of both parts, where present (paths and labels; nothing decoded).

    Args:
        root: str, the folder holding ``A. Segmentation`` and/or ``B. Disease Grading``.
        problems: :class:`~dr_saliency.fundus.datasets.base.Problems`.

    Returns:
        list of :class:`~dr_saliency.fundus.datasets.base.Record`: segmentation images with all four
        lesion types (all-false where IDRiD has no file) and ``load_optic_disc()``; grading
        images with their grade. ``meta``: ``part`` and ``macular_edema_risk`` (int or None).

    Raises:
        ValueError: for a grading CSV without its columns, or a bad row unless skipping bad
            rows.
    """
    grades = _read_grades(root, problems)
    segmentation = _segmentation_records(root, grades, problems)
    grading, found = _grading_records(root, grades, problems)
    seg_ids = {rec.id for rec in segmentation}
    n_missing = sum(1 for image_id in grades if image_id not in found and image_id not in seg_ids)
    problems.missing("IDRiD", n_missing, len(grades), "graded images",
                     f"'{GRADING}/{IMAGES}/'")
    return merge_parts(segmentation, grading)
