"""Training options (no TensorFlow here, so the CLI can show defaults without importing it)."""

import dataclasses

#: Smallest input side the network accepts; equal to dr_saliency.grader.model.MIN_INPUT_SIZE (a test
#: checks), repeated here so that this module does not import TensorFlow.
MIN_INPUT_SIZE = 128

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("constant", "cosine")
STRATEGIES = ("default", "mirrored", "multiworker")
#: Seconds a worker of a multi-worker training waits for the others to start (and to answer)
#: before it gives up: long enough to start the same command on a few machines by hand.
CLUSTER_TIMEOUT = 300.0
#: Equal to dr_saliency.grader.model.PRECISIONS (a test checks), repeated to keep TensorFlow out.
PRECISIONS = ("fp32", "bf16")


@dataclasses.dataclass
class TrainConfig:
    """Every training option, with the paper's choices as defaults where it states them.

    Attributes:
        input_size: int, square input side (paper: 512).
        width: float, filter multiplier of the VGG-16 (1.0 is the paper's network).
        weights: "imagenet", None, or a VGG-16 HDF5 path (paper: ImageNet initialisation).
        dropout: float, after fc1 and fc2 (paper: 0.5).
        epochs: int, total epochs (paper: 500).
        batch_size: int, global batch size (split over replicas by a distribution strategy).
        optimizer: "sgd" (Nesterov momentum 0.9, the paper's) or "adam" (recorded if used).
        learning_rate: float, peak learning rate (not given by the paper).
        schedule: "constant" or "cosine" decay to 0 over the epochs after warm-up.
        warmup_epochs: float, linear warm-up from 0 to the peak rate (0: none).
        clipnorm: float or None, gradient norm clipping (helps VGG-16 without batch norm).
        augment: bool, random flips, rotation, scale/translation, colour jitter.
        balance: bool, resample so that every stage present is seen equally often per epoch.
        val_fraction: float, stratified validation fraction when the data has no split column.
        seed: int, seeds weights, the split, shuffling and augmentation.
        strategy: "default", "mirrored" (local GPUs) or "multiworker" (TF_CONFIG cluster).
        steps_per_epoch: int or None (None: training images / batch size).
        precision: "fp32" or "bf16" (bfloat16 arithmetic, float32 weights; docs/performance.md).
        init_from: None, or a trained grader's model file whose weights start this run (a warm
            start: same input size and width; docs/choices.md). Overrides ``weights``.
    """

    input_size: int = 512
    width: float = 1.0
    weights: object = "imagenet"
    dropout: float = 0.5
    epochs: int = 500
    batch_size: int = 8
    optimizer: str = "sgd"
    learning_rate: float = 1e-3
    schedule: str = "constant"
    warmup_epochs: float = 0.0
    clipnorm: object = None
    augment: bool = True
    balance: bool = True
    val_fraction: float = 0.15
    seed: int = 0
    strategy: str = "default"
    steps_per_epoch: object = None
    precision: str = "fp32"
    init_from: object = None

    def validate(self):
        """Check every field; raise ValueError naming the first bad one."""
        checks = [
            (isinstance(self.input_size, int) and self.input_size >= MIN_INPUT_SIZE,
             f"input_size >= {MIN_INPUT_SIZE}", "input_size"),
            (self.width > 0, "width > 0", "width"),
            (isinstance(self.epochs, int) and self.epochs >= 1, "epochs >= 1", "epochs"),
            (isinstance(self.batch_size, int) and self.batch_size >= 1, "batch_size >= 1", "batch_size"),
            (self.optimizer in OPTIMIZERS, f"optimizer in {OPTIMIZERS}", "optimizer"),
            (self.learning_rate > 0, "learning_rate > 0", "learning_rate"),
            (self.schedule in SCHEDULES, f"schedule in {SCHEDULES}", "schedule"),
            (self.warmup_epochs >= 0, "warmup_epochs >= 0", "warmup_epochs"),
            (self.clipnorm is None or self.clipnorm > 0, "clipnorm > 0 or None", "clipnorm"),
            (0 < self.val_fraction < 1, "val_fraction in (0, 1)", "val_fraction"),
            (self.strategy in STRATEGIES, f"strategy in {STRATEGIES}", "strategy"),
            (self.steps_per_epoch is None or self.steps_per_epoch >= 1, "steps_per_epoch >= 1",
             "steps_per_epoch"),
            (self.precision in PRECISIONS, f"precision in {PRECISIONS}", "precision"),
        ]
        for ok, expected, name in checks:
            if not ok:
                raise ValueError(f"Expected {expected}. Received: {name}={getattr(self, name)!r}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"Expected dropout in [0, 1). Received: dropout={self.dropout!r}")


#: The quick CPU profile: trains a narrow VGG-16 from scratch on synthetic data in a few minutes
#: (evidence in docs/training.md). The paper's settings stay the TrainConfig defaults.
QUICK_PROFILE = dict(input_size=256, width=0.125, weights=None, epochs=6, batch_size=16,
                     optimizer="sgd", learning_rate=3e-3, schedule="cosine", warmup_epochs=1.0,
                     clipnorm=1.0)



#: The reference CPU profile: the paper's 512 px input with a quarter-width VGG-16 trained from
#: scratch, within 45 minutes on 2 CPU cores on 2,000 synthetic images (docs/training.md).
REFERENCE_PROFILE = dict(QUICK_PROFILE, input_size=512, width=0.25, epochs=20, batch_size=8)

PROFILES = {"paper": {}, "quick": QUICK_PROFILE, "reference": REFERENCE_PROFILE}
"""Training profiles by name: the paper's settings (the TrainConfig defaults), the quick one and
the reference one."""
