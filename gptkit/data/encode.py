"""Encoding a source as one token stream: work units, the worker pool and what each worker does.

The stream is every document, in source order, each preceded by the end-of-text token (an empty
document is a lone end-of-text token; a vocabulary without one joins documents directly). The work
is split into units (a parquet row group, a byte range of a jsonl/txt file, a batch of streamed
rows); worker processes encode units in parallel and `encode_units` hands their tokens to the
caller in unit order, so the stream does not depend on the number of workers or on the unit size.

A unit is a small picklable tuple; workers turn it into tokens. Kinds:
  ("parquet", file, row_group, lo, hi)     rows [lo, hi) of one row group
  ("jsonl", file, k) / ("txt", file, k)    the k-th byte range of a file (see _unit_range); ("txt", file, -1)
                                           is the whole file, for tokenizers whose tokens could change
                                           where a plain-text file is cut (Tokenizer.cut_safe False)
  ("jsonl-data", file, offset, bytes)      lines read by the main process (gzip cannot seek)
  ("texts", list_of_str)                   documents read by the main process (streaming, builtin)
  ("tokens", file, lo, hi, split)          existing token ids, copied by the main process
"""

from __future__ import annotations

import gzip
import json
import os
import re
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from gptkit import faults
from gptkit.data import corpora
from gptkit.data.shards import READ_TOKENS
from gptkit.data.sources import Source, hf_batches, token_file, token_split
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
        _init_worker(*init, False)
        for index, unit, _ in todo:
            tokens, replaced, nbytes = _work(unit)
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
    pool = ProcessPoolExecutor(n_workers, mp.get_context("spawn"), initializer=_init_worker, initargs=(*init, True))
    finished = False
    try:
        pending: deque = deque()
        window = 2 * n_workers + 1

        def take() -> bool:
            i, fut = pending.popleft()
            tokens, replaced, nbytes = fut.result()
            return consume(i, tokens, replaced, nbytes, None)

        for index, unit, _ in todo:
            pending.append((index, pool.submit(_work, unit)))
            if len(pending) >= window and take():
                return
        while pending:
            if take():
                return
        finished = True
    except BrokenProcessPool:
        raise GptkitError(
            f"a tokenize worker process died (killed, or out of memory with {n_workers} workers?); the shards "
            "written so far are kept: run the same command again to resume (with fewer --workers if memory is short)"
        ) from None
    finally:
        pool.shutdown(wait=finished, cancel_futures=True)
        if not finished:  # an error, Ctrl-C or an early stop: do not wait for the units in flight
            for proc in list((getattr(pool, "_processes", None) or {}).values()):
                proc.terminate()


# --------------------------------------------------------------------------- in each worker

_W: dict = {}  # per-process worker context, set by _init_worker


def _init_worker(
    tok_spec: str,
    vocab_hash: str,
    source_spec: str,
    files: list[str],
    kinds: list[str],
    text_column: str,
    strict: bool,
    unit_bytes: int,
    watch: bool,
) -> None:
    import signal
    import threading

    import numpy as np

    from gptkit.tokenizer import get_tokenizer

    # Never raise here: a Pool restarts workers whose initializer fails, forever. _work reports it.
    tok: Tokenizer | None
    try:
        tok = get_tokenizer(tok_spec)
        error = None if tok.vocab_hash == vocab_hash else f"a worker resolved a different vocabulary from {tok_spec}"
    except GptkitError as e:
        tok, error = None, str(e)
    _W.update(
        error=error,
        tok=tok,
        eot=None if tok is None or tok.eot_token is None else np.array([tok.eot_token], dtype=np.uint32),
        source=source_spec,
        files=[Path(f) for f in files],
        kinds=kinds,
        col=text_column,
        strict=strict,
        unit_bytes=unit_bytes,
        pq=(None, None),
    )
    if watch:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is handled by the main process
        ppid = os.getppid()

        def orphan_watch() -> None:  # the main process was killed (kill -9): do not linger
            while True:
                time.sleep(0.5)
                if os.getppid() != ppid:
                    os._exit(1)

        threading.Thread(target=orphan_watch, daemon=True).start()


def _work(unit: tuple) -> tuple[Any, int, int]:
    """Encode one unit: (uint16 tokens, invalid-UTF-8 replacements, source bytes)."""
    if _W["error"]:
        raise GptkitError(_W["error"])
    kind = unit[0]
    if kind == "parquet":
        _, i, rg, lo, hi = unit
        return _encode_docs(_parquet_rows(i, rg, lo, hi), 0, where=str(_W["files"][i]))
    if kind == "texts":
        return _encode_docs(unit[1], 0, where=_W["source"])
    if kind == "jsonl-data":
        _, i, offset, data = unit
        return _encode_jsonl(data, i, offset)
    _, i, k = unit
    start, data = _unit_range(i, k, kind == "txt")
    if kind == "jsonl":
        return _encode_jsonl(data, i, start)
    text, bad = _decode(data, i, start)
    where = str(_W["files"][i])
    return _encode_pieces([text], first_is_doc=(start == 0), replaced=bad, nbytes=len(data), where=where)


def _encode_docs(texts: list, replaced: int, nbytes: int | None = None, *, where: str) -> tuple[Any, int, int]:
    """Every document, an empty one (or a missing value) too: it becomes a lone end-of-text token."""
    return _encode_pieces([t or "" for t in texts], True, replaced, nbytes, where)


