"""`gptkit eval`: validation loss on tokenized shards and HellaSwag acc_norm for any model gptkit loads."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from gptkit.cli.options import Device, Endpoint, JsonOut, Mirror, Precision


def eval_model(
    model: Annotated[
        str | None,
        typer.Argument(
            help="A run name or directory, a checkpoint directory, .pt, .safetensors, .gguf, Hugging Face directory, "
            "or a hub name such as gpt2. Default: the newest local run, else pretrained gpt2."
        ),
    ] = None,
    data: Annotated[
        str | None,
        typer.Option("--data", help="Tokenized data: a name under shards/ or a directory (default: the newest)."),
    ] = None,
    tokens: Annotated[
        int, typer.Option("--tokens", help="Validation tokens to average over (0: no validation loss).")
    ] = 10_485_760,
    hellaswag: Annotated[
        bool,
        typer.Option(
            "--hellaswag",
            help="Also the built-in HellaSwag: acc_norm per token and per character (needs `gptkit download hellaswag`).",
        ),
    ] = False,
    limit: Annotated[int | None, typer.Option("--limit", help="HellaSwag: the first N examples only.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Validation rows per forward pass.")] = 8,
    device: Device = "auto",
    precision: Precision = "auto",
    tokenizer: Annotated[
        str | None,
        typer.Option("--tokenizer", metavar="SPEC", help="For models that carry no tokenizer (checked, never a swap)."),
    ] = None,
    json_out: JsonOut = False,
    endpoint: Endpoint = None,
    mirror: Mirror = False,
):
    """Validation loss and HellaSwag accuracy, e.g. `gptkit eval gpt2 --data fineweb-edu --hellaswag`."""
    import json

    from gptkit.cli.progress import DownloadDisplay
    from gptkit.evaluate import evaluate
    from gptkit.hub.endpoint import resolve_endpoint
    from gptkit.models import resolve_model_path

    url = resolve_endpoint(endpoint, mirror)
    with DownloadDisplay(sys.stderr.isatty(), out=sys.stderr, prefix="gptkit: ") as display:  # stdout: the result only
        path = resolve_model_path(model, endpoint=url, progress=display.update, log=display.log, option=None)
    note = None if json_out else (lambda msg: print(f"gptkit: {msg}", file=sys.stderr))
    result = evaluate(
        path,
        data=data,
        tokens=tokens,
        hellaswag=hellaswag,
        limit=limit,
        batch_size=batch_size,
        device=device,
        precision=precision,
        tokenizer=tokenizer,
        log=note,
    )
    if json_out:
        print(json.dumps(result.to_dict()))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{result.model} ({result.tokenizer}, {result.precision} on {result.device})")
    for col in ("metric", "value", "over"):
        table.add_column(col)
    if result.val_loss is not None:
        table.add_row("val loss", f"{result.val_loss:.4f}", f"{result.val_tokens:,} tokens of {result.data}")
    if result.hellaswag is not None:
        hs = result.hellaswag
        over = f"{hs['n']:,} examples" + (f", {hs['truncated']:,} cut to the context" if hs["truncated"] else "")
        # built-in (train/hellaswag.py), on the raw text; the name says which normalisation
        table.add_row("hellaswag acc_norm/token", f"{hs['acc_norm_token']:.4f}", f"built-in, llm.c's; {over}")
        table.add_row("hellaswag acc_norm/char", f"{hs['acc_norm_char']:.4f}", f"built-in, lm-eval's rule; {over}")
        table.add_row("hellaswag acc", f"{hs['acc']:.4f}", f"built-in; {over}")
    Console().print(table)
