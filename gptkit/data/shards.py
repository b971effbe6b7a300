"""A tokenized dataset on disk: the shard format, the manifest, finding the shards and verifying them.

Layout of a tokenized dataset (default: gptkit.paths.shards_dir(NAME)):

    manifest.json          written last: its presence means the shards are complete
    val_000000.bin         shard 0 is validation: the first --val-tokens tokens; for a source smaller
                           than that, a tenth of it in pieces drawn across it (manifest "validation")
    train_000001.bin ...   training shards, --shard-tokens tokens each (the last may be shorter)
    .partial/              only while a run is in progress or was interrupted (resume state)

A shard is byte-compatible with llm.c and modded-nanogpt: a header of 256 little-endian int32
values (magic 20240520, version 1, token count, zeros), followed by the tokens as little-endian
uint16. gptkit/data/writer.py writes them; `find_shards(name_or_dir)` is what `gptkit train` calls.

    tokenizer/             the tokenizer the shards were made with (see gptkit/tokenizer.save_tokenizer)

Manifest version 3 (this one) draws a small source's validation tokens across it (version 2 took its
first tenth); version 2 gives an empty document a lone end-of-text token, as build-nanogpt's
fineweb.py does; version 1 skipped it. All are read.

Other tools' shards are read in place: a directory without manifest.json whose .bin files carry the
llm.c header (llm.c, modded-nanogpt: fineweb_val_000000.bin, fineweb_train_000001.bin, ...) gets
a manifest built in memory (`foreign_manifest`), with the tokenizer assumed (GPT-2, what those
tools' data scripts use) unless one is given, and a note saying so.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np

from gptkit import names, paths
from gptkit.errors import GptkitError
from gptkit.fsutil import sha256_file

MAGIC = 20240520
VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
MAX_VOCAB = 2**16  # uint16 tokens: ids 0..65535

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "gptkit.shards"
# 3: a source smaller than --val-tokens validates on pieces drawn across it (2: its first tenth);
# 2: an empty document is a lone end-of-text token (1: it was skipped)
MANIFEST_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
FOREIGN_FORMAT = "llm.c"  # manifest["format"] of a directory of other tools' shards, read in place
PARTIAL_DIR = ".partial"
READ_TOKENS = 1 << 22  # tokens per read when converting or verifying existing token files


# --------------------------------------------------------------------------- one shard


def make_header(num_tokens: int) -> bytes:
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[0], header[1], header[2] = MAGIC, VERSION, num_tokens
    return header.tobytes()


def read_header(path: str | Path) -> int:
    """Validate the header and return the token count."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(HEADER_BYTES)
    except OSError as e:
        raise GptkitError(f"{path}: cannot read shard ({e.strerror})") from None
    if len(raw) < HEADER_BYTES:
        raise GptkitError(f"{path}: truncated shard header ({len(raw)} of {HEADER_BYTES} bytes)")
    header = np.frombuffer(raw, dtype="<i4")
    if header[0] != MAGIC:
        raise GptkitError(f"{path}: not a token shard (magic {header[0]}, expected {MAGIC})")
    if header[1] != VERSION:
        what = " (llm.c's uint32 tokens, for LLaMA 3)" if header[1] == 2 else ""
        raise GptkitError(
            f"{path}: unsupported shard version {header[1]}{what}; only version 1 (uint16 tokens) is read"
        )
    n = int(header[2])
    expected = HEADER_BYTES + 2 * n
    size = path.stat().st_size
    if size != expected:
        raise GptkitError(f"{path}: header says {n} tokens ({expected} bytes) but the file has {size} bytes")
    return n


def open_shard(path: str | Path) -> np.ndarray:
    """Memory-map a shard's tokens (uint16, read-only) after validating its header."""
    n = read_header(path)
    return np.memmap(path, dtype="<u2", mode="r", offset=HEADER_BYTES, shape=(n,))


def check_token_ids(path: Path, chunk: np.ndarray, vocab: tuple[str, int]) -> None:
    """A token id at or past the vocabulary size (name, size) in this chunk of a shard is an error:
    an embedding would fail on it, or (inside the padded rows) train a row no token has."""
    if chunk.size and int(chunk.max()) >= vocab[1]:
        raise GptkitError(
            f"{path}: token id {int(chunk.max())} is outside the vocabulary ({vocab[0]}, size {vocab[1]})"
        )


# --------------------------------------------------------------------------- the manifest


def totals(entries: list[dict]) -> dict:
    """A manifest's token counts, from its shard entries."""
    return {
        "tokens": sum(x["tokens"] for x in entries),
        "val_tokens": sum(x["tokens"] for x in entries if x["split"] == "val"),
        "train_tokens": sum(x["tokens"] for x in entries if x["split"] == "train"),
        "shards": len(entries),
    }


