"""The tokenize run: text sources -> uint16 token shards (llm.c format) + manifest.json.

The token stream is every document, in source order, each preceded by the end-of-text token (an
empty document is a lone end-of-text token, as in build-nanogpt's fineweb.py), cut into shards at
fixed token counts (a document may continue in the next shard). A vocabulary without an end-of-text
token (nanoGPT's character vocabularies) joins the documents with nothing between them, as nanoGPT
does. The tokenizer is saved beside the shards in tokenizer/. The pieces:
sources.py resolves SRC, encode.py turns it into tokens in unit order (in parallel), writer.py
cuts the stream into shards and keeps the resume point, shards.py is the format and manifest.
The output does not depend on the number of workers, and a re-run after any crash rebuilds
exactly the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gptkit import faults, names, paths
from gptkit import lock as dirlock
from gptkit.data import shards, writer
from gptkit.data.encode import default_unit_bytes, encode_units
from gptkit.data.sources import Source, resolve_source
from gptkit.errors import GptkitError
from gptkit.fsutil import disk_errors
from gptkit.tokenizer import Tokenizer, get_tokenizer, save_tokenizer
from gptkit.vocab_files import SAVED_DIR

DEFAULT_SHARD_TOKENS = 100_000_000
DEFAULT_VAL_TOKENS = 10_000_000


@dataclass
class Settings:
    # A get_tokenizer spec (gpt2, bytes, a path), a Tokenizer, or None: GPT-2, or for token files
    # the vocabulary beside them (nanoGPT's meta.pkl), else GPT-2 said in a log line.
    tokenizer: str | Tokenizer | None = None
    text_column: str | None = None  # None: a download preset's own column, else "text"
    shard_tokens: int = DEFAULT_SHARD_TOKENS
    val_tokens: int = DEFAULT_VAL_TOKENS
    max_tokens: int | None = None
    strict: bool = False


@dataclass
class Result:
    out: Path
    manifest: dict
    status: str  # "done", "resumed", "up to date"
    seconds: float = 0.0
    source_bytes: int = 0


def tokenize(
    src: str | None,
    out: str | Path | None = None,
    settings: Settings | None = None,
    *,
    workers: int | None = None,
    force: bool = False,
    subset: str | None = None,
    split: str = "train",
    revision: str | None = None,
    endpoint: str | None = None,
    unit_bytes: int | None = None,
    log: Callable[[str], None] | None = None,
    progress: Callable[[dict], None] | None = None,
) -> Result:
    """Tokenize SRC into shards under OUT (default paths.shards_dir(<source name>); a bare name NAME is
    paths.shards_dir(NAME), a Path or a str written as a path is that path); resumable.

    `endpoint`: the Hugging Face endpoint URL (from gptkit.hub.endpoint.resolve_endpoint) for a
    dataset streamed from the hub; None uses the environment's. `log` gets notes, `progress` a
    dict (bytes, total_bytes, tokens, shards) after each unit.
    """
    t0 = time.perf_counter()  # the time reported: reading the source and the tokenizer included
    s = settings or Settings()
    log = log or (lambda msg: None)
    unit_bytes = unit_bytes or default_unit_bytes()
    if s.shard_tokens < 1 or s.val_tokens < 1 or (s.max_tokens is not None and s.max_tokens < 2):
        raise GptkitError("--shard-tokens and --val-tokens must be at least 1, and --max-tokens at least 2")
    if s.shard_tokens >= 2**31 or s.val_tokens >= 2**31:
        raise GptkitError("--shard-tokens and --val-tokens must be below 2^31 (the shard header holds an int32 count)")
    source = resolve_source(
        src,
        s.text_column,
        unit_bytes=unit_bytes,
        subset=subset,
        split=split,
        revision=revision,
        endpoint=endpoint,
        log=log,
    )
    tok = choose_tokenizer(s.tokenizer, source, log)
    if tok.vocab_size > shards.MAX_VOCAB:
        raise GptkitError(
            f"tokenizer {tok.name} has {tok.vocab_size} tokens, more than uint16 shards can hold "
            f"({shards.MAX_VOCAB}: ids 0..{shards.MAX_VOCAB - 1})"
        )
    if tok.eot_token is None and source.kind != "tokens":
        log(f"{tok.name} has no end-of-text token: documents are joined with nothing between them (as nanoGPT does)")
    # A bare --out NAME is shards/NAME, where `train --data NAME` (and a bare `train`) finds it.
    out = names.output_path(out, paths.shards_dir) if out is not None else paths.shards_dir(source.name)
    tok_info = tok.info()
    shape = {"shard_tokens": s.shard_tokens, "val_tokens": s.val_tokens, "max_tokens": s.max_tokens, "strict": s.strict}
    # The manifest version is part of what the output depends on: a run of an older format is
    # never resumed into this one.
    ident = {
        "source": source.identity(),
        "tokenizer": tok_info,
        **shape,
        "unit_bytes": unit_bytes,
        "format_version": shards.MANIFEST_VERSION,
    }
    fingerprint = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()

    _held = dirlock.acquire(  # one tokenize per OUT; released when this function returns (Lock.__del__)
        out.parent / f".{out.name}.lock",
        subject=str(out),
        what="gptkit tokenize",
        how_to_break=f"delete {out.parent}/.{out.name}.lock",
    )
    with disk_errors(out):
        begin = writer.start(out, fingerprint, force, log)
    if begin.done is not None:
        seconds = time.perf_counter() - t0 if begin.status == "resumed" else 0.0
        return Result(out, begin.done, begin.status, seconds)
    state = begin.state
    pdir = out / shards.PARTIAL_DIR
    resumed = bool(state["shards"])
    w = writer.ShardWriter(pdir, s.shard_tokens, s.val_tokens, tok.eot_token, state)
    done_bytes = 0
    total = sum(x["tokens"] for x in state["shards"])
    delay = faults.number("tokenize.unit_delay")  # slow enough to be killed mid-run
    resume_unit, resume_skip = state["next_unit"], state["skip"]

    def consume(index: int, tokens: Any, replaced: int, nbytes: int, split_hint: str | None) -> bool:
        nonlocal done_bytes, total
        base = 0
        if index == resume_unit and resume_skip:
            base = resume_skip  # this unit's start is already in committed shards (and counted)
            tokens = tokens[base:]
        else:
            state["replaced"] += replaced
        remaining = None if s.max_tokens is None else s.max_tokens - total
        total += w.add(tokens, index, base, split_hint, remaining)
        done_bytes += nbytes
        if progress:
            progress(
                {
                    "bytes": done_bytes,
                    "total_bytes": source.total_bytes,
                    "tokens": total,
                    "shards": len(state["shards"]),
                }
            )
        if delay:
            time.sleep(delay)
        return s.max_tokens is not None and total >= s.max_tokens

    try:
        with disk_errors(out, point="tokenize"):  # a full disk: one line, finished shards kept to resume
            column = source.info.get("text_column") or s.text_column or "text"  # the column resolve_source chose
            encode_units(source, state["next_unit"], unit_bytes, tok, column, s.strict, workers, consume)
            w.finish(source.spec, source.splits_given())
        if not any(x["split"] == "train" for x in state["shards"]):
            raise GptkitError(
                f"{source.spec}: no training data (only validation tokens); lower --val-tokens or add data"
            )
    except GptkitError:
        writer.abandon(w, out, begin.created_out)
        raise

    manifest = shards.build_manifest(
        tokenizer=tok_info,
        source=source.info,
        settings=shape,
        replaced=state["replaced"],
        shards=state["shards"],
        fingerprint=fingerprint,
        validation=state.get("validation"),
    )
    with disk_errors(out):
        save_tokenizer(tok, pdir / SAVED_DIR)
        manifest = writer.complete(pdir, out, manifest)
    return Result(out, manifest, "resumed" if resumed else "done", time.perf_counter() - t0, source.total_bytes)


def choose_tokenizer(spec: str | Tokenizer | None, source: Source, log: Callable[[str], None]) -> Tokenizer:
    """The tokenizer for SOURCE: the one given, else for token files the vocabulary beside them
    (nanoGPT's meta.pkl, gptkit's tokenizer/) or GPT-2, said in a log line, else GPT-2. Token files
    that come with a vocabulary refuse another tokenizer: their ids mean what it says."""
    beside = get_tokenizer(source.vocab_file) if source.vocab_file is not None else None
    if isinstance(spec, Tokenizer):
        tok = spec
    elif spec is not None:
        tok = get_tokenizer(spec)
    elif beside is not None:
        log(f"the token ids use the vocabulary in {source.vocab_file} ({beside.name}, {beside.vocab_size} tokens)")
        return beside
    elif source.kind == "tokens":
        tok = get_tokenizer("gpt2")
        log(
            "no --tokenizer and no meta.pkl beside the token files: assuming GPT-2 (nanoGPT's default BPE, "
            "also build-nanogpt's and llm.c's); give --tokenizer if they were made with another"
        )
    else:
        tok = get_tokenizer("gpt2")
    if beside is not None and tok.vocab_hash != beside.vocab_hash:
        raise GptkitError(
            f"{source.vocab_file} says the token ids are of the {beside.name} vocabulary, not {tok.name}; "
            "leave --tokenizer out"
        )
    return tok
