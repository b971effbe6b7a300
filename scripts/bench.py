#!/usr/bin/env python3
"""Run the tokenize, train and sample benchmarks and write one table (markdown).

Each benchmark measures its own limit in the same run (tiktoken single-thread × workers, the
CPU's matmul peak in the precision trained, transformers' generate and a memory read), so the
ratios mean something on any machine.

    python scripts/bench.py                 # all three, table to stdout and bench_results.md
    python scripts/bench.py --quick         # smaller inputs (a smoke run, not for the README)
    python scripts/bench.py --only sample

Exits 1 if any benchmark misses its goal or fails.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run(script: str, *args: str) -> tuple[int, str, float]:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, str(HERE / script), *args], capture_output=True, text=True)
    sys.stderr.write(r.stderr[-2000:] if r.returncode not in (0, 1) else "")
    return r.returncode, r.stdout, time.perf_counter() - t0


def last_json_line(out: str):
    for line in reversed(out.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise ValueError("no JSON line in the benchmark's output")


def bench_tokenize(quick: bool) -> list[dict]:
    rc, out, _ = run("bench_tokenize.py", "--json", *(["--mb", "16"] if quick else []))
    d = last_json_line(out)
    rows = []
    for r in d["runs"]:
        ratio = r["ratio"]
        rows.append(
            {
                "benchmark": f"tokenize, FineWeb-like parquet {r['input']} ({r['text_mb']:.0f} MB), {d['workers']} workers",
                "result": f"{r['mb_per_s']:.2f} MB/s, {r['tokens_per_s'] / 1e6:.2f} M tok/s, peak RSS {r['peak_rss_mb']:.0f} MB",
                "limit": f"{r['limit_tokens_per_s'] / 1e6:.2f} M tok/s (tiktoken 1 thread × {d['workers']})",
                "ratio": f"{ratio:.0%} ({r['ratio_concurrent']:.0%} of {d['concurrent_limit'] / 1e6:.2f} M tok/s, {d['workers']} encoders at once)",
                "goal": "≥ 85%, RSS < 1 GB and flat",
                "ok": ratio >= 0.85 and r["peak_rss_mb"] < 1024 and d["rss_growth_2x"] < 1.25,
            }
        )
    return rows


def bench_train(quick: bool) -> list[dict]:
    # both modes: the goals are on the best of them (bench_train.py's own verdict)
    rc, out, _ = run("bench_train.py", "--json", "--modes", "inproc,torchrun", *(["--steps", "3"] if quick else []))
    return train_rows(json.loads(out[out.index("[") : out.rindex("]") + 1]))


def train_rows(results: list[dict]) -> list[dict]:
    """bench_train.py's JSON -> rows; a bf16 row is met when its config's best bf16 MFU meets the goal."""
    from bench_train import GOALS  # the bf16 goals of issue 12, by config

    best: dict[str, float] = {}
    for r in results:
        if r["precision"] == "bf16":
            best[r["config"]] = max(best.get(r["config"], 0.0), r["mfu"])
    rows = []
    for r in results:
        goal = GOALS.get(r["config"]) if r["precision"] == "bf16" else None
        rows.append(
            {
                "benchmark": f"train `small`, {'GPT-2 vocab' if r['config'] == 'gpt2-vocab' else 'byte-level'}, "
                f"{r['precision']}, {r['mode']} ({r['procs']})",
                "result": f"{r['tok_per_s']:.0f} tok/s (median step {r['tok_per_s_median']:.0f})",
                "limit": f"{r['peak_gflops']:.0f} GFLOP/s {r['precision']} matmul peak",
                "ratio": f"{r['mfu']:.1%} MFU",
                "goal": f"≥ {goal:.0%} MFU (best mode)" if goal else "—",
                "ok": best[r["config"]] >= goal if goal else None,
            }
        )
    return rows


def bench_sample(quick: bool) -> list[dict]:
    rc, out, _ = run("bench_sample.py", "--json", *(["--new-tokens", "64", "--rounds", "1"] if quick else []))
    return sample_rows(last_json_line(out))


def sample_rows(d: dict) -> list[dict]:
    """bench_sample.py's JSON -> rows, one per goal of issue 12."""
    from bench_sample import GOAL_DEFAULTS, GOAL_FP32, GOAL_LIMIT

    tps, ratios, dt = d["tok_per_s"], d["ratios"], d["precision"]
    what = f"sample {d['preset']}, batch 1, {d['new_tokens']} new tokens, greedy, {d['threads']} threads"
    return [
        {
            "benchmark": f"{what}, defaults ({dt} weights)",
            "result": f"{tps['default']:.1f} tok/s",
            "limit": f"{tps['transformers']:.1f} tok/s (transformers generate, fp32)",
            "ratio": f"{ratios['defaults_vs_transformers']:.2f}×",
            "goal": f"≥ {GOAL_DEFAULTS}×",
            "ok": ratios["defaults_vs_transformers"] >= GOAL_DEFAULTS,
        },
        {
            "benchmark": f"{what}, fp32 (tokens same as transformers': {'yes' if d['same_tokens_fp32'] else 'NO'})",
            "result": f"{tps['fp32']:.1f} tok/s",
            "limit": f"{tps['transformers']:.1f} tok/s (transformers generate, fp32)",
            "ratio": f"{ratios['fp32_vs_transformers']:.2f}×",
            "goal": f"≥ {GOAL_FP32}×, same tokens",
            "ok": ratios["fp32_vs_transformers"] >= GOAL_FP32 and d["same_tokens_fp32"],
        },
        {
            "benchmark": f"{what}, defaults against memory bandwidth (median round)",
            "result": f"{tps['default']:.1f} tok/s (best round)",
            "limit": f"{d['limit_tok_per_s']:.1f} tok/s ({d['read_gb_per_s']:.1f} GB/s {dt} reduction, between the tokens)",
            "ratio": f"{ratios['vs_limit']:.0%}",
            "goal": f"≥ {GOAL_LIMIT:.0%}",
            "ok": ratios["vs_limit"] >= GOAL_LIMIT,
        },
        {
            "benchmark": f"load a {d['preset']} .safetensors to the first token",
            "result": f"{d['load_to_first_token_s']:.2f} s",
            "limit": f"`import torch` alone: {d['import_torch_s']:.2f} s",
            "ratio": "—",
            "goal": "≤ 1 s",
            "ok": d["load_to_first_token_s"] <= 1.0,
        },
    ]


