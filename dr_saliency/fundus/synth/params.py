"""The generator's tables: what a synthetic image of each DR stage holds, how large and how
conspicuous its lesions are (per generator version), the anatomy's ranges, and the records
(:class:`Lesion`, :class:`SynthResult`) a drawing returns. No drawing here."""

import dataclasses
import re

import numpy as np

from dr_saliency.fundus.datasets.folder import LESION_TYPES


GENERATOR_VERSION = 3
MIN_SIZE = 128
REFERENCE_SIZE = 512
# A lesion's mask holds the pixels it changed by at least this many grey levels (any channel),
# well above the sensor noise (at most 2 levels) and the 8-bit rounding.
VISIBLE_CHANGE = 6.0
# ... and at least this fraction of its own largest change: a lesion's visible footprint, not the
# faint skirt that the camera blur spreads around it.
MASK_LEVEL = 0.25
PARAMS_FILE = "synth.json"
# Kaggle/EyePACS trainLabels.csv: images per grade 0-4 (35,126 in all).
KAGGLE_COUNTS = (25810, 2443, 5292, 873, 708)

STAGE_MIXES = ("balanced", "kaggle")
"""How :func:`write_dataset` draws stages: equal counts per stage, or Kaggle's frequencies."""


@dataclasses.dataclass(frozen=True)
class StageRule:
    """What one DR stage draws: lesion counts per image as inclusive ``(low, high)`` ranges.

    Attributes:
        ma, he, ex, se: microaneurysms, haemorrhages, hard exudates, cotton-wool spots.
        nv: neovascularisation patches (drawn, recorded in the lesion list, not masked).
        he_quadrants: ``(low, high)`` number of image quadrants (about the FOV centre) that hold
            haemorrhages.
        spread: standard deviation, in FOV radii, of microaneurysm (and, when fewer than four
            quadrants are required, haemorrhage) positions around the fovea.
        ex_share, se_share: probability that an image of this stage holds hard exudates
            (cotton-wool spots) at all; when it does, their count is drawn from ``ex`` (``se``).
            1.0 draws the count alone (generator 2, whose ranges start at 0).
        beading: probability of venous beading on the temporal arcade veins (generator 3).
    """

    ma: tuple = (0, 0)
    he: tuple = (0, 0)
    ex: tuple = (0, 0)
    se: tuple = (0, 0)
    nv: tuple = (0, 0)
    he_quadrants: tuple = (0, 0)
    spread: float = 0.4
    ex_share: float = 1.0
    se_share: float = 1.0
    beading: float = 0.0


@dataclasses.dataclass(frozen=True)
class Generator:
    """One version of the generator: the tables that differ between versions.

    Attributes:
        version: int, recorded in a dataset's ``synth.json``.
        stage_rules: ``{stage: StageRule}`` for stages 0-4.
        lesion_radius: ``{key: (low, high)}`` px at 512 (keys of ``LESION_RADIUS``).
        lesion_contrast: ``{type: (low, high)}`` opacity at the lesion's centre.
        ex_groups: ``{group: probability}``; groups ``"cluster"``, ``"ring"``, ``"single"``
            (plaques, generator 2) or ``"field"``, ``"ring"``, ``"single"`` (flecks, 3).
        ex_group_size: ``{group: (low, high)}`` lesions per cluster/field and per ring.
        ex_spread: ``(low, high)`` px at 512, scatter of a cluster or field around its centre.
        vignetting: ``(low, high)`` brightness lost at the FOV rim.
        blue: factor on the pigment's blue.
    """

    version: int
    stage_rules: dict
    lesion_radius: dict
    lesion_contrast: dict
    ex_groups: dict
    ex_group_size: dict
    ex_spread: tuple
    vignetting: tuple
    blue: float


