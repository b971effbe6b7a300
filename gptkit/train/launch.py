"""`gptkit train` as a library function: resolve the config, then start torchrun and wait for it.

Everything a user can get wrong (preset, batch arithmetic, data, port, resume path) is checked here,
before any worker starts, so it fails as one line and leaves existing runs untouched. The workers
read the resolved config from RUN/config.json.

    one node:  python -m torch.distributed.run --standalone --nproc-per-node N -m gptkit.train.main RUN
    several:   ... --nnodes M --node-rank R --rdzv-backend c10d --rdzv-endpoint HOST:PORT
               --rdzv-id NAME --rdzv-conf is_host=0|1 ...
"""

from __future__ import annotations

import errno
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from gptkit import paths
from gptkit.errors import GptkitError
from gptkit.runs import CONFIG_FILE, find_run, newest_run
from gptkit.train.config import (
    SHAPE_KEYS,
    LaunchConfig,
    LaunchOverrides,
    ResolvedRun,
    TrainConfig,
    TrainOverrides,
    check_types,
    keep_shape,
    load_config_file,
    merge,
    plan_batches,
    preset_config,
    resolve_shape,
    shape_of,
    split_settings,
    validate,
)
from gptkit.train.main import ERRORS_DIR, LAUNCHER_ENV, LAUNCHER_PID_ENV, VERBOSE_ENV


# --- run directory and resume --------------------------------------------------------------------
def resolve_run_dir(
    name: str | None, out: str | Path | None, resume: str | None, preset: str
) -> tuple[Path, Path | None]:
    """(run directory, checkpoint to resume from or None)."""
    from gptkit.checkpoint import is_checkpoint, latest_checkpoint

    if name and out:
        raise GptkitError("give --name or --out, not both")
    run_dir = Path(out).expanduser().resolve() if out else (paths.runs_dir(name) if name else None)
    ckpt = None
    if resume and resume != "auto":
        p = Path(resume).expanduser().resolve()
        run = None if is_checkpoint(p) else find_run(resume)
        if is_checkpoint(p):
            ckpt = p
        elif run is not None:
            ckpt = latest_checkpoint(run.resolve())
        if ckpt is None:
            raise GptkitError(f"--resume {resume}: not a checkpoint, nor a run directory holding step_* checkpoints")
        run_dir = run_dir or ckpt.parent
    elif resume == "auto":
        run_dir = run_dir or newest_run()
        ckpt = latest_checkpoint(run_dir) if run_dir else None
    if run_dir is None:
        run_dir = paths.runs_dir(f"{preset}-{time.strftime('%Y%m%d-%H%M%S')}")
    if ckpt is None and latest_checkpoint(run_dir) is not None:
        raise GptkitError(
            f"{run_dir} already holds checkpoints; continue it with --resume auto, or pick another --name"
        )
    return run_dir, ckpt


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
SIZING_KEYS = ("seq_len", "batch_tokens", "micro_batch")  # given any of these, the user sized the run
WARMUP_CAP = 0.1  # a preset's warmup is at most this fraction of the steps unless warmup is given
SMALL_DATA_BATCHES = 3  # fewer training tokens than this many batches: warn
# CPU MFU assumed for the one-line time estimate of a GPT-2-sized run on CPU (the plan measures
# instead). A 124M step is mostly large matmuls: one row timed on 2 busy cores ran at the rate the
# matmul peak measured then; half of it keeps the estimate on the safe side.
ASSUMED_CPU_MFU = 0.5


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

    @property
    def auto_line(self) -> str | None:
        return self.auto["line"] if self.auto else None


def _given(overrides: TrainOverrides, file_train: dict, key: str) -> bool:
    return getattr(overrides, key) is not None or key in file_train


