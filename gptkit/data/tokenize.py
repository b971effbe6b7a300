"""Text sources -> uint16 token shards (llm.c format) + manifest.json, and the reader side for train.

Layout of a tokenized dataset (default: gptkit.paths.shards_dir(NAME)):

    manifest.json          written last: its presence means the shards are complete
    val_000000.bin         shard 0 is validation (the first --val-tokens tokens)
    train_000001.bin ...   training shards, --shard-tokens tokens each (the last may be shorter)
    .partial/              only while a run is in progress or was interrupted (resume state)

The token stream is every document, in source order, each preceded by the end-of-text token,
cut into shards at fixed token counts (a document may continue in the next shard). The work is
split into units (a parquet row group, a byte range of a jsonl/txt file, a batch of streamed
rows); worker processes encode units in parallel and the main process writes their tokens in
unit order, so the output does not depend on the number of workers. After each finished shard
the resume point (unit, token offset inside it) is saved; a re-run after any crash rebuilds
exactly the same bytes from there.

`find_shards(name_or_dir)` is what `gptkit train` calls to locate them.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import re
import shutil
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from gptkit import paths
from gptkit.errors import GptkitError
from gptkit.fsutil import fsync_dir, write_json_atomic
from gptkit.hub.errors import explain

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "gptkit.shards"
MANIFEST_VERSION = 1
PARTIAL_DIR = ".partial"
STATE = "state.json"
CURRENT = ".current.bin.tmp"

DATASET_PRESETS = ("fineweb-edu", "fineweb")  # `gptkit download` presets that hold text
BUILTIN_CORPORA = ("pydoc",)
TEXT_KINDS = ("parquet", "jsonl", "jsonl.gz", "txt")
DEFAULT_SHARD_TOKENS = 100_000_000
DEFAULT_VAL_TOKENS = 10_000_000
# Text per work unit: large enough that per-unit overhead vanishes, small enough that the
# in-flight units (a few per worker) keep memory far below 1 GB. Tests shrink it through the
# environment to get many units from tiny inputs.
UNIT_BYTES = int(os.environ.get("GPTKIT_TOKENIZE_UNIT_BYTES", 8 << 20))
READ_TOKENS = 1 << 22  # tokens per read when converting or verifying existing token files


# --------------------------------------------------------------------------- finding shards


def resolve_shards_dir(name_or_dir: str | Path | None) -> Path:
    """A directory, a dataset name (-> paths.shards_dir(name)), or None (-> the newest tokenized dataset)."""
    if name_or_dir is None:
        root = paths.shards_dir()
        done = sorted(root.glob(f"*/{MANIFEST}"), key=lambda p: p.stat().st_mtime) if root.is_dir() else []
        if not done:
            raise GptkitError(f"no tokenized data in {root}; run `gptkit tokenize` first")
        return done[-1].parent
    p = Path(name_or_dir).expanduser()
    if p.is_dir():
        return p
    if isinstance(name_or_dir, str) and not any(s in name_or_dir for s in ("./", "~")) and not p.is_absolute():
        d = paths.shards_dir(name_or_dir)
        if d.is_dir():
            return d
        raise GptkitError(
            f"no tokenized dataset named {name_or_dir!r} (looked in {d}); run `gptkit tokenize {name_or_dir}`"
        )
    raise GptkitError(f"{p}: no such directory")


def read_manifest(d: Path) -> dict:
    f = d / MANIFEST
    if not f.is_file():
        if (d / PARTIAL_DIR).is_dir():
            raise GptkitError(
                f"{d}: tokenization was interrupted; re-run the same `gptkit tokenize` command to resume it"
            )
        if any(d.glob("*.bin")) or any(d.glob("*.npy")):
            raise GptkitError(f"{d}: token files without a {MANIFEST}; run `gptkit tokenize {d}` to convert them")
        raise GptkitError(f"{d}: no {MANIFEST} here; run `gptkit tokenize SRC --out {d}` first")
    try:
        m = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise GptkitError(f"{f}: unreadable manifest ({e})") from None
    if m.get("format") != MANIFEST_FORMAT or m.get("version") != MANIFEST_VERSION:
        raise GptkitError(f"{f}: not a gptkit shard manifest (format {m.get('format')!r} version {m.get('version')!r})")
    return m


def find_shards(name_or_dir: str | Path | None) -> tuple[list[Path], list[Path], dict]:
    """(validation shard paths, training shard paths, manifest) of a tokenized dataset.

    Checks that every listed shard exists and that its header agrees with the manifest (cheap:
    one 1 KB read per shard); `verify()` also checks hashes and the token range.
    """
    d = resolve_shards_dir(name_or_dir)
    m = read_manifest(d)
    val, train = [], []
    for s in m["shards"]:
        p, _ = _listed_shard(d, s)
        (val if s["split"] == "val" else train).append(p)
    if not train:
        raise GptkitError(f"{d}: no training shards")
    return val, train, m


def _listed_shard(d: Path, entry: dict) -> tuple[Path, int]:
    """A shard the manifest lists: present, with a valid header whose count matches the manifest."""
    from gptkit.data import shards

    p = d / entry["filename"]
    if not p.is_file():
        raise GptkitError(f"{p}: shard listed in {MANIFEST} is missing; re-run `gptkit tokenize` with --force")
    n = shards.read_header(p)
    if n != entry["tokens"]:
        raise GptkitError(f"{p}: header says {n} tokens but {MANIFEST} says {entry['tokens']}")
    return p, n


def verify(name_or_dir: str | Path) -> dict:
    """Check every shard against the manifest: header, token count, sha256, token range, documents.

    Returns a summary; raises GptkitError (one line) on the first problem.
    """
    import numpy as np

    from gptkit.data import shards

    d = resolve_shards_dir(name_or_dir)
    m = read_manifest(d)
    vocab, eot = m["tokenizer"]["vocab_size"], m["tokenizer"]["eot"]
    total = 0
    for s in m["shards"]:
        p, n = _listed_shard(d, s)
        digest = _sha256(p)
        if digest != s["sha256"]:
            raise GptkitError(
                f"{p}: sha256 {digest[:12]}… does not match {MANIFEST} ({s['sha256'][:12]}…); the file is corrupt"
            )
        toks = shards.open_shard(p)
        docs = 0
        for i in range(0, n, READ_TOKENS):
            chunk = np.asarray(toks[i : i + READ_TOKENS])
            if chunk.size and int(chunk.max()) >= vocab:
                raise GptkitError(f"{p}: token id {int(chunk.max())} is outside the vocabulary (size {vocab})")
            docs += int(np.count_nonzero(chunk == eot))
        if docs != s["documents"]:
            raise GptkitError(f"{p}: {docs} documents (end-of-text tokens) but {MANIFEST} says {s['documents']}")
        total += n
    return {"dir": str(d), "shards": len(m["shards"]), "tokens": total, "tokenizer": m["tokenizer"]["name"]}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------- sources


@dataclass
class Source:
    """What to tokenize, resolved from the user's SRC before anything is written."""

    spec: str  # as given (or chosen by default)
    kind: str  # "files" (text files), "tokens" (existing token files), "huggingface", "builtin"
    name: str  # default output: paths.shards_dir(name)
    root: Path | None = None
    files: list[Path] = field(default_factory=list)
    file_kinds: list[str] = field(default_factory=list)
    info: dict = field(default_factory=dict)  # manifest["source"]
    total_bytes: int = 0
    parquet_units: dict = field(default_factory=dict)  # file index -> [(row_group, lo, hi, bytes)]
    hf: dict = field(default_factory=dict)

    def identity(self) -> dict:
        """What the output depends on; a resumed or repeated run must see the same."""
        # Not where it is or how it was named or fetched: the same files or revision are the same source.
        ident = {k: v for k, v in self.info.items() if k not in ("spec", "root", "endpoint", "description")}
        if self.files:
            ident["stat"] = [[f.stat().st_size, f.stat().st_mtime_ns] for f in self.files]
        return ident


