"""Tokenizers that users bring: character vocabularies and Hugging Face BPE files.

A tokenizer is identified by its content (`vocab_hash`, a hash of the vocabulary itself), never by a
name alone, and is saved next to whatever it produced (shards, runs, checkpoints, exports) as a
`tokenizer/` folder that `load_saved` reads back and checks against the recorded hash.

- chars: a character vocabulary, as nanoGPT's shakespeare_char keeps it in meta.pkl
  ({'vocab_size', 'itos', 'stoi'}). meta.pkl is read without unpickling anything but plain
  dicts, lists, ints and strings: any class or function reference in it is refused.
- hf: any Hugging Face `tokenizers` model, from a tokenizer.json, or GPT-2-style vocab.json +
  merges.txt, through the `tokenizers` library.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
from pathlib import Path
from typing import Any

from gptkit.errors import GptkitError

SAVED_DIR = "tokenizer"  # the folder saved next to shards, runs and checkpoints
SAVED_INFO = "gptkit-tokenizer.json"  # the info block (name, kind, vocab_size, eot, vocab_hash)
CHARS_FILE = "chars.json"
HF_FILE = "tokenizer.json"
EOT_NAMES = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>", "<|eos|>", "[EOS]")


class _PlainUnpickler(pickle.Unpickler):
    """Unpickles plain data only: dict, list, tuple, str, int, float, bool, None need no class lookup."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only plain data is allowed")


def read_meta_pkl(path: Path) -> dict:
    """nanoGPT's meta.pkl as a dict, refusing anything but plain data (never runs code)."""
    try:
        obj = _PlainUnpickler(io.BytesIO(path.read_bytes())).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise GptkitError(f"{path}: not a plain nanoGPT meta.pkl ({e})") from None
    if not isinstance(obj, dict):
        raise GptkitError(f"{path}: not a nanoGPT meta.pkl (holds {type(obj).__name__}, not a dict)")
    return obj


def chars_from_meta(meta: dict, where: Path) -> list[str]:
    """The id -> character table of a nanoGPT character vocabulary."""
    itos = meta.get("itos")
    if isinstance(itos, dict) and all(isinstance(k, int) and isinstance(v, str) for k, v in itos.items()):
        n = len(itos)
        if sorted(itos) != list(range(n)):
            raise GptkitError(f"{where}: itos ids are not 0..{n - 1}")
        chars = [itos[i] for i in range(n)]
    elif isinstance(itos, list) and all(isinstance(v, str) for v in itos):
        chars = list(itos)
    else:
        raise GptkitError(f"{where}: no character table (itos) found; only character vocabularies are supported")
    if "vocab_size" in meta and meta["vocab_size"] != len(chars):
        raise GptkitError(f"{where}: vocab_size {meta['vocab_size']} but itos has {len(chars)} entries")
    if len(set(chars)) != len(chars):
        raise GptkitError(f"{where}: the character table repeats a character")
    return chars


def chars_hash(chars: list[str]) -> str:
    return hashlib.sha256(json.dumps({"chars": chars}, ensure_ascii=False).encode("utf-8")).hexdigest()


def hf_vocab_hash(tk: Any) -> str:
    """A hash of the model's vocabulary (and merges, for BPE) plus special tokens: equal for equal
    vocabularies however they were loaded (tokenizer.json or vocab.json + merges.txt)."""
    spec = json.loads(tk.to_str())
    model = spec.get("model", {})
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    added = sorted((a["id"], a["content"]) for a in spec.get("added_tokens") or [])
    body = {
        "type": model.get("type"),
        "vocab": sorted(tk.get_vocab(with_added_tokens=False).items()),
        "merges": merges,
        "added": added,
    }
    return hashlib.sha256(json.dumps(body, ensure_ascii=False).encode("utf-8")).hexdigest()


def load_hf_tokenizer(path: Path) -> Any:
    """A `tokenizers.Tokenizer` from tokenizer.json, or a directory with tokenizer.json or vocab.json + merges.txt."""
    try:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    except ImportError:
        raise GptkitError("Hugging Face tokenizers need the `tokenizers` package: pip install tokenizers") from None
    file = path if path.is_file() else path / HF_FILE
    try:
        if file.is_file():
            return Tokenizer.from_file(str(file))
        vocab, merges = path / "vocab.json", path / "merges.txt"
        if vocab.is_file() and merges.is_file():
            tk = Tokenizer(models.BPE.from_file(str(vocab), str(merges)))
            # GPT-2-style files: byte-level pre-tokenisation and decoding, no prefix space
            tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
            tk.decoder = decoders.ByteLevel()
            specials = [t for t in EOT_NAMES if t in json.loads(vocab.read_text(encoding="utf-8"))]
            if specials:
                tk.add_special_tokens(specials)
            return tk
    except Exception as e:  # the Rust library raises plain Exception for malformed files
        raise GptkitError(f"{path}: not a readable Hugging Face tokenizer ({str(e).splitlines()[0][:200]})") from None
    raise GptkitError(f"{path}: no tokenizer.json, nor vocab.json + merges.txt")
