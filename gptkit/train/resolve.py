"""Resolving a run before anything starts: the run directory, the devices, the config (preset, the
checkpoint being resumed, a config file, the flags; the CPU auto-sizing), the data and --init-from.

Everything a user can get wrong (preset, shape, batch arithmetic, data, port, resume path) is checked
here, before any worker starts, so it fails as one line and leaves existing runs untouched.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from gptkit import names, paths
from gptkit.errors import GptkitError
from gptkit.runs import CONFIG_FILE, named_run, newest_run
from gptkit.train import slurm
from gptkit.train.config import (
    SHAPE_KEYS,
    LaunchConfig,
    LaunchOverrides,
    ResolvedRun,
    Settled,
    TrainConfig,
    TrainOverrides,
    check_optimisation,
    check_parallel,
    check_types,
    keep_shape,
    load_config_file,
    merge,
    model_settings,
    parallel_candidates,
    plan_batches,
    preset_config,
    resolve_shape,
    shape_of,
    split_settings,
    validate,
)

if TYPE_CHECKING:
    from gptkit.model import GPTConfig
    from gptkit.train.plan import RunPlan


# --- run directory and resume --------------------------------------------------------------------
def resolve_run_dir(
    name: str | None,
    out: str | Path | None,
    resume: str | None,
    preset: str,
    warn: Callable[[str], object] = lambda m: None,
) -> tuple[Path, Path | None]:
    """(run directory, checkpoint to resume from or None): resumed_run's, its checkpoint verified
    (`warn` gets each checkpoint skipped, and the note for one without checksums)."""
    from gptkit.checkpoint import latest_checkpoint

    run_dir, ckpt = resumed_run(name, out, resume, verify=warn)
    if run_dir is None:
        run_dir = paths.runs_dir(f"{preset}-{time.strftime('%Y%m%d-%H%M%S')}")
    if ckpt is None and latest_checkpoint(run_dir) is not None:
        raise GptkitError(
            f"{run_dir} already holds checkpoints; continue it with --resume auto, or pick another --name"
        )
    return run_dir, ckpt


def resumed_run(
    name: str | None, out: str | Path | None, resume: str | None, verify: Callable[[str], object] | None = None
) -> tuple[Path | None, Path | None]:
    """(the run directory --name / --out / --resume name, or None for a new run's default; the
    checkpoint to resume from, or None). `--resume RUN` also takes a run that has only its
    config.json (killed before its first checkpoint): it restarts (recorded_config).

    With `verify` (resolve_run_dir's call) the checkpoint's files are checked here, once, before any
    worker starts (the workers then read them unverified): a run resumes from its newest valid
    checkpoint (checkpoint.newest_valid_checkpoint; each one skipped is said to `verify`), and a
    checkpoint named itself must verify. Without it, the latest checkpoint, unchecked (settle_config's
    first look, which only asks whether there is one)."""
    from gptkit.checkpoint import is_checkpoint, latest_checkpoint, newest_valid_checkpoint, resolve_checkpoint
    from gptkit.checkpoint import verify_checkpoint as check

    def newest(run: Path) -> Path | None:
        if verify is None:
            return latest_checkpoint(run)
        return newest_valid_checkpoint(run, log=lambda m: verify(f"--resume {resume}: {m}"))

    if name and out:
        raise GptkitError("give --name or --out, not both")
    run_dir = Path(out).expanduser().resolve() if out else (paths.runs_dir(name) if name else None)
    ckpt = None
    if resume and resume != "auto":

        def record(p: Path) -> Path | None:  # a checkpoint, else the config.json of a run not yet checkpointed
            return resolve_checkpoint(p.resolve()) or ((p / CONFIG_FILE) if (p / CONFIG_FILE).is_file() else None)

        named = named_run(resume, file_of=record)
        found = names.pick(
            resume,
            label=f"--resume {resume}",
            objects=[("the run", named)] if named else [],
            usable=lambda p: record(p) is not None,
        )
        ckpt = resolve_checkpoint(found.resolve()) if found is not None else None
        if ckpt is None and found is not None and (found / CONFIG_FILE).is_file():
            return run_dir or found.resolve(), None  # a run without a checkpoint yet
        if ckpt is None:
            raise GptkitError(f"--resume {resume}: not a checkpoint, nor a run directory holding step_* checkpoints")
        assert found is not None
        # a run (by name or by its directory): its newest valid checkpoint; a checkpoint named itself
        # must verify
        if not is_checkpoint(found.resolve()):
            ckpt = newest(found.resolve())
        elif verify is not None and (note := check(ckpt)) is not None:
            verify(note)
        assert ckpt is not None
        run_dir = run_dir or ckpt.parent
    elif resume == "auto":
        run_dir = run_dir or newest_run()
        ckpt = newest(run_dir) if run_dir else None
    return run_dir, ckpt


def recorded_config(run_dir: Path) -> TrainConfig:
    """The config a run was started with (RUN/config.json): a run resumed before its first checkpoint
    restarts from step 0 with it, never with a config resolved anew (the newest data, another preset)."""
    f = run_dir / CONFIG_FILE
    try:
        recorded = json.loads(f.read_text())
        train = recorded["train"]
    except (OSError, ValueError, KeyError, TypeError):
        raise GptkitError(f"{f}: unreadable, and the run has no checkpoint; start it again without --resume") from None
    return TrainConfig.from_dict(train, source=str(f), written_by=recorded.get("gptkit_version"))


def recorded_start(run_dir: Path) -> str | None:
    """The SLURM job start (Cluster.start) whose node wrote RUN/config.json, if one did."""
    try:
        return json.loads((run_dir / CONFIG_FILE).read_text())["slurm"]["start"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def read_checkpoint_config(ckpt: Path) -> dict:
    """The training config a checkpoint was written with; refused for a checkpoint that cannot be resumed."""
    from gptkit.checkpoint import has_trainer_state, read_meta

    meta = read_meta(ckpt)
    if not meta.get("train") or not has_trainer_state(ckpt):
        raise GptkitError(f"{ckpt}: holds no training state (an exported model?); it cannot be resumed")
    return meta["train"]


# --- devices and ports ---------------------------------------------------------------------------
def resolve_devices(cfg: TrainConfig, launch: LaunchConfig) -> tuple[str, int]:
    """(device type, processes on this node)."""
    import torch

    from gptkit.device import pick_device

    if launch.nproc < 1 or launch.nodes < 1 or not 0 <= launch.node_rank < launch.nodes:
        raise GptkitError("--nproc and --nodes must be at least 1, and --node-rank in [0, --nodes)")
    want = cfg.device
    if want not in ("auto", "cpu", "cuda", "mps"):
        raise GptkitError(f"--device {want!r}: use auto, cpu, cuda or mps (GPUs per node are chosen with --gpus)")
    if want == "auto":
        # Never MPS by itself: training runs as DDP processes, and MPS has no collective backend
        # (gloo works on CPU tensors only), so auto training is CUDA or CPU; --device mps is explicit.
        want = "cpu" if launch.gpus == 0 else pick_device("auto", allow_mps=False).type
    n_gpu = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if want == "cpu":
        if launch.gpus:
            raise GptkitError(
                f"--gpus {launch.gpus} but torch sees no CUDA GPU; use --gpus 0 --nproc N to train on CPU"
            )
        return "cpu", launch.nproc
    if want == "mps":
        if launch.nproc != 1 or launch.nodes != 1:
            raise GptkitError("--device mps runs one process on one machine")
        return "mps", 1
    if launch.gpus == 0:  # else torchrun would start with --nproc-per-node 0
        raise GptkitError("--gpus 0 with --device cuda: no GPU to train on; use --gpus N or --device cpu")
    if n_gpu == 0:
        raise GptkitError("--device cuda but torch sees no CUDA GPU (run `gptkit doctor`)")
    gpus = n_gpu if launch.gpus is None else launch.gpus
    if gpus > n_gpu:
        raise GptkitError(f"--gpus {gpus} but only {n_gpu} CUDA GPU(s) are visible")
    return "cuda", gpus


def _is_local(addr: str) -> bool:
    if addr in ("localhost", "127.0.0.1", "::1", "0.0.0.0") or addr.startswith("127."):
        return True
    try:
        return (
            addr in {socket.gethostname(), socket.getfqdn()} or addr in socket.gethostbyname_ex(socket.gethostname())[2]
        )
    except OSError:
        return False


def check_port(addr: str, port: int) -> None:
    """The rendezvous host binds --master-port; refuse one that something else already holds."""
    if not 1 <= port <= 65535:
        raise GptkitError(f"--master-port {port}: not a port number")
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1" if addr in ("localhost",) else addr, port))
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise GptkitError(f"--master-port {port} is already in use on {addr}; pick another port") from None
        raise GptkitError(f"--master-addr {addr} --master-port {port}: cannot bind ({e.strerror})") from None
    finally:
        s.close()


# --- resolving a run -----------------------------------------------------------------------------
WARMUP_CAP = 0.1  # a preset's warmup is at most this fraction of the steps unless warmup is given
SMALL_DATA_BATCHES = 3  # fewer training tokens than this many batches: warn
# CPU MFU assumed for the one-line time estimate of a GPT-2-sized run on CPU (the plan measures
# instead). A 124M step is mostly large matmuls: one row timed on 2 busy cores ran at the rate the
# matmul peak measured then; half of it keeps the estimate on the safe side.
ASSUMED_CPU_MFU = 0.5


def _given(overrides: TrainOverrides, file_train: dict, key: str) -> bool:
    return getattr(overrides, key) is not None or key in file_train


class Found:
    """What resolving a run reads on disk, each read once: settle_config and prepare (and the plan)
    ask here, so the shards and the --init-from weights are examined one time per run."""

    def __init__(self, warn: Callable[[str], object] = lambda m: None, verify: bool = True) -> None:
        self._data: dict[str | None, tuple] = {}
        self._weights: dict[str, tuple[Path, GPTConfig, dict]] = {}
        self.warn, self.verify = warn, verify  # --init-from's checksums: checked unless only planning

    def data(self, arg: str | None) -> tuple[Path, list[Path], list[Path], dict]:
        """train.data.check_data(arg), once (an error is raised again, not kept)."""
        from gptkit.train.data import check_data

        if arg not in self._data:
            self._data[arg] = check_data(arg)
        return self._data[arg]

    def data_size(self, arg: str | None) -> tuple[int, int]:
        """(vocabulary size, training tokens) of the data `arg` names."""
        from gptkit.train.data import TokenStream, tokenizer_info

        data_dir, _val, train, manifest = self.data(arg)
        _tok, vocab, eot = tokenizer_info(manifest, data_dir)
        return vocab, (TokenStream(train, eot, 0).total if train else 0)

    def weights(self, path: str) -> tuple[Path, GPTConfig, dict]:
        """read_init_from(path), once."""
        if path not in self._weights:
            self._weights[path] = read_init_from(path, self.warn if self.verify else None)
        return self._weights[path]


def settle_config(
    overrides: TrainOverrides,
    launch_overrides: LaunchOverrides,
    *,
    config_file: str | Path | None = None,
    name: str | None = None,
    out: str | Path | None = None,
    resume: str | None = None,
    gpu_type: str | None = None,
    warn: Callable[[str], object] = lambda m: None,
    note: Callable[[str], object] = lambda m: None,
    plan_only: bool = False,
) -> Settled:
    """The config of a run. Without a GPU, --preset and the sizing flags, the CPU auto-sizing
    (gptkit.train.auto) picks the model, batch and steps. With `gpu_type` (a plan for hardware this
    machine lacks) the device is --gpus GPUs of that kind and no run directory is chosen. The config is
    validated (one line for a bad value) before any warning is worked out from it."""
    from gptkit.train import auto

    found = Found(warn, verify=not plan_only)
    file_train, file_launch = split_settings(load_config_file(config_file)) if config_file else ({}, {})
    # The command line wins over the file.
    launch = launch_overrides.apply(LaunchConfig(**check_types(file_launch, LaunchConfig, str(config_file))))
    # Inside a SLURM allocation its variables give what the node flags would; given ones win.
    cluster = slurm.derive(os.environ, {**file_launch, **launch_overrides.given()})
    if cluster is not None:
        launch = replace(launch, **cluster.values)
    preset = overrides.preset or file_train.get("preset")
    device_asked = overrides.device or file_train.get("device") or "auto"
    if gpu_type:
        if device_asked not in ("auto", "cuda"):
            raise GptkitError(f"--gpu-type plans GPUs; it does not go with --device {device_asked}")
        device_type, nproc = "cuda", launch.gpus or 1
    else:
        device_type, nproc = resolve_devices(replace(TrainConfig(), device=device_asked), launch)
    # A run resumed before its first checkpoint restarts with its recorded config: no sizing anew.
    # `--resume auto` of a run not started yet is a new run (a job script's first start): sized as one.
    restart = None
    fresh = resume is None
    if resume is not None and not gpu_type and not plan_only:
        from gptkit.checkpoint import latest_checkpoint

        run_dir, ckpt = resumed_run(name, out, resume)
        fresh = ckpt is None and (run_dir is None or latest_checkpoint(run_dir) is None)
        if resume == "auto" and cluster is None and (run_dir is None or not run_dir.is_dir()):
            # Typed by hand (a SLURM job script's first start is this case, and says nothing): said, so
            # a mistyped name is seen at once.
            where = f"no run {run_dir} yet" if run_dir is not None else f"no run in {paths.runs_dir()} yet"
            note(f"--resume auto: {where}; starting a new one")
        if fresh and run_dir is not None and (run_dir / CONFIG_FILE).is_file():
            fresh = False
            restart = recorded_config(run_dir)
            preset = restart.preset
            if cluster is None or not cluster.start or recorded_start(run_dir) != cluster.start:
                note(
                    f"{run_dir} has no checkpoint yet: restarting it from step 0 with its recorded settings "
                    f"(--preset {restart.preset}, --data {restart.data})"
                )
            # else another node of this same job start wrote it a moment ago: taken as it is, without a word
    data_arg = overrides.data or file_train.get("data") or (restart.data if restart else None)
    try:
        size = found.data_size(data_arg)
    except GptkitError:
        size = None  # no data (yet): a plan assumes GPT-2's vocabulary; a run fails on cfg.data below

    choice = None
    init_from = overrides.init_from or file_train.get("init_from")
    init_model = found.weights(init_from)[1] if init_from and fresh else None
    # The batch, a shape or --seq-len of the user's are kept; the rest is still sized for the CPU
    # (a bare batch would otherwise fall back to the gpt2 preset's 19,073-step schedule).
    auto_ok = preset is None and fresh
    if auto_ok and device_type == "cpu" and size is not None:
        # A bad --optimizer or --lr is one line at once, not after seconds of timing models.
        check_optimisation(overrides.apply(merge(TrainConfig(), file_train, str(config_file))))
        from gptkit.train.estimate import free_ram

        # A shape of the user's own (--n-layer ...) or of --init-from's weights is kept: only the
        # recipe is sized for this machine.
        shape = None
        if init_model is not None:
            shape = {f: getattr(init_model, f) for f in SHAPE_KEYS.values()}
        elif any(_given(overrides, file_train, k) for k in SHAPE_KEYS):
            probe = resolve_shape(overrides.apply(merge(preset_config("small"), file_train, str(config_file))))
            probe = replace(probe, seq_len=min(probe.seq_len, probe.block_size or probe.seq_len))
            validate(probe)  # a bad shape is one line before any model is built to time it
            mc = model_config(probe, size[0], found)
            shape = {f: getattr(mc, f) for k, f in SHAPE_KEYS.items() if _given(overrides, file_train, k)}
        choice = auto.choose(
            auto.Machine(train_tokens=size[1], vocab_size=size[0], free_ram=free_ram(), processes=nproc * launch.nodes),
            precision=overrides.precision or file_train.get("precision") or "auto",
            max_steps=overrides.max_steps or file_train.get("max_steps"),
            shape=shape,
            seq_len=overrides.seq_len or file_train.get("seq_len"),
            batch_tokens=overrides.batch_tokens or file_train.get("batch_tokens"),
            micro_batch=overrides.micro_batch or file_train.get("micro_batch"),
        )
        preset = choice.preset
        if not plan_only:
            note(choice.line)
    preset = preset or "gpt2"

    run_dir = ckpt = None
    if not gpu_type and not plan_only:
        run_dir, ckpt = resolve_run_dir(name, out, resume, preset, warn)
    # The model shape settings given (flags or file): checked against a resumed or --init-from model.
    shape_given = {k for k in SHAPE_KEYS if k in file_train or k in overrides.given()}
    resumed_shape = None
    if ckpt is not None:
        from gptkit.checkpoint import read_meta

        base = TrainConfig.from_dict(
            read_checkpoint_config(ckpt),
            source=f"{ckpt}/config.json",
            written_by=read_meta(ckpt).get("gptkit_version"),
        )
        for asked in (file_train.get("preset", base.preset), overrides.preset or base.preset):
            if asked != base.preset:
                raise GptkitError(f"cannot change the model preset of a run being resumed ({base.preset} -> {asked})")
        # The shape is the checkpoint's model, never re-derived (older runs did not write it to "train").
        resumed_shape = checkpoint_shape(ckpt)
        base = replace(base, **resumed_shape)
    elif restart is not None:
        for asked in (file_train.get("preset", restart.preset), overrides.preset or restart.preset):
            if asked != restart.preset:
                raise GptkitError(
                    f"cannot change the model preset of a run being resumed ({restart.preset} -> {asked})"
                )
        resumed_shape = shape_of(model_settings(resolve_shape(restart)))
        base = restart
    else:
        base = preset_config(preset)
        if choice is not None:
            base = replace(base, **choice.settings)
    cfg = resolve_shape(overrides.apply(merge(base, file_train, str(config_file))))
    if resumed_shape is not None:
        cfg = keep_shape(cfg, resumed_shape, shape_given, f"the run being resumed ({ckpt or run_dir})")
        if ckpt is not None and cfg.optimizer != base.optimizer:
            # Refused, not converted: the other optimizer's state (AdamW's moments, Muon's momentum)
            # cannot be derived from this one's, and starting it fresh mid-run is --init-from's job.
            # (A run restarted from step 0, with no checkpoint, has no state to lose.)
            raise GptkitError(
                f"{ckpt} was trained with --optimizer {base.optimizer}; it resumes only with that optimizer "
                f"(to continue its weights with {cfg.optimizer}, start a new run with --init-from {ckpt})"
            )
        if cfg.seq_len > resumed_shape["block_size"]:
            raise GptkitError(
                f"--seq-len {cfg.seq_len} exceeds the block size {resumed_shape['block_size']} of the run being "
                f"resumed ({ckpt or run_dir})"
            )
    if init_model is not None and not _given(overrides, file_train, "seq_len") and cfg.seq_len > init_model.block_size:
        # A recipe's sequence (GPT-2's 1024) longer than the weights' context: their context, and a
        # batch of whole sequences near the recipe's, unless those were given.
        seq = init_model.block_size
        batch = cfg.batch_tokens
        if not _given(overrides, file_train, "batch_tokens"):
            batch = max(1, round(batch / seq)) * seq
        cfg = replace(cfg, seq_len=seq, batch_tokens=batch)
    if init_model is not None and cfg.seq_len > init_model.block_size:  # before the batch arithmetic's errors
        raise GptkitError(
            f"--seq-len {cfg.seq_len} exceeds the model's context length {init_model.block_size} (--init-from {init_from})"
        )
    if ckpt is None and not _given(overrides, file_train, "warmup_steps"):
        # A preset's warmup was set for its own step count: never let it cover a shorter run.
        cfg = replace(cfg, warmup_steps=min(cfg.warmup_steps, max(1, int(WARMUP_CAP * cfg.max_steps))))
    validate(cfg)  # before anything builds on it (the CPU estimate builds the model's config)
    if device_type == "cpu":
        import torch

        from gptkit.device import resolve_precision

        # bf16 where the CPU would only emulate it (or fp16): one line now, with or without --preset,
        # not from a worker after torchrun started
        resolve_precision(cfg.precision, torch.device("cpu"))

    # (no data: the run fails on that in one line below, without this warning first)
    # Any CPU run planned at over LONG_CPU_RUN_S says so before it starts (a plan shows its time).
    if ckpt is None and device_type == "cpu" and size is not None and not plan_only:
        line = None
        from gptkit.train.estimate import LONG_CPU_RUN_S, human_duration

        if choice is not None and choice.est_seconds > LONG_CPU_RUN_S:
            line = (
                f"this CPU run is planned at ~{human_duration(choice.est_seconds)}, over an hour "
                f"({cfg.max_steps:,} steps); fewer --max-steps shortens it"
            )
        elif choice is None and restart is None:
            line = long_cpu_run_warning(cfg, size[0], found)
        if line:
            warn(line)
    if ckpt is None and size is not None and size[1] < SMALL_DATA_BATCHES * cfg.batch_tokens:
        warn(
            f"the training data holds {size[1]:,} tokens, fewer than {SMALL_DATA_BATCHES} batches of "
            f"{cfg.batch_tokens:,}: every step repeats it (tokenize more text, or lower --batch-tokens)"
        )
    auto_info = None
    if choice is not None:
        auto_info = {
            "line": choice.line,
            "tok_per_s": choice.tok_per_s,
            "est_seconds": choice.est_seconds,
            "step_s": choice.step_s,
            "basis": choice.basis,
            "busy": choice.busy,
        }
        if choice.busy and not plan_only:  # (a plan shows it as a note)
            warn(choice.busy)
    if not gpu_type and cfg.device != device_asked:  # a resumed run's own --device
        device_type, nproc = resolve_devices(cfg, launch)
    return Settled(
        micro_batch_given=_given(overrides, file_train, "micro_batch"),
        found=found,
        cfg=cfg,
        launch=launch,
        file_train=file_train,
        device_type=device_type,
        nproc=nproc,
        run_dir=run_dir,
        ckpt=ckpt,
        vocab=size[0] if size else None,
        train_tokens=size[1] if size else None,
        auto=auto_info,
        cluster=cluster,
    )


def make_plan(
    overrides: TrainOverrides,
    launch_overrides: LaunchOverrides,
    *,
    config_file: str | Path | None = None,
    gpu_type: str | None = None,
    measure: bool = True,
) -> RunPlan:
    """`gptkit train --plan`: the run resolved as it would be (settle_config), then planned."""
    from gptkit.train.estimate import GPT2_VOCAB
    from gptkit.train.plan import plan_of

    warnings: list[str] = []
    settled = settle_config(
        overrides, launch_overrides, config_file=config_file, gpu_type=gpu_type, warn=warnings.append, plan_only=True
    )
    if settled.cfg.init_from and settled.vocab is not None:  # the weights must read the data, as a run checks
        manifest = settled.found.data(settled.cfg.data)[3]
        check_init_from(
            settled.found.weights(settled.cfg.init_from), settled.cfg.init_from, manifest["tokenizer"], settled.vocab
        )
    mc = model_config(settled.cfg, settled.vocab or GPT2_VOCAB, settled.found)
    return plan_of(settled, mc, gpu_type=gpu_type, measure=measure, warnings=warnings)


def model_config(cfg: TrainConfig, vocab: int, found: Found | None = None):
    """The model a config trains: --init-from's, else its shape (the preset's and any shape flags)
    with the data's vocabulary."""
    from gptkit.model import GPTConfig

    if cfg.init_from:
        return (found or Found()).weights(cfg.init_from)[1]
    return GPTConfig(**model_settings(resolve_shape(cfg))).with_vocab(vocab)