def _data_size(data: str | None) -> tuple[int, int] | None:
    """(vocabulary size, training tokens) of --data, or None when there is no tokenized data."""
    from gptkit.train.data import TokenStream, check_data, tokenizer_info

    data_dir, _val, train, manifest = check_data(data)
    _tok, vocab, eot = tokenizer_info(manifest, data_dir)
    return vocab, (TokenStream(train, eot, 0).total if train else 0)


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
    plan_only: bool = False,
) -> Settled:
    """The config of a run. Without a GPU, --preset and the sizing flags, the CPU auto-sizing
    (gptkit.train.auto) picks the model, batch and steps. With `gpu_type` (a plan for hardware this
    machine lacks) the device is --gpus GPUs of that kind and no run directory is chosen."""
    from gptkit.train import auto

    file_train, file_launch = split_settings(load_config_file(config_file)) if config_file else ({}, {})
    # The command line wins over the file.
    launch = launch_overrides.apply(LaunchConfig(**check_types(file_launch, LaunchConfig, str(config_file))))
    preset = overrides.preset or file_train.get("preset")
    device_asked = overrides.device or file_train.get("device") or "auto"
    if gpu_type:
        if device_asked not in ("auto", "cuda"):
            raise GptkitError(f"--gpu-type plans GPUs; it does not go with --device {device_asked}")
        device_type, nproc = "cuda", launch.gpus or 1
    else:
        device_type, nproc = resolve_devices(replace(TrainConfig(), device=device_asked), launch)
    data_arg = overrides.data or file_train.get("data")
    try:
        size = _data_size(data_arg)
    except GptkitError:
        size = None  # no data (yet): a plan assumes GPT-2's vocabulary; a run fails on cfg.data below

    choice = None
    auto_ok = (
        preset is None
        and resume is None
        and not _given(overrides, file_train, "init_from")
        and not any(_given(overrides, file_train, k) for k in (*SIZING_KEYS, *SHAPE_KEYS))
    )
    if auto_ok and device_type == "cpu" and size is not None:
        from gptkit.train.plan import free_ram

        choice = auto.choose(
            auto.Machine(train_tokens=size[1], vocab_size=size[0], free_ram=free_ram(), processes=nproc * launch.nodes),
            precision=overrides.precision or file_train.get("precision") or "auto",
            max_steps=overrides.max_steps or file_train.get("max_steps"),
        )
        preset = choice.preset
    preset = preset or "gpt2"

    run_dir = ckpt = None
    if not gpu_type and not plan_only:
        run_dir, ckpt = resolve_run_dir(name, out, resume, preset)
    # The model shape settings given (flags or file): checked against a resumed or --init-from model.
    shape_given = {k for k in SHAPE_KEYS if k in file_train or k in overrides.given()}
    resumed_shape = None
    if ckpt is not None:
        base = TrainConfig.from_dict(read_checkpoint_config(ckpt), source=f"{ckpt}/config.json")
        for asked in (file_train.get("preset", base.preset), overrides.preset or base.preset):
            if asked != base.preset:
                raise GptkitError(f"cannot change the model preset of a run being resumed ({base.preset} -> {asked})")
        # The shape is the checkpoint's model, never re-derived (older runs did not write it to "train").
        resumed_shape = checkpoint_shape(ckpt)
        base = replace(base, **resumed_shape)
    else:
        base = preset_config(preset)
        if choice is not None:
            base = replace(base, **choice.settings)
    cfg = resolve_shape(overrides.apply(merge(base, file_train, str(config_file))))
    if resumed_shape is not None:
        cfg = keep_shape(cfg, resumed_shape, shape_given, f"the run being resumed ({ckpt})")
        if cfg.seq_len > resumed_shape["block_size"]:
            raise GptkitError(
                f"--seq-len {cfg.seq_len} exceeds the block size {resumed_shape['block_size']} of the run being "
                f"resumed ({ckpt})"
            )
    if ckpt is None and not _given(overrides, file_train, "warmup_steps"):
        # A preset's warmup was set for its own step count: never let it cover a shorter run.
        cfg = replace(cfg, warmup_steps=min(cfg.warmup_steps, max(1, int(WARMUP_CAP * cfg.max_steps))))

    if ckpt is None and choice is None and device_type == "cpu" and preset.startswith("gpt2") and not plan_only:
        warn(gpt2_on_cpu_warning(cfg, size[0] if size else 50257))
    if ckpt is None and size is not None and size[1] < SMALL_DATA_BATCHES * cfg.batch_tokens:
        warn(
            f"the training data holds {size[1]:,} tokens, fewer than {SMALL_DATA_BATCHES} batches of "
            f"{cfg.batch_tokens:,}: every step repeats it (tokenize more text, or lower --batch-tokens)"
        )
    auto_info = (
        {"line": choice.line, "tok_per_s": choice.tok_per_s, "est_seconds": choice.est_seconds} if choice else None
    )
    return Settled(
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
    )


