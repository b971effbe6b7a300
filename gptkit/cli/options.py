"""Option types shared by several commands, so each is spelled and documented once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

Device = Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:1, mps.")]
Precision = Annotated[
    str,
    typer.Option("--precision", help="auto (bf16 only where the hardware runs it natively), fp32, bf16, fp16."),
]
Force = Annotated[bool, typer.Option("--force", help="Overwrite an existing output.")]
JsonOut = Annotated[bool, typer.Option("--json", help="Machine-readable JSON output.")]
Endpoint = Annotated[
    str | None,
    typer.Option("--endpoint", help="Hugging Face endpoint URL (default: $HF_ENDPOINT or https://huggingface.co)."),
]
Mirror = Annotated[bool, typer.Option("--mirror", help="Shorthand for --endpoint https://hf-mirror.com.")]
OutDir = Annotated[Path | None, typer.Option("--out", "-o", help="Output directory.")]


def not_implemented(command: str, issue: str) -> None:
    from gptkit.errors import GptkitError

    raise GptkitError(f"`gptkit {command}` is not implemented yet ({issue})")
