"""What every dataset layout shares: the record, the dataset, CSV reading and problem reporting.

A layout module (``folder``, ``eyepacs``, ``idrid``, ...) only knows where its files are. It turns
them into :class:`Record` objects (paths, grade, split; nothing decoded) and reports what it found
wrong through a :class:`Problems` collector; :func:`dr_saliency.fundus.datasets.open_dataset` wraps the
records in a :class:`Dataset`.
"""

import collections.abc
import csv
import os
import re

import numpy as np

from dr_saliency.fundus import fov as fov_lib
from dr_saliency.fundus.imio import read_image, read_mask

LESION_TYPES = ("MA", "HE", "EX", "SE")
"""Lesion types, docs/file-formats.md: microaneurysms, haemorrhages, hard exudates, soft exudates."""

GRADES = range(0, 5)
"""Diabetic-retinopathy stages 0 (none) to 4 (proliferative), as Kaggle's ``level``."""

SPLIT_VALUES = ("train", "val", "test", "test_public", "test_private")
"""Values a ``split`` column of a label file may hold (an empty cell: no split): ``train``,
``val``, ``test``, and EyePACS's two halves of its test set (Kaggle's public and private
leaderboards), which preprocessing an EyePACS download keeps."""

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".ppm")
"""Suffixes taken as image files (any case); where one stem has several, the first listed wins."""

MAX_ROW_WARNINGS = 20
"""Skipped bad rows reported one by one; beyond this, one summary line (a 35,000-row CSV with a
bad column must not flood the CLI)."""


def natural_key(text):
    """Sort key that orders digit runs by value: ``IDRiD_2`` before ``IDRiD_10``.

    Args:
        text: str.

    Returns:
        tuple; chunks alternate str and int, so two keys always compare chunk types alike. The
        text itself is the last element, so ``x_01`` and ``x_1`` still have a fixed order.
    """
    chunks = re.split(r"(\d+)", text)
    return tuple(int(c) if i % 2 else c.lower() for i, c in enumerate(chunks)) + (text,)


def check_grade(grade, name="grade"):
    """Check a grade given in code (not read from a file).

    Args:
        grade: int 0-4 or None.
        name: str, the argument name for the message.

    Returns:
        int or None.

    Raises:
        TypeError: for a non-integer.
        ValueError: for an integer outside 0-4.
    """
    if grade is None:
        return None
    if isinstance(grade, bool) or not isinstance(grade, (int, np.integer)):
        raise TypeError(f"Expected an int grade 0-4 or None. Received: {name}={grade!r}")
    if int(grade) not in GRADES:
        raise ValueError(f"Expected a grade 0-4 or None. Received: {name}={grade!r}")
    return int(grade)


