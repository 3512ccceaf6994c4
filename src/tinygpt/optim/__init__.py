"""Optimisers and learning-rate schedules."""
from .adamw import AdamW
from .lr_scheduler import CosineWarmupScheduler, cosine_with_warmup
from .optimizer import Optimizer
from .sgd import SGD

__all__ = ["Optimizer", "AdamW", "SGD", "cosine_with_warmup", "CosineWarmupScheduler"]
