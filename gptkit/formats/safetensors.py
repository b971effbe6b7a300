"""One .safetensors file; gptkit's config and the model's tokenizer (as strings) ride in its metadata."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from gptkit import __version__
from gptkit.errors import GptkitError
from gptkit.formats.loaded import (
    NEEDS_TOKENIZER,
    Format,
    Loaded,
    assemble,
    cast_state_dict,
    nanogpt_default_tokenizer,
    to_gptkit_names,
    tokenizer_from_record,
    tokenizer_record,
)
from gptkit.fsutil import save_safetensors


def detect(path: Path, head: bytes | None) -> bool:
    # An 8-byte little-endian header length, then the JSON header.
    return (
        head is not None and len(head) >= 9 and 0 < int.from_bytes(head[:8], "little") < 1 << 30 and head[8:9] == b"{"
    )


def read(path: Path) -> Loaded:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            sd = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - SafetensorError, OSError, header errors
        raise GptkitError(
            f"{path}: cannot read weights ({e.__class__.__name__}); the file is corrupt or truncated"
        ) from None
    hints: dict = {}
    if "gptkit.config" in meta:
        try:
            hints.update(json.loads(meta["gptkit.config"]))
        except json.JSONDecodeError:
            raise GptkitError(f"{path}: its gptkit.config metadata is not valid JSON") from None
    notes: list[str] = []
    assumed = False
    tokenizer = tokenizer_from_record(meta, path)
    if tokenizer is None and "gptkit.config" in meta:
        notes.append(f"the file names no tokenizer; {NEEDS_TOKENIZER}")
    elif tokenizer is None:  # someone else's safetensors: only the weights
        rows = next((v.shape[0] for k, v in sd.items() if k.endswith("wte.weight")), 0)
        tokenizer, notes = nanogpt_default_tokenizer(rows)
        assumed = tokenizer is not None
        if "gptkit.config" not in meta:
            notes.append("the file says nothing of its activation: assuming GPT-2's tanh GELU")
    return assemble(
        to_gptkit_names(sd, path), hints, path, "safetensors", tokenizer=tokenizer, notes=notes, assumed=assumed
    )


def write(m: Loaded, out: Path, dtype: torch.dtype) -> list[str]:
    meta = {
        "format": "pt",
        "gptkit.config": json.dumps(m.config.to_dict()),
        "producer": f"gptkit {__version__}",
        **tokenizer_record(m.tokenizer),
    }
    save_safetensors(cast_state_dict(m.state_dict, dtype), out, metadata=meta)  # sorted metadata: same bytes
    return []


FORMAT = Format("safetensors", detect, read, write, suffixes=(".safetensors",))
