"""One rank's error, for the launcher and for the other ranks: RUN/.errors/rank<R>.json.

A worker that fails with a user error (train/main.py) writes its record: the one-line message and
whether the run can resume as it is. The launcher (train/outcome.py) prints the first rank's.

The other ranks must hear of it: under NCCL a peer waiting in its next all-reduce for a rank that
has failed waits until the collective timeout (up to an hour), and torchrun, once told, gives a rank
stuck there 30 s before it kills it. So the failing rank keeps its process group open and waits up
to PEER_GRACE_S for every other rank to have a record too: its own error, or a note that it stopped
for this one, which each rank's watchdog thread (train/watchdog.py) writes within a second of seeing
a peer's record, before it ends its process. With nodes that do not share the run directory the
notes cannot be seen; torchrun's own teardown is what is left there.

No torch here: the launcher and a starting worker import it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

ERRORS_DIR = ".errors"
PEER_GRACE_S = 10.0  # how long a failed rank waits for the others to hear of it (each polls once a second)


def write_error(run_dir: Path, rank: int, message: str, resumable: bool = False, peer: int | None = None) -> None:
    """RUN/.errors/rankN.json for the launcher: the one-line message, whether the run can resume as it
    is (a full or read-only disk: the launcher then adds the checkpoint and the command), and `peer`:
    the rank whose error this one stopped for (None: this rank's own error)."""
    from gptkit.fsutil import write_json_atomic

    d = Path(run_dir) / ERRORS_DIR
    d.mkdir(parents=True, exist_ok=True)
    write_json_atomic(d / f"rank{rank}.json", {"message": message, "resumable": resumable, "peer": peer})


def error_ranks(run_dir: Path) -> dict[int, dict]:
    """The ranks with a record in RUN/.errors, and the records (unreadable ones: {})."""
    out: dict[int, dict] = {}
    try:
        files = list((Path(run_dir) / ERRORS_DIR).glob("rank*.json"))
    except OSError:
        return out
    for f in files:
        if not f.stem[4:].isdigit():
            continue
        try:
            out[int(f.stem[4:])] = json.loads(f.read_text())
        except (OSError, ValueError):
            out[int(f.stem[4:])] = {}
    return out


def wait_for_peers(run_dir: Path, world_size: int, grace: float = PEER_GRACE_S) -> None:
    """Until every rank has a record (its own error, or its note that it stopped for a peer's), or `grace`."""
    deadline = time.monotonic() + grace
    while len(error_ranks(run_dir)) < world_size and time.monotonic() < deadline:
        time.sleep(0.1)
