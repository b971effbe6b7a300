"""Crash-safe file writes shared by download, tokenize, checkpoints and convert (stdlib only: tokenize's
worker processes import this, and must not pay for torch)."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from gptkit import faults
from gptkit.errors import DiskError, GptkitError


def write_json_atomic(path: Path, obj, *, indent: int = 2) -> None:
    """Write JSON under a temporary name (unique per process and thread), fsync, rename into place."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=indent)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def sha256_file(path: Path) -> str:
    """The sha256 of a file's content, read in 16 MiB chunks (hashlib releases the GIL on each, so a
    thread hashing runs beside the caller's work)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()


def fsync_dir(path: Path) -> None:
    """Make a rename inside `path` durable (best effort: not every filesystem allows it)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# OSErrors that mean "this path cannot be used" (a file where a folder must go, no permission, ...):
# the user's input, not a bug, so one line naming the path.
_PATH_ERRNOS = (
    errno.EEXIST,
    errno.ENOTDIR,
    errno.EISDIR,
    errno.EACCES,
    errno.EPERM,
    errno.ENOENT,
    errno.ENAMETOOLONG,
    errno.ELOOP,
)


def path_error(e: OSError) -> GptkitError | None:
    """The one-line error for an OSError about a path the user gave, else None."""
    if e.errno not in _PATH_ERRNOS or not e.filename:
        return None
    why = {
        errno.EEXIST: "a file is in the way of a folder gptkit must create",
        errno.ENOTDIR: "a file is in the way of a folder gptkit must create",
    }.get(e.errno, e.strerror or os.strerror(e.errno or 0)).lower()
    return GptkitError(f"{e.filename}: {why}")


def make_dirs(path: Path) -> Path:
    """mkdir -p, with a file in the way or a forbidden place as one line naming the path."""
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        mapped = path_error(e) or disk_error(e, Path(path))
        if mapped is None:
            raise
        raise mapped from None
    return Path(path)


def remove_path(path: Path) -> None:
    """Remove a file, link or directory tree if it is there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextlib.contextmanager
def atomic_output(final: Path) -> Iterator[Path]:
    """Yield a temporary path beside `final` to write a file or directory at; when the block ends
    without an error, swap it into place with `replace_atomically`, else remove it. Temporary
    copies of `final` left by killed processes are removed first."""
    final = Path(final)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    remove_stale_temps(final.parent, re.escape(final.name))  # copies left by killed runs
    remove_path(tmp)
    try:
        yield tmp
        replace_atomically(tmp, final)
    finally:
        remove_path(tmp)


def replace_atomically(tmp: Path, final: Path) -> None:
    """Rename `tmp` to `final`. An existing `final` is moved aside first and deleted after, so at
    every moment `final` is either the whole old one or the whole new one, never a mix."""
    old = None
    if final.exists() or final.is_symlink():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        remove_path(old)
        os.replace(final, old)
    os.replace(tmp, final)
    fsync_dir(final.parent)
    if old is not None:
        remove_path(old)


# --------------------------------------------------------------------------- a full or read-only disk

DISK_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
# What libraries that hide errno say when the disk filled under them: safetensors (Rust's io error,
# "os error 28"), torch.save (its C++ stream: "basic_ios::clear: iostream error" or "file write
# failed"). The C++ messages do not say why, so those count only when the disk is indeed (nearly) full.
_FULL_WORDS = ("os error 28", "os error 122", "no space left on device", "disk quota exceeded")
# numpy's tofile (gguf's writer): "16384 requested and 8160 written", an OSError without an errno.
_VAGUE_WORDS = ("iostream error", "file write failed", "unexpected pos", "requested and")
_READ_ONLY_WORDS = ("os error 30", "read-only file system")
NEARLY_FULL = 64 << 20  # a vague write error with less than this free is taken as "disk full"


def free_bytes(path: Path) -> int | None:
    """Free bytes on the filesystem that holds `path` (or would hold it), None if it cannot be told."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def _gb(n: int) -> str:
    """A size people read at a glance: 3.1 MB, 0.52 GB, 120 GB (MB below 100 MB, where GB says 0.00)."""
    if n < 100e6:
        return f"{n / 1e6:.1f} MB"
    return f"{n / 1e9:.2f} GB" if n < 10e9 else f"{n / 1e9:.0f} GB"


def disk_error(e: BaseException, path: Path, need: int | None = None) -> DiskError | None:
    """The one-line error for `e` if a full or read-only filesystem caused it, else None.

    ENOSPC/EDQUOT: "no space left on PATH (Y GB free; needs ≈X GB)"; EROFS: "PATH is on a
    read-only filesystem". Also recognises safetensors' and torch's wrapped messages (see above).
    """
    m = _TEMP_RE.match(Path(path).name)
    if m is not None:  # a writer's temporary copy: name the output the user asked for
        path = Path(path).with_name(m["name"])
    code = e.errno if isinstance(e, OSError) else None
    text = str(e).lower()
    if code is None:
        if any(w in text for w in _FULL_WORDS):
            code = errno.ENOSPC
        elif any(w in text for w in _READ_ONLY_WORDS):
            code = errno.EROFS
        elif any(w in text for w in _VAGUE_WORDS):
            free = free_bytes(path)
            if free is not None and (free < NEARLY_FULL or (need is not None and free < need)):
                code = errno.ENOSPC
    if code == errno.EROFS:
        return DiskError(f"{path} is on a read-only filesystem; choose another output location")
    if code not in DISK_FULL:
        return None
    free = free_bytes(path)
    if free is not None:  # this process's temporary copy is about to be removed: count its space as free
        free += _tree_bytes(Path(path).with_name(f".{Path(path).name}.tmp-{os.getpid()}"))
    parts = [f"{_gb(free)} free" if free is not None else "free space unknown"]
    if need:
        parts.append(f"needs ≈{_gb(need)}")
    return DiskError(f"no space left on {path} ({'; '.join(parts)})")


