"""Child processes that never outlive their parent.

A process started in a session of its own (torchrun, its workers) or by a pool (tokenize's workers)
is not stopped by anything when its parent dies, however the parent died (kill -9 included).
die_with_parent() asks the kernel (Linux prctl PR_SET_PDEATHSIG) to SIGKILL this process when its
parent dies; child_preexec() makes a Popen child ask it. Used by `gptkit train` (torchrun and its
workers) and by `gptkit tokenize` (its pool workers).
"""

from __future__ import annotations

import os
import signal
import sys

PR_SET_PDEATHSIG = 1


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
