"""gptkit's own format: a checkpoint directory, or a run directory (its latest checkpoint), read
and written through gptkit.checkpoint. A converted checkpoint can be trained on with --init-from.

The tokenizer travels as a `tokenizer/` folder (data.tokenizers.save_tokenizer) beside the weights,
and config.json keeps {"tokenizer": name, "tokenizer_info": info}; checkpoints that only name a
built-in tokenizer (gptkit 0.1) still read."""

from __future__ import annotations

from pathlib import Path

import torch

from gptkit.checkpoint import (
    CHECKSUMS,
    CONFIG,
    STEP_RE,
    WEIGHTS,
    Verification,
    latest_checkpoint,
    load_checkpoint,
    read_json,
    resolve_checkpoint,
    save_checkpoint,
)
from gptkit.errors import GptkitError
from gptkit.formats.loaded import NEEDS_TOKENIZER, Format, Loaded
from gptkit.tokenizer import tokenizer_for


def detect(path: Path, head: bytes | None) -> bool:
    if head is not None:
        return False
    if all((path / f).is_file() for f in (CHECKSUMS, CONFIG, WEIGHTS)):
        return True  # read_checksums and verify_checkpoint then check every byte of these
    if (path / CONFIG).is_file():
        cfg = read_json(path / CONFIG)
        if isinstance(cfg.get("model"), dict) and (path / WEIGHTS).is_file():
            return True
    return latest_checkpoint(path) is not None  # a run directory (its config.json is the run's)


def read(path: Path) -> Loaded:
    # The files' checksums are verified in a thread while the weights load: hashing a 124M checkpoint
    # takes about as long as reading it (Loaded.pending_check; formats.convert.load waits for it).
    found = resolve_checkpoint(path)
    check = Verification(found, model_only=True) if found is not None else None
    try:
        ck = load_checkpoint(path, verify=False)
    except GptkitError:
        if check is not None:
            check.result()  # a corrupt file is named by its checksum first, however it failed to load
        raise
    m = STEP_RE.match(ck.path.name)
    step = ck.step if ck.step is not None else (int(m.group(1)) if m else None)
    block = ck.meta.get("tokenizer_info") or ck.meta.get("tokenizer", "gpt2")
    tok = tokenizer_for(block, ck.path, f"checkpoint {ck.path}") if block else None
    notes = [] if tok is not None else [f"the checkpoint names no tokenizer; {NEEDS_TOKENIZER}"]
    meta = {"step": step} if step is not None else {}
    loaded = Loaded(ck.config, ck.state_dict, tok, ck.path, "gptkit", meta, notes)
    loaded.pending_check = check.result if check is not None else None
    return loaded


def write(m: Loaded, out: Path, dtype: torch.dtype) -> list[str]:
    model = m.build_model().to(dtype)
    provenance = {"path": str(m.path), "format": m.format, **m.meta}
    tok = m.tokenizer
    extra: dict = {"converted_from": provenance}
    if tok is not None:
        extra["tokenizer_info"] = tok.info()
    else:
        extra["tokenizer"] = None  # not even a name: `gptkit sample` asks for --tokenizer
    # the tokenizer/ folder is written inside the checkpoint, so checksums.json covers it
    save_checkpoint(out, model, config=m.config, tokenizer=tok if tok is not None else "", extra=extra)
    return []


FORMAT = Format("gptkit", detect, read, write)
