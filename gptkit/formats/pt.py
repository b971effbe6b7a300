""".pt files: gptkit's and nanoGPT's ckpt.pt, build-nanogpt's model_XXXXX.pt, or a bare state dict.

Every .pt is read with torch.load(weights_only=True): tensors and plain containers only. Older
nanoGPT-family scripts pickle their GPTConfig dataclass; that one class name is mapped onto an inert
stand-in that only holds attributes, so no code from the file ever runs.

Written as nanoGPT's {'model', 'model_args', 'iter_num', ...}, with gptkit's full config alongside.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from gptkit import __version__
from gptkit.checkpoint import TIED_KEY
from gptkit.errors import GptkitError
from gptkit.formats.loaded import Format, Loaded, assemble, cast_state_dict, to_gptkit_names


class PickledConfig:
    """Inert stand-in for a GPTConfig dataclass pickled by nanoGPT-family training scripts.

    torch.load(weights_only=True) builds it from plain attribute values; it has no behaviour, so a
    file naming this class can set attributes and nothing else.
    """

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:
            state = state[0] or {}
        if isinstance(state, dict):
            self.__dict__.update({k: v for k, v in state.items() if isinstance(v, (int, float, str, bool, type(None)))})


# Where those scripts' GPTConfig lives when pickled: build-nanogpt's train_gpt2.py runs as __main__.
PICKLED_CONFIG_NAMES = ("__main__.GPTConfig", "train_gpt2.GPTConfig", "model.GPTConfig")


def torch_load(path: Path) -> Any:
    """torch.load with weights_only=True; a file that needs more than tensors is refused in one line."""
    safe: list[Callable[..., Any] | tuple[Callable[..., Any], str]] = [(PickledConfig, n) for n in PICKLED_CONFIG_NAMES]
    try:
        with torch.serialization.safe_globals(safe):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        m = re.search(r"GLOBAL ([\w.]+)|unrecognized function ([^\s]+)|(Unsupported operand \S+)", str(e))
        what = next((g for g in (m.groups() if m else ()) if g), "a Python object")
        raise GptkitError(
            f"{path}: refusing to unpickle {what}: gptkit loads .pt files with torch.load(weights_only=True), "
            "which allows tensors and plain containers only (convert it with its own code to safetensors)"
        ) from None
    except Exception as e:  # noqa: BLE001 - zip, EOF and storage errors all mean an unreadable file
        raise GptkitError(f"{path}: cannot read ({e.__class__.__name__}); the file is corrupt or truncated") from None


def detect(path: Path, head: bytes | None) -> bool:
    return head is not None and (head[:4] == b"PK\x03\x04" or head[:1] == b"\x80")  # torch.save's zip, or a pickle


def read(path: Path) -> Loaded:
    obj = torch_load(path)
    hints: dict = {}
    meta: dict = {}
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        sd = obj["model"]
        if isinstance(obj.get("gptkit"), dict):  # gptkit's own .pt: the full config
            g = obj["gptkit"]
            hints.update(g.get("model", {}))
            hints["tokenizer"] = g.get("tokenizer")
        elif isinstance(obj.get("model_args"), dict):  # nanoGPT ckpt.pt
            hints.update(
                {
                    k: v
                    for k, v in obj["model_args"].items()
                    if k in ("n_layer", "n_head", "n_embd", "block_size", "dropout")
                }
            )
        elif obj.get("config") is not None:  # build-nanogpt model_XXXXX.pt: a pickled GPTConfig (or a dict)
            c = obj["config"]
            c = c if isinstance(c, dict) else vars(c)
            hints.update({k: v for k, v in c.items() if k in ("n_layer", "n_head", "n_embd", "block_size")})
        for key in ("iter_num", "step"):
            if isinstance(obj.get(key), int):
                meta["step"] = obj[key]
    elif isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        sd = obj  # a bare state dict
    else:
        raise GptkitError(
            f"{path}: not a model checkpoint (expected a state dict, or a dict with a 'model' state dict)"
        )
    return assemble(to_gptkit_names(sd, path), hints, path, "pt", meta)


def write(m: Loaded, out: Path, dtype: torch.dtype) -> list[str]:
    sd = cast_state_dict(m.state_dict, dtype)
    # nanoGPT's state dict has both names; torch.save stores the shared storage once
    sd[TIED_KEY] = sd["transformer.wte.weight"]
    c = m.config
    obj = {
        "model": sd,
        # nanoGPT's GPTConfig(**model_args); its vocab_size is our padded row count
        "model_args": dict(
            n_layer=c.n_layer,
            n_head=c.n_head,
            n_embd=c.n_embd,
            block_size=c.block_size,
            bias=True,
            vocab_size=c.padded_vocab_size,
            dropout=c.dropout,
        ),
        "iter_num": int(m.meta.get("step") or 0),
        "best_val_loss": 1e9,
        "config": {},
        "gptkit": {"model": c.to_dict(), "tokenizer": m.tokenizer, "version": __version__},
    }
    torch.save(obj, out)
    return ["nanoGPT can sample from it (init_from='resume'); it holds no optimizer state to resume training with"]


# .bin is read as a .pt but never implies one on output: HF's pytorch_model.bin is a different thing.
FORMAT = Format("pt", detect, read, write, suffixes=(".pt", ".pth", ".ckpt"))
