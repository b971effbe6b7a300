"""Signals for workers and their launcher.

Graceful stop: the first SIGINT / SIGTERM asks the loop to finish its step, save a checkpoint and
exit; a second one ends the process at once, without a traceback (the last complete checkpoint
stands). Installed first thing in the worker, so a signal that arrives while torch is still
importing is remembered rather than killing the process.

One process tree: `gptkit train` -> torchrun -> workers. torchrun and the workers each run in a
session of their own (so a terminal's Ctrl-C reaches them only through gptkit, as one graceful
request), which also means nothing stops them when their parent dies. die_with_parent() asks the
kernel (Linux prctl PR_SET_PDEATHSIG) to SIGKILL this process when its parent dies: torchrun when
gptkit dies, each worker when torchrun dies, whatever killed it. An orphan stops without saving.
"""

from __future__ import annotations

import os
import signal
import sys

_requested = False
PR_SET_PDEATHSIG = 1


def _handler(signum, frame):
    global _requested
    if _requested:
        os._exit(128 + signum)  # second request: at once, no traceback; the last checkpoint stands
    _requested = True


def install() -> None:
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, _handler)


def requested() -> bool:
    return _requested


def _prctl():
    """libc's prctl, or None off Linux (loaded before any fork: a preexec_fn should not dlopen)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def die_with_parent(expected_parent: int | None = None, prctl=None) -> bool:
    """Have the kernel SIGKILL this process when its parent dies (Linux; False elsewhere).

    The parent may die before the request is made; then this process has already been handed to
    init (or a subreaper) and would never be signalled, so it exits here at once.
    `expected_parent`: the PID the parent must have (default: the parent seen on entry).
    """
    parent = os.getppid() if expected_parent is None else expected_parent
    prctl = prctl or _prctl()
    if prctl is None or prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
        return False
    if os.getppid() != parent:
        os._exit(1)
    return True


def child_preexec():
    """A Popen preexec_fn that makes the child die with this process (None where that is not possible)."""
    prctl, me = _prctl(), os.getpid()
    if prctl is None:
        return None
    return lambda: die_with_parent(me, prctl)


def parent_alive(parent: int) -> bool:
    """False once this process has been orphaned (re-parented away from `parent`)."""
    return os.getppid() == parent
