"""The learning-rate schedule: constant (the tutorial's) or a linear warm-up then cosine decay, per
optimizer step, as a ``LambdaLR`` factor.
"""

from __future__ import annotations

import math

from headstart.config import TrainConfig


def lr_lambda(cfg: TrainConfig, steps_per_epoch: int):
    """Linear warm-up, then constant or cosine decay to zero, by optimizer step."""
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    total = max(1, cfg.epochs * steps_per_epoch)

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if cfg.schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return f
