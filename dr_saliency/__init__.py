"""dr_saliency: iterative saliency map refinement for weakly-supervised lesion localization.

Re-exports only. Names are resolved lazily, so ``import dr_saliency`` stays fast and does not
import TensorFlow; ``dr_saliency.build_model`` imports it on first use.
"""

import importlib

from dr_saliency._version import __version__

_EXPORTS = {
    "build_model": "dr_saliency.grader.model",
    "preprocess_input": "dr_saliency.grader.model",
    "load_vgg16_weights": "dr_saliency.grader.model",
    "save_checkpoint": "dr_saliency.grader.model",
    "load_checkpoint": "dr_saliency.grader.model",
    "export_model": "dr_saliency.grader.model",
    "load_model": "dr_saliency.grader.model",
    "synthesize": "dr_saliency.fundus.synth",
    "open_dataset": "dr_saliency.fundus.datasets",
    "fov_mask": "dr_saliency.fundus.prepare",
    "preprocess_image": "dr_saliency.fundus.prepare",
    "TrainConfig": "dr_saliency.grader.config",
    "train": "dr_saliency.grader.train",
    "guided_backprop": "dr_saliency.explain.saliency",
    "vanilla_gradient": "dr_saliency.explain.saliency",
    "integrated_gradients": "dr_saliency.explain.saliency",
    "grad_cam": "dr_saliency.explain.saliency",
    "to_saliency": "dr_saliency.explain.saliency",
    "make_explainer": "dr_saliency.explain.saliency",
    "make_predictor": "dr_saliency.explain.saliency",
    "binarize": "dr_saliency.refinement.erase",
    "inpaint": "dr_saliency.refinement.erase",
    "refine": "dr_saliency.refinement.loop",
    "refine_batch": "dr_saliency.refinement.loop",
    "combine_maps": "dr_saliency.refinement.loop",
    "RefineResult": "dr_saliency.refinement.loop",
    "ResultStore": "dr_saliency.refinement.store",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'dr_saliency' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
