"""What each tokenize worker process does: rebuild the tokenizer once (init_worker), then turn one
work unit (gptkit.data.encode) into tokens (work): parquet row ranges, JSONL/text byte ranges cut
at safe points, or documents sent by the main process. The main process runs the same two
functions in-process when there is one worker.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

from gptkit.errors import GptkitError
from gptkit.tokenizer import Tokenizer

_W: dict = {}  # per-process worker context, set by init_worker


def init_worker(
    tok_spec: str,
    vocab_hash: str,
    source_spec: str,
    files: list[str],
    kinds: list[str],
    text_column: str,
    strict: bool,
    unit_bytes: int,
    parent: int | None,
) -> None:
    """Set up this process's context. `parent`: the main process's PID in a pool worker (which then
    exits as soon as the main process is gone), None when the main process runs the units itself."""
    import signal

    if parent is not None:  # a pool worker
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is handled by the main process
        if hasattr(signal, "pthread_sigmask"):
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # blocked while it started (encode._submit)
        _die_with(parent)

    import numpy as np

    from gptkit.tokenizer import get_tokenizer

    # Never raise here: a failing initializer breaks the whole pool, which would read as a dead worker;
    # work() raises the error instead, with its own message.
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


def _die_with(parent: int) -> None:
    """Never outlive the main process (killed with kill -9 or SIGTERM, it cannot stop its workers).

    A worker blocked writing a result nobody reads, or waiting for work, would otherwise run on for
    good. On Linux the kernel kills it when its parent dies (PR_SET_PDEATHSIG: strictly, when the
    thread that started it ends; that is the thread that runs the pool, which outlives the pool);
    everywhere, a thread also polls the parent's PID. `parent` is passed in, not read here: a worker
    that finishes starting after the main process died already has another parent (init or a
    subreaper) and would take that one for its own.
    """
    import threading

    from gptkit.procs import die_with_parent, parent_alive

    die_with_parent(parent)  # a failure (not Linux) leaves the thread below
    if not parent_alive(parent):  # it died before that: the kernel only signals a death after it
        os._exit(1)

    def orphan_watch() -> None:
        while True:
            time.sleep(0.5)
            if not parent_alive(parent):
                os._exit(1)

    threading.Thread(target=orphan_watch, name="gptkit-orphan-watch", daemon=True).start()


def work(unit: tuple) -> tuple[Any, int, int]:
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