def long_cpu_run_warning(cfg: TrainConfig, vocab: int, found: Found | None = None) -> str | None:
    """One line: a preset's recipe on a CPU estimated (no timing run) at over LONG_CPU_RUN_S, such
    as GPT-2's; None when it is shorter (a small preset, or flags that shrank the recipe)."""
    import torch

    from gptkit.device import resolve_precision
    from gptkit.model import flops_per_token, param_count
    from gptkit.train.estimate import LONG_CPU_RUN_S, human_count, human_duration
    from gptkit.train.mfu import cpu_peak_flops

    mc = model_config(cfg, vocab, found)
    n = param_count(mc, padded=True)
    peak = cpu_peak_flops(resolve_precision(cfg.precision, torch.device("cpu")).name)
    seconds = flops_per_token(mc, cfg.seq_len) * cfg.batch_tokens * cfg.max_steps / (peak * ASSUMED_CPU_MFU)
    if seconds < LONG_CPU_RUN_S:
        return None
    fix = "no --preset sizes a run for this CPU" if cfg.preset.startswith("gpt2") else "fewer --max-steps shortens it"
    return (
        f"the --preset {cfg.preset} recipe on CPU: {n / 1e6:.1f}M parameters x "
        f"{human_count(cfg.batch_tokens * cfg.max_steps)} tokens would take ~{human_duration(seconds)} here, over an "
        f"hour (at {ASSUMED_CPU_MFU:.0%} of the measured {peak / 1e9:.0f} GFLOP/s); `gptkit train --plan` measures, "
        f"{fix}"
    )


