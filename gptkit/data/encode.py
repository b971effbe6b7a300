"""Encoding a source as one token stream: the work units and the worker pool (gptkit.data.worker: what
each worker does).

The stream is every document, in source order, each preceded by the end-of-text token (an empty
document is a lone end-of-text token; a vocabulary without one joins documents directly). The work
is split into units (a parquet row group, a byte range of a jsonl/txt file, a batch of streamed
rows); worker processes encode units in parallel and `encode_units` hands their tokens to the
caller in unit order, so the stream does not depend on the number of workers or on the unit size.

A unit is a small picklable tuple; workers turn it into tokens. Kinds:
  ("parquet", file, row_group, lo, hi)     rows [lo, hi) of one row group
  ("jsonl", file, k) / ("txt", file, k)    the k-th byte range of a file (see worker._unit_range); ("txt", file, -1)
                                           is the whole file, for tokenizers whose tokens could change
                                           where a plain-text file is cut (Tokenizer.cut_safe False)
  ("jsonl-data", file, offset, bytes)      lines read by the main process (gzip cannot seek)
  ("texts", list_of_str)                   documents read by the main process (streaming, builtin)
  ("tokens", file, lo, hi, split)          existing token ids, copied by the main process
"""

from __future__ import annotations

import gzip
import os
import sys
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from gptkit import faults
from gptkit.data import corpora
from gptkit.data.shards import READ_TOKENS
from gptkit.data.sources import Source, hf_batches, token_file, token_split
from gptkit.data.worker import init_worker, work
from gptkit.errors import GptkitError
from gptkit.tokenizer import Tokenizer

# Text per work unit: large enough that per-unit overhead vanishes, small enough that the
# in-flight units (a few per worker) keep memory far below 1 GB.
UNIT_BYTES = 8 << 20

# consume(unit index, uint16 tokens, invalid UTF-8 replaced, source bytes, split or None) -> stop?
Consume = Callable[[int, Any, int, int, str | None], bool]


def default_unit_bytes() -> int:
    """UNIT_BYTES, unless the tokenize.unit_bytes fault asks for tiny units (many units from tiny inputs)."""
    return int(faults.number("tokenize.unit_bytes", UNIT_BYTES))


