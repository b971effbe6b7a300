"""Tokenizers: the real GPT-2 vocabulary (offline), its vocab.json + merges.txt route, bytes, and the no-vocab error."""

import hashlib

import numpy as np
import pytest
from conftest import assert_one_line_error, run_cli

from gptkit import tokenizer as tk
from gptkit.errors import GptkitError


@pytest.fixture
def fresh_gpt2():
    """Forget the process-wide cached GPT-2 tokenizer before and after a test that changes where it comes from."""
    tk._gpt2.cache_clear()
    yield
    tk._gpt2.cache_clear()


def test_gpt2_real_vocabulary():
    tok = tk.get_tokenizer("gpt2")
    assert tok.encode("Hello world") == [15496, 995]
    assert (tok.vocab_size, tok.eot_token) == (50257, 50256)
    text = "Ünïcödé, emoji 🙂 and <|endoftext|> as plain text\n\n  indented"
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert tok.eot_token not in ids  # special-token text is ordinary text when tokenizing documents
    # The bulk path used by `gptkit tokenize` gives the same ids without a Python list.
    arr = tok.encode_array(text)
    assert arr.dtype == np.uint32 and arr.tolist() == ids
    assert tok.decode_bytes([tok.eot_token]) == b"<|endoftext|>"


def test_vocab_json_and_merges_give_the_same_vocabulary(tmp_path, monkeypatch, fresh_gpt2):
    """A `gptkit download gpt2` folder (vocab.json + merges.txt) converts to exactly the r50k ranks."""
    from hubfixtures import gpt2_merges_from_ranks, write_gpt2_tokenizer_files

    ref = tk.get_tokenizer("gpt2")
    ranks = dict(ref.enc._mergeable_ranks)
    home = tmp_path / "home"
    repo = home / "data" / "gpt2"
    repo.mkdir(parents=True)
    assert write_gpt2_tokenizer_files(repo, ranks, gpt2_merges_from_ranks(ranks)) == 50256

    loaded = tk.ranks_from_hf_dir(repo)
    assert loaded == ranks
    assert tk.ranks_hash(loaded) == ref.vocab_hash

    # With no tiktoken file anywhere, resolution falls through to that folder and tokenizes identically.
    empty_cache = tmp_path / "empty-cache"
    empty_cache.mkdir()
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(empty_cache))
    monkeypatch.setenv("GPTKIT_HOME", str(home))
    monkeypatch.setenv("GPTKIT_FAULTS", "hub.offline=1")
    tk._gpt2.cache_clear()
    tok = tk.get_tokenizer("gpt2")
    assert "vocab.json" in tok.source
    assert tok.vocab_hash == ref.vocab_hash
    assert tok.encode("Hello world") == [15496, 995]
    assert tk.gpt2_vocab_offline() == str(repo)


def test_vocab_json_of_another_bpe_is_refused(tmp_path):
    """merges.txt that disagrees with vocab.json is refused rather than mis-tokenising silently."""
    d = tmp_path / "bad"
    d.mkdir()
    ranks = {bytes([b]): i for i, b in enumerate(tk.bytes_to_unicode())}
    ranks[b"ab"] = 256
    ranks[b"cd"] = 257
    from hubfixtures import write_gpt2_tokenizer_files

    write_gpt2_tokenizer_files(d, ranks, [(b"c", b"d"), (b"a", b"b")])  # merges in the wrong order
    with pytest.raises(GptkitError, match="disagree"):
        tk.ranks_from_hf_dir(d)


def test_stale_cache_file_is_skipped(tmp_path, monkeypatch, fresh_gpt2):
    """A tiktoken cache entry with the wrong hash is ignored; the next candidate (gptkit's copy) is used."""
    good = tk.gpt2_vocab_offline()
    assert good is not None
    cache = tmp_path / "cache"
    cache.mkdir()
    key = hashlib.sha1(tk.R50K_URL.encode()).hexdigest()
    (cache / key).write_bytes(b"IQ== 0\n")  # a valid-looking but wrong ranks file
    home = tmp_path / "home"
    (home / "tiktoken").mkdir(parents=True)
    (home / "tiktoken" / tk.R50K_FILENAME).write_bytes(open(good, "rb").read())
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    monkeypatch.setenv("GPTKIT_HOME", str(home))
    monkeypatch.setenv("GPTKIT_FAULTS", "hub.offline=1")
    tok = tk.get_tokenizer("gpt2")
    assert str(home / "tiktoken") in tok.source
    assert tok.encode("Hello world") == [15496, 995]


def test_bytes_tokenizer_round_trip():
    tok = tk.get_tokenizer("bytes")
    text = "To be, or not to be — ¿qué? 東京 🙂\n"
    ids = tok.encode(text)
    assert ids == list(text.encode("utf-8"))
    assert (tok.vocab_size, tok.eot_token) == (256, 0)
    assert tok.decode(ids) == text
    assert tok.encode("a\x00b") == [97, 98]  # NUL is the end-of-text id, never text
    assert tok.decode([tok.eot_token, *ids]) == text
    assert tok.encode_array(text).tolist() == ids


def test_unknown_tokenizer():
    with pytest.raises(GptkitError, match="choose one of: gpt2, bytes"):
        tk.get_tokenizer("llama")


def test_no_vocabulary_anywhere_names_the_fix(tmp_path, monkeypatch, fresh_gpt2):
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {"TIKTOKEN_CACHE_DIR": str(empty), "GPTKIT_HOME": str(empty), "GPTKIT_FAULTS": "hub.offline=1"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert tk.gpt2_vocab_offline() is None
    with pytest.raises(GptkitError, match="get_gpt2_vocab.py"):
        tk.get_tokenizer("gpt2")
    # The same from the command line: one line, no traceback; the bytes tokenizer needs nothing.
    line = assert_one_line_error(run_cli("tokenize", "pydoc", env=env))
    assert "scripts/get_gpt2_vocab.py" in line and "gptkit download gpt2" in line
    r = run_cli("tokenize", "pydoc", "--tokenizer", "bytes", "--json", env=env)
    assert r.returncode == 0, r.stderr