def model_config(cfg: TrainConfig, vocab: int):
    """The model a config trains: --init-from's, else the preset's with the data's vocabulary."""
    from gptkit.model import get_preset

    if cfg.init_from:
        from gptkit.checkpoint import read_config, resolve_checkpoint

        found = resolve_checkpoint(Path(cfg.init_from).expanduser().resolve())
        if found is not None:
            return read_config(found)[0]
    return get_preset(cfg.preset).with_vocab(vocab)


def gpt2_on_cpu_warning(cfg: TrainConfig, vocab: int) -> str:
    """One line: the GPT-2 recipe asked for on a CPU, with its estimated time (no timing run)."""
    import torch

    from gptkit.device import resolve_precision
    from gptkit.train.mfu import cpu_peak_flops
    from gptkit.train.plan import flops_per_token, human_duration, param_count

    mc = model_config(cfg, vocab)
    n = param_count(mc)
    peak = cpu_peak_flops(resolve_precision(cfg.precision, torch.device("cpu")).name)
    seconds = flops_per_token(mc, n, cfg.seq_len) * cfg.batch_tokens * cfg.max_steps / (peak * ASSUMED_CPU_MFU)
    return (
        f"--preset {cfg.preset} on CPU: {n / 1e6:.0f}M parameters x {cfg.batch_tokens * cfg.max_steps / 1e9:.1f}B "
        f"tokens would take ~{human_duration(seconds)} here (at {ASSUMED_CPU_MFU:.0%} of the measured "
        f"{peak / 1e9:.0f} GFLOP/s); `gptkit train --plan` measures, no --preset sizes a run for this CPU"
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
) -> ResolvedRun:
    """The settings given on the command line (None = not given) -> a ResolvedRun, validated.

    `warn` gets one-line warnings (tiny data, the GPT-2 recipe on a CPU)."""
    from gptkit.train.data import TokenStream, check_data, tokenizer_info
    from gptkit.train.metrics import check_backends

    s = settle_config(
        overrides, launch_overrides, config_file=config_file, name=name, out=out, resume=resume, warn=warn
    )
    cfg, launch, file_train, ckpt = s.cfg, s.launch, s.file_train, s.ckpt
    assert s.run_dir is not None
    run_dir = s.run_dir
    shape_given = {k for k in SHAPE_KEYS if k in file_train or k in overrides.given()}
    validate(cfg)
    if ckpt is not None:
        from gptkit.checkpoint import read_json

        done = int(read_json(ckpt / "trainer.json").get("step", 0))
        if done >= cfg.max_steps:
            raise GptkitError(
                f"{ckpt.parent} already finished ({done} of {cfg.max_steps} steps); "
                "give a larger --max-steps to train further"
            )

    device_type, nproc = resolve_devices(cfg, launch)
    world = nproc * launch.nodes
    plan = plan_batches(cfg, world, micro_batch_given=overrides.micro_batch is not None or "micro_batch" in file_train)

    data_dir, val, train, manifest = check_data(cfg.data)
    cfg = replace(cfg, data=str(data_dir))  # a resume must read the same data, whatever is newest then
    tokenizer, vocab, eot = tokenizer_info(manifest, data_dir)
    if cfg.init_from:
        path = cfg.init_from
        found, weights = check_init_from(path, tokenizer, vocab)
        cfg = replace(cfg, init_from=str(found))
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
            raise GptkitError(
                f"the validation shard ({val_tokens} tokens) is too small to give each of {world} processes one "
                f"sequence of {cfg.seq_len}; raise --eval-tokens or turn validation off with --eval-tokens 0"
            )
    check_backends(cfg.tensorboard, cfg.wandb)
    auto_info = s.auto
    if ckpt is not None and (run_dir / CONFIG_FILE).is_file():
        # A resumed run keeps the auto-sizing's record; its choice is in the checkpoint's config.
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
            **({"auto": auto_info} if auto_info else {}),
        },
    )


