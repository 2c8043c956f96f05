"""Write the example photographs of data/examples/ with the package's synthetic generator.

    python docs/experiments/make_examples.py data/examples

One image per DR stage 0, 2, 3 and 4 (512 px, seeds fixed below), saved as JPEG (quality 95) as
a camera would, with each lesion type's mask as a PNG in ``masks/``: ``<id>_<TYPE>.png``.
``dr-saliency explain data/examples --out X`` explains them with the bundled grader; the masks
let a reader check where the lesions are.
"""

import os
import sys

import cv2
import numpy as np

from dr_saliency.fundus import synth
from dr_saliency.fundus.imio import write_mask

#: (id, stage, seed): seeds picked once, not tuned.
EXAMPLES = (("example_stage0", 0, 11), ("example_stage2", 2, 12), ("example_stage3", 3, 13),
            ("example_stage4", 4, 14))


def main(out):
    os.makedirs(os.path.join(out, "masks"), exist_ok=True)
    for image_id, stage, seed in EXAMPLES:
        drawn = synth.synthesize(stage, size=512, rng=seed)
        ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(drawn.image[..., ::-1]),
                               [cv2.IMWRITE_JPEG_QUALITY, 95])
        assert ok
        with open(os.path.join(out, f"{image_id}.jpg"), "wb") as f:
            f.write(buf.tobytes())
        for kind, mask in drawn.masks.items():
            if mask.any():
                write_mask(os.path.join(out, "masks", f"{image_id}_{kind}.png"), mask)
        print(image_id, "stage", stage, {k: int(m.sum()) for k, m in drawn.masks.items()})


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join("data", "examples"))
