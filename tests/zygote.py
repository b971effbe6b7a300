"""A warm interpreter that forks `python -m gptkit` for the tests (tests/conftest.py: run_cli).

Most of a short `gptkit` command's time in a fresh interpreter is `import torch` (~1.5 s on 2
cores), and the fast lane runs a hundred or more of them. This server imports torch once and forks
a child per command. The child is still its own process, as a user's is: its own environment, working
directory, argv and file descriptors, `python -m gptkit`'s sys.path, a real exit status (a
traceback and exit 1 if an exception escapes, -N if a signal kills it), and its own children.

What a fork cannot give a child is a different environment at the time torch was loaded: libgomp
reads OMP_* when it loads, torch a few TORCH_*/PYTORCH_*/CUDA_* variables, the interpreter PYTHON*.
The server is started with the session's values of those (LOAD_TIME); run_cli starts a plain
subprocess for any command whose values differ. Nothing of gptkit's, huggingface_hub's or the
others' is imported here: they read their variables (GPTKIT_HOME, HF_ENDPOINT, ...) in the child.

Protocol, one Unix-socket connection per command: the client sends one JSON line {argv, env, cwd}
with its stdin, stdout and stderr descriptors (SCM_RIGHTS); the server forks a supervisor that
forks the command, sends "pid N\n", waits for it and sends "exit CODE\n". Standard library only.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sys

LOAD_TIME = re.compile(r"^(OMP|GOMP|KMP|MKL|TORCH|PYTORCH|CUDA|NCCL|LD|PYTHON)_|^PYTHON")


def load_time_env(env: dict[str, str]) -> dict[str, str]:
    """The variables read when the interpreter and torch load: a fork inherits them."""
    return {k: v for k, v in env.items() if LOAD_TIME.match(k)}


def _run_command(argv: list[str], env: dict[str, str], cwd: str) -> int:
    """In the forked child: become `python -m gptkit ARGV` and return its exit status."""
    import runpy
    import traceback

    # The dispositions a fresh interpreter starts with (Python ignores SIGPIPE: a closed pipe is
    # BrokenPipeError, not death).
    for sig in (signal.SIGCHLD, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    # `python -m` puts the working directory first on sys.path (unless PYTHONSAFEPATH), not the
    # folder of the script that started this server.
    if not env.get("PYTHONSAFEPATH"):
        sys.path[0] = os.getcwd()
    sys.argv = ["-m", *argv]
    try:
        runpy.run_module("gptkit", run_name="__main__", alter_sys=True)
        return 0
    except SystemExit as e:
        code = e.code
        if code is None:
            return 0
        if isinstance(code, int):
            return code
        print(code, file=sys.stderr)
        return 1
    except BaseException:
        traceback.print_exc()
        return 1
    finally:
        _shutdown()


def _shutdown() -> None:
    """What the interpreter does at exit before the process ends: join threads, run atexit, flush."""
    import atexit
    import threading

    try:
        threading._shutdown()  # type: ignore[attr-defined]
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass


def _supervise(conn: socket.socket) -> None:
    """In the supervisor: read one request, fork the command, report its pid and exit status."""
    data, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
    while not data.endswith(b"\n"):
        more = conn.recv(1 << 20)
        if not more:
            return
        data += more
    request = json.loads(data)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            conn.close()
            for i, fd in enumerate(fds):
                os.dup2(fd, i)
                os.close(fd)
            # Python's streams were made for the server's descriptors; rebind them to 0/1/2.
            sys.stdin = open(0, closefd=False)
            sys.stdout = open(1, "w", closefd=False)
            sys.stderr = open(2, "w", buffering=1, closefd=False, errors="backslashreplace")
            os.setpgid(0, 0)  # a timeout kills the command and all it started
            code = _run_command(request["argv"], request["env"], request["cwd"])
        except BaseException:
            import traceback

            traceback.print_exc()  # the server's own failure, on the command's stderr where it got that far
        finally:
            os._exit(code & 0xFF if code >= 0 else 1)
    for fd in fds:
        os.close(fd)
    conn.sendall(f"pid {pid}\n".encode())
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    conn.sendall(f"exit {code}\n".encode())


def serve(path: str) -> None:
    import torch  # noqa: F401  (the point: every child starts with it imported)

    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(64)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # supervisors are reaped by the kernel
    print("ready", flush=True)
    while True:
        conn, _ = server.accept()
        if os.fork() == 0:
            server.close()
            try:
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # waitpid needs its children
                _supervise(conn)
            finally:
                os._exit(0)
        conn.close()


if __name__ == "__main__":
    serve(sys.argv[1])