def checkpoint_shape(ckpt: Path) -> dict:
    """The model shape (TrainConfig's shape fields) a checkpoint was written with."""
    from gptkit.checkpoint import read_config

    return shape_of(read_config(ckpt)[0].to_dict())


def check_init_from(path: str, tokenizer: str, vocab: int) -> tuple[Path, dict]:
    """--init-from must be a gptkit checkpoint whose vocabulary fits the data: (its path, its model shape)."""
    from gptkit.checkpoint import read_config, resolve_checkpoint

    p = Path(path).expanduser().resolve()
    found = resolve_checkpoint(p)
    if found is None:
        raise GptkitError(
            f"--init-from {path}: not a gptkit checkpoint; make one with `gptkit convert SRC DIR --to gptkit`"
        )
    mc, meta = read_config(found)
    if meta.get("tokenizer") != tokenizer or mc.vocab_size != vocab:
        raise GptkitError(
            f"--init-from {path}: the model's vocabulary ({meta.get('tokenizer')}, {mc.vocab_size}) does not match "
            f"the data's ({tokenizer}, {vocab})"
        )
    return found, shape_of(mc.to_dict())


def torchrun_command(rr: ResolvedRun) -> list[str]:
    launch = rr.launch
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(rr.extra["nproc_per_node"])]
    if launch.nodes == 1 and launch.master_port is None:
        cmd += ["--standalone"]
    else:
        # c10d rendezvous: the node with --node-rank 0 hosts the store at HOST:PORT, the others join.
        cmd += [
            "--nnodes",
            str(launch.nodes),
            "--node-rank",
            str(launch.node_rank),
            "--rdzv-backend",
            "c10d",
            "--rdzv-endpoint",
            f"{launch.master_addr}:{launch.master_port}",
            "--rdzv-id",
            Path(rr.run_dir).name,
            "--rdzv-conf",
            f"is_host={int(launch.node_rank == 0)}",
        ]
    cmd += ["--max-restarts", "0", "-m", "gptkit.train.main", rr.run_dir]
    return cmd


def worker_env(rr: ResolvedRun, verbose: bool = False) -> dict[str, str]:
    env = dict(os.environ)
    env[LAUNCHER_ENV] = "1"
    env[LAUNCHER_PID_ENV] = str(os.getpid())  # a worker checks that torchrun's parent is still us
    if verbose:
        env[VERBOSE_ENV] = "1"
    else:
        env.pop(VERBOSE_ENV, None)
    env.setdefault("PYTHONUNBUFFERED", "1")  # log lines appear as they happen when not on a terminal
    # Processes on one node share its cores: give each an equal slice (torchrun would use 1).
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // int(rr.extra["nproc_per_node"]))))
    if rr.extra["device_type"] == "cpu":
        env.update({k: v for k, v in CPU_MALLOC_ENV.items() if k not in env})
    return env


# glibc hands every allocation above 32 MB straight from the kernel and back, so the large tensors of
# each step (logits, the embedding gradient) come back as fresh pages: ~50k page faults a step on the
# small preset. Keeping them in the heap, as a caching allocator would, removes that (~3% of a step).
CPU_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(1 << 34), "MALLOC_TRIM_THRESHOLD_": str(1 << 36)}


