"""What `gptkit tokenize` reads: SRC resolved to a Source before anything is written.

A source is text files (.parquet, .jsonl, .jsonl.gz, .txt: a file or a folder, a download preset),
existing token files to convert (.npy, llm.c or nanoGPT .bin), a Hugging Face dataset streamed
through the chosen endpoint, or a built-in corpus. Everything that talks to the hub lives here.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gptkit import faults, names, paths
from gptkit.data import corpora, shards
from gptkit.errors import GptkitError
from gptkit.hub.presets import PRESETS, text_presets

DEFAULT_TEXT_COLUMN = "text"  # a source's text column when neither the user nor its preset names one
BUILTIN_CORPORA = tuple(corpora.CORPORA)  # "pydoc" first: the default
TEXT_KINDS = ("parquet", "jsonl", "jsonl.gz", "txt")


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
    # The vocabulary of token files' ids, found beside them: nanoGPT's meta.pkl, or a gptkit tokenizer/ folder
    vocab_file: Path | None = None

    def identity(self) -> dict:
        """What the output depends on; a resumed or repeated run must see the same."""
        # Not where it is or how it was named or fetched: the same files or revision are the same source.
        ident = {k: v for k, v in self.info.items() if k not in ("spec", "root", "endpoint", "description")}
        if self.files:
            ident["stat"] = [[f.stat().st_size, f.stat().st_mtime_ns] for f in self.files]
        return ident

    def splits_given(self) -> bool:
        """Token files that name their own split (a *val* file): their split is kept, not recut."""
        return self.kind == "tokens" and any(token_split(f) == "val" for f in self.files)


# --------------------------------------------------------------------------- local files


def _file_kind(p: Path) -> str | None:
    n = p.name.lower()
    if n.endswith(".jsonl.gz"):
        return "jsonl.gz"
    return {".parquet": "parquet", ".jsonl": "jsonl", ".txt": "txt", ".npy": "npy", ".bin": "bin"}.get(p.suffix.lower())


def _is_nanogpt_bin(p: Path) -> bool:
    """nanoGPT's train.bin / val.bin: raw uint16 token ids, no header."""
    return p.suffix.lower() == ".bin" and p.stem.lower() in ("train", "val")


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
        elif k in ("npy", "bin"):  # every .bin is a token file: one with a bad header is an error, never skipped
            tokens.append(p)
    return text, tokens


def default_source() -> str:
    """No SRC: the most recently downloaded text preset, else the built-in corpus."""
    found = []
    for name in text_presets():
        d = paths.data_dir(name)
        if d.is_dir() and _scan(d)[0]:
            found.append((d.stat().st_mtime, name))
    return max(found)[1] if found else BUILTIN_CORPORA[0]


_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def resolve_source(
    src: str | None,
    text_column: str | None = None,
    *,
    unit_bytes: int,
    subset: str | None = None,
    split: str = "train",
    revision: str | None = None,
    endpoint: str | None = None,
    log: Callable[[str], None] | None = None,
) -> Source:
    """SRC as a Source; `endpoint` is a URL from resolve_endpoint, or None for the environment's.

    `text_column`: where the text is; None means the download preset's own column (hub.presets), else "text".
    """
    log = log or (lambda msg: None)
    if src is None:
        src = default_source()
        log(f"no SRC given: tokenizing {src!r}")
    if src in BUILTIN_CORPORA:
        return _builtin_source(src)
    presets = text_presets()
    if src in presets:
        d = paths.data_dir(src)
        if not (d.is_dir() and _scan(d)[0]):
            raise GptkitError(f"{src} is not downloaded yet ({d} has no data files); run `gptkit download {src}` first")
        return _path_source(d, src, src, text_column or presets[src], unit_bytes, log)
    text_column = text_column or DEFAULT_TEXT_COLUMN
    # A download by its repo id or by the folder name `gptkit download` printed (me--manpages),
    # else a file or folder here (gptkit.names decides).
    download = paths.data_dir(src)
    objects = []
    if not names.looks_like_path(src) and revision is None and download.is_dir() and _scan(download)[0]:
        objects = [("the download", download)]
    found = names.pick(src, label=src, objects=objects, usable=lambda q: q.exists())
    if found is not None and objects and found == objects[0][1]:
        log(f"using the downloaded copy of {src} in {download}")
        return _path_source(download, src, download.name, text_column, unit_bytes, log)
    if found is not None:
        return _path_source(found, src, None, text_column, unit_bytes, log)
    p = Path(src).expanduser()
    if src in PRESETS:  # a download preset without text: model weights, an evaluation set
        preset = PRESETS[src]
        raise GptkitError(
            f"{src} is a download preset without text to tokenize ({preset.about or preset.repo_id}); "
            f"text presets: {', '.join(presets)}"
        )
    if _REPO_ID.fullmatch(src) and _file_kind(p) is None:
        return _hf_source(src, text_column, subset, split, revision, endpoint)
    raise GptkitError(f"{src}: no such file or directory")


def _builtin_source(name: str) -> Source:
    return Source(spec=name, kind="builtin", name=name, info=corpora.info(name), total_bytes=corpora.total_bytes(name))


