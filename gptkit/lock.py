"""One writer per directory: a lock file (e.g. RUN/.lock) that holds the host and PID of its holder.

Not flock: advisory locks are unreliable or absent on network filesystems (NFS, Lustre), where run
and shard directories often live. The file is written complete under a private name and then
hard-linked to DIR/.lock; link() fails with EEXIST when the lock exists, atomically, on NFS too
(the classic NFS lock). Where hard links are refused (some FUSE and SMB mounts), O_CREAT|O_EXCL
creates it instead.

A lock whose holder is gone is taken over: same host and that PID not alive (or alive but a
different process that reused the number, told apart by its start time in /proc). A lock held
from another host cannot be checked from here: it is refused, naming the host, with the way to
break it for a user who knows that process is dead.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time
from pathlib import Path

from gptkit.errors import GptkitError
from gptkit.fsutil import disk_errors, make_dirs

LOCK_FILE = ".lock"


class LockHeld(GptkitError):
    """DIR/.lock belongs to a live process (or one on another host)."""


def _start_time(pid: int) -> str | None:
    """The kernel's start time of PID (clock ticks since boot), to tell a reused PID apart; Linux only."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    now = _start_time(pid)
    return start is None or now is None or now == start


def _describe(holder: dict) -> str:
    since = holder.get("time")
    when = time.strftime(" since %Y-%m-%d %H:%M:%S", time.localtime(since)) if isinstance(since, (int, float)) else ""
    what = f" ({holder['what']})" if holder.get("what") else ""
    return f"PID {holder.get('pid')} on {holder.get('host')}{what}{when}"


class Lock:
    """A held lock; release() removes the file if it is still ours. Dropping the last reference
    releases it too (CPython frees it at once), so a function can hold one in a local variable."""

    def __init__(self, path: Path, record: dict):
        self.path, self.record = path, record

    def release(self) -> None:
        if os.getpid() != self.record["pid"]:
            return  # a forked child: the lock is its parent's
        try:
            if json.loads(self.path.read_text()) == self.record:
                self.path.unlink()
        except (OSError, ValueError):
            pass

    def __del__(self) -> None:
        self.release()

    def __enter__(self) -> Lock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def read_holder(path: str | Path) -> dict | None:
    """What a lock file says about its holder: None = no lock, {} = unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # being written, or damaged


def acquire(path: str | Path, *, subject: str, what: str, how_to_break: str, force: bool = False) -> Lock:
    """Take the lock file `path` for this process, or raise LockHeld naming the holder.

    `subject` is what the lock guards (named in a refusal); `what` says what holds it (shown to the
    next one refused); `how_to_break` finishes the refusal for a lock held from another host (e.g.
    "give --break-lock"); `force` takes any lock.
    """
    path = Path(path)
    d = path.parent
    make_dirs(d)
    pid = os.getpid()
    record = {"host": socket.gethostname(), "pid": pid, "start": _start_time(pid), "time": time.time(), "what": what}
    for _ in range(10):
        with disk_errors(Path(subject)):  # a full or read-only disk names what is locked, not the lock file
            created = _create(path, record)
        if created:
            return Lock(path, record)
        holder = read_holder(path)
        if holder is None:
            continue  # released between our attempt and the read
        if not force and not _stale(holder, path):
            where = "" if holder.get("host") == record["host"] else f"; if it is gone, {how_to_break}"
            raise LockHeld(f"{subject} is in use by {_describe(holder)}{where}")
        # Stale: move it aside under a private name, so two processes taking it over cannot both win.
        aside = path.with_name(f"{path.name}.stale.{record['host']}.{pid}")
        try:
            os.replace(path, aside)
            aside.unlink()
        except FileNotFoundError:
            pass
    raise LockHeld(f"{subject}: could not take {path} (other processes keep taking it)")


def _stale(holder: dict, path: Path) -> bool:
    if not holder:  # unreadable: a writer died mid-way through the O_EXCL fallback; give it a minute
        try:
            return time.time() - path.stat().st_mtime > 60
        except FileNotFoundError:
            return True
    if holder.get("host") != socket.gethostname():
        return False
    try:
        return not _alive(int(holder["pid"]), holder.get("start"))
    except (KeyError, TypeError, ValueError):
        return False


def _create(path: Path, record: dict) -> bool:
    """Create `path` holding `record`, atomically; False if it already exists."""
    data = json.dumps(record).encode()
    tmp = path.with_name(f"{path.name}.{record['host']}.{record['pid']}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
            raise
    finally:
        tmp.unlink(missing_ok=True)
    try:  # no hard links here: exclusive create, then write
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return True
