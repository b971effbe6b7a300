"""Text sources -> uint16 token shards (llm.c format) + manifest.json, and the reader side for train.

Layout of a tokenized dataset (default: gptkit.paths.shards_dir(NAME)):

    manifest.json          written last: its presence means the shards are complete
    val_000000.bin         shard 0 is validation (the first --val-tokens tokens)
    train_000001.bin ...   training shards, --shard-tokens tokens each (the last may be shorter)
    .partial/              only while a run is in progress or was interrupted (resume state)

`find_shards(name_or_dir)` is what `gptkit train` calls to locate them.
"""

from __future__ import annotations

import json
from pathlib import Path

from gptkit import paths
from gptkit.errors import GptkitError

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "gptkit.shards"
MANIFEST_VERSION = 1
PARTIAL_DIR = ".partial"


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
        raise GptkitError(f"no tokenized dataset named {name_or_dir!r} (looked in {d}); run `gptkit tokenize {name_or_dir}`")
    raise GptkitError(f"{p}: no such directory")


def read_manifest(d: Path) -> dict:
    f = d / MANIFEST
    if not f.is_file():
        if (d / PARTIAL_DIR).is_dir():
            raise GptkitError(f"{d}: tokenization was interrupted; re-run the same `gptkit tokenize` command to resume it")
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
    from gptkit import shards

    d = resolve_shards_dir(name_or_dir)
    m = read_manifest(d)
    val, train = [], []
    for s in m["shards"]:
        p = d / s["filename"]
        if not p.is_file():
            raise GptkitError(f"{p}: shard listed in {MANIFEST} is missing; re-run `gptkit tokenize` with --force")
        n = shards.read_header(p)
        if n != s["tokens"]:
            raise GptkitError(f"{p}: header says {n} tokens but {MANIFEST} says {s['tokens']}")
        (val if s["split"] == "val" else train).append(p)
    if not train:
        raise GptkitError(f"{d}: no training shards")
    return val, train, m
