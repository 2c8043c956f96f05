"""The one place that imports TensorFlow and Keras.

TensorFlow's C++ start-up notices (oneDNN, CPU instruction sets, absl's "All log messages before
absl::InitializeLog()") go to file descriptor 2 at import time. ``TF_CPP_MIN_LOG_LEVEL`` hides most
of them, but not on every CPU: TF 2.21 prints the oneDNN notice on CPUs with AMX whatever the
variable says. So the import runs with descriptor 2 redirected to a temporary file; afterwards,
what was captured is written back to stderr *except* TensorFlow's own C++ log lines, so a Python
warning raised during the import still reaches the user. If the import fails, everything captured
is replayed before the error. ``DR_SALIENCY_DEBUG`` (set by ``dr-saliency --debug``) turns the
filtering off. oneDNN itself stays on: turning it off makes convolutions about 1.7x slower on CPU.
"""

import os
import re
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Lines TensorFlow's C++ runtime writes at start-up: absl log lines ("I0000 00:00:... file.cc:N]"),
# absl's pre-initialisation banner, and the CPU feature notice of older builds.
_TF_NOTICE = re.compile(
    r"^(?:[IWE]\d{4} \d+:\d+:\d+\.\d+\s+\d+ \S+:\d+\]"
    r"|WARNING: All log messages before absl::InitializeLog\(\) is called"
    r"|.*This TensorFlow binary is optimized to use available CPU instructions"
    r"|To enable the following instructions: .* rebuild TensorFlow)"
)


def _replay(captured, keep_all):
    for line in captured.splitlines(keepends=True):
        if keep_all or not _TF_NOTICE.match(line):
            sys.stderr.write(line)
    sys.stderr.flush()


def _import_quietly():
    """Import TensorFlow and Keras with fd 2 captured; returns ``(tf, keras)``."""
    debug = bool(os.environ.get("DR_SALIENCY_DEBUG"))
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable descriptor 2 (embedded interpreters): import as is
        import tensorflow
        import keras as keras_module
        return tensorflow, keras_module
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 2)
        failed = True
        try:
            import tensorflow
            import keras as keras_module
            failed = False
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            _replay(sink.read().decode("utf-8", "replace"), keep_all=debug or failed)
    return tensorflow, keras_module


try:
    tf, keras = _import_quietly()
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError(
        "dr_saliency needs TensorFlow >= 2.16 and Keras 3: pip install -r requirements.txt "
        "(CPU) or -r requirements-gpu.txt (CUDA). " + str(exc)
    ) from exc

__all__ = ["tf", "keras"]
