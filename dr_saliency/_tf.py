"""The one place that imports TensorFlow and Keras.

TensorFlow's C++ start-up notices (oneDNN, CPU instruction sets) go to stderr at import time;
they are informational, so their level is raised unless the user already chose one. oneDNN itself
stays on: turning it off makes convolutions about 1.7x slower on CPU.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

try:
    import tensorflow as tf  # noqa: E402
    import keras  # noqa: E402
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError(
        "dr_saliency needs TensorFlow >= 2.16 and Keras 3: pip install -r requirements.txt "
        "(CPU) or -r requirements-gpu.txt (CUDA). " + str(exc)
    ) from exc

__all__ = ["tf", "keras"]
