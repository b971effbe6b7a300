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
    optimizer: int  # the optimizer's state: AdamW two fp32 moments per parameter, Muon one per block matrix entry
    gradients: int
    activations: int  # at the chosen micro-batch
    total: int
    free: int | None  # free RAM (CPU) or device memory (GPU); None = unknown
    fits: bool | None
    gather: int = 0  # FSDP2's transient all-gather (and unsharded gradient) buffers
    strategy: str = "ddp"
    checkpointing: bool = False


def activation_bytes(mc: GPTConfig, seq_len: int, micro_batch: int, half: bool, fused_head: bool = False) -> int:
    """Activations saved for backward by one micro-batch: ~17 values per token, hidden unit and layer
    (34 bytes in 16-bit; measured on CPU in fp32 with SDPA and no dropout: 16.1), the embeddings and
    final LayerNorm's (2.5 values per token and hidden unit, measured), and the fp32 logits and their
    gradient, unless the head is fused with the loss (CPU: train/loss.py, which saves none of them)."""
    per_value = 2 if half else 4
    tokens = micro_batch * seq_len
    return int(_per_layer(mc, tokens, per_value) * mc.n_layer + _outside_blocks(mc, tokens, per_value, fused_head))


def checkpointed_activation_bytes(
    mc: GPTConfig, seq_len: int, micro_batch: int, half: bool, fused_head: bool = False, *, recompute: bool = True
) -> int:
    """The same with activation checkpointing per block: each block keeps only its input, and one
    block's activations exist again while it is recomputed in backward (recompute=False: without
    that transient, what is saved at the end of the forward)."""
    per_value = 2 if half else 4
    tokens = micro_batch * seq_len
    inputs = per_value * tokens * mc.n_embd * mc.n_layer
    one_block = _per_layer(mc, tokens, per_value) if recompute else 0
    return int(inputs + one_block + _outside_blocks(mc, tokens, per_value, fused_head))


def _per_layer(mc: GPTConfig, tokens: int, per_value: int) -> float:
    return 17 * per_value * tokens * mc.n_embd


def _outside_blocks(mc: GPTConfig, tokens: int, per_value: int, fused_head: bool) -> float:
    logits = 0 if fused_head else 2 * 4 * tokens * mc.padded_vocab_size
    return 2.5 * per_value * tokens * mc.n_embd + logits


def block_params(mc: GPTConfig) -> int:
    """Parameters of one transformer block (4 matrices, their biases, two LayerNorms)."""
    c = mc.n_embd
    return 12 * c * c + 13 * c


