"""DR grades from a regressor's continuous prediction, and the one meaning of "referable".

The grader regresses a continuous stage p. Its *grade* is p rounded to the nearest stage and
clipped to 0-4 (numpy's ``rint``, so 1.5 is graded 2), as the Kaggle challenge and the paper
score a regressor. An image is *referable* when it is graded ``REFERABLE_STAGE`` (2, moderate
NPDR) or higher, i.e. when p >= 1.5. The refinement loop runs while the image is graded
referable and stops once it is graded 1 or lower (the paper: "until the image is classified as
non-referable"); evaluation, ``explain`` and the reports use this same rule (docs/method.md).
"""

import numpy as np

__all__ = ["REFERABLE_STAGE", "STAGE_NAMES", "to_grades", "is_referable", "grade_facts"]

REFERABLE_STAGE = 2
"""The lowest referable grade: moderate non-proliferative DR."""

STAGE_NAMES = ("no DR", "mild NPDR", "moderate NPDR", "severe NPDR", "proliferative DR")
"""International Clinical DR scale names of grades 0-4."""


def to_grades(predictions):
    """Round and clip continuous stage predictions to integer grades 0-4.

    Args:
        predictions: array-like of float, any shape.

    Returns:
        int64 array of the same shape (a 0-d array for a scalar).
    """
    return np.clip(np.rint(np.asarray(predictions, dtype=np.float64)), 0, 4).astype(np.int64)


def is_referable(predictions):
    """Whether each prediction is graded referable (grade >= ``REFERABLE_STAGE``).

    Args:
        predictions: array-like of float, any shape.

    Returns:
        bool array of the same shape (a 0-d array for a scalar).
    """
    return to_grades(predictions) >= REFERABLE_STAGE


def grade_facts(prediction):
    """What a report says of one prediction: its grade, the grade's stage name, referable or not.

    Args:
        prediction: float, a continuous stage prediction.

    Returns:
        dict with ``grade`` (int 0-4), ``stage`` (str, ``STAGE_NAMES``) and ``referable`` (bool).
    """
    grade = int(to_grades(prediction))
    return {"grade": grade, "stage": STAGE_NAMES[grade], "referable": grade >= REFERABLE_STAGE}