def write_run_config(rr: ResolvedRun) -> None:
    from gptkit.fsutil import write_json_atomic

    run_dir = Path(rr.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run_dir / CONFIG_FILE, rr.to_dict())


def child_pids(pid: int) -> list[int]:
    """Direct children of a process (Linux /proc; empty elsewhere)."""
    out: list[int] = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return out
    for name in entries:
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(name))
            except (OSError, IndexError, ValueError):
                continue
    return out


TORCHRUN_LOG = "torchrun.log"


class Outcome:
    """How torchrun ended: its exit code (negative: killed by that signal) and the stop requests sent."""

    def __init__(self, returncode: int, stops: list[int]):
        self.returncode, self.stops = returncode, stops

    @property
    def code(self) -> int:
        """The exit code for `gptkit train`: 128 + signal after a stop request."""
        return 128 + self.stops[0] if self.stops else self.returncode


def run_torchrun(cmd: list[str], env: dict[str, str], echo=print, log: Path | None = None) -> Outcome:
    """Run torchrun and wait for it.

    The first Ctrl-C or SIGTERM goes to the workers themselves: they finish the step, save a
    checkpoint and exit 0, so torchrun ends quietly. A second one kills the workers at once (the last
    complete checkpoint stands) and stops torchrun. torchrun runs in its own session, so a
    terminal's Ctrl-C reaches it only through us; and it is killed by the kernel when we die
    (parent-death signal), whatever kills us, as each worker is when torchrun dies: no orphans.
    `log`: torchrun's stderr goes there (its reports and tracebacks); None = the terminal.
    """
    from gptkit.train import signals

    err = open(log, "wb") if log is not None else None
    try:
        proc = subprocess.Popen(cmd, env=env, start_new_session=True, preexec_fn=signals.child_preexec(), stderr=err)
    finally:
        if err is not None:
            err.close()
    received: list[int] = []

    def forward(signum, frame):
        received.append(signum)
        workers = child_pids(proc.pid)
        if len(received) == 1 and workers:
            echo("gptkit: stopping after this step and saving a checkpoint (again to stop at once)")
            targets = [(pid, signal.SIGTERM) for pid in workers]
        else:
            targets = [(pid, signal.SIGKILL) for pid in workers] + [(proc.pid, signal.SIGTERM)]
        for pid, sig in targets:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        rc = proc.wait()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    return Outcome(rc, received)


def worker_errors(run_dir: Path) -> list[str]:
    d = run_dir / ERRORS_DIR
    if not d.is_dir():
        return []
    files = sorted(d.glob("rank*.txt"), key=lambda p: int(p.stem[4:]))
    return [f.read_text().strip() for f in files]


