"""`gptkit train --plan`: what a run will cost before anything runs.

The numbers, per run: parameters, tokens per step, steps, total tokens, tokens per parameter, memory
per process against what is free, the largest micro-batch that fits, and the wall time.

Wall time on a CPU is measured: one micro-batch forward/backward of the real model (a few rows,
scaled linearly to the step) and one AdamW step, timed in this process with all its cores. On a
GPU it is estimated: the training FLOPs over the data-sheet peak (gptkit.train.mfu) at an assumed
MFU, which the plan states. `--gpu-type NAME` plans for GPUs this machine does not have.

Memory is an estimate (the activation term follows Korthikanti et al. 2022, "Reducing Activation
Recomputation": ~34 bytes per token per hidden unit per layer in 16-bit with a fused attention
kernel; twice that in fp32), plus the logits of the loss. It is meant to say "fits" or "does not",
not to the megabyte.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from gptkit.errors import GptkitError
from gptkit.model import GPTConfig

# Assumed MFU of a GPU run (torch.compile, bf16, flash attention, the 124M model): nanoGPT and
# llm.c report 40-50% on A100 and H100 for this size; the lower end is the honest guess.
ASSUMED_GPU_MFU = 0.40
# Device memory per GPU in GB (the largest variant where a name covers several).
GPU_MEMORY_GB: list[tuple[str, float]] = [
    ("H100 NVL", 94),
    ("H100 PCIe", 80),
    ("GH200", 96),
    ("H100", 80),
    ("H200", 141),
    ("A100", 80),
    ("A10G", 24),
    ("A10", 24),
    ("L40S", 48),
    ("L40", 48),
    ("L4", 24),
    ("RTX 4090", 24),
    ("RTX 3090", 24),
    ("V100", 32),
    ("T4", 16),
]
GPT2_VOCAB = 50257
MAX_TIMED_ROWS = 16  # the timed CPU micro-batch grows to this many rows at most
TIMED_PASS_S = 0.25  # ... until one forward/backward takes this long
TIMED_TRIES = 3
TIMED_SECONDS = 1.0
MEMORY_HEADROOM = 0.8  # a plan "fits" when its estimate is under this fraction of the free memory


# --- memory --------------------------------------------------------------------------------------
@dataclass
class Memory:
    """Bytes per process."""

    weights: int
    optimizer: int  # AdamW: two fp32 moments per parameter
    gradients: int
    activations: int  # at the chosen micro-batch
    total: int
    free: int | None  # free RAM (CPU) or device memory (GPU); None = unknown
    fits: bool | None


def param_count(mc: GPTConfig) -> int:
    """All parameters, the tied lm_head once: GPT.num_params of the model built on the meta device
    (no memory, exact)."""
    import torch

    from gptkit.model import GPT

    with torch.device("meta"):
        return GPT(mc).num_params(non_embedding=False)


def flops_per_token(mc: GPTConfig, seq_len: int) -> float:
    """GPT.flops_per_token, of the model built on the meta device."""
    import torch

    from gptkit.model import GPT

    with torch.device("meta"):
        return GPT(mc).flops_per_token(seq_len)


def activation_bytes(mc: GPTConfig, seq_len: int, micro_batch: int, half: bool) -> int:
    """Activations saved for backward by one micro-batch: ~17 values per token, hidden unit and layer
    (34 bytes in 16-bit), plus the fp32 logits and their gradient."""
    per_value = 2 if half else 4
    tokens = micro_batch * seq_len
    layers = 17 * per_value * tokens * mc.n_embd * mc.n_layer
    logits = 2 * 4 * tokens * mc.padded_vocab_size
    return int(layers + logits)


def memory_estimate(
    mc: GPTConfig, n_params: int, seq_len: int, micro_batch: int, half: bool, free: int | None
) -> Memory:
    weights = 4 * n_params + (2 * n_params if half else 0)  # fp32 master weights (+ a 16-bit copy)
    opt, grads = 8 * n_params, 4 * n_params
    act = activation_bytes(mc, seq_len, micro_batch, half)
    total = weights + opt + grads + act
    return Memory(weights, opt, grads, act, total, free, None if free is None else total <= MEMORY_HEADROOM * free)


def largest_fitting_micro_batch(
    mc: GPTConfig, n_params: int, seq_len: int, per_rank_rows: int, half: bool, free: int | None
) -> int | None:
    """The largest divisor of the per-process rows whose estimate fits; None if even 1 does not
    (or the free memory is unknown)."""
    if free is None:
        return None
    fitting = [
        d
        for d in range(1, per_rank_rows + 1)
        if per_rank_rows % d == 0 and memory_estimate(mc, n_params, seq_len, d, half, free).fits
    ]
    return fitting[-1] if fitting else None


def free_ram() -> int | None:
    """Bytes of RAM available to new processes: MemAvailable (Linux), else the free pages."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def gpu_memory_gb(name: str) -> float | None:
    for fragment, gb in GPU_MEMORY_GB:
        if fragment.lower() in name.lower():
            return gb
    return None


