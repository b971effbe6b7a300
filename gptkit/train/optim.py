"""The optimizers of a run: which parameter goes to which group, and the one builder.

`build_optimizers(cfg, model, device, precision)` is the only place a run's optimizers are made (the
trainer and the benches call it); it returns a list, and the loop, the schedule, the checkpoint
(`pack_optimizer_states`) and resume take any number. `kind` is the only place that decides which
parameter belongs where; `group_settings` what the config sets on each group (its own peak learning
rate among them: the schedule scales each group's, so Muon never runs at AdamW's rate by accident).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, cast

import torch
import torch.nn as nn

if TYPE_CHECKING:
    from torch.distributed.tensor import DTensor

    from gptkit.train.config import TrainConfig


def kind(name: str, p: nn.Parameter) -> str:
    """Which group a parameter of the GPT belongs to (the one rule):
    - "qkv": attention's fused c_attn weight (3C x C), a matrix Muon may split into Q, K and V;
    - "matrix": the other 2-D weights inside the blocks (attention and MLP projections);
    - "embedding": the token and position embeddings (and so the tied lm_head);
    - "gain": a bias or a LayerNorm gain (1-D), never decayed."""
    if p.dim() < 2:
        return "gain"
    if not name.startswith("transformer.h."):
        return "embedding"
    return "qkv" if name.endswith("attn.c_attn.weight") else "matrix"


def model_groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """The trainable parameters by kind, each once (named_parameters() yields the tied weight once),
    in the model's order: an optimizer state's parameter indices follow it."""
    groups: dict[str, list[nn.Parameter]] = {"qkv": [], "matrix": [], "embedding": [], "gain": []}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups[kind(name, p)].append(p)
    return groups


def adamw_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW over everything: weight decay on matrices and embeddings (dim >= 2), none on gains. The
    decayed group keeps the model's order (embeddings first), as every checkpoint so far stored it."""
    decay = [p for name, p in model.named_parameters() if p.requires_grad and kind(name, p) != "gain"]
    return [
        {"params": decay, "weight_decay": weight_decay, "role": "decay"},
        {"params": model_groups(model)["gain"], "weight_decay": 0.0, "role": "gain"},
    ]


# --- Muon ------------------------------------------------------------------------------------------
# torch.optim.Muon's quintic Newton-Schulz coefficients and step count (Keller Jordan's).
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 5
NS_EPS = 1e-7


def newton_schulz(g: torch.Tensor, dtype: torch.dtype, coefficients=NS_COEFFICIENTS, steps=NS_STEPS, eps=NS_EPS):
    """An approximate UV^T of the 2-D `g` (USV^T its SVD), computed in `dtype`: every singular value
    is pushed into about [0.7, 1.2]. The same operations in the same order as torch.optim.Muon's
    iteration, so in bf16 the result is bitwise torch's; torch hard-codes bf16, which a CPU without
    native bf16 runs 4x slower than fp32 (a quickstart step measured 4.2x AdamW's in bf16, 1.09x in fp32)."""
    a, b, c = coefficients
    x = g.to(dtype, copy=True)  # a copy: the in-place steps below must not touch the momentum buffer
    tall = g.size(0) > g.size(1)
    if tall:  # iterate on the wide side: the Gram matrix is the smaller one
        x = x.T
    x.div_(x.norm().clamp(min=eps))  # Frobenius norm >= spectral norm: every singular value <= 1
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)  # a x + (b G + c G^2) x
    return x.T if tall else x


def adjusted_lr(lr: float, how: str, rows: int, cols: int) -> float:
    """torch.optim.Muon's per-shape learning rate: original sqrt(max(1, rows/cols)) (Keller Jordan's),
    match_rms_adamw 0.2 sqrt(max(rows, cols)) (Moonshot's: an update with AdamW's RMS)."""
    if how == "match_rms_adamw":
        return lr * 0.2 * math.sqrt(max(rows, cols))
    return lr * math.sqrt(max(1.0, rows / cols))