def train(
    overrides: TrainOverrides,
    launch_overrides: LaunchOverrides,
    *,
    config_file: str | Path | None = None,
    name: str | None = None,
    out: str | Path | None = None,
    resume: str | None = None,
    dry_run: bool = False,
    break_lock: bool = False,
    verbose: bool = False,
    echo: Callable[[str], object],
) -> int:
    """Resolve, lock the run directory, write RUN/config.json, run torchrun. Returns the exit code; a
    failed run (a worker's error, a dead rank, a hang, torchrun killed) is raised as one GptkitError
    that says what happened, the last complete checkpoint and the resume command.

    `echo` shows the command, the resolved config (--dry-run), the stop notices and the end summary.
    `verbose`: torch's own output (tracebacks, torchrun's reports) on the terminal instead of
    RUN/error-RANK.log and RUN/torchrun.log. `break_lock`: take the run's lock even when it is held
    from another host."""
    rr = prepare(
        overrides,
        launch_overrides,
        config_file=config_file,
        name=name,
        out=out,
        resume=resume,
        warn=lambda m: echo(f"warning: {m}"),
    )
    if rr.extra.get("auto") and not rr.resume_from:
        echo(rr.extra["auto"]["line"])
    cmd = torchrun_command(rr)
    echo("$ " + shlex.join(cmd))
    if dry_run:
        echo(json.dumps(rr.to_dict(), indent=2))
        return 0
    if rr.launch.watchdog is not None and rr.launch.watchdog < 0:
        raise GptkitError(f"--watchdog {rr.launch.watchdog:g}: give seconds, or 0 to turn the watchdog off")
    lock = lock_run(rr, force=break_lock)
    try:
        if rr.extra["device_type"] == "cpu":
            import torch

            from gptkit.device import resolve_precision
            from gptkit.train.mfu import cpu_peak_flops

            # Measured once per machine and precision, before the workers compete for the cores.
            cpu_peak_flops(resolve_precision(rr.train.precision, torch.device("cpu")).name)
        write_run_config(rr)
        run_dir = Path(rr.run_dir)
        clear_run_reports(run_dir)
        outcome = run_torchrun(cmd, worker_env(rr, verbose), echo=echo, log=None if verbose else run_dir / TORCHRUN_LOG)
    finally:
        if lock is not None:
            lock.release()
    return finish(rr, outcome, echo)


# --- one trainer per run directory ---------------------------------------------------------------
def lock_run(rr: ResolvedRun, force: bool = False):
    """RUN/.lock for this launcher, before any process starts; refused in one line naming the holder.

    Several nodes share one run directory: only node 0 (the rendezvous host) takes the lock, so a
    second run on the same directory is refused there; the other nodes join node 0's rendezvous."""
    from gptkit.lock import LOCK_FILE, acquire

    if rr.launch.node_rank != 0:
        return None
    return acquire(
        Path(rr.run_dir) / LOCK_FILE,
        subject=rr.run_dir,
        what="gptkit train",
        how_to_break="give `gptkit train --break-lock` (a second trainer on one run would corrupt it)",
        force=force,
    )


def clear_run_reports(run_dir: Path) -> None:
    """The last run's error, hang and log files: each run's report is its own."""
    from gptkit.train.watchdog import HANG_PREFIX

    errs = run_dir / ERRORS_DIR
    if errs.is_dir():
        for f in errs.iterdir():
            f.unlink()
    for pattern in (f"{HANG_PREFIX}*.txt", "error-*.log", TORCHRUN_LOG):
        for f in run_dir.glob(pattern):
            f.unlink()


# --- how a run ended, in one line ----------------------------------------------------------------
def resume_command(rr: ResolvedRun) -> str:
    launch, cmd = rr.launch, ["gptkit", "train", "--resume", rr.run_dir]
    if launch.gpus is not None:
        cmd += ["--gpus", str(launch.gpus)]
    if rr.extra.get("device_type") == "cpu" and launch.nproc != 1:
        cmd += ["--nproc", str(launch.nproc)]
    if launch.nodes > 1:
        cmd += ["--nodes", str(launch.nodes), "--node-rank", str(launch.node_rank)]
        cmd += ["--master-addr", launch.master_addr, "--master-port", str(launch.master_port)]
    if launch.watchdog is not None:
        cmd += ["--watchdog", f"{launch.watchdog:g}"]
    return shlex.join(cmd) + (" (on every node)" if launch.nodes > 1 else "")


def where_to_resume(rr: ResolvedRun) -> str:
    from gptkit.checkpoint import latest_checkpoint

    ckpt = latest_checkpoint(Path(rr.run_dir))
    if ckpt is None:
        return "no checkpoint was saved yet; run the same command again to start over"
    return f"the last complete checkpoint is {ckpt}; resume with `{resume_command(rr)}`"


def _signal_name(n: int) -> str:
    try:
        return signal.Signals(n).name
    except ValueError:
        return f"signal {n}"


