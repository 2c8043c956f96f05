"""Choices and defaults of the explainers (:mod:`dr_saliency.explain.saliency`), without TensorFlow.

Kept apart so that the command line can show them (``--help``) without importing TensorFlow.
"""

#: Readings of the sign of a gradient kept by :func:`to_saliency`.
SIGNS = ("negative", "positive", "abs")
#: Reductions over the channel axis in :func:`to_saliency`.
REDUCTIONS = ("max", "sum", "l2")
#: What is differentiated: the model's output, or its negation (see the module docstring).
TARGETS = ("output", "negated")
#: Explainer methods of :func:`make_explainer`.
METHODS = ("guided", "vanilla", "integrated", "gradcam")

DEFAULT_SIGN = "negative"
DEFAULT_REDUCE = "max"
DEFAULT_TARGET = "output"
DEFAULT_METHOD = "guided"
#: Integrated gradients: number of intervals of the trapezoidal rule along the straight path.
DEFAULT_IG_STEPS = 32
#: Integrated gradients: path points per forward/backward pass.
DEFAULT_IG_BATCH_SIZE = 8
#: Grad-CAM layer of the VGG-16 grader: the last convolution (14x14 at 512 px), as Selvaraju et al.
DEFAULT_GRADCAM_LAYER = "block5_conv3"
#: Images per pass in :func:`make_explainer` / :func:`make_predictor` (bounds memory at 512 px).
DEFAULT_BATCH_SIZE = 4