# --- time ----------------------------------------------------------------------------------------
@dataclass
class CpuTiming:
    row_s: float  # one row (sequence) forward + backward, all cores
    optimizer_s: float  # one AdamW step

    def step_s(self, rows: int) -> float:
        return self.row_s * rows + self.optimizer_s


def time_cpu_step(mc: GPTConfig, seq_len: int, precision: str, max_rows: int = MAX_TIMED_ROWS) -> CpuTiming:
    """Time the real model on this CPU: a micro-batch forward/backward and one fused AdamW step, the
    way the trainer runs them.

    The micro-batch starts at two rows and doubles (up to max_rows) until a pass takes TIMED_PASS_S:
    a pass of a few ms is mostly fixed overhead (the tiny model's 2-row pass measured 3x slower per
    row than its 16-row one). Each size gets an untimed warm-up first (kernel choice, allocator,
    thread pool), then the best of up to TIMED_TRIES passes within TIMED_SECONDS (others may share
    the cores). A 124M row takes ~20 s on 2 cores, so that model is timed on one row."""
    import torch

    from gptkit.device import resolve_precision
    from gptkit.model import GPT
    from gptkit.train.loss import fuse_loss

    prec = resolve_precision(precision, torch.device("cpu"))
    model = GPT(mc)
    train_model = fuse_loss(model) if prec.name == "fp32" else model
    opt = torch.optim.AdamW(model.param_groups(0.1), lr=1e-4, fused=True)
    g = torch.Generator().manual_seed(0)

    def fwd_bwd(rows: int) -> float:
        x = torch.randint(0, mc.vocab_size, (rows, seq_len), generator=g)
        y = torch.randint(0, mc.vocab_size, (rows, seq_len), generator=g)
        t = time.perf_counter()
        with prec.autocast():
            _, loss = train_model(x, y)
        loss.backward()
        return time.perf_counter() - t

    # One row measured 10x slower per row than two for the tiny model in bf16 (some batch-1 path), so
    # one row only for models where a row is already seconds of large matmuls.
    rows = 1 if sum(p.numel() for p in model.parameters()) > 50e6 else 2
    fwd_bwd(rows)
    best = fwd_bwd(rows)
    while best < TIMED_PASS_S and rows < max_rows:
        rows *= 2
        fwd_bwd(rows)
        best = fwd_bwd(rows)
    start = time.perf_counter()
    for _ in range(TIMED_TRIES - 1):
        if time.perf_counter() - start > TIMED_SECONDS:
            break
        best = min(best, fwd_bwd(rows))
    opt.step()  # warm-up: allocates the moments
    t = time.perf_counter()
    opt.step()
    return CpuTiming(best / rows, time.perf_counter() - t)