def finish(rr: ResolvedRun, outcome: Outcome, echo: Callable[[str], object]) -> int:
    """Turn torchrun's ending into gptkit's: an exit code, or one GptkitError line."""
    from gptkit.train.watchdog import hang_reports

    run_dir = Path(rr.run_dir)
    for log in run_dir.glob("error-*.log"):
        if log.stat().st_size == 0:
            log.unlink()  # a rank killed before it could write anything
    if len(outcome.stops) > 1:
        echo(f"gptkit: stopped at once; {where_to_resume(rr)}")
        return outcome.code
    messages = worker_errors(run_dir)
    if messages:
        raise GptkitError(messages[0])
    hangs = hang_reports(run_dir)
    if hangs:
        raise GptkitError(hang_line(run_dir, hangs) + "; " + where_to_resume(rr))
    if outcome.stops:
        return outcome.code  # the workers said where they stopped
    rc = outcome.returncode
    if rc == 0:
        for line in end_summary(run_dir):
            echo(line)
        return 0
    if rc < 0:
        raise GptkitError(
            f"torchrun (which runs the workers) was killed by {_signal_name(-rc)} and took them with it; "
            + where_to_resume(rr)
        )
    raise GptkitError(failed_ranks_line(run_dir, rc) + "; " + where_to_resume(rr))


def hang_line(run_dir: Path, hangs: list[dict]) -> str:
    first = min(hangs, key=lambda h: h.get("limit_s") or 0)
    waited = max(h.get("waited_s") or 0 for h in hangs)
    where = ", ".join(f"rank {h['rank']} in {h.get('where') or 'no gptkit frame'}" for h in hangs)
    return (
        f"no progress for {waited:.0f} s (limit {first.get('limit_s', 0):.0f} s, {first.get('phase', '?')} after step "
        f"{first.get('step', '?')}): {where}; stacks in {run_dir}/hang-*.txt"
    )


def torchrun_failures(log: Path) -> list[tuple[int, int]]:
    """(rank, exit code) of each failed worker in torchrun's report (exit code < 0: that signal)."""
    import re

    try:
        text = log.read_text(errors="replace")
    except OSError:
        return []
    found = re.findall(r"rank\s*:\s*(\d+) \(local_rank: \d+\)\s*\n\s*exitcode\s*:\s*(-?\d+)", text)
    seen: dict[int, int] = {}
    for rank, code in found:
        seen.setdefault(int(rank), int(code))
    return sorted(seen.items())


def failed_ranks_line(run_dir: Path, rc: int) -> str:
    from gptkit.train.main import error_log

    failures = torchrun_failures(run_dir / TORCHRUN_LOG)
    if not failures:
        log = run_dir / TORCHRUN_LOG
        return f"torchrun exited with code {rc} (" + (f"its report is in {log})" if log.exists() else "see above)")
    # A rank killed by a signal is the cause; the others then fail on the broken connection.
    failures.sort(key=lambda f: (f[1] >= 0, f[0]))
    parts = []
    for rank, code in failures:
        log = error_log(run_dir, rank)
        how = f"died with signal {_signal_name(-code)}" if code < 0 else f"exited with code {code}"
        parts.append(f"rank {rank} {how}" + (f" (traceback in {log})" if log.exists() else ""))
    head, rest = parts[0], parts[1:]
    return head + (f"; then {', '.join(rest)}" if rest else "")


def end_summary(run_dir: Path) -> list[str]:
    """What a finished run reports last: gptkit.train.metrics.summary_lines and the next command."""
    from gptkit.checkpoint import latest_checkpoint
    from gptkit.train.metrics import read_metrics, summarize, summary_lines

    s = summarize(read_metrics(run_dir))
    if s is None:
        return []
    ckpt = latest_checkpoint(run_dir)
    under_runs = run_dir.resolve().parent == paths.runs_dir().resolve()
    return summary_lines(s, str(ckpt) if ckpt else None, run_dir.name if under_runs else str(run_dir))
