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
    """The small interface every command uses: encode, decode, eot_token, vocab_size, vocab_hash.

    `spec` is what `get_tokenizer` takes to build the same tokenizer again (a name, or a path), so
    worker processes can rebuild it; `vocab_hash` proves they did. `kind` is builtin, chars or hf.
    `eot_token` is None for vocabularies without one (nanoGPT's character vocabularies).
    `cut_safe`: plain text may be split where tokenize cuts it (see data/tokenize) without changing
    the tokens.
    """

    name: str
    kind: str = "builtin"
    spec: str
    vocab_size: int
    eot_token: int | None
    vocab_hash: str
    source: str
    cut_safe: bool = True

    def info(self) -> dict:
        """The tokenizer block written into manifests, run configs and checkpoints."""
        return {
            "name": self.name,
            "kind": self.kind,
            "vocab_size": self.vocab_size,
            "eot": self.eot_token,
            "vocab_hash": self.vocab_hash,
        }

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
    spec = "bytes"
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
        self.spec = name
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


def hub_offline() -> bool:
    """HF_HUB_OFFLINE (else TRANSFORMERS_OFFLINE) as huggingface_hub reads it: 1, on, yes or true, any case.

    The one reading of that variable in gptkit (here because the core may not import gptkit.hub).
    It is read at each call: huggingface_hub reads it once, at import, which may be before it was set.
    """
    from huggingface_hub.constants import ENV_VARS_TRUE_VALUES  # its own truthy set; ~4 ms, no torch

    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")
    return value is not None and value.upper() in ENV_VARS_TRUE_VALUES


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
    if hub_offline() or faults.active("hub.offline"):
        raise GptkitError(f"the GPT-2 vocabulary is not available offline; {FIX_HINT}")
    try:
        from tiktoken.load import load_tiktoken_bpe

        ranks = load_tiktoken_bpe(R50K_URL, expected_hash=R50K_SHA256)
    except Exception as e:  # noqa: BLE001 - network errors come in many types
        raise GptkitError(
            f"the GPT-2 vocabulary is not available offline and its download failed ({e.__class__.__name__}); {FIX_HINT}"
        ) from None
    return make(ranks, "tiktoken download")


def get_tokenizer(spec: str | Path) -> Tokenizer:
    """A tokenizer by name (gpt2, bytes) or from files a user brings: a tokenizer.json, a directory
    with tokenizer.json or vocab.json + merges.txt, nanoGPT's meta.pkl (or its data directory), or
    a `tokenizer/` folder gptkit saved."""
    name = str(spec)
    if name == "gpt2":
        return _gpt2()
    if name == "bytes":
        return BytesTokenizer()
    path = Path(name).expanduser()
    if not path.exists() and ("/" in name or path.suffix in (".json", ".pkl", ".txt", ".model")):
        raise GptkitError(f"{name}: no such tokenizer file or directory")
    if not path.exists():
        raise GptkitError(
            f"unknown tokenizer {name!r}; choose one of: {', '.join(TOKENIZERS)}, or give a tokenizer.json, "
            "a vocab.json + merges.txt directory or a nanoGPT meta.pkl"
        )
    return _from_files(path.resolve())


def _from_files(path: Path) -> Tokenizer:
    from gptkit import vocab_files as vf

    if path.is_dir() and (path / vf.SAVED_INFO).is_file():
        return load_saved(path)
    meta = path if path.name == "meta.pkl" else path / "meta.pkl"
    if meta.is_file() and not (path.is_dir() and (path / vf.HF_FILE).is_file()):
        chars = vf.chars_from_meta(vf.read_meta_pkl(meta), meta)
        return CharTokenizer(chars, None, spec=str(meta), source=f"nanoGPT meta.pkl ({meta})")
    if path.is_file() and path.suffix == ".json" and path.name == vf.CHARS_FILE:
        d = json.loads(path.read_text(encoding="utf-8"))
        return CharTokenizer(d["chars"], d.get("eot"), spec=str(path), source=f"character vocabulary ({path})")
    if path.is_dir() and _is_gpt2(path):
        return _gpt2()  # GPT-2's own files: the same vocabulary through tiktoken, which is faster
    tk = vf.load_hf_tokenizer(path)
    return HFTokenizer(tk, spec=str(path), source=f"Hugging Face tokenizer ({path})")