# --- the plan ------------------------------------------------------------------------------------
@dataclass
class RunPlan:
    preset: str
    shape: str  # layers x heads x width (and block size)
    device: str  # "cpu" or "cuda"
    hardware: str  # what the plan is for, in words
    processes: int
    n_params: int
    seq_len: int
    tokens_per_step: int
    steps: int
    total_tokens: int
    tokens_per_param: float
    micro_batch: int
    grad_accum: int
    precision: str
    memory: Memory
    max_micro_batch: int | None
    step_s: float | None
    wall_s: float | None
    time_basis: str  # how the time was found
    auto: str | None = None  # the CPU auto-sizing's line, when it chose the run
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def make_plan(
    overrides,
    launch_overrides,
    *,
    config_file: str | Path | None = None,
    gpu_type: str | None = None,
    measure: bool = True,
) -> RunPlan:
    """The plan of `gptkit train` with these settings. Nothing is written and no process starts.

    gpu_type: plan for `--gpus N` GPUs of this kind (a name in mfu.GPU_PEAK_TFLOPS) instead of this
    machine's. measure=False skips the CPU timing (no wall time)."""
    from gptkit.device import precision_policy
    from gptkit.train import resolve as L
    from gptkit.train.config import plan_batches
    from gptkit.train.mfu import GPU_PEAK_TFLOPS, gpu_peak_flops

    notes: list[str] = []
    warnings: list[str] = []
    settled = L.settle_config(
        overrides, launch_overrides, config_file=config_file, gpu_type=gpu_type, warn=warnings.append, plan_only=True
    )
    cfg, launch, device, nproc = settled.cfg, settled.launch, settled.device_type, settled.nproc
    world = nproc * launch.nodes
    given_mb = overrides.micro_batch is not None or "micro_batch" in settled.file_train
    batches = plan_batches(cfg, world, micro_batch_given=given_mb)
    if settled.vocab is None:
        notes.append(f"no tokenized data found: GPT-2's vocabulary ({GPT2_VOCAB}) assumed")
    mc = L.model_config(cfg, settled.vocab or GPT2_VOCAB)
    n_params = param_count(mc)
    fpt = flops_per_token(mc, cfg.seq_len)
    per_rank = batches.rows // world

    half = False
    if device == "cuda":
        name = gpu_type or _local_gpu_name()
        known = [f for f, _ in GPU_PEAK_TFLOPS]
        if gpu_type and gpu_peak_flops(gpu_type, "bf16") is None and gpu_peak_flops(gpu_type, "fp16") is None:
            raise GptkitError(f"--gpu-type {gpu_type!r}: not in the peak table; known: {', '.join(known)}")
        # The run's own rule (device.precision_policy): auto is bf16 where the GPU has it, else fp32.
        # A planned GPU has bf16 where its data sheet lists a bf16 peak; the local one is asked.
        native = gpu_peak_flops(name, "bf16") is not None if gpu_type else _local_gpu_bf16()
        prec = precision_policy(cfg.precision, "cuda", native).name
        half = prec in ("bf16", "fp16")
        if gpu_type:
            gb = gpu_memory_gb(gpu_type)
            free = int(gb * 1e9) if gb else None
        else:
            free = _local_gpu_free()
        hardware = f"{world} x {name}" + ("" if not gpu_type else " (planned, not this machine)")
    else:
        import torch

        from gptkit.device import resolve_precision

        prec = resolve_precision(cfg.precision, torch.device("cpu")).name
        ram = free_ram()
        free = ram // nproc if ram else None  # processes on one node share its RAM
        from gptkit.train.mfu import threads_per_process

        threads = threads_per_process(nproc)
        hardware = f"CPU, {nproc} process{'es' if nproc > 1 else ''} x {threads} thread{'s' if threads > 1 else ''}"

    mem = memory_estimate(mc, n_params, cfg.seq_len, batches.micro_batch, half, free)
    max_mb = largest_fitting_micro_batch(mc, n_params, cfg.seq_len, per_rank, half, free)
    if mem.fits is False:
        fix = f"--micro-batch {max_mb}" if max_mb else "a smaller --preset"
        warnings.append(f"memory: ~{gb_(mem.total)} per process will not fit in {gb_(mem.free)} free; try {fix}")

    step_s = wall_s = None
    if device == "cuda":
        from gptkit.train.mfu import gpu_peak_flops as peak_of

        # fp32 on a GPU with TF32 runs its matmuls in TF32 (device.configure_matmul turns it on
        # wherever bf16 is native, so the trainer and MFU use that peak too)
        peak = peak_of(name, "tf32" if prec == "fp32" and native else prec)
        if peak:
            step_s = fpt * cfg.batch_tokens / (world * peak * ASSUMED_GPU_MFU)
            basis = (
                f"data-sheet {prec} peak {peak / 1e12:.0f} TFLOP/s per GPU at an assumed MFU of {ASSUMED_GPU_MFU:.0%}"
            )
        else:
            basis = f"{name} is not in the peak table; no time estimate"
    elif measure:
        timing = time_cpu_step(mc, cfg.seq_len, cfg.precision)
        step_s = timing.step_s(batches.rows)
        basis = (
            "measured here: a micro-batch forward/backward "
            f"({timing.row_s * 1e3:.0f} ms a row) + one AdamW step, scaled to {batches.rows} rows"
        )
    else:
        basis = "not measured"
    if step_s is not None:
        wall_s = step_s * cfg.max_steps
    total = cfg.batch_tokens * cfg.max_steps
    return RunPlan(
        preset=cfg.preset,
        shape=f"{mc.n_layer} layers x {mc.n_head} heads x {mc.n_embd} wide, block {mc.block_size}",
        device=device,
        hardware=hardware,
        processes=world,
        n_params=n_params,
        seq_len=cfg.seq_len,
        tokens_per_step=cfg.batch_tokens,
        steps=cfg.max_steps,
        total_tokens=total,
        tokens_per_param=total / n_params,
        micro_batch=batches.micro_batch,
        grad_accum=batches.grad_accum,
        precision=prec,
        memory=mem,
        max_micro_batch=max_mb,
        step_s=step_s,
        wall_s=wall_s,
        time_basis=basis,
        auto=settled.auto_line,
        warnings=warnings,
        notes=notes,
    )


