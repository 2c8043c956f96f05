"""Small files that must never be seen half-written, and how two sets of settings differ.

Every JSON record of a run (settings, timings, summaries) is written to a temporary file in the
same folder and moved into place with ``os.replace``, which is atomic: a reader sees the old file
or the new one, and a run killed mid-write leaves the old one. Folders that refuse to be mixed
with other settings name the differences with :func:`differences`.
"""

import json
import os

__all__ = ["differences", "read_json", "write_figure", "write_json", "write_text"]


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