def _encode_pieces(
    texts: list[str], first_is_doc: bool, replaced: int, nbytes: int | None, where: str
) -> tuple[Any, int, int]:
    """Concatenate [EOT] + tokens for each document (a txt piece that continues a file gets no EOT)."""
    import numpy as np

    tok, eot = _W["tok"], _W["eot"]
    parts = []
    for j, t in enumerate(texts):
        if eot is not None and (j > 0 or first_is_doc):
            parts.append(eot)
        if t:
            try:
                parts.append(tok.encode_array(t))
            except GptkitError as e:  # e.g. a character outside a character vocabulary: say where
                raise GptkitError(f"{where}: {e}") from None
    tokens = np.concatenate(parts).astype("<u2") if parts else np.zeros(0, "<u2")
    if nbytes is None:
        nbytes = sum(len(t) for t in texts)
    return tokens, replaced, nbytes


def _parquet_rows(i: int, rg: int, lo: int, hi: int) -> list:
    import pyarrow as pa

    path = _W["files"][i]
    try:
        return _read_parquet_rows(path, rg, lo, hi)
    except (pa.ArrowException, OSError) as e:  # a damaged page (the footer was read when planning)
        reason = " ".join(str(e).split())[:160]
        raise GptkitError(f"{path}: corrupt parquet data in row group {rg} (rows {lo}-{hi}): {reason}") from None


def _read_parquet_rows(path: Path, rg: int, lo: int, hi: int) -> list:
    import pyarrow.parquet as pq

    if _W["pq"][0] != path:  # workers usually get consecutive row groups of one file
        _W["pq"] = (path, pq.ParquetFile(path, buffer_size=1 << 20))
    pf = _W["pq"][1]
    if lo == 0 and hi == pf.metadata.row_group(rg).num_rows:
        return pf.read_row_group(rg, columns=[_W["col"]]).column(0).to_pylist()
    rows, pos = [], 0  # a slice of a very large row group: stream it in batches
    for batch in pf.iter_batches(batch_size=1024, row_groups=[rg], columns=[_W["col"]]):
        n = batch.num_rows
        if pos + n > lo and pos < hi:
            rows += batch.column(0).slice(max(lo - pos, 0), min(hi, pos + n) - max(lo, pos)).to_pylist()
        pos += n
        if pos >= hi:
            break
    return rows


def _decode(data: bytes, i: int, offset: int) -> tuple[str, int]:
    """UTF-8 text and the number of invalid sequences replaced by U+FFFD (an error under --strict)."""
    try:
        return data.decode("utf-8"), 0
    except UnicodeDecodeError as e:
        if _W["strict"]:
            raise GptkitError(
                f"{_W['files'][i]}: invalid UTF-8 at byte {offset + e.start}; without --strict such bytes are replaced and counted"
            ) from None
    text = data.decode("utf-8", errors="replace")
    return text, text.count("\ufffd") - data.count("\ufffd".encode())


def _encode_jsonl(data: bytes, i: int, offset: int) -> tuple[Any, int, int]:
    text, bad = _decode(data, i, offset)
    col, path = _W["col"], _W["files"][i]
    docs = []
    for n, line in enumerate(text.split("\n")):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            where = offset + sum(len(x.encode()) + 1 for x in text.split("\n")[:n])
            raise GptkitError(f"{path}: the line at byte {where} is not valid JSON") from None
        if not isinstance(obj, dict) or col not in obj:
            where = offset + sum(len(x.encode()) + 1 for x in text.split("\n")[:n])
            raise GptkitError(f"{path}: the record at byte {where} has no {col!r} field; choose one with --text-column")
        t = obj[col]
        if t is not None and not isinstance(t, str):
            raise GptkitError(
                f"{path}: field {col!r} holds {type(t).__name__}, not text; choose another with --text-column"
            )
        docs.append(t)
    return _encode_docs(docs, bad, len(data), where=str(path))


# Where a plain-text file may be cut into pieces that encode exactly like the whole: after a
# newline between two visible ASCII characters, or before a space between two ASCII letters.
# GPT-2's pre-tokenizer never joins text across either point (no pattern spans a visible
# character and a newline, and " word" starts a new piece), so tokens do not depend on the cut.
_TXT_CUT = re.compile(rb"[!-~]\n(?=[!-~])|[A-Za-z](?= [A-Za-z])")
_LINE_CUT = re.compile(rb"\n")


def _cut_point(f: Any, lo: int, hi: int, size: int, plain: bool) -> int | None:
    """The first cut position p with lo <= p < min(hi, size), or None."""
    hi = min(hi, size)
    pat = _TXT_CUT if plain else _LINE_CUT
    span = 1 << 16
    while lo < hi:
        end = min(hi, lo + span)
        start = max(lo - 2, 0)
        f.seek(start)
        buf = f.read(end + 1 - start)
        m = pat.search(buf, max(lo - 2 - start, 0))
        while m is not None and start + m.end() < lo:
            m = pat.search(buf, m.start() + 1)
        if m is not None and start + m.end() < end:
            return start + m.end()
        if end >= hi:
            return None
        span = hi - lo  # not in the first 64 KiB: look through the whole window
    return None


def _unit_range(i: int, k: int, plain: bool) -> tuple[int, bytes]:
    """Unit k of a jsonl/txt file: from the first cut point in [k*U, (k+1)*U) to the next unit's.

    Each unit finds its own bounds by reading a little of the file, so any worker can take any
    unit; a window without a cut point adds its bytes to the unit before it.
    """
    path, u = _W["files"][i], _W["unit_bytes"]
    if k < 0:  # the whole file
        return 0, path.read_bytes()
    size = path.stat().st_size
    with open(path, "rb") as f:
        start = 0 if k == 0 else _cut_point(f, k * u, (k + 1) * u, size, plain)
        if start is None:
            return k * u, b""
        end, j = size, k + 1
        while j * u < size:
            p = _cut_point(f, j * u, (j + 1) * u, size, plain)
            if p is not None:
                end = p
                break
            j += 1
        f.seek(start)
        return start, f.read(end - start)
