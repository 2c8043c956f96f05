"""The undo journal that makes each write of a result store a transaction (docs/file-formats.md).

Crash safety. HDF5 has no journal: appending a group rewrites a handful of existing metadata blocks
(superblock, root-group B-tree, local heap, symbol-table nodes) in place, and a process killed
between those writes can leave a file that cannot be read at all. Measured here (h5py 3.14,
HDF5 1.14, default file format), with SIGKILL:

- killing a writer just before each of its file writes in turn: with the file opened and closed
  per image, 4 of 22 kill points (those of the metadata flush at close) broke the file ("Link
  iteration failed", "object doesn't exist" for a group written long before); with this module's
  write sequence (data, flush, ``complete`` attribute, close) but no journal, 21 of 37 kill points
  left a file that could not even be listed ("Link iteration failed (addr overflow)"): every
  earlier result lost;
- killing at random moments: open/close per image broke the file for good at the 16th of 40
  trials (every later read failed); a file kept open with a flush after every image survived 40,
  but each flush rewrites the same metadata, so that only says the window is short, not absent;
- ``libver="latest"``: every killed writer left the superblock marked "open for write", and the
  file could not be reopened without the ``h5clear`` tool. SWMR mode cannot create groups.

So each image is written as a transaction with an *undo journal*:

1. ``<path>.journal`` is created holding the file's size.
2. The HDF5 file is opened through h5py's ``fileobj`` driver on a file object that, before any write
   to a byte range that existed when the transaction began, appends the original bytes of that
   range to the journal (new bytes past the old end need no saving).
3. The group is written, flushed, marked ``complete``, and the file closed (HDF5 flushes all its
   metadata at close).
4. The journal is deleted: that is the commit.

Opening a store (read or append) with a journal present rolls the file back: original bytes
written back, file truncated to its old size, journal deleted; an interrupted rollback is simply
redone. So a kill at any moment leaves the previously completed images intact and readable, and at
most loses the image being written. This protects against the death of the process (SIGKILL, the
OOM killer, Ctrl-C, an exception): the kernel still writes everything the process wrote. It does
not claim durability against an operating-system crash or power loss (there is no fsync ordering
between journal and file, which would cost a sync per write).

numpy-free, h5py-free: plain file descriptors. :class:`dr_saliency.refinement.store.ResultStore`
opens its HDF5 file through :class:`JournaledFile` while it writes and calls :func:`rollback`
when it finds a journal.
"""

import io
import os
import struct

__all__ = ["JOURNAL_SUFFIX", "JournaledFile", "rollback"]

JOURNAL_SUFFIX = ".journal"
"""The undo journal of an unfinished write is ``<path>.journal``."""

_JOURNAL_MAGIC = b"DRSJNL01"
_JOURNAL_HEADER = struct.Struct("<8sQ")  # magic, size of the file when the transaction began
_RECORD_HEADER = struct.Struct("<QQ")  # offset, length; then `length` original bytes


