"""Small files that must never be seen half-written, and how two sets of settings differ.

Every JSON record of a run (settings, timings, summaries) is written to a temporary file in the
same folder and moved into place with ``os.replace``, which is atomic: a reader sees the old file
or the new one, and a run killed mid-write leaves the old one (and its temporary file, which
:func:`remove_stale_temps` deletes once its process is gone). Folders that refuse to be mixed
with other settings name the differences with :func:`differences`; a job that writes into a
folder checks the record an earlier run left there with :func:`check_record`, and refuses folders
holding another job's outputs with :func:`refuse_other_outputs`.
"""

import hashlib
import json
import os
import re

from dr_saliency.core.errors import FolderInUseError
from dr_saliency.core.locks import LOCK_NAME

__all__ = ["TRAINING_RUN_FILES", "check_record", "differences", "file_sha256", "folder_entries",
           "read_json", "refuse_other_outputs", "remove_stale_temps", "temp_path", "write_figure",
           "write_json", "write_text"]

#: The files that make a folder a training run (docs/file-formats.md#checkpoints).
TRAINING_RUN_FILES = ("config.json", "split.json")

# Temporary names of the atomic writes, ".<pid>.<12 hex digits>.tmp" (see temp_path), and the
# "<name>.tmp<pid>[.ext]" of earlier versions, which a kill may have left too.
_TEMP = re.compile(r"^\.(\d+)\.[0-9a-f]{12}\.tmp$")
_OLD_TEMP = re.compile(r"^.+\.tmp(\d+)(\.[A-Za-z0-9]+)?$")


def temp_path(path):
    """Where to write ``path`` before moving it into place: ``.<pid>.<digest>.tmp`` in its folder.

    Short whatever the target's name, so that a name near the file system's limit (255 bytes)
    can still be written; hidden and without the target's suffix, so that a leftover of a killed
    writer is never taken for an image or a record by whatever lists the folder. The digest (of
    the target's name) keeps the temporaries of two targets apart.
    """
    folder, name = os.path.split(os.fspath(path))
    digest = hashlib.sha1(os.fsencode(name)).hexdigest()[:12]
    return os.path.join(folder, f".{os.getpid()}.{digest}.tmp")


def _process_gone(pid):
    if os.name != "posix":  # pragma: no cover - os.kill(pid, 0) would end the process there
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError):
        return False  # another user's live process, or not a pid at all: leave it
    return False


def remove_stale_temps(folder, *, earlier=False):
    """Delete the temporary files of atomic writes whose process is gone (killed mid-write).

    Args:
        folder: str; a missing folder holds none.
        earlier: also the names earlier versions gave them (``<name>.tmp<pid>[.<ext>]``), in a
            folder that holds nothing but the caller's outputs (a user's file could be named so).

    Returns:
        list of str, the names removed (sorted).
    """
    removed = []
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else ():
        match = _TEMP.match(name) or (_OLD_TEMP.match(name) if earlier else None)
        if match and _process_gone(int(match.group(1))):
            try:
                os.remove(os.path.join(folder, name))
            except FileNotFoundError:
                continue
            removed.append(name)
    return removed


def write_text(path, text):
    """Write ``text`` to ``path`` (UTF-8), atomically."""
    tmp = temp_path(path)
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(path, data, *, default=None):
    """Write ``data`` as indented JSON to ``path``, atomically.

    Args:
        path: str, the file.
        data: JSON-serialisable data.
        default: optional ``json.dump`` hook for other types.
    """
    write_text(path, json.dumps(data, indent=2, default=default))


def write_figure(fig, path, *, dpi=150, metadata=None):
    """Save a matplotlib figure to ``path`` atomically; the format follows the suffix.

    Args:
        fig: a matplotlib Figure.
        path: str, e.g. ``figures/x.png``.
        dpi: resolution.
        metadata: optional dict of str, stored in the file (PNG text chunks, PDF info); see
            matplotlib's ``savefig``.
    """
    tmp = temp_path(path)
    try:
        fig.savefig(tmp, dpi=dpi, format=os.path.splitext(path)[1][1:].lower() or None,
                    metadata=metadata)
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


def refuse_other_outputs(folder, what, *, own=(), others=()):
    """Refuse to write ``what`` into a folder that holds a training run or a result file.

    Mixing would corrupt both, and no ``overwrite`` may delete them: the error is a
    :class:`FolderInUseError` with ``can_overwrite=False``.

    Args:
        folder: str, the output folder (need not exist).
        what: str, what would be written ("a synthetic dataset", ...), for the message.
        own: names in ``folder`` that are the writer's own outputs (``"results.h5"``), not
            refused.
        others: descriptions of further outputs the caller found there ("a folder dataset"),
            refused with the rest.

    Raises:
        FolderInUseError: ``folder`` holds ``config.json`` and ``split.json`` (a training run),
            an HDF5 file (``*.h5``: a result file or a model) not in ``own``, or ``others``.
    """
    names = folder_entries(folder)
    found = []
    if all(name in names for name in TRAINING_RUN_FILES):
        found.append(f"a training run ({', '.join(TRAINING_RUN_FILES)})")
    found += [f"a result or model file ({name})" for name in names
              if name.endswith(".h5") and name not in own]
    found += list(others)
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
