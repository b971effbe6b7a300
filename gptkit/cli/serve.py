"""`gptkit serve`: an OpenAI-compatible API and a page for one model (gptkit.serve)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from gptkit.cli.options import Device, Endpoint, Mirror, Precision, within


def serve(
    model: Annotated[
        str,
        typer.Argument(
            metavar="MODEL",
            help="A run name or directory, a checkpoint directory, .pt, .safetensors, .gguf, Hugging Face "
            "directory, or a hub name such as gpt2.",
        ),
    ],
    host: Annotated[
        str, typer.Option("--host", metavar="ADDR", help="Address to listen on (loopback unless you say otherwise).")
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option("--port", metavar="PORT", help="Port (0: any free one).", callback=within(0, 65535))
    ] = 8000,
    api_key_file: Annotated[
        Path | None,
        typer.Option(
            "--api-key-file",
            metavar="FILE",
            help="Require this key (the file's one word) as Authorization: Bearer KEY. Or set GPTKIT_API_KEY.",
        ),
    ] = None,
    cors_origin: Annotated[
        str | None,
        typer.Option("--cors-origin", metavar="ORIGIN", help="Let pages from this origin call the API (CORS)."),
    ] = None,
    max_batch: Annotated[
        int, typer.Option("--max-batch", metavar="N", help="Requests decoded at once, in one forward per step.")
    ] = 8,
    max_queue: Annotated[
        int, typer.Option("--max-queue", metavar="N", help="Requests waiting for a free row; past them: 429.")
    ] = 16,
    max_tokens: Annotated[
        int, typer.Option("--max-tokens", metavar="N", help="The most max_tokens a request may ask for.")
    ] = 1024,
    tokenizer: Annotated[
        str | None,
        typer.Option("--tokenizer", metavar="SPEC", help="The model's tokenizer when it carries none (as sample's)."),
    ] = None,
    device: Device = "auto",
    precision: Precision = "auto",
    endpoint: Endpoint = None,
    mirror: Mirror = False,
):
    """Serve MODEL over HTTP: OpenAI's /v1/completions (streaming too), /v1/models, /health, and a page at /."""
    import os

    from gptkit.cli.progress import resolve_model_shown
    from gptkit.device import pick_device
    from gptkit.hub.endpoint import resolve_endpoint
    from gptkit.models import HUGE_PAGES_FROM_STEPS, decoding_dtype, load_for_sampling
    from gptkit.serve.server import is_loopback, read_api_key, start_server

    def note(msg: str) -> None:
        print(f"gptkit: {msg}", file=sys.stderr, flush=True)

    key, key_source = read_api_key(None if api_key_file is None else str(api_key_file), dict(os.environ))
    dev = pick_device(device)
    url = resolve_endpoint(endpoint, mirror)
    path = resolve_model_shown(model, url, option=None)
    dtype = decoding_dtype(precision, dev)
    net, tok, described = load_for_sampling(
        path, dev, tokenizer, dtype=dtype, log=lambda m: note(f"note: {m}"), steps=HUGE_PAGES_FROM_STEPS
    )
    server = start_server(
        net,
        tok,
        model_id=model,
        host=host,
        port=port,
        api_key=key,
        cors_origin=cors_origin,
        max_batch=max_batch,
        max_queue=max_queue,
        max_tokens=max_tokens,
        log=note,
    )
    if key is None and not is_loopback(host):
        note(
            f"warning: serving on {host} without an API key: anyone who can reach this port can use the model "
            "(set GPTKIT_API_KEY or --api-key-file)"
        )
    bound = server.server_address[1]
    shown = f"[{host}]" if ":" in host else host
    weights = str(dtype).removeprefix("torch.") if dtype is not None else "fp32"
    note(f"loaded {described}, {weights} weights on {dev}")
    note(
        f"serving {model} at http://{shown}:{bound}/ (API: /v1/completions, /v1/models, /health; "
        f"{max_batch} at once, {max_queue} waiting; API key: {key_source}; Ctrl-C stops)"
    )
    try:
        server.serve_forever()
    finally:
        server.server_close()
        server.engine.close()
