"""The validation loss: one loop for the trainer (every rank, summed across ranks by the caller) and
for `gptkit eval`, so the two report the same figure for the same weights and rows."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager

import numpy as np
import torch

from gptkit.model import GPT, vocab_cross_entropy


@torch.no_grad()
def loss_sums(
    model: GPT, batches: Iterable[np.ndarray], device: torch.device, autocast: Callable[[], AbstractContextManager]
) -> torch.Tensor:
    """float64 (summed cross-entropy, target tokens) over the batches of (B, T + 1) token rows, over
    the real vocabulary (the figure transformers gives for the same weights). The caller sets eval mode."""
    total = torch.zeros(2, dtype=torch.float64, device=device)
    for buf in batches:
        t = torch.from_numpy(buf).to(device)
        x, y = t[:, :-1], t[:, 1:]
        with autocast():
            logits, _ = model(x)
        total[0] += vocab_cross_entropy(logits, y, model.config.vocab_size).double()
        total[1] += y.numel()
    return total
