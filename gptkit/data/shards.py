"""The token shard format, shared by tokenize (writer) and train (reader).

Byte-compatible with llm.c and modded-nanogpt: a header of 256 little-endian int32 values
(magic 20240520, version 1, token count, zeros), followed by the tokens as little-endian uint16.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from gptkit.errors import GptkitError

MAGIC = 20240520
VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
MAX_VOCAB = 2**16  # uint16 tokens


def make_header(num_tokens: int) -> bytes:
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[0], header[1], header[2] = MAGIC, VERSION, num_tokens
    return header.tobytes()


def write_shard(path: str | Path, tokens: np.ndarray) -> None:
    """Write one shard under a temporary name, fsync it and rename it into place."""
    path = Path(path)
    tokens = np.asarray(tokens)
    if tokens.size and int(tokens.max()) >= MAX_VOCAB:
        raise GptkitError(f"token id {int(tokens.max())} does not fit in uint16")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(make_header(len(tokens)))
        f.write(tokens.astype("<u2", copy=False).tobytes())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


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
        raise GptkitError(f"{path}: unsupported shard version {header[1]}")
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
