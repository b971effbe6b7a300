"""`gptkit tokenize [SRC]`: text -> uint16 token shards + manifest.json (see gptkit/data/tokenize.py)."""

from __future__ import annotations

import json
import re
import shlex
import sys
from typing import Annotated, overload

import typer

from gptkit.cli.options import Endpoint, Force, JsonOut, Mirror, OutDir
from gptkit.errors import GptkitError

_SUFFIX = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9}


@overload
def parse_count(value: str, option: str) -> int: ...
@overload
def parse_count(value: None, option: str) -> None: ...
@overload
def parse_count(value: str | None, option: str) -> int | None: ...
def parse_count(value: str | None, option: str) -> int | None:
    """'100M', '1.5B', '2e6', '100_000' -> int."""
    if value is None:
        return None
    m = re.fullmatch(r"\s*([0-9][0-9_]*(?:\.[0-9]+)?(?:e[0-9]+)?)\s*([kmbg]?)\s*", value.lower())
    if not m:
        raise GptkitError(f"{option}: expected a token count such as 100M, 10K or 2e6, got {value!r}")
    return int(float(m.group(1).replace("_", "")) * _SUFFIX[m.group(2)])


def tokenize(
    src: Annotated[
        str | None,
        typer.Argument(
            help="A download preset (fineweb-edu, fineweb), a .parquet/.jsonl/.jsonl.gz/.txt file or folder, "
            "a Hugging Face dataset id (streamed), a built-in corpus ('pydoc': Python's doc topics, 0.5 MB; "
            "'python-docs': those and the stdlib's docstrings, 2 MB), or .npy/.bin token files to convert. "
            "Default: the newest downloaded preset, else pydoc.",
            show_default=False,
        ),
    ] = None,
    out: OutDir = None,
    tokenizer: Annotated[
        str | None,
        typer.Option(
            "--tokenizer",
            help="gpt2 (BPE, 50257 tokens), bytes (256), or your own: a tokenizer.json, a folder with tokenizer.json "
            "or vocab.json + merges.txt, or nanoGPT's meta.pkl (or its data folder). Saved beside the shards. "
            "Default: gpt2; for token files, the meta.pkl beside them, else gpt2 (said in a note).",
            show_default=False,
        ),
    ] = None,
    text_column: Annotated[
        str | None,
        typer.Option(
            "--text-column",
            metavar="COLUMN",
            help="Column / JSON field holding the text (default: the preset's, else text).",
        ),
    ] = None,
    shard_tokens: Annotated[str, typer.Option("--shard-tokens", help="Tokens per shard.")] = "100M",
    val_tokens: Annotated[
        str,
        typer.Option(
            "--val-tokens",
            help="Tokens in shard 0, the validation shard (a source smaller than this: a tenth, in seeded pieces from across it).",
        ),
    ] = "10M",
    max_tokens: Annotated[str | None, typer.Option("--max-tokens", help="Stop after this many tokens in all.")] = None,
    workers: Annotated[
        int | None, typer.Option("--workers", "-j", help="Worker processes (default: all cores).")
    ] = None,
    strict: Annotated[
        bool, typer.Option("--strict", help="Refuse invalid UTF-8 instead of replacing and counting it.")
    ] = False,
    force: Force = False,
    verify: Annotated[
        str | None,
        typer.Option(
            "--verify", metavar="DIR", help="Check tokenized shards (dir or name) against their manifest, then exit."
        ),
    ] = None,
    subset: Annotated[
        str | None, typer.Option("--subset", help="Dataset config of a Hugging Face dataset, e.g. sample-10BT.")
    ] = None,
    split: Annotated[str, typer.Option("--split", help="Split of a Hugging Face dataset.")] = "train",
    revision: Annotated[
        str | None, typer.Option("--revision", help="Branch, tag or commit of a Hugging Face dataset.")
    ] = None,
    endpoint: Endpoint = None,
    mirror: Mirror = False,
    json_out: JsonOut = False,
):
    """Tokenize text into uint16 shards (llm.c format) for `gptkit train`. Resumable: re-run after an interruption."""
    from gptkit.data import shards
    from gptkit.data import tokenize as lib

    if verify is not None:
        if src is not None:
            raise GptkitError("give either SRC or --verify DIR, not both")
        summary = shards.verify(verify, tokenizer)
        for line in summary["notes"]:
            print(f"note: {line}", file=sys.stderr)
        if json_out:
            print(json.dumps({"ok": True, **summary}))
        elif summary["hashes"]:
            print(f"ok: {summary['dir']}: {summary['shards']} shards, {summary['tokens']:,} tokens, all hashes match")
        else:
            print(
                f"ok: {summary['dir']}: {summary['shards']} {summary['format']} shards, {summary['tokens']:,} tokens; "
                f"headers and token ids valid for {summary['tokenizer']} (no manifest, so no hashes to compare)"
            )
        return
    from gptkit.hub.endpoint import resolve_endpoint

    settings = lib.Settings(
        tokenizer=tokenizer,
        text_column=text_column,
        shard_tokens=parse_count(shard_tokens, "--shard-tokens"),
        val_tokens=parse_count(val_tokens, "--val-tokens"),
        max_tokens=parse_count(max_tokens, "--max-tokens"),
        strict=strict,
    )
    ep = resolve_endpoint(endpoint, mirror) if (endpoint or mirror) else None

    def note(msg: str) -> None:
        print(msg, file=sys.stderr)

    try:
        with _Progress(enabled=not json_out and sys.stderr.isatty()) as bar:
            result = lib.tokenize(
                src,
                out,
                settings,
                workers=workers,
                force=force,
                subset=subset,
                split=split,
                revision=revision,
                endpoint=ep,
                log=note,
                progress=bar.update,
            )
    except KeyboardInterrupt:
        # More than the CLI's generic "gptkit: interrupted": the run resumes. sys.exit, not typer.Exit
        # (which comes back to the CLI as 130 and would add the generic line too).
        print(
            "gptkit: interrupted; the shards written so far are kept: run the same command again to resume",
            file=sys.stderr,
        )
        sys.exit(130)
    m = result.manifest
    if json_out:
        print(
            json.dumps(
                {
                    "out": str(result.out),
                    "status": result.status,
                    "seconds": round(result.seconds, 3),
                    **m["totals"],
                    "tokenizer": m["tokenizer"],
                    "replaced_invalid_utf8": m["replaced_invalid_utf8"],
                    "validation": m.get("validation"),
                }
            )
        )
        return
    t = m["totals"]
    speed = f" in {result.seconds:.1f}s" if result.status != "up to date" else ""
    docs = _count(t["documents"], "document") if m["tokenizer"]["eot"] is not None else "no end-of-text token"
    print(
        f"{result.status}: {result.out}  {_count(t['shards'], 'shard')}, {t['val_tokens']:,} val + "
        f"{t['train_tokens']:,} train tokens, "
        f"{docs} ({m['tokenizer']['name']}, {m['tokenizer']['vocab_size']:,} tokens){speed}"
    )
    if m.get("validation"):
        from gptkit.data.writer import describe_validation

        print(describe_validation(m["validation"]))
    if m["replaced_invalid_utf8"]:
        print(f"note: {m['replaced_invalid_utf8']} invalid UTF-8 sequences were replaced by U+FFFD (see manifest.json)")
    from gptkit import paths

    # As it works from here: the name under shards/, else the path (./DIR, never a bare DIR, which
    # `--data` would read as a name under shards/).
    out_dir = result.out
    if out_dir.resolve() == paths.shards_dir(out_dir.name).resolve():
        data = out_dir.name
    elif out_dir.is_absolute() or str(out_dir).startswith("."):
        data = str(out_dir)
    else:
        data = f"./{out_dir}"
    print(f"next: gptkit train --data {shlex.quote(data)}")


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


class _Progress:
    """A Rich progress bar on stderr, only on a terminal (tests and logs get the summary lines)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.bar = self.task = None

    def __enter__(self):
        if self.enabled:
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(
                TextColumn("tokenizing"),
                BarColumn(),
                TextColumn("{task.percentage:>3.0f}%"),
                TextColumn("{task.fields[tokens]:,} tokens"),
                TimeRemainingColumn(),
                transient=True,
            )
            self.bar.__enter__()
            self.task = self.bar.add_task("tokenize", total=None, tokens=0)
        return self

    def update(self, p: dict) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=p["bytes"], total=p["total_bytes"] or None, tokens=p["tokens"])

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)
        return False
