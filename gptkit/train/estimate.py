"""Estimates a plan and the CPU auto-sizing are made of: parameters and FLOPs (from model.py),
memory per process, free memory, a timed CPU step, and their human forms. Below both (plan.py and
auto.py import this; it imports neither).

Memory is an estimate (the activation term follows Korthikanti et al. 2022, "Reducing Activation
Recomputation": ~34 bytes per token per hidden unit per layer in 16-bit with a fused attention
kernel; twice that in fp32), plus the logits of the loss. It is meant to say "fits" or "does not",
not to the megabyte.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from gptkit.model import GPTConfig

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
TIMED_PASSES = 7  # the median of this many timed passes ...
MIN_TIMED_PASSES = 3  # ... at least these, however slow ...
TIMED_SECONDS = 3.0  # ... and no more once they have taken this long
BUSY_CPU_SHARE = 0.7  # a timing that got less than this of its threads' CPU time was of a busy machine
BUSY_SPREAD = 2.0  # as was one whose slowest pass took over this many times its fastest
LONG_CPU_RUN_S = 3600  # a CPU run planned at more than this says so before it starts (resolve, plan)
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


def micro_batch_memory_allows(
    mc: GPTConfig, n_params: int, seq_len: int, half: bool, free: int | None, limit: int = 1 << 16
) -> int | None:
    """The largest micro-batch (any number of rows, up to `limit`) whose estimate fits; None if even 1
    does not (or the free memory is unknown). The estimate grows with the rows: a binary search."""
    if free is None or not memory_estimate(mc, n_params, seq_len, 1, half, free).fits:
        return None
    lo, hi = 1, limit
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if memory_estimate(mc, n_params, seq_len, mid, half, free).fits:
            lo = mid
        else:
            hi = mid - 1
    return lo


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
    row_s: float  # one row (sequence) forward + backward, all cores: the median of the timed passes
    optimizer_s: float  # one AdamW step
    passes: int = 1  # timed passes the median is of
    spread: float = 1.0  # slowest / fastest timed pass
    cpu_share: float = 1.0  # CPU time this process got / (wall time x its threads) while timed

    def step_s(self, rows: int) -> float:
        return self.row_s * rows + self.optimizer_s

    @property
    def busy(self) -> bool:
        """Other work had the cores while this was timed: the estimate is of a busy machine."""
        return self.cpu_share < BUSY_CPU_SHARE or self.spread > BUSY_SPREAD

    def busy_note(self) -> str | None:
        """One line for a busy machine (None on a quiet one): what was seen and how the estimate may move."""
        if not self.busy:
            return None
        return (
            f"the machine is busy: while timed, this process got {self.cpu_share:.0%} of its threads' time "
            f"(passes {self.spread:.1f}x apart); the estimate is of these conditions: the run may take less "
            f"once the other work stops (up to ~{min(1 / max(self.cpu_share, 0.05), 20):.0f}x), more if it grows"
        )

    def describe(self) -> str:
        """How the figure was measured, for the plan's `time from` row."""
        return f"the median of {self.passes} timed passes ({self.row_s * 1e3:.0f} ms a row) + one AdamW step"


def time_cpu_step(mc: GPTConfig, seq_len: int, precision: str, max_rows: int = MAX_TIMED_ROWS) -> CpuTiming:
    """Time the real model on this CPU: a micro-batch forward/backward and one fused AdamW step, the
    way the trainer runs them.

    The micro-batch starts at two rows and doubles (up to max_rows) until a pass takes TIMED_PASS_S:
    a pass of a few ms is mostly fixed overhead (the tiny model's 2-row pass measured 3x slower per
    row than its 16-row one). Each size gets an untimed warm-up first (kernel choice, allocator,
    thread pool); then TIMED_PASSES passes at the final size (fewer where that takes more than
    TIMED_SECONDS, at least MIN_TIMED_PASSES) give the median: one pass is one draw of a machine
    others may share (one best-of figure said 3 min for a run of 16). The process's CPU time over
    the passes, against their wall time times its threads, says whether it had its cores. A 124M
    row takes ~20 s on 2 cores, so that model is timed on one row."""
    import statistics

    import torch

    from gptkit.device import resolve_precision
    from gptkit.model import GPT
    from gptkit.train.loss import fuse_loss
    from gptkit.train.optim import adamw_groups

    prec = resolve_precision(precision, torch.device("cpu"))
    model = GPT(mc)
    train_model = fuse_loss(model) if prec.name == "fp32" else model
    opt = torch.optim.AdamW(adamw_groups(model, 0.1), lr=1e-4, fused=True)
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
    last = fwd_bwd(rows)
    while last < TIMED_PASS_S and rows < max_rows:
        rows *= 2
        fwd_bwd(rows)
        last = fwd_bwd(rows)
    times = [last]
    cpu0, wall0 = time.process_time(), time.perf_counter()
    while len(times) < TIMED_PASSES and (
        len(times) < MIN_TIMED_PASSES or time.perf_counter() - wall0 + last < TIMED_SECONDS
    ):
        times.append(fwd_bwd(rows))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    threads = torch.get_num_threads()
    share = min(1.0, cpu / (wall * threads)) if wall > 0 else 1.0
    opt.step()  # warm-up: allocates the moments
    t = time.perf_counter()
    opt.step()
    return CpuTiming(
        statistics.median(times) / rows,
        time.perf_counter() - t,
        passes=len(times),
        spread=max(times) / min(times),
        cpu_share=share,
    )


# --- human forms (pure) ----------------------------------------------------------------------------
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
