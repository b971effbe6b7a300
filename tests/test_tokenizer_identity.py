"""One tokenizer-identity rule (tokenizer.same_vocabulary) for the launcher, the workers and eval:
two character vocabularies of the same size share a name (chars-65), so only the hash tells them apart."""

import json

import pytest
import torch
from conftest import assert_one_line_error, run_cli

from gptkit.checkpoint import save_checkpoint
from gptkit.data.shards import read_manifest
from gptkit.data.tokenize import Settings, tokenize
from gptkit.errors import GptkitError
from gptkit.evaluate import check_tokenizer
from gptkit.model import GPT, get_preset
from gptkit.tokenizer import BytesTokenizer, CharTokenizer, same_vocabulary, save_tokenizer

# nanoGPT's shakespeare_char vocabulary (65 characters), and the same with one character changed.
SHAKESPEARE = list("\n !$&',-.3:;?") + [chr(c) for c in range(ord("A"), ord("Z") + 1)]
SHAKESPEARE += [chr(c) for c in range(ord("a"), ord("z") + 1)]
OTHER = [("4" if c == "3" else c) for c in SHAKESPEARE]


def chars(vocab: list[str]) -> CharTokenizer:
    return CharTokenizer(vocab, None, spec="test", source="test")


def char_shards(root, vocab):
    src = root.parent / f".{root.name}-src"
    src.mkdir(parents=True)
    with open(src / "docs.jsonl", "w") as f:
        for i in range(60):
            f.write(json.dumps({"text": f"First Citizen, speak {'me ' * (i % 7)}before we proceed.\n"}) + "\n")
    save_tokenizer(chars(vocab), src / "vocab")  # a folder the tokenize workers load it from
    tokenize(str(src / "docs.jsonl"), root, Settings(str(src / "vocab"), shard_tokens=4000, val_tokens=1000), workers=1)
    return root


def char_checkpoint(path, vocab):
    torch.manual_seed(0)
    model = GPT(get_preset("tiny").with_vocab(len(vocab)))
    return save_checkpoint(path, model, config=model.config, tokenizer=chars(vocab))


def test_the_rule():
    a, b = chars(SHAKESPEARE), chars(OTHER)
    assert a.name == b.name and a.vocab_size == b.vocab_size == 65
    assert same_vocabulary(a.info(), a) and not same_vocabulary(a.info(), b)
    # files from before the hash was recorded: a built-in's name fixes its vocabulary, chars-65 does not
    assert same_vocabulary("bytes", BytesTokenizer()) and same_vocabulary({"name": "bytes"}, BytesTokenizer())
    assert not same_vocabulary({"name": "chars-65"}, a) and not same_vocabulary(None, a)
    assert not same_vocabulary("gpt2", BytesTokenizer())


def test_init_from_another_65_character_vocabulary_is_refused_by_the_launcher(tmp_path, gptkit_home):
    shards = char_shards(tmp_path / "shards", SHAKESPEARE)
    flags = ["--data", shards, "--seq-len", "32", "--eval-tokens", "0", "--gpus", "0", "--nproc", "1", "--dry-run"]
    same = char_checkpoint(tmp_path / "same", SHAKESPEARE)
    run_cli("train", "--init-from", same, "--out", tmp_path / "a", *flags, check=True)
    other = char_checkpoint(tmp_path / "other", OTHER)
    line = assert_one_line_error(run_cli("train", "--init-from", other, "--out", tmp_path / "b", *flags))
    assert "--init-from" in line and "does not match the data's" in line and "chars-65" in line, line
    plan = [a for a in flags if a != "--dry-run"] + ["--plan"]
    run_cli("train", "--init-from", same, *plan, check=True)
    line = assert_one_line_error(run_cli("train", "--init-from", other, *plan))  # --plan draws the same line
    assert "--init-from" in line and "does not match the data's" in line, line
    # eval draws the same line between the two
    manifest = read_manifest(shards)
    check_tokenizer(manifest, chars(SHAKESPEARE), shards)
    with pytest.raises(GptkitError, match="was tokenized with 'chars-65'"):
        check_tokenizer(manifest, chars(OTHER), shards)
