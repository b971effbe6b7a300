"""How a run ended, in one line: a dead rank, a hang, torchrun killed, a worker's own error, or
success with its summary; each failure names the last complete checkpoint and the resume command."""

from __future__ import annotations

import shlex
import signal
from collections.abc import Callable
from pathlib import Path

from gptkit import paths
from gptkit.errors import GptkitError
from gptkit.train.config import (
    ResolvedRun,
)
from gptkit.train.restarts import TORCHRUN_LOG


class Outcome:
    """How torchrun ended: its exit code (negative: killed by that signal) and the stop requests sent."""

    def __init__(self, returncode: int, stops: list[int]):
        self.returncode, self.stops = returncode, stops

    @property
    def code(self) -> int:
        """The exit code for `gptkit train`: 128 + signal after a stop request."""
        return 128 + self.stops[0] if self.stops else self.returncode


def worker_errors(run_dir: Path) -> list[dict]:
    """The workers' own errors (gptkit.train.failures.write_error), by rank: {"message", "resumable"}. The
    notes of ranks that stopped because another failed are left out: the cause is that one's."""
    from gptkit.train.failures import error_ranks

    found = error_ranks(run_dir)
    return [found[r] for r in sorted(found) if found[r].get("message") and found[r].get("peer") is None]


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
    if launch.collective_timeout is not None:
        cmd += ["--collective-timeout", f"{launch.collective_timeout:g}"]
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
    """Turn torchrun's ending into gptkit's: an exit code, or one GptkitError line (which names the
    earlier attempts' causes too, when restarts were on, before where to resume)."""
    from gptkit.train.restarts import earlier_attempts
    from gptkit.train.watchdog import hang_reports

    run_dir = Path(rr.run_dir)
    before = earlier_attempts(run_dir)
    resume = (f"{before}; " if before else "") + where_to_resume(rr)
    for log in run_dir.glob("error-*.log"):
        if log.stat().st_size == 0:
            log.unlink()  # a rank killed before it could write anything
    if len(outcome.stops) > 1:
        echo(f"gptkit: stopped at once; {resume}")
        return outcome.code
    errors = worker_errors(run_dir)
    if errors:
        first = errors[0]
        raise GptkitError(first["message"] + ("; " + resume if first.get("resumable") else ""))
    hangs = hang_reports(run_dir)
    if hangs:
        raise GptkitError(hang_line(run_dir, hangs) + "; " + resume)
    if outcome.stops:
        return outcome.code  # the workers said where they stopped
    rc = outcome.returncode
    if rc == 0:
        for line in end_summary(run_dir):
            echo(line)
        return 0
    if rc < 0:
        raise GptkitError(
            f"torchrun (which runs the workers) was killed by {_signal_name(-rc)} and took them with it; " + resume
        )
    raise GptkitError(failed_ranks_line(run_dir, rc) + "; " + resume)


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
    from gptkit.train.watchdog import PEER_FAILED_EXIT

    failures = torchrun_failures(run_dir / TORCHRUN_LOG)
    if not failures:
        log = run_dir / TORCHRUN_LOG
        return f"torchrun exited with code {rc} (" + (f"its report is in {log})" if log.exists() else "see above)")

    # A rank killed by a signal is the cause; the others then fail on the broken connection (an
    # error exit, or an abort(): gloo and NCCL raise SIGABRT when a peer vanishes), or are sent
    # SIGTERM by torchrun, and may be reported first when they die in the same instant.
    def blame(f: tuple[int, int]) -> tuple[int, int]:
        code = f[1]
        # PEER_FAILED_EXIT: it stopped because another rank had failed (train/watchdog.py)
        order = (
            (4 if code == PEER_FAILED_EXIT else 3)
            if code >= 0
            else {-signal.SIGTERM: 2, -signal.SIGABRT: 1}.get(code, 0)
        )
        return order, f[0]

    failures.sort(key=blame)
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