def _tree_bytes(path: Path) -> int:
    """Bytes held by a file or a directory tree (0 if it is not there)."""
    try:
        if path.is_dir() and not path.is_symlink():
            return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())
        return path.stat().st_size if path.is_file() else 0
    except OSError:
        return 0


def _write_errors() -> tuple[type[BaseException], ...]:
    """Exception types a write can fail with when the disk is full (only libraries already imported)."""
    types: list[type[BaseException]] = [OSError, RuntimeError]
    st = sys.modules.get("safetensors")
    if st is not None and hasattr(st, "SafetensorError"):
        types.append(st.SafetensorError)
    return tuple(types)


@contextlib.contextmanager
def disk_errors(
    path: Path, need: int | Callable[[], int | None] | None = None, point: str | None = None
) -> Iterator[None]:
    """Turn a full or read-only disk inside the block into one GptkitError about `path`; other
    errors pass unchanged. `need`: bytes the write needs (or a function giving them at failure time).

    `point` names the writer for the `fs.enospc` fault (GPTKIT_FAULTS="fs.enospc=checkpoint"): when
    set to it, the block fails with ENOSPC after it has run, as if its last write had hit a full disk.
    Put this inside the writer's atomic_output, so the temporary output is removed as for a real error.
    """
    try:
        yield
        if point is not None and point in (faults.value("fs.enospc") or "").split("|"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    except _write_errors() as e:
        mapped = disk_error(e, Path(path), need() if callable(need) else need)
        if mapped is None:
            raise
        raise mapped from None


# --------------------------------------------------------------------------- leftovers of killed runs

# `.NAME.tmp-PID`, `.NAME.tmp-PID-THREAD` (write_json_atomic) and `.NAME.old-PID` (replace_atomically).
_TEMP_RE = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)(?:-\d+)?$")


def pid_alive(pid: int) -> bool:
    """True if a process with this id exists (on this machine); unknown counts as alive."""
    if pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: someone else's process
        return True
    return True


def remove_stale_temps(folder: Path, name: str) -> list[Path]:
    """Clean up after killed writers in `folder`: the temporary copies (`.NAME.tmp-PID`) of outputs
    whose NAME fully matches the regular expression `name`, left by processes no longer alive.

    A `.NAME.old-PID` is the complete previous output, moved aside just before the new one took
    its place: if NAME is missing (killed between the two renames) it is put back, else removed.
    Returns what was removed.
    """
    removed: list[Path] = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    pattern = re.compile(name)
    for p in entries:
        m = _TEMP_RE.match(p.name)
        if m is None or not pattern.fullmatch(m["name"]) or pid_alive(int(m["pid"])):
            continue
        final = p.with_name(m["name"])
        if m["kind"] == "old" and not (final.exists() or final.is_symlink()):
            os.replace(p, final)
            continue
        with contextlib.suppress(OSError):
            remove_path(p)
            removed.append(p)
    return removed


# --------------------------------------------------------------------------- reproducible safetensors


def save_safetensors(tensors: dict, path: Path, metadata: dict[str, str] | None = None) -> None:
    """safetensors' save_file, with the same bytes for the same tensors and metadata every time.

    save_file writes its metadata in hash-map order, which changes from one process to the next;
    the header is rewritten in place with the metadata keys sorted (same length, so the tensor
    data and its offsets do not move). Needs torch and safetensors, imported here only.
    """
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata=metadata)
    canonical_safetensors_header(path)
    # safetensors creates the file 0600 (a private temporary file renamed); weights are shared like
    # every other file gptkit writes: the usual mode under the user's umask.
    os.chmod(path, 0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; set it straight back
    os.umask(mask)
    return mask


def canonical_safetensors_header(path: Path) -> None:
    """Sort the `__metadata__` keys of a .safetensors file's JSON header, in place."""
    with open(path, "r+b") as f:
        n = int.from_bytes(f.read(8), "little")
        raw = f.read(n)
        header = json.loads(raw)
        meta = header.get("__metadata__")
        if not meta:
            return
        header["__metadata__"] = dict(sorted(meta.items()))
        # serde_json's compact form, as safetensors writes it: no spaces, non-ASCII kept as is.
        new = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        if len(new) != len(raw.rstrip(b" ")):  # not the layout we know: leave it as written (still valid)
            return
        f.seek(8)
        f.write(new.ljust(n, b" "))