class Record:
    """One fundus image of a dataset, with its grade and annotations; lazy.

    Construction only stores paths: nothing is decoded until a ``load_*`` method is called. The
    image size, needed to check mask sizes and to make all-false masks, is learnt from the first
    decode of the image and kept (only the size, never the pixels).

    Attributes:
        id: str, unique in its dataset, e.g. ``"IDRiD_01"``, ``"10_left"``.
        image_path: str.
        grade: int 0-4, or None where the dataset gives none.
        split: str or None, e.g. ``"train"``, ``"val"``, ``"test"``.
        meta: dict of dataset-specific extras (e.g. IDRiD's macular-edema risk); may be empty.
    """

    def __init__(self, id, image_path, *, grade=None, split=None, lesion_files=None,
                 fov_file=None, optic_disc_file=None, meta=None):
        """Create a record.

        Args:
            id: str, non-empty.
            image_path: str or path-like.
            grade: int 0-4 or None.
            split: str or None.
            lesion_files: None when the image has no lesion annotation; else a dict
                ``{type: path or None}`` with types from ``LESION_TYPES``: a path is a mask file
                (any non-zero pixel is lesion), None means "annotated, no lesion of this type"
                (an all-false mask). Types not in the dict were not annotated.
            fov_file: path of a field-of-view mask, or None to compute the FOV from the image.
            optic_disc_file: path of an optic-disc mask, or None.
            meta: optional dict of extras.

        Raises:
            TypeError, ValueError: for a bad id, grade or lesion type.
        """
        if not isinstance(id, str) or not id:
            raise TypeError(f"Expected a non-empty str id. Received: id={id!r}")
        self.id = id
        self.image_path = os.fspath(image_path)
        self.grade = check_grade(grade)
        self.split = split
        if lesion_files is not None:
            unknown = sorted(set(lesion_files) - set(LESION_TYPES))
            if unknown:
                raise ValueError(f"Expected lesion types among {LESION_TYPES}. Received: types={unknown}")
            lesion_files = {k: (None if v is None else os.fspath(v)) for k, v in lesion_files.items()}
        self._lesion_files = lesion_files
        self._fov_file = None if fov_file is None else os.fspath(fov_file)
        self._optic_disc_file = None if optic_disc_file is None else os.fspath(optic_disc_file)
        self.meta = dict(meta or {})
        self._shape = None

    def __repr__(self):
        return (f"{type(self).__name__}(id={self.id!r}, grade={self.grade!r}, split={self.split!r}, "
                f"lesion_types={self.lesion_types!r})")

    @property
    def lesion_types(self):
        """tuple of the lesion types annotated for this image (in ``LESION_TYPES`` order), or
        None when it has no lesion annotation. Known without decoding anything."""
        if self._lesion_files is None:
            return None
        return tuple(t for t in LESION_TYPES if t in self._lesion_files)

    @property
    def shape(self):
        """(H, W) of the image; decodes the image once if no ``load_*`` call has yet."""
        if self._shape is None:
            self.load_image()
        return self._shape

    def load_image(self):
        """Decode the image.

        Returns:
            ``(H, W, 3)`` uint8 RGB at the original size.

        Raises:
            ValueError: for a missing, unreadable or truncated file (the message names it).
        """
        image = read_image(self.image_path)
        self._shape = tuple(image.shape[:2])
        return image

    def _read_mask(self, path):
        # None = annotated with nothing of this kind: an all-false mask of the image's size.
        if path is None:
            return np.zeros(self.shape, dtype=bool)
        return read_mask(path, shape=self.shape)

    def load_lesions(self):
        """Decode the lesion masks.

        Returns:
            dict ``{type: (H, W) bool}`` for the annotated types (a type present with an
            all-false mask means "annotated, none of that type"; an absent type was not
            annotated), or None when the image has no lesion annotation.

        Raises:
            ValueError: for an unreadable mask or one whose size differs from the image's (the
                message names the mask file).
        """
        if self._lesion_files is None:
            return None
        return {t: self._read_mask(self._lesion_files[t]) for t in self.lesion_types}

    def load_fov(self, image=None):
        """The field-of-view mask: the dataset's own, or computed from the image.

        Args:
            image: optional ``(H, W, 3)`` uint8 RGB, this record's already decoded image, so
                that a computed FOV does not decode it a second time.

        Returns:
            ``(H, W)`` bool.
        """
        if self._fov_file is not None:
            return read_mask(self._fov_file, shape=self.shape)
        return compute_fov(self.load_image() if image is None else image)

    def load_optic_disc(self):
        """The optic-disc mask where the dataset gives one (IDRiD, DIARETDB1).

        Returns:
            ``(H, W)`` bool, or None.
        """
        if self._optic_disc_file is None:
            return None
        return read_mask(self._optic_disc_file, shape=self.shape)


def compute_fov(image):
    """Field of view computed from the image, by :func:`dr_saliency.fundus.fov.fov_mask`.

    Args:
        image: ``(H, W, 3)`` uint8 RGB.

    Returns:
        ``(H, W)`` bool.
    """
    return np.asarray(fov_lib.fov_mask(image), dtype=bool)


class Dataset(collections.abc.Sequence):
    """Records of one dataset, sorted by id (digit runs by value), with what was wrong at open.

    ``len(ds)``, ``ds[i]`` (also negative), iteration; ``ds.by_id(id)``.

    Attributes:
        layout: str, the layout name (``"folder"``, ``"idrid"``, ...).
        root: str, the folder the layout was found in.
        warnings: list of str, problems found at open time (skipped rows, missing files), each
            one line for the user; empty when all was well.
    """

    def __init__(self, records, *, layout, root, warnings=()):
        """Create a dataset.

        Args:
            records: iterable of :class:`Record`.
            layout: str.
            root: str or path-like.
            warnings: iterable of str.

        Raises:
            ValueError: when two records share an id.
        """
        records = sorted(records, key=lambda r: natural_key(r.id))
        seen = set()
        for rec in records:
            if rec.id in seen:
                raise ValueError(f"Expected unique record ids in the {layout} dataset at {root}. "
                                 f"Received: duplicate id={rec.id!r}")
            seen.add(rec.id)
        self._records = records
        self._index = {rec.id: i for i, rec in enumerate(records)}
        self.layout = layout
        self.root = os.fspath(root)
        self.warnings = list(warnings)

    def __len__(self):
        return len(self._records)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return Dataset(self._records[index], layout=self.layout, root=self.root,
                           warnings=self.warnings)
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"Expected an int index (use by_id for ids). Received: index={index!r}")
        return self._records[index]

    def __repr__(self):
        return (f"Dataset(layout={self.layout!r}, root={self.root!r}, records={len(self)}, "
                f"warnings={len(self.warnings)})")

    @property
    def ids(self):
        """list of str, the record ids in dataset order."""
        return [rec.id for rec in self._records]

    def by_id(self, image_id):
        """The record with this id.

        Raises:
            KeyError: when there is none.
        """
        try:
            return self._records[self._index[image_id]]
        except KeyError:
            raise KeyError(f"No record with id {image_id!r} in the {self.layout} dataset at "
                           f"{self.root}") from None

    def filter(self, predicate):
        """A dataset of the records for which ``predicate(record)`` is true, e.g.
        ``ds.filter(lambda r: r.split == "test")``; layout, root and warnings are kept."""
        return Dataset([r for r in self._records if predicate(r)], layout=self.layout,
                       root=self.root, warnings=self.warnings)