def prepare(
    overrides: TrainOverrides,
    launch_overrides: LaunchOverrides,
    *,
    config_file: str | Path | None = None,
    name: str | None = None,
    out: str | Path | None = None,
    resume: str | None = None,
    warn: Callable[[str], object] = lambda m: None,
    note: Callable[[str], object] = lambda m: None,
) -> ResolvedRun:
    """The settings given on the command line (None = not given) -> a ResolvedRun, validated.

    `warn` gets one-line warnings (tiny data, the GPT-2 recipe on a CPU), `note` what was decided
    that the user should know (a run restarted from its recorded config)."""
    from gptkit.train.data import TokenStream, tokenizer_info
    from gptkit.train.metrics import check_backends

    s = settle_config(
        overrides, launch_overrides, config_file=config_file, name=name, out=out, resume=resume, warn=warn, note=note
    )
    cfg, launch, file_train, ckpt = s.cfg, s.launch, s.file_train, s.ckpt
    assert s.run_dir is not None
    run_dir = s.run_dir
    shape_given = {k for k in SHAPE_KEYS if k in file_train or k in overrides.given()}
    if ckpt is not None:
        from gptkit.checkpoint import read_trainer_state

        done = int((read_trainer_state(ckpt) or {}).get("step", 0))
        if done >= cfg.max_steps:
            raise GptkitError(
                f"{ckpt.parent} already finished ({done} of {cfg.max_steps} steps); "
                "give a larger --max-steps to train further (the schedule then spans the new total: the learning "
                "rate rises again from where it had decayed)"
            )

    device_type, nproc, found = s.device_type, s.nproc, s.found
    world = nproc * launch.nodes
    plan = plan_batches(cfg, world, micro_batch_given=s.micro_batch_given)

    data_dir, val, train, manifest = found.data(cfg.data)
    cfg = replace(cfg, data=str(data_dir))  # a resume must read the same data, whatever is newest then
    tokenizer, vocab, eot = tokenizer_info(manifest, data_dir)
    check_parallel(launch, cfg, device_type)
    if cfg.init_from:
        path = cfg.init_from
        weights_at, weights = check_init_from(found.weights(path), path, manifest["tokenizer"], vocab)
        cfg = replace(cfg, init_from=str(weights_at))
        if ckpt is None:  # (a resumed run has its checkpoint's shape already)
            # A new run takes the weights' shape. Dropout alone is a training setting, not the
            # weights': one given is kept (fine-tuning often adds some), else the weights' is.
            if "dropout" in shape_given:
                del weights["dropout"]
            cfg = keep_shape(cfg, weights, shape_given, f"the weights of --init-from {path}")
        if cfg.block_size is None or cfg.seq_len > cfg.block_size:
            raise GptkitError(
                f"--seq-len {cfg.seq_len} exceeds the model's context length {cfg.block_size} (--init-from {path})"
            )
    if cfg.eval_tokens:
        val_tokens = TokenStream(val, eot, cfg.seed, shuffle=False).total
        if (min(cfg.eval_tokens, val_tokens - 1) // cfg.seq_len) < world:
            if (val_tokens - 1) // cfg.seq_len < world:  # the shard is the limit: a larger budget cannot help
                what, fix = (
                    f"the validation shard ({val_tokens} tokens) is",
                    "tokenize with a larger --val-tokens, lower --seq-len",
                )
            else:
                what, fix = f"--eval-tokens {cfg.eval_tokens} is", "raise --eval-tokens"
            raise GptkitError(
                f"{what} too small to give each of {world} processes one sequence of {cfg.seq_len}; "
                f"{fix}, or turn validation off with --eval-tokens 0"
            )
    check_backends(cfg.tensorboard, cfg.wandb)
    auto_info = s.auto
    if resume is not None and (run_dir / CONFIG_FILE).is_file():
        # A resumed (or restarted) run keeps the auto-sizing's record; its choice is in its config.
        try:
            auto_info = json.loads((run_dir / CONFIG_FILE).read_text()).get("auto")
        except (OSError, ValueError):
            auto_info = None

    if launch.nodes > 1 and launch.master_port is None:
        raise GptkitError(
            "several nodes need a rendezvous port: give every node the same --master-addr and --master-port"
        )
    if launch.master_port is not None and launch.node_rank == 0 and _is_local(launch.master_addr):
        check_port(launch.master_addr, launch.master_port)

    choice = choose_parallel(cfg, launch, device_type, nproc, plan, model_config(cfg, vocab, found))
    if choice.micro_batch != plan.micro_batch:
        plan = plan_batches(replace(cfg, micro_batch=choice.micro_batch), world, micro_batch_given=True)
    return ResolvedRun(
        train=cfg,
        launch=launch,
        plan=plan,
        data_dir=str(data_dir),
        run_dir=str(run_dir),
        resume_from=str(ckpt) if ckpt else None,
        extra={
            "device_type": device_type,
            "nproc_per_node": nproc,
            "tokenizer": tokenizer,
            "vocab_size": vocab,
            "parallel": {"strategy": choice.strategy, "checkpointing": choice.checkpointing, "why": choice.why},
            **({"auto": auto_info} if auto_info else {}),
            **(
                {
                    "slurm": {
                        "job": s.cluster.job_id,
                        "start": s.cluster.start,
                        "taken": s.cluster.taken,
                        "line": s.cluster.line(),
                    }
                }
                if s.cluster
                else {}
            ),
        },
    )


def choose_parallel(cfg: TrainConfig, launch: LaunchConfig, device_type: str, nproc: int, plan, mc):
    """The strategy and activation checkpointing a run uses (estimate.choose_parallel against this
    node's memory: the GPU's, or on CPU the host RAM its processes share). Made by the launcher of
    every node, but the workers all take rank 0's run config, so nodes never disagree."""
    import torch

    from gptkit.device import resolve_precision
    from gptkit.model import param_count
    from gptkit.train import estimate

    free: int | None = None
    half = False
    if device_type == "cuda":  # only reachable with a GPU: the free memory of this node's first one
        try:
            free = int(torch.cuda.mem_get_info()[0])
        except RuntimeError:
            free = None
    elif device_type == "cpu":
        ram = estimate.free_ram()
        free = ram // nproc if ram else None
    if device_type in ("cuda", "cpu"):
        half = resolve_precision(cfg.precision, torch.device(device_type)).name != "fp32"
    parallel = parallel_candidates(launch, cfg, device_type)
    return estimate.choose_parallel(
        mc,
        param_count(mc, padded=True),
        cfg.seq_len,
        plan.micro_batch,
        plan.rows // plan.world_size,
        half,
        free,
        world=plan.world_size,
        parallel=parallel,
        checkpointing=launch.activation_checkpointing,
        fused_head=device_type == "cpu",  # the CPU trainer fuses the head with the loss (train/loss.py)
        optimizer=cfg.optimizer,
    )


def checkpoint_shape(ckpt: Path) -> dict:
    """The model shape (TrainConfig's shape fields) a checkpoint was written with."""
    from gptkit.checkpoint import read_config

    return shape_of(read_config(ckpt)[0].to_dict())


def read_init_from(path: str, verify: Callable[[str], object] | None = None) -> tuple[Path, GPTConfig, dict]:
    """--init-from's checkpoint: (its path, its GPTConfig, its meta); one line with the way to make one.
    `verify`: check its files against their checksums first (before any worker starts, which then
    reads them unverified), a note for a checkpoint without them going there."""
    from gptkit.checkpoint import read_config, resolve_checkpoint, verify_checkpoint

    how = "`gptkit convert SRC DIR --to gptkit`"
    found = resolve_checkpoint(Path(path).expanduser().resolve())
    if found is None:
        raise GptkitError(f"--init-from {path}: not a gptkit checkpoint; make one with {how}")
    if verify is not None and (note := verify_checkpoint(found, model_only=True)) is not None:
        verify(f"--init-from {path}: {note}")
    try:
        mc, meta = read_config(found)
    except GptkitError as e:  # e.g. a Hugging Face folder: its config.json is not a gptkit checkpoint's
        raise GptkitError(f"--init-from {path}: {e}; make a checkpoint with {how}") from None
    return found, mc, meta


def check_init_from(weights: tuple[Path, GPTConfig, dict], path: str, tokenizer: dict, vocab: int) -> tuple[Path, dict]:
    """--init-from's checkpoint (read_init_from's answer for `path`) must hold the data's vocabulary
    (`tokenizer`: the shard manifest's block; the rule is the workers', tokenizer.same_vocabulary):
    (its path, its model shape)."""
    from gptkit.tokenizer import same_vocabulary, vocabulary_label

    found, mc, meta = weights
    model_tok = meta.get("tokenizer_info") or meta.get("tokenizer")
    if not same_vocabulary(model_tok, tokenizer) or mc.vocab_size != vocab:
        raise GptkitError(
            f"--init-from {path}: the model's vocabulary ({vocabulary_label(model_tok)}, {mc.vocab_size}) does not "
            f"match the data's ({vocabulary_label(tokenizer)}, {vocab})"
        )
    return found, shape_of(mc.to_dict())
