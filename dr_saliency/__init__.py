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
    "fov_mask": "dr_saliency.fundus.fov",
    "preprocess_image": "dr_saliency.fundus.fov",
    "restore_geometry": "dr_saliency.fundus.fov",
    "preprocess_dataset": "dr_saliency.fundus.prepare",
    "select_records": "dr_saliency.fundus.datasets",
    "TrainConfig": "dr_saliency.grader.config",
    "train": "dr_saliency.grader.train",
    "guided_backprop": "dr_saliency.explain.gradients",
    "vanilla_gradient": "dr_saliency.explain.gradients",
    "integrated_gradients": "dr_saliency.explain.gradients",
    "grad_cam": "dr_saliency.explain.gradcam",
    "to_saliency": "dr_saliency.explain.gradients",
    "make_explainer": "dr_saliency.explain.explainer",
    "make_predictor": "dr_saliency.explain.explainer",
    "Explanation": "dr_saliency.explain.options",
    "binarize": "dr_saliency.refinement.erase",
    "inpaint": "dr_saliency.refinement.erase",
    "Eraser": "dr_saliency.refinement.erase",
    "RefineConfig": "dr_saliency.refinement.loop",
    "refine": "dr_saliency.refinement.loop",
    "refine_batch": "dr_saliency.refinement.loop",
    "refine_dataset": "dr_saliency.refinement.run",
    "RefineResult": "dr_saliency.refinement.result",
    "Combination": "dr_saliency.core.maps",
    "combine_maps": "dr_saliency.core.maps",
    "scored_maps": "dr_saliency.core.maps",
    "ResultStore": "dr_saliency.refinement.store",
    "detect_candidates": "dr_saliency.lesions.candidates",
    "froc": "dr_saliency.lesions.froc",
    "refine_run": "dr_saliency.jobs.refine",
    "explain_photos": "dr_saliency.jobs.explain",
    "bundled_model_path": "dr_saliency.grader.model",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'dr_saliency' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
