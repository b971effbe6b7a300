"""`gptkit eval`: validation loss, the built-in HellaSwag, lm-eval's tasks (--tasks) and text files
(--text) for any model gptkit loads."""

from __future__ import annotations

import sys
from pathlib import Path
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
    tasks: Annotated[
        str | None,
        typer.Option(
            "--tasks",
            metavar="TASKS",
            help="lm-evaluation-harness tasks, e.g. hellaswag,arc_easy,piqa,lambada_openai (needs gptkit\\[eval]).",
        ),
    ] = None,
    num_fewshot: Annotated[
        int | None,
        typer.Option("--num-fewshot", metavar="N", help="--tasks: examples in each prompt (default: the task's)."),
    ] = None,
    gen_kwargs: Annotated[
        str | None,
        typer.Option("--gen-kwargs", metavar="KWARGS", help="--tasks: generation settings, e.g. max_gen_toks=64."),
    ] = None,
    log_samples: Annotated[
        bool, typer.Option("--log-samples", help="--tasks: also save every request and response (JSON lines).")
    ] = False,
    text: Annotated[
        list[Path] | None,
        typer.Option(
            "--text",
            metavar="FILE",
            help="Score a UTF-8 text file: log-likelihood, nats/token, bits/byte (repeatable).",
        ),
    ] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", help="The first N examples of HellaSwag and of every --tasks task.")
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Rows per forward pass.")] = 8,
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
    """Validation loss, HellaSwag, lm-eval tasks or text files, e.g. `gptkit eval gpt2 --tasks hellaswag,piqa`."""
    import json

    from gptkit.cli.progress import resolve_model_shown
    from gptkit.hub.endpoint import resolve_endpoint

    if tasks is not None:
        from gptkit.harness import lm_eval_version

        lm_eval_version()  # not installed: one line naming the install, before any download
    url = resolve_endpoint(endpoint, mirror)
    path = resolve_model_shown(model, url, option=None)
    note = None if json_out else (lambda msg: print(f"gptkit: {msg}", file=sys.stderr))
    common = dict(batch_size=batch_size, device=device, precision=precision, tokenizer=tokenizer, log=note)
    out: dict = {}
    result = None
    # --tasks and --text evaluate what they name; validation loss and the built-in HellaSwag join
    # them only when asked for (--data, --hellaswag). Alone, eval does what it always did.
    if (tasks is None and text is None) or data is not None or hellaswag:
        from gptkit.evaluate import evaluate

        budget = tokens if (tasks is None and text is None) or data is not None else 0
        result = evaluate(path, data=data, tokens=budget, hellaswag=hellaswag, limit=limit, **common)  # type: ignore[arg-type]
        out.update(result.to_dict())
    texts = None
    if text:
        from gptkit.harness import score_texts

        texts = score_texts(path, list(text), **common)  # type: ignore[arg-type]
        out["text"] = texts.to_dict()
    harness = None
    if tasks is not None:
        from gptkit.harness import run_tasks

        harness = run_tasks(
            path,
            tasks.split(","),
            limit=limit,
            num_fewshot=num_fewshot,
            gen_kwargs=gen_kwargs,
            log_samples=log_samples,
            endpoint=url,
            **common,  # type: ignore[arg-type]
        )
        out["lm_eval"] = harness.to_dict()
    if json_out:
        print(json.dumps(out))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if result is not None:
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
        console.print(table)
    if texts is not None:
        table = Table(title=f"{texts.model}: text, rolling windows of {texts.context} tokens")
        for col in ("file", "log-likelihood", "tokens", "nats/token", "bits/byte"):
            table.add_column(col)
        rows = texts.files + ([texts.total] if len(texts.files) > 1 else [])
        for r in rows:
            table.add_row(
                r.file, f"{r.loglikelihood:.2f}", f"{r.tokens:,}", f"{r.nats_per_token:.4f}", f"{r.bits_per_byte:.4f}"
            )
        console.print(table)
    if harness is not None:
        table = Table(
            title=f"{harness.model}: lm-eval {harness.lm_eval}" + (f", first {limit} of each" if limit else "")
        )
        for col in ("task", "metric", "value", "stderr", "n-shot", "filter"):
            table.add_column(col)
        for row in harness.rows:
            stderr = f"{row['stderr']:.4f}" if row["stderr"] is not None else ""
            # lm-eval's HellaSwag acc_norm is per character; the built-in rows above say theirs
            per_char = row["task"] == "hellaswag" and row["metric"] == "acc_norm"
            metric = row["metric"] + (" (per char)" if per_char else "")
            table.add_row(
                f"{row['task']} v{row['version']}",
                metric,
                f"{row['value']:.4f}",
                stderr,
                str(row["n_shot"]),
                row["filter"],
            )
        console.print(table)
        print(
            f"gptkit: saved {harness.saved}" + (f" and {harness.samples}" if harness.samples else ""), file=sys.stderr
        )
