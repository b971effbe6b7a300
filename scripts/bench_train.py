#!/usr/bin/env python
"""Training throughput and MFU on this CPU, against the matmul peak of the precision it trains in,
measured in the same run.

    python scripts/bench_train.py                 # both configs, bf16 (if native) and fp32, in-process
    python scripts/bench_train.py --precisions bf16 --configs gpt2-vocab --steps 4
    python scripts/bench_train.py --modes inproc,torchrun
    python scripts/bench_train.py --modes torchrun --configs bytes --precisions fp32 --nproc 2 \
        --parallel ddp,fsdp,ddp+ckpt          # FSDP2's and activation checkpointing's step time vs DDP
    python scripts/bench_train.py --modes torchrun --configs bytes --precisions fp32 --nproc 2 \
        --parallel fsdp,fsdp+muon,ddp+muon    # Muon under FSDP2: its step time, the bytes it gathers

Configs (the `small` preset: 4 layers, 4 heads, 256 wide, 256 tokens per sequence):
    gpt2-vocab  padded vocabulary 50304: the lm_head holds ~80% of the FLOPs (goal: MFU >= 70%)
    bytes       vocabulary 256: attention, LayerNorm and GELU weigh more, so MFU is lower
Modes:
    inproc      one process using every core, the real Trainer.train_step (what `--nproc 1` runs)
    torchrun    `gptkit train --nproc <cores>`: one single-threaded process per core, DDP over gloo
                (tokens/s from metrics.jsonl, first steps skipped)

Precisions: bf16 (autocast; only where the CPU runs bf16 natively, as gptkit.device decides) and
fp32. Each precision's MFU is against its own matmul peak (gptkit.train.mfu's measurement: bf16
matmuls for bf16, fp32 for fp32), never a bf16 run against the fp32 peak.

Both the peak and the step times are taken as the best of several tries, interleaved, since other
work on a shared machine can only slow either down. MFU = model FLOPs per token (6N + attention,
as in the PaLM paper: GPT.flops_per_token) x tokens/s / peak.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GOALS = {"gpt2-vocab": 0.70, "bytes": 0.60}  # the bf16 goals of issue 12 (best MFU of the config)
WORDS = (
    "the of and to in a is that for it as was with be by on not he this are or his from at which "
    "but have an they you were her she there one all we their been has when who will more no if out"
).split()


def make_data(root: Path, tokenizer: str, tokens: int) -> Path:
    """Real `gptkit tokenize` output from generated text, about `tokens` tokens of it."""
    import numpy as np

    from gptkit.data.tokenize import Settings, tokenize

    rng = np.random.default_rng(0)
    src = root / f"src-{tokenizer}"
    src.mkdir(parents=True)
    words_needed = tokens // (1 if tokenizer == "gpt2" else 4)
    with open(src / "docs.jsonl", "w") as f:
        n = 0
        while n < words_needed:
            k = int(rng.integers(50, 400))
            f.write(json.dumps({"text": " ".join(rng.choice(WORDS, size=k))}) + "\n")
            n += k
    out = root / f"shards-{tokenizer}"
    tokenize(str(src), out, Settings(tokenizer=tokenizer, shard_tokens=1 << 20, val_tokens=1 << 14), workers=1)
    return out


def peak_flops(precision: str, threads: int) -> float:
    from gptkit.train.mfu import measure_cpu_peak_flops

    return measure_cpu_peak_flops(precision, threads=threads, seconds=1.0)


def bench_inproc(
    data: Path, precision: str, steps: int, micro_batch: int, accum: int, threads: int, peaks: list[float]
):
    """Best and median step times of the real Trainer in this process; peaks measured in between."""
    import torch

    from gptkit.train.config import LaunchOverrides, TrainOverrides
    from gptkit.train.dist import Dist
    from gptkit.train.resolve import prepare
    from gptkit.train.trainer import Trainer

    torch.set_num_threads(threads)
    overrides = TrainOverrides(
        preset="small",
        data=str(data),
        micro_batch=micro_batch,
        batch_tokens=micro_batch * 256 * accum,
        max_steps=10_000,
        warmup_steps=10,
        eval_tokens=0,
        hellaswag_every=0,
        sample_every=10_000,
        checkpoint_every=10_000,
        precision=precision,
    )
    rr = prepare(overrides, LaunchOverrides(gpus=0, nproc=1), out=data.parent / f"run-{data.name}-{precision}")
    tr = Trainer(rr, Dist("cpu"))
    assert tr.precision.name == precision, (tr.precision.name, precision)
    tr.train_step()  # warm-up: allocator, thread pool
    times = []
    for i in range(steps):
        t = time.perf_counter()
        tr.train_step()
        times.append(time.perf_counter() - t)
        if i % 2 == 1:
            peaks.append(peak_flops(precision, threads))
    tokens = rr.plan.rows * 256
    return tr.flops_per_token, tokens / min(times), tokens / sorted(times)[len(times) // 2]


def bench_torchrun(
    data: Path, precision: str, steps: int, micro_batch: int, accum: int, nproc: int, parallel: str = "ddp"
):
    """tokens/s from a real `gptkit train --nproc N` run (skipping the first two steps). `parallel`:
    ddp or fsdp, `+ckpt` for activation checkpointing of every block, `+muon` for --optimizer muon."""
    strategy, *extra = parallel.split("+")
    if set(extra) - {"ckpt", "muon"}:
        raise SystemExit(f"unknown --parallel {parallel!r}: ddp or fsdp, then +ckpt and/or +muon")
    run = data.parent / f"torchrun-{data.name}-{precision}-{parallel}-{time.monotonic_ns()}"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "gptkit",
        "train",
        "--preset",
        "small",
        "--data",
        str(data),
        "--gpus",
        "0",
        "--nproc",
        str(nproc),
        "--precision",
        precision,
        "--micro-batch",
        str(micro_batch),
        "--batch-tokens",
        str(micro_batch * 256 * accum * nproc),
        "--max-steps",
        str(steps + 2),
        "--warmup-steps",
        "10",
        "--eval-tokens",
        "0",
        "--hellaswag-every",
        "0",
        "--sample-every",
        "10000",
        "--checkpoint-every",
        "10000",
        "--out",
        str(run),
        "--parallel",
        strategy,
        "--activation-checkpointing",
        "blocks" if "ckpt" in extra else "none",
        "--optimizer",
        "muon" if "muon" in extra else "adamw",
    ]
    from gptkit.procs import child_preexec

    # killed (a timeout, Ctrl-C), this script takes `gptkit train` with it, and that its torchrun
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, preexec_fn=child_preexec())
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    tps = sorted(r["tok_per_s"] for r in rows if "tok_per_s" in r and r["step"] > 2)
    return tps[-1], tps[len(tps) // 2]


def muon_gather_bytes(vocab: int, precision: str, nproc: int) -> tuple[int, int]:
    """Muon under FSDP2 all-gathers each of its matrices' updates once per step, whole, in the
    iteration's dtype (optim.gather): (the gathered bytes, what each rank receives of them)."""
    import torch

    from gptkit.model import GPT, get_preset
    from gptkit.train.optim import model_groups, ns_dtype

    with torch.device("meta"):
        g = model_groups(GPT(get_preset("small").with_vocab(vocab)))
    full = sum(p.numel() for p in g["matrix"] + g["qkv"]) * getattr(torch, ns_dtype(precision)).itemsize
    return full, full * (nproc - 1) // nproc


