"""gptkit's own format: a checkpoint directory, or a run directory (its latest checkpoint), read
and written through gptkit.checkpoint. A converted checkpoint can be trained on with --init-from.

The tokenizer travels as a `tokenizer/` folder (data.tokenizers.save_tokenizer) beside the weights,
and config.json keeps {"tokenizer": name, "tokenizer_info": info}; checkpoints that only name a
built-in tokenizer (gptkit 0.1) still read."""

from __future__ import annotations

from pathlib import Path

import torch

from gptkit.checkpoint import CONFIG, STEP_RE, WEIGHTS, latest_checkpoint, load_checkpoint, read_json, save_checkpoint
from gptkit.formats.loaded import NEEDS_TOKENIZER, Format, Loaded
from gptkit.tokenizer import save_tokenizer, tokenizer_for
from gptkit.vocab_files import SAVED_DIR


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
    block = ck.meta.get("tokenizer_info") or ck.meta.get("tokenizer", "gpt2")
    tok = tokenizer_for(block, ck.path, f"checkpoint {ck.path}") if block else None
    notes = [] if tok is not None else [f"the checkpoint names no tokenizer; {NEEDS_TOKENIZER}"]
    meta = {"step": step} if step is not None else {}
    return Loaded(ck.config, ck.state_dict, tok, ck.path, "gptkit", meta, notes)


def write(m: Loaded, out: Path, dtype: torch.dtype) -> list[str]:
    model = m.build_model().to(dtype)
    provenance = {"path": str(m.path), "format": m.format, **m.meta}
    tok = m.tokenizer
    extra: dict = {"converted_from": provenance}
    if tok is not None:
        extra["tokenizer_info"] = tok.info()
    else:
        extra["tokenizer"] = None  # not even a name: `gptkit sample` asks for --tokenizer
    save_checkpoint(out, model, config=m.config, tokenizer=tok.name if tok else "", extra=extra)
    if tok is not None:  # inside convert's temporary output: appears with the checkpoint, or not at all
        save_tokenizer(tok, out / SAVED_DIR)
    return []


FORMAT = Format("gptkit", detect, read, write)
