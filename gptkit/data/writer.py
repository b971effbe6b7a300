"""Writing shards: the partial directory, the resume state, and moving finished shards into place.

While a run is in progress everything goes to OUT/.partial: the shard being written (CURRENT),
finished shards under their final names, and state.json, saved after each finished shard with the
exact resume point (unit, token offset inside it). A re-run after any crash rebuilds exactly the
same bytes from there. At the end the manifest is written into .partial and `install` moves the
shards into OUT, the manifest last.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from gptkit.data import shards
from gptkit.data.shards import MANIFEST, PARTIAL_DIR, READ_TOKENS
from gptkit.errors import GptkitError
from gptkit.fsutil import fsync_dir, make_dirs, sha256_file, write_json_atomic
from gptkit.vocab_files import SAVED_DIR

STATE = "state.json"
CURRENT = ".current.bin.tmp"


class ShardWriter:
    """Appends the token stream to the current shard on disk and commits full shards.

    Memory stays constant: tokens go straight to a temporary file, which gets its header,
    fsync and final name when full. The state saved after each commit is the exact resume point.
    """

    def __init__(self, pdir: Path, shard_tokens: int, val_tokens: int, eot: int | None, state: dict):
        self.pdir, self.eot, self.state = pdir, eot, state
        self.shard_tokens, self.val_tokens = shard_tokens, val_tokens
        self.f: IO[bytes] | None = None
        self.count = 0  # tokens in the current shard
        self.split: str | None = None
        self.save_state = True

    def _target(self, split_hint: str | None) -> tuple[str, int]:
        k = len(self.state["shards"])
        if split_hint is not None:
            return split_hint, self.shard_tokens
        return ("val", self.val_tokens) if k == 0 else ("train", self.shard_tokens)

    def _open(self, split: str) -> IO[bytes]:
        self.f = open(self.pdir / CURRENT, "wb")
        self.f.write(bytes(shards.HEADER_BYTES))
        self.count, self.split = 0, split
        return self.f

    def add(self, tokens: Any, unit: int, base: int, split_hint: str | None, remaining: int | None) -> int:
        """Write tokens (unit `unit`, starting at offset `base` in its output); returns tokens taken."""
        if split_hint is not None and self.f is not None and self.split != split_hint and self.count:
            self.commit(unit, base)
        taken = 0
        n = len(tokens) if remaining is None else min(len(tokens), remaining)
        while taken < n:
            f = self.f if self.f is not None else self._open(self._target(split_hint)[0])
            target = self._target(split_hint)[1]
            take = min(target - self.count, n - taken)
            f.write(tokens[taken : taken + take].tobytes())
            self.count += take
            taken += take
            if self.count == target:
                at_end = taken == len(tokens)
                self.commit(unit + 1 if at_end else unit, 0 if at_end else base + taken)
        return taken

    def commit(self, next_unit: int, next_offset: int) -> None:
        assert self.f is not None, "commit without an open shard"
        self.f.seek(0)
        self.f.write(shards.make_header(self.count))
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()
        self.f = None
        k = len(self.state["shards"])
        name = f"{self.split}_{k:06d}.bin"
        tmp = self.pdir / CURRENT
        digest = sha256_file(tmp)
        docs = _count_eot(tmp, self.count, self.eot)
        os.replace(tmp, self.pdir / name)
        fsync_dir(self.pdir)
        self.state["shards"].append(
            {"filename": name, "split": self.split, "tokens": self.count, "documents": docs, "sha256": digest}
        )
        self.state["next_unit"], self.state["skip"] = next_unit, next_offset
        self.state["replaced_at_commit"] = self.state["replaced"]
        if self.save_state:
            write_json_atomic(self.pdir / STATE, self.state, indent=1)
        self.count = 0

    def finish(self, spec: str, splits_given: bool) -> None:
        """Commit the last, partial shard. A source smaller than --val-tokens gives a tenth of its tokens
        to validation, as pieces drawn across it by a seeded rule (val_pieces); state["validation"]
        says which rule made the validation shard.

        `splits_given`: the source names its own validation split, which is kept as it is.
        """
        import numpy as np

        state = self.state
        if splits_given:
            state["validation"] = {"rule": "the source's own validation split"}
        elif state["shards"] or self.split != "val":
            state["validation"] = {"rule": "first", "tokens": self.val_tokens}
        if self.f is None:
            if not state["shards"]:
                raise GptkitError(f"{spec}: empty source: no text found")
            return
        if state["shards"] or self.split != "val" or splits_given:
            self.commit(state["next_unit"], state["skip"])  # the position is only used if a later run resumes
            return
        # Everything fit into what was to be the validation shard: a tenth of it for validation.
        n = self.count
        self.f.close()
        self.f = None
        if n < 2:
            raise GptkitError(f"{spec}: empty source: {n} token(s) of text")
        staged = self.pdir / ".all.bin.tmp"
        os.replace(self.pdir / CURRENT, staged)
        toks = np.memmap(staged, dtype="<u2", mode="r", offset=shards.HEADER_BYTES, shape=(n,))
        val, piece = val_pieces(toks, self.eot)
        self.val_tokens = sum(b - a for a, b in val)
        state["validation"] = {
            "rule": "seeded pieces",
            "seed": VAL_SEED,
            "share": VAL_SHARE,
            "piece_tokens": piece,
            "pieces": len(val),
            "ranges": merge_ranges(val),
        }
        # No resume point inside this split: if killed here, the saved state still says "nothing done"
        # and the re-run redoes this (small) source from the start.
        self.save_state = False
        for a, b in [*val, *complement(val, n)]:  # the validation shard first, then training, each in order
            for i in range(a, b, READ_TOKENS):
                self.add(np.asarray(toks[i : min(b, i + READ_TOKENS)]), 0, 0, None, None)
        if self.f is not None:
            self.commit(0, 0)
        del toks
        staged.unlink()


# A source smaller than --val-tokens: VAL_SHARE of its tokens validate, drawn by VAL_SEED. Pieces are
# documents, a long one cut every PIECE_TOKENS (finer for a small source, so there are always ~100 of
# them): validation is text from across the source, not its first tenth (one kind of text).
VAL_SEED = 0
VAL_SHARE = 0.1
PIECE_TOKENS = 4096
MIN_PIECES = 100


def val_pieces(toks: Any, eot: int | None) -> tuple[list[tuple[int, int]], int]:
    """The validation pieces of a small source's tokens, as sorted (start, end) ranges summing to
    max(1, n // 10); the last drawn piece is cut to make the count exact. Depends only on the tokens
    (not on the worker count). Also returns the piece length used for long documents."""
    import numpy as np

    n = len(toks)
    piece = max(1, min(PIECE_TOKENS, n // MIN_PIECES))
    starts = [0]
    if eot is not None:
        for i in range(0, n, READ_TOKENS):  # each document starts with its end-of-text token
            starts += (np.flatnonzero(np.asarray(toks[i : i + READ_TOKENS]) == eot) + i).tolist()
    bounds = sorted(set(starts) | {n})
    pieces = [(a, min(a + piece, hi)) for lo, hi in itertools.pairwise(bounds) for a in range(lo, hi, piece)]
    want = max(1, int(n * VAL_SHARE))
    chosen: list[tuple[int, int]] = []
    for k in np.random.default_rng(VAL_SEED).permutation(len(pieces)).tolist():
        if want <= 0:
            break
        a, b = pieces[k]
        chosen.append((a, min(b, a + want)))
        want -= chosen[-1][1] - a
    return sorted(chosen), piece


def merge_ranges(ranges: list[tuple[int, int]]) -> list[list[int]]:
    """Sorted ranges with the touching ones joined: the manifest's record of where validation came from."""
    out: list[list[int]] = []
    for a, b in ranges:
        if out and out[-1][1] == a:
            out[-1][1] = b
        else:
            out.append([a, b])
    return out


def complement(ranges: list[tuple[int, int]], n: int) -> list[tuple[int, int]]:
    """The parts of [0, n) outside sorted, disjoint ranges."""
    out, at = [], 0
    for a, b in ranges:
        if a > at:
            out.append((at, a))
        at = b
    if at < n:
        out.append((at, n))
    return out


def describe_validation(v: dict | None) -> str:
    """One line for tokenize's output: how the validation shard was drawn."""
    if not v:
        return "validation: unrecorded"
    if v["rule"] == "seeded pieces":
        return (
            f"validation: {v['share']:.0%} of the tokens, {v['pieces']:,} pieces (documents, or cuts of "
            f"{v['piece_tokens']:,} tokens) drawn across the source with seed {v['seed']}"
        )
    if v["rule"] == "first":
        return f"validation: the first {v['tokens']:,} tokens (--val-tokens; the source is larger)"
    return f"validation: {v['rule']}"


def _count_eot(path: Path, n: int, eot: int | None) -> int:
    """End-of-text tokens in a shard: its documents (starts of); 0 for a vocabulary without one."""
    import numpy as np

    if eot is None:
        return 0
    toks = np.memmap(path, dtype="<u2", mode="r", offset=shards.HEADER_BYTES, shape=(n,)) if n else np.zeros(0, "<u2")
    return sum(int(np.count_nonzero(toks[i : i + READ_TOKENS] == eot)) for i in range(0, n, READ_TOKENS))


@dataclass
class Start:
    """Where a run starts, after looking at what an earlier run left in OUT."""

    state: dict  # the resume state (fresh: nothing done)
    created_out: bool = False
    done: dict | None = None  # the manifest, when there is nothing left to do
    status: str = ""  # with `done`: "up to date", or "resumed" (an interrupted install was finished)


def start(out: Path, fingerprint: str, force: bool, log: Callable[[str], None]) -> Start:
    """Decide what to do with what is already in OUT, before writing anything, and prepare .partial."""
    pdir = out / PARTIAL_DIR
    if (out / MANIFEST).is_file() and not force:
        old = _read_json(out / MANIFEST) or {}
        if old.get("version") != shards.MANIFEST_VERSION and old.get("format") == shards.MANIFEST_FORMAT:
            raise GptkitError(
                f"{out} holds shards of an older gptkit (manifest version {old.get('version')}, still readable); "
                "give --out DIR, or --force to tokenize again"
            )
        if old.get("fingerprint") != fingerprint:
            raise GptkitError(
                f"{out} already holds shards of another source or other settings; give --out DIR, or --force to replace them"
            )
        if pdir.is_dir() and not (pdir / STATE).is_file() and not (pdir / MANIFEST).is_file():
            shutil.rmtree(pdir)  # left over from a run killed just after it finished
        if not pdir.exists():
            log(f"{out} is already tokenized from this source with these settings")
            return Start({}, done=shards.read_manifest(out), status="up to date")
    state = None
    if pdir.is_dir():
        old_state = _read_json(pdir / STATE) or _read_json(pdir / MANIFEST)
        if old_state is not None and old_state.get("fingerprint") == fingerprint:
            if (pdir / MANIFEST).is_file():  # killed while moving the finished shards into place
                return Start({}, done=install(pdir, out), status="resumed")
            state = old_state
            log(f"resuming: {len(state['shards'])} shard(s) already done in {pdir}")
        elif old_state is not None and old_state.get("shards") and not force and "version" not in old_state:
            raise GptkitError(
                f"{pdir} holds an interrupted run of an older gptkit, which this version cannot finish; "
                "add --force to discard it and start again"
            )
        elif old_state is not None and old_state.get("shards") and not force:
            raise GptkitError(
                f"{pdir} holds an interrupted run with another source or other settings; "
                "re-run that command to finish it, or add --force to discard it"
            )
        if state is None:
            shutil.rmtree(pdir)
    if state is None:
        state = {
            "version": shards.MANIFEST_VERSION,
            "fingerprint": fingerprint,
            "shards": [],
            "next_unit": 0,
            "skip": 0,
            "replaced": 0,
            "replaced_at_commit": 0,
        }
    else:
        state["replaced"] = state["replaced_at_commit"]
    created_out = not out.exists()
    make_dirs(pdir)
    for stale in pdir.glob(".*.tmp*"):  # tokens after the last commit are redone
        stale.unlink()
    return Start(state, created_out)


def abandon(writer: ShardWriter, out: Path, created_out: bool) -> None:
    """After a failed run: keep what is worth resuming, else leave no trace."""
    if writer.f is not None:
        writer.f.close()
    for tmp in writer.pdir.glob(".*.tmp"):  # the shard being written: its tokens are redone on resume
        tmp.unlink(missing_ok=True)
    if not writer.state["shards"]:
        shutil.rmtree(writer.pdir, ignore_errors=True)
        if created_out:
            with contextlib.suppress(OSError):
                out.rmdir()


def complete(pdir: Path, out: Path, manifest: dict) -> dict:
    """Write the manifest, drop the resume state and install the shards; returns the manifest."""
    write_json_atomic(pdir / MANIFEST, manifest, indent=1)
    with contextlib.suppress(FileNotFoundError):
        (pdir / STATE).unlink()
    return install(pdir, out)


def install(pdir: Path, out: Path) -> dict:
    """Move finished shards from .partial into OUT; the manifest goes last. Safe to redo after a crash."""
    m = json.loads((pdir / MANIFEST).read_text(encoding="utf-8"))
    new = {x["filename"] for x in m["shards"]}
    old_manifest = _read_json(out / MANIFEST)
    if old_manifest is not None:
        os.replace(out / MANIFEST, pdir / "previous-manifest.json")
    old_manifest = old_manifest or _read_json(pdir / "previous-manifest.json")
    for x in (old_manifest or {}).get("shards", []):
        if x["filename"] not in new:
            with contextlib.suppress(FileNotFoundError):
                (out / x["filename"]).unlink()
    for name in sorted(new):
        if (pdir / name).is_file():
            os.replace(pdir / name, out / name)
    if (pdir / SAVED_DIR).is_dir():  # the tokenizer the shards were made with
        shutil.rmtree(out / SAVED_DIR, ignore_errors=True)
        os.replace(pdir / SAVED_DIR, out / SAVED_DIR)
    fsync_dir(out)
    os.replace(pdir / MANIFEST, out / MANIFEST)
    fsync_dir(out)
    shutil.rmtree(pdir, ignore_errors=True)
    return m


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
