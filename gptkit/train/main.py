"""The torchrun target: `python -m torch.distributed.run ... -m gptkit.train.main RUN_DIR`.

A user error in a worker (a NaN loss, a bad checkpoint) is written to RUN_DIR/.errors/rank<R>.txt
for `gptkit train` to print as one line. When every rank fails at the same point, all of them exit
0 so torchrun does not add its multi-page failure report; the launcher turns the file into exit 1.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

LAUNCHER_ENV = "GPTKIT_LAUNCHER"  # set by `gptkit train`; absent when someone runs torchrun by hand
ERRORS_DIR = ".errors"


def write_error(run_dir: Path, rank: int, message: str) -> None:
    d = run_dir / ERRORS_DIR
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / f".rank{rank}.tmp"
    tmp.write_text(message + "\n")
    os.replace(tmp, d / f"rank{rank}.txt")


def main(argv: list[str] | None = None) -> int:
    from gptkit.train import signals

    signals.install()  # before the heavy imports: a stop request during start-up is kept
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m gptkit.train.main RUN_DIR (normally started by `gptkit train`)", file=sys.stderr)
        return 2
    run_dir = Path(argv[0])
    from gptkit.train.trainer import TrainingError, run

    rank = int(os.environ.get("RANK", 0))
    try:
        run(run_dir)
    except TrainingError as e:
        return _fail(run_dir, rank, str(e), collective=e.collective)
    except Exception as e:  # noqa: BLE001 - GptkitError and friends: one line, not a traceback
        from gptkit.errors import GptkitError

        if not isinstance(e, GptkitError):
            raise
        return _fail(run_dir, rank, str(e), collective=True)
    return 0


def _fail(run_dir: Path, rank: int, message: str, collective: bool) -> int:
    if os.environ.get(LAUNCHER_ENV):
        try:
            if rank == 0 or not collective:
                write_error(run_dir, rank, message)
            return 0 if collective else 1
        except OSError:  # the disk is full (often the error itself): say it here instead
            pass
    if rank == 0 or not collective:
        print(f"gptkit: error: {message}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