def build_manifest(
    *,
    tokenizer: dict,
    source: dict,
    settings: dict,
    replaced: int,
    shards: list[dict],
    fingerprint: str,
    validation: dict | None = None,
) -> dict:
    """The manifest of finished shards; `settings` holds shard_tokens, val_tokens, max_tokens, strict."""
    return {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "tokenizer": tokenizer,
        "shard_format": {"header_int32": HEADER_INTS, "magic": MAGIC, "version": VERSION, "dtype": "uint16"},
        "source": source,
        **settings,
        "replaced_invalid_utf8": replaced,
        "totals": {**totals(shards), "documents": sum(x["documents"] for x in shards)},
        "shards": shards,
        "validation": validation,
        "fingerprint": fingerprint,
    }


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
    if m.get("format") != MANIFEST_FORMAT or m.get("version") not in READABLE_VERSIONS:
        raise GptkitError(f"{f}: not a gptkit shard manifest (format {m.get('format')!r} version {m.get('version')!r})")
    return m


def source_order(val: np.ndarray, train: np.ndarray, validation: dict | None) -> np.ndarray:
    """The tokens in the source's order, from the validation and training tokens (each concatenated)
    and the manifest's "validation" record: validation drawn in pieces goes back where it was."""
    if not validation or validation.get("rule") != "seeded pieces":
        return np.concatenate([val, train])
    out = np.empty(len(val) + len(train), dtype=val.dtype)
    mask = np.zeros(len(out), dtype=bool)
    for a, b in validation["ranges"]:
        mask[a:b] = True
    out[mask], out[~mask] = val, train
    return out


# --------------------------------------------------------------------------- finding and verifying


def resolve_shards_dir(name_or_dir: str | Path | None) -> Path:
    """A directory, a dataset name (-> paths.shards_dir(name)), or None (-> the newest tokenized dataset)."""
    if name_or_dir is None:
        root = paths.shards_dir()
        done = sorted(root.glob(f"*/{MANIFEST}"), key=lambda p: p.stat().st_mtime) if root.is_dir() else []
        if not done:
            raise GptkitError(f"no tokenized data in {root}; run `gptkit tokenize` first")
        return done[-1].parent
    p = Path(name_or_dir).expanduser()
    if p.is_file():  # a shard itself: training reads the folder (its val and train shards together)
        raise GptkitError(f"{p} is a file; give the folder that holds it: --data {p.parent}")
    spec = str(name_or_dir)
    if isinstance(name_or_dir, Path) or p.is_absolute():
        spec = str(p) if p.is_absolute() else f"./{p}"  # a Path is a path, whatever its spelling
    named = paths.shards_dir(spec) if not names.looks_like_path(spec) else None
    found = names.pick(
        spec,
        label=f"--data {name_or_dir}",
        objects=[("the tokenized dataset", named)] if named is not None and _usable_shards(named) else [],
        usable=_usable_shards,
    )
    if found is not None:
        return found
    d = paths.shards_dir(spec)
    here = names.unusable_note(spec, "tokenized data")
    raise GptkitError(f"no tokenized dataset named {spec!r} (looked in {d}{here}); run `gptkit tokenize {spec}`")


def _usable_shards(d: Path) -> bool:
    """Shards training can read: a manifest (or an interrupted tokenize's, which says how to resume),
    or llm.c shards."""
    if not d.is_dir():
        return False
    if (d / MANIFEST).is_file() or (d / PARTIAL_DIR).is_dir():
        return True
    try:
        return foreign_shards(d) is not None
    except GptkitError:
        return True  # llm.c-looking shards with a problem: the reader says which


def load_manifest(d: Path, tokenizer: str | None = None) -> dict:
    """The manifest of the shards in D: its manifest.json, or one built in memory for other tools'
    shards (see `foreign_manifest`). `tokenizer` (a get_tokenizer spec) names the tokenizer of
    shards without a manifest; for a gptkit manifest it must be the one recorded."""
    if not (d / MANIFEST).is_file() and not (d / PARTIAL_DIR).is_dir():
        found = foreign_shards(d)
        if found is not None:
            return foreign_manifest(d, found, tokenizer)
    m = read_manifest(d)
    if tokenizer is not None:
        from gptkit.tokenizer import get_tokenizer

        given, recorded = get_tokenizer(tokenizer), m.get("tokenizer") or {}
        if recorded.get("vocab_hash") != given.vocab_hash:
            raise GptkitError(
                f"{d}: the shards were made with tokenizer {recorded.get('name')!r}, not --tokenizer {tokenizer} "
                f"({given.name}); leave --tokenizer out"
            )
    return m


_SPLIT_RE = re.compile(r"(?:^|[_\-.])(train|val)(?:[_\-.]|$)")


def foreign_shards(d: Path) -> list[tuple[Path, str, int]] | None:
    """(path, split, tokens) of the llm.c shards in D, val first; None if no .bin file there has the
    llm.c header. Once one has, every .bin file must be a valid shard named *_train_* or *_val_*."""
    if not d.is_dir():
        return None
    bins = sorted(p for p in d.glob("*.bin") if p.is_file() and not p.name.startswith("."))
    if not any(_has_magic(p) for p in bins):
        return None
    found = []
    for p in bins:
        m = _SPLIT_RE.search(p.stem.lower())
        if m is None:
            raise GptkitError(
                f"{p}: not named as a train or val shard (like fineweb_train_000001.bin); move it out of {d}"
            )
        found.append((p, m.group(1), read_header(p)))
    found.sort(key=lambda x: (x[1] != "val", x[0].name))
    return found


