"""Runs that restart themselves: with `--max-restarts N` torchrun starts the workers again after a
failure, with the same command; each restarted worker resumes by itself from the newest valid
checkpoint (checkpoint.py's rule), not from the checkpoint RUN/config.json was launched with.

Attempt n (TORCHELASTIC_RESTART_COUNT = n - 1) leaves its hang and error files in RUN/attempt-n/
when the next one starts: a peer's stale hang file would otherwise fire the new attempt's watchdog.
Rank 0 writes RUN/attempt-n/failed.json ({"step": the last step attempt n logged, "cause"}): a
failure that recurs at the same step is not retried a third time, and the run's last line names
every earlier attempt's cause (earlier_attempts).
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

TORCHRUN_LOG = "torchrun.log"  # torchrun's own output, unless --verbose (read for a restart's cause)
RESTART_ENV = "TORCHELASTIC_RESTART_COUNT"  # set by torchrun: 0 for the first attempt
ATTEMPT_PREFIX = "attempt-"
FAILED_FILE = "failed.json"


def restart_count() -> int:
    try:
        return int(os.environ.get(RESTART_ENV, "0"))
    except ValueError:
        return 0


def attempt_dir(run_dir: Path, n: int) -> Path:
    return Path(run_dir) / f"{ATTEMPT_PREFIX}{n}"


def archive_own_files(run_dir: Path, rank: int, failed_attempt: int, error_log: Path) -> None:
    """Move this rank's hang file and error log of the failed attempt into RUN/attempt-N/."""
    from gptkit.train.watchdog import hang_file

    run_dir = Path(run_dir)
    dest = attempt_dir(run_dir, failed_attempt)
    for f in (hang_file(run_dir, rank), error_log):
        if f.exists():
            dest.mkdir(exist_ok=True)
            os.replace(f, dest / f.name)


def last_logged_step(run_dir: Path) -> int:
    from gptkit.train.metrics import read_metrics

    return max((int(m["step"]) for m in read_metrics(run_dir) if "loss" in m), default=0)


def plan_restart(rr, restarts: int):
    """Rank 0, attempt restarts+1: the run resolved to resume from the newest checkpoint, with
    rr.extra["restart"] = {"n", "of", "failed_at", "resumed_from", "again"} (again: the one-line
    reason to stop, when the failed attempt ended at the same step as the one before it)."""
    from gptkit.checkpoint import latest_checkpoint

    run_dir = Path(rr.run_dir)
    failed_at = last_logged_step(run_dir)
    d = attempt_dir(run_dir, restarts)
    d.mkdir(exist_ok=True)
    cause = failure_cause(run_dir / TORCHRUN_LOG, rr.launch.node_rank)
    (d / FAILED_FILE).write_text(json.dumps({"step": failed_at, "cause": cause}) + "\n")
    again = None
    before = attempt_dir(run_dir, restarts - 1) / FAILED_FILE
    if restarts > 1 and before.is_file() and json.loads(before.read_text()).get("step") == failed_at:
        again = (
            f"attempts {restarts - 1} and {restarts} both failed at step {failed_at} (their files are in "
            f"{attempt_dir(run_dir, restarts - 1)} and {d}): not retrying a failure that recurs"
        )
    ckpt = latest_checkpoint(run_dir)
    info = {
        "cause": cause,
        "n": restarts,
        "of": rr.launch.max_restarts or 0,
        "failed_at": failed_at,
        "resumed_from": ckpt.name if ckpt else None,
        "again": again,
    }
    return replace(rr, resume_from=str(ckpt) if ckpt else None, extra={**rr.extra, "restart": info})


def earlier_attempts(run_dir: Path) -> str | None:
    """The failed attempts before the last one, for the run's last line: `attempt 3, after 2 that
    failed (1: local rank 1 of node 0 died with SIGKILL at step 6; 2: ... at step 6)`; None without restarts."""
    parts = []
    n = 1
    while (f := attempt_dir(run_dir, n) / FAILED_FILE).is_file():
        try:
            rec = json.loads(f.read_text())
        except (OSError, ValueError):
            rec = {}
        parts.append(f"{n}: {rec.get('cause') or 'failed'} at step {rec.get('step', '?')}")
        n += 1
    if not parts:
        return None
    return f"attempt {n}, after {len(parts)} that failed ({'; '.join(parts)})"


def failure_cause(log: Path, node: int) -> str | None:
    """What torchrun on this node logged of the last failed worker: `local rank 1 of node 0 died with
    SIGKILL`; None when none of this node's workers failed (a peer node's did)."""
    import re
    import signal

    try:
        text = log.read_text(errors="replace")
    except OSError:
        return None
    found = re.findall(r"failed \(exitcode: (-?\d+)\) local_rank: (\d+)", text)
    if not found:
        return None
    code, local = int(found[-1][0]), found[-1][1]
    if code < 0:
        try:
            how = f"died with {signal.Signals(-code).name}"
        except ValueError:
            how = f"died with signal {-code}"
    else:
        how = f"exited with code {code}"
    return f"local rank {local} of node {node} {how}"


def restart_line(info: dict) -> str:
    """`restart 1/3 after local rank 1 of node 0 died with SIGKILL at step 6: resuming from step_000006`."""
    where = f"resuming from {info['resumed_from']}" if info["resumed_from"] else "no checkpoint yet: starting over"
    cause = info.get("cause") or f"attempt {info['n']} failed"
    return f"restart {info['n']}/{info['of']} after {cause} at step {info['failed_at']}: {where}"
