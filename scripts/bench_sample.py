#!/usr/bin/env python3
"""Decoding speed: gptkit's KV-cache generation vs transformers' generate, same weights, same run.

The gpt2 (124M) config with random weights, written as a gptkit checkpoint and converted to a
Hugging Face directory with `gptkit convert`, so both sides load the very same numbers through
their normal loaders (gptkit: the path `gptkit sample` takes; transformers: from_pretrained).
Greedy, batch 1, 256 new tokens after a 16-token prompt, both with a KV cache
(transformers: use_cache=True). Runs alternate between the two so that machine noise hits both;
the best run of each counts. Both must produce the same tokens.

    python scripts/bench_sample.py                  # CPU, torch's default thread count
    python scripts/bench_sample.py --threads 1 --repeats 5

Prints a markdown row; exits 1 when gptkit is below the goal (1.2x transformers).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

GOAL = 1.2


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--prompt-tokens", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    ap.add_argument("--preset", default="gpt2")
    ap.add_argument("--json", action="store_true", help="also print one JSON line")
    args = ap.parse_args()

    import torch
    from transformers import GPT2LMHeadModel
    from transformers.utils import logging as hf_logging

    from gptkit.checkpoint import save_checkpoint
    from gptkit.formats.convert import convert
    from gptkit.generate import SampleConfig, generate
    from gptkit.model import GPT, get_preset
    from gptkit.models import load_for_sampling

    hf_logging.set_verbosity_error()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        cfg = get_preset(args.preset)
        ck = save_checkpoint(Path(tmp) / "ck", GPT(cfg), config=cfg, tokenizer="gpt2")
        convert(ck, Path(tmp) / "hf", to="hf")
        ours_model, _, _ = load_for_sampling(ck, device)
        hf = GPT2LMHeadModel.from_pretrained(Path(tmp) / "hf").eval()
    hf.generation_config.eos_token_id = None  # random weights may emit EOT: both run the full 256
    hf.generation_config.pad_token_id = cfg.vocab_size - 1

    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, cfg.vocab_size, (1, args.prompt_tokens), generator=g)
    n = args.new_tokens

    def ours(k: int) -> list[int]:
        sc = SampleConfig(max_new_tokens=k, temperature=0, stop_at_eot=False)
        return [int(t) for t in generate(ours_model, prompt[0].tolist(), sc, vocab_size=cfg.vocab_size)]

    def theirs(k: int) -> list[int]:
        with torch.inference_mode():
            out = hf.generate(prompt, max_new_tokens=k, do_sample=False, use_cache=True)
        return out[0, prompt.size(1) :].tolist()

    ours(8), theirs(8)  # warm-up: allocator, kernels' first-call setup
    t_ours, t_hf = [], []
    same = True
    for r in range(args.repeats):
        t0 = time.perf_counter()
        a = ours(n)
        t_ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        b = theirs(n)
        t_hf.append(time.perf_counter() - t0)
        same &= a == b
        print(f"run {r + 1}: gptkit {n / t_ours[-1]:.1f} tok/s, transformers {n / t_hf[-1]:.1f} tok/s", file=sys.stderr)
    ours_tps, hf_tps = n / min(t_ours), n / min(t_hf)
    ratio = ours_tps / hf_tps
    threads = torch.get_num_threads()
    print(
        f"\n{args.preset} on CPU ({threads} threads, {os.cpu_count()} CPUs), batch 1, greedy, {n} new tokens, "
        f"best of {args.repeats}; same tokens: {'yes' if same else 'NO'}\n"
    )
    print("| model | gptkit tok/s | transformers tok/s | ratio | goal |")
    print("|---|---|---|---|---|")
    print(
        f"| {args.preset} | {ours_tps:.1f} | {hf_tps:.1f} | {ratio:.2f}x | >= {GOAL}x {'PASS' if ratio >= GOAL else 'FAIL'} |"
    )
    if args.json:
        import json

        print(
            json.dumps(
                {
                    "preset": args.preset,
                    "threads": threads,
                    "new_tokens": n,
                    "gptkit_tok_per_s": ours_tps,
                    "transformers_tok_per_s": hf_tps,
                    "ratio": ratio,
                    "same_tokens": same,
                }
            )
        )
    if not same:
        print("error: gptkit and transformers generated different tokens", file=sys.stderr)
        return 1
    return 0 if ratio >= GOAL else 1


if __name__ == "__main__":
    sys.exit(main())
