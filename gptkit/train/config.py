"""Training configuration: one dataclass for the run, one for the launch, presets per model size.

Precedence, lowest first: the preset's defaults, the checkpoint being resumed, `--config FILE`
(TOML or YAML, each value checked against its field's type), then the flags given on the command
line (TrainOverrides / LaunchOverrides: typed, None = not given). The resolved TrainConfig is
written into the run directory (config.json) and into every checkpoint.

The model's shape (n_layer ... ln_eps) is data like the rest: a preset names defaults for it, any
field can be given, and a new run's block size is its seq_len. A resumed run takes its checkpoint's
shape and --init-from takes the weights' (a different value given for either is refused); the
vocabulary always comes from the data's tokenizer.

Nothing here imports torch: the CLI validates a config before torchrun starts any process.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from types import UnionType
from typing import Any, ClassVar, Union, get_args, get_origin, get_type_hints

from gptkit.errors import GptkitError
from gptkit.train.presets import TRAIN_PRESETS

SCHEDULES = ("cosine", "wsd")
# --optimizer's choices, each with its name in prose (Muon runs AdamW beside it for the embeddings and gains).
# Set by `gptkit train` for its workers; absent when someone runs torchrun by hand (main, trainer).
LAUNCHER_ENV = "GPTKIT_LAUNCHER"
OPTIMIZER_NAMES = {"adamw": "AdamW", "muon": "Muon (+ AdamW)"}
OPTIMIZERS = tuple(OPTIMIZER_NAMES)
# torch.optim.Muon's two learning-rate adjustments by matrix shape (rows A, columns B).
MUON_ADJUST = ("original", "match_rms_adamw")
MUON_QKV = ("whole", "split")
PARALLEL = ("auto", "ddp", "fsdp")  # the strategies: gptkit/train/parallel.py
CHECKPOINTING = ("auto", "none", "blocks")

# The `gptkit train --help` panels, in the order shown.
RUN, MODEL, WHERE, OPTIM, EVAL = "Run", "Model", "Where", "Optimisation", "Evaluation and logging"
# Written out, not computed, so that `gptkit --help` never imports torch; test_model_shape checks it
# against gptkit.model.preset_sizes().
PRESET_SIZES = "gpt2 124.4M, gpt2-medium 354.8M, gpt2-large 774.0M, gpt2-xl 1557.6M, gpt2-muon 124.4M, small 16.1M, tiny 3.3M, char 7.2M"


def setting(
    default: Any,
    help: str,
    panel: str,
    *,
    flag: str | None = None,
    names: tuple[str, ...] = (),
    metavar: str | None = None,
    model: str | None = None,
) -> Any:
    """A config field and its command-line option, declared together: the `gptkit train` option
    (--FIELD-NAME unless `flag`; `names` adds short forms and aliases; a bool is --X/--no-X), the
    overrides and the config-file key are all derived from it (gptkit.cli.settings). A model-shape
    setting (panel MODEL) is the GPTConfig field `model` (default: the same name): SHAPE_KEYS."""
    meta = {"help": help, "panel": panel, "flag": flag, "names": names, "metavar": metavar}
    if panel == MODEL:
        meta["model"] = model
    return field(default=default, metadata=meta)


def option_flag(f: Any) -> str:
    """The long option of a config field: `--keep` for keep_checkpoints, else --field-name."""
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


@dataclass
class TrainConfig:
    """Everything that decides what a run computes. Each field is one setting, declared here once:
    its default, its `gptkit train` option and help, and its config-file key."""

    preset: str = setting(
        "gpt2",
        f"Named defaults for the model shape and the recipe: {PRESET_SIZES} parameters (GPT-2 vocabulary). "
        "Default: gpt2 with a GPU; on a CPU, none: a run sized for this machine and the data (tiny or small, "
        "its steps filling a time budget; the line before the first step says what it picked).",
        RUN,
        names=("-p",),
        metavar="PRESET",
    )  # gptkit.model.PRESETS (shape) and train/presets.py (recipe)
    # model shape (SHAPE_KEYS): GPT-2 124M's; preset_config gives the preset's
    n_layer: int = setting(12, "Transformer blocks.", MODEL, metavar="N")
    n_head: int = setting(12, "Attention heads per block.", MODEL, metavar="N")
    n_embd: int = setting(768, "Width (embedding size); a multiple of --n-head.", MODEL, metavar="N")
    block_size: int | None = setting(  # None = seq_len, so a new run trains every position
        None, "Context length: position embeddings (default: --seq-len; at least --seq-len).", MODEL, metavar="N"
    )
    dropout: float = setting(0.0, "Dropout probability (0 = off).", MODEL, metavar="P")
    bias: bool = setting(True, "Biases in the Linear and LayerNorm layers (GPT-2: on).", MODEL)
    activation: str = setting(
        "gelu_new",
        "GELU form: gelu_new (tanh approximation, GPT-2's; alias tanh) or gelu (exact, nanoGPT's; alias exact).",
        MODEL,
        metavar="NAME",
    )
    ln_eps: float = setting(1e-5, "LayerNorm epsilon.", MODEL, metavar="EPS", model="layer_norm_epsilon")
    data: str | None = setting(  # None = the newest tokenized data set
        None,
        "Tokenized data: a directory or a name under shards/ (default: the newest).",
        RUN,
        names=("-d",),
        metavar="DIR",
    )
    init_from: str | None = setting(
        None,
        "Start from these weights (a gptkit checkpoint or run dir, e.g. made by `gptkit convert`): fresh optimizer, step 0.",
        RUN,
        metavar="PATH",
    )
    seq_len: int = setting(1024, "Tokens per sequence.", OPTIM, metavar="N")
    batch_tokens: int = setting(  # 2**19, the same for any number of GPUs
        524_288, "Global batch in tokens (all processes, all micro-steps).", OPTIM, metavar="N"
    )
    micro_batch: int | None = setting(  # None = the preset's, fitted to the batch
        None, "Sequences per process per micro-step.", OPTIM, metavar="N"
    )
    max_steps: int = setting(19_073, "Optimizer steps in the whole run.", OPTIM, metavar="N")  # 10B tokens at 2**19
    # AdamW and the learning-rate schedule
    lr: float = setting(6e-4, "Peak learning rate.", OPTIM, metavar="LR")
    min_lr_ratio: float = setting(0.1, "The schedule ends at --lr times this.", OPTIM, metavar="R")
    warmup_steps: int = setting(715, "Linear warmup steps.", OPTIM, metavar="N")
    schedule: str = setting("cosine", "cosine or wsd (warmup-stable-decay).", OPTIM, metavar="NAME")
    decay_frac: float = setting(0.2, "WSD: the last fraction of the steps decays linearly.", OPTIM, metavar="F")
    weight_decay: float = setting(
        0.1, "Weight decay (matrices and embeddings; Muon's matrices too).", OPTIM, metavar="WD"
    )
    beta1: float = setting(0.9, "AdamW beta1.", OPTIM, metavar="B")
    beta2: float = setting(0.95, "AdamW beta2.", OPTIM, metavar="B")
    eps: float = setting(1e-8, "AdamW epsilon.", OPTIM, metavar="EPS")
    optimizer: str = setting(
        "adamw",
        "adamw, or muon: Muon (momentum, then a Newton-Schulz orthogonalized update) for the 2-D weights in the "
        "blocks; AdamW at --lr for the embeddings (so the tied head), biases and LayerNorm gains.",
        OPTIM,
        metavar="NAME",
    )
    muon_lr: float | None = setting(  # None = --lr: with match_rms_adamw, Muon shares AdamW's rate
        None, "Muon: peak learning rate (default: --lr).", OPTIM, metavar="LR"
    )
    muon_momentum: float = setting(0.95, "Muon: momentum.", OPTIM, metavar="M")
    muon_nesterov: bool = setting(True, "Muon: Nesterov momentum.", OPTIM)
    muon_adjust_lr: str = setting(
        "match_rms_adamw",
        "Muon: the learning rate per matrix shape (rows A x columns B): match_rms_adamw (0.2*sqrt(max(A,B)), "
        "Moonshot's: updates of AdamW's size, so Muon shares --lr and --weight-decay) or original "
        "(sqrt(max(1,A/B)), Keller Jordan's; wants a --muon-lr near 0.02).",
        OPTIM,
        metavar="NAME",
    )
    muon_qkv: str = setting(
        "whole",
        "Muon: orthogonalize attention's fused c_attn (3C x C) whole, or split into its Q, K and V parts.",
        OPTIM,
        metavar="HOW",
    )
    grad_clip: float = setting(1.0, "Clip the gradient norm here (0: no clipping).", OPTIM, metavar="NORM")
    # device and speed
    device: str = setting("auto", "auto, cpu, cuda or mps.", WHERE, metavar="DEVICE")
    precision: str = setting(
        "auto", "auto (bf16 only where the hardware runs it natively), fp32, bf16, fp16.", WHERE, metavar="PRECISION"
    )
    compile: bool | None = setting(None, "torch.compile (default: on for CUDA).", WHERE)
    seed: int = setting(1337, "Seed of the weights, the data order and dropout.", OPTIM, metavar="N")
    # evaluation, samples, checkpoints
    eval_every: int = setting(250, "Validation loss every N steps (off: --eval-tokens 0).", EVAL, metavar="N")
    eval_tokens: int = setting(  # a fixed validation budget (20 global batches)
        10_485_760, "Validation budget in tokens (0 = off).", EVAL, metavar="N"
    )
    hellaswag_every: int = setting(250, "HellaSwag every N steps (0 = off).", EVAL, metavar="N")
    hellaswag_limit: int | None = setting(  # None = all 10,042
        None, "Only the first N HellaSwag examples.", EVAL, metavar="N"
    )
    sample_every: int = setting(250, "A short sample every N steps (off: --sample-tokens 0).", EVAL, metavar="N")
    sample_tokens: int = setting(32, "Tokens per sample (0 = no samples).", EVAL, metavar="N")
    sample_prompt: str = setting("Hello, I'm a language model,", "The prompt samples start from.", EVAL, metavar="TEXT")
    sample_temperature: float = setting(1.0, "Temperature of the samples.", EVAL, metavar="T")
    checkpoint_every: int = setting(1000, "Checkpoint every N steps (and at the end).", EVAL, metavar="N")
    keep_checkpoints: int = setting(3, "Keep the last K checkpoints (0 = all).", EVAL, flag="--keep", metavar="K")
    log_every: int = setting(1, "Log line every N steps when not on a terminal.", EVAL, metavar="N")
    tensorboard: bool = setting(False, "Also log to TensorBoard.", EVAL)
    wandb: str | None = setting(None, "Also log to this wandb project.", EVAL, metavar="PROJECT")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, source: str = "config", written_by: str | None = None) -> TrainConfig:
        """A config gptkit wrote (a run's, a checkpoint's). A setting this version does not know was
        written by a later one: refused, never dropped. `written_by`: the gptkit version that wrote it."""
        return cls(**_known(d, cls, source, written_by))


@dataclass
class LaunchConfig:
    """How many processes where. Not part of the optimisation, so it is never taken from a checkpoint."""

    gpus: int | None = setting(None, "GPUs on this node (default: all; 0 = CPU).", WHERE, metavar="N")
    nproc: int = setting(1, "CPU processes on this node (gloo).", WHERE, metavar="N")
    nodes: int = setting(1, "Number of nodes.", WHERE, names=("--nnodes",), metavar="N")
    node_rank: int = setting(0, "This node's rank; 0 hosts the rendezvous.", WHERE, metavar="N")
    master_addr: str = setting("127.0.0.1", "Address of node 0.", WHERE, metavar="HOST")
    master_port: int | None = setting(  # None = a free port (single node); several nodes need one
        None, "Rendezvous port on node 0 (needed for several nodes).", WHERE, metavar="PORT"
    )
    watchdog: float | None = setting(
        None,
        "Seconds without progress before a hang is reported and the run stops (0 = off; "
        "default: 10x the median step, at least 5 minutes).",
        WHERE,
        metavar="S",
    )
    collective_timeout: float | None = setting(  # None: watchdog.pg_timeout
        None,
        "Seconds a collective waits for the other ranks before the process group gives up; above every watchdog "
        "allowance (default and minimum: 2 x the largest, 7,200 s with the default phases).",
        WHERE,
        metavar="S",
    )
    max_restarts: int | None = setting(  # None: 0 by hand, 3 under SLURM (train/slurm.py)
        None,
        "Times torchrun restarts the workers after a failure, each resuming from the newest checkpoint "
        "(default: 0; 3 under SLURM).",
        WHERE,
        metavar="N",
    )
    # How the work is spread, not what is computed (the losses are the same): never a checkpoint's.
    parallel: str = setting(
        "auto",
        "ddp (every rank holds the whole model), fsdp (FSDP2: weights, gradients and AdamW state "
        "sharded over the ranks) or auto (the first that fits in memory).",
        WHERE,
        metavar="NAME",
    )
    activation_checkpointing: str = setting(
        "auto",
        "none, blocks (each block recomputed in backward: less memory, about one more forward) or "
        "auto (on only when activations would not fit otherwise).",
        WHERE,
        metavar="MODE",
    )

    def to_dict(self) -> dict:
        return asdict(self)


class _Overrides:
    """Settings given on the command line (or by a script), by field name: a value that is None is
    not given. Derived from a config dataclass (CONFIG), so there is nothing to keep in step: a
    setting given here wins over the preset, the checkpoint being resumed and the config file.
    (A setting whose value may be None cannot be set to None here.)"""

    CONFIG: ClassVar[type]

    def __init__(self, **values: Any):
        unknown = sorted(set(values) - {f.name for f in fields(self.CONFIG)})
        if unknown:
            raise TypeError(f"{type(self).__name__}: unknown setting {unknown[0]!r}")
        self._given = {k: v for k, v in values.items() if v is not None}

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name not in {f.name for f in fields(self.CONFIG)}:
            raise AttributeError(name)
        return self._given.get(name)

    def given(self) -> dict[str, Any]:
        return dict(self._given)

    def apply(self, cfg: Any) -> Any:
        return replace(cfg, **self._given)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self._given.items())})"


class TrainOverrides(_Overrides):
    CONFIG = TrainConfig


class LaunchOverrides(_Overrides):
    CONFIG = LaunchConfig


TRAIN_KEYS = tuple(f.name for f in fields(TrainConfig))
LAUNCH_KEYS = tuple(f.name for f in fields(LaunchConfig))

# --- model shape ---------------------------------------------------------------------------------
# TrainConfig field -> gptkit.model.GPTConfig field: the settings of the Model panel.
SHAPE_KEYS = {f.name: f.metadata["model"] or f.name for f in fields(TrainConfig) if f.metadata.get("panel") == MODEL}
ACTIVATION_ALIASES = {"tanh": "gelu_new", "exact": "gelu"}


def shape_of(model: dict) -> dict[str, Any]:
    """The TrainConfig shape fields of a model config (GPTConfig.to_dict(), e.g. a checkpoint's)."""
    return {k: model[m] for k, m in SHAPE_KEYS.items()}


def model_settings(cfg: TrainConfig) -> dict[str, Any]:
    """GPTConfig keyword arguments for this run's shape (the vocabulary comes from the data)."""
    if cfg.block_size is None:
        raise ValueError("block_size is resolved by resolve_shape before a model is built")
    return {m: getattr(cfg, k) for k, m in SHAPE_KEYS.items()}


def resolve_shape(cfg: TrainConfig) -> TrainConfig:
    """Activation aliases to their names, and a block size for a run that gave none: its seq_len."""
    return replace(
        cfg,
        activation=ACTIVATION_ALIASES.get(cfg.activation, cfg.activation),
        block_size=cfg.seq_len if cfg.block_size is None else cfg.block_size,
    )


def keep_shape(cfg: TrainConfig, shape: dict[str, Any], given: set[str], whose: str) -> TrainConfig:
    """cfg with `shape` (a checkpoint's, or weights'), refusing a different value given for any field
    of it in `given` (the shape settings from the flags and the config file)."""
    for k in SHAPE_KEYS:
        if k in given and k in shape and getattr(cfg, k) != shape[k]:
            flag = "--" + k.replace("_", "-")
            raise GptkitError(
                f"{flag} {getattr(cfg, k)} conflicts with {whose}, which has {k} = {shape[k]}; leave {flag} out"
            )
    return replace(cfg, **shape)


def check_keys(d: dict, known: tuple[str, ...], source: str) -> None:
    unknown = sorted(set(d) - set(known))
    if unknown:
        raise GptkitError(f"{source}: unknown setting {unknown[0]!r}; known: {', '.join(known)}")


def preset_config(name: str) -> TrainConfig:
    from gptkit.model import get_preset

    shape = shape_of(get_preset(name).to_dict())  # refuses an unknown name
    shape["block_size"] = None  # a new run's is its seq_len (the preset's seq_len = the preset's block size)
    return TrainConfig(preset=name, **shape, **TRAIN_PRESETS.get(name, {}))


def load_config_file(path: str | Path) -> dict:
    """A flat table of TrainConfig / LaunchConfig keys from TOML (.toml) or YAML (.yaml, .yml)."""
    path = Path(path)
    if not path.is_file():
        raise GptkitError(f"--config {path}: no such file")
    text = path.read_text()
    if path.suffix == ".toml":
        import tomllib

        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise GptkitError(f"{path}: invalid TOML ({e})") from None
    elif path.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise GptkitError(f"{path}: reading YAML needs PyYAML (pip install pyyaml), or use TOML") from None
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise GptkitError(f"{path}: invalid YAML ({str(e).splitlines()[0]})") from None
    else:
        raise GptkitError(f"--config {path}: use a .toml, .yaml or .yml file")
    if not isinstance(data, dict):
        raise GptkitError(f"{path}: expected a table of settings at the top level")
    data = {k.replace("-", "_"): v for k, v in data.items()}
    check_keys(data, TRAIN_KEYS + LAUNCH_KEYS, str(path))
    return data


def split_settings(d: dict) -> tuple[dict, dict]:
    return {k: v for k, v in d.items() if k in TRAIN_KEYS}, {k: v for k, v in d.items() if k in LAUNCH_KEYS}


def merge(cfg: TrainConfig, settings: dict[str, Any], source: str) -> TrainConfig:
    """Apply settings read from a file, each value checked against its TrainConfig field's type."""
    return replace(cfg, **check_types(settings, TrainConfig, source))


def check_types(settings: dict[str, Any], cls: type, source: str) -> dict[str, Any]:
    """The settings whose values fit the dataclass field types (an int is taken for a float). A None
    for a field that cannot be None (a bare key in YAML) is dropped: the setting keeps its value."""
    hints = get_type_hints(cls)
    clean: dict[str, Any] = {}
    for k, v in settings.items():
        allowed = get_args(hints[k]) if get_origin(hints[k]) in (Union, UnionType) else (hints[k],)
        if v is None:
            if type(None) in allowed:
                clean[k] = v
            continue
        want = next(t for t in allowed if t is not type(None))
        if want is float and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        if not isinstance(v, want) or (want is int and isinstance(v, bool)):
            raise GptkitError(f"{source}: {k} must be {want.__name__}, got {v!r}")
        clean[k] = v
    return clean


@dataclass
class Plan:
    """The numbers derived from a config and a world size."""

    world_size: int
    micro_batch: int
    grad_accum: int
    rows: int  # sequences per optimizer step, all processes together

    def to_dict(self) -> dict:
        return asdict(self)


def plan_batches(cfg: TrainConfig, world_size: int, micro_batch_given: bool) -> Plan:
    """Micro-batch and gradient accumulation for this world size; the global batch never changes.

    An explicit --micro-batch must divide the work exactly; the preset's is lowered to the largest
    size that does.
    """
    if cfg.batch_tokens % cfg.seq_len:
        raise GptkitError(
            f"--batch-tokens {cfg.batch_tokens} is not a multiple of --seq-len {cfg.seq_len}; "
            f"try {max(1, round(cfg.batch_tokens / cfg.seq_len)) * cfg.seq_len}"
        )
    rows = cfg.batch_tokens // cfg.seq_len
    if rows % world_size:
        raise GptkitError(
            f"the global batch of {rows} sequences ({cfg.batch_tokens} tokens) does not divide over "
            f"{world_size} processes; use a --batch-tokens that is a multiple of {world_size * cfg.seq_len}"
        )
    per_rank = rows // world_size
    mb = cfg.micro_batch or per_rank
    if micro_batch_given:
        if per_rank % mb:
            raise GptkitError(
                f"--micro-batch {mb} does not divide the {per_rank} sequences each of {world_size} processes "
                f"gets per step ({cfg.batch_tokens} tokens / {cfg.seq_len} / {world_size}); "
                f"use one of {', '.join(map(str, divisors(per_rank)[-6:]))}"
            )
    else:
        mb = max(d for d in divisors(per_rank) if d <= max(1, mb))
    return Plan(world_size=world_size, micro_batch=mb, grad_accum=per_rank // mb, rows=rows)


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def validate(cfg: TrainConfig) -> None:
    """Value checks that need no data and no torch."""
    from gptkit.model import ACTIVATIONS, get_preset

    get_preset(cfg.preset)  # refuses an unknown name
    if cfg.seq_len < 1:
        raise GptkitError(f"--seq-len must be at least 1 (got {cfg.seq_len})")
    if cfg.block_size is not None and cfg.block_size < cfg.seq_len:
        raise GptkitError(
            f"--block-size {cfg.block_size} is smaller than --seq-len {cfg.seq_len}; "
            "the model must see a whole sequence (raise --block-size or lower --seq-len)"
        )
    for name in ("n_layer", "n_head", "n_embd"):
        if getattr(cfg, name) < 1:
            raise GptkitError(f"--{name.replace('_', '-')} must be at least 1 (got {getattr(cfg, name)})")
    if cfg.n_embd % cfg.n_head:
        raise GptkitError(
            f"--n-embd {cfg.n_embd} is not divisible by --n-head {cfg.n_head} (each head gets n_embd / n_head); "
            f"try --n-embd {-(-cfg.n_embd // cfg.n_head) * cfg.n_head}"
        )
    if not 0 <= cfg.dropout < 1:
        raise GptkitError(f"--dropout must be in [0, 1) (got {cfg.dropout})")
    if not cfg.ln_eps > 0:
        raise GptkitError(f"--ln-eps must be positive (got {cfg.ln_eps})")
    if ACTIVATION_ALIASES.get(cfg.activation, cfg.activation) not in ACTIVATIONS:
        raise GptkitError(
            f"unknown --activation {cfg.activation!r}; choose gelu_new (tanh approximation, GPT-2's) "
            "or gelu (exact, nanoGPT's); tanh and exact name them too"
        )
    off = {
        "eval_every": "; --eval-tokens 0 turns validation off",
        "sample_every": "; --sample-tokens 0 turns samples off",
    }
    for name in ("batch_tokens", "max_steps", "eval_every", "sample_every", "checkpoint_every", "log_every"):
        if getattr(cfg, name) < 1:
            raise GptkitError(
                f"{name.replace('_', '-')} must be at least 1 (got {getattr(cfg, name)}){off.get(name, '')}"
            )
    if cfg.micro_batch is not None and cfg.micro_batch < 1:
        raise GptkitError(f"--micro-batch must be at least 1 (got {cfg.micro_batch})")
    if cfg.warmup_steps < 0 or cfg.eval_tokens < 0 or cfg.hellaswag_every < 0 or cfg.sample_tokens < 0:
        raise GptkitError("warmup_steps, eval_tokens, hellaswag_every and sample_tokens cannot be negative")
    check_optimisation(cfg)


def check_optimisation(cfg: TrainConfig) -> None:
    """Settings torch or numpy would refuse only inside a worker, or take silently and train wrongly
    (a negative --grad-clip flips every gradient). None depends on the model or the batch, so the
    resolver checks them before the CPU auto-sizing times anything."""
    from gptkit.device import PRECISIONS

    if cfg.schedule not in SCHEDULES:
        raise GptkitError(f"unknown --schedule {cfg.schedule!r}; choose one of: {', '.join(SCHEDULES)}")
    if not cfg.lr > 0:
        raise GptkitError(f"--lr must be positive (got {cfg.lr})")
    if not 0 <= cfg.min_lr_ratio <= 1 or not 0 < cfg.decay_frac <= 1:
        raise GptkitError("min_lr_ratio must be in [0, 1] and decay_frac in (0, 1]")
    if cfg.precision not in PRECISIONS:
        raise GptkitError(f"unknown --precision {cfg.precision!r}; choose one of: {', '.join(PRECISIONS)}")
    if cfg.grad_clip < 0:
        raise GptkitError(f"--grad-clip cannot be negative (got {cfg.grad_clip}); 0 turns clipping off")
    if cfg.seed < 0:
        raise GptkitError(f"--seed must be 0 or more (got {cfg.seed})")
    if cfg.weight_decay < 0:
        raise GptkitError(f"--weight-decay cannot be negative (got {cfg.weight_decay})")
    for name in ("beta1", "beta2"):
        if not 0 <= getattr(cfg, name) < 1:
            raise GptkitError(f"{name} must be in [0, 1) (got {getattr(cfg, name)})")
    if not cfg.eps > 0:
        raise GptkitError(f"eps must be positive (got {cfg.eps})")
    if cfg.optimizer not in OPTIMIZERS:
        raise GptkitError(f"unknown --optimizer {cfg.optimizer!r}; choose one of: {', '.join(OPTIMIZERS)}")
    if cfg.muon_lr is not None and not cfg.muon_lr > 0:
        raise GptkitError(f"--muon-lr must be positive (got {cfg.muon_lr})")
    if not 0 <= cfg.muon_momentum < 1:
        raise GptkitError(f"--muon-momentum must be in [0, 1) (got {cfg.muon_momentum})")
    if cfg.muon_adjust_lr not in MUON_ADJUST:
        raise GptkitError(f"unknown --muon-adjust-lr {cfg.muon_adjust_lr!r}; choose one of: {', '.join(MUON_ADJUST)}")
    if cfg.muon_qkv not in MUON_QKV:
        raise GptkitError(f"unknown --muon-qkv {cfg.muon_qkv!r}; choose one of: {', '.join(MUON_QKV)}")
    if cfg.keep_checkpoints < 0:
        raise GptkitError(f"--keep must be 0 (keep all) or more (got {cfg.keep_checkpoints})")
    if cfg.sample_temperature < 0:
        raise GptkitError(f"--sample-temperature must be 0 (greedy) or more (got {cfg.sample_temperature})")
    if cfg.hellaswag_limit is not None and cfg.hellaswag_limit < 1:
        raise GptkitError(f"--hellaswag-limit must be at least 1 (got {cfg.hellaswag_limit})")


def check_parallel(launch: LaunchConfig, cfg: TrainConfig, device_type: str) -> None:
    """--parallel and --activation-checkpointing: one line before any process starts."""
    if launch.parallel not in PARALLEL:
        raise GptkitError(f"unknown --parallel {launch.parallel!r}; choose one of: {', '.join(PARALLEL)}")
    if launch.activation_checkpointing not in CHECKPOINTING:
        raise GptkitError(
            f"unknown --activation-checkpointing {launch.activation_checkpointing!r}; "
            f"choose one of: {', '.join(CHECKPOINTING)}"
        )
    if launch.parallel != "fsdp":
        return
    if device_type == "mps":
        raise GptkitError("--parallel fsdp needs CUDA GPUs or CPU processes (gloo); on MPS use --parallel ddp")
    if cfg.precision == "fp16":
        # FSDP2's sharded gradients need a sharded-aware grad scaler, which gptkit does not wire in
        raise GptkitError(
            "--precision fp16 does not go with --parallel fsdp (no FSDP2 grad scaler); "
            "use --precision auto (bf16 where the GPU has it, else fp32) or --parallel ddp"
        )


def parallel_candidates(launch: LaunchConfig, cfg: TrainConfig, device_type: str) -> str:
    """What `--parallel auto` may choose from: DDP alone where FSDP2 cannot serve the run (fp16, MPS:
    check_parallel), else auto; a strategy named stays. The launcher and `--plan` both ask here."""
    if launch.parallel == "auto" and (cfg.precision == "fp16" or device_type == "mps"):
        return "ddp"
    return launch.parallel


@dataclass
class Settled:
    """A TrainConfig resolved from preset, auto-sizing, checkpoint, file and flags, with what decided it."""

    cfg: TrainConfig
    launch: LaunchConfig
    file_train: dict
    device_type: str
    nproc: int
    run_dir: Path | None
    ckpt: Path | None
    vocab: int | None  # None: no data found (a plan may go on with GPT-2's vocabulary)
    train_tokens: int | None
    auto: dict | None  # the CPU auto-sizing's choice: {"line", "tok_per_s", "est_seconds"}
    micro_batch_given: bool = False  # by a flag or the config file (else the preset's, fitted)
    found: Any = None  # resolve.Found: what was read on disk, for the rest of the resolution to reuse
    cluster: Any = None  # slurm.Cluster: what SLURM's variables gave the launch settings, or None

    @property
    def auto_line(self) -> str | None:
        return self.auto["line"] if self.auto else None


@dataclass
class ResolvedRun:
    """Everything a worker needs, written to RUN/config.json by the launcher."""

    train: TrainConfig
    launch: LaunchConfig
    plan: Plan
    data_dir: str
    run_dir: str
    resume_from: str | None = None
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        from gptkit import __version__

        return {
            "gptkit_version": __version__,  # names the writer when a later file has settings this one lacks
            "train": self.train.to_dict(),
            "launch": self.launch.to_dict(),
            "plan": self.plan.to_dict(),
            "data_dir": self.data_dir,
            "run_dir": self.run_dir,
            "resume_from": self.resume_from,
            **self.extra,
        }

    @classmethod
    def from_dict(cls, d: dict, source: str = "run config") -> ResolvedRun:
        known = {"gptkit_version", "train", "launch", "plan", "data_dir", "run_dir", "resume_from"}
        return cls(
            train=TrainConfig.from_dict(d["train"], source, written_by=d.get("gptkit_version")),
            launch=LaunchConfig(**_known(d["launch"], LaunchConfig, source, d.get("gptkit_version"))),
            plan=Plan(**_known(d["plan"], Plan, source, d.get("gptkit_version"))),
            data_dir=d["data_dir"],
            run_dir=d["run_dir"],
            resume_from=d.get("resume_from"),
            extra={k: v for k, v in d.items() if k not in known},
        )

    @classmethod
    def read(cls, path: str | Path) -> ResolvedRun:
        return cls.from_dict(json.loads(Path(path).read_text()), source=str(path))


def _known(d: dict, cls: type, source: str, written_by: str | None) -> dict:
    """The dict, refusing a key the dataclass `cls` lacks (written by a later gptkit) in one line."""
    from gptkit import __version__

    unknown = sorted(set(d) - {f.name for f in fields(cls)})
    if unknown:
        who = f"gptkit {written_by}" if written_by else "an unknown gptkit version"
        raise GptkitError(
            f"{source}: unknown setting {unknown[0]!r}, written by {who}; "
            f"this is gptkit {__version__}: upgrade gptkit to read it"
        )
    return d
