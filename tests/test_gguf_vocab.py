"""Every vocabulary gptkit writes to GGUF is one llama.cpp loads (issue 22): a byte-level BPE with
tokenizer.ggml.merges (llama.cpp refuses a gpt2 tokenizer without that key), whose tokens and merges
split text into gptkit's own ids; a vocabulary it cannot express is refused before anything is
written. scripts/check_llamacpp.py runs the same files through llama.cpp itself."""

from __future__ import annotations

import json

import pytest
from test_convert import random_model
from test_vocab_files import TEXT, write_meta

from gptkit.checkpoint import save_checkpoint
from gptkit.errors import GptkitError
from gptkit.formats.convert import FIXED_STRINGS, convert, load
from gptkit.tokenizer import bytes_to_unicode, get_tokenizer

# llama.cpp's GPT-2 pre-tokenizer (LLAMA_VOCAB_PRE_TYPE_GPT2)
GPT2_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def llamacpp_bpe(tokens: list[str], merges: list[str]):
    """What llama.cpp's BPE tokenizer does with a GGUF's tokens and merges (llama-vocab.cpp): the key
    must be there; merges are ranked pairs whose parts and result need not be tokens; each
    pre-token's byte-level characters are merged lowest rank first; a piece that is not a token
    falls back to its single bytes, and a byte that is not a token is dropped."""
    import regex

    if not merges:
        raise ValueError("cannot find tokenizer merges in model file")
    ranks = {tuple(m.split(" ", 1)): i for i, m in enumerate(merges)}
    ids = {t: i for i, t in enumerate(tokens)}
    byte_char = bytes_to_unicode()

    def encode(text: str) -> list[int]:
        out = []
        for piece in regex.findall(GPT2_SPLIT, text):
            sym = [byte_char[b] for b in piece.encode("utf-8")]
            while len(sym) > 1:
                rank, k = min((ranks.get((sym[k], sym[k + 1]), len(ranks)), k) for k in range(len(sym) - 1))
                if rank == len(ranks):
                    break
                sym[k : k + 2] = [sym[k] + sym[k + 1]]
            for s in sym:
                out.extend(
                    [ids[s]] if s in ids else [ids[chr(b)] for b in s.encode("utf-8") if b < 128 and chr(b) in ids]
                )
        return out

    return encode


def ggml_fields(path):
    import gguf

    r = gguf.GGUFReader(str(path))

    def strings(key):
        f = r.fields.get(key)
        return [] if f is None else [bytes(f.parts[i]).decode() for i in f.data]

    return strings("tokenizer.ggml.model"), strings("tokenizer.ggml.tokens"), strings("tokenizer.ggml.merges")


@pytest.mark.parametrize("vocab", ["bytes", "chars"])
def test_bytes_and_characters_are_written_as_a_bpe_llamacpp_loads(vocab, tmp_path):
    tok = (
        get_tokenizer("bytes")
        if vocab == "bytes"
        else get_tokenizer(write_meta(tmp_path / "sc", sorted(set(TEXT + "é世"))))
    )
    model = random_model(vocab=tok.vocab_size, padded=tok.vocab_size, seed=1)
    save_checkpoint(tmp_path / "ck", model, config=model.config, tokenizer=tok)
    r = convert(tmp_path / "ck", tmp_path / "m.gguf")
    assert r.verification.tokenizer.status == "same ids" and not r.notes, r.notes
    kind, tokens, merges = ggml_fields(tmp_path / "m.gguf")
    assert kind == ["gpt2"] and len(tokens) == tok.vocab_size and merges  # the key llama.cpp needs
    # llama.cpp's tokenizer over these tokens and merges gives gptkit's ids
    theirs = llamacpp_bpe(tokens, merges)
    texts = [*FIXED_STRINGS, TEXT[:300] + " a1 é世"] if vocab == "bytes" else [TEXT[:300], "é世 " + TEXT[:40]]
    for text in texts:
        assert theirs(text) == tok.encode(text), text
    back = load(tmp_path / "m.gguf").tokenizer
    assert back.vocab_hash == tok.vocab_hash


def test_a_vocabulary_llamacpp_cannot_express_is_refused_before_writing(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["[UNK]", *sorted(set(TEXT.split()))]
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    (tmp_path / "wl").mkdir()
    tk.save(str(tmp_path / "wl" / "tokenizer.json"))
    tok = get_tokenizer(tmp_path / "wl" / "tokenizer.json")
    model = random_model(vocab=tok.vocab_size, padded=tok.vocab_size, seed=2)
    save_checkpoint(tmp_path / "ck", model, config=model.config, tokenizer=tok)
    with pytest.raises(GptkitError, match=r"llama\.cpp cannot read the .* vocabulary from a GGUF"):
        convert(tmp_path / "ck", tmp_path / "m.gguf")
    assert not (tmp_path / "m.gguf").exists()
    # a model without a tokenizer: refused too (llama.cpp refuses such a file), unless --tokenizer names one
    save_checkpoint(tmp_path / "bare", model, config=model.config, tokenizer="", extra={"tokenizer": None})
    assert json.loads((tmp_path / "bare" / "config.json").read_text())["tokenizer"] is None
    with pytest.raises(GptkitError, match="llama.cpp does not load a GGUF without one; name it with --tokenizer"):
        convert(tmp_path / "bare", tmp_path / "bare.gguf")
    assert not (tmp_path / "bare.gguf").exists()
