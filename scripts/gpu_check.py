#!/usr/bin/env python3
"""gptkit on a CUDA machine, checked in under 8 minutes, written to ONE JSON report.

The check is a list of named stages (`STAGES`, in the order they run; `python scripts/gpu_check.py
--list` prints them with their time limits). Each is recorded on its own: a failure, CUDA
out-of-memory included, is written into the report and the next stage runs; a stage past its time
limit is stopped (its subprocesses killed) and recorded as "timeout". The report is rewritten after
every stage, so a run cut short still says how far it got. A stage that needs more GPUs than the
machine has is recorded as "n/a" and does not fail the check.

Adding a stage: write `def stage_NAME(ctx: Ctx) -> dict` below, decorated with
`@stage("NAME", limit_s=..., min_gpus=...)`, with a one-line docstring saying what it checks. It
returns the figures to record, with `"passed": False` when the check failed (raising is a failure
too). It runs where it is defined in the file. Give it the seconds it takes on one GPU with room
to spare; the limits of the stages that run on one GPU must sum to at most `TOTAL_LIMIT_S` (8
minutes; tests/test_gpu_check.py checks it), so take the time from a stage that can spare it. A
subprocess goes through `gptkit_cli`, which kills it at the stage's limit. `--rehearse` must run
it on the CPU (tiny model; `ctx.cuda` is False there): the test suite runs every stage that way.

Anchors for the MFU figures: llm.c trains GPT-2 124M at about 38-41% MFU on an H100 and 56-60% on
an A100 (same 6N + attention FLOPs count).

    python scripts/gpu_check.py                      # writes gpu_check.json
    python scripts/gpu_check.py --out /tmp/r.json --steps 20
    python scripts/gpu_check.py --only parity,kv_cache

Without CUDA it prints "no CUDA device: nothing to check", writes that to the report and exits 0.
Exit 1 when a stage failed, errored or ran out of time.

    python scripts/gpu_check.py --rehearse           # every stage on the CPU, tiny model

`--rehearse` runs the same stages on the CPU with the `tiny` preset, a few steps, no compiler and
two gloo processes for the multi-GPU stages, each within `REHEARSAL_SLACK` times its limit: it
checks the script itself (imports, gptkit's APIs and CLI flags, the report) on machines without a
GPU, and its figures mean nothing. The tests run it. What only a GPU runs is kept to a few guarded
lines (synchronize, peak memory, device names, TF32, torch.compile) that read the same on either
path.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOTAL_LIMIT_S = 480.0  # 8 minutes: the limits of the stages that run on one GPU sum to at most this
# A rehearsal's limits are this many times the GPU's: a shared, loaded CPU runs the tiny model's stages
# far slower than a GPU runs 124M (kv_cache: 16 s at a load average of 1, 63 s at 20, limit 15 s).
REHEARSAL_SLACK = 10.0
TIMEOUT_GRACE_S = 5.0  # the in-process stop comes this long after a subprocess is killed
ANCHORS = {"llm.c GPT-2 124M MFU": {"H100": "38-41%", "A100": "56-60%"}}
ANCHOR_TEXT = "llm.c GPT-2 124M: ~38-41% MFU on H100, ~56-60% on A100"
NO_CUDA = "no CUDA device: nothing to check"
# bf16 keeps 8 bits of mantissa: on a random GPT-2 (logit std ~0.55) bf16 vs fp32 differ by ~0.02 at
# most (measured with CPU bf16 autocast); 0.1 leaves room for other kernels, not for a wrong one.
BF16_TOL = {"max_abs": 0.1, "mean_abs": 0.02}
FP32_TOL = {"max_abs": 1e-3}


# --- the report and the stage runner (pure: tested without a GPU) --------------------------------


class Report:
    """The one JSON document; written whole (temp file + rename) every time it changes."""

    def __init__(self, path: Path, **meta):
        self.path = Path(path)
        self.data: dict = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **meta, "stages": {}}
        self.write()

    def write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(self.data, indent=2, default=str) + "\n")
        os.replace(tmp, self.path)


def is_oom(e: BaseException) -> bool:
    return type(e).__name__ == "OutOfMemoryError" or "out of memory" in str(e).lower()


class StageTimeout(Exception):
    """Raised in the main thread when a stage runs past its limit."""


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[Ctx], dict]
    limit_s: float  # on one GPU; past it the stage is stopped and recorded as "timeout"
    min_gpus: int = 1  # with fewer GPUs the stage is "n/a" (a rehearsal runs it on 2 CPU processes)
    about: str = ""  # the first line of its docstring


STAGES: list[Stage] = []


def stage(name: str, limit_s: float, min_gpus: int = 1) -> Callable[[Callable[[Ctx], dict]], Callable[[Ctx], dict]]:
    """Register `fn(ctx) -> dict` as the stage NAME; stages run in the order they are registered."""

    def register(fn: Callable[[Ctx], dict]) -> Callable[[Ctx], dict]:
        if any(st.name == name for st in STAGES):
            raise ValueError(f"two stages named {name!r}")
        about = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        STAGES.append(Stage(name, fn, limit_s, min_gpus, about))
        return fn

    return register


def limits_sum(stages: list[Stage], gpus: int = 1) -> float:
    """Seconds the stages that run on `gpus` GPUs may take at most."""
    return sum(st.limit_s for st in stages if st.min_gpus <= gpus)


@contextmanager
def time_limit(seconds: float, message: str):
    """StageTimeout in this (the main) thread after `seconds`: it stops in-process work at the next
    Python bytecode (a CUDA kernel already queued finishes first). Subprocesses are killed by
    gptkit_cli at the same deadline, a little earlier, so their output is kept."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def fire(signum, frame):
        raise StageTimeout(message)

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"