class Problems:
    """Collects what a layout found wrong while opening a dataset.

    A bad row (a value that cannot be right, e.g. grade 7) raises unless ``skip_bad`` was asked
    for, in which case the row is skipped and reported. Expected gaps (a labelled image without
    its file, as in a partial Kaggle download) are never errors: they are counted and reported
    once.
    """

    def __init__(self, skip_bad=False):
        self.skip_bad = skip_bad
        self.warnings = []
        self._skipped_rows = 0

    def warn(self, message):
        """Add one line to the dataset's warnings."""
        self.warnings.append(message)

    def bad_row(self, message):
        """Report a bad row: raise ``ValueError(message)``, or record it when skipping.

        Raises:
            ValueError: unless ``skip_bad``.
        """
        if not self.skip_bad:
            raise ValueError(message)
        self._skipped_rows += 1
        if self._skipped_rows <= MAX_ROW_WARNINGS:
            self.warnings.append(f"{message} (row skipped)")

    def missing(self, label, n_missing, n_total, what, where):
        """Report, once, labelled items whose file is absent, e.g.
        "EyePACS: 35,116 of 35,126 labelled images have no file under train/ (skipped)"."""
        if n_missing:
            self.warnings.append(f"{label}: {n_missing:,} of {n_total:,} {what} have no file "
                                 f"under {where} (skipped)")

    def finish(self):
        """The warnings, with a summary line for bad rows beyond ``MAX_ROW_WARNINGS``."""
        extra = self._skipped_rows - MAX_ROW_WARNINGS
        if extra > 0:
            self.warnings.append(f"... and {extra:,} more bad rows skipped "
                                 f"({self._skipped_rows:,} in all)")
        return list(self.warnings)


def read_table(path, required, optional=(), *, delimiter=","):
    """Read a CSV file with a header row, checking that its columns are there.

    Column names are matched ignoring case and surrounding spaces (IDRiD's header has
    ``"Risk of macular edema "`` with a trailing space); rows whose cells are all empty are
    skipped (IDRiD's grading CSV ends with some).

    Args:
        path: str.
        required: sequence of column names that must be present.
        optional: sequence of column names read when present.
        delimiter: str.

    Returns:
        list of ``(line, row)``: ``line`` the 1-based line number in the file (the header is
        line 1), ``row`` a dict from each present required/optional name (as given here) to the
        cell text, stripped.

    Raises:
        ValueError: when the file cannot be read as text or a required column is missing
            (naming the file and the columns).
    """
    path = os.fspath(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f, delimiter=delimiter)
            header = next(reader, None)
            rows = [(reader.line_num, cells) for cells in reader]
    except (UnicodeDecodeError, csv.Error) as err:
        raise ValueError(f"Expected a CSV text file. Received: path={path!r} ({err})") from None
    header = header or []
    position = {}
    for i, name in enumerate(header):
        position.setdefault(name.strip().lower(), i)
    missing = [name for name in required if name.strip().lower() not in position]
    if missing:
        raise ValueError(f"Expected columns {missing} in {path}. "
                         f"Received: columns={header}")
    wanted = {name: position[name.strip().lower()] for name in (*required, *optional)
              if name.strip().lower() in position}
    table = []
    for line, cells in rows:
        if not any(c.strip() for c in cells):
            continue
        table.append((line, {name: (cells[i].strip() if i < len(cells) else "")
                             for name, i in wanted.items()}))
    return table


