"""Which rank a failed run blames: torchrun's report parsed from its log (unit level; the real
torchrun cases are in test_faults_train.py)."""

from pathlib import Path

from gptkit.train.outcome import failed_ranks_line, torchrun_failures


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