BENCHES = {"tokenize": bench_tokenize, "train": bench_train, "sample": bench_sample}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=sorted(BENCHES), action="append")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("bench_results.md"))
    args = ap.parse_args()
    rows, failed = [], []
    for name in args.only or BENCHES:
        print(f"running {name} benchmark ...", file=sys.stderr, flush=True)
        try:
            rows += BENCHES[name](args.quick)
        except Exception as e:  # noqa: BLE001 - one broken benchmark must not hide the others
            failed.append(name)
            rows.append(
                {"benchmark": name, "result": f"failed: {e}", "limit": "", "ratio": "", "goal": "", "ok": False}
            )
    cpu = (
        next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "CPU")
        if os.path.exists("/proc/cpuinfo")
        else "CPU"
    )
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {cpu}, {os.cpu_count()} cores, load average "
        f"{os.getloadavg()[0]:.1f} at the end{' (--quick)' if args.quick else ''}:",
        "",
        "| benchmark | result | limit, measured in the same run | ratio | goal | met |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        met = "yes" if r["ok"] else ("—" if r["ok"] is None else "no")
        lines.append(f"| {r['benchmark']} | {r['result']} | {r['limit']} | {r['ratio']} | {r['goal']} | {met} |")
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.write_text(text)
    return 1 if failed or any(r["ok"] is False for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
