#!/usr/bin/env python
"""AdamW against Muon, side by side in one run: validation loss against tokens, the tokens Muon needs
to reach AdamW's final validation loss, and the step time of each.

    python scripts/bench_recipe.py                 # the README table and plot (~30 min on 2 quiet cores)
    python scripts/bench_recipe.py --quick         # seconds: a tiny model, for CI (the figures mean nothing)
    python scripts/bench_recipe.py --plot docs/bench_recipe.png --json

Both sides train the same model (the quickstart's byte-level 4 x 4 x 128, sequences of 128) on the
same data (the built-in `python-docs` corpus as bytes) through gptkit's real Trainer, in this
process, one after the other on the same machine, with the `gpt2` recipe's settings scaled to the run:
AdamW betas 0.9/0.95, weight decay 0.1, clipping at 1.0, warmup then cosine to a tenth, fp32 here.
Tuned alike: the same number of learning-rate points on seed 1337 (a best point at a sweep's edge
extends that sweep by one point), then a second seed at each side's best. Muon runs with
--muon-adjust-lr match_rms_adamw, its AdamW groups (embeddings, gains) at AdamW's best --lr, and
its sweep is over --muon-lr. At Muon's best the bench also trains c_attn split into Q, K and V.

Step time: the two trainers (and Muon with torch's bf16 Newton-Schulz) take turns, step by step, so
the other processes on the machine slow each alike; the median of each is reported.

Exit status 1 when a goal is missed (tokens <= 0.7x AdamW's, step time <= 1.1x).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SEEDS = (1337, 1338)
TOKENS_GOAL, STEP_GOAL = 0.7, 1.1

# Sized for ~30 minutes on 2 shared cores (0.25 s of CPU a step, one thread): 200 steps of 2048 tokens.
FULL: dict[str, Any] = dict(
    shape=dict(n_layer=4, n_head=4, n_embd=128),
    seq_len=128,
    batch_tokens=2048,
    steps=200,
    warmup=10,
    evals=8,
    eval_tokens=16_384,
    adamw_lrs=(2e-3, 4e-3, 8e-3),
    muon_lrs=(4e-3, 8e-3, 1.6e-2),
    timed_steps=10,
)
QUICK: dict[str, Any] = dict(
    shape=dict(n_layer=2, n_head=2, n_embd=32),
    seq_len=32,
    batch_tokens=256,
    steps=6,
    warmup=2,
    evals=2,
    eval_tokens=1024,
    adamw_lrs=(3e-3,),  # one point: no sweep (a single point is never at an edge)
    muon_lrs=(3e-3,),
    timed_steps=2,
)


def cpu_kind() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                flags = Path("/proc/cpuinfo").read_text()
                isa = "AVX512-BF16" if "avx512_bf16" in flags else ("AVX-512" if "avx512f" in flags else "AVX2")
                return f"{name}, {isa}, {os.cpu_count()} cores"
    except OSError:
        pass
    return platform.processor() or platform.machine()


def make_data(home: Path, quick: bool) -> Path:
    from gptkit.data.tokenize import Settings, tokenize

    corpus = "pydoc" if quick else "python-docs"  # pydoc's topics alone: 0.5 MB, read in milliseconds
    out = home / "shards" / f"{corpus}-bytes"
    tokenize(corpus, out, Settings(tokenizer="bytes", val_tokens=100_000), workers=1)
    return out


def trainer_for(size: dict, data: Path, home: Path, name: str, **settings):
    """gptkit's Trainer for one run of the bench (resolved as `gptkit train` resolves it)."""
    from gptkit.train.config import LaunchOverrides, TrainOverrides
    from gptkit.train.dist import Dist
    from gptkit.train.launch import write_run_config
    from gptkit.train.resolve import prepare
    from gptkit.train.trainer import Trainer

    steps = size["steps"]
    overrides = TrainOverrides(
        data=str(data),
        **size["shape"],
        seq_len=size["seq_len"],
        batch_tokens=size["batch_tokens"],
        micro_batch=size["batch_tokens"] // size["seq_len"],
        max_steps=steps,
        warmup_steps=size["warmup"],
        schedule="cosine",
        min_lr_ratio=0.1,
        beta1=0.9,
        beta2=0.95,
        weight_decay=0.1,
        grad_clip=1.0,
        precision="auto",
        compile=False,
        eval_every=max(1, steps // size["evals"]),
        eval_tokens=size["eval_tokens"],
        hellaswag_every=0,
        sample_every=10**9,
        sample_tokens=0,
        checkpoint_every=10**9,
        keep_checkpoints=1,
        log_every=10**9,
        **settings,
    )
    with contextlib.redirect_stdout(io.StringIO()):
        rr = prepare(overrides, LaunchOverrides(gpus=0, nproc=1), out=home / "runs" / name)
        write_run_config(rr)
        return Trainer(rr, Dist("cpu"))


def train(size: dict, data: Path, home: Path, name: str, **settings) -> dict:
    """One run: its validation curve [(tokens, loss)], final loss and wall time."""
    from gptkit.train.metrics import read_metrics

    t = time.perf_counter()
    tr = trainer_for(size, data, home, name, **settings)
    with contextlib.redirect_stdout(io.StringIO()):
        tr.fit()
    seconds = time.perf_counter() - t
    tokens_per_step = tr.plan.rows * tr.cfg.seq_len
    curve = [(r["step"] * tokens_per_step, r["val_loss"]) for r in read_metrics(tr.run_dir) if "val_loss" in r]
    return {"name": name, **settings, "curve": curve, "final": curve[-1][1], "seconds": round(seconds, 1)}


def tokens_to(curve: list[tuple[int, float]], target: float) -> float | None:
    """The tokens at which a validation curve first reaches `target` (linear between evaluations)."""
    for (t0, l0), (t1, l1) in zip(curve, curve[1:], strict=False):
        if l1 <= target:
            return t1 if l0 == l1 else t0 + (t1 - t0) * (l0 - target) / (l0 - l1)
    return None


def sweep(size, data, home, label: str, key: str, lrs: tuple[float, ...], log, **fixed) -> tuple[float, list[dict]]:
    """Runs at each learning rate on the first seed; a best point at an edge adds one point beyond it."""
    runs = {}
    points = list(lrs)
    while True:
        for lr in points:
            if lr not in runs:
                runs[lr] = train(size, data, home, f"{label}-lr{lr:g}-s{SEEDS[0]}", seed=SEEDS[0], **{key: lr}, **fixed)
                log(f"{label} {key} {lr:g} seed {SEEDS[0]}: val {runs[lr]['final']:.4f} ({runs[lr]['seconds']:.0f} s)")
        best = min(runs, key=lambda lr: runs[lr]["final"])
        ordered = sorted(runs)
        if len(runs) > len(lrs) or len(runs) == 1:  # extended once already, or no sweep
            break
        if best == ordered[0]:
            points.append(best / 2)
        elif best == ordered[-1]:
            points.append(best * 2)
        else:
            break
    return best, [runs[lr] for lr in sorted(runs)]


def step_times(size, data, home, adamw_lr: float, muon_lr: float) -> dict[str, float]:
    """Median step time of AdamW, Muon (fp32 iteration here), Muon split and Muon with torch's bf16
    iteration, taking turns so that load from other processes falls on each alike."""
    trainers = {
        "adamw": trainer_for(size, data, home, "time-adamw", lr=adamw_lr),
        "muon": trainer_for(size, data, home, "time-muon", optimizer="muon", lr=adamw_lr, muon_lr=muon_lr),
        "muon_split": trainer_for(
            size, data, home, "time-split", optimizer="muon", lr=adamw_lr, muon_lr=muon_lr, muon_qkv="split"
        ),
        "muon_bf16_ns": trainer_for(size, data, home, "time-bf16", optimizer="muon", lr=adamw_lr, muon_lr=muon_lr),
    }
    for g in trainers["muon_bf16_ns"].optimizers[1].param_groups:
        g["ns_dtype"] = "bfloat16"  # torch.optim.Muon's own iteration (bitwise: tests/test_optim.py)
    times: dict[str, list[float]] = {k: [] for k in trainers}
    for tr in trainers.values():
        tr.train_step()  # warm-up: allocator, thread pool, the moments and momentum buffers
    for _ in range(size["timed_steps"]):
        for k, tr in trainers.items():
            t = time.perf_counter()
            tr.train_step()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label, color in (("adamw", "tab:blue"), ("muon", "tab:red")):
        for i, run in enumerate(result[label]["seeds"]):
            xs, ys = zip(*run["curve"][1:], strict=True)  # from the first evaluation after step 0
            ax.plot(
                [x / 1e6 for x in xs],
                ys,
                color=color,
                alpha=1.0 if i == 0 else 0.5,
                label=f"{label}, lr {result[label]['best_lr']:g}" if i == 0 else None,
            )
    ax.axhline(result["adamw"]["final"], color="tab:blue", ls=":", lw=1)
    ax.set_xlabel("training tokens (M)")
    ax.set_ylabel("validation loss (nats per byte)")
    ax.set_title("AdamW vs Muon, byte-level 4x4x128, two seeds at each best")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a tiny model and a few steps (seconds; CI)")
    ap.add_argument("--json", action="store_true", help="print the result as one JSON line at the end")
    ap.add_argument("--plot", type=Path, help="write the validation curves to this PNG")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (a 0.8M model: 1 is fastest)")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    size = QUICK if args.quick else FULL

    def log(msg: str) -> None:
        print(msg, file=sys.stderr if args.json else sys.stdout, flush=True)

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        os.environ["GPTKIT_HOME"] = str(home)
        data = make_data(home, args.quick)
        log(f"cpu: {cpu_kind()}; data {data}")
        a_lr, a_runs = sweep(size, data, home, "adamw", "lr", size["adamw_lrs"], log)
        m_lr, m_runs = sweep(size, data, home, "muon", "muon_lr", size["muon_lrs"], log, optimizer="muon", lr=a_lr)
        result: dict = {"cpu": cpu_kind(), "size": {k: v for k, v in size.items() if not k.endswith("_lrs")}}
        for label, best, runs, fixed in (
            ("adamw", a_lr, a_runs, {"lr": a_lr}),
            ("muon", m_lr, m_runs, {"optimizer": "muon", "lr": a_lr, "muon_lr": m_lr}),
        ):
            first = next(r for r in runs if r.get("lr" if label == "adamw" else "muon_lr") == best)
            second = train(size, data, home, f"{label}-best-s{SEEDS[1]}", seed=SEEDS[1], **fixed)
            log(f"{label} best {best:g} seed {SEEDS[1]}: val {second['final']:.4f}")
            result[label] = {
                "best_lr": best,
                "sweep": [{"lr": r.get("muon_lr", r.get("lr")), "final": round(r["final"], 4)} for r in runs],
                "seeds": [first, second],
                "final": statistics.mean([first["final"], second["final"]]),
            }
        split = train(
            size, data, home, "muon-split", seed=SEEDS[0], optimizer="muon", lr=a_lr, muon_lr=m_lr, muon_qkv="split"
        )
        log(f"muon split qkv seed {SEEDS[0]}: val {split['final']:.4f}")
        result["muon_split_final"] = split["final"]
        result["muon_whole_final_seed0"] = result["muon"]["seeds"][0]["final"]

        target = result["adamw"]["final"]
        reach = [tokens_to(run["curve"], target) for run in result["muon"]["seeds"]]
        budget = size["steps"] * size["batch_tokens"]
        result["target_val_loss"] = round(target, 4)
        reached = [r for r in reach if r is not None]
        result["muon_tokens_to_target"] = statistics.mean(reached) if len(reached) == len(reach) else None
        result["tokens_ratio"] = (
            None if result["muon_tokens_to_target"] is None else result["muon_tokens_to_target"] / budget
        )
        times = step_times(size, data, home, a_lr, m_lr)
        result["step_s"] = {k: round(v, 5) for k, v in times.items()}
        result["step_ratio"] = times["muon"] / times["adamw"]
        result["step_ratio_bf16_ns"] = times["muon_bf16_ns"] / times["adamw"]
        if not args.quick:  # the quickstart's own batch (4096 tokens): the optimizer is a smaller share
            qs = step_times(dict(size, batch_tokens=4096), data, home, a_lr, m_lr)
            result["quickstart_step_s"] = {k: round(v, 5) for k, v in qs.items()}
        result["seconds"] = round(time.perf_counter() - start)
        if args.plot:
            plot(result, args.plot)

    ratio = result["tokens_ratio"]
    ok = ratio is not None and ratio <= TOKENS_GOAL and result["step_ratio"] <= STEP_GOAL
    log(f"\n{'':24} {'AdamW':>10} {'Muon':>10}")
    log(f"{'best lr':24} {a_lr:>10g} {m_lr:>10g}")
    for label in ("adamw", "muon"):
        pts = ", ".join(f"{p['lr']:g}: {p['final']:.4f}" for p in result[label]["sweep"])
        log(f"{label} sweep (seed {SEEDS[0]}): {pts}")
    log(f"{'final val (2 seeds)':24} {result['adamw']['final']:>10.4f} {result['muon']['final']:>10.4f}")
    log(f"{'step time (ms)':24} {times['adamw'] * 1e3:>10.1f} {times['muon'] * 1e3:>10.1f}")
    log(
        f"Muon reaches AdamW's final {target:.4f} at "
        + (f"{ratio:.2f}x AdamW's tokens" if ratio is not None else "no point of its run")
        + f" (goal <= {TOKENS_GOAL}x); step time {result['step_ratio']:.2f}x AdamW's (goal <= {STEP_GOAL}x; "
        f"torch's bf16 iteration: {result['step_ratio_bf16_ns']:.2f}x); c_attn split into Q/K/V: val "
        f"{split['final']:.4f} vs whole {result['muon_whole_final_seed0']:.4f} (seed {SEEDS[0]})"
    )
    if "quickstart_step_s" in result:
        qs = result["quickstart_step_s"]
        log(
            f"at the quickstart's batch of 4096 tokens: Muon {qs['muon'] / qs['adamw']:.2f}x AdamW's step time, "
            f"torch's bf16 iteration {qs['muon_bf16_ns'] / qs['adamw']:.2f}x"
        )
    log(f"{result['seconds']} s in all; cpu {result['cpu']}")
    if args.json:
        print(json.dumps(result))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