def _is_gpt2(d: Path) -> bool:
    try:
        ranks = ranks_from_hf_dir(d)
    except GptkitError:
        return False
    return ranks is not None and len(ranks) == GPT2_EOT and ranks_hash(ranks) == _gpt2().vocab_hash


class CharTokenizer(Tokenizer):
    """A character vocabulary: one id per character (nanoGPT's shakespeare_char has 65)."""

    kind = "chars"

    def __init__(self, chars: list[str], eot: int | None, *, spec: str, source: str):
        from gptkit.vocab_files import chars_hash

        self.chars = list(chars)
        self.stoi = {c: i for i, c in enumerate(self.chars)}
        self.name = f"chars-{len(self.chars)}"
        self.vocab_size = len(self.chars)
        self.eot_token = eot
        self.vocab_hash = chars_hash(self.chars)
        self.spec, self.source = spec, source

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[c] for c in text]
        except KeyError as e:
            raise GptkitError(f"character {e.args[0]!r} is not in the {self.name} vocabulary ({self.source})") from None

    def decode_bytes(self, ids) -> bytes:
        return "".join(self.chars[int(i)] for i in ids if 0 <= int(i) < self.vocab_size).encode("utf-8")


class HFTokenizer(Tokenizer):
    """Any Hugging Face `tokenizers` model (BPE, WordPiece, Unigram, ...) from the user's files."""

    kind = "hf"

    def __init__(self, tk, *, spec: str, source: str):
        from gptkit.vocab_files import EOT_NAMES, hf_vocab_hash

        self.tk = tk
        self.vocab_size = tk.get_vocab_size(with_added_tokens=True)
        vocab = tk.get_vocab(with_added_tokens=True)
        self.eot_token = next((vocab[t] for t in EOT_NAMES if t in vocab), None)
        self.vocab_hash = hf_vocab_hash(tk)
        self.name = f"hf-{self.vocab_hash[:8]}"
        self.spec, self.source = spec, source
        # Byte-level BPE with GPT-2's pre-tokenizer splits text exactly where GPT-2's does; any
        # other pre-tokenizer might join text across tokenize's cut points, so files stay whole.
        spec_json = json.loads(tk.to_str())
        self._added = {a["content"] for a in spec_json.get("added_tokens") or []}
        pre = spec_json.get("pre_tokenizer") or {}
        self.byte_level = pre.get("type") == "ByteLevel" and pre.get("use_regex", True)
        self.cut_safe = self.byte_level and not pre.get("add_prefix_space", False)
        if self.byte_level:
            self._byte_of = {c: b for b, c in bytes_to_unicode().items()}

    def encode(self, text: str) -> list[int]:
        return self.tk.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tk.encode_batch(texts, add_special_tokens=False)]

    def decode_bytes(self, ids) -> bytes:
        ids = [int(i) for i in ids if 0 <= int(i) < self.vocab_size]
        if self.byte_level:  # exact bytes, so a character split across tokens streams correctly
            out = bytearray()
            for i in ids:
                piece = self.tk.id_to_token(i)
                if piece is None:
                    continue
                if piece in self._added:
                    out += piece.encode("utf-8")
                    continue
                try:
                    out += bytes(self._byte_of[c] for c in piece)
                except KeyError:  # an added token written as plain text
                    out += piece.encode("utf-8")
            return bytes(out)
        return self.tk.decode(ids, skip_special_tokens=False).encode("utf-8")


def save_tokenizer(tok: Tokenizer, folder: Path) -> None:
    """Write what it takes to load `tok` again into FOLDER (a `tokenizer/` folder beside shards, a
    run or a checkpoint). Built-in tokenizers need only their info."""
    from gptkit import vocab_files as vf
    from gptkit.fsutil import write_json_atomic

    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(tok, CharTokenizer):
        write_json_atomic(folder / vf.CHARS_FILE, {"chars": tok.chars, "eot": tok.eot_token})
    elif isinstance(tok, HFTokenizer):
        tmp = folder / f".{vf.HF_FILE}.tmp"
        tok.tk.save(str(tmp))
        tmp.replace(folder / vf.HF_FILE)
    write_json_atomic(folder / vf.SAVED_INFO, tok.info())


