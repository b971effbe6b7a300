"""Tokenizers as data through tokenize -> shards -> train -> checkpoints, and other tools' shards read
in place: nanoGPT's character data (train.bin/val.bin + meta.pkl), Hugging Face BPE files checked
against transformers, llm.c / modded-nanogpt shard folders written by the test to llm.c's layout."""

from __future__ import annotations

import json
import pickle
import re

import numpy as np
import pytest
from conftest import assert_one_line_error, run_cli, tiny_training
from test_vocab_files import TEXT, train_bpe, write_meta

from gptkit.data import shards
from gptkit.data import tokenize as tz
from gptkit.errors import GptkitError
from gptkit.tokenizer import get_tokenizer, tokenizer_for

LLMC_MAGIC, LLMC_VERSION = 20240520, 1
TRAIN_FLAGS = tiny_training(
    batch_tokens=128, micro_batch=4, max_steps=3, warmup_steps=1, eval_every=3, eval_tokens=64, sample_every=3,
    checkpoint_every=3,
)  # fmt: skip
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def error_line(r):
    """A user error after notes (which tokenizer was assumed): one `gptkit: error:` line, no traceback."""
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("gptkit: error:")]
    assert len(errors) == 1 and r.stderr.strip().splitlines()[-1] == errors[0], r.stderr
    return errors[0]


def all_tokens(d, tokenizer=None):
    val, train, m = shards.find_shards(d, tokenizer)
    v, t = (np.concatenate([np.asarray(shards.open_shard(p)) for p in ps]) for ps in (val, train))
    return shards.source_order(v, t, m.get("validation")), m  # the source's order, validation put back


def write_llmc_shard(path, tokens, version=LLMC_VERSION, magic=LLMC_MAGIC):
    """llm.c's layout (dev/data/data_common.py): 256 int32 header (magic, version, count), uint16 tokens."""
    header = np.zeros(256, dtype="<i4")
    header[0], header[1], header[2] = magic, version, len(tokens)
    path.write_bytes(header.tobytes() + np.asarray(tokens, dtype="<u2").tobytes())


def nanogpt_char_dir(folder, text):
    """nanoGPT's data/shakespeare_char after prepare.py: input.txt, train.bin/val.bin (raw uint16), meta.pkl."""
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    write_meta(folder, chars)
    ids = np.array([stoi[c] for c in text], dtype=np.uint16)
    n = int(len(ids) * 0.9)
    ids[:n].tofile(folder / "train.bin")
    ids[n:].tofile(folder / "val.bin")
    (folder / "input.txt").write_text(text)
    return chars, ids[:n], ids[n:]


def ckpt_tokenizer_hash(ck):
    return json.loads((ck / "tokenizer" / "gptkit-tokenizer.json").read_text())["vocab_hash"]


# --------------------------------------------------------------------------- nanoGPT character data


