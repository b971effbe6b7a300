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
    LaunchConfig,
    LaunchOverrides,
    ResolvedRun,
    TrainConfig,
    TrainOverrides,
    check_types,
    load_config_file,
    merge,
    plan_batches,
    preset_config,
    split_settings,
    validate,
)
from gptkit.train.main import ERRORS_DIR, LAUNCHER_ENV


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
        and not any(_given(overrides, file_train, k) for k in SIZING_KEYS)
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
    if ckpt is not None:
        base = TrainConfig.from_dict(read_checkpoint_config(ckpt), source=f"{ckpt}/config.json")
        for asked in (file_train.get("preset", base.preset), overrides.preset or base.preset):
            if asked != base.preset:
                raise GptkitError(f"cannot change the model preset of a run being resumed ({base.preset} -> {asked})")
    else:
        base = preset_config(preset)
        if choice is not None:
            base = replace(base, **choice.settings)
    cfg = overrides.apply(merge(base, file_train, str(config_file)))
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
        cfg = replace(cfg, init_from=str(check_init_from(cfg.init_from, tokenizer, vocab, cfg.seq_len)))
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


def check_init_from(path: str, tokenizer: str, vocab: int, seq_len: int) -> Path:
    """--init-from must be a gptkit checkpoint whose vocabulary and context fit the data and run."""
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
    if seq_len > mc.block_size:
        raise GptkitError(
            f"--seq-len {seq_len} exceeds the model's context length {mc.block_size} (--init-from {path})"
        )
    return found


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


def worker_env(rr: ResolvedRun) -> dict[str, str]:
    env = dict(os.environ)
    env[LAUNCHER_ENV] = "1"
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
    out = []
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


def run_torchrun(cmd: list[str], env: dict[str, str], echo=print) -> int:
    """Run torchrun and return its exit code, or 128 + signal if it was stopped by Ctrl-C / SIGTERM.

    The first Ctrl-C or SIGTERM goes to the workers themselves: they finish the step, save a
    checkpoint and exit 0, so torchrun ends quietly. A second one goes to torchrun, which stops them
    at once. (torchrun runs in its own session so a terminal's Ctrl-C reaches it only through us.)
    """
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    received: list[int] = []

    def forward(signum, frame):
        received.append(signum)
        workers = child_pids(proc.pid) if len(received) == 1 else []
        if workers:
            echo("gptkit: stopping after this step and saving a checkpoint (again to stop at once)")
        for pid in workers or [proc.pid]:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        rc = proc.wait()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    return 128 + received[0] if received else rc


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
    echo: Callable[[str], object],
) -> int:
    """Resolve, write RUN/config.json, run torchrun. Returns the exit code; a worker's error is raised.

    `echo` shows the command, the resolved config (--dry-run) and the stop notice."""
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
    if rr.extra["device_type"] == "cpu":
        import torch

        from gptkit.device import resolve_precision
        from gptkit.train.mfu import cpu_peak_flops

        # Measured once per machine and precision, before the workers compete for the cores.
        cpu_peak_flops(resolve_precision(rr.train.precision, torch.device("cpu")).name)
    write_run_config(rr)
    run_dir = Path(rr.run_dir)
    errs = run_dir / ERRORS_DIR
    if errs.is_dir():
        for f in errs.iterdir():
            f.unlink()
    rc = run_torchrun(cmd, worker_env(rr), echo=echo)
    messages = worker_errors(run_dir)
    if messages:
        raise GptkitError(messages[0])
    if rc == 0:
        for line in end_summary(run_dir):
            echo(line)
    return rc


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
