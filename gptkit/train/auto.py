"""A CPU-sized run for a bare `gptkit train` on a machine without a GPU.

The GPT-2 recipe (124M parameters, 10B tokens) would take months on a laptop. Without a GPU and
without --preset, the run is sized from the data and the machine; a model shape (--n-layer ...),
--seq-len and a batch (--batch-tokens, --micro-batch) of the user's are kept and timed as given:

- the model: `small` (4 layers, 256 wide) when the data has at least SMALL_MIN_TOKENS training
  tokens and the machine does at least SMALL_MIN_STEPS of it in the time budget; else `tiny`
  (a larger model on less data only memorises it);
- the tokens: the fewer of MAX_EPOCHS passes over the training data and what the machine does in
  TARGET_SECONDS (the budget is filled: Chinchilla's 20 tokens per parameter is the compute-optimal
  rule for large models, and stopped a 20-minute laptop run after 3 minutes at 2.5 nats per byte) at a measured tokens/s
  (the median of several timed micro-batches of the real model: gptkit.train.estimate.time_cpu_step),
  at least MIN_STEPS; `--plan` shows the same timing and estimate;
- the micro-batch: the preset's, lowered until the memory estimate fits the free RAM;
- warmup 5% of the steps; validation ~10 times, samples 4 times, checkpoints 5 times per run.

The choice is written into the run's config.json like any setting; a resume reads it back and
never sizes again.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from gptkit.model import GPTConfig, get_preset
from gptkit.train.presets import TRAIN_PRESETS

SMALL_MIN_TOKENS = 1_000_000
SMALL_MIN_STEPS = 300
MAX_EPOCHS = 4
TARGET_SECONDS = 20 * 60
MIN_STEPS = 50
WARMUP_FRAC = 0.05
CANDIDATES = ("small", "tiny")  # largest first
# The optimizer of an auto-sized run (issue 21 owns this choice, not the sizing): Muon for the block
# matrices, AdamW at the recipe's --lr for the rest. scripts/bench_recipe.py measured it on a byte-level
# 4x4x128 model on 2 CPU cores: at --muon-lr 0.016 (its best of 4 points) Muon reached AdamW's best
# validation loss well before the end of the same token budget (README, "Muon against AdamW").
AUTO_OPTIMIZER = dict(optimizer="muon", muon_lr=0.016)


@dataclass
class Machine:
    """What the choice depends on: measured or read, passed in so tests can fix it."""

    train_tokens: int
    vocab_size: int
    free_ram: int | None  # bytes
    processes: int


@dataclass
class AutoChoice:
    preset: str
    settings: dict  # TrainConfig fields, between the preset's and the user's in precedence
    tok_per_s: float
    est_seconds: float
    line: str  # what was picked and why, one line
    step_s: float = 0.0  # the estimated time of one optimizer step (est_seconds = steps x this)
    basis: str = ""  # how step_s was measured
    busy: str | None = None  # the timing saw a busy machine: one line saying so (estimate.CpuTiming.busy_note)


def steps_for(train_tokens: int, n_params: int, batch_tokens: int, tok_per_s: float) -> int:
    """Optimizer steps: the fewer of MAX_EPOCHS passes over the data and TARGET_SECONDS of work, but
    at least MIN_STEPS. (`n_params` is not a limit: a short run fills its time budget.)"""
    tokens = min(MAX_EPOCHS * train_tokens, tok_per_s * TARGET_SECONDS)
    return max(MIN_STEPS, int(tokens // batch_tokens))


def schedule_for(steps: int) -> dict:
    """Warmup, validation, samples and checkpoints scaled to the run's length."""
    return dict(
        max_steps=steps,
        warmup_steps=max(1, round(WARMUP_FRAC * steps)),
        eval_every=max(1, steps // 10),
        sample_every=max(1, steps // 4),
        checkpoint_every=max(1, steps // 5),
    )


def fit_micro_batch(mc: GPTConfig, n_params: int, seq_len: int, rows_per_rank: int, want: int, free: int | None) -> int:
    """The largest divisor of rows_per_rank, at most `want`, whose memory estimate fits."""
    from gptkit.train.estimate import memory_estimate

    options = [d for d in range(1, rows_per_rank + 1) if rows_per_rank % d == 0 and d <= want]
    if free is None:
        return options[-1]
    fitting = [
        d
        for d in options
        if memory_estimate(mc, n_params, seq_len, d, False, free, optimizer=str(AUTO_OPTIMIZER["optimizer"])).fits
    ]
    return fitting[-1] if fitting else 1


def choose(
    machine: Machine,
    precision: str = "auto",
    timer=None,
    max_steps: int | None = None,
    shape: dict | None = None,
    seq_len: int | None = None,
    batch_tokens: int | None = None,
    micro_batch: int | None = None,
) -> AutoChoice:
    """Pick the run. `timer(model_config, seq_len) -> seconds per row` (default: time the real model).
    max_steps: the user's; the model and batch are still picked, the schedule scaled to it.
    shape: GPTConfig fields the user gave (--n-layer ...): that model is timed and trained, and only
    the recipe (sequence length, batch, steps) is picked; a sequence never exceeds its block size.
    seq_len: the user's --seq-len, used instead of the recipe's. batch_tokens, micro_batch: the user's
    batch (nanoGPT's CPU recipe gives both): kept, and the rest (model, steps, schedule) sized around it."""
    from gptkit.model import param_count
    from gptkit.train.estimate import human_count, human_duration, time_cpu_step

    timings: list = []  # the real timings (CpuTiming), when no timer is given: the last is the chosen model's

    def measure(mc: GPTConfig, T: int) -> float:
        timings.append(time_cpu_step(mc, T, precision, optimizer=str(AUTO_OPTIMIZER["optimizer"])))
        return timings[-1].row_s

    timer = timer or measure
    chosen = None
    for name in CANDIDATES:
        last = name == CANDIDATES[-1]
        if not last and machine.train_tokens < SMALL_MIN_TOKENS:
            continue  # too little data for it: not worth timing
        base = TRAIN_PRESETS[name]
        T = seq_len or base["seq_len"]
        mc = get_preset(name).with_vocab(machine.vocab_size)
        if shape:
            T = min(T, shape.get("block_size") or T)
        batch = base["batch_tokens"]
        if batch_tokens:
            batch = batch_tokens
        elif T != base["seq_len"] or micro_batch:  # about the recipe's tokens, in whole micro-batches of T-token rows
            unit = T * machine.processes * (micro_batch or base["micro_batch"])
            batch = max(1, round(batch / unit)) * unit
        if shape or seq_len:
            mc = replace(mc, **{"block_size": T, **(shape or {})})
        n_params = param_count(mc, padded=True)
        tok_per_s = T / timer(mc, T)
        if last or tok_per_s * TARGET_SECONDS / batch >= SMALL_MIN_STEPS:
            chosen = (name, mc, n_params, T, batch, tok_per_s)
            break
    assert chosen is not None
    name, mc, n_params, T, batch, tok_per_s = chosen
    steps = max_steps or steps_for(machine.train_tokens, n_params, batch, tok_per_s)
    rows_per_rank = batch // T // machine.processes or 1
    free = machine.free_ram // machine.processes if machine.free_ram else None
    mb = micro_batch or fit_micro_batch(mc, n_params, T, rows_per_rank, TRAIN_PRESETS[name]["micro_batch"], free)
    settings = dict(schedule_for(steps), micro_batch=mb, seq_len=T, batch_tokens=batch, **AUTO_OPTIMIZER)
    total = steps * batch
    timing = timings[-1] if timings else None
    # The one estimate, printed here and by --plan (which reuses this timing): rows and optimizer steps.
    step_s = batch / tok_per_s + (timing.optimizer_s if timing else 0.0)
    est = steps * step_s
    epochs = total / max(1, machine.train_tokens)
    if name != CANDIDATES[-1] or machine.train_tokens < SMALL_MIN_TOKENS:
        why = f"{human_count(machine.train_tokens)} training tokens"
    else:
        why = f"{CANDIDATES[0]} would manage < {SMALL_MIN_STEPS} steps in {human_duration(TARGET_SECONDS)}"
    what = f"your {mc.shape} model with the {name} recipe" if shape else name
    line = (
        f"no GPU, no --preset: {what} ({human_count(n_params)} params; {why}), {steps} steps x "
        f"{batch:,} tokens ({epochs:.1f} epochs), ~{human_duration(est)} at a measured "
        f"{human_count(tok_per_s)} tok/s; --preset gpt2 for the 124M recipe"
    )
    basis = timing.describe() if timing else "the timer given"
    return AutoChoice(name, settings, tok_per_s, est, line, step_s, basis, timing.busy_note() if timing else None)