def main() -> int:
    from gptkit.train.launch import CPU_MALLOC_ENV

    if any(k not in os.environ for k in CPU_MALLOC_ENV):  # the allocator settings `gptkit train` gives CPU workers
        os.execve(sys.executable, [sys.executable, *sys.argv], {**CPU_MALLOC_ENV, **os.environ})
    from gptkit.device import cpu_has_native_bf16

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=6, help="timed optimizer steps per config, precision and mode")
    ap.add_argument("--micro-batch", type=int, default=8, help="sequences of 256 tokens per micro-step")
    ap.add_argument("--accum", type=int, default=2, help="micro-steps per optimizer step")
    ap.add_argument("--modes", default="inproc", help="inproc, torchrun or both (comma-separated)")
    ap.add_argument("--configs", default="gpt2-vocab,bytes")
    default_precisions = "bf16,fp32" if cpu_has_native_bf16() else "fp32"
    ap.add_argument("--precisions", default=default_precisions, help=f"default here: {default_precisions}")
    ap.add_argument(
        "--parallel",
        default="ddp",
        help="torchrun mode: strategies, comma-separated (ddp, fsdp; +ckpt: activation checkpointing), "
        "run interleaved --rounds times, each against the first",
    )
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the strategies (torchrun)")
    ap.add_argument("--nproc", type=int, default=None, help="torchrun processes (default: one per core)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import torch

    from gptkit.model import GPT, get_preset

    threads = os.cpu_count() or 1
    precisions = args.precisions.split(",")
    results = []
    peaks: dict[str, list[float]] = {p: [peak_flops(p, threads)] for p in precisions}
    with tempfile.TemporaryDirectory(prefix="gptkit-bench-") as tmp:
        for name in args.configs.split(","):
            tokenizer = "gpt2" if name == "gpt2-vocab" else "bytes"
            tokens_needed = (args.steps + 4) * args.micro_batch * 256 * args.accum * threads + (1 << 16)
            data = make_data(Path(tmp), tokenizer, tokens_needed)
            vocab = 50257 if tokenizer == "gpt2" else 256
            with torch.device("meta"):
                fpt = GPT(get_preset("small").with_vocab(vocab)).flops_per_token(256)
            for precision in precisions:
                for mode in args.modes.split(","):
                    if mode == "inproc":
                        fpt, best, median = bench_inproc(
                            data, precision, args.steps, args.micro_batch, args.accum, threads, peaks[precision]
                        )
                        procs = f"1 x {threads} threads"
                    elif mode == "torchrun" and args.parallel != "ddp":
                        # Strategies interleaved, each the best of its rounds: a busy moment on a shared
                        # machine slows one round, not one strategy.
                        nproc = args.nproc or threads
                        tps: dict[str, list[float]] = {st: [] for st in args.parallel.split(",")}
                        for _ in range(args.rounds):
                            for st in tps:
                                tps[st].append(
                                    bench_torchrun(
                                        data, precision, args.steps, args.micro_batch, args.accum, nproc, st
                                    )[0]
                                )
                        for st, v in tps.items():
                            extra = {}
                            if st.startswith("fsdp") and "muon" in st.split("+"):
                                full, received = muon_gather_bytes(vocab, precision, nproc)
                                extra = {"muon_gather_bytes": full, "muon_gather_bytes_per_rank": received}
                            results.append(
                                {
                                    **extra,
                                    "config": name,
                                    "precision": precision,
                                    "mode": f"torchrun {st}",
                                    "procs": f"{nproc} x 1 thread",
                                    "tok_per_s": max(v),
                                    "tok_per_s_median": sorted(v)[len(v) // 2],
                                    "flops_per_token": fpt,
                                    "parallel": st,
                                }
                            )
                        peaks[precision].append(peak_flops(precision, threads))
                        continue
                    elif mode == "torchrun":
                        best, median = bench_torchrun(
                            data, precision, args.steps, args.micro_batch, args.accum, threads
                        )
                        procs = f"{threads} x 1 thread"
                    else:
                        raise SystemExit(f"unknown mode {mode}")
                    peaks[precision].append(peak_flops(precision, threads))
                    results.append(
                        {
                            "config": name,
                            "precision": precision,
                            "mode": mode,
                            "procs": procs,
                            "tok_per_s": best,
                            "tok_per_s_median": median,
                            "flops_per_token": fpt,
                        }
                    )
    peak = {p: max(v) for p, v in peaks.items()}
    for r in results:
        pk = peak[r["precision"]]
        r["peak_gflops"] = pk / 1e9
        r["mfu"] = r["flops_per_token"] * r["tok_per_s"] / pk
        r["mfu_median"] = r["flops_per_token"] * r["tok_per_s_median"] / pk
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for p, v in peaks.items():
            print(
                f"{p} matmul peak on this CPU ({threads} threads, best of {len(v)}): {peak[p] / 1e9:.0f} GFLOP/s "
                f"(all tries: {', '.join(f'{x / 1e9:.0f}' for x in v)})"
            )
        print(
            f"{'config':<12} {'precision':<9} {'mode':<19} {'processes':<14} {'tok/s':>8} {'median':>8} "
            f"{'MFU':>6} {'median':>7}"
        )
        for r in results:
            print(
                f"{r['config']:<12} {r['precision']:<9} {r['mode']:<19} {r['procs']:<14} {r['tok_per_s']:>8.0f} "
                f"{r['tok_per_s_median']:>8.0f} {r['mfu']:>6.1%} {r['mfu_median']:>7.1%}"
            )
    first = args.parallel.split(",")[0]
    for r in results:  # step time against the first strategy's, same config and precision
        base = [
            b
            for b in results
            if b.get("parallel") == first and (b["config"], b["precision"]) == (r["config"], r["precision"])
        ]
        if r.get("parallel") and r["parallel"] != first and base:
            ratio = base[0]["tok_per_s"] / r["tok_per_s"]
            r["step_time_vs_" + first] = ratio
            if not args.json:
                print(f"{r['config']}, {r['precision']}: {r['parallel']} step time {ratio:.2f}x {first}'s")
        if "muon_gather_bytes" in r and not args.json:
            print(
                f"{r['config']}, {r['precision']}: {r['parallel']} all-gathers {r['muon_gather_bytes'] / 1e6:.1f} MB "
                f"of Muon updates per step (each rank receives {r['muon_gather_bytes_per_rank'] / 1e6:.1f} MB)"
            )
    missed = 0
    for name, goal in GOALS.items():
        best = max((r["mfu"] for r in results if r["config"] == name and r["precision"] == "bf16"), default=None)
        if best is not None:
            verdict = "meets" if best >= goal else "misses"
            missed += best < goal
            print(f"{name}, bf16: best MFU {best:.1%} {verdict} the {goal:.0%} goal")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
