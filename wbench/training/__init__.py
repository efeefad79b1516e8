"""Training smoothed and penalty-regularised classifiers.

Noise training follows Levine & Feizi, Appendix B; gradient penalties Lin et al., Appendix D.
"""

from wbench.training.config import PRESETS, TrainConfig
from wbench.training.loop import CHECKPOINT_NAME, METRICS_NAME, evaluate, train
from wbench.training.step import random_crop_flip, train_step

__all__ = [
    "CHECKPOINT_NAME",
    "METRICS_NAME",
    "PRESETS",
    "TrainConfig",
    "evaluate",
    "random_crop_flip",
    "train",
    "train_step",
]
