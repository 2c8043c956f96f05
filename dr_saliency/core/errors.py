"""Typed errors for the bad inputs a user can work around with an option.

They are ``ValueError``\\ s, so any caller that handles bad input handles them; their attributes
carry the facts, and the message names the library's keyword, never a command-line flag. The
command line (:mod:`dr_saliency.app.cli`) turns each into the advice its own flags give.
"""

__all__ = ["BadImageError", "BusyError", "ClusterTimeoutError", "EmptySplitError", "ProvenanceError", "FolderInUseError", "ImageSizeError",
           "MissingExtraError", "NoValidationError", "OutOfMemoryError", "PartialResultsError",
           "RunExistsError"]


class BadImageError(ValueError):
    """An image of a dataset cannot be used (unreadable, wrong size, NaN map); ``skip_bad=True``
    skips such images. ``image`` is its id or path, ``reason`` what is wrong."""

    def __init__(self, image, reason):
        super().__init__(f"{image}: {reason}")
        self.image, self.reason = image, reason


class ImageSizeError(BadImageError):
    """An image is not ``size`` x ``size`` pixels, the model's input: preprocess the data first."""

    def __init__(self, image, reason, size):
        super().__init__(image, reason)
        self.size = size


class EmptySplitError(ValueError):
    """No image in the chosen split; ``split="all"`` takes every image. ``present``: the splits
    the dataset has."""

    def __init__(self, message, split, present):
        super().__init__(message)
        self.split, self.present = split, tuple(present)


class PartialResultsError(ValueError):
    """A result file and a dataset hold different images; ``allow_partial=True`` evaluates the
    images in both. ``missing``: the result ids without an image in the dataset."""

    def __init__(self, message, missing):
        super().__init__(message)
        self.missing = tuple(missing)


class RunExistsError(ValueError):
    """The output folder already holds a training run; resume it or choose another folder."""

    def __init__(self, message, run_dir):
        super().__init__(message)
        self.run_dir = run_dir


class FolderInUseError(ValueError):
    """An output folder holds work made with other settings, and mixing is refused.
    ``differences`` lists them; ``can_overwrite``: the job can redo the folder instead."""

    def __init__(self, message, path, differences=(), can_overwrite=False):
        super().__init__(message)
        self.path, self.differences = path, tuple(differences)
        self.can_overwrite = can_overwrite


class NoValidationError(ValueError):
    """No validation images: the data has no 'val' split and ``val_fraction`` gave none."""


class OutOfMemoryError(ValueError):
    """Training ran out of memory at ``batch_size``; ``suggested`` is a smaller one to try."""

    def __init__(self, message, batch_size):
        super().__init__(message)
        self.batch_size, self.suggested = batch_size, max(1, batch_size // 2)


class BusyError(OSError):
    """Another process is writing the output (``path``); ``holder`` names it (process id, host,
    command, start time). An ``OSError``: waiting, not another option, is the way around it."""

    def __init__(self, message, path, holder):
        super().__init__(message)
        self.path, self.holder = path, holder


class ClusterTimeoutError(TimeoutError):
    """Workers of a multi-worker training did not all come within ``timeout`` seconds;
    ``missing`` names them ("worker 1 (host:port)"). An ``OSError``, as waiting is: start them,
    check their addresses, or give them longer."""

    def __init__(self, message, missing, timeout):
        super().__init__(message)
        self.missing, self.timeout = tuple(missing), timeout


class ProvenanceError(ValueError):
    """An output was made from other inputs than those given (another dataset, another model);
    ``differences`` names what differs. ``force=True`` uses it anyway where that makes sense."""

    def __init__(self, message, differences=()):
        super().__init__(message)
        self.differences = tuple(differences)


class MissingExtraError(ValueError):
    """An optional part of the package is used but its dependency is not installed; ``extra``
    names the ``pip install -e ".[extra]"`` that brings it."""

    def __init__(self, message, extra):
        super().__init__(message)
        self.extra = extra
