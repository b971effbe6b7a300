"""gptkit's own format: a checkpoint directory, or a run directory (its latest checkpoint), read
and written through gptkit.checkpoint. A converted checkpoint can be trained on with --init-from."""

from __future__ import annotations

from pathlib import Path

import torch

from gptkit.checkpoint import CONFIG, STEP_RE, WEIGHTS, latest_checkpoint, load_checkpoint, read_json, save_checkpoint
from gptkit.formats.loaded import Format, Loaded


def detect(path: Path, head: bytes | None) -> bool:
    if head is not None:
        return False
    if (path / CONFIG).is_file():
        cfg = read_json(path / CONFIG)
        if isinstance(cfg.get("model"), dict) and (path / WEIGHTS).is_file():
            return True
    return latest_checkpoint(path) is not None  # a run directory (its config.json is the run's)


def read(path: Path) -> Loaded:
    ck = load_checkpoint(path)
    m = STEP_RE.match(ck.path.name)
    step = ck.step if ck.step is not None else (int(m.group(1)) if m else None)
    return Loaded(ck.config, ck.state_dict, ck.tokenizer, ck.path, "gptkit", {"step": step} if step is not None else {})


def write(m: Loaded, out: Path, dtype: torch.dtype) -> list[str]:
    model = m.build_model().to(dtype)
    provenance = {"path": str(m.path), "format": m.format, **m.meta}
    save_checkpoint(out, model, config=m.config, tokenizer=m.tokenizer, extra={"converted_from": provenance})
    return []


FORMAT = Format("gptkit", detect, read, write)
