"""Small files that must never be seen half-written, and how two sets of settings differ.

Every JSON record of a run (settings, timings, summaries) is written to a temporary file in the
same folder and moved into place with ``os.replace``, which is atomic: a reader sees the old file
or the new one, and a run killed mid-write leaves the old one. Folders that refuse to be mixed
with other settings name the differences with :func:`differences`; a job that writes into a
folder checks the record an earlier run left there with :func:`check_record`, and refuses folders
holding another job's outputs with :func:`refuse_other_outputs`.
"""

import hashlib
import json
import os

from dr_saliency.core.errors import FolderInUseError
from dr_saliency.core.locks import LOCK_NAME

__all__ = ["TRAINING_RUN_FILES", "check_record", "differences", "file_sha256", "folder_entries",
           "read_json", "refuse_other_outputs", "write_figure", "write_json", "write_text"]

#: The files that make a folder a training run (docs/file-formats.md#checkpoints).
TRAINING_RUN_FILES = ("config.json", "split.json")


def write_text(path, text):
    """Write ``text`` to ``path`` (UTF-8), atomically."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def write_json(path, data, *, default=None):
    """Write ``data`` as indented JSON to ``path``, atomically.

    Args:
        path: str, the file.
        data: JSON-serialisable data.
        default: optional ``json.dump`` hook for other types.
    """
    write_text(path, json.dumps(data, indent=2, default=default))


def write_figure(fig, path, *, dpi=150):
    """Save a matplotlib figure to ``path`` atomically; the format follows the suffix."""
    stem, ext = os.path.splitext(path)
    tmp = f"{stem}.tmp{os.getpid()}{ext}"
    try:
        fig.savefig(tmp, dpi=dpi)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def file_sha256(path):
    """Hex SHA-256 of a file's content (what a result records of its model: its identity, not
    only its path)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_json(path, missing=None):
    """The JSON in ``path``, or ``missing`` when there is no such file."""
    if not os.path.isfile(path):
        return missing
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def differences(stored, given, holder="file", prefix=""):
    """``key=given (holder has stored)`` for every setting that differs, values as JSON.

    Nested dicts are compared key by key (``outer.inner=...``); a key on one side only shows
    ``(absent)`` on the other.

    Args:
        stored: dict, the settings on record.
        given: dict, the settings of this call.
        holder: what holds ``stored`` ("file", "folder"), for the message.

    Returns:
        list of str, sorted by key; empty when the two are equal.
    """
    absent = object()

    def show(value):
        return "(absent)" if value is absent else json.dumps(value, default=str)

    out = []
    for key in sorted(set(stored) | set(given)):
        a, b = stored.get(key, absent), given.get(key, absent)
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, holder, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}={show(b)} ({holder} has {show(a)})")
    return out


def folder_entries(folder):
    """The names in ``folder`` (sorted), without the lock file; empty when there is no folder."""
    if not os.path.isdir(folder):
        return []
    return sorted(name for name in os.listdir(folder) if name != LOCK_NAME)


def refuse_other_outputs(folder, what):
    """Refuse to write ``what`` into a folder that holds a training run or a result file.

    Mixing would corrupt both, and no ``overwrite`` may delete them: the error is a
    :class:`FolderInUseError` with ``can_overwrite=False``.

    Args:
        folder: str, the output folder (need not exist).
        what: str, what would be written ("a synthetic dataset", ...), for the message.

    Raises:
        FolderInUseError: ``folder`` holds ``config.json`` and ``split.json`` (a training run)
            or an HDF5 file (``*.h5``: a result file or a model).
    """
    names = folder_entries(folder)
    found = []
    if all(name in names for name in TRAINING_RUN_FILES):
        found.append(f"a training run ({', '.join(TRAINING_RUN_FILES)})")
    found += [f"a result or model file ({name})" for name in names if name.endswith(".h5")]
    if found:
        raise FolderInUseError(f"Expected a folder free of other outputs to write {what} into. "
                               f"Received: out={folder!r}, which holds {' and '.join(found)}",
                               folder, found, can_overwrite=False)


def check_record(folder, name, given, expected, *, describe=None):
    """Compare a job's settings with the record (JSON file ``name``) an earlier run left in ``folder``.

    Args:
        folder: str, the output folder.
        name: str, the record's file name in it (``"synth.json"``, ``"preprocess.json"``).
        given: dict, this run's record.
        expected: str, what the folder must be to resume, for the message: "Expected
            <expected> to resume (or overwrite=True to redo it)".
        describe: optional callable ``(stored, given) -> list of str`` naming the differences
            that matter (none: the run may resume); default :func:`differences` over every key
            (``key=given (folder has stored)``).

    Returns:
        dict, the earlier record when it agrees; None when there is no record file.

    Raises:
        FolderInUseError (``can_overwrite=True``): the record is unreadable, or differs (the
            message and ``differences`` name each difference).
    """
    path = os.path.join(folder, name)
    try:
        stored = read_json(path)
    except (OSError, ValueError) as err:
        stored = err
    if stored is None:
        return None
    if not isinstance(stored, dict):
        reason = stored if isinstance(stored, Exception) else "not a JSON object"
        raise FolderInUseError(f"Expected {expected} to resume (or overwrite=True to redo it). "
                               f"Received: out={folder!r}, an unreadable {name} ({reason})",
                               folder, [f"unreadable {name}"], can_overwrite=True)
    diffs = (describe or (lambda a, b: differences(a, b, holder="folder")))(stored, given)
    if diffs:
        raise FolderInUseError(f"Expected {expected} to resume (or overwrite=True to redo it). "
                               f"Received: out={folder!r}, {'; '.join(diffs)}",
                               folder, diffs, can_overwrite=True)
    return stored