def test_nanogpt_char_data_tokenize_train_checkpoint(tmp_path, gptkit_home, trains):
    text = TEXT * 40
    chars, train_ids, val_ids = nanogpt_char_dir(tmp_path / "shakespeare_char", text)
    out = tmp_path / "shards"
    r = run_cli("tokenize", tmp_path / "shakespeare_char", "-o", out, "--json", check=True)
    assert "meta.pkl" in r.stderr and "input.txt" in r.stderr  # which vocabulary, and which files, said
    toks, m = all_tokens(out)
    assert m["version"] == shards.MANIFEST_VERSION == 3
    assert m["tokenizer"]["vocab_size"] == len(chars) and m["tokenizer"]["kind"] == "chars"
    assert m["tokenizer"]["eot"] is None and m["tokenizer"]["name"] == f"chars-{len(chars)}"
    assert np.array_equal(toks, np.concatenate([val_ids, train_ids]))
    saved = json.loads((out / "tokenizer" / "chars.json").read_text())
    assert saved["chars"] == chars
    assert tokenizer_for(m["tokenizer"], out, "shards").decode(toks[: len(text)]) in text + text
    assert run_cli("tokenize", "--verify", out, check=True).stdout.startswith("ok:")
    # gptkit's own shards converted again keep the vocabulary saved beside them
    again = tz.tokenize(str(out), tmp_path / "again")
    assert again.manifest["tokenizer"] == m["tokenizer"] and np.array_equal(all_tokens(tmp_path / "again")[0], toks)

    r = trains.cli("--data", out, "--name", "char", *TRAIN_FLAGS, env=ONE_THREAD, check=True)
    run = gptkit_home / "runs" / "char"
    ck = run / "step_000003"
    meta = json.loads((ck / "config.json").read_text())
    assert meta["tokenizer"] == m["tokenizer"]["name"] and meta["tokenizer_info"] == m["tokenizer"]
    assert meta["model"]["vocab_size"] == len(chars)
    assert ckpt_tokenizer_hash(ck) == ckpt_tokenizer_hash(run) == m["tokenizer"]["vocab_hash"]
    from gptkit.checkpoint import load_checkpoint

    tok = load_checkpoint(ck).load_tokenizer()
    assert tok.vocab_hash == m["tokenizer"]["vocab_hash"] and tok.kind == "chars"
    # The default prompt has characters this vocabulary lacks: samples start from a newline, said once,
    # and decode to this vocabulary's characters (GPT-2's decoder would give other text).
    assert "samples start from a newline" in r.stdout + r.stderr
    samples = [json.loads(ln)["sample"] for ln in (run / "metrics.jsonl").read_text().splitlines() if "sample" in ln]
    assert samples and all(set(s) <= set(chars) for s in samples) and samples[0].startswith("\n")
    # The characters padded to 64 rows: the logged validation loss is over the real vocabulary, the
    # figure `gptkit eval` gives for the same weights (with the padded rows it is ~ln(64/V) higher)
    from gptkit.evaluate import evaluate

    logged = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    logged_val = [m["val_loss"] for m in logged if m.get("step") == 3 and "val_loss" in m]
    assert meta["model"]["padded_vocab_size"] == 64 > len(chars) + 10 and len(logged_val) == 1
    assert evaluate(ck, data=out, tokens=64).val_loss == pytest.approx(logged_val[0], abs=0.02)


def test_nanogpt_bin_without_meta_assumes_gpt2_and_says_so(tmp_path):
    d = tmp_path / "openwebtext"
    d.mkdir()
    rng = np.random.default_rng(0)
    rng.integers(0, 50257, 3000).astype(np.uint16).tofile(d / "train.bin")
    rng.integers(0, 50257, 500).astype(np.uint16).tofile(d / "val.bin")
    notes = []
    r = tz.tokenize(str(d), tmp_path / "o", log=notes.append)
    assert r.manifest["tokenizer"]["name"] == "gpt2"
    assert any("assuming GPT-2" in n for n in notes)
    # an id beyond GPT-2's vocabulary: an error naming the file
    bad = np.fromfile(d / "train.bin", "<u2")
    bad[100] = 60000
    bad.tofile(d / "train.bin")
    line = error_line(run_cli("tokenize", d, "-o", tmp_path / "o2"))
    assert str(d / "train.bin") in line and "60000" in line and not (tmp_path / "o2").exists()


def test_meta_pkl_wins_over_another_tokenizer(tmp_path):
    nanogpt_char_dir(tmp_path / "sc", TEXT * 5)
    with pytest.raises(GptkitError, match="meta.pkl says the token ids are of the chars-"):
        tz.tokenize(str(tmp_path / "sc" / "train.bin"), tmp_path / "o", tz.Settings(tokenizer="bytes"))


def test_token_file_with_a_bad_header_is_named_not_dropped(tmp_path):
    d = tmp_path / "tokens"
    d.mkdir()
    rng = np.random.default_rng(1)
    write_llmc_shard(d / "fineweb_val_000000.bin", rng.integers(0, 50257, 400))
    write_llmc_shard(d / "fineweb_train_000001.bin", rng.integers(0, 50257, 900))
    write_llmc_shard(d / "fineweb_train_000002.bin", rng.integers(0, 50257, 900), magic=12345)
    line = error_line(run_cli("tokenize", d, "-o", tmp_path / "o"))
    assert "fineweb_train_000002.bin" in line and "magic 12345" in line and not (tmp_path / "o").exists()


# --------------------------------------------------------------------------- Hugging Face BPE files


