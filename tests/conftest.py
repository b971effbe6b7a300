import contextlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import pytest
import startguard
import zygote

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
    """Run `python -m gptkit ARGS` in a process of its own, as a user would; returns CompletedProcess.
    The process is forked from a warm interpreter that has imported torch (tests/zygote.py), one per
    environment of what torch and Python read when they load (OMP_NUM_THREADS, PYTHONPATH, ...)."""
    full_env = {**os.environ, **(env or {})}
    argv = [str(a) for a in args]
    r = warm_server(full_env).run(argv, full_env, os.fspath(cwd or os.getcwd()), timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"gptkit {' '.join(argv)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r


def warm_server(env: dict[str, str]) -> "_Warm":
    """The tests/zygote.py server for ENV's load-time variables, started at its first command (after
    the start guard set PYTHONPATH, so its children are guarded too); all stop with the session."""
    key = frozenset(zygote.load_time_env(env).items())
    if key not in _servers:
        _servers[key] = _Warm(env)
    return _servers[key]


class _Warm:
    """One tests/zygote.py server: its load-time environment and its socket."""

    def __init__(self, env: dict[str, str]):
        self.env = zygote.load_time_env(env)
        self.dir = Path(tempfile.mkdtemp(prefix="gptkit-tests-zygote-"))
        self.socket = str(self.dir / "socket")
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(zygote.__file__).resolve()), self.socket],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError("tests/zygote.py did not start")

    def run(self, argv, env, cwd, timeout):
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, open(os.devnull) as null:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
                conn.settimeout(timeout)
                conn.connect(self.socket)
                request = json.dumps({"argv": argv, "env": env, "cwd": cwd}).encode() + b"\n"
                socket.send_fds(conn, [request], [null.fileno(), out.fileno(), err.fileno()])
                reply = conn.makefile("rb")
                pid = int(reply.readline().split()[1])
                try:
                    line = reply.readline()
                except TimeoutError:
                    line = b""
                if not line.startswith(b"exit "):
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(pid, signal.SIGKILL)
                    raise subprocess.TimeoutExpired(["gptkit", *argv], timeout)
                code = int(line.split()[1])
            out.seek(0)
            err.seek(0)
            return subprocess.CompletedProcess(["gptkit", *argv], code, _text(out.read()), _text(err.read()))

    def stop(self):
        self.proc.kill()
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def _text(data: bytes) -> str:
    """As subprocess.run(text=True) decodes: the locale's encoding, universal newlines."""
    return io.TextIOWrapper(io.BytesIO(data)).read()


_servers: dict[frozenset, _Warm] = {}


def assert_one_line_error(r):
    """A user error: non-zero exit, a single line on stderr, no traceback."""
    assert r.returncode != 0, r.stdout
    assert "Traceback" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    return lines[0]


# --- the slow lane: trainings and torchrun ----------------------------------------------------------
# A test is `slow` when it starts a training or torchrun, and only then: by what it starts, never by
# how long it takes. It says so by requesting the `trains` fixture (itself, or through the fixture
# that trains for it); pytest_collection_modifyitems marks exactly those tests, and no test marks
# itself by hand. tests/startguard.py watches every Python process under the session (this one and
# all it starts) for torchrun and for a gptkit Trainer, and a test that starts one without `trains`
# fails, naming what it started. The end of the session prints each lane's count and the slow tests
# that started nothing (which should then not request `trains`).
TRAINS = "trains"


def tiny_training(**flags) -> list[str]:
    """`gptkit train` flags for a tiny CPU run: 0 GPUs, 1 process, the tiny preset, 32-token
    sequences, no HellaSwag; then FLAGS in order (`max_steps=3` is `--max-steps 3`; a value of None
    leaves a default out). Each test gives the batch, steps and cadences it needs."""
    out = {"gpus": 0, "nproc": 1, "preset": "tiny", "seq_len": 32, "hellaswag_every": 0}
    out.update(flags)
    return [a for k, v in out.items() if v is not None for a in ("--" + k.replace("_", "-"), str(v))]