def memory_estimate(
    mc: GPTConfig,
    n_params: int,
    seq_len: int,
    micro_batch: int,
    half: bool,
    free: int | None,
    *,
    strategy: str = "ddp",
    world: int = 1,
    checkpointing: bool = False,
    fused_head: bool = False,
    optimizer: str = "adamw",
) -> Memory:
    """Bytes per process. DDP: every rank the whole model, gradients and optimizer state. FSDP2: 1/world
    of each (fp32, sharded), plus the transient all-gather buffers: the root's parameters (the
    embeddings) and two blocks' (the one running, the next prefetched) in the compute dtype, and one
    block's unsharded fp32 gradient before its reduce-scatter."""
    shards = world if strategy == "fsdp" else 1
    weights = -(-4 * n_params // shards)  # fp32 master weights
    if half and strategy != "fsdp":
        weights += 2 * n_params  # autocast's 16-bit copy (FSDP2's is the all-gather buffer)
    # AdamW: two fp32 moments per parameter; Muon: one momentum buffer for the block matrices (AdamW's
    # two for the embeddings, biases and gains beside it).
    matrices = 12 * mc.n_embd * mc.n_embd * mc.n_layer if optimizer == "muon" else 0
    opt, grads = -(-(8 * n_params - 4 * matrices) // shards), -(-4 * n_params // shards)
    gather = 0
    if strategy == "fsdp":
        root = n_params - mc.n_layer * block_params(mc)
        gather = (root + 2 * block_params(mc)) * (2 if half else 4) + 4 * block_params(mc)
    act = (checkpointed_activation_bytes if checkpointing else activation_bytes)(
        mc, seq_len, micro_batch, half, fused_head
    )
    total = weights + opt + grads + act + gather
    fits = None if free is None else total <= MEMORY_HEADROOM * free
    return Memory(weights, opt, grads, act, total, free, fits, gather, strategy, checkpointing)


# The combinations `--parallel auto --activation-checkpointing auto` tries, cheapest first.
COMBINATIONS = (("ddp", False), ("fsdp", False), ("fsdp", True))


@dataclass
class ParallelChoice:
    strategy: str  # ddp | fsdp
    checkpointing: bool
    micro_batch: int
    why: str  # in numbers, without the choice's name


def choose_parallel(
    mc: GPTConfig,
    n_params: int,
    seq_len: int,
    micro_batch: int,
    per_rank_rows: int,
    half: bool,
    free: int | None,
    *,
    world: int,
    parallel: str = "auto",
    checkpointing: str = "auto",
    fused_head: bool = False,
    optimizer: str = "adamw",
) -> ParallelChoice:
    """The first combination (DDP, FSDP2, FSDP2 with activation checkpointing, within what was asked)
    whose estimate fits at `micro_batch`; only if none does, the one that fits the largest smaller
    micro-batch. Unknown free memory, or nothing that fits: the first, as asked."""
    combos = [
        (st, ac)
        for st in (("ddp", "fsdp") if parallel == "auto" else (parallel,))
        for ac in {"auto": (False, True), "none": (False,), "blocks": (True,)}[checkpointing]
    ]
    if parallel == "auto":
        # one process: sharding saves nothing; several: FSDP2 saves more than DDP's recompute
        combos = [c for c in combos if c[0] == "ddp"] if world == 1 else [c for c in combos if c != ("ddp", True)]
    combos.sort(key=lambda c: COMBINATIONS.index(c) if c in COMBINATIONS else 1.5)  # DDP+AC after FSDP2
    label = {
        ("ddp", False): "DDP",
        ("ddp", True): "DDP with activation checkpointing",
        ("fsdp", False): "FSDP2",
        ("fsdp", True): "FSDP2 with activation checkpointing",
    }
    first = combos[0]
    if free is None:
        return ParallelChoice(*first, micro_batch, "free memory unknown")

    def est(c, mb):
        return memory_estimate(
            mc,
            n_params,
            seq_len,
            mb,
            half,
            free,
            strategy=c[0],
            world=world,
            checkpointing=c[1],
            fused_head=fused_head,
            optimizer=optimizer,
        )

    skipped: list[str] = []
    for c in combos:
        m = est(c, micro_batch)
        if m.fits:
            why = f"~{gb_(m.total)} per process fits in {gb_(free)}"
            if skipped:
                why += f" ({'; '.join(skipped)})"
            return ParallelChoice(*c, micro_batch, why)
        skipped.append(f"{label[c]} needs ~{gb_(m.total)}")
    best: tuple[int, tuple[str, bool]] | None = None
    for c in combos:
        mbs = [d for d in range(1, micro_batch) if per_rank_rows % d == 0 and est(c, d).fits]
        if mbs and (best is None or mbs[-1] > best[0]):
            best = (mbs[-1], c)
    if best is None:
        return ParallelChoice(*first, micro_batch, f"nothing fits in {gb_(free)} ({'; '.join(skipped)})")
    mb, c = best
    return ParallelChoice(*c, mb, f"micro-batch {mb}: none fits {micro_batch} in {gb_(free)} ({'; '.join(skipped)})")


def largest_fitting_micro_batch(
    mc: GPTConfig,
    n_params: int,
    seq_len: int,
    per_rank_rows: int,
    half: bool,
    free: int | None,
    *,
    strategy: str = "ddp",
    world: int = 1,
    checkpointing: bool = False,
    fused_head: bool = False,
    optimizer: str = "adamw",
) -> int | None:
    """The largest divisor of the per-process rows whose estimate fits; None if even 1 does not
    (or the free memory is unknown)."""
    if free is None:
        return None
    fitting = [
        d
        for d in range(1, per_rank_rows + 1)
        if per_rank_rows % d == 0
        and memory_estimate(
            mc,
            n_params,
            seq_len,
            d,
            half,
            free,
            strategy=strategy,
            world=world,
            checkpointing=checkpointing,
            fused_head=fused_head,
            optimizer=optimizer,
        ).fits
    ]
    return fitting[-1] if fitting else None


def micro_batch_memory_allows(
    mc: GPTConfig,
    n_params: int,
    seq_len: int,
    half: bool,
    free: int | None,
    limit: int = 1 << 16,
    *,
    strategy: str = "ddp",
    world: int = 1,
    checkpointing: bool = False,
    fused_head: bool = False,
    optimizer: str = "adamw",
) -> int | None:
    """The largest micro-batch (any number of rows, up to `limit`) whose estimate fits; None if even 1
    does not (or the free memory is unknown). The estimate grows with the rows: a binary search."""

    def fits(rows: int) -> bool | None:
        return memory_estimate(
            mc,
            n_params,
            seq_len,
            rows,
            half,
            free,
            strategy=strategy,
            world=world,
            checkpointing=checkpointing,
            fused_head=fused_head,
            optimizer=optimizer,
        ).fits

    if free is None or not fits(1):
        return None
    lo, hi = 1, limit
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
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
    optimizer_s: float  # one step of the run's optimizer(s)
    passes: int = 1  # timed passes the median is of
    optimizer: str = "adamw"  # the optimizer timed (--optimizer)
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
        from gptkit.train.config import OPTIMIZER_NAMES

        return f"the median of {self.passes} timed passes ({self.row_s * 1e3:.0f} ms a row) + one {OPTIMIZER_NAMES[self.optimizer]} step"


def time_cpu_step(
    mc: GPTConfig, seq_len: int, precision: str, max_rows: int = MAX_TIMED_ROWS, optimizer: str = "adamw"
) -> CpuTiming:
    """Time the real model on this CPU: a micro-batch forward/backward and one step of the run's
    optimizer (build_optimizers: fused AdamW, or Muon with AdamW), the way the trainer runs them.

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
    from gptkit.train.config import TrainConfig
    from gptkit.train.loss import fuse_loss
    from gptkit.train.optim import build_optimizers

    prec = resolve_precision(precision, torch.device("cpu"))
    model = GPT(mc)
    train_model = fuse_loss(model) if prec.name == "fp32" else model
    optimizers = build_optimizers(TrainConfig(optimizer=optimizer), model, torch.device("cpu"), prec.name)
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
    for opt in optimizers:
        opt.step()  # warm-up: allocates the moments
    t = time.perf_counter()
    for opt in optimizers:
        opt.step()
    return CpuTiming(
        statistics.median(times) / rows,
        time.perf_counter() - t,
        passes=len(times),
        spread=max(times) / min(times),
        cpu_share=share,
        optimizer=optimizer,
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
