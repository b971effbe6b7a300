"""How the model is distributed over the ranks: the parallelism seam.

A strategy gets the bare GPT and owns everything that depends on how it is spread:
- `wrap`: what the training step calls (activation checkpointing, compile and the distributed
  wrapper are the strategy's to apply, in its own order);
- `accumulating`: gradient sync suppressed on every micro-step but the last;
- `clip_grad_norm_`: the global gradient norm, clipped;
- `state` / `load`: the weights and optimizer states for a checkpoint, as collectives that every
  rank joins (even where only rank 0 writes), and the way back in;
- `replicated`: whether every rank holds the whole model, so rank 0 may sample alone.

The trainer calls only these: to add a strategy, write a class here and name it in `STRATEGIES`;
the training loop does not change. Two exist: DDP (replicated) and FSDP2 (`fully_shard` per block and
on the root: each rank holds 1/world of the weights, gradients and AdamW moments).

Checkpoints are the same files whatever the strategy: full (gathered) weights, and the optimizer
state in torch's own layout keyed by parameter index (the order `GPT.param_groups` gives), the layout
every checkpoint before FSDP2 has. So a run resumes under the other strategy or another world size.

The optimizers are built in optim.py (`build_optimizers`), as a list; `state` and `load` take any
number of them.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, cast

import torch
import torch.nn as nn

from gptkit.model import GPT

if TYPE_CHECKING:
    from gptkit.checkpoint import Checkpoint
    from gptkit.device import Precision
    from gptkit.train.dist import Dist


class Strategy(Protocol):
    name: str
    replicated: bool

    def wrap(self, model: GPT, *, compile: bool) -> nn.Module: ...

    def accumulating(self, last: bool) -> contextlib.AbstractContextManager[None]: ...

    def clip_grad_norm_(self, max_norm: float) -> torch.Tensor: ...

    def state(self, optimizers: list[torch.optim.Optimizer]) -> tuple[dict, list[dict]]: ...

    def load(self, ck: Checkpoint, optimizers: list[torch.optim.Optimizer], states: list[dict] | None) -> None: ...


def _checkpointed(forward: Callable[..., torch.Tensor], *args, **kwargs) -> torch.Tensor:
    if not torch.is_grad_enabled():  # evaluation and sampling: nothing is saved, nothing to recompute
        return forward(*args, **kwargs)
    # Non-reentrant: composes with DDP, FSDP2 and compile; it replays the RNG state, so the
    # recomputed dropout masks are the forward's.
    return torch.utils.checkpoint.checkpoint(forward, *args, use_reentrant=False, **kwargs)


def checkpoint_blocks(model: GPT) -> None:
    """Activation checkpointing: each block keeps only its input for backward and recomputes the
    rest there. The block's own forward is replaced (not wrapped in another module), so parameter
    names, and with them checkpoints, stay as they are."""
    for block in model.transformer.blocks():
        block.forward = functools.partial(_checkpointed, block.forward)  # type: ignore[method-assign]


class DDPStrategy:
    """Every rank holds the whole model; gradients are all-reduced once per optimizer step.
    torch.compile goes inside DDP (DDP's buckets then see the compiled graph's gradients in order)."""

    name = "ddp"
    replicated = True

    def __init__(self, dist: Dist, *, activation_checkpointing: bool = False, precision: Precision | None = None):
        self.dist = dist
        self.activation_checkpointing = activation_checkpointing
        self.model: GPT | None = None
        self.train_model: nn.Module | None = None

    def wrap(self, model: GPT, *, compile: bool) -> nn.Module:
        self.model = model
        if self.activation_checkpointing:
            checkpoint_blocks(model)
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


class FSDPStrategy:
    """FSDP2: `fully_shard` on every block and on the root (which takes the embeddings, the tied
    wte/lm_head matrix, sharded once and still tied, and the final LayerNorm). Each rank holds 1/world
    of every parameter as a DTensor; a block's weights are all-gathered just before it runs and freed
    after, and gradients are reduce-scattered. Order (torchtitan's): activation checkpointing, then
    per-block compile, then fully_shard, so the compiled graph sees the checkpointed forward and the
    all-gathers stay outside it. Evaluation and sampling run on every rank (the all-gathers are
    collectives), in lockstep."""

    name = "fsdp"
    replicated = False

    def __init__(self, dist: Dist, *, activation_checkpointing: bool = False, precision: Precision | None = None):
        self.dist = dist
        self.activation_checkpointing = activation_checkpointing
        self.precision = precision
        self.model: GPT | None = None

    def wrap(self, model: GPT, *, compile: bool) -> nn.Module:
        import torch.distributed as tdist
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        self.model = model
        if not tdist.is_initialized():
            # A world of one (one GPU, the GPU check): FSDP2 still needs a process group and a mesh.
            backend = "nccl" if self.dist.device.type == "cuda" else "gloo"
            tdist.init_process_group(backend, store=tdist.HashStore(), rank=0, world_size=1)
        if self.activation_checkpointing:
            checkpoint_blocks(model)
        if compile:
            for block in model.transformer.blocks():
                block.compile()  # in place: names and the checkpoint layout unchanged
        mesh = init_device_mesh(self.dist.device.type, (tdist.get_world_size(),))
        mp = MixedPrecisionPolicy()
        if self.dist.device.type == "cuda" and self.precision is not None and self.precision.name == "bf16":
            # Only reachable on a GPU. The compute dtype is the precision policy's (bf16 only where the
            # GPU has it natively; fp16 is refused with FSDP2 before launch): weights all-gathered in
            # bf16 halve the traffic; gradients are reduced in fp32 and the sharded master weights
            # and AdamW moments stay fp32, as under DDP with autocast.
            mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        for block in model.transformer.blocks():
            fully_shard(block, mesh=mesh, mp_policy=mp)
        fully_shard(model, mesh=mesh, mp_policy=mp)
        return model

    def accumulating(self, last: bool) -> contextlib.AbstractContextManager[None]:
        # Not a context: the flag holds until changed, and every micro-step sets it. Off, FSDP2 keeps
        # the unsharded gradients and reduce-scatters their sum after the last micro-step.
        cast(_FSDPModule, self._model()).set_requires_gradient_sync(last)
        return contextlib.nullcontext()

    def clip_grad_norm_(self, max_norm: float) -> torch.Tensor:
        from torch.distributed.tensor import DTensor

        grads = [p.grad for p in self._model().parameters() if p.grad is not None]
        # The norm of sharded gradients is a partial DTensor; full_tensor() reduces it to the global one.
        norm = torch.nn.utils.get_total_norm(grads)
        if isinstance(norm, DTensor):
            norm = norm.full_tensor()
        torch.nn.utils.clip_grads_with_norm_(self._model().parameters(), max_norm or float("inf"), norm)
        return norm

    def state(self, optimizers: list[torch.optim.Optimizer]) -> tuple[dict, list[dict]]:
        """Full state dicts gathered on rank 0 (in CPU memory, one tensor at a time); the others
        join the collectives and get empty dicts."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        model = self._model()
        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        weights = get_model_state_dict(model, options=opts)
        states = []
        for opt in optimizers:
            full = cast(dict, get_optimizer_state_dict(model, opt, options=opts))
            gathered = full.get("state", {})  # empty on every rank but 0
            names = self._names(opt)
            # torch's layout (by index), the one DDP writes: one optimizer file for both strategies
            states.append(
                {
                    "state": {i: gathered[n] for i, n in enumerate(names) if n in gathered},
                    "param_groups": opt.state_dict()["param_groups"],
                }
            )
        return weights, states

    def load(self, ck: Checkpoint, optimizers: list[torch.optim.Optimizer], states: list[dict] | None) -> None:
        """Full weights and optimizer states (any strategy's, any world size's) into the shards, read
        by rank 0 alone and broadcast one tensor at a time (the other ranks' `ck` holds no weights
        and their `states` are empty dicts)."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        from gptkit.checkpoint import TIED_KEY, clean_state_dict

        model = self._model()
        opts = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
        sd = clean_state_dict(ck.state_dict)
        set_model_state_dict(model, {**sd, TIED_KEY: sd["transformer.wte.weight"]} if sd else {}, options=opts)
        for opt, st in zip(optimizers, states or [], strict=states is not None):
            names = self._names(opt)
            if not st:
                set_optimizer_state_dict(model, opt, {}, options=opts)
                continue
            by_name: dict = {
                "state": {names[int(i)]: v for i, v in st["state"].items()},
                "param_groups": [dict(g, params=[names[int(i)] for i in g["params"]]) for g in st["param_groups"]],
            }
            set_optimizer_state_dict(model, opt, by_name, options=opts)

    def local_fraction(self) -> tuple[float, float]:
        """(smallest, largest) share of a matrix this rank holds: 1/world when sharded."""
        from torch.distributed.tensor import DTensor

        shares = [
            p.to_local().numel() / p.numel() if isinstance(p, DTensor) else 1.0
            for p in self._model().parameters()
            if p.dim() >= 2
        ]
        return min(shares), max(shares)

    def _names(self, opt: torch.optim.Optimizer) -> list[str]:
        """The parameter names in the optimizer's index order (the tied matrix under its one name)."""
        name_of = {id(p): n for n, p in self._model().named_parameters()}
        return [name_of[id(p)] for g in opt.param_groups for p in g["params"]]

    def _model(self) -> GPT:
        if self.model is None:
            raise RuntimeError("wrap() the model first")
        return self.model


class _FSDPModule(Protocol):
    def set_requires_gradient_sync(self, requires_gradient_sync: bool, *, recurse: bool = True) -> None: ...


STRATEGIES: dict[str, type[DDPStrategy] | type[FSDPStrategy]] = {"ddp": DDPStrategy, "fsdp": FSDPStrategy}


def make_strategy(
    name: str, dist: Dist, *, activation_checkpointing: bool = False, precision: Precision | None = None
) -> Strategy:
    return STRATEGIES[name](dist, activation_checkpointing=activation_checkpointing, precision=precision)
