"""Synthetic colour fundus photographs with exact lesion masks, and the dataset writer.

The synthetic set stands in for Kaggle/EyePACS grades and for pixel-level lesion annotations, so
that the whole method of González-Gonzalo et al. (MIDL 2018) can be trained and evaluated without
either. An image is drawn in layers: background (pigment, texture, macula), optic disc, vessel
tree, neovascularisation, lesions; then illumination, camera blur and sensor noise. Everything
after the lesion layer is affine in the scene and then a linear blur, so the change each lesion
makes to the final image is computed exactly, and its mask is its visible footprint: the pixels
whose colour it changed by at least ``VISIBLE_CHANGE`` grey levels and ``MASK_LEVEL`` of its own
largest change, not a loose disc around it.

Conventions: lengths in the parameter tables are pixels of a 512-pixel image and scale with
``size / 512`` (floored at 1 px for lesions, so that every lesion stays visible at 128 px); the
anatomy is drawn for a right eye (optic disc on the image's right) and mirrored for a left eye.
One lesion is one 8-connected component of its type's mask: lesions of any type never touch (each
exudate of a cluster or ring is a lesion of its own). ``docs/synthetic.md`` shows the result
beside real photographs and tabulates the lesion statistics.

The package, by job: :mod:`~dr_saliency.fundus.synth.params` (the generator's tables),
:mod:`~dr_saliency.fundus.synth.generator` (drawing one image: :func:`synthesize`),
:mod:`~dr_saliency.fundus.synth.writer` (the dataset folder: :func:`write_dataset`),
:mod:`~dr_saliency.fundus.synth.stats` (lesion statistics) and
:mod:`~dr_saliency.fundus.synth.figures` (example figures). Their public names are importable
from here, as they were from the one module this package was.
"""

from dr_saliency.fundus.datasets.folder import LESION_TYPES
from dr_saliency.fundus.synth.params import (ARTERY_ABSORB, ARTERY_WIDTH, BLUR_SIGMA,
                                             DISC_EXCLUSION, DISC_OFFSET, DISC_RADIUS, EX_COLOUR,
                                             FOVEA_DISTANCE, FOV_RADIUS, GENERATORS, GENERATOR_2,
                                             GENERATOR_3, GENERATOR_VERSION, Generator,
                                             HE_NEAR_VESSEL, HE_SHAPES, KAGGLE_COUNTS,
                                             LESION_CONTRAST, LESION_RADIUS, LESION_ZONE, Lesion,
                                             MASK_LEVEL, MIN_SIZE, NOISE_SIGMA, PARAMS_FILE,
                                             REAL_SCALE, RED_LESION_ABSORB, REFERENCE_SIZE,
                                             SE_COLOUR, STAGE_MIXES, STAGE_RULES, StageRule,
                                             SynthResult, VEIN_ABSORB, VEIN_WIDTH, VISIBLE_CHANGE)
from dr_saliency.fundus.synth.generator import synthesize
from dr_saliency.fundus.synth.writer import _plan, write_dataset  # _plan: tested here
from dr_saliency.fundus.synth.stats import lesion_statistics, measure_lesions
from dr_saliency.fundus.synth.figures import MASK_COLOURS, comparison_figure, example_grid

__all__ = [
    "GENERATORS", "GENERATOR_VERSION", "Generator", "STAGE_RULES", "StageRule", "Lesion",
    "SynthResult", "synthesize", "write_dataset", "measure_lesions", "lesion_statistics",
    "example_grid", "comparison_figure",
]