def parse_grade(text, *, path, line, column, allow_empty=True):
    """Parse a grade cell.

    Args:
        text: str, the cell; ``"2"`` or ``"2.0"`` (as pandas writes) are both 2.
        path: str, the file, for the message.
        line: int, the line number, for the message.
        column: str, the column name, for the message.
        allow_empty: bool, whether an empty cell means "no grade" (None).

    Returns:
        int 0-4 or None.

    Raises:
        ValueError: for anything else, naming the file, line, column and value.
    """
    if text == "" and allow_empty:
        return None
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not value.is_integer() or int(value) not in GRADES:
        raise ValueError(f"Expected a grade 0-4 in {path} at line {line}. "
                         f"Received: {column.strip()}={text!r}")
    return int(value)


def parse_split(text, *, path, line, image):
    """Parse a split cell.

    Args:
        text: str, the cell (stripped); empty means no split.
        path: str, the file, for the message.
        line: int, the line number, for the message.
        image: str, the row's image name, for the message.

    Returns:
        str, one of :data:`SPLIT_VALUES`, or None.

    Raises:
        ValueError: for any other value, naming the file, line, image and the allowed values (a
            row whose split is, say, ``training`` would otherwise be left out of training
            without a word).
    """
    if text == "":
        return None
    if text not in SPLIT_VALUES:
        raise ValueError(f"Expected a split among {', '.join(SPLIT_VALUES)} (or empty) in {path} "
                         f"at line {line}. Received: image={image!r}, split={text!r}")
    return text


def image_level_rows(table, path, images, problems, *, allow_empty=True):
    """The rows of an ``image,level`` table (Kaggle's layout, and ours) that have an image file.

    Args:
        table: ``read_table`` output: (line, row dict) pairs with ``image`` and ``level``.
        path: str, the table's file, for messages.
        images: dict id -> image path (:func:`list_files` of the image folder).
        problems: :class:`Problems`; a bad row (empty or repeated image name, grade not 0-4)
            is reported there (an error unless skipping bad rows).
        allow_empty: bool, whether an empty level means "no grade".

    Returns:
        (rows, seen, n_missing): ``rows`` a list of (row, image_id, grade, image_path) for
        the good rows with a file; ``seen`` the set of ids of all good rows; ``n_missing`` the
        good rows without a file.
    """
    rows, seen, n_missing = [], set(), 0
    for line, row in table:
        image_id = row["image"]
        try:
            if not image_id:
                raise ValueError(f"Expected an image name in {path} at line {line}. Received: image=''")
            if image_id in seen:
                raise ValueError(f"Expected each image once in {path}. "
                                 f"Received: image={image_id!r} again at line {line}")
            grade = parse_grade(row["level"], path=path, line=line, column="level",
                                allow_empty=allow_empty)
        except ValueError as err:
            problems.bad_row(str(err))
            continue
        seen.add(image_id)
        if image_id not in images:
            n_missing += 1
            continue
        rows.append((row, image_id, grade, images[image_id]))
    return rows, seen, n_missing


def list_files(folder, suffixes=IMAGE_SUFFIXES):
    """Files in a folder by stem, where their suffix is one of ``suffixes``.

    Args:
        folder: str; a missing folder gives an empty dict.
        suffixes: sequence of lower-case suffixes with the dot, in order of preference.

    Returns:
        dict ``{stem: path}``; hidden files (and so ``.DS_Store``) are ignored, and where one
        stem has several suffixes the earliest in ``suffixes`` wins.
    """
    rank = {s: i for i, s in enumerate(suffixes)}
    best = {}
    try:
        names = os.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return {}
    for name in names:
        stem, suffix = os.path.splitext(name)
        suffix = suffix.lower()
        if name.startswith(".") or suffix not in rank:
            continue
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            continue
        if stem not in best or rank[suffix] < best[stem][0]:
            best[stem] = (rank[suffix], path)
    return {stem: path for stem, (_, path) in best.items()}


def subfolders(folder):
    """Names of the sub-folders of ``folder`` (sorted), or [] when it is not a folder."""
    try:
        return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
    except (FileNotFoundError, NotADirectoryError):
        return []


def merge_parts(segmentation, grading):
    """Join a dataset's segmentation part and its grading part (IDRiD, DDR).

    A grading record whose id is also a segmentation record is not kept twice: its grade goes
    to the segmentation record (when that has none) and the grading record is dropped, so that
    each image appears once, with both its lesions and its grade.

    Args:
        segmentation: list of :class:`Record`.
        grading: list of :class:`Record`.

    Returns:
        list of :class:`Record`.
    """
    by_id = {rec.id: rec for rec in segmentation}
    merged = list(segmentation)
    for rec in grading:
        twin = by_id.get(rec.id)
        if twin is None:
            merged.append(rec)
        elif twin.grade is None:
            twin.grade = rec.grade
    return merged
