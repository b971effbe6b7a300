"""`gptkit train` as a library function: resolve the run (train/resolve.py), lock its directory,
start torchrun and wait for it. The workers read the resolved config from RUN/config.json.

    one node:  python -m torch.distributed.run --standalone --nproc-per-node N -m gptkit.train.main RUN
    several:   ... --nnodes M --node-rank R --rdzv-backend c10d --rdzv-endpoint HOST:PORT
               --rdzv-id NAME --rdzv-conf is_host=0|1 ...
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from gptkit.errors import GptkitError
from gptkit.runs import CONFIG_FILE
from gptkit.train.config import (
    LaunchOverrides,
    ResolvedRun,
    TrainOverrides,
)
from gptkit.train.failures import ERRORS_DIR
from gptkit.train.main import LAUNCHER_ENV, LAUNCHER_PID_ENV, VERBOSE_ENV
from gptkit.train.mfu import threads_per_process
from gptkit.train.outcome import TORCHRUN_LOG, Outcome, finish
from gptkit.train.resolve import prepare


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
    cmd += ["--max-restarts", str(launch.max_restarts or 0), "-m", "gptkit.train.main", rr.run_dir]
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
    env.update(import_path_env(env))
    # Processes on one node share its cores: each an equal slice, unless OMP_NUM_THREADS is set.
    env["OMP_NUM_THREADS"] = str(threads_per_process(int(rr.extra["nproc_per_node"])))
    if rr.extra["device_type"] == "cpu":
        env.update({k: v for k, v in CPU_MALLOC_ENV.items() if k not in env})
    return env


def import_path_env(env: dict[str, str]) -> dict[str, str]:
    """Make torchrun and its workers import the gptkit (and torch) this launcher runs.

    `python -m` puts the working directory first on sys.path, so started where a folder named
    gptkit lies (the parent of a clone), every worker imported that folder instead and died
    ("cannot import name '__version__' from 'gptkit'"). PYTHONSAFEPATH (3.11+) leaves the working
    directory out; only when this gptkit itself came from it (`python -m gptkit` in an uninstalled
    checkout) does it go on PYTHONPATH, so the workers still find the same package."""
    import gptkit

    out = {"PYTHONSAFEPATH": "1"}
    root = Path(gptkit.__file__).resolve().parents[1]
    if root == Path.cwd().resolve():
        out["PYTHONPATH"] = os.pathsep.join([str(root), *filter(None, [env.get("PYTHONPATH")])])
    return out


# glibc hands every allocation above 32 MB straight from the kernel and back, so the large tensors of
# each step (logits, the embedding gradient) come back as fresh pages: ~50k page faults a step on the
# small preset. Keeping them in the heap, as a caching allocator would, removes that (~3% of a step).
CPU_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(1 << 34), "MALLOC_TRIM_THRESHOLD_": str(1 << 36)}


def write_run_config(rr: ResolvedRun) -> None:
    from gptkit.fsutil import make_dirs, write_json_atomic

    run_dir = Path(rr.run_dir)
    make_dirs(run_dir)
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


def run_torchrun(
    cmd: list[str],
    env: dict[str, str],
    echo=print,
    log: Path | None = None,
    show: bool = False,
    stop_on: Path | None = None,
) -> Outcome:
    """Run torchrun and wait for it.

    The first Ctrl-C or SIGTERM goes to the workers themselves: they finish the step, save a
    checkpoint and exit 0, so torchrun ends quietly. A second one kills the workers at once (the last
    complete checkpoint stands) and stops torchrun. torchrun runs in its own session, so a
    terminal's Ctrl-C reaches it only through us; and it is killed by the kernel when we die
    (parent-death signal), whatever kills us, as each worker is when torchrun dies: no orphans.
    `log`: torchrun's stderr goes there (its reports and tracebacks); None = the terminal. `show`
    (--verbose): copied to the terminal as well, so the closing line can still name the failed rank.
    `stop_on` (restarts on): a folder where a worker's error file (a failure known to be deterministic:
    a non-finite loss, a bad shard, an out-of-memory) stops torchrun at once instead of a restart.
    """
    from gptkit import procs

    err = open(log, "wb") if log is not None else None
    try:
        proc = subprocess.Popen(
            cmd,
            env=env,
            start_new_session=True,
            preexec_fn=procs.child_preexec(),
            stderr=subprocess.PIPE if err is not None and show else err,
        )
    except BaseException:
        if err is not None:
            err.close()
        raise
    copier = None
    if err is not None and show:
        copier = threading.Thread(target=_tee, args=(proc.stderr, err, sys.stderr.buffer), daemon=True)
        copier.start()
    elif err is not None:
        err.close()
    received: list[int] = []

    def forward(signum, frame):
        received.append(signum)
        workers = child_pids(proc.pid)
        if len(received) == 1 and workers:
            # On a terminal rank 0's live progress line holds the cursor: start a line of our own.
            lead = "\n" if sys.stdout.isatty() else ""
            echo(f"{lead}gptkit: stopping and saving a checkpoint (again to stop at once)")
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
        while True:
            try:
                rc = proc.wait(timeout=None if stop_on is None else 0.5)
                break
            except subprocess.TimeoutExpired:
                if stop_on is not None and any(stop_on.glob("rank*.json")):
                    stop_at_once(proc)
                    stop_on = None
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if copier is not None:
            copier.join(timeout=5)
    return Outcome(rc, received)


def stop_at_once(proc: subprocess.Popen) -> None:
    """torchrun first (its handler then ends the agent instead of restarting), then its workers."""
    workers = child_pids(proc.pid)
    for pid, sig in [(proc.pid, signal.SIGTERM)] + [(pid, signal.SIGKILL) for pid in workers]:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _tee(src, log, terminal) -> None:
    """Copy torchrun's stderr to its log and to the terminal until it closes (--verbose)."""
    try:
        while chunk := src.read1(1 << 16):
            log.write(chunk)
            log.flush()
            terminal.write(chunk)
            terminal.flush()
    finally:
        log.close()


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
    RUN/error-RANK.log (torchrun's reports still go to RUN/torchrun.log too). `break_lock`: take the run's lock even when it is held
    from another host."""
    rr = prepare(
        overrides,
        launch_overrides,
        config_file=config_file,
        name=name,
        out=out,
        resume=resume,
        warn=lambda m: echo(f"warning: {m}"),
        note=echo,
    )
    if rr.extra.get("slurm"):
        echo(rr.extra["slurm"]["line"])
    cmd = torchrun_command(rr)
    if dry_run:
        echo("$ " + shlex.join(cmd))
        echo(json.dumps(rr.to_dict(), indent=2))
        return 0
    if rr.launch.watchdog is not None and rr.launch.watchdog < 0:
        raise GptkitError(f"--watchdog {rr.launch.watchdog:g}: give seconds, or 0 to turn the watchdog off")
    check_collective_timeout(rr.launch.collective_timeout, rr.launch.watchdog)
    lock = lock_run(rr, force=break_lock)
    echo("$ " + shlex.join(cmd))  # only once the run is ours: a refused start shows no command
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
        outcome = run_torchrun(
            cmd,
            worker_env(rr, verbose),
            echo=echo,
            log=run_dir / TORCHRUN_LOG,
            show=verbose,
            stop_on=run_dir / ERRORS_DIR if rr.launch.max_restarts else None,
        )
    finally:
        if lock is not None:
            lock.release()
    return finish(rr, outcome, echo)


def check_collective_timeout(timeout: float | None, watchdog: float | None) -> None:
    """--collective-timeout must leave the watchdog time to speak first: a rank waits in a collective
    while rank 0 saves a checkpoint or compiles (each with its own allowance), so a shorter process
    group timeout would end the run with torch's bare "collective timed out" instead of the stacks."""
    from gptkit.train.watchdog import PHASES, pg_timeout

    if timeout is None or watchdog == 0:
        return
    least = pg_timeout(watchdog)
    if timeout < least:
        raise GptkitError(
            f"--collective-timeout {timeout:g} is below the watchdog's allowances: ranks wait in a collective while "
            f"rank 0 saves or compiles (up to {max(max(PHASES.values()), watchdog or 0):g} s each), so it must be at "
            f"least {least:g} s (2 x that); give more, leave it out, or turn the watchdog off with --watchdog 0"
        )


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
    from gptkit.train.restarts import ATTEMPT_PREFIX
    from gptkit.train.watchdog import HANG_PREFIX

    errs = run_dir / ERRORS_DIR
    if errs.is_dir():
        for f in errs.iterdir():
            f.unlink()
    for pattern in (f"{HANG_PREFIX}*.txt", "error-*.log", TORCHRUN_LOG):
        for f in run_dir.glob(pattern):
            f.unlink()
    for d in run_dir.glob(f"{ATTEMPT_PREFIX}*"):  # the restarts of the last launch
        shutil.rmtree(d, ignore_errors=True)