def _file_kind(p: Path) -> str | None:
    n = p.name.lower()
    if n.endswith(".jsonl.gz"):
        return "jsonl.gz"
    return {".parquet": "parquet", ".jsonl": "jsonl", ".txt": "txt", ".npy": "npy", ".bin": "bin"}.get(p.suffix.lower())


def _is_token_bin(p: Path) -> bool:
    """An llm.c shard (magic header) or a nanoGPT train.bin/val.bin (raw uint16)."""
    from gptkit.data import shards

    if p.stem.lower() in ("train", "val"):
        return True
    try:
        with open(p, "rb") as f:
            return int.from_bytes(f.read(4), "little") == shards.MAGIC
    except OSError:
        return False


def _scan(root: Path) -> tuple[list[Path], list[Path]]:
    """(text files, token files) under root, recursively, sorted; hidden folders are skipped."""
    text, tokens = [], []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or not p.is_file():
            continue
        k = _file_kind(p)
        if k in TEXT_KINDS:
            text.append(p)
        elif k == "npy" or (k == "bin" and _is_token_bin(p)):
            tokens.append(p)
    return text, tokens


def default_source() -> str:
    """No SRC: the most recently downloaded text preset, else the built-in corpus."""
    found = []
    for name in DATASET_PRESETS:
        d = paths.data_dir(name)
        if d.is_dir() and _scan(d)[0]:
            found.append((d.stat().st_mtime, name))
    return max(found)[1] if found else BUILTIN_CORPORA[0]