def run_stages(report: Report, stages: list[Stage], ctx: Ctx) -> bool:
    """Run each stage within its limit, record its result or its failure, rewrite the report after
    each. True if none failed (a stage needing more GPUs than there are is "n/a", not a failure)."""
    all_ok = True
    echo = ctx.echo
    report.data["limits_sum_s"] = limits_sum(stages, max(ctx.gpus, 1))
    for st in stages:
        limit = st.limit_s * ctx.slack
        if ctx.gpus < st.min_gpus and ctx.cuda:
            report.data["stages"][st.name] = {"status": "n/a", "reason": f"needs {st.min_gpus} GPUs, {ctx.gpus} here"}
            report.write()
            echo(f"[{st.name}] n/a: needs {st.min_gpus} GPUs")
            continue
        if time.monotonic() >= ctx.deadline:
            report.data["stages"][st.name] = {"status": "skipped", "reason": "out of time", "limit_s": limit}
            report.write()
            echo(f"[{st.name}] skipped: out of time")
            all_ok = False
            continue
        report.data["stages"][st.name] = {"status": "running", "limit_s": limit}
        report.write()
        t0 = time.monotonic()
        ctx.stage_deadline = min(t0 + limit, ctx.deadline)
        try:
            with time_limit(ctx.stage_deadline - t0 + TIMEOUT_GRACE_S, f"ran past its limit of {limit:g} s"):
                entry = dict(st.run(ctx))
            entry["status"] = "failed" if entry.get("passed") is False else "ok"
        except (StageTimeout, subprocess.TimeoutExpired) as e:
            entry = {"status": "timeout", "error": first_line(e), "traceback": traceback.format_exc(limit=8)}
        # A check script: whatever a stage raises (a driver fault, a compiler error, a bug) is a
        # finding to record with its traceback, and the remaining stages still run.
        except Exception as e:  # noqa: BLE001
            entry = {
                "status": "error",
                "error": first_line(e),
                "oom": is_oom(e),
                "traceback": traceback.format_exc(limit=8),
            }
        finally:
            ctx.stage_deadline = None
        entry["seconds"] = round(time.monotonic() - t0, 2)
        entry["limit_s"] = limit
        report.data["stages"][st.name] = entry
        report.data["seconds_sum"] = round(
            sum(e.get("seconds", 0) for e in report.data["stages"].values() if isinstance(e, dict)), 2
        )
        report.write()
        all_ok = all_ok and entry["status"] == "ok"
        echo(
            f"[{st.name}] {entry['status']} ({entry['seconds']:.0f} s of {limit:.0f})"
            + (f": {entry['error']}" if "error" in entry else "")
        )
    return all_ok


# --- the stages -----------------------------------------------------------------------------------


@dataclass
class Ctx:
    work: Path  # scratch directory
    deadline: float  # time.monotonic() after which no new work starts
    steps: int = 30
    micro_batches: tuple[int, ...] = (16, 32, 64)
    echo: Callable[[str], None] = print
    env: dict = field(default_factory=dict)
    device: str = "cuda"  # "cpu" for --rehearse
    preset: str = "gpt2"
    compile: bool = True
    gpus: int = 1  # visible GPUs (a rehearsal: the 2 CPU processes its multi-GPU stages use)
    slack: float = 1.0  # the stages' limits are multiplied by this (REHEARSAL_SLACK in a rehearsal)
    stage_deadline: float | None = None  # time.monotonic() at which the running stage is stopped

    def left(self) -> float:
        """Seconds the running stage has left (at least 1)."""
        end = self.deadline if self.stage_deadline is None else min(self.deadline, self.stage_deadline)
        return max(1.0, end - time.monotonic())

    @property
    def cuda(self) -> bool:
        return self.device == "cuda"

    def shards(self) -> Path:
        """Byte-level shards made once by `gptkit tokenize` (every `gptkit train` stage reads them),
        and a GPTKIT_HOME holding a few HellaSwag rows (env GPTKIT_HOME for the subprocesses)."""
        shards = self.work / "shards"
        if (shards / "manifest.json").exists():
            return shards
        src = self.work / "src" / "text.txt"
        src.parent.mkdir(parents=True, exist_ok=True)
        words = "the quick brown fox jumps over a lazy dog while gptkit checks its collectives".split()
        src.write_text("\n".join(" ".join(words[(i + j) % len(words)] for j in range(40)) for i in range(3000)))
        r = gptkit_cli(
            self, "tokenize", str(src), "--tokenizer", "bytes", "--out", str(shards), "--shard-tokens", "200000",
            "--val-tokens", "20000", "--workers", "2", timeout=120,
        )  # fmt: skip
        if r.returncode:
            raise RuntimeError(f"gptkit tokenize failed ({r.returncode}): {tail(r.stderr, 500)}")
        hs = self.work / "home" / "data" / "hellaswag" / "val.jsonl"
        hs.parent.mkdir(parents=True, exist_ok=True)
        rows = [{"ctx": f"the {w} fox", "endings": ["jumps", "sleeps over a dog", "is", "runs"], "label": i % 4}
                for i, w in enumerate(words)]  # fmt: skip
        hs.write_text("".join(json.dumps(r) + "\n" for r in rows))
        self.env["GPTKIT_HOME"] = str(self.work / "home")
        return shards

    def sync(self) -> None:
        """Wait for queued GPU work, so a timer reads what ran (CPU work is synchronous)."""
        if self.cuda:
            import torch

            torch.cuda.synchronize()


def rehearsal_ctx(work: Path, deadline: float, env: dict) -> Ctx:
    # 8 steps: 5 warm-up ones as on a GPU, and a median of 3
    return Ctx(
        work, deadline, steps=8, micro_batches=(2, 4), env=env, device="cpu", preset="tiny", compile=False, gpus=2,
        slack=REHEARSAL_SLACK,
    )  # fmt: skip