# Generator 2. International Clinical DR scale in spirit: 1 = microaneurysms only; 2 = more than
# that, short of severe (haemorrhages in at most three quadrants); 3 = haemorrhages in all four
# quadrants plus cotton-wool spots; 4 = neovascularisation on top of the rest. Counts overlap
# between stages. Its exudates are three times as conspicuous as its red lesions and present in
# 93% of stage-2 images, which let a grader grade from exudates alone (docs/synthetic.md).
GENERATOR_2 = Generator(
    version=2,
    stage_rules={
        0: StageRule(),
        1: StageRule(ma=(2, 8)),
        2: StageRule(ma=(2, 15), he=(1, 10), ex=(0, 14), se=(0, 2), he_quadrants=(1, 3)),
        3: StageRule(ma=(6, 25), he=(12, 30), ex=(0, 24), se=(1, 6), he_quadrants=(4, 4), spread=0.5),
        4: StageRule(ma=(4, 25), he=(6, 30), ex=(0, 24), se=(0, 6), nv=(1, 3), he_quadrants=(2, 4),
                     spread=0.5),
    },
    # Lesion radius (long semi-axis for elongated shapes) in pixels at 512, uniform in the range.
    lesion_radius={"MA": (2.0, 3.0), "HE_dot": (4.0, 6.5), "HE_blot": (6.0, 13.0),
                   "HE_flame": (7.0, 15.0), "EX": (2.5, 8.0), "SE": (8.0, 18.0), "NVE": (14.0, 30.0)},
    # Lesion opacity at its centre, uniform in the range: the low end gives weakly
    # discriminative lesions, the high end strongly discriminative ones.
    lesion_contrast={"MA": (0.45, 0.9), "HE": (0.3, 0.9), "EX": (0.35, 0.9), "SE": (0.35, 0.7),
                     "NV": (0.5, 0.8)},
    ex_groups={"cluster": 0.55, "ring": 0.25, "single": 0.2},
    ex_group_size={"cluster": (3, 12), "ring": (3, 14)},
    ex_spread=(6.0, 22.0),
    vignetting=(0.15, 0.45),
    blue=1.0,
)

# Generator 3 (the default), fixed from real evidence before the method was measured on it
# (docs/synthetic.md, "Generator 3"):
# - conspicuity: every lesion type's median area and contrast are those measured on the IDRiD and
#   DIARETDB1 samples (docs/experiments/realism_gap.py) times one factor, REAL_SCALE = 3, so the
#   ratios between types are the photographs' (exudates 1.3x a haemorrhage's contrast, not 3x)
#   and a microaneurysm stays about 5 px wide at 512;
# - prevalence: the stage is carried by microaneurysms, haemorrhages (count and quadrants),
#   venous beading and new vessels, as in the International Clinical DR scale (Wilkinson et al.,
#   Ophthalmology 2003), where hard exudates and cotton-wool spots are frequent at stages 2-4 but
#   define none of them: they appear in a minority to a majority of images (ex_share, se_share);
# - appearance: hard exudates as fields of small flecks (IDRiD: 130 components per image, median
#   6 px), a less blue pigment and stronger vignetting, as measured on the real samples.
REAL_SCALE = 3.0
GENERATOR_3 = Generator(
    version=3,
    stage_rules={
        0: StageRule(),
        1: StageRule(ma=(2, 8)),
        2: StageRule(ma=(4, 18), he=(2, 10), ex=(6, 40), se=(1, 2), he_quadrants=(1, 3),
                     ex_share=0.35, se_share=0.2),
        3: StageRule(ma=(8, 28), he=(14, 32), ex=(10, 70), se=(1, 5), he_quadrants=(4, 4), spread=0.5,
                     ex_share=0.55, se_share=0.5, beading=0.5),
        4: StageRule(ma=(6, 28), he=(8, 32), ex=(10, 70), se=(1, 5), nv=(1, 3), he_quadrants=(2, 4),
                     spread=0.5, ex_share=0.55, se_share=0.4, beading=0.4),
    },
    lesion_radius={"MA": (1.3, 2.0), "HE_dot": (3.0, 5.0), "HE_blot": (4.6, 9.9),
                   "HE_flame": (5.3, 11.4), "EX": (1.4, 2.6), "SE": (7.9, 17.9), "NVE": (14.0, 30.0)},
    lesion_contrast={"MA": (0.7, 1.0), "HE": (0.45, 1.0), "EX": (0.2, 0.52), "SE": (0.34, 0.69),
                     "NV": (0.5, 0.8)},
    ex_groups={"field": 0.6, "ring": 0.25, "single": 0.15},
    ex_group_size={"field": (8, 40), "ring": (6, 18)},
    ex_spread=(8.0, 30.0),
    vignetting=(0.35, 0.65),
    blue=0.35,
)

GENERATORS = {2: GENERATOR_2, 3: GENERATOR_3}
"""Every generator version that can still be drawn, by version number."""

