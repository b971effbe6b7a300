"""`gptkit train --plan`: what a run will cost before anything runs.

The numbers, per run: parameters, tokens per step, steps, total tokens, tokens per parameter, memory
per process against what is free, the largest micro-batch that fits, and the wall time.

Wall time on a CPU is measured: one micro-batch forward/backward of the real model (a few rows,
scaled linearly to the step) and one step of its optimizer (AdamW or Muon), timed in this process with all its cores. On a
GPU it is estimated: the training FLOPs over the data-sheet peak (gptkit.train.mfu) at an assumed
MFU, which the plan states. `--gpu-type NAME` plans for GPUs this machine does not have.

The plan is of a run already resolved (resolve.settle_config; resolve.make_plan does both): it never
resolves settings itself. Memory and time come from estimate.py.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from gptkit.errors import GptkitError
from gptkit.model import GPTConfig, flops_per_token, param_count
from gptkit.train.config import Settled
from gptkit.train.estimate import (
    GPT2_VOCAB,
    LONG_CPU_RUN_S,
    Memory,
    choose_parallel,
    free_ram,
    gb_,
    gpu_memory_gb,
    human_count,
    human_duration,
    largest_fitting_micro_batch,
    memory_estimate,
    micro_batch_memory_allows,
    time_cpu_step,
)

# Assumed MFU of a GPU run (torch.compile, bf16, flash attention, the 124M model): nanoGPT and
# llm.c report 40-50% on A100 and H100 for this size; the lower end is the honest guess.
ASSUMED_GPU_MFU = 0.40


# --- the plan ------------------------------------------------------------------------------------
@dataclass
class ParallelOption:
    """One strategy (with or without activation checkpointing): its memory per GPU at the run's
    micro-batch, and the largest micro-batch that fits."""

    strategy: str  # ddp | fsdp
    checkpointing: bool
    memory: Memory
    max_micro_batch: int | None


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
    memory_micro_batch: int | None = None  # the largest micro-batch the memory estimate allows, any batch
    rows_per_process: int | None = None  # a --micro-batch divides these (max_micro_batch: the largest that fits)
    auto: str | None = None  # the CPU auto-sizing's line, when it chose the run
    parallel: str = "ddp"  # what the run would use (--parallel, auto's choice)
    checkpointing: bool = False
    parallel_why: str = ""
    optimizer: str = "adamw"  # --optimizer: its state is in the memory figures
    options: list[ParallelOption] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def plan_of(
    settled: Settled, mc: GPTConfig, *, gpu_type: str | None = None, measure: bool = True, warnings: list[str]
) -> RunPlan:
    """The plan of a resolved run (`mc`: the model it trains). Nothing is written and no process starts.

    gpu_type: plan for `--gpus N` GPUs of this kind (a name in mfu.GPU_PEAK_TFLOPS) instead of this
    machine's. measure=False skips the CPU timing (no wall time). `warnings`: the resolution's, to
    which the plan adds its own."""
    from gptkit.device import precision_policy
    from gptkit.train.config import plan_batches
    from gptkit.train.mfu import GPU_PEAK_TFLOPS, gpu_peak_flops

    notes: list[str] = []
    cfg, launch, device, nproc = settled.cfg, settled.launch, settled.device_type, settled.nproc
    world = nproc * launch.nodes
    batches = plan_batches(cfg, world, micro_batch_given=settled.micro_batch_given)
    if settled.vocab is None:
        notes.append(f"no tokenized data found: GPT-2's vocabulary ({GPT2_VOCAB}) assumed")
    n_params = param_count(mc, padded=True)
    fpt = flops_per_token(mc, cfg.seq_len)
    per_rank = batches.rows // world

    half = False
    if device == "cuda":
        known = [f for f, _ in GPU_PEAK_TFLOPS]
        if gpu_type:
            # as typed without spaces or dashes (rtx4090, h100-pcie): the table's own spelling
            squeeze = {f.replace(" ", "").lower(): f for f in known}
            gpu_type = squeeze.get(gpu_type.replace(" ", "").replace("-", "").lower(), gpu_type)
        name = gpu_type or _local_gpu_name()
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

    from gptkit.train.config import check_parallel, parallel_candidates

    check_parallel(launch, cfg, device)
    asked = parallel_candidates(launch, cfg, device)
    choice = choose_parallel(
        mc,
        n_params,
        cfg.seq_len,
        batches.micro_batch,
        per_rank,
        half,
        free,
        world=world,
        parallel=asked,
        checkpointing=launch.activation_checkpointing,
        fused_head=device == "cpu",
        optimizer=cfg.optimizer,
    )
    if choice.micro_batch != batches.micro_batch:
        batches = plan_batches(replace(cfg, micro_batch=choice.micro_batch), world, micro_batch_given=True)

    def kw(st: str, ac: bool) -> dict:
        # the CPU trainer fuses the head with the loss (train/loss.py): no logits saved
        return {
            "strategy": st,
            "world": world,
            "checkpointing": ac,
            "fused_head": device == "cpu",
            "optimizer": cfg.optimizer,
        }

    options = [
        ParallelOption(
            st,
            ac,
            memory_estimate(mc, n_params, cfg.seq_len, batches.micro_batch, half, free, **kw(st, ac)),
            largest_fitting_micro_batch(mc, n_params, cfg.seq_len, per_rank, half, free, **kw(st, ac)),
        )
        for st in ("ddp", "fsdp")
        for ac in (False, True)
    ]
    chosen = next(o for o in options if (o.strategy, o.checkpointing) == (choice.strategy, choice.checkpointing))
    mem, max_mb = chosen.memory, chosen.max_micro_batch
    memory_mb = micro_batch_memory_allows(
        mc, n_params, cfg.seq_len, half, free, **kw(choice.strategy, choice.checkpointing)
    )
    if mem.fits is False:
        fix = f"--micro-batch {max_mb}" if max_mb else "a smaller --preset"
        warnings.append(f"memory: ~{gb_(mem.total)} per process will not fit in {gb_(mem.free)} free; try {fix}")

    step_s = wall_s = None
    if device == "cuda":
        from gptkit.train.mfu import gpu_peak_flops as peak_of

        # fp32 on a GPU with TF32 runs its matmuls in TF32 (device.configure_matmul turns it on
        # wherever bf16 is native, so the trainer and MFU use that peak too)
        kind = "tf32" if prec == "fp32" and native else prec
        peak = peak_of(name, kind)
        if peak:
            step_s = fpt * cfg.batch_tokens / (world * peak * ASSUMED_GPU_MFU)
            label = "fp32 (TF32 matmuls)" if kind == "tf32" else prec
            basis = (
                f"data-sheet {label} peak {peak / 1e12:.0f} TFLOP/s per GPU at an assumed MFU of {ASSUMED_GPU_MFU:.0%}"
            )
        else:
            basis = f"{name} is not in the peak table; no time estimate"
    elif settled.auto and settled.auto.get("step_s"):
        # The auto-sizing timed this very model: its estimate is the plan's (one figure, not two draws).
        step_s = settled.auto["step_s"]
        basis = f"measured here for the auto-sizing: {settled.auto['basis']}, scaled to {batches.rows} rows"
        if settled.auto.get("busy"):
            notes.append(settled.auto["busy"])
    elif measure:
        timing = time_cpu_step(mc, cfg.seq_len, cfg.precision, optimizer=cfg.optimizer)
        step_s = timing.step_s(batches.rows)
        basis = f"measured here: {timing.describe()}, scaled to {batches.rows} rows"
        if timing.busy_note():
            notes.append(str(timing.busy_note()))
    else:
        basis = "not measured"
    if step_s is not None:
        wall_s = step_s * cfg.max_steps
        if device == "cpu" and wall_s > LONG_CPU_RUN_S:
            warnings.append(f"this CPU run is planned at ~{human_duration(wall_s)}, over an hour")
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
        memory_micro_batch=memory_mb,
        rows_per_process=per_rank,
        step_s=step_s,
        wall_s=wall_s,
        time_basis=basis,
        auto=settled.auto_line,
        parallel=choice.strategy,
        checkpointing=choice.checkpointing,
        parallel_why=choice.why,
        optimizer=cfg.optimizer,
        options=options,
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
def _largest_micro_batch(p: RunPlan) -> str:
    """What memory allows, and what of it this batch can use (a micro-batch divides its rows)."""
    if p.memory_micro_batch is None:
        return "?" if p.max_micro_batch is None else f"{p.max_micro_batch} that fits"
    rows = p.rows_per_process
    s = "" if p.memory_micro_batch == 1 else "s"
    line = f"{p.memory_micro_batch:,} row{s} fit in memory"
    if rows is not None and p.max_micro_batch is not None and p.max_micro_batch < p.memory_micro_batch:
        line += f"; this batch's {rows} rows per process allow up to {p.max_micro_batch}"
    return line


def render_plan(p: RunPlan) -> list[str]:
    """The plan as aligned lines for a terminal."""
    from gptkit.train.config import OPTIMIZER_NAMES

    m = p.memory
    state = OPTIMIZER_NAMES[p.optimizer]
    rows = [
        ("model", f"{human_count(p.n_params)} parameters ({p.n_params:,}): {p.shape} (--preset {p.preset})"),
        ("hardware", f"{p.hardware}, {p.precision}"),
        (
            "tokens per step",
            f"{p.tokens_per_step:,} = {p.processes} x {p.micro_batch} x {p.seq_len} x {p.grad_accum} accum",
        ),
        ("steps", f"{p.steps:,}"),
        ("total tokens", f"{human_count(p.total_tokens)} ({p.tokens_per_param:.1f} tokens per parameter)"),
        ("parallel", f"{p.parallel}{' with activation checkpointing' if p.checkpointing else ''} ({p.parallel_why})"),
        (
            "memory / process",
            f"{gb_(m.total)} = weights {gb_(m.weights)} + {state} {gb_(m.optimizer)} + grads {gb_(m.gradients)} "
            f"+ activations {gb_(m.activations)}" + (f" + all-gather {gb_(m.gather)}" if m.gather else ""),
        ),
        (
            "memory available",
            f"{gb_(m.free)}" + ("" if m.fits is None else (" (fits)" if m.fits else " (DOES NOT FIT)")),
        ),
        ("largest micro-batch", _largest_micro_batch(p)),
        (
            "time per step",
            human_duration(p.step_s) if p.step_s is None or p.step_s >= 1 else f"{p.step_s * 1e3:.0f} ms",
        ),
        ("wall time", human_duration(p.wall_s)),
        ("time from", p.time_basis),
    ]
    for o in p.options:  # every strategy, so the choice can be checked
        om = o.memory
        name = f"{o.strategy}{' + checkpointing' if o.checkpointing else ''}"
        fit = "" if om.fits is None else (" fits" if om.fits else " DOES NOT FIT")
        largest = "none fits" if o.max_micro_batch is None else f"largest micro-batch {o.max_micro_batch}"
        rows.append(
            (
                f"  {name}",
                f"{gb_(om.total)}{fit} = weights {gb_(om.weights)} + grads {gb_(om.gradients)} + {state} "
                f"{gb_(om.optimizer)} + activations {gb_(om.activations)} + all-gather {gb_(om.gather)}; "
                + (largest if om.free is not None else "free memory unknown"),
            )
        )
    width = max(len(k) for k, _ in rows)
    out = [f"{k:<{width}}  {v}" for k, v in rows]
    if p.auto:
        out.insert(0, p.auto)
    out += [f"note: {n}" for n in p.notes]
    out += [f"warning: {w}" for w in p.warnings]
    return out
