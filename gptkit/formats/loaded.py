"""The one internal form every model format is read into and written from, and what a format module
registers: `Loaded` = (GPTConfig, state dict in gptkit names, tokenizer); `Format` = how to detect,
read and write one format.

Readers of other projects' files go through `to_gptkit_names` and `assemble`, which turn any GPT-2
state dict plus whatever the file says about its config into a `Loaded`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gptkit.checkpoint import TIED_KEY, clean_state_dict, model_from_state_dict
from gptkit.data.tokenizers import VOCAB_SIZES
from gptkit.errors import GptkitError
from gptkit.model import CONV1D_SUFFIXES, GPT, GPTConfig, pad_vocab


@dataclass
class Loaded:
    """A model in gptkit's terms, whatever file it came from."""

    config: GPTConfig
    state_dict: dict[str, torch.Tensor] = field(repr=False)  # gptkit names, no lm_head, padded vocab rows
    tokenizer: str
    path: Path
    format: str
    meta: dict = field(default_factory=dict)  # step and other provenance, when the source has them

    def build_model(self, device: str | torch.device = "cpu") -> GPT:
        return model_from_state_dict(self.config, self.state_dict, device=device, source=self.path)


def never(key: str, v: torch.Tensor) -> bool:
    return False


@dataclass(frozen=True)
class Format:
    """One model format: registered in gptkit.formats.registry."""

    name: str
    # By content, not by name: `head` is a file's first 16 bytes, None for a directory.
    detect: Callable[[Path, bytes | None], bool]
    read: Callable[[Path], Loaded]
    # Writes the model at the given path in the given dtype; returns notes for the user.
    write: Callable[[Loaded, Path, torch.dtype], list[str]]
    suffixes: tuple[str, ...] = ()  # output names that imply this format
    # Tensors the format stores in fp32 whatever --dtype (verification rounds only the others).
    keeps_fp32: Callable[[str, torch.Tensor], bool] = never


def cast_state_dict(sd: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in sd.items()}


def to_gptkit_names(sd: dict[str, Any], source: object) -> dict[str, torch.Tensor]:
    """Any GPT-2 state dict (HF Conv1D or Linear layout, with or without `transformer.`, compile/DDP
    prefixes, causal-mask buffers, a tied lm_head copy) -> gptkit names and nn.Linear layout."""
    sd = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    head = next((v for k, v in sd.items() if k == TIED_KEY or k.endswith("." + TIED_KEY)), None)
    sd = clean_state_dict(sd)  # strips _orig_mod. / module., drops lm_head.weight
    out = {}
    for k, v in sd.items():
        if k.endswith((".attn.bias", ".attn.masked_bias")):
            continue  # HF's and old nanoGPT's causal-mask buffers, not weights
        if not k.startswith("transformer."):
            k = "transformer." + k  # HF GPT2Model naming (openai-community/gpt2 stores h.0..., wte...)
        out[k] = v
    if "transformer.wte.weight" not in out:
        raise GptkitError(f"{source}: not a GPT-2 state dict (no wte / transformer.wte.weight)")
    wte = out["transformer.wte.weight"]
    if head is not None and (head.shape != wte.shape or not torch.equal(head, wte)):
        raise GptkitError(f"{source}: lm_head is not tied to the token embedding; gptkit models always tie them")
    c = wte.shape[1]
    qkv = out.get("transformer.h.0.attn.c_attn.weight")
    if qkv is not None and tuple(qkv.shape) == (c, 3 * c):  # HF Conv1D stores (in, out)
        out = {k: (v.t().contiguous() if k.endswith(CONV1D_SUFFIXES) else v) for k, v in out.items()}
    if not any(k.endswith(".bias") for k in out):  # nanoGPT with bias=False: zero biases are equivalent
        for k in list(out):
            if k.endswith(".weight") and ("ln_" in k or ".c_" in k):
                out[k[: -len("weight")] + "bias"] = torch.zeros(out[k].shape[0], dtype=out[k].dtype)
    return out


def decide_vocab(rows: int, tokenizer: str | None, source: object) -> tuple[str, int]:
    """(tokenizer, real vocab size) for an embedding with `rows` rows and an optional stated tokenizer."""
    if tokenizer is None:
        if rows == VOCAB_SIZES["bytes"]:
            tokenizer = "bytes"
        elif rows >= VOCAB_SIZES["gpt2"]:
            tokenizer = "gpt2"
        else:
            known = ", ".join(f"{name}: {n}" for name, n in VOCAB_SIZES.items())
            raise GptkitError(f"{source}: a vocabulary of {rows} tokens matches no gptkit tokenizer ({known})")
    real = VOCAB_SIZES.get(tokenizer, rows)
    return tokenizer, min(real, rows)  # rows < real: kept as is, and sampling reports the mismatch


def assemble(
    sd: dict[str, torch.Tensor], hints: dict, source: str | Path, fmt: str, meta: dict | None = None
) -> Loaded:
    """gptkit-named weights + whatever the source said about the config -> Loaded (vocab padded)."""
    wte = sd["transformer.wte.weight"]
    rows, n_embd = wte.shape
    layers = {int(m.group(1)) for k in sd if (m := re.match(r"transformer\.h\.(\d+)\.", k))}
    n_layer = hints.get("n_layer", len(layers))
    n_head = hints.get("n_head") or max(1, n_embd // 64)  # GPT-2's sizes all use 64-wide heads
    tokenizer, vocab = decide_vocab(rows, hints.get("tokenizer"), source)
    padded = max(hints.get("padded_vocab_size") or 0, rows, pad_vocab(vocab))
    try:
        config = GPTConfig(
            block_size=hints.get(
                "block_size", sd["transformer.wpe.weight"].shape[0] if "transformer.wpe.weight" in sd else 1024
            ),
            vocab_size=vocab,
            padded_vocab_size=padded,
            n_layer=n_layer,
            n_head=n_head,
            n_embd=n_embd,
            dropout=float(hints.get("dropout", 0.0)),
            layer_norm_epsilon=float(hints.get("layer_norm_epsilon", 1e-5)),
        )
    except ValueError as e:
        raise GptkitError(f"{source}: inconsistent model config ({e})") from None
    if rows < padded:  # HF and GGUF store exactly the real vocabulary; gptkit keeps the padded rows
        sd = dict(sd)
        sd["transformer.wte.weight"] = torch.cat([wte, wte.new_zeros(padded - rows, n_embd)])
    return Loaded(config, sd, tokenizer, Path(source), fmt, meta or {})