_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def resolve_source(
    src: str | None,
    text_column: str = "text",
    *,
    subset: str | None = None,
    split: str = "train",
    revision: str | None = None,
    endpoint: str | None = None,
    log: Callable[[str], None] | None = None,
) -> Source:
    log = log or (lambda msg: None)
    if src is None:
        src = default_source()
        log(f"no SRC given: tokenizing {src!r}")
    if src in BUILTIN_CORPORA:
        return _builtin_source(src)
    if src in DATASET_PRESETS:
        d = paths.data_dir(src)
        if not (d.is_dir() and _scan(d)[0]):
            raise GptkitError(f"{src} is not downloaded yet ({d} has no data files); run `gptkit download {src}` first")
        return _path_source(d, src, src, text_column, log)
    p = Path(src).expanduser()
    if p.exists():
        return _path_source(p, src, None, text_column, log)
    if _REPO_ID.fullmatch(src) and _file_kind(p) is None:
        d = paths.data_dir(src)
        if d.is_dir() and _scan(d)[0] and revision is None:
            log(f"using the downloaded copy of {src} in {d}")
            return _path_source(d, src, paths.safe_name(src), text_column, log)
        return _hf_source(src, text_column, subset, split, revision, endpoint)
    raise GptkitError(f"{src}: no such file or directory")


def _builtin_source(name: str) -> Source:
    import pydoc_data.topics

    text_hash = hashlib.sha256(json.dumps(pydoc_data.topics.topics, sort_keys=True).encode()).hexdigest()
    info = {
        "type": "builtin",
        "spec": name,
        "description": "Python's own documentation topics (pydoc_data.topics), one document per topic",
        "revision": f"python {sys.version.split()[0]}",
        "sha256": text_hash,
    }
    total = sum(len(v.encode()) for v in pydoc_data.topics.topics.values())
    return Source(spec=name, kind="builtin", name=name, info=info, total_bytes=total)


def _path_source(p: Path, spec: str, name: str | None, text_column: str, log: Callable[[str], None]) -> Source:
    p = p.resolve()
    if p.is_dir():
        text, tokens = _scan(p)
        root = p
        if text and tokens:
            raise GptkitError(f"{p} holds both text files and token files (.npy/.bin); point at one kind")
        if not text and not tokens:
            raise GptkitError(
                f"{p}: empty source: no .parquet, .jsonl, .jsonl.gz or .txt files (or .npy/.bin token files)"
            )
    else:
        root = p.parent
        k = _file_kind(p)
        if k in TEXT_KINDS:
            text, tokens = [p], []
        elif k == "npy" or (k == "bin" and _is_token_bin(p)):
            text, tokens = [], [p]
            if k == "bin" and p.stem.lower() in ("train", "val"):  # nanoGPT: take its sibling too
                tokens = sorted(f for f in p.parent.glob("*.bin") if f.stem.lower() in ("train", "val"))
        else:
            raise GptkitError(
                f"{p}: unsupported file type (expected .parquet, .jsonl, .jsonl.gz, .txt, .npy, or an llm.c/nanoGPT .bin)"
            )
    name = name or (p.name if p.is_dir() else (p.stem if text else p.parent.name))
    files = text or _order_token_files(tokens)
    info = {
        "type": "files" if text else "tokens",
        "spec": spec,
        "root": str(root),
        "files": [{"path": str(f.relative_to(root)), "bytes": f.stat().st_size} for f in files],
    }
    if text:
        info["text_column"] = text_column
    info.update(_download_record(root, log))
    src = Source(spec=spec, kind="files" if text else "tokens", name=name, root=root, files=files, info=info)
    src.file_kinds = [_file_kind(f) for f in files]
    if text:
        _plan_parquet(src, text_column)
        src.total_bytes = sum(
            sum(u[3] for u in src.parquet_units[i]) if k == "parquet" else f.stat().st_size
            for i, (f, k) in enumerate(zip(files, src.file_kinds))
        )
    else:
        src.total_bytes = sum(f.stat().st_size for f in files)
    return src


def _download_record(root: Path, log: Callable[[str], None]) -> dict:
    """Repo and revision from the `gptkit download` manifest of the folder, if there is one."""
    from gptkit.hub.manifest import read_manifest

    rec = read_manifest(root)
    if rec is None:
        return {}
    if not rec.get("complete", True):
        log(f"note: the download in {root} is not complete; tokenizing the files that are there")
    return {
        k: rec[k] for k in ("repo_id", "repo_type", "revision", "commit", "endpoint") if isinstance(rec.get(k), str)
    }


def _order_token_files(files: list[Path]) -> list[Path]:
    """Validation files first (shard 0 onward), then training files, each group sorted."""
    return sorted(files, key=lambda f: (_token_split(f) != "val", str(f)))


def _token_split(f: Path) -> str:
    return "val" if re.search(r"(^|[_\-.])val", f.stem.lower()) else "train"


