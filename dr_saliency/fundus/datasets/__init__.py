"""Fundus datasets in their released layouts, read as one record type (docs/contracts.md, docs/file-formats.md).

```python
from dr_saliency.fundus.datasets import open_dataset
ds = open_dataset(root)            # layout detected; or layout="idrid", ...
rec = ds[0]                        # Record: id, grade, split, image_path; nothing decoded yet
rec.load_image()                   # (H, W, 3) uint8 RGB
rec.load_lesions()                 # {"MA"|"HE"|"EX"|"SE": (H, W) bool} or None
rec.load_fov()                     # (H, W) bool, the dataset's or computed
ds.warnings                        # problems found at open time, one line each
```

Layouts: ``folder`` (this package's own, :mod:`.folder`), ``eyepacs``, ``idrid``, ``diaretdb1``,
``eophtha``, ``ddr``. ``dataset_fingerprint(ds)`` identifies a dataset's ids, grades and image
files for provenance records (:mod:`.fingerprint`). Numpy/OpenCV/stdlib only: no TensorFlow.
"""

import os

from dr_saliency.fundus.datasets import ddr, diaretdb1, eophtha, eyepacs, folder, idrid
from dr_saliency.fundus.datasets.base import LESION_TYPES, Dataset, Problems, Record, subfolders
from dr_saliency.fundus.datasets.diaretdb1 import DiaretdbRecord
from dr_saliency.fundus.datasets.fingerprint import dataset_fingerprint
from dr_saliency.core.errors import EmptySplitError

LAYOUTS = {module.NAME: module for module in (folder, eyepacs, idrid, diaretdb1, eophtha, ddr)}
"""Layout name -> module with ``matches(root)``, ``load(root, problems, **options)``,
``LOOKED_FOR`` and ``OPTIONS``. Detection tries them in this order."""

SPLITS = ("test", "val", "train", "all")
"""The splits :func:`select_records` takes; "all" is every record."""

__all__ = ["open_dataset", "detect_layout", "select_records", "dataset_fingerprint", "Dataset",
           "Record", "DiaretdbRecord", "LAYOUTS", "LESION_TYPES", "SPLITS"]


def select_records(dataset, *, split="all", ids=None, graded=False):
    """The records of one split, optionally only the given ids or the graded ones (dataset order).

    Args:
        dataset: a dataset from :func:`open_dataset` (or any iterable of records).
        split: one of :data:`SPLITS`.
        ids: optional iterable of record ids; an unknown id is an error.
        graded: keep only records with a grade.

    Returns:
        list of records, at least one.

    Raises:
        ValueError: an unknown split or id.
        EmptySplitError: nothing selected (the message lists the splits present).
    """
    if split not in SPLITS:
        raise ValueError(f"Expected split in {SPLITS}. Received: split={split!r}")
    records = [r for r in dataset if r.grade is not None] if graded else list(dataset)
    if ids is not None:
        wanted = list(dict.fromkeys(ids))
        known = {r.id for r in records}
        missing = [i for i in wanted if i not in known]
        if missing:
            shown = ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else "")
            raise ValueError(f"Expected ids of the dataset{' (graded)' * graded}. "
                             f"Received: {len(missing)} unknown id(s): {shown}")
        records = [r for r in records if r.id in set(wanted)]
    chosen = records if split == "all" else [r for r in records if r.split == split]
    if not chosen:
        present = sorted({str(r.split) for r in records})
        what = "graded images" if graded else "images"
        raise EmptySplitError(
            f"Expected {what} in split {split!r}{' among the given ids' * (ids is not None)} "
            f"(splits present: {', '.join(present) or 'none'}). "
            f"Received: split={split!r}", split, present)
    return chosen


def _matching(path):
    return [name for name, module in LAYOUTS.items() if module.matches(path)]


def _looked_for(layouts):
    return ", ".join(LAYOUTS[name].LOOKED_FOR for name in layouts)


def detect_layout(root, layout=None):
    """Find which layout a folder holds, in the folder itself or one level below it.

    ``root`` may be the dataset folder or its parent (e.g. the folder that holds
    ``ddb1_v02_01``, or the folder holding an unzipped ``DDR-dataset/``).

    Args:
        root: str, an existing folder.
        layout: str or None; given, only that layout is looked for.

    Returns:
        ``(layout, folder)``: the layout name and the folder it was found in.

    Raises:
        ValueError: when no layout, or more than one, matches (the message says what was looked
            for and where).
    """
    names = [layout] if layout else list(LAYOUTS)
    for level in ([root], [os.path.join(root, name) for name in subfolders(root)]):
        found = [(name, path) for path in level for name in _matching(path) if name in names]
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            listed = "; ".join(f"{name} in {path}" for name, path in found)
            raise ValueError(f"Expected one dataset layout in {root}, found several: {listed}. "
                             f"Pass layout= and the dataset's own folder. Received: root={root!r}")
    if layout:
        raise ValueError(f"Expected a {layout} dataset in {root} or a sub-folder: looked for "
                         f"{_looked_for(names)}. Received: root={root!r}, layout={layout!r}")
    raise ValueError(f"Could not detect a dataset layout in {root}: looked for "
                     f"{_looked_for(names)}, in the folder and its sub-folders. "
                     f"Received: root={root!r}")


def open_dataset(root, layout=None, *, skip_bad=False, **options):
    """Open a fundus dataset: list its records, check its label files, detect its layout.

    Only paths and labels are read here; images and masks are decoded by the records'
    ``load_*`` methods.

    Args:
        root: str or path-like, the dataset folder (or its parent).
        layout: one of ``LAYOUTS`` (``"folder"``, ``"eyepacs"``, ``"idrid"``, ``"diaretdb1"``,
            ``"eophtha"``, ``"ddr"``), or None to detect it.
        skip_bad: bool. A bad row in a label file (grade outside 0-4, missing value, duplicate)
            raises ``ValueError`` by default; with ``skip_bad=True`` the row is skipped and
            reported in ``ds.warnings``.
        **options: layout options, e.g. DIARETDB1's ``threshold`` (float in (0, 1], default
            0.75) and ``confidence`` (dict High/Medium/Low -> value).

    Returns:
        :class:`Dataset`, records sorted by id; ``ds.warnings`` lists what was skipped or
        missing (e.g. labelled images without a file), one line each.

    Raises:
        TypeError: for a root that is not a path, a non-bool ``skip_bad``, or an option the
            layout does not take.
        ValueError: for a missing root, an unknown or undetectable layout, a label file without
            its columns, or a bad row (unless ``skip_bad``).
    """
    if not isinstance(root, (str, os.PathLike)):
        raise TypeError(f"Expected a folder path (str or path-like). Received: root={root!r}")
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise ValueError(f"Expected an existing dataset folder. Received: root={root!r}")
    if layout is not None and layout not in LAYOUTS:
        raise ValueError(f"Expected layout among {sorted(LAYOUTS)} or None. Received: layout={layout!r}")
    if not isinstance(skip_bad, bool):
        raise TypeError(f"Expected a bool. Received: skip_bad={skip_bad!r}")
    layout, path = detect_layout(root, layout)
    module = LAYOUTS[layout]
    unknown = sorted(set(options) - set(module.OPTIONS))
    if unknown:
        raise TypeError(f"Expected options of the {layout} layout among {list(module.OPTIONS)}. "
                        f"Received: {', '.join(f'{k}={options[k]!r}' for k in unknown)}")
    problems = Problems(skip_bad=skip_bad)
    records = module.load(path, problems, **options)
    return Dataset(records, layout=layout, root=path, warnings=problems.finish())
