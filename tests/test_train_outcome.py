"""Which rank a failed run blames: torchrun's report parsed from its log, the workers' own errors
before the notes of ranks that stopped for them, and a rank hearing of a peer's error (unit level;
the real torchrun cases are in test_faults_train.py)."""

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

from gptkit.errors import GptkitError
from gptkit.train.config import LaunchConfig, ResolvedRun, TrainConfig, plan_batches
from gptkit.train.failures import error_ranks, wait_for_peers, write_error
from gptkit.train.outcome import Outcome, failed_ranks_line, finish, torchrun_failures
from gptkit.train.watchdog import PEER_FAILED_EXIT


def report(*failures: tuple[int, int]) -> str:
    # The shape of torchrun's ChildFailedError report, one block per failed rank.
    blocks = [
        f"[{i}]:\n  time      : 2026-11-30_08:00:00\n  host      : localhost\n"
        f"  rank      : {rank} (local_rank: {rank})\n  exitcode  : {code} (pid: {100 + rank})\n"
        for i, (rank, code) in enumerate(failures)
    ]
    return "train.py FAILED\n" + "Failures:\n" + "".join(blocks)


def write_log(run: Path, *failures: tuple[int, int]) -> None:
    run.mkdir(parents=True, exist_ok=True)
    (run / "torchrun.log").write_text(report(*failures))


def test_the_report_is_parsed_per_rank(tmp_path):
    write_log(tmp_path, (1, -9), (0, -15))
    assert torchrun_failures(tmp_path / "torchrun.log") == [(0, -15), (1, -9)]


def test_a_killed_rank_is_blamed_before_the_peer_torchrun_terminated(tmp_path):
    # torchrun sends SIGTERM to the survivors; the report may list that peer first.
    write_log(tmp_path, (0, -15), (1, -9))
    line = failed_ranks_line(tmp_path, 1)
    assert line.startswith("rank 1 died with signal SIGKILL; then rank 0 died with signal SIGTERM"), line


def test_a_killed_rank_is_blamed_before_a_peer_that_aborted_on_the_broken_connection(tmp_path):
    # seen with --verbose: rank 0's gloo aborts (SIGABRT) as rank 1 is SIGKILLed
    write_log(tmp_path, (0, -6), (1, -9))
    line = failed_ranks_line(tmp_path, 1)
    assert line.startswith("rank 1 died with signal SIGKILL; then rank 0 died with signal SIGABRT"), line
    write_log(tmp_path, (0, -6), (1, 1))  # an abort is still blamed before an error exit
    assert failed_ranks_line(tmp_path, 1).startswith("rank 0 died with signal SIGABRT; then rank 1 exited")


def test_a_signal_is_blamed_before_a_peer_that_exited_with_an_error(tmp_path):
    write_log(tmp_path, (0, 1), (3, -11))
    line = failed_ranks_line(tmp_path, 1)
    assert line.startswith("rank 3 died with signal SIGSEGV; then rank 0 exited with code 1"), line


def test_when_every_rank_was_terminated_the_lowest_rank_comes_first(tmp_path):
    write_log(tmp_path, (2, -15), (1, -15))
    assert failed_ranks_line(tmp_path, 1).startswith("rank 1 died with signal SIGTERM; then rank 2"), None


def test_without_a_report_the_exit_code_and_log_are_named(tmp_path):
    assert failed_ranks_line(tmp_path, 7) == "torchrun exited with code 7 (see above)"


# --- a rank's own error against the notes of the ranks that stopped for it ------------------------
def resolved(run: Path):
    cfg = TrainConfig()
    launch = LaunchConfig(gpus=0, nproc=2)
    return ResolvedRun(cfg, launch, plan_batches(cfg, 2, False), "data", str(run), extra={"device_type": "cpu"})


def test_the_line_is_the_failed_ranks_own_error_not_a_peer_that_stopped_for_it(tmp_path):
    """Rank 1 ran out of memory alone; rank 0, waiting for it, stopped and noted why. The launcher
    prints rank 1's error, though rank 0 comes first."""
    run = tmp_path / "run"
    write_log(run, (0, PEER_FAILED_EXIT), (1, 1))
    write_error(run, 1, "CUDA out of memory at --micro-batch 16; try --micro-batch 8")
    write_error(run, 0, "stopped: rank 1 failed", peer=1)
    with pytest.raises(GptkitError) as e:
        finish(resolved(run), Outcome(1, []), echo=print)
    assert str(e.value) == "CUDA out of memory at --micro-batch 16; try --micro-batch 8"
    # A full disk on rank 0 alone: its line, with where to resume.
    write_error(run, 0, "no space left on RUN/step_000002", resumable=True)
    write_error(run, 1, "stopped: rank 0 failed", peer=0)
    with pytest.raises(GptkitError) as e:
        finish(resolved(run), Outcome(1, []), echo=print)
    assert str(e.value) == (
        "no space left on RUN/step_000002; no checkpoint was saved yet; run the same command again to start over"
    )


def test_ranks_that_stopped_for_a_failed_one_are_blamed_after_it(tmp_path):
    """The failed rank could not write its error (its disk full): torchrun's report names it, and
    not the ranks that stopped because of it, whatever their order."""
    run = tmp_path / "run"
    write_log(run, (0, PEER_FAILED_EXIT), (1, PEER_FAILED_EXIT), (2, 1))
    write_error(run, 0, "stopped: rank 2 failed", peer=2)
    with pytest.raises(GptkitError) as e:
        finish(resolved(run), Outcome(1, []), echo=print)
    assert str(e.value).startswith(f"rank 2 exited with code 1; then rank 0 exited with code {PEER_FAILED_EXIT}")


def test_a_rank_hears_of_a_peers_error_and_stops_with_a_note(tmp_path):
    """The watchdog thread of a rank whose main thread is stuck (as in an NCCL all-reduce waiting for
    a failed rank) reads the failed rank's record, notes why it stops, and ends its process."""
    run = tmp_path / "run"
    run.mkdir()
    code = (
        "import sys, time\n"
        "from gptkit.train.watchdog import Watchdog\n"
        f"Watchdog({str(run)!r}, rank=1, world_size=2, limit=0, parent=None).start()\n"
        "print('up', flush=True)\n"
        "time.sleep(600)  # the main thread never returns by itself\n"
    )
    p = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline() == "up\n"
        write_error(run, 0, "no space left on RUN/step_000002", resumable=True)
        wait_for_peers(run, world_size=2, grace=60)
        assert p.wait(timeout=60) == PEER_FAILED_EXIT
    finally:
        p.kill()
        p.wait()
    assert error_ranks(run)[1] == {"message": "stopped: rank 0 failed", "resumable": False, "peer": 0}
