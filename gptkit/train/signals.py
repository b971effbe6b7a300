"""Graceful stop for workers: the first SIGINT / SIGTERM asks the loop to finish its step, save a
checkpoint and exit; a second one interrupts at once.

Its own tiny module, installed first thing in the worker, so a signal that arrives while torch is
still importing is remembered rather than killing the process.
"""

from __future__ import annotations

import signal

_requested = False


def _handler(signum, frame):
    global _requested
    if _requested:
        raise KeyboardInterrupt
    _requested = True


def install() -> None:
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, _handler)


def requested() -> bool:
    return _requested
