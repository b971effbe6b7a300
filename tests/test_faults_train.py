"""Faults around `gptkit train`: dead launchers, two trainers on one run, stuck and killed ranks.

Real processes throughout: the gptkit CLI, torchrun and gloo workers on CPU, killed with real
signals; slowness and hangs come from fault points (gptkit/faults.py).
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, assert_one_line_error, run_cli, tiny_training
from test_train_data import make_dataset

from gptkit import lock
from gptkit.errors import GptkitError

FLAGS = tiny_training(
    nproc=2, batch_tokens=256, micro_batch=4, lr="3e-3", warmup_steps=2, eval_every=1000, eval_tokens=512,
    sample_every=1000, checkpoint_every=2,
)  # fmt: skip


# --- the lock file ---------------------------------------------------------------------------------
def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid  # reaped: no process has it (until the kernel reuses it, which takes a while)


def write_lock(path: Path, **record):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"host": socket.gethostname(), "time": time.time(), "what": "gptkit train", **record}))


def test_a_lock_is_exclusive_and_names_its_holder(tmp_path):
    path = tmp_path / "run" / ".lock"
    held = lock.acquire(path, subject="RUN", what="gptkit train", how_to_break="give --break-lock")
    assert json.loads(path.read_text())["pid"] == os.getpid()
    # Another live process on this host holds it: refused, named.
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        held.release()
        assert not path.exists()
        write_lock(path, pid=sleeper.pid)
        with pytest.raises(lock.LockHeld, match=rf"^RUN is in use by PID {sleeper.pid} on {socket.gethostname()} "):
            lock.acquire(path, subject="RUN", what="x", how_to_break="give --break-lock")
    finally:
        sleeper.kill()
        sleeper.wait()
    # Its holder died: taken over.
    with lock.acquire(path, subject="RUN", what="x", how_to_break="give --break-lock"):
        assert json.loads(path.read_text())["pid"] == os.getpid()
    assert not path.exists()


def test_a_stale_lock_is_taken_over_and_a_reused_pid_is_told_apart(tmp_path):
    path = tmp_path / ".lock"
    write_lock(path, pid=dead_pid())
    held = lock.acquire(path, subject="RUN", what="x", how_to_break="-")
    held.release()
    # This very PID, but started at another time: a reused number, not the holder.
    write_lock(path, pid=os.getpid(), start="1")
    assert lock.acquire(path, subject="RUN", what="x", how_to_break="-").record["pid"] == os.getpid()


def test_a_lock_from_another_host_is_refused_until_broken(tmp_path):
    path = tmp_path / ".lock"
    write_lock(path, host="node-17", pid=dead_pid())
    with pytest.raises(GptkitError) as e:
        lock.acquire(path, subject="RUN", what="x", how_to_break="give `gptkit train --break-lock`")
    msg = str(e.value)
    assert "node-17" in msg and "--break-lock" in msg and "\n" not in msg
    assert lock.acquire(path, subject="RUN", what="x", how_to_break="-", force=True).record["host"] != "node-17"


def test_the_lock_is_one_file_created_atomically(tmp_path):
    """No temp files left beside it; a second acquire by the same process is refused (it is alive)."""
    path = tmp_path / ".lock"
    held = lock.acquire(path, subject="RUN", what="x", how_to_break="-")
    with pytest.raises(lock.LockHeld):
        lock.acquire(path, subject="RUN", what="x", how_to_break="-")
    assert [p.name for p in tmp_path.iterdir()] == [".lock"]
    held.release()


def test_one_tokenize_per_output_directory(tmp_path):
    src = tmp_path / "t.txt"
    src.write_text("hello world\n" * 50)
    out = tmp_path / "shards"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        write_lock(tmp_path / ".shards.lock", pid=sleeper.pid, what="gptkit tokenize")
        r = run_cli("tokenize", src, "--out", out, "--tokenizer", "bytes")
        line = assert_one_line_error(r)
        assert f"{out} is in use by PID {sleeper.pid}" in line and "gptkit tokenize" in line
    finally:
        sleeper.kill()
        sleeper.wait()
    run_cli("tokenize", src, "--out", out, "--tokenizer", "bytes", check=True)  # holder gone: taken over
    assert not (tmp_path / ".shards.lock").exists()


# --- parent-death signal -------------------------------------------------------------------------
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_child_dies_with_its_parent_even_by_sigkill(tmp_path):
    script = (
        "import subprocess, sys, time\n"
        "from gptkit import procs\n"
        "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], "
        "start_new_session=True, preexec_fn=procs.child_preexec())\n"
        "print(c.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    child = int(parent.stdout.readline())
    parent.kill()
    parent.wait()
    assert wait_gone([child], 5), "the child outlived its parent"


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_gone(pids, seconds) -> bool:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if not any(alive(p) for p in pids):
            return True
        time.sleep(0.1)
    return not any(alive(p) for p in pids)


def run_processes(run: Path) -> list[int]:
    """Every process whose command line names the run directory (torchrun and its workers)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            try:
                cmd = (d / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if str(run).encode() in cmd and alive(int(d.name)):
                out.append(int(d.name))
    return out


# --- whole runs (`trains`: the slow lane) ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def home(tmp_path_factory):
    h = tmp_path_factory.mktemp("faults_home")
    make_dataset(h / "shards" / "toy", docs=120)
    return h


def env_for(home, faults=None):
    env = {**os.environ, "GPTKIT_HOME": str(home), "OMP_NUM_THREADS": "1"}
    env.pop("GPTKIT_FAULTS", None)
    if faults:
        env["GPTKIT_FAULTS"] = faults
    return env


def start(home, *args, faults=None):
    return subprocess.Popen(
        [sys.executable, "-m", "gptkit", "train", *FLAGS, *map(str, args)],
        env=env_for(home, faults),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def cli(home, *args, faults=None, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "gptkit", "train", *FLAGS, *map(str, args)],
        env=env_for(home, faults),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def wait_for(cond, p, seconds, what):
    deadline = time.time() + seconds
    while not cond():
        assert p.poll() is None, (what, p.communicate())
        assert time.time() < deadline, what
        time.sleep(0.05)


def workers_by_rank(run: Path) -> dict[int, int]:
    out = {}
    for pid in run_processes(run):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        if b"gptkit.train.main" in cmd:
            for kv in env:
                if kv.startswith(b"RANK="):
                    out[int(kv[5:])] = pid
    return out


def test_kill_9_of_gptkit_leaves_no_process_and_a_second_trainer_is_refused(home, trains):
    run = home / "runs" / "k9"
    p = start(home, "--name", "k9", "--max-steps", "200", faults="train.step_sleep=0.3")
    wait_for(lambda: (run / "step_000002").exists() and len(workers_by_rank(run)) == 2, p, 180, "no checkpoint")

    # A second trainer on the same run: one line, before anything starts, naming the holder.
    r = cli(home, "--resume", str(run), "--max-steps", "200")
    line = assert_one_line_error(r)
    assert f"{run} is in use by PID {p.pid} on {socket.gethostname()} (gptkit train)" in line, line
    assert "torch.distributed.run" not in r.stdout  # refused before the command is shown: nothing started

    procs = run_processes(run)
    assert len(procs) >= 3, procs  # torchrun and two workers
    p.send_signal(signal.SIGKILL)
    p.communicate()
    assert wait_gone(procs, 5), f"orphans still running: {[q for q in procs if alive(q)]}"
    assert run_processes(run) == []
    steps = sorted(x.name for x in run.glob("step_*"))

    # The lock's holder is dead: the resume takes it over and continues from the last checkpoint.
    r = cli(home, "--resume", str(run), "--max-steps", str(int(steps[-1][5:]) + 2))
    assert r.returncode == 0, r.stderr
    assert "resumed at step" in r.stdout and not (run / ".lock").exists()


def test_a_stalled_rank_is_reported_by_the_watchdog_and_the_run_resumes(home, trains):
    run = home / "runs" / "stall"
    t0 = time.time()
    r = cli(home, "--name", "stall", "--max-steps", "8", "--watchdog", "5", faults="train.stall_rank=1")
    took = time.time() - t0
    line = assert_one_line_error(r)
    assert took < 90, took  # ~5 s of watchdog after a few seconds of start-up (slower on a loaded machine)
    assert "no progress for" in line and "limit 5 s" in line, line
    assert "rank 0 in " in line and "rank 1 in _hook_after_step (train/trainer.py:" in line, line
    assert f"{run}/step_000002" in line and f"`gptkit train --resume {run} --gpus 0 --nproc 2 --watchdog 5`" in line
    assert (run / "hang-0.txt").is_file() and (run / "hang-1.txt").is_file()
    assert "Traceback" not in r.stderr
    assert not run_processes(run)

    r = cli(home, "--resume", str(run), "--max-steps", "8", "--watchdog", "5")
    assert r.returncode == 0, r.stderr
    assert "resumed at step 2" in r.stdout
    assert (run / "step_000008").is_dir() and not list(run.glob("hang-*.txt"))


def test_with_verbose_the_closing_line_still_names_the_killed_rank(home, trains):
    """--verbose shows torch's output on the terminal; torchrun's report still reaches RUN/torchrun.log,
    so the last line says which rank died, not just torchrun's exit code."""
    run = home / "runs" / "rank-killed-verbose"
    p = start(home, "--name", run.name, "--max-steps", "200", "--verbose", faults="train.step_sleep=0.3")
    wait_for(lambda: (run / "step_000002").exists() and len(workers_by_rank(run)) == 2, p, 180, "no checkpoint")
    os.kill(workers_by_rank(run)[1], signal.SIGKILL)
    out, err = p.communicate(timeout=120)
    last = err.strip().splitlines()[-1]
    assert p.returncode == 1 and last.startswith("gptkit: error: rank 1 died with signal SIGKILL"), err[-2000:]
    assert "exitcode" in err  # torchrun's own report was shown too
    assert not run_processes(run)


def test_a_full_disk_while_saving_is_one_line_with_where_to_resume(home, trains):
    """Only rank 0 writes checkpoints, so only it sees the full disk. Rank 1, waiting for it in the
    next all-reduce (which under NCCL would not return for up to an hour), hears of it and stops:
    its watchdog thread notes why, before gloo's broken connection could fail it with a traceback."""
    run = home / "runs" / "full"
    r = cli(home, "--name", "full", "--max-steps", "4", faults="fs.enospc=checkpoint")
    line = assert_one_line_error(r)
    assert line.startswith(f"gptkit: error: no space left on {run}/step_000002 ("), line
    assert line.endswith("no checkpoint was saved yet; run the same command again to start over"), line
    records = {f.name: json.loads(f.read_text()) for f in (run / ".errors").iterdir()}
    assert records["rank0.json"]["peer"] is None and records["rank0.json"]["message"] in line
    assert records["rank1.json"] == {"message": "stopped: rank 0 failed", "resumable": False, "peer": 0}
    assert not (run / "error-1.log").exists()  # no traceback: it did not fail on the dead connection
    assert not list(run.glob("step_*")) and not list(run.glob(".step_*")) and not run_processes(run)
    # The same command again, the disk freed, starts over: the failed attempt's records are dropped
    # (the plot would draw both attempts as one line)
    r = cli(home, "--name", "full", "--max-steps", "4")
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in rows if "loss" in m] == [1, 2, 3, 4]
    assert [m["step"] for m in rows if "val_loss" in m] == sorted({m["step"] for m in rows if "val_loss" in m})


def test_a_killed_rank_gives_one_line_and_its_peers_tracebacks_go_to_files(home, trains):
    run = home / "runs" / "rank-killed"
    p = start(home, "--name", "rank-killed", "--max-steps", "200", faults="train.step_sleep=0.3")
    wait_for(lambda: (run / "step_000002").exists() and len(workers_by_rank(run)) == 2, p, 180, "no checkpoint")
    os.kill(workers_by_rank(run)[1], signal.SIGKILL)
    out, err = p.communicate(timeout=120)
    line = assert_one_line_error(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    assert p.returncode == 1
    assert line.startswith("gptkit: error: rank 1 died with signal SIGKILL"), line
    assert "the last complete checkpoint is" in line and f"--resume {run}" in line, line
    assert "Traceback" not in err
    logs = list(run.glob("error-*.log"))
    assert logs, "no error-RANK.log"
    assert any("Traceback" in f.read_text() for f in logs)
    assert not run_processes(run)


def test_torchrun_killed_by_a_signal_is_said_in_one_line(home, trains):
    run = home / "runs" / "tr-killed"
    p = start(home, "--name", "tr-killed", "--max-steps", "200", faults="train.step_sleep=0.3")
    wait_for(lambda: len(workers_by_rank(run)) == 2, p, 180, "no workers")
    workers = list(workers_by_rank(run).values())
    torchrun = [q for q in run_processes(run) if b"torch.distributed.run" in Path(f"/proc/{q}/cmdline").read_bytes()]
    os.kill(torchrun[0], signal.SIGKILL)
    out, err = p.communicate(timeout=60)
    line = assert_one_line_error(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    assert p.returncode == 1 and "torchrun (which runs the workers) was killed by SIGKILL" in line, line
    assert wait_gone(workers, 5) and not run_processes(run)


def test_a_second_ctrl_c_stops_at_once_without_a_traceback(home, trains):
    run = home / "runs" / "ctrl-c"
    p = start(home, "--name", "ctrl-c", "--max-steps", "200", faults="train.step_sleep=1")
    wait_for(lambda: (run / "step_000002").exists(), p, 180, "no checkpoint")
    p.send_signal(signal.SIGINT)
    time.sleep(0.3)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=30)
    assert p.returncode == 128 + signal.SIGINT and "Traceback" not in err and err.strip() == "", err
    assert "gptkit: stopped at once; the last complete checkpoint is" in out.splitlines()[-1]
    assert wait_gone(run_processes(run), 5)


def test_ctrl_c_in_a_long_one_process_step_drops_it_and_the_resume_is_exact(home, trains):
    """One process (a laptop run): the first Ctrl-C ends the step at the next micro-batch instead of
    finishing it (a CPU step of a big model takes hours); the checkpoint is the last completed step,
    and the resume, which redoes the dropped step, ends bitwise equal to an uninterrupted run."""
    flags = tiny_training(
        batch_tokens=256,
        micro_batch=2,
        lr="3e-3",
        warmup_steps=2,
        eval_every=1000,
        eval_tokens=512,
        sample_every=1000,
        checkpoint_every=2,
        max_steps=5,
    )  # fmt: skip  (8 rows of 32 tokens: 4 micro-batches a step)
    ref, run = home / "runs" / "midstep-ref", home / "runs" / "midstep"
    p = subprocess.Popen(
        [sys.executable, "-m", "gptkit", "train", *flags, "--name", "midstep"],
        env=env_for(home, "train.micro_sleep=0.4"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(lambda: (run / "step_000002" / "trainer.json").exists(), p, 180, "no checkpoint")
    time.sleep(0.6)  # into step 3, whose 4 micro-batches take 1.6 s
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 128 + signal.SIGINT, err
    assert "stopped during step 3 (at micro-batch" in out and "checkpoint of step 2 saved" in out, out
    assert sorted(x.name for x in run.glob("step_*")) == ["step_000002"]
    assert run_cli("train", *flags, "--name", "midstep-ref", env=env_for(home)).returncode == 0
    r = run_cli("train", "--resume", "auto", "--name", "midstep", env=env_for(home))
    assert r.returncode == 0 and "resumed at step 2" in r.stdout, r.stderr
    for f in ("model.safetensors", "optimizer.pt"):
        assert (run / "step_000005" / f).read_bytes() == (ref / "step_000005" / f).read_bytes(), f