def _local_gpu_bf16() -> bool:
    from gptkit.device import cuda_has_native_bf16

    return cuda_has_native_bf16()


def _local_gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name()


def _local_gpu_free() -> int | None:
    import torch

    try:
        return int(torch.cuda.mem_get_info()[0])
    except RuntimeError:
        return None


# --- rendering (pure) ----------------------------------------------------------------------------
def gb_(n: int | None) -> str:
    if n is None:
        return "?"
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.0f} MB"


def human_count(n: float) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.1f}{unit}"
    return f"{n:.0f}"


def human_duration(s: float | None) -> str:
    if s is None:
        return "?"
    if s < 90:
        return f"{s:.0f} s"
    if s < 90 * 60:
        return f"{s / 60:.0f} min"
    if s < 48 * 3600:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} days"


def render_plan(p: RunPlan) -> list[str]:
    """The plan as aligned lines for a terminal."""
    m = p.memory
    rows = [
        ("model", f"{human_count(p.n_params)} parameters ({p.n_params:,}): {p.shape} (--preset {p.preset})"),
        ("hardware", f"{p.hardware}, {p.precision}"),
        (
            "tokens per step",
            f"{p.tokens_per_step:,} = {p.processes} x {p.micro_batch} x {p.seq_len} x {p.grad_accum} accum",
        ),
        ("steps", f"{p.steps:,}"),
        ("total tokens", f"{human_count(p.total_tokens)} ({p.tokens_per_param:.1f} tokens per parameter)"),
        (
            "memory / process",
            f"{gb_(m.total)} = weights {gb_(m.weights)} + AdamW {gb_(m.optimizer)} + grads {gb_(m.gradients)} "
            f"+ activations {gb_(m.activations)}",
        ),
        (
            "memory available",
            f"{gb_(m.free)}" + ("" if m.fits is None else (" (fits)" if m.fits else " (DOES NOT FIT)")),
        ),
        ("largest micro-batch", "?" if p.max_micro_batch is None else f"{p.max_micro_batch} that fits"),
        (
            "time per step",
            human_duration(p.step_s) if p.step_s is None or p.step_s >= 1 else f"{p.step_s * 1e3:.0f} ms",
        ),
        ("wall time", human_duration(p.wall_s)),
        ("time from", p.time_basis),
    ]
    width = max(len(k) for k, _ in rows)
    out = [f"{k:<{width}}  {v}" for k, v in rows]
    if p.auto:
        out.insert(0, p.auto)
    out += [f"note: {n}" for n in p.notes]
    out += [f"warning: {w}" for w in p.warnings]
    return out
