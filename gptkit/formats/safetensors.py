"""One .safetensors file; gptkit's config and tokenizer ride in its metadata."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from gptkit import __version__
from gptkit.errors import GptkitError
from gptkit.formats.loaded import Format, Loaded, assemble, cast_state_dict, to_gptkit_names
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
    if meta.get("gptkit.tokenizer"):
        hints["tokenizer"] = meta["gptkit.tokenizer"]
    return assemble(to_gptkit_names(sd, path), hints, path, "safetensors")


def write(m: Loaded, out: Path, dtype: torch.dtype) -> list[str]:
    meta = {
        "format": "pt",
        "gptkit.config": json.dumps(m.config.to_dict()),
        "gptkit.tokenizer": m.tokenizer,
        "producer": f"gptkit {__version__}",
    }
    save_safetensors(cast_state_dict(m.state_dict, dtype), out, metadata=meta)  # sorted metadata: same bytes
    return []


FORMAT = Format("safetensors", detect, read, write, suffixes=(".safetensors",))
