"""The optimizers of a run: which parameter goes to which group, and the one builder.

`build_optimizers(cfg, model, device)` is the only place a run's optimizers are made (the trainer,
a sharded strategy's tests and the benches call it); it returns a list, and the loop, the schedule,
the checkpoint (`pack_optimizer_states`) and resume take any number. `model_groups` is the only place
that decides which parameter belongs where.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
import torch.nn as nn

if TYPE_CHECKING:
    from gptkit.train.config import TrainConfig


def kind(name: str, p: nn.Parameter) -> str:
    """Which group a parameter of the GPT belongs to (the one rule):
    - "matrix": a 2-D weight inside a block (attention and MLP projections);
    - "embedding": the token and position embeddings (and so the tied lm_head);
    - "gain": a bias or a LayerNorm gain (1-D), never decayed."""
    if p.dim() < 2:
        return "gain"
    return "matrix" if name.startswith("transformer.h.") else "embedding"


def model_groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """The trainable parameters by kind, each once (named_parameters() yields the tied weight once),
    in the model's order: an optimizer state's parameter indices follow it."""
    groups: dict[str, list[nn.Parameter]] = {"matrix": [], "embedding": [], "gain": []}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups[kind(name, p)].append(p)
    return groups


def adamw_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW over everything: weight decay on matrices and embeddings (dim >= 2), none on gains. The
    decayed group keeps the model's order (embeddings first), as every checkpoint so far stored it."""
    decay = [p for name, p in model.named_parameters() if p.requires_grad and kind(name, p) != "gain"]
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": model_groups(model)["gain"], "weight_decay": 0.0},
    ]


def build_optimizers(cfg: TrainConfig, model: nn.Module, device: torch.device) -> list[torch.optim.Optimizer]:
    """The run's optimizers, from its config: AdamW over every parameter (adamw_groups)."""
    fused = device.type in ("cuda", "cpu")  # one kernel per step instead of a loop of tensors
    return [
        torch.optim.AdamW(
            adamw_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, fused=fused
        )
    ]


def apply_config(optimizers: list[torch.optim.Optimizer], cfg: TrainConfig) -> None:
    """A resumed run's config may change these; it wins over the checkpoint's optimizer state."""
    for opt in optimizers:
        for g in opt.param_groups:
            g["betas"], g["eps"] = (cfg.beta1, cfg.beta2), cfg.eps
            if g["weight_decay"] > 0:
                g["weight_decay"] = cfg.weight_decay


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
