"""The first hour on a laptop (issue 23): a run's record is the run, and what gptkit prints as the next
step works as printed, typed from a working directory outside the repository and outside $GPTKIT_HOME."""

import json
import os
import signal
import subprocess
import sys
import time

from conftest import run_cli, tiny_training
from test_train_data import make_dataset

from gptkit import paths


def _wait(cond, proc, seconds, what):
    deadline = time.time() + seconds
    while not cond():
        assert proc.poll() is None, (what, proc.communicate())
        assert time.time() < deadline, what
        time.sleep(0.05)


def test_a_run_killed_before_its_first_checkpoint_restarts_with_its_own_settings(gptkit_home, tmp_path, trains):
    first = make_dataset(paths.shards_dir("first"), docs=120)
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    run = paths.runs_dir("nock")
    flags = tiny_training(data="first", name="nock", max_steps=3, batch_tokens=128, checkpoint_every=100)
    env = {**os.environ, "GPTKIT_FAULTS": "train.step_sleep=30"}
    p = subprocess.Popen(
        [sys.executable, "-m", "gptkit", "train", *flags], env=env, cwd=cwd, stdout=subprocess.PIPE, text=True
    )
    _wait(lambda: (run / "config.json").is_file(), p, 120, "no config.json")
    p.send_signal(signal.SIGKILL)  # before its first checkpoint (the first step takes 30 s)
    p.communicate()
    assert not list(run.glob("step_*"))
    recorded = json.loads((run / "config.json").read_text())["train"]
    make_dataset(paths.shards_dir("newer"), docs=60, seed=1)  # now the newest data: not the run's

    # As a requeued job types it: only the run's name (--dry-run first: the old code sized a new run).
    dry = run_cli("train", "--resume", "auto", "--name", "nock", "--gpus", "0", "--dry-run", cwd=cwd, check=True)
    resolved = json.loads(dry.stdout[dry.stdout.index("{") :])
    assert resolved["train"] == recorded and resolved["resume_from"] is None
    r = run_cli("train", "--resume", "auto", "--name", "nock", "--gpus", "0", cwd=cwd, check=True)
    assert f"{run} has no checkpoint yet: restarting it from step 0 with its recorded settings" in r.stdout, r.stdout
    assert "tiny" in r.stdout and "124" not in r.stdout
    after = json.loads((run / "config.json").read_text())
    assert after["train"] == recorded and after["data_dir"] == str(first.resolve())
    assert (run / "step_000003").is_dir()
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert steps[0] == 1 and steps[-1] == 3, steps
