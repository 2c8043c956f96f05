"""The package's one progress protocol (docs/contracts.md#progress).

``on_progress(label, total) -> advance``: a job calls it once per phase of work (label: what is
counted, e.g. "Refining"; total: how many there are to do in this phase) and calls
``advance(k=1)`` as ``k`` more of them are done (done ones skipped at once count too).
``on_image(image_id, message)``: one line about one image (refined, skipped and why).
Both are optional (None: nothing is told).
"""

__all__ = ["check_callback", "phase", "relabeled"]


def _nothing(k=1):
    return None


def check_callback(value, name):
    """Refuse a callback that is neither callable nor None (before any work starts)."""
    if value is not None and not callable(value):
        raise TypeError(f"Expected {name} to be callable or None. Received: {name}={value!r}")


def phase(on_progress, label, total):
    """The ``advance(k=1)`` of one phase: ``on_progress(label, total)``, or a callable that does
    nothing when ``on_progress`` is None."""
    check_callback(on_progress, "on_progress")
    return _nothing if on_progress is None else on_progress(label, int(total))


def relabeled(on_progress, label):
    """``on_progress`` with every phase named ``label`` (a job's step name in its progress
    lines), or None when ``on_progress`` is None."""
    check_callback(on_progress, "on_progress")
    return None if on_progress is None else (lambda _, total: on_progress(label, total))
