"""Tokenizers users bring: nanoGPT character vocabularies and Hugging Face BPE files."""

from __future__ import annotations

import json
import os
import pickle

import pytest

from gptkit.errors import GptkitError
from gptkit.tokenizer import CharTokenizer, HFTokenizer, get_tokenizer, load_saved, save_tokenizer, tokenizer_for

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n"


def write_meta(folder, chars):
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"vocab_size": len(chars), "itos": dict(enumerate(chars)), "stoi": {c: i for i, c in enumerate(chars)}}
    (folder / "meta.pkl").write_bytes(pickle.dumps(meta))
    return folder / "meta.pkl"


def train_bpe(folder, vocab_size=300):
    """A small byte-level BPE trained by the `tokenizers` library itself, saved as tokenizer.json."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator([TEXT * 20, "héllo wörld 你好"], trainer)
    folder.mkdir(parents=True, exist_ok=True)
    tk.save(str(folder / "tokenizer.json"))
    return folder


def test_meta_pkl_character_vocabulary(tmp_path):
    chars = sorted(set(TEXT))
    tok = get_tokenizer(write_meta(tmp_path / "shakespeare_char", chars))
    assert isinstance(tok, CharTokenizer) and tok.vocab_size == len(chars) and tok.eot_token is None
    assert tok.encode("First") == [chars.index(c) for c in "First"]
    assert tok.decode(tok.encode(TEXT)) == TEXT
    # the data directory works as well as the file
    assert get_tokenizer(tmp_path / "shakespeare_char").vocab_hash == tok.vocab_hash
    with pytest.raises(GptkitError, match="'Z' is not in"):
        tok.encode("Zebra")


def test_meta_pkl_with_code_is_refused_without_running_it(tmp_path):
    d = tmp_path / "evil"
    d.mkdir()
    (d / "meta.pkl").write_bytes(pickle.dumps({"itos": {0: "a"}, "hook": os.system}))
    with pytest.raises(GptkitError, match="refusing to load posix.system|refusing to load nt.system"):
        get_tokenizer(d)


def test_hf_bpe_matches_transformers(tmp_path):
    from transformers import PreTrainedTokenizerFast

    folder = train_bpe(tmp_path / "bpe")
    tok = get_tokenizer(folder)
    ref = PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"))
    for s in (TEXT, "héllo wörld 你好", "  spaces\tand\nlines  "):
        assert tok.encode(s) == ref.encode(s, add_special_tokens=False)
        assert tok.decode(tok.encode(s)) == s
    assert isinstance(tok, HFTokenizer) and tok.vocab_size == 300
    assert tok.eot_token == ref.convert_tokens_to_ids("<|endoftext|>")
    # a character split across byte tokens comes back whole once its bytes are joined
    ids = tok.encode("你")
    assert b"".join(tok.decode_bytes([i]) for i in ids).decode() == "你"


def test_saved_tokenizer_round_trips_and_is_checked(tmp_path):
    for tok in (
        get_tokenizer(train_bpe(tmp_path / "bpe")),
        get_tokenizer(write_meta(tmp_path / "c", sorted(set(TEXT)))),
    ):
        folder = tmp_path / f"saved-{tok.kind}"
        save_tokenizer(tok, folder)
        back = load_saved(folder)
        assert back.vocab_hash == tok.vocab_hash and back.encode(TEXT) == tok.encode(TEXT)
        with pytest.raises(GptkitError, match="do not match"):
            load_saved(folder, {"vocab_hash": "0" * 64})


def test_recorded_tokenizer_without_its_files_is_an_error(tmp_path):
    with pytest.raises(GptkitError, match="files are missing"):
        tokenizer_for({"name": "hf-1234", "kind": "hf", "vocab_hash": "ab"}, tmp_path, "checkpoint")
    gpt2 = tokenizer_for({"name": "bytes"}, tmp_path, "checkpoint")
    assert gpt2.name == "bytes"
    info = json.loads(json.dumps(gpt2.info()))
    assert info["kind"] == "builtin" and info["vocab_size"] == 256


def train_other(folder, kind):
    """A WordPiece or Unigram tokenizer, trained by the `tokenizers` library, saved as tokenizer.json."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if kind == "wordpiece":
        tk = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tk.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(vocab_size=200, special_tokens=["[UNK]", "<|endoftext|>"])
    else:
        tk = Tokenizer(models.Unigram())
        tk.decoder = decoders.Metaspace()
        trainer = trainers.UnigramTrainer(vocab_size=150, special_tokens=["<|endoftext|>"], unk_token="<unk>")
    tk.pre_tokenizer = pre_tokenizers.Metaspace() if kind == "unigram" else pre_tokenizers.Whitespace()
    tk.train_from_iterator([TEXT * 20], trainer)
    folder.mkdir(parents=True, exist_ok=True)
    tk.save(str(folder / "tokenizer.json"))
    return folder


@pytest.mark.parametrize("kind", ["wordpiece", "unigram"])
def test_other_tokenizers_models_tokenize_train_sample_and_convert(tmp_path, gptkit_home, kind, trains):
    """Not only BPE: a WordPiece or Unigram tokenizer.json gives transformers' ids, rides in the
    shards' manifest and the checkpoint, and comes out of `convert --to hf` for AutoTokenizer."""
    from conftest import run_cli, tiny_training
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    from gptkit.data.tokenize import Settings, tokenize
    from gptkit.formats.convert import convert, load

    folder = train_other(tmp_path / kind, kind)
    tok = get_tokenizer(folder)
    ref = PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"))
    for s in (TEXT, "Speak, speak."):
        assert tok.encode(s) == ref.encode(s, add_special_tokens=False)

    src = tmp_path / "src"
    src.mkdir()
    (src / "docs.jsonl").write_text("\n".join(json.dumps({"text": TEXT}) for _ in range(40)) + "\n")
    result = tokenize(str(src), tmp_path / "shards", Settings(tokenizer=str(folder), val_tokens=64), workers=1)
    manifest = json.loads((result.out / "manifest.json").read_text())
    assert manifest["tokenizer"]["vocab_hash"] == tok.vocab_hash

    train = tiny_training(
        preset=None, n_layer=1, n_head=2, n_embd=32, micro_batch=2, batch_tokens=64, max_steps=2, eval_every=2,
        eval_tokens=64, sample_every=2, checkpoint_every=2,
    )  # fmt: skip
    trains.cli("--data", result.out, "--name", kind, *train, env={"OMP_NUM_THREADS": "1"}, check=True)
    ck = gptkit_home / "runs" / kind / "step_000002"
    assert load(ck).tokenizer.vocab_hash == tok.vocab_hash
    # a two-step model may well draw end-of-text first (a small vocabulary, one per document)
    r = run_cli("sample", "Speak", "--model", ck, "-n", "4", "--ignore-eot", "--device", "cpu", "--json", check=True)
    assert json.loads(r.stdout)["samples"][0]["tokens"] == 4
    out = convert(ck, tmp_path / "hf", to="hf")
    assert out.verification.tokenizer.status == "same ids"
    theirs = AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert theirs.encode(TEXT, add_special_tokens=False) == tok.encode(TEXT)
