"""A hang watchdog for each worker: no progress within the limit -> every rank's stack on disk, exit.

A rank that stops (a deadlocked collective, a stuck filesystem, a peer that died without the
network noticing) otherwise holds every other rank in its next all-reduce until the process
group's own timeout, which then says only that a collective timed out. Here a thread watches the
time since the last finished step. Past the limit it writes the Python stack of every thread of
this process to RUN/hang-RANK.txt (faulthandler: works while the main thread is stuck in C++),
waits briefly for the other ranks to do the same (seeing one hang file, each rank writes its own
at once), and exits with HANG_EXIT. `gptkit train` reads the files and names where each rank was.

The limit: `--watchdog SECONDS` (0 = off), or by default max(10 x the median step time, 5 minutes)
once steps are timed. Slow phases announce themselves (phase()) and get their own allowance, which
lasts until the next finished step: the ranks that wait for rank 0's checkpoint save in their next
all-reduce are covered by the save's allowance too. The process group's timeout (pg_timeout) is set
above every allowance, so the watchdog speaks first.

The same thread notices when this worker has been orphaned (its parent replaced), where the
kernel's parent-death signal is not available, and ends it without saving; and when another rank
has failed (its record in RUN/.errors, train/main.py): it notes that this rank stopped for that one
and ends it, since the main thread may be waiting for the failed rank in a collective that, under
NCCL, would not return before its timeout. This runs with the watchdog off (--watchdog 0) too.
"""

from __future__ import annotations

import faulthandler
import json
import os
import statistics
import threading
import time
from pathlib import Path

HANG_EXIT = 75
PEER_FAILED_EXIT = 76  # another rank failed; this one stopped for it
HANG_PREFIX = "hang-"
MIN_LIMIT = 300.0  # the default limit is never below 5 minutes
STEPS_FACTOR = 10
# Allowance of each announced phase (seconds); the step limit applies when it is larger.
PHASES = {
    "start-up": 1800.0,  # imports, rendezvous, data, model, resume, first step
    "compile": 3600.0,
    "evaluation": 1800.0,
    "hellaswag": 1800.0,
    "sample": 600.0,
    "checkpoint save": 1800.0,
}
POLL_S = 0.25
GRACE_S = 10.0  # how long a rank that fired waits for the others' stacks


def pg_timeout(limit: float | None) -> float:
    """The process group's collective timeout: above every allowance the watchdog can give."""
    return 2 * max(max(PHASES.values()), limit or 0)


def hang_file(run_dir: Path, rank: int) -> Path:
    return Path(run_dir) / f"{HANG_PREFIX}{rank}.txt"


