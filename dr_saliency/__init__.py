"""dr_saliency: iterative saliency map refinement for weakly-supervised lesion localization.

Re-exports only. Names are resolved lazily, so ``import dr_saliency`` stays fast and does not
import TensorFlow; ``dr_saliency.build_model`` imports it on first use.
"""

import importlib

from dr_saliency._version import __version__

_EXPORTS = {
    "build_model": "dr_saliency.model",
    "preprocess_input": "dr_saliency.model",
    "load_vgg16_weights": "dr_saliency.model",
    "save_checkpoint": "dr_saliency.model",
    "load_checkpoint": "dr_saliency.model",
    "export_model": "dr_saliency.model",
    "load_model": "dr_saliency.model",
    "synthesize": "dr_saliency.synth",
    "open_dataset": "dr_saliency.datasets",
    "fov_mask": "dr_saliency.preprocess",
    "preprocess_image": "dr_saliency.preprocess",
    "TrainConfig": "dr_saliency.train_config",
    "train": "dr_saliency.train",
    "guided_backprop": "dr_saliency.saliency",
    "vanilla_gradient": "dr_saliency.saliency",
    "integrated_gradients": "dr_saliency.saliency",
    "grad_cam": "dr_saliency.saliency",
    "to_saliency": "dr_saliency.saliency",
    "make_explainer": "dr_saliency.saliency",
    "make_predictor": "dr_saliency.saliency",
    "binarize": "dr_saliency.inpaint",
    "inpaint": "dr_saliency.inpaint",
    "refine": "dr_saliency.refine",
    "refine_batch": "dr_saliency.refine",
    "combine_maps": "dr_saliency.refine",
    "RefineResult": "dr_saliency.refine",
    "ResultStore": "dr_saliency.results",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'dr_saliency' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