class JournaledFile(io.RawIOBase):
    """A read/write file object for h5py's ``fileobj`` driver that journals overwritten bytes.

    Before the first write to any byte of ``[0, original size)``, the original bytes are appended
    to the journal (one record per contiguous range). The journal record is written before the
    file write, so after a kill at any point the journal holds everything needed to restore the
    file, and a half-written last record belongs to a file write that never happened.
    """

    def __init__(self, path, journal_path):
        super().__init__()
        self._fd = os.open(path, os.O_RDWR)
        self._journal = None
        self._pos = 0
        self._saved = []  # sorted, disjoint [start, end) ranges already in the journal
        # A failed write is remembered (not raised into HDF5, see write) and checked before
        # committing.
        self.error = None
        try:
            self._size0 = os.fstat(self._fd).st_size
            self._journal = os.open(journal_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            _write_all(self._journal, _JOURNAL_HEADER.pack(_JOURNAL_MAGIC, self._size0))
        except BaseException:
            self.close_files()
            raise

    def readable(self):
        return True

    def writable(self):
        return True

    def seekable(self):
        return True

    def seek(self, offset, whence=io.SEEK_SET):
        if whence == io.SEEK_SET:
            self._pos = offset
        elif whence == io.SEEK_CUR:
            self._pos += offset
        else:
            self._pos = os.fstat(self._fd).st_size + offset
        return self._pos

    def tell(self):
        return self._pos

    def readinto(self, buffer):
        view = memoryview(buffer).cast("B")
        data = os.pread(self._fd, len(view), self._pos)
        view[:len(data)] = data
        self._pos += len(data)
        return len(data)

    # After a failed write, every later write is discarded and reported as done: the transaction
    # will be rolled back anyway, and raising into HDF5 would make h5py's close fail and leave a
    # file id open in the HDF5 library whose driver points at this dead object; a later,
    # unrelated HDF5 call (e.g. Keras saving a model) then crashed the process (seen in tests).

    def write(self, buffer):
        view = memoryview(buffer).cast("B")
        n = len(view)
        if self.error is None:
            try:
                self._save(self._pos, self._pos + n)
                offset = self._pos
                while view:
                    written = os.pwrite(self._fd, view, offset)
                    view, offset = view[written:], offset + written
            except Exception as exc:
                self.error = exc
        self._pos += n
        return n

    def truncate(self, size=None):
        size = self._pos if size is None else size
        if self.error is None:
            try:
                self._save(size, self._size0)  # bytes a shrink would drop
                os.ftruncate(self._fd, size)
            except Exception as exc:
                self.error = exc
        return size

    def flush(self):
        # Every write is already a system call: nothing is buffered here. (No fsync: see the
        # module docstring.)
        pass

    def close_files(self):
        for fd in (self._fd, self._journal):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._fd = self._journal = None

    def _save(self, start, end):
        end = min(end, self._size0)
        if start >= end:
            return
        gaps, cursor = [], start
        for lo, hi in self._saved:
            if hi <= cursor:
                continue
            if lo >= end:
                break
            if lo > cursor:
                gaps.append((cursor, lo))
            cursor = max(cursor, hi)
        if cursor < end:
            gaps.append((cursor, end))
        for lo, hi in gaps:
            original = os.pread(self._fd, hi - lo, lo)
            _write_all(self._journal, _RECORD_HEADER.pack(lo, len(original)) + original)
        self._saved = _merge(self._saved + gaps)


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _merge(ranges):
    merged = []
    for lo, hi in sorted(ranges):
        if merged and lo <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return merged


def rollback(path, journal_path):
    """Undo an unfinished transaction from its journal; idempotent, so a killed rollback is redone."""
    with open(journal_path, "rb") as f:
        journal = f.read()
    if len(journal) < _JOURNAL_HEADER.size:
        # Killed while creating the journal: the file had not been opened for writing yet.
        os.remove(journal_path)
        return
    magic, size0 = _JOURNAL_HEADER.unpack_from(journal)
    if magic != _JOURNAL_MAGIC:
        raise ValueError(f"Expected a dr_saliency result-store journal. Received: {journal_path!r} "
                         "with an unknown header (remove it only if you know what wrote it)")
    records, offset = [], _JOURNAL_HEADER.size
    while offset + _RECORD_HEADER.size <= len(journal):
        start, length = _RECORD_HEADER.unpack_from(journal, offset)
        offset += _RECORD_HEADER.size
        if offset + length > len(journal):
            break  # half-written record: its file write never happened
        records.append((start, journal[offset:offset + length]))
        offset += length
    fd = os.open(path, os.O_RDWR)
    try:
        for start, original in reversed(records):
            _write_all_at(fd, original, start)
        os.ftruncate(fd, size0)
        os.fsync(fd)  # a rare repair: make it durable before the journal goes
    finally:
        os.close(fd)
    os.remove(journal_path)


def _write_all_at(fd, data, offset):
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written