def _plan_parquet(src: Source, text_column: str) -> None:
    """Read every parquet footer: check the text column and cut row groups into work units."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for i, (f, k) in enumerate(zip(src.files, src.file_kinds)):
        if k != "parquet":
            continue
        try:
            pf = pq.ParquetFile(f)
        except (pa.ArrowException, OSError) as e:
            raise GptkitError(f"{f}: not a readable parquet file ({str(e).splitlines()[0]})") from None
        schema = pf.schema_arrow
        if text_column not in schema.names:
            cols = ", ".join(schema.names[:8]) + (", ..." if len(schema.names) > 8 else "")
            raise GptkitError(f"{f}: no column {text_column!r} (columns: {cols}); choose one with --text-column")
        typ = schema.field(text_column).type
        if not (pa.types.is_string(typ) or pa.types.is_large_string(typ) or str(typ) == "string_view"):
            raise GptkitError(f"{f}: column {text_column!r} holds {typ}, not text; choose another with --text-column")
        col = next(j for j in range(pf.metadata.num_columns) if pf.metadata.schema.column(j).path == text_column)
        units = []
        for rg in range(pf.metadata.num_row_groups):
            meta = pf.metadata.row_group(rg)
            rows, size = meta.num_rows, meta.column(col).total_uncompressed_size
            k_units = max(1, -(-size // UNIT_BYTES))
            cuts = [rows * j // k_units for j in range(k_units + 1)]
            units += [(rg, lo, hi, size * (hi - lo) // max(rows, 1)) for lo, hi in zip(cuts, cuts[1:]) if hi > lo]
        src.parquet_units[i] = units


def _hf_source(repo_id, text_column, subset, split, revision, endpoint) -> Source:
    from huggingface_hub import HfApi

    from gptkit.hub.endpoint import resolve_endpoint

    endpoint = resolve_endpoint(endpoint)
    if os.environ.get("GPTKIT_OFFLINE") == "1":
        raise GptkitError(
            f"{repo_id} is not a local file or folder, and GPTKIT_OFFLINE=1 forbids streaming it from {endpoint}"
        )
    try:
        info = HfApi(endpoint=endpoint).dataset_info(repo_id, revision=revision, timeout=30)
    except Exception as e:  # noqa: BLE001 - connection and HTTP errors come in many types
        raise explain(e, f"dataset {repo_id}", endpoint, revision) from None
    rec = {
        "type": "huggingface",
        "spec": repo_id,
        "repo_id": repo_id,
        "revision": info.sha,
        "subset": subset,
        "split": split,
        "text_column": text_column,
        "endpoint": endpoint,
    }
    name = paths.safe_name(repo_id + (f"-{subset}" if subset else ""))
    return Source(spec=repo_id, kind="huggingface", name=name, info=rec, hf=rec)


# --------------------------------------------------------------------------- work units
#
# A unit is a small picklable tuple; workers turn it into tokens. Kinds:
#   ("parquet", file, row_group, lo, hi)     rows [lo, hi) of one row group
#   ("jsonl", file, k) / ("txt", file, k)    the k-th byte range of a file (see _unit_range)
#   ("jsonl-data", file, offset, bytes)      lines read by the main process (gzip cannot seek)
#   ("texts", list_of_str)                   documents read by the main process (streaming, builtin)
#   ("tokens", file, lo, hi, split)          existing token ids, copied by the main process


def _units(src: Source, start: int, unit_bytes: int) -> Iterator[tuple[int, tuple, int]]:
    """(index, unit, source bytes) for every unit from `start` on, in a fixed order."""
    index = 0

    def emit(unit, nbytes):
        nonlocal index
        index += 1
        return index - 1, unit, nbytes

    if src.kind == "builtin":
        import pydoc_data.topics

        docs = [pydoc_data.topics.topics[k] for k in sorted(pydoc_data.topics.topics)]
        for batch in _batched_texts(iter(docs), unit_bytes):
            yield emit(("texts", batch), sum(len(t.encode()) for t in batch))
        return
    if src.kind == "huggingface":
        for batch in _hf_batches(src, unit_bytes, skip_units=start):
            yield emit(("texts", batch) if batch is not None else None, 0)
        return
    if src.kind == "tokens":
        for i, f in enumerate(src.files):
            n = _token_file(f)[1]
            split = _token_split(f) if any(_token_split(g) == "val" for g in src.files) else None
            for lo in range(0, n, READ_TOKENS):
                yield emit(("tokens", i, lo, min(n, lo + READ_TOKENS), split), 2 * (min(n, lo + READ_TOKENS) - lo))
        return
    for i, (f, k) in enumerate(zip(src.files, src.file_kinds)):
        if k == "parquet":
            for rg, lo, hi, nbytes in src.parquet_units[i]:
                yield emit(("parquet", i, rg, lo, hi), nbytes)
        elif k in ("jsonl", "txt"):
            size = f.stat().st_size
            for j in range(-(-size // unit_bytes)):
                yield emit((k, i, j), min(unit_bytes, size - j * unit_bytes))
        else:  # jsonl.gz: decompress here, ship lines; units before `start` are only skipped
            with gzip.open(f, "rb") as fh:
                offset, buf, size = 0, [], 0
                for line in fh:
                    buf.append(line)
                    size += len(line)
                    if size >= unit_bytes:
                        yield emit(("jsonl-data", i, offset, b"".join(buf) if index >= start else b""), size)
                        offset, buf, size = offset + size, [], 0
                if buf:
                    yield emit(("jsonl-data", i, offset, b"".join(buf) if index >= start else b""), size)


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


def _hf_batches(src: Source, unit_bytes: int, skip_units: int) -> Iterator[list[str] | None]:
    """Stream the dataset through the chosen endpoint; units before skip_units yield None (not encoded)."""
    import datasets
    from datasets import DownloadConfig

    from gptkit.hub.endpoint import use_endpoint  # points datasets/huggingface_hub at it, whatever the import order

    hf = src.hf
    col = hf["text_column"]
    with use_endpoint(hf["endpoint"]):
        try:
            ds = datasets.load_dataset(
                hf["repo_id"],
                name=hf["subset"],
                split=hf["split"],
                revision=hf["revision"],
                streaming=True,
                download_config=DownloadConfig(storage_options={"hf": {"endpoint": hf["endpoint"]}}),
            )
            names = list(ds.features) if ds.features is not None else None
            if names is not None and col not in names:
                raise GptkitError(
                    f"dataset {hf['repo_id']} has no column {col!r} (columns: {', '.join(names[:8])}); use --text-column"
                )
            if names is not None:
                ds = ds.select_columns([col])
            it = iter(ds)
            n = 0
            batch, size = [], 0
            for row in it:
                if col not in row:
                    raise GptkitError(f"dataset {hf['repo_id']} has no column {col!r}; use --text-column")
                t = row[col]
                if t is not None and not isinstance(t, str):
                    raise GptkitError(f"dataset {hf['repo_id']}: column {col!r} holds {type(t).__name__}, not text")
                batch.append(t)
                size += len(t or "")
                if size >= unit_bytes:
                    yield batch if n >= skip_units else None
                    n += 1
                    batch, size = [], 0
            if batch:
                yield batch if n >= skip_units else None
        except GptkitError:
            raise
        except ValueError as e:  # e.g. an unknown split or subset: datasets lists the valid ones
            raise GptkitError(f"dataset {hf['repo_id']}: {str(e).splitlines()[0]}") from None
        except Exception as e:  # noqa: BLE001 - connection errors while streaming
            if e.__class__.__module__.startswith(
                ("huggingface_hub", "httpx", "requests", "fsspec", "aiohttp")
            ) or isinstance(e, OSError):
                raise explain(e, f"dataset {hf['repo_id']}", hf["endpoint"], hf["revision"]) from None
            raise


def _token_file(f: Path):
    """(read-only array, length) of an existing token file: .npy, llm.c shard, or raw uint16 .bin."""
    import numpy as np

    from gptkit.data import shards

    if f.suffix.lower() == ".npy":
        try:
            arr = np.load(f, mmap_mode="r", allow_pickle=False)  # never unpickle
        except (ValueError, OSError) as e:
            raise GptkitError(f"{f}: not a readable .npy token file ({e})") from None
        if arr.ndim != 1 or arr.dtype.kind not in "iu":
            raise GptkitError(f"{f}: expected a 1-D integer array of token ids, got {arr.dtype} {arr.shape}")
        return arr, len(arr)
    with open(f, "rb") as fh:
        magic = int.from_bytes(fh.read(4), "little")
    if magic == shards.MAGIC:
        arr = shards.open_shard(f)
        return arr, len(arr)
    size = f.stat().st_size
    if size % 2:
        raise GptkitError(f"{f}: odd size ({size} bytes); not a uint16 token file")
    arr = np.memmap(f, dtype="<u2", mode="r") if size else np.zeros(0, "<u2")
    return arr, len(arr)


# --------------------------------------------------------------------------- workers

_W: dict = {}  # per-process worker context, set by _init_worker


def _init_worker(
    tok_name: str,
    vocab_hash: str,
    files: list[str],
    kinds: list[str],
    text_column: str,
    strict: bool,
    unit_bytes: int,
    watch: bool,
):
    import signal
    import threading

    import numpy as np

    from gptkit.data.tokenizers import get_tokenizer

    # Never raise here: a Pool restarts workers whose initializer fails, forever. _work reports it.
    try:
        tok = get_tokenizer(tok_name)
        error = None if tok.vocab_hash == vocab_hash else f"a worker resolved a different {tok_name} vocabulary"
    except GptkitError as e:
        tok, error = None, str(e)
    _W.update(
        error=error,
        tok=tok,
        eot=np.array([tok.eot_token if tok else 0], dtype=np.uint32),
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

        def orphan_watch():  # the main process was killed (kill -9): do not linger
            while True:
                time.sleep(0.5)
                if os.getppid() != ppid:
                    os._exit(1)

        threading.Thread(target=orphan_watch, daemon=True).start()


def _work(unit: tuple):
    """Encode one unit: (uint16 tokens, invalid-UTF-8 replacements, source bytes)."""
    if _W["error"]:
        raise GptkitError(_W["error"])
    kind = unit[0]
    if kind == "parquet":
        _, i, rg, lo, hi = unit
        return _encode_docs(_parquet_rows(i, rg, lo, hi), 0)
    if kind == "texts":
        return _encode_docs(unit[1], 0)
    if kind == "jsonl-data":
        _, i, offset, data = unit
        return _encode_jsonl(data, i, offset)
    _, i, k = unit
    start, data = _unit_range(i, k, kind == "txt")
    if kind == "jsonl":
        return _encode_jsonl(data, i, start)
    text, bad = _decode(data, i, start)
    return _encode_pieces([text], first_is_doc=(start == 0), replaced=bad, nbytes=len(data))


def _encode_docs(texts, replaced: int, nbytes: int | None = None):
    return _encode_pieces([t for t in texts if t], True, replaced, nbytes)


def _encode_pieces(texts: list[str], first_is_doc: bool, replaced: int, nbytes: int | None):
    """Concatenate [EOT] + tokens for each document (a txt piece that continues a file gets no EOT)."""
    import numpy as np

    tok, eot = _W["tok"], _W["eot"]
    parts = []
    for j, t in enumerate(texts):
        if j > 0 or first_is_doc:
            parts.append(eot)
        if t:
            parts.append(tok.encode_array(t))
    tokens = np.concatenate(parts).astype("<u2") if parts else np.zeros(0, "<u2")
    if nbytes is None:
        nbytes = sum(len(t) for t in texts)
    return tokens, replaced, nbytes


def _parquet_rows(i: int, rg: int, lo: int, hi: int) -> list:
    import pyarrow.parquet as pq

    path = _W["files"][i]
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


def _encode_jsonl(data: bytes, i: int, offset: int):
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
    return _encode_docs(docs, bad, len(data))


# Where a plain-text file may be cut into pieces that encode exactly like the whole: after a
# newline between two visible ASCII characters, or before a space between two ASCII letters.
# GPT-2's pre-tokenizer never joins text across either point (no pattern spans a visible
# character and a newline, and " word" starts a new piece), so tokens do not depend on the cut.
_TXT_CUT = re.compile(rb"[!-~]\n(?=[!-~])|[A-Za-z](?= [A-Za-z])")
_LINE_CUT = re.compile(rb"\n")


def _cut_point(f, lo: int, hi: int, size: int, plain: bool) -> int | None:
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


# --------------------------------------------------------------------------- the run


@dataclass
class Settings:
    tokenizer: str = "gpt2"
    text_column: str = "text"
    shard_tokens: int = DEFAULT_SHARD_TOKENS
    val_tokens: int = DEFAULT_VAL_TOKENS
    max_tokens: int | None = None
    strict: bool = False


@dataclass
class Result:
    out: Path
    manifest: dict
    status: str  # "done", "resumed", "up to date"
    seconds: float = 0.0
    source_bytes: int = 0


class _ShardWriter:
    """Appends the token stream to the current shard on disk and commits full shards.

    Memory stays constant: tokens go straight to a temporary file, which gets its header,
    fsync and final name when full. The state saved after each commit is the exact resume point.
    """

    def __init__(self, pdir: Path, settings: Settings, eot: int, state: dict):
        self.pdir, self.s, self.eot, self.state = pdir, settings, eot, state
        self.f = None
        self.count = 0  # tokens in the current shard
        self.split = None
        self.save_state = True

    def _target(self, split_hint: str | None) -> tuple[str, int]:
        k = len(self.state["shards"])
        if split_hint is not None:
            return split_hint, self.s.shard_tokens
        return ("val", self.s.val_tokens) if k == 0 else ("train", self.s.shard_tokens)

    def _open(self, split: str):
        from gptkit.data import shards

        self.f = open(self.pdir / CURRENT, "wb")
        self.f.write(bytes(shards.HEADER_BYTES))
        self.count, self.split = 0, split

    def add(self, tokens, unit: int, base: int, split_hint: str | None, remaining: int | None) -> int:
        """Write tokens (unit `unit`, starting at offset `base` in its output); returns tokens taken."""
        if split_hint is not None and self.f is not None and self.split != split_hint and self.count:
            self.commit(unit, base)
        taken = 0
        n = len(tokens) if remaining is None else min(len(tokens), remaining)
        while taken < n:
            if self.f is None:
                self._open(self._target(split_hint)[0])
            target = self._target(split_hint)[1]
            take = min(target - self.count, n - taken)
            self.f.write(tokens[taken : taken + take].tobytes())
            self.count += take
            taken += take
            if self.count == target:
                at_end = taken == len(tokens)
                self.commit(unit + 1 if at_end else unit, 0 if at_end else base + taken)
        return taken

    def commit(self, next_unit: int, next_offset: int) -> None:
        from gptkit.data import shards

        self.f.seek(0)
        self.f.write(shards.make_header(self.count))
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()
        self.f = None
        k = len(self.state["shards"])
        name = f"{self.split}_{k:06d}.bin"
        tmp = self.pdir / CURRENT
        digest = _sha256(tmp)
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


def _count_eot(path: Path, n: int, eot: int) -> int:
    import numpy as np

    from gptkit.data import shards

    toks = np.memmap(path, dtype="<u2", mode="r", offset=shards.HEADER_BYTES, shape=(n,)) if n else np.zeros(0, "<u2")
    return sum(int(np.count_nonzero(toks[i : i + READ_TOKENS] == eot)) for i in range(0, n, READ_TOKENS))


def tokenize(
    src: str | None,
    out: str | Path | None = None,
    settings: Settings | None = None,
    *,
    workers: int | None = None,
    force: bool = False,
    subset: str | None = None,
    split: str = "train",
    revision: str | None = None,
    endpoint: str | None = None,
    unit_bytes: int | None = None,
    log: Callable[[str], None] | None = None,
    progress: Callable[[dict], None] | None = None,
) -> Result:
    """Tokenize SRC into shards under OUT (default paths.shards_dir(<source name>)); resumable."""
    from gptkit.data import shards
    from gptkit.data.tokenizers import Tokenizer, get_tokenizer

    s = settings or Settings()
    log = log or (lambda msg: None)
    unit_bytes = unit_bytes or UNIT_BYTES
    if s.shard_tokens < 1 or s.val_tokens < 1 or (s.max_tokens is not None and s.max_tokens < 2):
        raise GptkitError("--shard-tokens and --val-tokens must be at least 1, and --max-tokens at least 2")
    if s.shard_tokens >= 2**31 or s.val_tokens >= 2**31:
        raise GptkitError("--shard-tokens and --val-tokens must be below 2^31 (the shard header holds an int32 count)")
    source = resolve_source(
        src, s.text_column, subset=subset, split=split, revision=revision, endpoint=endpoint, log=log
    )
    tok = s.tokenizer if isinstance(s.tokenizer, Tokenizer) else get_tokenizer(s.tokenizer)
    if tok.vocab_size > shards.MAX_VOCAB:
        raise GptkitError(
            f"tokenizer {tok.name} has {tok.vocab_size} tokens, more than uint16 shards can hold ({shards.MAX_VOCAB})"
        )
    out = Path(out).expanduser() if out is not None else paths.shards_dir(source.name)
    tok_info = {"name": tok.name, "vocab_size": tok.vocab_size, "eot": tok.eot_token, "vocab_hash": tok.vocab_hash}
    ident = {
        "source": source.identity(),
        "tokenizer": tok_info,
        "shard_tokens": s.shard_tokens,
        "val_tokens": s.val_tokens,
        "max_tokens": s.max_tokens,
        "strict": s.strict,
        "unit_bytes": unit_bytes,
    }
    fingerprint = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()
    t0 = time.perf_counter()

    # Decide what to do with what is already there, before writing anything.
    pdir = out / PARTIAL_DIR
    if (out / MANIFEST).is_file() and not force:
        old = _read_json(out / MANIFEST) or {}
        if old.get("fingerprint") != fingerprint:
            raise GptkitError(
                f"{out} already holds shards of another source or other settings; give --out DIR, or --force to replace them"
            )
        if pdir.is_dir() and not (pdir / STATE).is_file() and not (pdir / MANIFEST).is_file():
            shutil.rmtree(pdir)  # left over from a run killed just after it finished
        if not pdir.exists():
            log(f"{out} is already tokenized from this source with these settings")
            return Result(out, read_manifest(out), "up to date")
    state = None
    if pdir.is_dir():
        old_state = _read_json(pdir / STATE) or _read_json(pdir / MANIFEST)
        if old_state is not None and old_state.get("fingerprint") == fingerprint:
            if (pdir / MANIFEST).is_file():  # killed while moving the finished shards into place
                return Result(out, _install(pdir, out), "resumed", time.perf_counter() - t0)
            state = old_state
            log(f"resuming: {len(state['shards'])} shard(s) already done in {pdir}")
        elif old_state is not None and old_state.get("shards") and not force:
            raise GptkitError(
                f"{pdir} holds an interrupted run with another source or other settings; "
                "re-run that command to finish it, or add --force to discard it"
            )
        if state is None:
            shutil.rmtree(pdir)
    if state is None:
        state = {
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
    pdir.mkdir(parents=True, exist_ok=True)
    for stale in pdir.glob(".*.tmp*"):  # tokens after the last commit are redone
        stale.unlink()
    resumed = bool(state["shards"])
    writer = _ShardWriter(pdir, s, tok.eot_token, state)
    done_bytes = 0
    total = sum(x["tokens"] for x in state["shards"])
    delay = float(os.environ.get("GPTKIT_TOKENIZE_TEST_DELAY", "0") or 0)  # test hook: slow down to be killed

    resume_unit, resume_skip = state["next_unit"], state["skip"]

    def consume(index: int, tokens, replaced: int, nbytes: int, split_hint: str | None):
        nonlocal done_bytes, total
        base = 0
        if index == resume_unit and resume_skip:
            base = resume_skip  # this unit's start is already in committed shards (and counted)
            tokens = tokens[base:]
        else:
            state["replaced"] += replaced
        remaining = None if s.max_tokens is None else s.max_tokens - total
        total += writer.add(tokens, index, base, split_hint, remaining)
        done_bytes += nbytes
        if progress:
            progress(
                {
                    "bytes": done_bytes,
                    "total_bytes": source.total_bytes,
                    "tokens": total,
                    "shards": len(state["shards"]),
                }
            )
        if delay:
            time.sleep(delay)
        return s.max_tokens is not None and total >= s.max_tokens

    try:
        _run_units(source, state["next_unit"], unit_bytes, tok, s, workers, consume)
        _finish(writer, state, s, source)
        if not any(x["split"] == "train" for x in state["shards"]):
            raise GptkitError(
                f"{source.spec}: no training data (only validation tokens); lower --val-tokens or add data"
            )
    except GptkitError:
        if writer.f is not None:
            writer.f.close()
        if not state["shards"]:  # nothing worth resuming: leave no trace
            shutil.rmtree(pdir, ignore_errors=True)
            if created_out:
                with contextlib.suppress(OSError):
                    out.rmdir()
        raise

    manifest = {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "tokenizer": tok_info,
        "shard_format": {
            "header_int32": shards.HEADER_INTS,
            "magic": shards.MAGIC,
            "version": shards.VERSION,
            "dtype": "uint16",
        },
        "source": source.info,
        "shard_tokens": s.shard_tokens,
        "val_tokens": s.val_tokens,
        "max_tokens": s.max_tokens,
        "strict": s.strict,
        "replaced_invalid_utf8": state["replaced"],
        "totals": {
            "tokens": sum(x["tokens"] for x in state["shards"]),
            "documents": sum(x["documents"] for x in state["shards"]),
            "val_tokens": sum(x["tokens"] for x in state["shards"] if x["split"] == "val"),
            "train_tokens": sum(x["tokens"] for x in state["shards"] if x["split"] == "train"),
            "shards": len(state["shards"]),
        },
        "shards": state["shards"],
        "fingerprint": fingerprint,
    }
    write_json_atomic(pdir / MANIFEST, manifest, indent=1)
    with contextlib.suppress(FileNotFoundError):
        (pdir / STATE).unlink()
    manifest = _install(pdir, out)
    return Result(out, manifest, "resumed" if resumed else "done", time.perf_counter() - t0, source.total_bytes)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def default_workers() -> int:
    """All the cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _run_units(source: Source, start: int, unit_bytes: int, tok, s: Settings, workers: int | None, consume) -> None:
    """Feed units to the workers, at most a few per worker in flight, and consume results in order."""
    import numpy as np

    units = _units(source, start, unit_bytes)
    if source.kind == "tokens":  # a copy with a range check: no encoding, so no workers
        arrays = {}
        for index, unit, nbytes in units:
            if index < start:
                continue
            _, i, lo, hi, split_hint = unit
            if i not in arrays:
                arrays = {i: _token_file(source.files[i])[0]}
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
        tok.name,
        tok.vocab_hash,
        [str(f) for f in source.files],
        source.file_kinds,
        s.text_column,
        s.strict,
        unit_bytes,
    )
    todo = ((i, u, b) for i, u, b in units if i >= start)
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

    # spawn, not fork: the main process may hold pyarrow/datasets threads, which fork would copy mid-lock.
    with mp.get_context("spawn").Pool(n_workers, initializer=_init_worker, initargs=(*init, True)) as pool:
        pending: deque = deque()
        window = 2 * n_workers + 1
        for index, unit, _ in todo:
            pending.append((index, pool.apply_async(_work, (unit,))))
            if len(pending) >= window:
                i, r = pending.popleft()
                if consume(i, *r.get(), None):
                    return
        while pending:
            i, r = pending.popleft()
            if consume(i, *r.get(), None):
                return