# The default generator's tables, under their historical names.
STAGE_RULES = GENERATORS[GENERATOR_VERSION].stage_rules
LESION_RADIUS = GENERATORS[GENERATOR_VERSION].lesion_radius
LESION_CONTRAST = GENERATORS[GENERATOR_VERSION].lesion_contrast
# Haemorrhage shapes and how often each is drawn; a share of haemorrhages sits against a vessel.
HE_SHAPES = {"dot": 0.35, "blot": 0.4, "flame": 0.25}
HE_NEAR_VESSEL = 0.3
# Per-channel (R, G, B) absorption of red lesions and vessels: green most, red least, so that
# they stay red on an orange background as in real photographs.
RED_LESION_ABSORB = (0.28, 0.72, 0.66)
VEIN_ABSORB = (0.25, 0.62, 0.52)
ARTERY_ABSORB = (0.12, 0.45, 0.38)
EX_COLOUR = (1.2, 1.05, 0.35)
SE_COLOUR = (0.98, 0.9, 0.8)

# Anatomy, as fractions of the FOV radius R unless stated.
FOV_RADIUS = (0.455, 0.485)       # of the image side
DISC_RADIUS = (0.13, 0.16)        # disc diameter 1/7.7 to 1/6.25 of the FOV diameter
DISC_OFFSET = (0.55, 0.68)        # disc centre, nasal of the FOV centre
FOVEA_DISTANCE = (2.3, 2.7)       # disc-fovea distance, in disc diameters
# Lesions lie where real ones do: right beside the disc (peripapillary haemorrhages, exudates) but
# not on it, and out to the FOV rim. Earlier versions kept them 1.5 disc radii from the disc centre
# and inside 0.9 R, which made candidate exclusions of the disc and the rim look free of cost.
DISC_EXCLUSION = 1.1              # no lesion pixel within this many disc radii of the disc centre
LESION_ZONE = 0.98                # lesion pixels lie within this fraction of R
VEIN_WIDTH = (5.0, 6.5)           # px at 512, where the arcades leave the disc
ARTERY_WIDTH = (3.5, 5.0)
BLUR_SIGMA = (0.35, 1.3)          # camera blur, px at 512
NOISE_SIGMA = (0.5, 2.0)          # grey levels

_TYPES_AND_NV = LESION_TYPES + ("NV",)
_ID_PATTERN = re.compile(r"^synth_\d+\.png$")


@dataclasses.dataclass(frozen=True)
class Lesion:
    """One drawn lesion.

    Attributes:
        type: ``"MA"``, ``"HE"``, ``"EX"``, ``"SE"``, or ``"NV"`` (neovascularisation: drawn,
            not part of any mask).
        center: ``(row, col)`` float, pixels.
        radius: float, pixels: radius, long semi-axis of an elongated shape, or patch radius (NV).
        contrast: float in (0, 1], the lesion's opacity at its centre (generator parameter).
        shape: ``"dot"``, ``"blot"``, ``"flame"`` (HE), ``"cluster"``, ``"ring"``, ``"single"``
            (EX: the group it belongs to), ``"round"`` (MA), ``"fuzzy"`` (SE), ``"disc"`` or
            ``"elsewhere"`` (NV: NVD or NVE).
        area: int, pixels of its mask component (0 for NV).
        peak_change: float, largest change it made to any channel of the image, in grey levels
            (NaN for NV).
    """

    type: str
    center: tuple
    radius: float
    contrast: float
    shape: str
    area: int = 0
    peak_change: float = float("nan")


@dataclasses.dataclass
class SynthResult:
    """A synthetic fundus image with its ground truth.

    Attributes:
        image: ``(H, W, 3)`` uint8 RGB.
        fov: ``(H, W)`` bool field of view.
        masks: ``{"MA", "HE", "EX", "SE": (H, W) bool}``, all four keys always present.
        lesions: list of ``Lesion``; the ones of a mask type match that mask's 8-connected
            components one to one.
        stage: int 0-4.
        eye: ``"left"`` or ``"right"``.
        fov_center: ``(row, col)``; fov_radius: float, pixels.
        disc_center: ``(row, col)``; disc_radius: float, pixels.
        fovea: ``(row, col)``.
    """

    image: np.ndarray
    fov: np.ndarray
    masks: dict
    lesions: list
    stage: int
    eye: str
    fov_center: tuple
    fov_radius: float
    disc_center: tuple
    disc_radius: float
    fovea: tuple
