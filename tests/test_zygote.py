"""run_cli's warm server (tests/zygote.py) gives a command what a fresh `python -m gptkit` gives it."""

import os
import subprocess
import sys

import zygote
from conftest import run_cli, warm_server


def plain(*args, env=None, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "gptkit", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )


def test_a_forked_command_equals_a_fresh_interpreter(tmp_path):
    (tmp_path / "notes.txt").write_text("a file, not shards\n")
    cases = [
        (["--version"], None, None),  # stdout, exit 0
        (["train", "--no-such-flag"], None, None),  # a usage error: exit 2, stderr
        (["sample", "--model", "./notes.txt"], None, tmp_path),  # a relative path: the working directory
        (["download", "fineweb-edu"], {"HF_ENDPOINT": "hf-mirror.com"}, None),  # the environment, read at run time
    ]
    for args, env, cwd in cases:
        warm, fresh = run_cli(*args, env=env, cwd=cwd), plain(*args, env=env, cwd=cwd)
        assert (warm.returncode, warm.stdout, warm.stderr) == (fresh.returncode, fresh.stdout, fresh.stderr), args
    assert {plain("--version").returncode, run_cli("train", "--no-such-flag").returncode} == {0, 2}


def test_a_different_thread_setting_gets_its_own_server():
    # libgomp reads OMP_NUM_THREADS when torch loads: a fork keeps its server's thread count.
    probe = "import torch; print(torch.get_num_threads())"
    one = {**os.environ, "OMP_NUM_THREADS": "1"}
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=one).stdout.strip() == "1"
    assert warm_server(one).env == zygote.load_time_env(one) and warm_server(one).env["OMP_NUM_THREADS"] == "1"
    assert os.environ.get("OMP_NUM_THREADS") == "1" or warm_server(one) is not warm_server(dict(os.environ))
    warm, fresh = run_cli("--version", env={"OMP_NUM_THREADS": "1"}), plain("--version", env={"OMP_NUM_THREADS": "1"})
    assert (warm.returncode, warm.stdout) == (fresh.returncode, fresh.stdout) == (0, fresh.stdout)
