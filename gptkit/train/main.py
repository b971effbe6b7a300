"""The torchrun target: `python -m torch.distributed.run ... -m gptkit.train.main RUN_DIR`.

A user error in a worker (a NaN loss, a bad checkpoint, a full disk) is written to
RUN_DIR/.errors/rank<R>.json for `gptkit train` to print as one line. When every rank fails at the
same point, all of them exit 0 so torchrun does not add its multi-page failure report; the launcher
turns the file into exit 1. An error only this rank can see (rank 0's checkpoint write, its sample)
exits 1.

Either way the other ranks must hear of it (train/failures.py): the failing rank keeps its process
group open and waits for every other rank to have a record too.

Started by `gptkit train`, a worker dies with torchrun (procs.die_with_parent) and writes its
stderr (torch's tracebacks, warnings) to RUN_DIR/error-<RANK>.log rather than the terminal, unless
the launcher asked for --verbose.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from gptkit.train.config import LAUNCHER_ENV  # re-exported: the launcher sets it from here

LAUNCHER_PID_ENV = "GPTKIT_LAUNCHER_PID"  # the `gptkit train` process: torchrun's parent
VERBOSE_ENV = "GPTKIT_VERBOSE"  # 1: the workers' stderr stays on the terminal


def main(argv: list[str] | None = None) -> int:
    from gptkit.train import signals

    signals.install()  # before the heavy imports: a stop request during start-up is kept
    if "TORCHELASTIC_RUN_ID" in os.environ:
        _die_with_torchrun()
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m gptkit.train.main RUN_DIR (normally started by `gptkit train`)", file=sys.stderr)
        return 2
    run_dir = Path(argv[0])
    rank = int(os.environ.get("RANK", 0))
    from gptkit.train.restarts import archive_own_files, restart_count

    if restart_count():  # torchrun restarted us (--max-restarts): the failed attempt's files move aside
        archive_own_files(run_dir, rank, restart_count(), error_log(run_dir, rank))
    log = None
    if os.environ.get(LAUNCHER_ENV) and not os.environ.get(VERBOSE_ENV):
        log = error_log(run_dir, rank)
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 2)
        os.close(fd)
    rc = _run(run_dir, rank)  # an exception leaves the log: its traceback is written after this
    if log is not None and log.exists() and log.stat().st_size == 0:
        log.unlink()  # nothing went wrong on this rank
    return rc


def error_log(run_dir: Path, rank: int) -> Path:
    return Path(run_dir) / f"error-{rank}.log"


def _die_with_torchrun() -> None:
    """SIGKILL when torchrun dies; exit now if it (or gptkit above it) is already gone."""
    from gptkit.procs import die_with_parent

    parent = os.getppid()
    die_with_parent(parent)
    launcher = os.environ.get(LAUNCHER_PID_ENV)
    if launcher and launcher.isdigit():
        try:
            with open(f"/proc/{parent}/stat") as f:
                grandparent = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            return  # no /proc: the watchdog thread's parent check is what is left
        if grandparent != int(launcher):
            os._exit(1)  # torchrun was orphaned before we started: it is being killed too


def _run(run_dir: Path, rank: int) -> int:
    from gptkit.train.trainer import run

    try:
        run(run_dir)
    except Exception as e:  # noqa: BLE001 - GptkitError and friends: one line, not a traceback
        from gptkit.errors import DiskError, GptkitError

        if not isinstance(e, GptkitError):
            raise
        # TrainingError says whether every rank raises it at the same point; others say so when
        # raised where one rank works alone (Dist.alone), and are otherwise every rank's.
        collective = bool(getattr(e, "collective", True))
        return _fail(run_dir, rank, str(e), collective=collective, resumable=isinstance(e, DiskError))
    return 0


def _fail(run_dir: Path, rank: int, message: str, collective: bool, resumable: bool = False) -> int:
    from gptkit.train.failures import wait_for_peers, write_error

    if os.environ.get(LAUNCHER_ENV):
        try:
            write_error(run_dir, rank, message, resumable)
            wait_for_peers(run_dir, int(os.environ.get("WORLD_SIZE", 1)))
            return 0 if collective else 1
        except OSError:  # the disk is full (often the error itself): say it here instead
            pass
    if rank == 0 or not collective:
        print(f"gptkit: error: {message}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
