"""Choices and defaults of the explainers (:mod:`dr_saliency.explain.explainer`), without TensorFlow.

Kept apart so that the command line can show them (``--help``) and a run can record them
without importing TensorFlow.
"""

import dataclasses

from dr_saliency.core.checks import is_int

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


@dataclasses.dataclass(frozen=True)
class Explanation:
    """Which explanation a refine run uses: the method and how its gradient becomes a map.

    Checked when made; :meth:`to_params` is what a result file records, so two runs that
    explain alike store equal params (and one may resume the other).

    Attributes:
        method: one of :data:`METHODS`.
        sign, reduce, target: see :func:`dr_saliency.explain.gradients.to_saliency` and the
            module docstring of :mod:`dr_saliency.explain.gradients`.
        steps: integrated gradients' path intervals (used by ``"integrated"`` only).
        layer: Grad-CAM's layer (used by ``"gradcam"`` only).
    """

    method: str = DEFAULT_METHOD
    sign: str = DEFAULT_SIGN
    reduce: str = DEFAULT_REDUCE
    target: str = DEFAULT_TARGET
    steps: int = DEFAULT_IG_STEPS
    layer: str = DEFAULT_GRADCAM_LAYER

    def __post_init__(self):
        for name, choices in (("method", METHODS), ("sign", SIGNS), ("reduce", REDUCTIONS),
                              ("target", TARGETS)):
            if getattr(self, name) not in choices:
                raise ValueError(f"Expected {name} in {choices}. "
                                 f"Received: {name}={getattr(self, name)!r}")
        if not is_int(self.steps) or self.steps < 1:
            raise ValueError(f"Expected an integer steps >= 1. Received: steps={self.steps!r}")
        if not isinstance(self.layer, str) or not self.layer:
            raise ValueError(f"Expected a layer name. Received: layer={self.layer!r}")

    def method_options(self):
        """The keyword options of :func:`~dr_saliency.explain.explainer.make_explainer` that
        this method takes."""
        return ({"steps": self.steps} if self.method == "integrated" else
                {"layer": self.layer} if self.method == "gradcam" else {})

    def to_params(self):
        """The explanation as a result file records it."""
        return {"method": self.method, "sign": self.sign, "reduce": self.reduce,
                "target": self.target, **self.method_options()}
