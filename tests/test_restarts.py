"""Runs that restart themselves (gptkit/train/restarts.py): where a restarted attempt resumes, when
a recurring failure stops, and the cause read from torchrun's log. The restarted training itself is
test_train_dist.py::test_sigkill_with_restarts_resumes_by_itself_bitwise."""

import json

from gptkit.train.config import LaunchConfig, Plan, ResolvedRun, TrainConfig
from gptkit.train.restarts import TORCHRUN_LOG, archive_own_files, failure_cause, plan_restart, restart_line
from gptkit.train.watchdog import Watchdog, hang_file


def resolved(run_dir) -> ResolvedRun:
    return ResolvedRun(
        train=TrainConfig(),
        launch=LaunchConfig(max_restarts=3),
        plan=Plan(world_size=2, micro_batch=1, grad_accum=1, rows=2),
        data_dir="unused",
        run_dir=str(run_dir),
        resume_from=str(run_dir / "step_000002"),  # what the launch resumed from: stale after a failure
    )


def log_steps(run_dir, *steps):
    with open(run_dir / "metrics.jsonl", "a") as f:
        for s in steps:
            f.write(json.dumps({"step": s, "loss": 1.0}) + "\n")


def test_a_restart_resumes_from_the_newest_checkpoint_and_a_recurring_failure_stops(tmp_path):
    from gptkit.checkpoint import save_checkpoint
    from gptkit.model import GPT, get_preset

    cfg = get_preset("tiny")
    model = GPT(cfg)
    for step in (2, 4):
        save_checkpoint(tmp_path / f"step_{step:06d}", model, config=cfg, tokenizer="bytes")
    (tmp_path / ".step_000006.tmp").mkdir()  # a save cut short: checkpoint.py's rule passes it over
    newest = tmp_path / "step_000004"
    log_steps(tmp_path, 1, 2, 3, 4, 5)
    first = plan_restart(resolved(tmp_path), 1)
    info = first.extra["restart"]
    assert first.resume_from == str(newest) and info["resumed_from"] == "step_000004"
    assert info["failed_at"] == 5 and info["again"] is None and info["of"] == 3
    assert restart_line(info) == "restart 1/3 after attempt 1 failed at step 5: resuming from step_000004"

    log_steps(tmp_path, 5, 6)  # attempt 2 got further: retried again
    assert plan_restart(resolved(tmp_path), 2).extra["restart"]["again"] is None
    log_steps(tmp_path)  # attempt 3 ended at step 6 as attempt 2 did: stop, naming both
    again = plan_restart(resolved(tmp_path), 3).extra["restart"]["again"]
    assert again.startswith("attempts 2 and 3 both failed at step 6") and "attempt-2" in again and "attempt-3" in again


def test_the_cause_is_read_from_torchruns_log(tmp_path):
    assert failure_cause(tmp_path / TORCHRUN_LOG, 0) is None
    (tmp_path / TORCHRUN_LOG).write_text(
        "E1207 11:50:07.015000 4538 api.py:1002] failed (exitcode: -9) local_rank: 1 (pid: 4759) of binary: python\n"
        "E1207 11:51:07.015000 4538 api.py:1002] failed (exitcode: 3) local_rank: 0 (pid: 4800) of binary: python\n"
    )
    assert failure_cause(tmp_path / TORCHRUN_LOG, 2) == "local rank 0 of node 2 exited with code 3"


def test_a_failed_attempts_hang_file_moves_aside_and_fires_no_new_watchdog(tmp_path):
    stale = hang_file(tmp_path, 1)
    stale.write_text("{}\n")
    import os

    os.utime(stale, (1, 1))  # written by the failed attempt, before this one started
    dog = Watchdog(tmp_path, rank=0, world_size=2, limit=None, parent=None)
    assert not dog._peer_fired()  # rank 1 of the new attempt has not moved its old file yet
    log = tmp_path / "error-1.log"
    log.write_text("Traceback ...\n")
    archive_own_files(tmp_path, 1, 1, log)
    assert not stale.exists() and (tmp_path / "attempt-1" / stale.name).is_file()
    assert (tmp_path / "attempt-1" / "error-1.log").read_text() == "Traceback ...\n"


def test_a_collective_timeout_below_the_watchdogs_allowances_is_refused(gptkit_home, tmp_path):
    from conftest import assert_one_line_error, run_cli
    from test_train_data import make_dataset

    from gptkit.train.launch import check_collective_timeout

    check_collective_timeout(7200, None)  # 2 x the largest phase allowance (compile's hour)
    check_collective_timeout(60, 0)  # no watchdog: nothing to leave room for
    data = make_dataset(tmp_path / "shards")
    r = run_cli(
        "train", "--gpus", "0", "--preset", "tiny", "--data", data, "--name", "ct", "--collective-timeout", "60"
    )
    line = assert_one_line_error(r)
    assert "--collective-timeout 60 is below the watchdog's allowances" in line and "at least 7200 s" in line
    r = run_cli(
        "train", "--gpus", "0", "--preset", "tiny", "--data", data, "--name", "ct", "--watchdog", "5000",
        "--collective-timeout", "9000",
    )  # fmt: skip
    assert "at least 10000 s" in assert_one_line_error(r)
    assert not (gptkit_home / "runs" / "ct").exists()


def test_the_hang_report_names_gptkits_frame_in_a_clone_folder_named_gptkit(tmp_path):
    """A clone in /x/gptkit holds torch in /x/gptkit/.venv: the innermost frame under a /gptkit/ folder
    is torch's, but the report names the innermost frame of gptkit's own files."""
    from gptkit.train.watchdog import read_hang

    f = tmp_path / "hang_rank0.txt"
    f.write_text(
        json.dumps({"main_thread": 0x7F00}) + "\n"
        "Current thread 0x00007f00 (most recent call first):\n"
        '  File "/home/me/gptkit/.venv/lib/python3.11/site-packages/torch/distributed/c10d.py", line 9 in all_reduce\n'
        '  File "/home/me/gptkit/gptkit/train/trainer.py", line 85 in sync\n'
        '  File "/home/me/gptkit/gptkit/cli/main.py", line 3 in main\n'
    )
    assert read_hang(f)["where"] == "sync (train/trainer.py:85)"


def test_the_last_line_of_a_run_out_of_restarts_names_every_attempts_cause(tmp_path):
    """Attempts 1 and 2 failed and were restarted (plan_restart recorded their causes); attempt 3's
    failure is the run's last line, which names the two before it, then where to resume."""
    import pytest

    from gptkit.errors import GptkitError
    from gptkit.train.outcome import Outcome, finish
    from gptkit.train.restarts import earlier_attempts

    assert earlier_attempts(tmp_path) is None
    log = tmp_path / TORCHRUN_LOG
    for n, line in (
        (1, "failed (exitcode: -9) local_rank: 1 (pid: 1)"),
        (2, "failed (exitcode: 3) local_rank: 0 (pid: 2)"),
    ):
        log.write_text(line + "\n")
        log_steps(tmp_path, 5 + n)
        plan_restart(resolved(tmp_path), n)
    with pytest.raises(GptkitError) as e:
        finish(resolved(tmp_path), Outcome(1, []), echo=print)
    line = str(e.value)
    assert "; attempt 3, after 2 that failed (1: local rank 1 of node 0 died with SIGKILL at step 6; " in line
    assert (
        "2: local rank 0 of node 0 exited with code 3 at step 7); " in line and "run the same command again" in line
    ), line
