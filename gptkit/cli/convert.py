"""`gptkit convert`: between gptkit checkpoints, .pt, safetensors, Hugging Face and GGUF, verified."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gptkit.cli.options import Force, JsonOut


def convert(
    src: Annotated[
        str,  # not Path: "./NAME" (a path) must stay apart from "NAME" (a run)
        typer.Argument(
            metavar="SRC",
            help="Model to read: a run (its name under runs/, or its directory; the latest checkpoint), a "
            "checkpoint dir, .pt (gptkit, nanoGPT, build-nanogpt), .safetensors, Hugging Face dir or .gguf.",
        ),
    ],
    dst: Annotated[Path, typer.Argument(help="Output file or directory.")],
    to: Annotated[
        str | None,
        typer.Option(
            "--to", metavar="FORMAT", help="gptkit | pt | safetensors | hf | gguf (default: from DST's suffix)."
        ),
    ] = None,
    dtype: Annotated[str, typer.Option("--dtype", metavar="DTYPE", help="fp32, bf16 or fp16.")] = "fp32",
    verify: Annotated[
        bool, typer.Option("--verify/--no-verify", help="Reload the output and compare logits with the source.")
    ] = True,
    tokenizer: Annotated[
        str | None,
        typer.Option(
            "--tokenizer",
            help="The model's tokenizer when the source carries none: gpt2, bytes, a tokenizer.json, a vocab.json + "
            "merges.txt directory or a nanoGPT meta.pkl (checked against the model's vocabulary).",
        ),
    ] = None,
    force: Force = False,
    json_out: JsonOut = False,
):
    """Convert a model; the output is written under a temporary name, verified, then renamed into place."""
    import dataclasses
    import json

    from gptkit.formats.convert import convert as run

    r = run(src, dst, to=to, dtype=dtype, verify_output=verify, force=force, tokenizer=tokenizer)
    v = r.verification
    t = v.tokenizer if v else None
    tok_name = r.tokenizer.name if r.tokenizer is not None else None
    if json_out:
        print(
            json.dumps(
                {
                    "src": str(r.src),
                    "src_format": r.src_format,
                    "dst": str(r.dst),
                    "format": r.format,
                    "dtype": r.dtype,
                    "tokenizer": tok_name,
                    "tokenizer_info": r.tokenizer.info() if r.tokenizer is not None else None,
                    "config": r.config.to_dict(),
                    "notes": r.notes,
                    "verified": v is not None,
                    "max_abs_diff": v.max_abs_diff if v else None,
                    "dtype_drift": v.drift if v else None,
                    "checks": {
                        "logits": {"max_abs_diff": v.max_abs_diff, "tolerance": v.tolerance, "ok": True} if v else None,
                        "tokenizer": dataclasses.asdict(t) if t else None,
                    },
                }
            )
        )
        return
    c = r.config
    print(
        f"wrote {r.dst} ({r.format}, {r.dtype}) from {r.src} ({r.src_format}): "
        f"{c.n_layer} layers, {c.n_embd} wide, vocab {c.vocab_size}, tokenizer {tok_name or 'none'}"
    )
    if v is not None and t is not None:
        extra = f"; --dtype {r.dtype} moved them by up to {v.drift:.3g}" if r.dtype != "fp32" else ""
        print(f"verified: logits on fixed prompts match (max difference {v.max_abs_diff:.3g}){extra}")
        if t.status == "same ids":
            print(f"verified: the tokenizer gives the same ids on {t.strings} fixed strings ({t.tokens} tokens)")
    for note in r.notes:
        print(f"note: {note}")
