"""The result of refining one image: :class:`RefineResult` and the reasons the loop stops.

Kept apart from the loop so that the result store, lesion evaluation and figures read results
without importing the loop. See :mod:`dr_saliency.refinement.loop` for k (maps) and n
(inpaintings). numpy only.
"""

import dataclasses

import numpy as np

__all__ = ["RefineResult", "STOP_REASONS"]

STOP_REASONS = ("normal", "max_iterations", "not_referable", "empty_mask")
"""Why the loop stopped for an image; see :mod:`dr_saliency.refinement.loop`."""


@dataclasses.dataclass
class RefineResult:
    """The refinement of one image.

    Attributes:
        maps: (k, H, W) float32 saliency maps s_0..s_{k-1}, k >= 1, 0 outside the FOV.
        masks: (k, H, W) bool, ``masks[i]`` the erase mask of ``maps[i]``; the first n were
            inpainted.
        predictions: (n + 1,) float32 predictions on I_0..I_n.
        images: (n + 1, H, W, 3) uint8 I_0..I_n when kept, else None.
        final_map: (H, W) float32 S (:meth:`dr_saliency.core.maps.Combination.final_map`), >= 0,
            in [0, 1] unless the run's ``normalize`` is "none".
        stop_reason: one of :data:`STOP_REASONS`.
        iterations: n, the number of inpaintings.
        params: the run's settings (JSON-serialisable dict), as
            :func:`dr_saliency.refinement.loop.run_params` gives.
    """

    maps: np.ndarray
    masks: np.ndarray
    predictions: np.ndarray
    images: np.ndarray | None
    final_map: np.ndarray
    stop_reason: str
    iterations: int
    params: dict
