"""Make the golden fixtures under tests/golden/v0.1.0 with the installed gptkit.

Run once by the release that wrote them (gptkit 0.1.0, commit 5ff0cba) before the package layout
changed; tests/test_golden.py checks that every later version still reads, resumes, samples and
verifies them. Do not regenerate them with a newer gptkit: that would defeat their purpose.

    python tests/golden/make_golden.py
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "v0.1.0"
TEXT = (
    "The quick brown fox jumps over the lazy dog. A golden fixture is a file written by an old "
    "release that every new release must still read. "
) * 60


def gptkit(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "gptkit", *args], check=True, env={**os.environ, "GPTKIT_HOME": str(OUT / ".home")})


def main() -> None:
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    corpus = OUT / ".corpus"
    corpus.mkdir()
    (corpus / "text.txt").write_text(TEXT)
    # 1. a shard directory (bytes vocabulary: no GPT-2 vocabulary file needed to read it back)
    gptkit("tokenize", str(corpus), "--out", str(OUT / "shards"), "--tokenizer", "bytes",
           "--shard-tokens", "4000", "--val-tokens", "1000")
    # 2. a run stopped mid-way: 4 of 6 steps, checkpoints at 2 and 4
    gptkit("train", "--preset", "tiny", "--data", str(OUT / "shards"), "--out", str(OUT / "run"),
           "--nproc", "1", "--gpus", "0", "--seq-len", "32", "--batch-tokens", "256", "--micro-batch", "4",
           "--max-steps", "6", "--warmup-steps", "2", "--eval-every", "2", "--eval-tokens", "256",
           "--sample-every", "1000", "--checkpoint-every", "2", "--keep", "0", "--precision", "fp32")
    shutil.rmtree(OUT / "run" / "step_000006")
    lines = (OUT / "run" / "metrics.jsonl").read_text().splitlines(keepends=True)
    import json

    kept = [ln for ln in lines if json.loads(ln).get("step", 0) <= 4]
    (OUT / "run" / "metrics.jsonl").write_text("".join(kept))
    # 3. a Hugging Face directory converted from the step-4 checkpoint
    gptkit("convert", str(OUT / "run" / "step_000004"), str(OUT / "hf"), "--to", "hf")
    shutil.rmtree(corpus)
    shutil.rmtree(OUT / ".home", ignore_errors=True)


if __name__ == "__main__":
    main()