def _has_magic(p: Path) -> bool:
    try:
        with open(p, "rb") as f:
            return int.from_bytes(f.read(4), "little") == MAGIC
    except OSError:
        return False


def foreign_manifest(d: Path, found: list[tuple[Path, str, int]], tokenizer: str | None = None) -> dict:
    """A manifest, in memory, for shards other tools wrote (llm.c, modded-nanogpt). Their tokenizer:
    `tokenizer` if given, else a `tokenizer/` folder beside them, else GPT-2 (what llm.c's and
    modded-nanogpt's fineweb scripts use), assumed and said in manifest["notes"]."""
    from gptkit.tokenizer import EOT_TOKENS, VOCAB_SIZES, get_tokenizer
    from gptkit.vocab_files import SAVED_DIR, SAVED_INFO

    notes = []
    if tokenizer is not None:
        info = get_tokenizer(tokenizer).info()
    elif (d / SAVED_DIR / SAVED_INFO).is_file():
        info = json.loads((d / SAVED_DIR / SAVED_INFO).read_text(encoding="utf-8"))
    else:
        info = {"name": "gpt2", "kind": "builtin", "vocab_size": VOCAB_SIZES["gpt2"], "eot": EOT_TOKENS["gpt2"]}
        notes.append(
            f"{d}: llm.c shards without a {MANIFEST}; assuming the GPT-2 tokenizer (llm.c's and modded-nanogpt's "
            "data scripts use it); if they were made with another, convert them with `gptkit tokenize DIR --tokenizer SPEC`"
        )
    entries = [{"filename": p.name, "split": split, "tokens": n} for p, split, n in found]
    return {
        "format": FOREIGN_FORMAT,
        "tokenizer": info,
        "source": {"type": FOREIGN_FORMAT, "root": str(d)},
        "totals": totals(entries),
        "shards": entries,
        "notes": notes,
    }


def find_shards(name_or_dir: str | Path | None, tokenizer: str | None = None) -> tuple[list[Path], list[Path], dict]:
    """(validation shard paths, training shard paths, manifest) of a tokenized dataset, or of a
    directory of llm.c shards (see `load_manifest`).

    Checks that every listed shard exists and that its header agrees with the manifest (cheap:
    one 1 KB read per shard); `verify()` also checks hashes and the token range.
    """
    d = resolve_shards_dir(name_or_dir)
    m = load_manifest(d, tokenizer)
    val: list[Path] = []
    train: list[Path] = []
    for s in m["shards"]:
        p, _ = _listed_shard(d, s)
        (val if s["split"] == "val" else train).append(p)
    if not train:
        raise GptkitError(f"{d}: no training shards")
    return val, train, m


def _listed_shard(d: Path, entry: dict) -> tuple[Path, int]:
    """A shard the manifest lists: present, with a valid header whose count matches the manifest."""
    p = d / entry["filename"]
    if not p.is_file():
        raise GptkitError(f"{p}: shard listed in {MANIFEST} is missing; re-run `gptkit tokenize` with --force")
    n = read_header(p)
    if n != entry["tokens"]:
        raise GptkitError(f"{p}: header says {n} tokens but {MANIFEST} says {entry['tokens']}")
    return p, n


def verify(name_or_dir: str | Path, tokenizer: str | None = None) -> dict:
    """Check every shard against the manifest: header, token count, sha256, token range, documents,
    and the saved tokenizer. Shards of other tools (no manifest) have no hashes or document counts
    to compare: their headers and token range are checked.

    Returns a summary; raises GptkitError (one line) on the first problem.
    """
    d = resolve_shards_dir(name_or_dir)
    m = load_manifest(d, tokenizer)
    info = m["tokenizer"]
    vocab, eot = info["vocab_size"], info.get("eot")
    if info.get("kind", "builtin") != "builtin":  # its files must be there and match the recorded hash
        from gptkit.tokenizer import tokenizer_for

        tokenizer_for(info, d, str(d))
    total = 0
    for s in m["shards"]:
        p, n = _listed_shard(d, s)
        if "sha256" in s:
            digest = sha256_file(p)
            if digest != s["sha256"]:
                raise GptkitError(
                    f"{p}: sha256 {digest[:12]}… does not match {MANIFEST} ({s['sha256'][:12]}…); the file is corrupt"
                )
        toks = open_shard(p)
        docs = 0
        for i in range(0, n, READ_TOKENS):
            chunk = np.asarray(toks[i : i + READ_TOKENS])
            check_token_ids(p, chunk, (info["name"], vocab))
            if eot is not None:
                docs += int(np.count_nonzero(chunk == eot))
        if "documents" in s and docs != s["documents"]:
            raise GptkitError(f"{p}: {docs} documents (end-of-text tokens) but {MANIFEST} says {s['documents']}")
        total += n
    return {
        "dir": str(d),
        "format": m["format"],
        "shards": len(m["shards"]),
        "tokens": total,
        "tokenizer": info["name"],
        "hashes": m["format"] == MANIFEST_FORMAT,
        "notes": m.get("notes", []),
    }
