"""Signals for workers and their launcher.

Graceful stop: the first SIGINT / SIGTERM asks the loop to finish its step, save a checkpoint and
exit; a second one ends the process at once, without a traceback (the last complete checkpoint
stands). Installed first thing in the worker, so a signal that arrives while torch is still
importing is remembered rather than killing the process.

One process tree: `gptkit train` -> torchrun -> workers. torchrun and the workers each run in a
session of their own (so a terminal's Ctrl-C reaches them only through gptkit, as one graceful
request), which also means nothing stops them when their parent dies: gptkit.procs has the kernel
kill torchrun when gptkit dies, and each worker when torchrun dies, whatever killed it. An orphan
stops without saving.
"""

from __future__ import annotations

import os
import signal

_requested = False


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
