"""Option types shared by several commands, so each is spelled and documented once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

Device = Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:1, mps.")]
_PRECISION_HELP = "auto (bf16 only where the hardware runs it natively), fp32, bf16, fp16."
Precision = Annotated[str, typer.Option("--precision", help=_PRECISION_HELP)]
OptionalPrecision = Annotated[str | None, typer.Option("--precision", help=_PRECISION_HELP)]  # None = not given
Force = Annotated[bool, typer.Option("--force", help="Overwrite an existing output.")]
JsonOut = Annotated[bool, typer.Option("--json", help="Machine-readable JSON output.")]
Endpoint = Annotated[
    str | None,
    typer.Option("--endpoint", help="Hugging Face endpoint URL (default: $HF_ENDPOINT or https://huggingface.co)."),
]
Mirror = Annotated[bool, typer.Option("--mirror", help="Shorthand for --endpoint https://hf-mirror.com.")]
OutDir = Annotated[Path | None, typer.Option("--out", "-o", help="Output directory.")]
