import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# The hub fixtures (hub, hf_state) for every test module, without importing them by name.
pytest_plugins = ["hubfixtures"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for a server started in a subprocess)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def gptkit_home(tmp_path, monkeypatch):
    """A private GPTKIT_HOME for one test; the GPT-2 vocabulary from the session home stays reachable."""
    home = tmp_path / "gptkit_home"
    home.mkdir()
    monkeypatch.setenv("GPTKIT_HOME", str(home))
    return home


def run_cli(*args, env=None, cwd=None, timeout=600, check=False):
    """Run `python -m gptkit ARGS` in a subprocess, as a user would; returns CompletedProcess."""
    full_env = {**os.environ, **(env or {})}
    r = subprocess.run(
        [sys.executable, "-m", "gptkit", *map(str, args)],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        timeout=timeout,
    )
    if check and r.returncode != 0:
        raise AssertionError(f"gptkit {' '.join(map(str, args))} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r


def assert_one_line_error(r):
    """A user error: non-zero exit, a single line on stderr, no traceback."""
    assert r.returncode != 0, r.stdout
    assert "Traceback" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    return lines[0]
