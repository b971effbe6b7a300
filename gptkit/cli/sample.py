"""`gptkit sample`: generate text from a trained or pretrained model, streamed as it is made."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from gptkit.cli.options import Device, Endpoint, JsonOut, Mirror, Precision


def sample(
    prompt: Annotated[
        str | None, typer.Argument(metavar="PROMPT", help="Text to continue. Empty: start from the end-of-text token.")
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            metavar="MODEL",
            help="A run name or directory, a checkpoint directory, .pt, .safetensors, .gguf, Hugging Face directory, "
            "or a hub name such as gpt2. Default: the newest local run, else pretrained gpt2.",
        ),
    ] = None,
    prompt_file: Annotated[
        Path | None, typer.Option("--prompt-file", metavar="FILE", help="Read the prompt from this file (UTF-8).")
    ] = None,
    max_new_tokens: Annotated[
        int, typer.Option("--max-new-tokens", "-n", metavar="N", help="Tokens to generate per sample.")
    ] = 200,
    temperature: Annotated[float, typer.Option("--temperature", "-t", metavar="T", help="0 means greedy.")] = 0.8,
    top_k: Annotated[
        int, typer.Option("--top-k", metavar="K", help="Sample from the k most likely tokens (0: no limit).")
    ] = 200,
    top_p: Annotated[
        float,
        typer.Option(
            "--top-p", metavar="P", help="Nucleus sampling: the smallest set holding this much probability (1: off)."
        ),
    ] = 1.0,
    num_samples: Annotated[
        int, typer.Option("--num-samples", metavar="N", help="Independent continuations of the prompt.")
    ] = 1,
    tokenizer: Annotated[
        str | None,
        typer.Option(
            "--tokenizer",
            metavar="SPEC",
            help="The model's tokenizer when it carries none: gpt2, bytes, a tokenizer.json, a vocab.json + merges.txt "
            "directory or a nanoGPT meta.pkl (checked against the model's vocabulary).",
        ),
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed", metavar="N", help="Same seed, same text.")] = None,
    ignore_eot: Annotated[
        bool,
        typer.Option(
            "--ignore-eot", help="Keep going past the end-of-text token: exactly -n tokens per sample (benchmarks)."
        ),
    ] = False,
    device: Device = "auto",
    precision: Precision = "auto",
    json_out: JsonOut = False,
    endpoint: Endpoint = None,
    mirror: Mirror = False,
):
    """Generate text with the KV cache, streaming it to the terminal (sample 1 live, the rest after)."""
    import json

    from gptkit.cli.progress import resolve_model_shown
    from gptkit.device import pick_device
    from gptkit.errors import GptkitError
    from gptkit.generate import SampleConfig, sample_text
    from gptkit.hub.endpoint import resolve_endpoint
    from gptkit.models import decoding_dtype, load_for_sampling

    if prompt is not None and prompt_file is not None:
        raise GptkitError("give either a PROMPT or --prompt-file, not both")
    if prompt_file is not None:
        try:
            prompt = prompt_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise GptkitError(
                f"--prompt-file {prompt_file}: cannot read ({getattr(e, 'strerror', None) or e.__class__.__name__})"
            ) from None
    cfg = SampleConfig(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k or None,
        top_p=top_p,
        num_samples=num_samples,
        seed=seed,
        stop_at_eot=not ignore_eot,
    )
    cfg.validate()
    dev = pick_device(device)
    url = resolve_endpoint(endpoint, mirror)
    path = resolve_model_shown(model, url, option="--model")
    # The weights are kept in the decoding dtype (no autocast per op): see models.decoding_dtype.
    dtype = decoding_dtype(precision, dev)
    net, tok, described = load_for_sampling(
        path,
        dev,
        tokenizer,
        dtype=dtype,
        log=lambda note: print(f"gptkit: note: {note}", file=sys.stderr),
        steps=cfg.max_new_tokens,  # the weights are read once per step, for every sample at once
    )
    prompt = prompt or ""
    if not prompt and tok.eot_token is None:
        raise GptkitError(f"the {tok.name} vocabulary has no end-of-text token to start from; give a PROMPT")
    if prompt:
        tok.encode(prompt)  # a prompt the vocabulary cannot spell fails here, before anything is printed

    def stream(_row: int, piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    if not json_out:
        weights = str(dtype).removeprefix("torch.") if dtype is not None else "fp32"
        print(f"gptkit: sampling from {described}, {weights} weights on {dev}", file=sys.stderr)
        if num_samples > 1:  # every sample under its header, the streamed first one too
            sys.stdout.write(f"--- sample 1/{num_samples} ---\n")
        sys.stdout.write(prompt)
        sys.stdout.flush()
    try:
        result = sample_text(
            net,
            tok,
            prompt,
            cfg,
            on_text=None if json_out else stream,
            model_name=str(path),
        )
    except KeyboardInterrupt:
        if not json_out:
            sys.stdout.write("\n")  # end the streamed text, so "gptkit: interrupted" gets a line of its own
            sys.stdout.flush()
        raise
    if json_out:
        print(
            json.dumps(
                {
                    "model": str(path),
                    "prompt": prompt,
                    "seed": seed,
                    "temperature": temperature,
                    "top_k": cfg.top_k,
                    "top_p": cfg.top_p,
                    "new_tokens": result.new_tokens,
                    "seconds": round(result.seconds, 4),
                    "tokens_per_second": round(result.tokens_per_second, 2),
                    "prompt_tokens_dropped": result.prompt_tokens_dropped,
                    "samples": [
                        {"text": s.text, "tokens": len(s.tokens), "stop": s.stop_reason} for s in result.samples
                    ],
                },
                ensure_ascii=False,
            )
        )
        return
    sys.stdout.write("\n")
    for i, s in enumerate(result.samples[1:], start=2):
        sys.stdout.write(f"\n--- sample {i}/{len(result.samples)} ---\n{prompt}{s.text}\n")
    sys.stdout.flush()
    if result.prompt_tokens_dropped:
        print(
            f"gptkit: the prompt is longer than the model's context ({net.config.block_size} tokens); "
            f"its first {result.prompt_tokens_dropped} tokens were not seen",
            file=sys.stderr,
        )
    print(
        f"gptkit: {result.new_tokens} tokens in {result.seconds:.2f} s ({result.tokens_per_second:.1f} tokens/s)",
        file=sys.stderr,
    )