class Trainings:
    """What the `trains` fixture gives: `gptkit train` run as a user runs it."""

    def cli(self, *args, env=None, cwd=None, timeout=600, check=False):
        """`gptkit train ARGS` to the end (run_cli)."""
        return run_cli("train", *args, env=env, cwd=cwd, timeout=timeout, check=check)


@pytest.fixture(scope="session")
def trains():
    """Request this in a test that starts a training or torchrun, or in the fixture that does it for
    the test (any scope): the test is then in the slow lane. Starting one without it fails the test."""
    return Trainings()


class _Guard:
    """The session's side of tests/startguard.py: GUARD/sitecustomize.py on PYTHONPATH installs it in
    every Python process the tests start; GUARD/current names the test (and fixture) being run."""

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="gptkit-tests-guard-"))
        (self.dir / "sitecustomize.py").write_text(
            "# Written by tests/conftest.py for one pytest session (see tests/startguard.py).\n"
            "import importlib.util as _u\n"
            "import sys as _sys\n"
            f"_s = _u.spec_from_file_location('startguard', {str(Path(startguard.__file__).resolve())!r})\n"
            "_m = _sys.modules['startguard'] = _u.module_from_spec(_s)  # conftest's too, in a pytest child\n"
            "_s.loader.exec_module(_m)\n"
            f"_m.install({str(self.dir)!r})\n"
        )
        self.old_pythonpath = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(self.dir), self.old_pythonpath]))
        self.read = 0  # bytes of starts.log already read
        self.starts = defaultdict(list)  # test node id -> [(kind, what)]
        self.trained_fixtures = set()  # (baseid, name) of fixtures that started one while set up
        self.warnings = []
        self.fixtures = []  # the fixtures being set up, innermost last
        self.item = ""
        self.set_current("")
        startguard.install(str(self.dir))

    def set_current(self, item=None):
        if item is not None:
            self.item = item
        fixture = "::".join(self.fixtures[-1]) if self.fixtures else ""
        tmp = self.dir / (startguard.CURRENT + ".tmp")
        tmp.write_text(f"{self.item}\t{fixture}\n")
        os.replace(tmp, self.dir / startguard.CURRENT)

    def collect(self):
        """Reads the new lines of starts.log; returns the node ids that started something."""
        try:
            with open(self.dir / startguard.STARTS, "rb") as f:
                f.seek(self.read)
                data = f.read()
        except FileNotFoundError:
            return set()
        data = data[: data.rfind(b"\n") + 1]  # whole lines only
        self.read += len(data)
        new = set()
        for line in data.decode().splitlines():
            nodeid, fixture, kind, what = line.split("\t", 3)
            if kind == "warning":
                self.warnings.append(what)
                continue
            self.starts[nodeid].append((kind, what))
            new.add(nodeid)
            if fixture:
                self.trained_fixtures.add(tuple(fixture.rsplit("::", 1)))
        return new

    def check(self, item):
        if item.nodeid in self.collect() and not item.get_closest_marker("slow"):
            kind, what = self.starts[item.nodeid][0]
            pytest.fail(
                f"{item.nodeid} started {'torchrun' if kind == 'torchrun' else 'a training'} ({what}) "
                f"but is not in the slow lane: request the `{TRAINS}` fixture (tests/conftest.py), in the "
                "test or in the fixture that trains for it",
                pytrace=False,
            )

    def close(self):
        if self.old_pythonpath is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = self.old_pythonpath
        shutil.rmtree(self.dir, ignore_errors=True)


_guard: _Guard | None = None
_lanes: dict[str, int] = {}
_by_hand: set[str] = set()
_fixtures: dict[str, set[str]] = {}  # node id -> the fixtures it uses


def pytest_configure(config):
    global _guard
    _guard = _Guard()