def _finish(writer: _ShardWriter, state: dict, s: Settings, source: Source) -> None:
    """Commit the last, partial shard; a source smaller than --val-tokens is split 1:9 into val and train."""
    import numpy as np

    from gptkit.data import shards

    if writer.f is None:
        if not state["shards"]:
            raise GptkitError(f"{source.spec}: empty source: no text found")
        return
    if (
        state["shards"]
        or writer.split != "val"
        or source.kind == "tokens"
        and any(_token_split(f) == "val" for f in source.files)
    ):
        writer.commit(state["next_unit"], state["skip"])  # the position is only used if a later run resumes
        return
    # Everything fit into what was to be the validation shard: keep a tenth for validation.
    n = writer.count
    writer.f.close()
    writer.f = None
    if n < 2:
        raise GptkitError(f"{source.spec}: empty source: {n} token(s) of text")
    tmp = writer.pdir / CURRENT
    staged = writer.pdir / ".all.bin.tmp"
    os.replace(tmp, staged)
    toks = np.memmap(staged, dtype="<u2", mode="r", offset=shards.HEADER_BYTES, shape=(n,))
    n_val = max(1, n // 10)
    writer.s = Settings(**{**s.__dict__, "val_tokens": n_val})
    # No resume point inside this split: if killed here, the saved state still says "nothing done"
    # and the re-run redoes this (small) source from the start.
    writer.save_state = False
    for i in range(0, n, READ_TOKENS):
        writer.add(np.asarray(toks[i : min(n, i + READ_TOKENS)]), 0, 0, None, None)
    if writer.f is not None:
        writer.commit(0, 0)
    del toks
    staged.unlink()


def _install(pdir: Path, out: Path) -> dict:
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
    fsync_dir(out)
    os.replace(pdir / MANIFEST, out / MANIFEST)
    fsync_dir(out)
    shutil.rmtree(pdir, ignore_errors=True)
    return m
