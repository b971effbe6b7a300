"""Learning-rate schedules: a pure function of the step, so resuming needs no scheduler state."""

from __future__ import annotations

import math


def lr_at(
    step: int,
    *,
    lr: float,
    max_steps: int,
    warmup_steps: int,
    min_lr_ratio: float = 0.1,
    schedule: str = "cosine",
    decay_frac: float = 0.2,
) -> float:
    """Linear warmup over warmup_steps, then

    - cosine: cosine decay from lr to lr * min_lr_ratio at max_steps;
    - wsd (warmup-stable-decay): constant lr, then a linear decay to lr * min_lr_ratio over the last
      decay_frac of the steps (a run can be extended before its decay starts).
    """
    min_lr = lr * min_lr_ratio
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if step >= max_steps:
        return min_lr
    if schedule == "wsd":
        decay_start = max(warmup_steps, int(max_steps * (1 - decay_frac)))
        if step < decay_start:
            return lr
        frac = (step - decay_start) / max(1, max_steps - decay_start)
        return lr - (lr - min_lr) * frac
    frac = (step - warmup_steps) / max(1, max_steps - warmup_steps)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * frac)) * (lr - min_lr)
