"""Fault injection: the one way tests (and fault drills) make gptkit slow, flaky or broken on purpose.

Inert unless the environment variable GPTKIT_FAULTS is set. It holds comma-separated NAME=VALUE
pairs, for example

    GPTKIT_FAULTS="tokenize.unit_delay=0.2,mirror.error_rate=0.1" gptkit ...

Every injection point asks for its own name, listed in POINTS with what it does; a name that is not
listed there is an error, so a typo in a test never passes silently. The variable is read at every
call, so tests can set it with monkeypatch, and child processes (torchrun workers, tokenize workers)
inherit it.
"""

from __future__ import annotations

import os

from gptkit.errors import GptkitError

ENV = "GPTKIT_FAULTS"

# name -> what it injects. Add a point here before reading it anywhere.
POINTS: dict[str, str] = {
    "tokenize.unit_delay": "seconds each tokenize worker sleeps per work unit (to be killed mid-run)",
    "tokenize.unit_bytes": "bytes of text per tokenize work unit (many units from tiny inputs)",
    "train.step_sleep": "seconds each training step sleeps (to be killed or interrupted mid-run)",
    "train.micro_sleep": "seconds each micro-batch sleeps (a long step, to be interrupted mid-step)",
    "train.stall_rank": "this rank stops making progress (sleeps for good) after step train.stall_step",
    "train.stall_step": "the step after which train.stall_rank stalls (default 3)",
    "train.oom": "a training phase (train|evaluation|hellaswag|sample) raises CUDA's out-of-memory error, on any device",
    "train.kill_rank": "this rank SIGKILLs itself after step train.kill_step, in the first attempt only (restarts)",
    "train.kill_step": "the step after which train.kill_rank dies (default 3)",
    "mirror.error_rate": "fraction of mirror requests answered with a 5xx",
    "mirror.cut_rate": "fraction of mirror file bodies cut short (connection closed)",
    "mirror.rate_limit": "bytes/s per mirror response (slow transfers)",
    "hub.offline": "1: tokenize never asks the hub, as if the network were down",
    "fs.enospc": "writers (checkpoint|convert|tokenize|download|metrics, |-separated) fail as if the disk were full",
}


def _parse(raw: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in raw.split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or name not in POINTS:
            raise GptkitError(f"{ENV}: unknown fault {item!r}; known: {', '.join(POINTS)}")
        out[name] = value.strip()
    return out


def value(name: str) -> str | None:
    """The configured value of injection point NAME, or None when it is not set."""
    if name not in POINTS:
        raise KeyError(f"unregistered fault point {name!r}")
    raw = os.environ.get(ENV)
    if not raw:
        return None
    return _parse(raw).get(name)


def number(name: str, default: float = 0.0) -> float:
    """The point's value as a number (`default` when unset)."""
    v = value(name)
    if v is None or v == "":
        return default
    try:
        return float(v)
    except ValueError:
        raise GptkitError(f"{ENV}: {name} needs a number, not {v!r}") from None


def active(name: str) -> bool:
    """True when the point is set to anything but 0 or empty."""
    v = value(name)
    return v not in (None, "", "0")