def gptkit_cli(ctx: Ctx, *args: str, timeout: float, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m gptkit ARGS` (see run_process); `env`: more environment for this one."""
    return run_process(ctx, [sys.executable, "-m", "gptkit", *args], timeout=timeout, env=env)


def run_process(ctx: Ctx, cmd: list[str], timeout: float, env: dict | None = None) -> subprocess.CompletedProcess:
    """CMD with its output captured, stopped at `timeout` or at the stage's limit, whichever comes
    first: then its whole process group goes (torchrun's workers too) and TimeoutExpired is raised."""
    return finish(ctx, start(ctx, cmd, env), timeout)


def start(ctx: Ctx, cmd: list[str], env: dict | None = None) -> subprocess.Popen:
    """CMD started in its own process group, its output captured: `finish` waits for it."""
    return subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **ctx.env, **(env or {})},
        start_new_session=True,
    )


def finish(ctx: Ctx, p: subprocess.Popen, timeout: float) -> subprocess.CompletedProcess:
    """What `start` began, waited for as run_process waits (killed at `timeout` or the stage's limit)."""
    cmd = p.args if isinstance(p.args, list) else [str(p.args)]
    try:
        out, err = p.communicate(timeout=min(timeout, ctx.left()))
    except BaseException:  # its timeout, or the stage's (StageTimeout): nothing is left running
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        raise
    return subprocess.CompletedProcess(cmd, p.returncode, out, err)


def tail(text: str, n: int = 1500) -> str:
    return text[-n:]


@stage("doctor", limit_s=15)
def stage_doctor(ctx: Ctx) -> dict:
    """`python -m gptkit doctor --json`: only a doctor that cannot run fails the stage."""
    r = gptkit_cli(ctx, "doctor", "--json", "--timeout", "3", timeout=90)
    try:
        doc = json.loads(r.stdout)
    except json.JSONDecodeError:
        return {"passed": False, "exit_code": r.returncode, "stdout": tail(r.stdout), "stderr": tail(r.stderr)}
    failed = [c["name"] for c in doc.get("checks", []) if c.get("status") == "fail"]
    # Failing checks are reported; only a doctor that cannot run fails this stage (offline machines
    # fail the network checks by design).
    return {"exit_code": r.returncode, "failed_checks": failed, "report": doc}


def make_model(ctx: Ctx, vocab: int | None = None, seed: int = 0):
    """The stage's model (gpt2, or tiny in a rehearsal), randomly initialised from `seed`, on the CPU."""
    import torch

    from gptkit.model import GPT, get_preset

    cfg = get_preset(ctx.preset) if vocab is None else get_preset(ctx.preset).with_vocab(vocab)
    torch.manual_seed(seed)
    return GPT(cfg)


@stage("parity", limit_s=15)
def stage_parity(ctx: Ctx) -> dict:
    """CUDA bf16 logits vs CPU fp32 logits of one randomly initialised GPT-2 (124M)."""
    import torch

    from gptkit.device import resolve_precision

    dev = torch.device(ctx.device)
    cpu_model = make_model(ctx).eval()
    gpu_model = make_model(ctx).to(dev).eval()  # same seed: the same weights
    vocab = cpu_model.config.vocab_size
    idx = torch.randint(0, vocab, (2, 128), generator=torch.Generator().manual_seed(1))
    prec = resolve_precision("auto", dev)
    with torch.inference_mode():
        ref = cpu_model(idx)[0][..., :vocab].float()
        with prec.autocast():
            got = gpu_model(idx.to(dev))[0][..., :vocab].float().cpu()
        old = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False
        try:
            got32 = gpu_model(idx.to(dev))[0][..., :vocab].float().cpu()
        finally:
            torch.backends.cuda.matmul.allow_tf32 = old
    d, d32 = (got - ref).abs(), (got32 - ref).abs()
    out = {
        "shape": list(idx.shape),
        "precision": prec.name,
        "logit_std": ref.std().item(),
        "max_abs": d.max().item(),
        "mean_abs": d.mean().item(),
        "top1_agree": (got.argmax(-1) == ref.argmax(-1)).float().mean().item(),
        "tolerance": BF16_TOL,
        "fp32_max_abs": d32.max().item(),
        "fp32_tolerance": FP32_TOL,
    }
    if not ctx.cuda:
        out["rehearsal"] = "both sides ran on the CPU: the check's code ran, the comparison is trivial"
    out["passed"] = (
        out["max_abs"] <= BF16_TOL["max_abs"]
        and out["mean_abs"] <= BF16_TOL["mean_abs"]
        and out["fp32_max_abs"] <= FP32_TOL["max_abs"]
    )
    return out


def train_speed(ctx: Ctx, micro_batch: int, prec, peak: float | None) -> dict:
    """ctx.steps optimizer steps of the preset at `micro_batch` x block_size tokens (1024 for gpt2)."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from gptkit.train.mfu import MfuMeter
    from gptkit.train.optim import adamw_groups

    steps = ctx.steps
    model = make_model(ctx).to(ctx.device).train()
    T = model.config.block_size
    opt = torch.optim.AdamW(adamw_groups(model, 0.1), lr=6e-4, betas=(0.9, 0.95), fused=True)
    compiled = torch.compile(model) if ctx.compile else model
    data = torch.randint(0, model.config.vocab_size, (micro_batch, T + 1), device=ctx.device)
    x, y = data[:, :-1].contiguous(), data[:, 1:].contiguous()  # as the trainer feeds them
    if ctx.cuda:
        torch.cuda.reset_peak_memory_stats()
    times = []
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):  # flash or an error: never a silent fallback
        for _ in range(steps):
            ctx.sync()
            t = time.perf_counter()
            with prec.autocast():
                _, loss = compiled(x, y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            ctx.sync()
            times.append(time.perf_counter() - t)
    warm = min(5, steps - 1)  # the first steps compile and autotune
    dt = statistics.median(times[warm:])
    tok_s = micro_batch * T / dt
    meter = MfuMeter(model.flops_per_token(T), peak)
    return {
        "first_step_s": round(times[0], 2),
        "step_ms_median": round(dt * 1e3, 2),
        "tok_per_s": round(tok_s),
        "mfu": meter.reading(tok_s),
        "mfu_unclamped": meter.raw(tok_s),
        "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if ctx.cuda else None,
        "loss_last": loss.item(),
        "timed_steps": len(times) - warm,
    }


@stage("train_124m", limit_s=110)
def stage_train_124m(ctx: Ctx) -> dict:
    """The gpt2 preset, 30 steps of synthetic tokens, compiled, bf16, flash SDPA, micro-batches 16/32/64.

    tok/s, MFU, peak memory (gptkit.model.GPT and gptkit.device in this process; gptkit.train.loss is
    the CPU fp32 path, not used on CUDA)."""
    import torch

    from gptkit.device import configure_matmul, resolve_precision
    from gptkit.model import get_preset
    from gptkit.train.mfu import gpu_peak_flops

    dev = torch.device(ctx.device)
    configure_matmul(dev)
    prec = resolve_precision("auto", dev)
    name = torch.cuda.get_device_name() if ctx.cuda else "cpu (rehearsal)"
    peak = gpu_peak_flops(name, prec.name if prec.name in ("bf16", "fp16") else "tf32") if ctx.cuda else None
    runs: dict[str, dict] = {}
    for mb in ctx.micro_batches:
        if ctx.left() < 40 * ctx.slack:  # a compile and 30 steps take about 40 s at 124M
            runs[str(mb)] = {"skipped": "out of time"}
            continue
        try:
            runs[str(mb)] = train_speed(ctx, mb, prec, peak)
        except torch.cuda.OutOfMemoryError as e:
            runs[str(mb)] = {"oom": True, "error": str(e).splitlines()[0]}
        finally:
            torch._dynamo.reset()
            gc.collect()
            if ctx.cuda:
                torch.cuda.empty_cache()
        r = runs[str(mb)]
        if "tok_per_s" in r:
            if not ctx.cuda:
                mfu = "n/a (rehearsal)"
            else:
                mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "n/a (GPU not in the peak table)"
            mem = f", peak memory {r['peak_mem_gib']} GiB" if r["peak_mem_gib"] is not None else ""
            ctx.echo(f"  micro-batch {mb}: {r['tok_per_s']:,} tok/s, MFU {mfu} ({ANCHOR_TEXT}){mem}")
        else:
            ctx.echo(f"  micro-batch {mb}: {r.get('error') or r.get('skipped')}")
    measured = [r for r in runs.values() if "tok_per_s" in r]
    return {
        "gpu": name,
        "precision": prec.name,
        "sdpa": "flash" if ctx.cuda else "rehearsal: the CPU kernel gptkit.attention picks",
        "preset": ctx.preset,
        "compile": ctx.compile,
        "seq_len": get_preset(ctx.preset).block_size,
        "peak_tflops": peak / 1e12 if peak else None,
        "anchors": ANCHORS,
        "micro_batches": runs,
        "passed": bool(measured),
    }


def ten_steps(ctx: Ctx, run_dir: Path) -> tuple[int, int, list[str]]:
    """(GPUs, processes, `gptkit train` arguments) of the ddp stage's 10 steps, which the fsdp stage
    repeats with FSDP2: every visible GPU, or a rehearsal's 2 CPU processes (gloo)."""
    gpus = ctx.gpus if ctx.cuda else 0
    procs = gpus or 2
    where = ["--gpus", str(gpus)] if ctx.cuda else ["--gpus", "0", "--nproc", str(procs)]
    seq, mb = 128, 8
    return gpus, procs, [
        "train", "--preset", "tiny", "--data", str(ctx.shards()), "--out", str(run_dir), *where,
        "--seq-len", str(seq), "--micro-batch", str(mb), "--batch-tokens", str(seq * mb * procs),
        "--max-steps", "10", "--warmup-steps", "2", "--eval-tokens", "0", "--hellaswag-every", "0",
        "--sample-every", "1000", "--checkpoint-every", "10", "--log-every", "1",
    ]  # fmt: skip


@stage("ddp", limit_s=35)
def stage_ddp(ctx: Ctx) -> dict:
    """`gptkit train` through torchrun on every visible GPU, 10 steps, on shards made by `gptkit tokenize`.

    --no-compile: train_124m covers the compiler, this one the launcher and the NCCL collectives."""
    # A rehearsal runs the same command on 2 CPU processes (gloo): --gpus 0 --nproc 2
    gpus, procs, args = ten_steps(ctx, ctx.work / "ddp_run")
    run_dir = ctx.work / "ddp_run"
    r = gptkit_cli(ctx, *args, "--parallel", "ddp", "--no-compile", timeout=300)
    from gptkit.train.metrics import read_metrics

    train = [m for m in read_metrics(run_dir) if "loss" in m]
    if not ctx.cuda:
        collectives = f"gloo across {procs} CPU processes (rehearsal): NCCL not exercised"
    elif gpus > 1:
        collectives = f"NCCL all-reduce across {gpus} GPUs"
    else:
        collectives = "NCCL collectives were not exercised (one GPU)"
    out = {
        "gpus": gpus,
        "processes": procs,
        "exit_code": r.returncode,
        "steps": len(train),
        "loss_first_last": [train[0]["loss"], train[-1]["loss"]] if train else None,
        "tok_per_s_last": train[-1]["tok_per_s"] if train else None,
        "checkpoint": (run_dir / "step_000010").is_dir(),
        "nccl": collectives,
    }
    if r.returncode:
        out["stderr"] = tail(r.stderr)
    out["passed"] = r.returncode == 0 and len(train) == 10 and out["checkpoint"]
    return out


@stage("fsdp", limit_s=65)
def stage_fsdp(ctx: Ctx) -> dict:
    """The ddp stage's 10 steps with FSDP2, activation checkpointing and compile: step time, peak memory
    against the plan's estimate, and the first losses against the ddp stage's."""
    # With one GPU a world of one (fully_shard still wraps every block); a rehearsal: 2 gloo processes
    # without the compiler, in fp32, where the losses must agree to rounding.
    from gptkit.train.metrics import read_metrics

    run_dir = ctx.work / "fsdp_run"
    gpus, procs, args = ten_steps(ctx, run_dir)
    args += ["--parallel", "fsdp", "--activation-checkpointing", "blocks"]
    args += ["--compile"] if ctx.compile else ["--no-compile"]
    plan = gptkit_cli(ctx, *args, "--plan", "--json", timeout=60)
    if plan.returncode:
        return {"passed": False, "step": "plan", "stderr": tail(plan.stderr)}
    estimate = json.loads(plan.stdout)["memory"]
    r = gptkit_cli(ctx, *args, timeout=300)
    rows = read_metrics(run_dir)
    train = [m for m in rows if "loss" in m]
    peak = next((m["peak_memory"] for m in rows if "peak_memory" in m), None)  # CUDA only
    ddp = [m["loss"] for m in read_metrics(ctx.work / "ddp_run") if "loss" in m][:3]
    mine = [m["loss"] for m in train][:3]
    tol = 2e-2 if ctx.cuda else 1e-5  # bf16, and compiled against eager on a GPU; fp32 eager here
    agree = (
        None
        if not ddp
        else len(mine) == len(ddp) and all(abs(a - b) <= tol * abs(b) for a, b in zip(mine, ddp, strict=True))
    )
    out: dict = {
        "gpus": gpus,
        "processes": procs,
        "strategy": estimate.get("strategy"),
        "checkpointing": estimate.get("checkpointing"),
        "compile": ctx.compile,
        "exit_code": r.returncode,
        "steps": len(train),
        "step_ms_median": round(statistics.median(m["dt"] for m in train[3:]) * 1e3, 2) if len(train) > 3 else None,
        "peak_memory": peak,
        "planned_memory": estimate.get("total"),
        "peak_over_plan": round(peak / estimate["total"], 3) if peak and estimate.get("total") else None,
        "first_losses": mine,
        "ddp_first_losses": ddp or "the ddp stage did not run: nothing to compare",
        "losses_agree": agree,
        "loss_tolerance_rel": tol,
    }
    if r.returncode:
        out["stderr"] = tail(r.stderr)
    out["passed"] = r.returncode == 0 and len(train) == 10 and estimate.get("strategy") == "fsdp" and agree is not False
    return out


@stage("sample", limit_s=20)
def stage_sample(ctx: Ctx) -> dict:
    """`gptkit sample` tokens/s from a random 124M gptkit checkpoint."""
    from gptkit.checkpoint import save_checkpoint
    from gptkit.tokenizer import gpt2_vocab_offline

    # The GPT-2 vocabulary may be absent on an offline machine: then the same architecture on bytes.
    tokenizer = "gpt2" if gpt2_vocab_offline() else "bytes"
    model = make_model(ctx, None if tokenizer == "gpt2" else 256)
    ck = save_checkpoint(ctx.work / "sample_ck", model, config=model.config, tokenizer=tokenizer)
    n = 256
    t = time.monotonic()
    r = gptkit_cli(
        ctx, "sample", "The", "--model", str(ck), "--max-new-tokens", str(n), "--temperature", "1",
        "--top-k", "50", "--seed", "0", "--json", "--device", "cuda" if ctx.cuda else "cpu", timeout=180,
    )  # fmt: skip
    wall = time.monotonic() - t
    if r.returncode:
        return {"passed": False, "exit_code": r.returncode, "stderr": tail(r.stderr)}
    res = json.loads(r.stdout.strip().splitlines()[-1])
    ctx.echo(f"  sample: {res['tokens_per_second']:.0f} tokens/s ({res['new_tokens']} tokens)")
    return {
        "tokenizer": tokenizer,
        "params_m": round(model.num_params() / 1e6, 1),
        "new_tokens": res["new_tokens"],
        "tokens_per_second": res["tokens_per_second"],
        "command_wall_s": round(wall, 2),
        "passed": res["new_tokens"] > 0,
    }


@stage("kv_cache", limit_s=15)
def stage_kv_cache(ctx: Ctx) -> dict:
    """Feed the tokens full recomputation chose through the KV-cache path; compare the logits."""
    import torch

    from gptkit.device import resolve_precision
    from gptkit.generate import SampleConfig, decode_one, make_sampler, prefill, reference_decode

    dev = torch.device(ctx.device)
    model = make_model(ctx).to(dev).eval()
    vocab = model.config.vocab_size
    T, n = 16, 48
    prompt = torch.randint(0, vocab, (1, T), device=dev, generator=torch.Generator(dev).manual_seed(2))
    greedy = make_sampler(SampleConfig(temperature=0, top_k=None), vocab, None)
    prec = resolve_precision("auto", dev)
    out: dict = {"prompt_tokens": T, "new_tokens": n}
    ok = True
    for mode, tol in (("fp32", FP32_TOL["max_abs"]), (prec.name, BF16_TOL["max_abs"])):
        captured: list[torch.Tensor] = []

        def capture(logits: torch.Tensor, _captured: list = captured) -> torch.Tensor:
            _captured.append(logits.float())
            return greedy(logits)

        old = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = mode != "fp32" and old
        ac = prec.autocast() if mode != "fp32" else torch.autocast(dev.type, enabled=False)
        try:
            with torch.inference_mode(), ac:
                full = torch.stack(list(reference_decode(model, prompt, n, greedy)), dim=1)  # (1, n)
                ref = model(torch.cat([prompt, full], dim=1))[0][:, T - 1 : T + n - 1].float()
                model.setup_kv_cache(1, max_len=T + n)
                try:
                    prefill(model, prompt, capture)
                    for i in range(n - 1):
                        decode_one(model, full[:, i], T + i, capture)
                finally:
                    model.clear_kv_cache()
        finally:
            torch.backends.cuda.matmul.allow_tf32 = old
        kv = torch.stack(captured, dim=1)
        diff = (kv - ref).abs().max().item()
        agree = (kv[..., :vocab].argmax(-1) == full).float().mean().item()
        out[mode] = {"max_abs_logit_diff": diff, "tolerance": tol, "next_token_agree": agree}
        ok = ok and diff <= tol
    out["passed"] = ok
    return out


@stage("muon", limit_s=25)
def stage_muon(ctx: Ctx) -> dict:
    """A training step of the gpt2 shape with --optimizer muon against --optimizer adamw (eager, bf16).

    Both sides are gptkit's own optimizers (train/optim.py build_optimizers) on one model, micro-batch
    16 x 1024, taking turns step by step; the Newton-Schulz iteration runs in the run's precision
    (bf16 on a GPU that runs it natively: torch.optim.Muon's own path). Records each side's median
    step and optimizer-step time and the ratio (the issue's goal: <= 1.1x AdamW's step)."""
    import torch

    from gptkit.device import configure_matmul, resolve_precision
    from gptkit.train.config import TrainConfig
    from gptkit.train.optim import build_optimizers, schedule_lrs

    dev = torch.device(ctx.device)
    configure_matmul(dev)
    prec = resolve_precision("auto", dev)
    model = make_model(ctx).to(dev).train()
    T = model.config.block_size
    mb = 16 if ctx.cuda else 2
    data = torch.randint(
        0, model.config.vocab_size, (mb, T + 1), device=dev, generator=torch.Generator(dev).manual_seed(3)
    )
    x, y = data[:, :-1].contiguous(), data[:, 1:].contiguous()
    sides = {
        name: build_optimizers(TrainConfig(optimizer=name, lr=6e-4), model, dev, prec.name)
        for name in ("adamw", "muon")
    }
    step_t: dict[str, list[float]] = {k: [] for k in sides}
    opt_t: dict[str, list[float]] = {k: [] for k in sides}
    losses: dict[str, float] = {}
    rounds = 8 if ctx.cuda else 2  # the first round warms up (kernels, the optimizers' state)
    for _ in range(rounds):
        for name, opts in sides.items():
            schedule_lrs(opts, lambda peak: peak)
            ctx.sync()
            t0 = time.perf_counter()
            with prec.autocast():
                _, loss = model(x, y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            ctx.sync()
            t1 = time.perf_counter()
            for o in opts:
                o.step()
                o.zero_grad(set_to_none=True)
            ctx.sync()
            t2 = time.perf_counter()
            step_t[name].append(t2 - t0)
            opt_t[name].append(t2 - t1)
            losses[name] = loss.item()
    med = {k: statistics.median(v[1:]) for k, v in step_t.items()}
    opt_med = {k: statistics.median(v[1:]) for k, v in opt_t.items()}
    ratio = med["muon"] / med["adamw"]
    ns = next(g["ns_dtype"] for g in sides["muon"][1].param_groups)
    ctx.echo(
        f"  step: adamw {med['adamw'] * 1e3:.1f} ms, muon {med['muon'] * 1e3:.1f} ms ({ratio:.2f}x; optimizer "
        f"{opt_med['adamw'] * 1e3:.1f} vs {opt_med['muon'] * 1e3:.1f} ms; Newton-Schulz in {ns})"
    )
    return {
        "preset": ctx.preset,
        "micro_batch": mb,
        "precision": prec.name,
        "ns_dtype": ns,
        "step_ms": {k: round(v * 1e3, 2) for k, v in med.items()},
        "optimizer_step_ms": {k: round(v * 1e3, 2) for k, v in opt_med.items()},
        "ratio": round(ratio, 3),
        "goal_ratio": 1.1,
        "within_goal": ratio <= 1.1,
        "timed_rounds": rounds - 1,
        "passed": all(math.isfinite(v) for v in losses.values()),
    }


def train_args(ctx: Ctx, run_dir: Path, steps: int, *extra: str, procs: int = 1) -> list[str]:
    """`gptkit train` on the shared shards: the tiny preset, 128-token rows, `procs` processes (GPUs,
    or gloo CPU processes in a rehearsal), no compiler unless `extra` says so."""
    where = ["--gpus", str(procs)] if ctx.cuda else ["--gpus", "0", "--nproc", str(procs)]
    seq, mb = 128, 8
    return [
        "train", "--preset", "tiny", "--data", str(ctx.shards()), "--out", str(run_dir), *where,
        "--seq-len", str(seq), "--micro-batch", str(mb), "--batch-tokens", str(seq * mb * procs),
        "--max-steps", str(steps), "--warmup-steps", "1", "--eval-tokens", "0", "--hellaswag-every", "0",
        "--sample-every", "1000", "--checkpoint-every", "1000", "--log-every", "1", *extra,
    ]  # fmt: skip


@stage("trainer", limit_s=55)
def stage_trainer(ctx: Ctx) -> dict:
    """The Trainer itself with torch.compile on, evaluation, HellaSwag and a sample every 2 steps.

    TORCH_LOGS=recompiles: the compiled forward must not recompile after the periodic sample (issue
    24 item 8). A rehearsal runs it without the compiler (a CPU compile takes minutes)."""
    run_dir = ctx.work / "trainer_run"
    compiled = ["--compile"] if ctx.compile else ["--no-compile"]
    every = ["--eval-every", "2", "--eval-tokens", "2048", "--hellaswag-every", "2", "--sample-every", "2"]
    args = train_args(ctx, run_dir, 4, *compiled, *every, "--sample-tokens", "8")
    r = gptkit_cli(ctx, *args, timeout=300, env={"TORCH_LOGS": "recompiles"})
    from gptkit.train.metrics import read_metrics

    rows = read_metrics(run_dir)
    log = run_dir / "error-0.log"
    text = log.read_text(errors="replace") if log.exists() else ""
    recompiles = text.count("Recompiling function forward")
    val = [m["val_loss"] for m in rows if "val_loss" in m]
    hs = [m["hellaswag"] for m in rows if "hellaswag" in m]
    out: dict = {
        "compile": ctx.compile,
        "exit_code": r.returncode,
        "steps": len([m for m in rows if "loss" in m]),
        "val_loss": val,
        "hellaswag": hs,
        "samples": len([m for m in rows if "sample" in m]),
        "forward_recompiles": recompiles if ctx.compile else "n/a (no compiler in a rehearsal)",
    }
    if r.returncode:
        out["stderr"] = tail(r.stderr)
    out["passed"] = (
        r.returncode == 0 and out["steps"] == 4 and len(val) == 3 and len(hs) == 3
        and out["samples"] == 2 and recompiles == 0
    )  # fmt: skip
    return out


@stage("fp16_resume", limit_s=45)
def stage_fp16_resume(ctx: Ctx) -> dict:
    """--precision fp16 (GradScaler): killed after its step-2 checkpoint and resumed, bitwise equal to
    an uninterrupted run. A rehearsal runs fp32 (fp16 needs CUDA)."""
    prec = "fp16" if ctx.cuda else "fp32"
    flags = ["--precision", prec, "--checkpoint-every", "2"]
    whole, cut = ctx.work / "fp16_whole", ctx.work / "fp16_cut"
    # The uninterrupted run goes on beside the one to kill (each start is seconds of imports)
    p_whole = start(ctx, [sys.executable, "-m", "gptkit", *train_args(ctx, whole, 4, *flags)])
    try:
        # The same run, slowed down so it can be killed (SIGKILL, the whole process group) after step 2.
        env = {**os.environ, **ctx.env, "GPTKIT_FAULTS": "train.step_sleep=1"}
        cmd = [sys.executable, "-m", "gptkit", *train_args(ctx, cut, 4, *flags)]
        p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        try:
            while not (cut / "step_000002" / "trainer.json").exists():
                if p.poll() is not None:
                    return {"passed": False, "step": "run to kill", "exit_code": p.returncode}
                if ctx.left() < 5:
                    raise StageTimeout("no step-2 checkpoint in time")
                time.sleep(0.1)
        finally:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    finally:
        r = finish(ctx, p_whole, timeout=200)
    if r.returncode:
        return {"passed": False, "step": "uninterrupted run", "exit_code": r.returncode, "stderr": tail(r.stderr)}
    r = gptkit_cli(ctx, "train", "--resume", str(cut), *(["--gpus", "1"] if ctx.cuda else ["--gpus", "0"]), timeout=200)
    if r.returncode:
        return {"passed": False, "step": "resume", "exit_code": r.returncode, "stderr": tail(r.stderr)}
    a = (whole / "step_000004" / "model.safetensors").read_bytes()
    b = (cut / "step_000004" / "model.safetensors").read_bytes()
    ta = json.loads((whole / "step_000004" / "trainer.json").read_text())
    tb = json.loads((cut / "step_000004" / "trainer.json").read_text())
    return {
        "precision": prec if ctx.cuda else "fp32 (rehearsal: fp16 needs CUDA)",
        "killed_after": sorted(x.name for x in cut.glob("step_*")),
        "grad_scaler": ta.get("grad_scaler"),
        "weights_bitwise_equal": a == b,
        "scaler_equal": ta.get("grad_scaler") == tb.get("grad_scaler"),
        "passed": a == b and ta.get("grad_scaler") == tb.get("grad_scaler") and (not ctx.cuda or "grad_scaler" in ta),
    }


def trainer_here(ctx: Ctx, name: str, **flags):
    """A gptkit Trainer in this process on the shared shards (one rank), as a worker builds it."""
    from gptkit.train import config as C
    from gptkit.train.dist import Dist
    from gptkit.train.resolve import prepare
    from gptkit.train.trainer import Trainer

    os.environ["GPTKIT_HOME"] = str(ctx.work / "home")
    ctx.shards()
    base = dict(preset="tiny", data=str(ctx.shards()), seq_len=128, micro_batch=8, batch_tokens=1024, max_steps=2)
    base.update(dict(warmup_steps=1, eval_tokens=0, hellaswag_every=0, sample_every=1000, log_every=1, compile=False))
    base.update(flags)
    gpus = 1 if ctx.cuda else 0
    rr = prepare(C.TrainOverrides(**base), C.LaunchOverrides(gpus=gpus, nproc=1), out=ctx.work / name)
    return Trainer(rr, Dist("cuda" if ctx.cuda else "cpu"))


@stage("oom", limit_s=30)
def stage_oom(ctx: Ctx) -> dict:
    """Out of memory gives the one-line hint on every phase: a real one from a micro-batch that cannot
    fit (through `gptkit train`), and evaluation, HellaSwag, sampling through the fault point train.oom.
    A rehearsal has no GPU to fill: the fault point stands in for the real one too."""
    from gptkit.train.dist import TrainingError

    out: dict = {}
    if ctx.cuda:  # 124M at 256 x 1024 tokens: hundreds of GB of activations
        args = train_args(ctx, ctx.work / "oom_run", 1)
        args[args.index("tiny")] = "gpt2"
        args[args.index("--seq-len") + 1] = "1024"
        args[args.index("--micro-batch") + 1] = "256"
        args[args.index("--batch-tokens") + 1] = str(256 * 1024)
        r = gptkit_cli(ctx, *args, timeout=120)
    else:
        args = train_args(ctx, ctx.work / "oom_run", 1)
        r = gptkit_cli(ctx, *args, timeout=120, env={"GPTKIT_FAULTS": "train.oom=train"})
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    out["train"] = {"exit_code": r.returncode, "line": lines[-1] if lines else None, "lines": len(lines)}
    ok = r.returncode == 1 and len(lines) == 1 and "CUDA out of memory at --micro-batch" in lines[0]
    for phase, flags in {
        "evaluation": dict(eval_tokens=1024, eval_every=1),
        "hellaswag": dict(hellaswag_every=1),
        "sample": dict(sample_every=1, sample_tokens=4),
    }.items():
        tr = trainer_here(ctx, f"oom_{phase}", **flags)
        os.environ["GPTKIT_FAULTS"] = f"train.oom={phase}"
        try:
            tr.fit()
            out[phase] = {"line": None}
            ok = False
        except TrainingError as e:
            out[phase] = {"line": str(e), "rank_alone": e.collective is False}
            ok = ok and "CUDA out of memory" in str(e) and "\n" not in str(e) and e.collective is False
        finally:
            os.environ.pop("GPTKIT_FAULTS", None)
    out["passed"] = ok
    return out


@stage("copies", limit_s=10)
def stage_copies(ctx: Ctx) -> dict:
    """The trainer's pinned, non-blocking batch copies (train/data.py BatchCopier) against blocking
    copies from pageable memory, each micro-batch followed by a matmul as a step's work would be."""
    import numpy as np
    import torch

    from gptkit.train import data as datamod

    dev = torch.device(ctx.device)
    shards = ctx.shards()
    data_dir, _, train_paths, manifest = datamod.check_data(str(shards))
    stream = datamod.TokenStream(train_paths, 0, 0, shuffle=True)
    B, T = (64, 1024) if ctx.cuda else (8, 128)
    batches = datamod.TrainBatches(stream, T, B, 0, 1)
    copier = datamod.BatchCopier(batches, dev)
    w = torch.randn((2048, 2048) if ctx.cuda else (128, 128), device=dev)
    n = 50 if ctx.cuda else 5

    def blocking(i: int):
        t = torch.from_numpy(batches.get(i * B * T, 0))
        return t[:, :-1].to(dev).contiguous(), t[:, 1:].to(dev).contiguous()  # the trainer's old path

    times, same = {}, True
    for name, get in (("blocking", blocking), ("pinned", lambda i: copier.get(i * B * T, 0))):
        ctx.sync()
        t0 = time.perf_counter()
        for i in range(n):
            x, y = get(i)
            (w @ w).sum()  # the GPU works while the next rows are read and copied
        ctx.sync()
        times[name] = (time.perf_counter() - t0) / n
    for i in range(3):
        a, b = blocking(i), copier.get(i * B * T, 0)
        same = same and torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    return {
        "rows": [B, T + 1],
        "pinned": bool(copier.host[0].is_pinned()) if ctx.cuda else "no (CPU: pinning skipped)",
        "ms_per_micro_batch": {k: round(v * 1e3, 3) for k, v in times.items()},
        "speedup": round(times["blocking"] / times["pinned"], 3),
        "same_tensors": same,
        "passed": same and bool(np.isfinite(list(times.values())).all()),
    }


@stage("attention", limit_s=10)
def stage_attention(ctx: Ctx) -> dict:
    """Which attention kernel the Trainer's own forward gets, unforced: the ops the profiler records
    in one training forward and backward at the trainer's precision."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from gptkit.device import configure_matmul, resolve_precision

    dev = torch.device(ctx.device)
    configure_matmul(dev)
    prec = resolve_precision("auto", dev)
    model = make_model(ctx).to(dev).train()
    T = model.config.block_size
    x = torch.randint(0, model.config.vocab_size, (4, T), device=dev)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if ctx.cuda else [])
    with profile(activities=activities) as prof:
        with prec.autocast():
            _, loss = model(x, x)
        loss.backward()
        ctx.sync()
    names = {e.key for e in prof.key_averages()}
    kernels = {
        "flash": "aten::_scaled_dot_product_flash_attention",
        "memory-efficient": "aten::_scaled_dot_product_efficient_attention",
        "cudnn": "aten::_scaled_dot_product_cudnn_attention",
        "cpu flash": "aten::_scaled_dot_product_flash_attention_for_cpu",
        "math": "aten::_scaled_dot_product_attention_math",
    }
    used = [k for k, op in kernels.items() if op in names]
    if not used and "aten::baddbmm" in names:
        used = ["gptkit bf16 matmuls (attention.py, short CPU sequences)"]
    return {
        "precision": prec.name,
        "seq_len": T,
        "kernels": used,
        "sdpa_ops": sorted(n for n in names if "scaled_dot_product" in n),
        # On a GPU anything but flash or cudnn means a slow fallback for these shapes
        "passed": bool(used) and (not ctx.cuda or bool({"flash", "cudnn"} & set(used))),
    }


WEIGHTS_WORKER = """
import hashlib, os, sys
from pathlib import Path
from gptkit.train.config import ResolvedRun
from gptkit.train.dist import Dist
from gptkit.train.trainer import Trainer
rr = ResolvedRun.read(Path(sys.argv[1]) / "config.json")
dist = Dist(rr.extra["device_type"])
tr = Trainer(rr, dist)
tr.fit()
h = hashlib.sha256()
for name, p in sorted(tr.model.state_dict().items()):
    h.update(name.encode()); h.update(p.detach().float().cpu().numpy().tobytes())
Path(sys.argv[2], f"rank{dist.rank}.sha256").write_text(h.hexdigest())
dist.barrier(); dist.close()
"""


@stage("ddp_exact", limit_s=45, min_gpus=2)
def stage_ddp_exact(ctx: Ctx) -> dict:
    """DDP through NCCL on every GPU: after 10 steps every rank's weights are bitwise the same."""
    procs = ctx.gpus if ctx.cuda else 2
    run_dir, hashes = ctx.work / "ddp_exact", ctx.work / "ddp_hashes"
    hashes.mkdir(parents=True, exist_ok=True)
    r = gptkit_cli(ctx, *train_args(ctx, run_dir, 10, procs=procs), "--dry-run", timeout=60)
    if r.returncode:
        return {"passed": False, "step": "resolve", "stderr": tail(r.stderr)}
    # --dry-run printed the command and RUN/config.json's content; write it where the workers read it
    cfg = r.stdout[r.stdout.index("{") :]
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(cfg)
    script = ctx.work / "weights_worker.py"
    script.write_text(WEIGHTS_WORKER)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(procs)]
    r = run_process(ctx, [*cmd, str(script), str(run_dir), str(hashes)], timeout=200)
    got = {f.stem: f.read_text() for f in hashes.glob("rank*.sha256")}
    out: dict = {
        "processes": procs,
        "exit_code": r.returncode,
        "ranks": len(got),
        "distinct_weights": len(set(got.values())),
    }
    out["nccl"] = f"NCCL across {procs} GPUs" if ctx.cuda else "gloo (rehearsal): NCCL not exercised"
    if r.returncode:
        out["stderr"] = tail(r.stderr)
    out["passed"] = r.returncode == 0 and len(got) == procs and len(set(got.values())) == 1
    return out


@stage("rank0_failure", limit_s=30, min_gpus=2)
def stage_rank0_failure(ctx: Ctx) -> dict:
    """A full disk on rank 0 alone (its checkpoint write, fault fs.enospc) ends every rank in one line
    within seconds, not at the NCCL watchdog: the other ranks hear of it (train/failures.py)."""
    procs = ctx.gpus if ctx.cuda else 2
    run_dir = ctx.work / "rank0_failure"
    args = train_args(ctx, run_dir, 6, "--checkpoint-every", "2", procs=procs)
    t0 = time.monotonic()
    r = gptkit_cli(ctx, *args, timeout=120, env={"GPTKIT_FAULTS": "fs.enospc=checkpoint"})
    wall = time.monotonic() - t0
    from gptkit.train.failures import error_ranks

    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    notes = error_ranks(run_dir)
    heard = [k for k, v in notes.items() if v.get("peer") == 0]
    return {
        "processes": procs,
        "exit_code": r.returncode,
        "line": lines[-1] if lines else None,
        "wall_s": round(wall, 1),
        "ranks_that_heard": sorted(heard),
        "passed": r.returncode == 1 and len(lines) == 1 and "no space left" in lines[0] and len(heard) == procs - 1,
    }


@stage("dist", limit_s=30)
def stage_dist(ctx: Ctx) -> dict:
    """`gptkit doctor --dist` on every visible GPU (NCCL): all-reduce busbw 1-256 MB, latency, consistency."""
    # A rehearsal: 2 CPU processes (gloo) and small messages; the figures mean nothing there.
    procs = ctx.gpus if ctx.cuda else 2
    size = "256" if ctx.cuda else "4"
    r = gptkit_cli(ctx, "doctor", "--dist", "--nproc", str(procs), "--max-size", size, "--json", timeout=120)
    try:
        rep = json.loads(r.stdout)
    except json.JSONDecodeError:
        return {"passed": False, "exit_code": r.returncode, "stdout": tail(r.stdout), "stderr": tail(r.stderr)}
    return {
        "processes": procs,
        "busbw_GBps_by_MB": {round(x["size_bytes"] / (1 << 20)): x["busbw_GBps"] for x in rep["sizes"]},
        "latency_us": rep["latency_us"],
        "all_correct": all(x["correct"] for x in rep["sizes"]),
        "consistent": all(c["same"] for c in rep["consistency"].values()),
        "note": "one GPU: no link is measured (busbw is 0 at n = 1)" if ctx.cuda and procs == 1 else None,
        "passed": r.returncode == 0,
    }


# --- main ------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("gpu_check.json"), help="the JSON report (default: %(default)s)")
    ap.add_argument("--steps", type=int, default=30, help="steps per micro-batch in the 124M stage")
    ap.add_argument(
        "--budget", type=float, default=None, help="seconds after which no stage starts (default: the limits' sum)"
    )
    ap.add_argument("--only", default="", help="comma-separated stage names: run just those (see --list)")
    ap.add_argument("--list", action="store_true", help="print the stages and their time limits, and exit")
    ap.add_argument(
        "--rehearse", action="store_true", help="every stage on the CPU with the tiny model: checks the script itself"
    )
    args = ap.parse_args(argv)
    stages = list(STAGES)
    if args.only:
        wanted = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in wanted if n not in {st.name for st in STAGES}]
        if unknown:
            print(f"gpu_check: no stage {', '.join(unknown)}; the stages: {', '.join(st.name for st in STAGES)}")
            return 2
        stages = [st for st in STAGES if st.name in wanted]
    if args.list:
        for st in stages:
            needs = f", {st.min_gpus}+ GPUs" if st.min_gpus > 1 else ""
            print(f"{st.name:<16} {st.limit_s:>4.0f} s{needs:<10}  {st.about}")
        print(f"{'one GPU':<16} {limits_sum(stages):>4.0f} s of {TOTAL_LIMIT_S:.0f}")
        return 0

    if str(ROOT) not in sys.path:  # run from a checkout without installing gptkit
        sys.path.insert(0, str(ROOT))
    import torch

    import gptkit

    meta = {"gptkit": gptkit.__version__, "torch": torch.__version__, "python": sys.version.split()[0]}
    if args.rehearse:
        report = Report(args.out, cuda=False, rehearsal=True, device="cpu", preset="tiny", **meta)
        print(f"gpu_check: rehearsal on the CPU (tiny model; the figures mean nothing); report: {args.out}")
    elif not torch.cuda.is_available():
        report = Report(args.out, cuda=False, message=NO_CUDA, **meta)
        print(NO_CUDA)
        return 0
    else:
        gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        report = Report(args.out, cuda=True, gpus=gpus, cuda_version=torch.version.cuda, anchors=ANCHORS, **meta)
        print(f"gpu_check: {len(gpus)} x {gpus[0]}; report: {args.out}")
    slack = REHEARSAL_SLACK if args.rehearse else 1.0
    budget = args.budget if args.budget is not None else limits_sum(stages, 2 if args.rehearse else 10**6) * slack
    deadline = time.monotonic() + budget
    pythonpath = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
        env = {"PYTHONPATH": pythonpath}
        if args.rehearse:
            ctx = rehearsal_ctx(Path(tmp), deadline, env)
        else:
            ctx = Ctx(work=Path(tmp), deadline=deadline, steps=args.steps, env=env, gpus=torch.cuda.device_count())
        ok = run_stages(report, stages, ctx)
    report.data["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    report.data["ok"] = ok
    report.write()
    print(f"gpu_check: {'all stages ok' if ok else 'some stages failed'}; report: {args.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
