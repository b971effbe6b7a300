"""Tokenizers, resolved offline first.

- `gpt2`: GPT-2 BPE through tiktoken (r50k_base ranks, <|endoftext|> = 50256). Found in order:
    1. tiktoken's own cache (TIKTOKEN_CACHE_DIR, DATA_GYM_CACHE_DIR or its temp-dir default), and
       gptkit's copy in $GPTKIT_HOME/tiktoken (where scripts/get_gpt2_vocab.py puts it);
    2. a vocab.json + merges.txt directory, such as `gptkit download gpt2` fetches, converted to ranks;
    3. tiktoken's normal download.
- `bytes`: byte-level, vocabulary 256, no download. Byte 0 (NUL, which text does not contain; any
  NUL in the input is dropped) serves as the end-of-text token.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
from pathlib import Path

from gptkit import faults, paths
from gptkit.errors import GptkitError

TOKENIZERS = ("gpt2", "bytes")
R50K_URL = "https://openaipublic.blob.core.windows.net/encodings/r50k_base.tiktoken"
R50K_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
R50K_FILENAME = "r50k_base.tiktoken"
# GPT-2's pre-tokenisation regex (tiktoken's r50k_base).
GPT2_PAT = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
GPT2_EOT = 50256
FIX_HINT = "run `python scripts/get_gpt2_vocab.py` (PyPI only) or `gptkit download gpt2` (through a mirror)"


class Tokenizer:
    """The small interface every command uses: encode, decode, eot_token, vocab_size, vocab_hash."""

    name: str
    vocab_size: int
    eot_token: int
    vocab_hash: str
    source: str

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def encode_array(self, text: str):
        """`encode` as a numpy integer array (no Python int per token): the bulk path of tokenize."""
        import numpy as np

        return np.asarray(self.encode(text), dtype=np.uint32)

    def decode_bytes(self, ids) -> bytes:
        raise NotImplementedError

    def decode(self, ids) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")


class BytesTokenizer(Tokenizer):
    name = "bytes"
    vocab_size = 256
    eot_token = 0
    vocab_hash = hashlib.sha256(bytes(range(256))).hexdigest()
    source = "built in"

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8").replace(b"\x00", b""))

    def encode_array(self, text: str):
        import numpy as np

        return np.frombuffer(text.encode("utf-8").replace(b"\x00", b""), dtype=np.uint8)

    def decode_bytes(self, ids) -> bytes:
        return bytes(int(i) for i in ids if 0 < int(i) < 256)


class TiktokenTokenizer(Tokenizer):
    def __init__(self, name: str, enc, source: str, vocab_hash: str):
        self.name = name
        self.enc = enc
        self.eot_token = enc.eot_token
        self.vocab_size = enc.n_vocab
        self.source = source
        self.vocab_hash = vocab_hash

    def encode(self, text: str) -> list[int]:
        return self.enc.encode_ordinary(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.enc.encode_ordinary_batch(texts, num_threads=1)

    def encode_array(self, text: str):
        # Same ids as encode_ordinary (special-token text is plain text when nothing is allowed or
        # disallowed), but returned as a uint32 buffer: skips building a Python list.
        return self.enc.encode_to_numpy(text, allowed_special=set(), disallowed_special=())

    def decode_bytes(self, ids) -> bytes:
        ids = [int(i) for i in ids if int(i) < self.vocab_size]  # never decode padded-vocab ids
        return self.enc.decode_bytes(ids)


def ranks_hash(ranks: dict[bytes, int]) -> str:
    """A hash of the vocabulary itself, equal for equal ranks however they were loaded."""
    h = hashlib.sha256()
    for tok, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        h.update(rank.to_bytes(4, "little") + len(tok).to_bytes(2, "little") + tok)
    return h.hexdigest()


def tiktoken_cache_candidates() -> list[Path]:
    """Where a copy of r50k_base.tiktoken may already be, in the order tiktoken itself looks."""
    key = hashlib.sha1(R50K_URL.encode()).hexdigest()
    dirs = []
    for var in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
        if os.environ.get(var):
            dirs.append(Path(os.environ[var]))
            break
    else:
        dirs.append(Path(tempfile.gettempdir()) / "data-gym-cache")
    dirs.append(gptkit_vocab_dir())
    out = []
    for d in dirs:
        out += [d / key, d / R50K_FILENAME]
    return out


def gptkit_vocab_dir() -> Path:
    return paths.home() / "tiktoken"


def hf_vocab_candidates() -> list[Path]:
    """Directories that may hold GPT-2's vocab.json + merges.txt (from `gptkit download gpt2`)."""
    return [paths.data_dir(n) for n in ("gpt2", "openai-community/gpt2")]


