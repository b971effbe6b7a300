#!/usr/bin/env python
"""How far `gptkit train --plan`'s CPU time estimate is from the real training time, over a few shapes.

    python scripts/bench_plan.py                    # three shapes, 40 steps each, on built-in English text
    python scripts/bench_plan.py --steps 20 --shapes tiny,char --json

For each shape: `gptkit train ... --plan --json` (the estimate: wall_s), then the same command for
real; the real training time is the sum of the steps' times in metrics.jsonl (start-up, the first
step's warm-up and the final checkpoint are not the estimate's subject: the first step is left out
of both). The goal (issue 23): on a quiet machine, real / estimate within 1.5x either way. The plan
says when the machine was busy while it timed; such a row is reported, not judged quiet.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOAL = 1.5
SHAPES = {
    # name: flags (each trains at --max-steps N with evaluation, samples and HellaSwag off)
    "tiny": ["--preset", "tiny"],
    "char": ["--preset", "char"],
    "small-128": ["--preset", "small", "--seq-len", "128", "--batch-tokens", "4096"],
}
QUIET = ["--eval-tokens", "0", "--sample-tokens", "0", "--hellaswag-every", "0", "--checkpoint-every", "100000"]


def gptkit(env: dict, *args: str, timeout: float = 3600) -> subprocess.CompletedProcess:
    r = subprocess.run(
        [sys.executable, "-m", "gptkit", *args], env=env, capture_output=True, text=True, timeout=timeout
    )
    if r.returncode != 0:
        raise SystemExit(f"gptkit {' '.join(args)} failed:\n{r.stderr[-2000:]}")
    return r


def measure(env: dict, home: Path, name: str, flags: list[str], steps: int) -> dict:
    common = [*flags, "--data", "python-docs", "--gpus", "0", "--max-steps", str(steps), *QUIET]
    plan = json.loads(gptkit(env, "train", *common, "--plan", "--json").stdout)
    t0 = time.perf_counter()
    gptkit(env, "train", *common, "--name", f"bench-{name}")
    process_s = time.perf_counter() - t0
    records = [json.loads(x) for x in (home / "runs" / f"bench-{name}" / "metrics.jsonl").read_text().splitlines()]
    dts = [r["dt"] for r in records if "loss" in r and "dt" in r]
    real = sum(dts[1:]) * steps / max(1, len(dts) - 1)  # the first step (warm-up) left out, scaled back
    est = plan["wall_s"]
    ratio = real / est
    busy = [n for n in plan["notes"] if n.startswith("the machine is busy")]
    return {
        "shape": name,
        "params": plan["n_params"],
        "steps": steps,
        "estimate_s": round(est, 2),
        "real_s": round(real, 2),
        "process_s": round(process_s, 2),
        "ratio": round(ratio, 3),
        "step_spread": round(max(dts[1:]) / min(dts[1:]), 2) if len(dts) > 2 else None,
        "median_step_s": round(statistics.median(dts[1:]), 4) if len(dts) > 1 else None,
        "busy_when_planned": busy[0] if busy else None,
        "within_goal": 1 / GOAL <= ratio <= GOAL,
        "time_basis": plan["time_basis"],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-plan-") as tmp:
        home = Path(tmp)
        env = {**os.environ, "GPTKIT_HOME": str(home)}
        vocab = Path(os.environ.get("GPTKIT_HOME", Path.home() / ".cache" / "gptkit")) / "tiktoken"
        if vocab.is_dir():  # the GPT-2 vocabulary, offline (bytes need none; tokenize checks for it)
            (home / "tiktoken").symlink_to(vocab)
        gptkit(env, "tokenize", "python-docs", "--tokenizer", "bytes")
        rows = []
        for s in args.shapes.split(","):
            rows.append(measure(env, home, s, SHAPES[s], args.steps))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)  # as they come: a busy machine is slow
    load = os.getloadavg()[0]
    if args.json:
        print(json.dumps({"rows": rows, "load_1min": load, "cores": os.cpu_count()}, indent=1))
    else:
        for r in rows:
            flag = "ok" if r["within_goal"] else "MISSED"
            busy = "  (busy when planned)" if r["busy_when_planned"] else ""
            print(
                f"{r['shape']:<10} estimate {r['estimate_s']:8.1f} s  real {r['real_s']:8.1f} s  "
                f"real/estimate {r['ratio']:.2f}  {flag}{busy}"
            )
        print(f"load average {load:.1f} on {os.cpu_count()} cores; goal: within {GOAL}x on a quiet machine")
    return 0 if all(r["within_goal"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
