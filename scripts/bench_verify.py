#!/usr/bin/env python3
"""What checking a checkpoint's checksums costs `gptkit sample`: load to the first token in fresh
interpreters (as scripts/bench_sample.py times it), with the check (the default: sha256 in a thread
while the weights load, waited for before the model is returned) and without it, and the hashing
alone. A random-weight checkpoint of the preset (default gpt2, 124M) with the GPT-2 tokenizer; the
rounds interleave the three, and each prints its median and every round.

    GPTKIT_HOME=... python scripts/bench_verify.py --rounds 5
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

MAKE = """
import sys, torch
from gptkit.checkpoint import save_checkpoint
from gptkit.model import GPT, get_preset
from gptkit.tokenizer import get_tokenizer
torch.manual_seed(0)
m = GPT(get_preset(sys.argv[2]))
save_checkpoint(sys.argv[1], m, config=m.config, tokenizer=get_tokenizer("gpt2"))
"""

RUN = """
import sys, time, torch
import gptkit.formats.native as native
from gptkit.checkpoint import verify_checkpoint
from gptkit.generate import SampleConfig, generate
from gptkit.models import decoding_dtype, load_for_sampling
mode = sys.argv[2]
if mode == "without":
    native.Verification = lambda *a, **k: None  # the reader then starts no check
dev = torch.device("cpu")
t0 = time.perf_counter()
if mode == "hash only":
    verify_checkpoint(sys.argv[1], model_only=True)
else:
    model, _, _ = load_for_sampling(sys.argv[1], dev, dtype=decoding_dtype("auto", dev), steps=200)
    cfg = SampleConfig(max_new_tokens=1, temperature=0, stop_at_eot=False)
    next(generate(model, [464, 2068, 7586], cfg, vocab_size=model.config.vocab_size))
print(time.perf_counter() - t0)
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--preset", default="gpt2")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        ck = Path(d) / "ck"
        subprocess.run([sys.executable, "-c", MAKE, str(ck), args.preset], check=True)
        times: dict[str, list[float]] = {"without": [], "with": [], "hash only": []}
        for _ in range(args.rounds):
            for mode, got in times.items():
                out = subprocess.run([sys.executable, "-c", RUN, str(ck), mode], capture_output=True, text=True)
                if out.returncode != 0:
                    sys.exit(out.stderr)
                got.append(float(out.stdout.split()[-1]))
    for mode, got in times.items():
        got.sort()
        print(f"{mode:10s} median {got[len(got) // 2]:.2f} s   rounds: {' '.join(f'{t:.2f}' for t in got)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