class Muon(torch.optim.Muon):
    """torch.optim.Muon (its groups, state and update rule: momentum, Nesterov, decoupled weight decay,
    the learning-rate adjustment), with two group settings torch's lacks:
    - `ns_dtype`: the dtype of the Newton-Schulz iteration ("bfloat16" is torch's own path, bitwise);
    - `split`: orthogonalize each of the weight's `split` row blocks on its own (c_attn's Q, K, V)."""

    def __init__(self, params, *, ns_dtype: str = "bfloat16", split: int = 1, **kw):
        super().__init__(params, **kw)
        for g in self.param_groups:
            g.setdefault("ns_dtype", ns_dtype)
            g.setdefault("split", split)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for g in self.param_groups:
            lr, mu, dtype = g["lr"], g["momentum"], getattr(torch, g["ns_dtype"])
            for p in g["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad, memory_format=torch.preserve_format)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - mu)  # B = mu B + (1 - mu) grad
                update = p.grad.lerp(buf, mu) if g["nesterov"] else buf
                sharded = is_dtensor(update)
                if sharded:  # FSDP2: this rank's rows; the iteration needs the whole matrix (see gather)
                    update = gather(cast("DTensor", update), dtype)
                blocks = update.chunk(g["split"], dim=0)
                o = [newton_schulz(u, dtype, g["ns_coefficients"], g["ns_steps"], g["eps"]) for u in blocks]
                rows, cols = blocks[0].shape
                step = o[0] if len(o) == 1 else torch.cat(o)
                if sharded:
                    step = local_rows(step, cast("DTensor", p))
                p.mul_(1 - lr * g["weight_decay"])
                p.add_(step, alpha=-adjusted_lr(lr, g["adjust_lr_fn"], rows, cols))
        return loss


# Under FSDP2 a matrix, its gradient and its momentum buffer are DTensors sharded by rows (Shard(0)),
# and Newton-Schulz of a shard is not the shard of Newton-Schulz. Each rank all-gathers the whole
# update once (in the iteration's dtype: the bytes the bench counts), runs the iteration on it as
# DDP does (so Q, K and V are split on the whole c_attn) and keeps its own rows of the result. The
# momentum buffers stay sharded. (torch.optim.Muon on DTensors runs the iteration as distributed
# matmuls, 11 all-reduces per matrix, equal only up to rounding.)
def is_dtensor(t: torch.Tensor) -> bool:
    if not torch.distributed.is_available():  # a build without it has no DTensors either
        return False
    # Imported here, not at the top: a slow import (0.6 s measured) kept off every CLI start.
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def gather(update: DTensor, dtype: torch.dtype) -> torch.Tensor:
    """The whole matrix of a sharded update, in `dtype` (converted before the gather, as the
    iteration's first step would: the same values, fewer bytes in bf16)."""
    return cast("DTensor", update.to(dtype)).full_tensor()


def local_rows(full: torch.Tensor, like: DTensor) -> DTensor:
    """This rank's part of `full`, sharded as `like`: Replicate to its placements is a local slice,
    no communication."""
    from torch.distributed.tensor import DTensor, Replicate

    whole = DTensor.from_local(full, like.device_mesh, [Replicate()] * like.device_mesh.ndim, run_check=False)
    return whole.redistribute(like.device_mesh, like.placements)


def ns_dtype(precision: str) -> str:
    """The Newton-Schulz dtype for a run's precision (device.resolve_precision's choice): bf16 where
    the run computes in bf16 (the hardware runs it natively), else fp32 (fp16's range is too short
    for the iteration's intermediate products)."""
    return "bfloat16" if precision == "bf16" else "float32"


def group_settings(cfg: TrainConfig, role: str, precision: str) -> dict:
    """What the config decides for a group of each role: build_optimizers and apply_config (a
    resumed run's config wins over its checkpoint's) both read it."""
    if role in ("qkv", "matrix"):
        return {
            "peak_lr": cfg.lr if cfg.muon_lr is None else cfg.muon_lr,
            "weight_decay": cfg.weight_decay,
            "momentum": cfg.muon_momentum,
            "nesterov": cfg.muon_nesterov,
            "adjust_lr_fn": cfg.muon_adjust_lr,
            "ns_dtype": ns_dtype(precision),
            "split": 3 if role == "qkv" and cfg.muon_qkv == "split" else 1,
        }
    adamw = {"peak_lr": cfg.lr, "betas": (cfg.beta1, cfg.beta2), "eps": cfg.eps}
    return {**adamw, "weight_decay": cfg.weight_decay if role == "decay" else 0.0}


def build_optimizers(
    cfg: TrainConfig, model: nn.Module, device: torch.device, precision: str = "fp32"
) -> list[torch.optim.Optimizer]:
    """The run's optimizers, from its config and its precision (resolve_precision's name).
    - adamw: one AdamW over every parameter (adamw_groups);
    - muon: [AdamW over the embeddings and gains, Muon over the block matrices (c_attn its own group)].
    Each group carries its role and its own peak learning rate (`peak_lr`), which the schedule scales."""
    fused = device.type in ("cuda", "cpu")  # one kernel per step instead of a loop of tensors

    def adamw(groups: list[dict]) -> torch.optim.AdamW:
        groups = [{**g, **group_settings(cfg, g["role"], precision)} for g in groups]
        return torch.optim.AdamW(groups, lr=cfg.lr, fused=fused)

    if cfg.optimizer == "adamw":
        return [adamw(adamw_groups(model, cfg.weight_decay))]
    g = model_groups(model)
    rest = [{"params": g["embedding"], "role": "decay"}, {"params": g["gain"], "role": "gain"}]
    matrices = [{"params": g[r], "role": r, **group_settings(cfg, r, precision)} for r in ("matrix", "qkv")]
    muon = Muon([m for m in matrices if m["params"]], lr=cfg.lr)
    return [adamw(rest), muon]


def apply_config(optimizers: list[torch.optim.Optimizer], cfg: TrainConfig, precision: str = "fp32") -> None:
    """A resumed run's config may change these; it wins over the checkpoint's optimizer state. (A
    checkpoint from before groups had roles holds one AdamW: its decayed group is the one with decay.)"""
    for opt in optimizers:
        for g in opt.param_groups:
            role = g.get("role") or ("decay" if g["weight_decay"] > 0 else "gain")
            g.update(role=role, **group_settings(cfg, role, precision))


def schedule_lrs(optimizers: list[torch.optim.Optimizer], lr_of: Callable[[float], float]) -> dict[str, float]:
    """Set every group's learning rate to lr_of(its peak); returns the rate of each role (the log's)."""
    out: dict[str, float] = {}
    for g in param_groups(optimizers):
        g["lr"] = lr_of(g["peak_lr"])
        out.setdefault(g["role"], g["lr"])
    return out


def param_groups(optimizers: list[torch.optim.Optimizer]) -> Iterator[dict]:
    for opt in optimizers:
        yield from opt.param_groups


# One optimizer's state is stored as it is (the format of every checkpoint so far); several as a list.
def pack_optimizer_states(states: list[dict]) -> dict:
    return states[0] if len(states) == 1 else {"optimizers": states}


def unpack_optimizer_states(state: dict, n: int) -> list[dict]:
    states = state["optimizers"] if "optimizers" in state and "state" not in state else [state]
    if len(states) != n:
        raise ValueError(f"the checkpoint holds {len(states)} optimizer states, this run has {n} optimizers")
    return states