def load_saved(folder: Path, expected: dict | None = None) -> Tokenizer:
    """The tokenizer saved in FOLDER, checked against its recorded info (and `expected`, the block a
    manifest or checkpoint holds): a different vocabulary is an error, never a silent swap."""
    from gptkit import vocab_files as vf

    info = json.loads((folder / vf.SAVED_INFO).read_text(encoding="utf-8"))
    kind = info.get("kind", "builtin")
    if kind == "builtin":
        tok = get_tokenizer(info["name"])
    elif kind == "chars":
        d = json.loads((folder / vf.CHARS_FILE).read_text(encoding="utf-8"))
        tok = CharTokenizer(d["chars"], d.get("eot"), spec=str(folder), source=f"saved character vocabulary ({folder})")
    elif kind == "hf":
        tok = HFTokenizer(
            vf.load_hf_tokenizer(folder / vf.HF_FILE), spec=str(folder), source=f"saved tokenizer ({folder})"
        )
    else:
        raise GptkitError(f"{folder}: unknown tokenizer kind {kind!r}")
    for want in (info, expected):
        if want and want.get("vocab_hash") and want["vocab_hash"] != tok.vocab_hash:
            raise GptkitError(
                f"{folder}: the tokenizer files do not match the recorded vocabulary (hash {want['vocab_hash'][:12]}…); "
                "they were changed or mixed up"
            )
    return tok


def tokenizer_for(block: dict | str, folder: Path | None, where: str) -> Tokenizer:
    """The tokenizer a manifest, run or checkpoint records: its saved `tokenizer/` folder when
    there is one, else the built-in it names, checked by hash either way."""
    from gptkit.vocab_files import SAVED_DIR, SAVED_INFO

    info = {"name": block} if isinstance(block, str) else dict(block)
    if folder is not None and (folder / SAVED_DIR / SAVED_INFO).is_file():
        return load_saved(folder / SAVED_DIR, info)
    if info.get("kind", "builtin") != "builtin" or info.get("name") not in TOKENIZERS:
        raise GptkitError(
            f"{where}: uses tokenizer {info.get('name')!r}, whose files are missing "
            f"(expected a {SAVED_DIR}/ folder beside it)"
        )
    tok = get_tokenizer(info["name"])
    if info.get("vocab_hash") and info["vocab_hash"] != tok.vocab_hash:
        raise GptkitError(f"{where}: recorded {info['name']} vocabulary differs from the one found here ({tok.source})")
    return tok


def same_vocabulary(recorded: dict | str | None, other: dict | Tokenizer) -> bool:
    """Whether the tokenizer a checkpoint, run or manifest records (its info block, or a bare name)
    is `other` (a Tokenizer, or another such block): the one identity rule every check uses.

    Both sides record a vocabulary hash: equal hashes. A side without one (a gptkit 0.1 checkpoint
    names only its tokenizer; llm.c shards without a manifest assume gpt2) matches only by the name
    of a built-in (gpt2, bytes), whose name fixes its vocabulary. Any other name (chars-65, hf-...)
    says too little, and without a hash it never matches: two 65-character vocabularies share a
    name and a size."""
    mine = recorded if isinstance(recorded, dict) else {"name": recorded}
    theirs = other.info() if isinstance(other, Tokenizer) else other
    if mine.get("vocab_hash") and theirs.get("vocab_hash"):
        return mine["vocab_hash"] == theirs["vocab_hash"]
    return mine.get("name") == theirs.get("name") and mine.get("name") in TOKENIZERS


def vocabulary_label(block: dict | str | None) -> str:
    """How messages name a recorded tokenizer: 'chars-65' (3f0c2d9a1b7e…), or the bare name."""
    info = block if isinstance(block, dict) else {"name": block}
    h = info.get("vocab_hash")
    return f"{info.get('name')!r} ({h[:12]}…)" if h else repr(info.get("name"))


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
