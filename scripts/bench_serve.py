#!/usr/bin/env python3
"""Serving speed in one run: `gptkit serve` with 1, 4 and 8 concurrent streaming clients, against
`gptkit sample` on the same checkpoint.

The gpt2 (124M) shape with random weights (speed does not depend on what the weights say), written as
a gptkit checkpoint; both sides decode it in the precision policy's dtype (`auto`). `gptkit serve`
runs in its own process; the clients are coroutines in this one (httpx, streaming), whose CPU time is
reported, since they share the machine's cores with the server.

Each client sends `--requests` streaming requests one after another (greedy, `--new-tokens` each, a
16-token prompt of its own); client i starts i/N of one request's time after the first, so requests
arrive while the others decode, as they would from independent users. Reported per N:

- aggregate tok/s: tokens streamed while all N clients were active (from the last client's first
  request to the first client's last end), per second;
- time to first token: median (and max) over every request of the run; idle = the 1-client run's;
- per-client tok/s: a request's tokens after its first, over the time from its first to its last.

The baseline: `gptkit sample -t 0 --ignore-eot` (tokens/s from its --json) in the same run, before and
after the clients (the better counts), so the ratios cannot come from a slow server baseline.
Goals: 1 client within 10% of sample; 8 clients >= 4x one client's aggregate tok/s; TTFT under load
(8 clients) <= 2x idle. Random weights may emit end-of-text early: tokens are counted as streamed.

    python scripts/bench_serve.py                     # ~3-6 min on 2 busy cores
    python scripts/bench_serve.py --new-tokens 64 --clients 1,4,8

Prints a markdown table; exits 1 when a goal is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

GOAL_BASELINE = 0.10  # 1 client within 10% of `gptkit sample`
GOAL_SCALE = 4.0  # 8 clients' aggregate tok/s / 1 client's
GOAL_TTFT = 2.0  # TTFT at 8 clients / idle


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (Linux /proc), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sample_tps(ck: Path, prompt: str, n: int) -> float:
    cmd = [sys.executable, "-m", "gptkit", "sample", prompt, "-m", str(ck), "-t", "0", "-n", str(n)]
    out = subprocess.run([*cmd, "--ignore-eot", "--device", "cpu", "--json"], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"gptkit sample failed: {out.stderr}")
    return float(json.loads(out.stdout)["tokens_per_second"])


async def one_request(http, url: str, model: str, prompt: str, n: int, log: list[float]) -> dict:
    body = {"model": model, "prompt": prompt, "max_tokens": n, "temperature": 0, "stream": True}
    t0 = time.perf_counter()
    first = None
    stamps: list[float] = []
    async with http.stream("POST", url + "/v1/completions", json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {await r.aread()!r}")
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            now = time.perf_counter()
            if chunk["choices"][0]["text"]:
                first = first or now
                stamps.append(now)
            if chunk["choices"][0]["finish_reason"]:
                tokens = chunk["usage"]["completion_tokens"]
    log.extend(stamps)
    assert first is not None
    return {
        "ttft": first - t0,
        "tokens": tokens,
        "rate": (tokens - 1) / (stamps[-1] - first) if len(stamps) > 1 else 0.0,
        "start": t0,
        "end": stamps[-1],
    }


async def run_clients(url: str, model: str, prompts: list[str], n: int, requests: int, spread: float) -> dict:
    import httpx

    stamps: list[float] = []
    N = len(prompts)
    async with httpx.AsyncClient(timeout=600) as http:

        async def client(i: int) -> list[dict]:
            await asyncio.sleep(i * spread / N)
            return [await one_request(http, url, model, prompts[i], n, stamps) for _ in range(requests)]

        cpu0, t0 = time.process_time(), time.perf_counter()
        per_client = await asyncio.gather(*(client(i) for i in range(N)))
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    reqs = [r for c in per_client for r in c]
    lo = max(c[0]["start"] for c in per_client)  # every client active from here...
    hi = min(c[-1]["end"] for c in per_client)  # ...to here
    inside = sum(1 for s in stamps if lo <= s <= hi)
    ttfts = sorted(r["ttft"] for r in reqs)
    return {
        "clients": N,
        "aggregate": inside / (hi - lo) if hi > lo else float("nan"),
        "ttft_median": statistics.median(ttfts),
        "ttft_max": ttfts[-1],
        "per_client": statistics.median(r["rate"] for r in reqs),
        "tokens": sum(r["tokens"] for r in reqs),
        "wall": wall,
        "client_cpu": cpu,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--requests", type=int, default=3, help="requests per client, one after another")
    ap.add_argument("--clients", default="1,4,8")
    ap.add_argument("--preset", default="gpt2")
    args = ap.parse_args()
    counts = [int(c) for c in args.clients.split(",")]

    import torch

    from gptkit.checkpoint import save_checkpoint
    from gptkit.model import GPT, get_preset

    n = args.new_tokens
    words = "the of and to in is was for on that with as by at from his her an which".split()
    prompts = [" ".join(words[(i + j) % len(words)] for j in range(16)) for i in range(max(counts))]
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        cfg = get_preset(args.preset)
        ck = save_checkpoint(Path(tmp) / "run" / "step_000001", GPT(cfg), config=cfg, tokenizer="gpt2")
        base = [sample_tps(ck, prompts[0], n)]
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        server = subprocess.Popen(
            [sys.executable, "-m", "gptkit", "serve", str(ck), "--port", str(port), "--device", "cpu"]
            + ["--max-batch", str(max(counts)), "--max-queue", "0"],
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert server.stderr is not None
            for line in server.stderr:
                if "serving " in line:
                    break
            else:
                sys.exit("gptkit serve did not start")
            threading.Thread(target=server.stderr.read, daemon=True).start()  # never let its log block it
            model = str(ck)
            asyncio.run(run_clients(url, model, prompts[:1], 8, 1, 0.0))  # warm-up
            results = []
            spread = None
            for N in counts:
                s0 = cpu_seconds(server.pid)
                res = asyncio.run(run_clients(url, model, prompts[:N], n, args.requests, spread or 0.0))
                res["server_cpu"] = cpu_seconds(server.pid) - s0
                results.append(res)
                if spread is None:  # one request's time, idle: the arrival spread of the runs with more clients
                    spread = res["wall"] / args.requests
                print(
                    f"{N} clients: {res['aggregate']:.1f} tok/s together, TTFT median {res['ttft_median'] * 1000:.0f} ms, "
                    f"{res['per_client']:.1f} tok/s per client",
                    file=sys.stderr,
                )
        finally:
            server.terminate()
            server.wait()
        base.append(sample_tps(ck, prompts[0], n))

    sample = max(base)
    one = next(r for r in results if r["clients"] == 1)
    most = results[-1]
    off = abs(one["aggregate"] - sample) / sample
    scale = most["aggregate"] / one["aggregate"]
    ttft = most["ttft_median"] / one["ttft_median"]

    def met(ok: bool) -> str:
        return "PASS" if ok else "FAIL"

    threads = torch.get_num_threads()
    print(
        f"\n{args.preset} shape, random weights, CPU ({os.cpu_count()} CPUs, torch {threads} threads), greedy, "
        f"16-token prompts, {n} new tokens x {args.requests} requests per client, streaming\n"
        f"`python scripts/bench_serve.py {' '.join(sys.argv[1:])}`\n"
    )
    print(
        "| clients | aggregate tok/s | TTFT median (max) | per-client tok/s | server CPU / wall | clients' CPU / wall |"
    )
    print("|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['clients']} | {r['aggregate']:.1f} | {r['ttft_median'] * 1000:.0f} ms ({r['ttft_max'] * 1000:.0f}) "
            f"| {r['per_client']:.1f} | {r['server_cpu']:.1f} s / {r['wall']:.1f} s | {r['client_cpu']:.2f} s |"
        )
    print(f"| `gptkit sample`, same run | {sample:.1f} (runs: {', '.join(f'{b:.1f}' for b in base)}) | | | | |")
    print()
    print(f"- 1 client vs sample: {one['aggregate'] / sample:.2f}x (goal within 10%: {met(off <= GOAL_BASELINE)})")
    print(f"- {most['clients']} clients / 1: {scale:.2f}x (goal >= {GOAL_SCALE}x: {met(scale >= GOAL_SCALE)})")
    print(f"- TTFT at {most['clients']} clients / idle: {ttft:.2f}x (goal <= {GOAL_TTFT}x: {met(ttft <= GOAL_TTFT)})")
    return 0 if off <= GOAL_BASELINE and scale >= GOAL_SCALE and ttft <= GOAL_TTFT else 1


if __name__ == "__main__":
    sys.exit(main())
