"""How the model is distributed over the ranks: the parallelism seam.

A strategy gets the bare GPT and owns everything that depends on how it is spread:
- `wrap`: what the training step calls (activation checkpointing, compile and the distributed
  wrapper are the strategy's to apply, in its own order);
- `accumulating`: gradient sync suppressed on every micro-step but the last;
- `clip_grad_norm_`: the global gradient norm, clipped;
- `state` / `load`: the weights and optimizer states for a checkpoint, as collectives that every
  rank joins (even where only rank 0 writes), and the way back in;
- `replicated`: whether every rank holds the whole model, so rank 0 may sample alone.

The trainer calls only these: to add a strategy (FSDP2, say), write a class here and name it in
`STRATEGIES`; the training loop does not change.

The optimizers are built in optim.py (`build_optimizers`), as a list; `state` and `load` take any
number of them.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Protocol, cast

import torch
import torch.nn as nn

from gptkit.model import GPT

if TYPE_CHECKING:
    from gptkit.checkpoint import Checkpoint
    from gptkit.train.dist import Dist


class Strategy(Protocol):
    name: str
    replicated: bool

    def wrap(self, model: GPT, *, compile: bool) -> nn.Module: ...

    def accumulating(self, last: bool) -> contextlib.AbstractContextManager[None]: ...

    def clip_grad_norm_(self, max_norm: float) -> torch.Tensor: ...

    def state(self, optimizers: list[torch.optim.Optimizer]) -> tuple[dict, list[dict]]: ...

    def load(self, ck: Checkpoint, optimizers: list[torch.optim.Optimizer], states: list[dict] | None) -> None: ...


class DDPStrategy:
    """Every rank holds the whole model; gradients are all-reduced once per optimizer step.
    torch.compile goes inside DDP (DDP's buckets then see the compiled graph's gradients in order)."""

    name = "ddp"
    replicated = True

    def __init__(self, dist: Dist):
        self.dist = dist
        self.model: GPT | None = None
        self.train_model: nn.Module | None = None

    def wrap(self, model: GPT, *, compile: bool) -> nn.Module:
        self.model = model
        m: nn.Module = model
        if compile:
            # Compiling a Module gives a Module (OptimizedModule); torch types the result as a callable.
            m = cast(nn.Module, torch.compile(m))
        if self.dist.distributed:
            ids = [self.dist.local_rank] if self.dist.device.type == "cuda" else None
            m = nn.parallel.DistributedDataParallel(m, device_ids=ids)
        self.train_model = m
        return m

    def accumulating(self, last: bool) -> contextlib.AbstractContextManager[None]:
        ddp = self.train_model
        if isinstance(ddp, nn.parallel.DistributedDataParallel) and not last:
            return cast(contextlib.AbstractContextManager[None], ddp.no_sync())
        return contextlib.nullcontext()

    def clip_grad_norm_(self, max_norm: float) -> torch.Tensor:
        # The gradients are whole on every rank after the all-reduce: the local norm is the global one.
        return torch.nn.utils.clip_grad_norm_(self._model().parameters(), max_norm or float("inf"))

    def state(self, optimizers: list[torch.optim.Optimizer]) -> tuple[dict, list[dict]]:
        # Replicated: every rank already holds the full state, so this needs no communication.
        return self._model().state_dict(), [o.state_dict() for o in optimizers]

    def load(self, ck: Checkpoint, optimizers: list[torch.optim.Optimizer], states: list[dict] | None) -> None:
        """The weights into the model; the optimizers' states (None: a checkpoint without them)."""
        ck.load_into(self._model())
        for opt, st in zip(optimizers, states or [], strict=states is not None):
            opt.load_state_dict(st)

    def _model(self) -> GPT:
        if self.model is None:
            raise RuntimeError("wrap() the model first")
        return self.model


STRATEGIES = {"ddp": DDPStrategy}


def make_strategy(name: str, dist: Dist) -> Strategy:
    return STRATEGIES[name](dist)