class Watchdog:
    """limit: seconds, 0 = off, None = automatic. parent: exit when os.getppid() is no longer it."""

    def __init__(self, run_dir: str | Path, rank: int, world_size: int, limit: float | None, parent: int | None):
        self.run_dir, self.rank, self.world_size = Path(run_dir), rank, world_size
        self.limit, self.parent = limit, parent
        self.max_limit = pg_timeout(limit) * 0.9
        self.step_times: list[float] = []
        self.step = 0
        self.phase_name = "start-up"
        self.last = time.monotonic()
        self.born = time.time()  # a hang file older than this is a failed attempt's (restarts.py)
        self.allowance = self._phase_allowance("start-up")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._main_ident = threading.main_thread().ident

    # --- what the trainer calls ------------------------------------------------------------------
    def step_limit(self) -> float | None:
        if self.limit is not None:
            return self.limit
        if not self.step_times:
            return None
        return min(max(STEPS_FACTOR * statistics.median(self.step_times[-50:]), MIN_LIMIT), self.max_limit)

    def beat(self, step: int, step_time: float | None = None) -> None:
        """A step finished: progress."""
        if step_time is not None:
            self.step_times.append(step_time)
        self.step, self.phase_name, self.last = step, "training", time.monotonic()
        self.allowance = self.step_limit() or self._phase_allowance("start-up")

    def phase(self, name: str) -> None:
        """A slow phase starts; its allowance holds until the next beat()."""
        self.phase_name = name
        self.allowance = max(self.allowance, self._phase_allowance(name))

    def _phase_allowance(self, name: str) -> float:
        return max(PHASES[name], self.limit or 0)

    # --- the thread ------------------------------------------------------------------------------
    def start(self) -> Watchdog:
        hang_file(self.run_dir, self.rank).unlink(missing_ok=True)  # a stale one from a run by hand
        self._thread = threading.Thread(target=self._watch, name="gptkit-watchdog", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _watch(self) -> None:
        polls = 0
        while not self._stop.wait(POLL_S):
            polls += 1
            if self.parent is not None and os.getppid() != self.parent:
                os._exit(1)  # orphaned: stop now, without saving; the last complete checkpoint stands
            if self.world_size > 1 and polls % 4 == 0:
                self._leave_if_a_peer_failed()
            if self.limit == 0:
                continue
            waited = time.monotonic() - self.last
            # The run directory is listed once a second, not every poll: it may be on a network filesystem.
            if waited > self.allowance or (polls % 4 == 0 and self._peer_fired()):
                self._fire(waited)

    def _leave_if_a_peer_failed(self) -> None:
        from gptkit.train.failures import error_ranks, write_error

        failed = {r: e for r, e in error_ranks(self.run_dir).items() if r != self.rank and e.get("peer") is None}
        if not failed or self._stop.is_set():  # stopped: this rank failed itself and says so
            return
        rank = min(failed)
        try:
            write_error(self.run_dir, self.rank, f"stopped: rank {rank} failed", peer=rank)
        finally:
            os._exit(PEER_FAILED_EXIT)

    def _peer_fired(self) -> bool:
        try:
            return any(
                p.name.startswith(HANG_PREFIX) and p.stat().st_mtime >= self.born for p in self.run_dir.iterdir()
            )
        except OSError:
            return False

    def _fire(self, waited: float) -> None:
        from gptkit.fsutil import atomic_output

        header = {
            "rank": self.rank,
            "step": self.step,
            "phase": self.phase_name,
            "waited_s": round(waited, 1),
            "limit_s": round(self.allowance, 1),
            "main_thread": self._main_ident,
        }
        # Whole or absent: the launcher and the other ranks read whatever hang file they see.
        with atomic_output(hang_file(self.run_dir, self.rank)) as tmp, open(tmp, "w") as f:
            f.write(json.dumps(header) + "\n")
            f.flush()
            faulthandler.dump_traceback(file=f, all_threads=True)
        deadline = time.monotonic() + GRACE_S
        while time.monotonic() < deadline:
            if len(list(self.run_dir.glob(f"{HANG_PREFIX}*.txt"))) >= self.world_size:
                break
            time.sleep(POLL_S)
        os._exit(HANG_EXIT)


# --- reading the files (the launcher) ------------------------------------------------------------
def read_hang(path: Path) -> dict:
    """The header of one hang file, plus `where`: the innermost gptkit frame of the main thread."""
    lines = path.read_text(errors="replace").splitlines()
    try:
        info = json.loads(lines[0])
    except (IndexError, ValueError):
        info = {}
    want = info.get("main_thread")
    block: list[str] = []
    current: int | None = None
    blocks: dict[int | None, list[str]] = {}
    for ln in lines[1:]:
        s = ln.strip()
        if s.startswith(("Thread 0x", "Current thread 0x")):
            try:
                current = int(s.split("0x", 1)[1].split()[0], 16)
            except ValueError:
                current = None
            block = blocks.setdefault(current, [])
        elif s.startswith("File "):
            block.append(s)
    frames = blocks.get(want) or next(iter(blocks.values()), [])
    info["where"] = None
    package = Path(__file__).resolve().parents[1]
    for fr in frames:  # most recent call first
        # File "/x/gptkit/train/trainer.py", line 85 in all_reduce
        if "/gptkit/" not in fr:
            continue
        file = fr.split('"')[1]
        # The last /gptkit/ of the path, and a file this package has: a clone in a folder named gptkit
        # holds torch's files too (/x/gptkit/.venv/.../torch/...), and those are not gptkit's frames.
        rel = file.rsplit("/gptkit/", 1)[1]
        if not (package / rel).is_file():
            continue
        rest = fr.rsplit('"', 1)[1]  # , line 85 in all_reduce
        line = rest.split("line", 1)[1].split()[0]
        func = rest.rsplit(" in ", 1)[1] if " in " in rest else "?"
        info["where"] = f"{func} ({rel}:{line})"
        break
    return info


def hang_reports(run_dir: Path) -> list[dict]:
    ranks = {}
    for p in Path(run_dir).glob(f"{HANG_PREFIX}*.txt"):
        r = p.stem[len(HANG_PREFIX) :]
        if r.isdigit():
            ranks[int(r)] = p
    return [{"rank": r, **read_hang(ranks[r])} for r in sorted(ranks)]