def _path_source(
    p: Path, spec: str, name: str | None, text_column: str, unit_bytes: int, log: Callable[[str], None]
) -> Source:
    p = p.resolve()
    if p.is_dir():
        text, tokens = _scan(p)
        root = p
        if text and tokens and all(_is_nanogpt_bin(f) and f.parent == p for f in tokens):
            # nanoGPT's data folders hold input.txt beside the train.bin / val.bin made from it
            log(
                f"{p} holds nanoGPT's {' and '.join(f.name for f in tokens)}: converting those token files, "
                f"not {', '.join(str(f.relative_to(p)) for f in text[:3])}{', ...' if len(text) > 3 else ''} "
                "(point at a text file to tokenize it instead)"
            )
            text = []
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
        elif k in ("npy", "bin"):
            text, tokens = [], [p]
            if _is_nanogpt_bin(p):  # nanoGPT: take its sibling too
                tokens = sorted(f for f in p.parent.glob("*.bin") if _is_nanogpt_bin(f))
        else:
            raise GptkitError(
                f"{p}: unsupported file type (expected .parquet, .jsonl, .jsonl.gz, .txt, .npy, or an llm.c/nanoGPT .bin)"
            )
    name = name or (p.name if p.is_dir() else (p.stem if text else p.parent.name))
    files = text or _order_token_files(tokens)
    info: dict[str, Any] = {
        "type": "files" if text else "tokens",
        "spec": spec,
        "root": str(root),
        "files": [{"path": str(f.relative_to(root)), "bytes": f.stat().st_size} for f in files],
    }
    if text:
        info["text_column"] = text_column
    info.update(_download_record(root, log))
    src = Source(spec=spec, kind="files" if text else "tokens", name=name, root=root, files=files, info=info)
    src.file_kinds = [_file_kind(f) or "" for f in files]
    if text:
        _plan_parquet(src, text_column, unit_bytes)
        src.total_bytes = sum(
            sum(u[3] for u in src.parquet_units[i]) if k == "parquet" else f.stat().st_size
            for i, (f, k) in enumerate(zip(files, src.file_kinds, strict=True))
        )
    else:
        for f in files:  # every header checked before anything is written: a bad file is named, never skipped
            token_file(f)
        src.total_bytes = sum(f.stat().st_size for f in files)
        from gptkit.vocab_files import SAVED_DIR, SAVED_INFO

        if (root / "meta.pkl").is_file():
            src.vocab_file = root / "meta.pkl"
        elif (root / SAVED_DIR / SAVED_INFO).is_file():
            src.vocab_file = root / SAVED_DIR
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
    return sorted(files, key=lambda f: (token_split(f) != "val", str(f)))


def token_split(f: Path) -> str:
    return "val" if re.search(r"(^|[_\-.])val", f.stem.lower()) else "train"


def _plan_parquet(src: Source, text_column: str, unit_bytes: int) -> None:
    """Read every parquet footer: check the text column and cut row groups into work units."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for i, (f, k) in enumerate(zip(src.files, src.file_kinds, strict=True)):
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
            k_units = max(1, -(-size // unit_bytes))
            cuts = [rows * j // k_units for j in range(k_units + 1)]
            units += [
                (rg, lo, hi, size * (hi - lo) // max(rows, 1))
                for lo, hi in zip(cuts, cuts[1:], strict=False)
                if hi > lo
            ]
        src.parquet_units[i] = units


def token_file(f: Path) -> tuple[Any, int]:
    """(read-only array, length) of an existing token file: .npy, llm.c shard, or raw uint16 .bin."""
    import numpy as np

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
        shard = shards.open_shard(f)
        return shard, len(shard)
    if not _is_nanogpt_bin(f):
        raise GptkitError(
            f"{f}: not a token shard (magic {magic}, expected {shards.MAGIC}) nor a nanoGPT train.bin/val.bin"
        )
    size = f.stat().st_size
    if size % 2:
        raise GptkitError(f"{f}: odd size ({size} bytes); not a uint16 token file")
    raw = np.memmap(f, dtype="<u2", mode="r") if size else np.zeros(0, "<u2")
    return raw, len(raw)


# --------------------------------------------------------------------------- Hugging Face datasets


@contextlib.contextmanager
def _hub_errors(hf: dict, *more: type[Exception]) -> Iterator[None]:
    """Turn what the hub, the network or the disk raise (and `more`) into one line about this dataset."""
    from gptkit.hub.errors import explain, user_errors

    failures = (*user_errors(), *more)
    try:
        yield
    except GptkitError:
        raise
    except failures as e:
        raise explain(e, f"dataset {hf['repo_id']}", hf["endpoint"], hf["revision"]) from None


def _hf_source(
    repo_id: str, text_column: str, subset: str | None, split: str, revision: str | None, endpoint: str | None
) -> Source:
    from huggingface_hub import HfApi

    from gptkit.hub.endpoint import resolve_endpoint

    endpoint = endpoint or resolve_endpoint()
    if faults.active("hub.offline"):
        raise GptkitError(f"{repo_id} is not a local file or folder, and the hub.offline fault forbids streaming it")
    # ValueError too: a malformed repo id, or an endpoint that does not answer JSON.
    with _hub_errors({"repo_id": repo_id, "revision": revision, "endpoint": endpoint}, ValueError):
        info = HfApi(endpoint=endpoint).dataset_info(repo_id, revision=revision, timeout=30)
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


def hf_batches(src: Source, unit_bytes: int, skip_units: int) -> Iterator[list[str | None] | None]:
    """Stream the dataset through the chosen endpoint; units before skip_units yield None (not encoded)."""
    import datasets
    from datasets import DownloadConfig

    # Points datasets and huggingface_hub at the endpoint, whatever the import order, then restores them.
    from gptkit.hub.endpoint import use_endpoint

    hf = src.hf
    col = hf["text_column"]
    with use_endpoint(hf["endpoint"]), _hub_errors(hf):
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
            n = 0
            batch: list[str | None] = []
            size = 0
            for row in ds:
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
        except ValueError as e:  # e.g. an unknown split or subset: datasets lists the valid ones
            raise GptkitError(f"dataset {hf['repo_id']}: {str(e).splitlines()[0]}") from None