def _load_tiktoken_file(path: Path) -> dict[bytes, int] | None:
    from tiktoken.load import load_tiktoken_bpe

    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != R50K_SHA256:
        return None  # a stale or foreign file: ignore it rather than use a wrong vocabulary
    return load_tiktoken_bpe(str(path))


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable unicode characters used in vocab.json."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def ranks_from_hf_dir(d: Path) -> dict[bytes, int] | None:
    """vocab.json + merges.txt (HF GPT-2 format) -> tiktoken mergeable ranks, or None if absent."""
    vocab_file, merges_file = d / "vocab.json", d / "merges.txt"
    if not (vocab_file.is_file() and merges_file.is_file()):
        return None
    decoder = {c: b for b, c in bytes_to_unicode().items()}
    vocab = json.loads(vocab_file.read_text(encoding="utf-8"))
    ranks = {}
    for token, idx in vocab.items():
        if token == "<|endoftext|>":
            continue
        ranks[bytes(decoder[c] for c in token)] = idx
    # GPT-2's ids are its merge ranks: bytes first, then merges in merges.txt order. Check that,
    # so a vocabulary of some other BPE is refused instead of silently mis-tokenising.
    merges = [ln for ln in merges_file.read_text(encoding="utf-8").splitlines() if ln and not ln.startswith("#version")]
    if len(ranks) != 256 + len(merges):
        raise GptkitError(f"{d}: vocab.json has {len(ranks)} tokens but merges.txt implies {256 + len(merges)}")
    for i, line in enumerate(merges[:100]):
        a, b = line.split(" ")
        if vocab.get(a + b) != 256 + i:
            raise GptkitError(f"{d}: vocab.json and merges.txt disagree at merge {i}; not a GPT-2 style BPE")
    return ranks


@functools.cache
def _gpt2() -> TiktokenTokenizer:
    import tiktoken

    def make(ranks, source):
        enc = tiktoken.Encoding(
            name="gpt2", pat_str=GPT2_PAT, mergeable_ranks=ranks, special_tokens={"<|endoftext|>": GPT2_EOT}
        )
        return TiktokenTokenizer("gpt2", enc, source, ranks_hash(ranks))

    for path in tiktoken_cache_candidates():
        if path.is_file():
            ranks = _load_tiktoken_file(path)
            if ranks is not None:
                return make(ranks, f"tiktoken cache ({path})")
    for d in hf_vocab_candidates():
        ranks = ranks_from_hf_dir(d)
        if ranks is not None:
            return make(ranks, f"vocab.json + merges.txt ({d})")
    if os.environ.get("HF_HUB_OFFLINE") == "1" or faults.active("hub.offline"):
        raise GptkitError(f"the GPT-2 vocabulary is not available offline; {FIX_HINT}")
    try:
        from tiktoken.load import load_tiktoken_bpe

        ranks = load_tiktoken_bpe(R50K_URL, expected_hash=R50K_SHA256)
    except Exception as e:  # noqa: BLE001 - network errors come in many types
        raise GptkitError(
            f"the GPT-2 vocabulary is not available offline and its download failed ({e.__class__.__name__}); {FIX_HINT}"
        ) from None
    return make(ranks, "tiktoken download")


def get_tokenizer(name: str) -> Tokenizer:
    if name == "gpt2":
        return _gpt2()
    if name == "bytes":
        return BytesTokenizer()
    raise GptkitError(f"unknown tokenizer {name!r}; choose one of: {', '.join(TOKENIZERS)}")


def gpt2_vocab_offline() -> str | None:
    """Where the GPT-2 vocabulary can be loaded from without the network, or None."""
    for path in tiktoken_cache_candidates():
        if path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == R50K_SHA256:
            return str(path)
    for d in hf_vocab_candidates():
        if (d / "vocab.json").is_file() and (d / "merges.txt").is_file():
            return str(d)
    return None


# Vocabulary size and end-of-text id of each built-in tokenizer, known without loading it (gpt2's
# BPE files may be absent, e.g. while converting a model). <|endoftext|> is GPT-2's last token.
VOCAB_SIZES = {"gpt2": GPT2_EOT + 1, "bytes": BytesTokenizer.vocab_size}
EOT_TOKENS = {"gpt2": GPT2_EOT, "bytes": BytesTokenizer.eot_token}