def default_workers() -> int:
    """All the cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# --------------------------------------------------------------------------- the units of a source


def _units(src: Source, start: int, unit_bytes: int, cut_safe: bool = True) -> Iterator[tuple[int, Any, int]]:
    """(index, unit, source bytes) for every unit from `start` on, in a fixed order."""
    index = 0

    def emit(unit: Any, nbytes: int) -> tuple[int, Any, int]:
        nonlocal index
        index += 1
        return index - 1, unit, nbytes

    if src.kind == "builtin":
        for batch in _batched_texts(iter(corpora.texts(src.spec)), unit_bytes):
            yield emit(("texts", batch), sum(len(t.encode()) for t in batch))
        return
    if src.kind == "huggingface":
        for texts in hf_batches(src, unit_bytes, skip_units=start):
            yield emit(("texts", texts) if texts is not None else None, 0)
        return
    if src.kind == "tokens":
        split_given = src.splits_given()
        for i, f in enumerate(src.files):
            n = token_file(f)[1]
            split = token_split(f) if split_given else None
            for lo in range(0, n, READ_TOKENS):
                yield emit(("tokens", i, lo, min(n, lo + READ_TOKENS), split), 2 * (min(n, lo + READ_TOKENS) - lo))
        return
    for i, (f, k) in enumerate(zip(src.files, src.file_kinds, strict=True)):
        if k == "parquet":
            for rg, lo, hi, nbytes in src.parquet_units[i]:
                yield emit(("parquet", i, rg, lo, hi), nbytes)
        elif k == "txt" and not cut_safe:  # one unit: no cut inside a document
            yield emit((k, i, -1), f.stat().st_size)
        elif k in ("jsonl", "txt"):
            size = f.stat().st_size
            for j in range(max(1, -(-size // unit_bytes))):  # an empty .txt file is still one (empty) document
                yield emit((k, i, j), min(unit_bytes, size - j * unit_bytes))
        else:  # jsonl.gz: decompress here, ship lines; units before `start` are only skipped
            offset, buf, size = 0, [], 0
            for line in _gzip_lines(f):
                buf.append(line)
                size += len(line)
                if size >= unit_bytes:
                    yield emit(("jsonl-data", i, offset, b"".join(buf) if index >= start else b""), size)
                    offset, buf, size = offset + size, [], 0
            if buf:
                yield emit(("jsonl-data", i, offset, b"".join(buf) if index >= start else b""), size)


def _gzip_lines(f: Path) -> Iterator[bytes]:
    """The lines of a .gz file; a truncated or damaged one is a one-line error naming the file and where."""
    done = 0
    try:
        with gzip.open(f, "rb") as fh:
            for line in fh:
                yield line
                done += len(line)
    except (EOFError, OSError, zlib.error) as e:  # EOFError: cut short (click would call it "interrupted")
        what = "truncated" if isinstance(e, EOFError) else f"corrupt ({e})"
        raise GptkitError(
            f"{f}: {what} gzip data after {done:,} bytes of text; the file is damaged: fetch it again"
        ) from None


def _batched_texts(texts: Iterator[str], unit_bytes: int) -> Iterator[list[str]]:
    batch, size = [], 0
    for t in texts:
        batch.append(t)
        size += len(t)
        if size >= unit_bytes:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


# --------------------------------------------------------------------------- the pool


def encode_units(
    source: Source,
    start: int,
    unit_bytes: int,
    tok: Tokenizer,
    text_column: str,
    strict: bool,
    workers: int | None,
    consume: Consume,
) -> None:
    """Feed units to the workers, at most a few per worker in flight, and consume results in order."""
    import numpy as np

    units = _units(source, start, unit_bytes, tok.cut_safe)
    if source.kind == "tokens":  # a copy with a range check: no encoding, so no workers
        arrays: dict[int, Any] = {}
        for index, unit, nbytes in units:
            if index < start:
                continue
            _, i, lo, hi, split_hint = unit
            if i not in arrays:
                arrays = {i: token_file(source.files[i])[0]}
            chunk = np.asarray(arrays[i][lo:hi])
            if chunk.size and (int(chunk.min()) < 0 or int(chunk.max()) >= tok.vocab_size):
                bad = int(chunk.max()) if int(chunk.max()) >= tok.vocab_size else int(chunk.min())
                raise GptkitError(
                    f"{source.files[i]}: token id {bad} is outside the {tok.name} vocabulary (size {tok.vocab_size}); "
                    "wrong --tokenizer?"
                )
            if consume(index, chunk.astype("<u2"), 0, nbytes, split_hint):
                return
        return
    n_workers = max(1, workers or default_workers())
    init = (
        tok.spec,
        tok.vocab_hash,
        source.spec,
        [str(f) for f in source.files],
        source.file_kinds,
        text_column,
        strict,
        unit_bytes,
    )
    todo: Any = ((i, u, b) for i, u, b in units if i >= start)
    if source.kind == "builtin" or (source.kind == "files" and "jsonl.gz" not in source.file_kinds):
        todo = list(todo)  # small descriptors: count them, and start no more workers than there are units
        n_workers = min(n_workers, max(1, len(todo)))
    if n_workers == 1:
        init_worker(*init, None)
        for index, unit, _ in todo:
            tokens, replaced, nbytes = work(unit)
            if consume(index, tokens, replaced, nbytes, None):
                return
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    # spawn, not fork: the main process may hold pyarrow/datasets threads, which fork would copy mid-lock.
    # An executor, not multiprocessing.Pool: a Pool silently replaces a worker that dies (the OOM
    # killer, a crash in a native reader) and waits forever for the unit it held; an executor fails
    # every pending unit with BrokenProcessPool, which becomes one line and a resumable run.
    # The workers get this process's PID: they exit as soon as it is gone (kill -9, SIGTERM).
    _start_quiet_resource_tracker()
    pool = ProcessPoolExecutor(
        n_workers, mp.get_context("spawn"), initializer=init_worker, initargs=(*init, os.getpid())
    )
    try:
        pending: deque = deque()
        window = 2 * n_workers + 1

        def take() -> bool:
            i, fut = pending.popleft()
            tokens, replaced, nbytes = fut.result()
            return consume(i, tokens, replaced, nbytes, None)

        for index, unit, _ in todo:
            pending.append((index, _submit(pool, unit)))
            if len(pending) >= window and take():
                return
        while pending:
            if take():
                return
    except BrokenProcessPool:
        raise GptkitError(
            f"a tokenize worker process died (killed, or out of memory with {n_workers} workers?); the shards "
            "written so far are kept: run the same command again to resume (with fewer --workers if memory is short)"
        ) from None
    finally:
        # Every ending waits for the units in flight (a few, each short; the rest are cancelled), so
        # the pool ends cleanly. Terminating a worker while it writes a result to the pipe can leave
        # half a message that the pool's manager thread waits on for ever, and the interpreter joins
        # that thread at exit: the likely cause of a `tokenize -j 2` of a corrupt parquet file that
        # hung under load in CI (it terminated the workers after the error).
        pool.shutdown(wait=True, cancel_futures=True)


def _submit(pool: Any, unit: Any) -> Any:
    """pool.submit(work, unit), with Ctrl-C held back while it may start a worker process.

    A Ctrl-C goes to every process in the terminal's group: a worker still starting would print a
    KeyboardInterrupt traceback from its imports. One started with SIGINT blocked (as multiprocessing
    starts its resource tracker) never sees it; this process gets it once it is unblocked here.
    """
    import signal

    if not hasattr(signal, "pthread_sigmask"):
        return pool.submit(work, unit)
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        return pool.submit(work, unit)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


# multiprocessing's resource tracker outlives a main process killed with kill -9 or SIGTERM just long
# enough to remove the pool's semaphores, with a warning about "leaked semaphore objects" on the
# terminal of a run that already ended; that cleanup is all there is to do, so the warning is noise.
_QUIET_TRACKER = "ignore:resource_tracker:UserWarning:multiprocessing.resource_tracker"


def _start_quiet_resource_tracker() -> None:
    """Start the resource tracker (if this process has none yet) with its leak warnings off.

    The tracker is a `python -c` process that takes its warning filters from sys.warnoptions
    (multiprocessing passes them on as -W options), so the filter is there only while it starts.
    """
    from multiprocessing import resource_tracker

    added = _QUIET_TRACKER not in sys.warnoptions
    if added:
        sys.warnoptions.append(_QUIET_TRACKER)
    try:
        resource_tracker.ensure_running()
    finally:
        if added:
            sys.warnoptions.remove(_QUIET_TRACKER)