def test_hf_bpe_shards_equal_transformers_encoding(tmp_path):
    from transformers import PreTrainedTokenizerFast

    folder = train_bpe(tmp_path / "bpe")
    ref = PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"))
    eot = ref.convert_tokens_to_ids("<|endoftext|>")
    docs = [TEXT * (i % 5 + 1) + f"héllo {i} wörld 你好" for i in range(40)]
    docs[7] = ""  # a lone end-of-text token
    src = tmp_path / "src"
    src.mkdir()
    (src / "docs.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    settings = tz.Settings(tokenizer=str(folder), shard_tokens=3000, val_tokens=1000)
    r = tz.tokenize(str(src), tmp_path / "o", settings, workers=2, unit_bytes=2000)
    toks, m = all_tokens(tmp_path / "o")
    want = [t for d in docs for t in [eot, *ref.encode(d, add_special_tokens=False)]]
    assert toks.tolist() == want
    assert m["tokenizer"]["kind"] == "hf" and m["tokenizer"]["vocab_size"] == 300 and m["tokenizer"]["eot"] == eot
    assert m["totals"]["documents"] == len(docs)
    back = tokenizer_for(m["tokenizer"], tmp_path / "o", "shards")  # the saved tokenizer.json, hash-checked
    assert back.vocab_hash == r.manifest["tokenizer"]["vocab_hash"] and back.encode(docs[3]) == ref.encode(
        docs[3], add_special_tokens=False
    )
    shards.verify(tmp_path / "o")
    # the saved files altered: verify says so
    j = json.loads((tmp_path / "o" / "tokenizer" / "tokenizer.json").read_text())
    j["model"]["vocab"]["zzz"] = j["model"]["vocab"].pop(next(iter(j["model"]["vocab"])))
    (tmp_path / "o" / "tokenizer" / "tokenizer.json").write_text(json.dumps(j))
    with pytest.raises(GptkitError, match="do not match the recorded vocabulary"):
        shards.verify(tmp_path / "o")


def metaspace_bpe(folder):
    """A SentencePiece-style BPE (Metaspace: a '▁' before the text): cutting text changes its tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Metaspace()
    tk.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=200, special_tokens=["<unk>", "</s>"], show_progress=False)
    tk.train_from_iterator([TEXT * 20], trainer)
    folder.mkdir(parents=True, exist_ok=True)
    tk.save(str(folder / "tokenizer.json"))
    return folder


def test_text_files_stay_whole_when_cuts_could_change_tokens(tmp_path):
    from transformers import PreTrainedTokenizerFast

    folder = metaspace_bpe(tmp_path / "sp")
    tok = get_tokenizer(folder)
    assert not tok.cut_safe and tok.eot_token is not None
    ref = PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"))
    text = TEXT * 30
    # The test can fail: encoding two pieces cut at a newline differs from encoding the whole.
    cut = text.index("\n", 200) + 1
    whole = ref.encode(text, add_special_tokens=False)
    assert ref.encode(text[:cut], add_special_tokens=False) + ref.encode(text[cut:], add_special_tokens=False) != whole
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "a.txt").write_text(text)
    (tmp_path / "t" / "b.txt").write_text(text[:500])
    settings = tz.Settings(tokenizer=str(folder), shard_tokens=2000, val_tokens=500)
    tz.tokenize(str(tmp_path / "t"), tmp_path / "o", settings, workers=2, unit_bytes=300)
    toks, _ = all_tokens(tmp_path / "o")
    eot = tok.eot_token
    assert toks.tolist() == [eot, *whole, eot, *ref.encode(text[:500], add_special_tokens=False)]


# --------------------------------------------------------------------------- documents and versions


def test_empty_document_is_a_lone_eot_and_char_vocabularies_join_documents(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    docs = ["First", "", "All:", "speak"] * 3
    (src / "d.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    tz.tokenize(str(src), tmp_path / "b", tz.Settings(tokenizer="bytes"), workers=1)
    toks, m = all_tokens(tmp_path / "b")
    assert toks.tolist() == [x for d in docs for x in [0, *d.encode()]]
    assert m["totals"]["documents"] == len(docs)
    # A character vocabulary has no end-of-text token: documents joined, said once.
    meta = write_meta(tmp_path / "chars", sorted(set(TEXT)))
    notes = []
    tz.tokenize(str(src), tmp_path / "c", tz.Settings(tokenizer=str(meta)), workers=2, log=notes.append)
    toks, m = all_tokens(tmp_path / "c")
    tok = get_tokenizer(meta)
    assert toks.tolist() == tok.encode("".join(docs)) and m["totals"]["documents"] == 0
    assert sum("no end-of-text token" in n for n in notes) == 1
    shards.verify(tmp_path / "c")
    # A character outside the vocabulary: one line naming it and the file.
    (src / "d.jsonl").write_text(json.dumps({"text": "Zebra"}) + "\n")
    line = error_line(run_cli("tokenize", src, "--tokenizer", meta, "-o", tmp_path / "z"))
    assert "'Z'" in line and str(src / "d.jsonl") in line


def test_version_1_manifest_still_reads_and_is_not_resumed_into_version_2(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "d.jsonl").write_text("".join(json.dumps({"text": f"doc {i} " * 30}) + "\n" for i in range(40)))
    out = tmp_path / "o"
    s = tz.Settings(tokenizer="bytes", shard_tokens=3000, val_tokens=1000)
    tz.tokenize(str(src), out, s, workers=1)
    want, _ = all_tokens(out)
    # What gptkit 0.1 wrote: manifest version 1, no tokenizer/ folder.
    m = json.loads((out / "manifest.json").read_text())
    m["version"] = 1
    m["tokenizer"].pop("kind")
    (out / "manifest.json").write_text(json.dumps(m))
    for f in (out / "tokenizer").iterdir():
        f.unlink()
    (out / "tokenizer").rmdir()
    from gptkit.train.data import check_data, data_tokenizer

    d, val, train, m1 = check_data(out)
    assert m1["version"] == 1 and data_tokenizer(m1, d).name == "bytes"
    assert np.array_equal(all_tokens(out)[0], want)
    shards.verify(out)
    with pytest.raises(GptkitError, match="older gptkit"):
        tz.tokenize(str(src), out, s, workers=1)
    # An interrupted version-1 run is not resumed into version-2 output.
    partial = tmp_path / "p" / shards.PARTIAL_DIR
    partial.mkdir(parents=True)
    (partial / "state.json").write_text(
        json.dumps({"fingerprint": "x", "shards": [{"filename": "val_000000.bin"}], "next_unit": 1, "skip": 0})
    )
    with pytest.raises(GptkitError, match="older gptkit"):
        tz.tokenize(str(src), tmp_path / "p", s, workers=1)
    assert tz.tokenize(str(src), tmp_path / "p", s, workers=1, force=True).status == "done"
    assert np.array_equal(all_tokens(tmp_path / "p")[0], want)


def test_vocabulary_above_uint16_is_one_line(tmp_path):
    from tokenizers import Tokenizer, models

    vocab = {f"t{i}": i for i in range(65537)}
    (tmp_path / "big").mkdir()
    Tokenizer(models.WordLevel(vocab, unk_token="t0")).save(str(tmp_path / "big" / "tokenizer.json"))
    line = assert_one_line_error(run_cli("tokenize", "pydoc", "--tokenizer", tmp_path / "big", "-o", tmp_path / "o"))
    assert "65537 tokens" in line and "uint16" in line


# --------------------------------------------------------------------------- llm.c shards in place


def llmc_dir(folder, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    parts = {}
    for name, n in [("fineweb_val_000000", 1500), ("fineweb_train_000001", 2500), ("fineweb_train_000002", 2100)]:
        t = rng.integers(0, 50256, n).astype(np.uint16)
        t[:: rng.integers(40, 90)] = 50256
        write_llmc_shard(folder / f"{name}.bin", t)
        parts[name] = t
    return parts


def test_llmc_shards_verify_and_train_in_place(tmp_path, gptkit_home, trains):
    d = tmp_path / "fineweb10B"
    parts = llmc_dir(d)
    r = run_cli("tokenize", "--verify", d, check=True)
    assert "assuming the GPT-2 tokenizer" in r.stderr and "3 llm.c shards" in r.stdout
    toks, m = all_tokens(d)
    assert np.array_equal(toks, np.concatenate(list(parts.values())))  # val first, then train, in order
    assert m["tokenizer"]["name"] == "gpt2" and m["totals"]["val_tokens"] == 1500
    # --tokenizer where the command has it: ids beyond that vocabulary are named
    line = error_line(run_cli("tokenize", "--verify", d, "--tokenizer", "bytes"))
    assert "fineweb_val_000000.bin" in line and "outside the vocabulary (bytes" in line

    r = trains.cli("--data", d, "--name", "llmc", *TRAIN_FLAGS, env=ONE_THREAD, check=True)
    assert "assuming the GPT-2 tokenizer" in r.stdout + r.stderr
    ck = gptkit_home / "runs" / "llmc" / "step_000003"
    meta = json.loads((ck / "config.json").read_text())
    gpt2 = get_tokenizer("gpt2")
    assert meta["tokenizer"] == "gpt2" and meta["tokenizer_info"] == gpt2.info()
    assert ckpt_tokenizer_hash(ck) == gpt2.vocab_hash and meta["model"]["vocab_size"] == 50257
    assert not (d / "manifest.json").exists() and not (d / "tokenizer").exists()  # read in place, untouched

    # A file that is not a valid shard is named.
    write_llmc_shard(d / "fineweb_train_000003.bin", np.arange(10), version=2)
    line = error_line(run_cli("tokenize", "--verify", d))
    assert "fineweb_train_000003.bin" in line and "version 2" in line
    (d / "fineweb_train_000003.bin").write_bytes((d / "fineweb_train_000001.bin").read_bytes()[:-2])
    with pytest.raises(GptkitError, match="fineweb_train_000003.bin: header says 2500 tokens"):
        shards.find_shards(d)
    (d / "fineweb_train_000003.bin").unlink()
    (d / "notes.bin").write_bytes(b"\x00" * 8)
    with pytest.raises(GptkitError, match="notes.bin: not named as a train or val shard"):
        shards.find_shards(d)


def test_llmc_folders_without_val_or_with_empty_train_shards_are_refused_before_launch(tmp_path):
    from gptkit.train.data import check_data

    d = tmp_path / "llmc"
    llmc_dir(d)
    (d / "fineweb_val_000000.bin").unlink()
    with pytest.raises(GptkitError, match=r"no validation shard; llm.c names it \*_val_\*.bin"):
        check_data(d)
    write_llmc_shard(d / "fineweb_val_000000.bin", np.arange(100))
    for name in ("fineweb_train_000001.bin", "fineweb_train_000002.bin"):
        write_llmc_shard(d / name, np.zeros(0))
    with pytest.raises(GptkitError, match="the training shards hold no tokens"):
        check_data(d)


def test_training_on_ids_outside_the_vocabulary_is_one_line(tmp_path, gptkit_home, trains):
    """Shards read in place are not verified up front: an id inside the padded rows (50257..50303)
    would train a row no token has, one past them would fail inside the embedding. Each shard's ids
    are checked as training (or eval) first opens it."""
    from gptkit.train.data import TokenStream

    d = tmp_path / "llmc"
    parts = llmc_dir(d)
    for name, bad in (("fineweb_train_000001", 50300), ("fineweb_train_000002", 50300), ("fineweb_val_000000", 60000)):
        parts[name][len(parts[name]) // 2] = bad
        write_llmc_shard(d / f"{name}.bin", parts[name])
    r = trains.cli("--data", d, "--name", "oov", *TRAIN_FLAGS, "--eval-tokens", "0", env=ONE_THREAD)
    line = error_line(r)
    assert re.search(r"fineweb_train_00000\d\.bin: token id 50300 is outside the vocabulary \(gpt2, size 50257\)", line)
    assert not list((gptkit_home / "runs" / "oov").glob("step_*"))
    val = TokenStream([d / "fineweb_val_000000.bin"], 50256, seed=0, shuffle=False, vocab=("gpt2", 50257))
    with pytest.raises(GptkitError, match=r"fineweb_val_000000.bin: token id 60000 is outside the vocabulary"):
        val.read(0, np.empty(10, dtype=np.int64))


# --------------------------------------------------------------------------- HellaSwag, checkpoints


def test_hellaswag_needs_only_a_tokenizer_that_encodes_the_text(tmp_path):
    from gptkit.train.hellaswag import Example, unencodable

    ex = [Example(ctx="All: speak", endings=["a", "e", "c", "Zz"], label=0)]
    chars = get_tokenizer(write_meta(tmp_path / "c", sorted(set(TEXT))))
    assert "'Z'" in unencodable(ex, chars)
    assert unencodable(ex, get_tokenizer(train_bpe(tmp_path / "bpe"))) is None
    assert unencodable(ex[:0] + [Example("All: speak", ["a", "e", "p", "k"], 1)], chars) is None


def test_meta_pkl_of_plain_dicts_round_trips_through_pickle(tmp_path):
    """The fixture itself: meta.pkl as nanoGPT's prepare.py writes it (pickle of plain dicts)."""
    write_meta(tmp_path / "m", ["a", "b"])
    meta = pickle.loads((tmp_path / "m" / "meta.pkl").read_bytes())
    assert meta == {"vocab_size": 2, "itos": {0: "a", 1: "b"}, "stoi": {"a": 0, "b": 1}}