def pytest_unconfigure(config):
    if _guard is not None:
        _guard.close()
    for server in _servers.values():
        server.stop()


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by the marks
def pytest_collection_modifyitems(config, items):
    for item in items:
        _fixtures[item.nodeid] = set(item.fixturenames)
        if TRAINS in item.fixturenames:
            item.add_marker(pytest.mark.slow)
            # Under pytest-xdist (scripts/test.sh runs 2 workers) every training runs on one worker,
            # one at a time as before, while the other worker takes the tests that start none.
            item.add_marker(pytest.mark.xdist_group(TRAINS))
        elif item.get_closest_marker("slow"):
            _by_hand.add(item.nodeid)
    _lanes["slow"] = sum(1 for item in items if item.get_closest_marker("slow"))
    _lanes["fast"] = len(items) - _lanes["slow"]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    _guard.set_current(item.nodeid)
    if item.nodeid in _by_hand:
        pytest.fail(f"marked slow by hand: only the `{TRAINS}` fixture puts a test in the slow lane", pytrace=False)
    try:
        return (yield)
    finally:
        _guard.check(item)


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(fixturedef, request):
    _guard.fixtures.append((fixturedef.baseid, fixturedef.argname))
    _guard.set_current()
    try:
        return (yield)
    finally:
        _guard.fixtures.pop()
        _guard.set_current()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    try:
        return (yield)
    finally:
        _guard.check(item)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item, nextitem):
    try:
        return (yield)
    finally:
        _guard.set_current("")
        _guard.check(item)


# Under pytest-xdist the workers collect and run the tests and the controller reports: each worker
# sends its lane counts and what its guard saw (the `workeroutput` channel), the controller merges.
_started: set[str] = set()  # node ids that started a training or torchrun
_trained_fixtures: set[tuple[str, str]] = set()


def pytest_sessionfinish(session):
    if _guard is None:
        return
    _guard.collect()
    _started.update(_guard.starts)
    _trained_fixtures.update(_guard.trained_fixtures)
    out = getattr(session.config, "workeroutput", None)
    if out is not None:  # an xdist worker
        out["gptkit"] = {
            "lanes": dict(_lanes),
            "started": sorted(_started),
            "trained_fixtures": sorted(_trained_fixtures),
            "fixtures": {k: sorted(v) for k, v in _fixtures.items()},
        }


@pytest.hookimpl(optionalhook=True)  # an xdist hook: pytest without xdist never calls it
def pytest_testnodedown(node, error):
    got = getattr(node, "workeroutput", {}).get("gptkit")
    if got:
        _lanes.update(got["lanes"])
        _started.update(got["started"])
        _trained_fixtures.update(tuple(f) for f in got["trained_fixtures"])
        for k, v in got["fixtures"].items():
            _fixtures.setdefault(k, set()).update(v)


def pytest_terminal_summary(terminalreporter):
    if not _lanes:
        return
    tr, fast, slow = terminalreporter, _lanes["fast"], _lanes["slow"]
    tr.write_line(
        f'lanes: {fast} tests in the fast lane (-m "not slow"), {slow} in the slow lane '
        f"(they start a training or torchrun) of {fast + slow} collected"
    )
    if _guard is not None:
        _guard.collect()
        _started.update(_guard.starts)
        _trained_fixtures.update(_guard.trained_fixtures)
    idle = []
    for rep in tr.stats.get("passed", []):
        if rep.when != "call" or "slow" not in rep.keywords or rep.nodeid in _started:
            continue
        names = _fixtures.get(rep.nodeid, set())
        if not any(name in names and rep.nodeid.startswith(base) for base, name in _trained_fixtures):
            idle.append(rep.nodeid)
    if idle:
        tr.write_line(f"slow tests that started no training or torchrun ({len(idle)}): drop `{TRAINS}` from them")
        for nodeid in idle:
            tr.write_line(f"  {nodeid}")
