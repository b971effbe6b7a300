"""gptkit eval: validation loss and HellaSwag acc_norm, checked against transformers on the same tokens."""

import json
import random

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error, run_cli
from hubfixtures import WORDS, _real_gpt2_ranks, gpt2_merges_from_ranks, make_hellaswag_repo, write_gpt2_tokenizer_files

from gptkit.data.shards import HEADER_BYTES
from gptkit.evaluate import evaluate

SEQ = 64


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory):
    """A tiny GPT2LMHeadModel saved by transformers, with the real GPT-2 vocabulary and tokenizer files."""
    from transformers import GPT2Config, GPT2LMHeadModel

    d = tmp_path_factory.mktemp("hfgpt2")
    cfg = GPT2Config(vocab_size=50257, n_positions=SEQ, n_embd=32, n_layer=2, n_head=2, initializer_range=0.3)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(cfg).eval()
    model.save_pretrained(d, safe_serialization=True)
    ranks = _real_gpt2_ranks()
    write_gpt2_tokenizer_files(d, ranks, gpt2_merges_from_ranks(ranks))
    return d, model


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    rng = random.Random(0)
    docs = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 80))) + "." for _ in range(200)]
    f = tmp_path_factory.mktemp("text") / "corpus.txt"
    f.write_text("\n\n".join(docs))
    return f


def tokenize(text_file, out, tokenizer):
    run_cli("tokenize", text_file, "--tokenizer", tokenizer, "--val-tokens", "3000", "--out", out, check=True)
    return out


def shard_tokens(path):
    return np.fromfile(path, dtype="<u2", offset=HEADER_BYTES).astype(np.int64)


@torch.no_grad()
def reference_val_loss(model, tokens, budget):
    rows = min(budget // SEQ, (len(tokens) - 1) // SEQ)
    x = torch.tensor(np.stack([tokens[i * SEQ : i * SEQ + SEQ + 1] for i in range(rows)]))
    logits = model(x[:, :-1]).logits
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), x[:, 1:].reshape(-1))
    return float(loss), rows * SEQ


@torch.no_grad()
def reference_acc_norm(model, tokenizer_json, hellaswag_parquet):
    """Independent: the `tokenizers` library's GPT-2 BPE and transformers' logits."""
    import pyarrow.parquet as pq
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_json))
    correct = 0
    rows = pq.read_table(hellaswag_parquet).to_pylist()
    for row in rows:
        ctx = tok.encode(row["ctx"]).ids
        means = []
        for ending in row["endings"]:
            end = tok.encode(" " + ending).ids
            ids = torch.tensor([ctx + end])
            logp = torch.log_softmax(model(ids).logits[0, :-1].float(), dim=-1)
            targets = ids[0, 1:]
            nll = -logp[torch.arange(len(targets)), targets][len(ctx) - 1 :]
            means.append(float(nll.mean()))
        correct += int(np.argmin(means)) == int(row["label"])
    return correct / len(rows), len(rows)


def test_val_loss_and_acc_norm_equal_transformers(hf_model, text_file, tmp_path, gptkit_home):
    d, model = hf_model
    shards = tokenize(text_file, tmp_path / "shards", "gpt2")
    hs = make_hellaswag_repo(gptkit_home / "data" / "hellaswag", rows=12)
    res = evaluate(d, data=shards, tokens=2000, hellaswag=True, batch_size=4, device="cpu", precision="fp32")
    want, n = reference_val_loss(model, shard_tokens(shards / "val_000000.bin"), 2000)
    assert res.val_tokens == n == 31 * SEQ
    assert abs(res.val_loss - want) < 1e-4, (res.val_loss, want)
    assert res.val_loss > 1.0  # a real loss, not a degenerate zero
    parquet = hs.path / "data" / "validation-00000-of-00001.parquet"
    acc, n_ex = reference_acc_norm(model, d / "tokenizer.json", parquet)
    assert res.hellaswag["n"] == n_ex == 12
    assert res.hellaswag["acc_norm_token"] == pytest.approx(acc)
    assert 0 <= res.hellaswag["acc_norm_char"] <= 1 and res.hellaswag["truncated"] == 0
    assert res.hellaswag["files"] == [str(parquet)]


def test_cli_json_table_and_limit(hf_model, text_file, tmp_path, gptkit_home):
    d, _ = hf_model
    tokenize(text_file, gptkit_home / "shards" / "corpus", "gpt2")
    make_hellaswag_repo(gptkit_home / "data" / "hellaswag", rows=12)
    env = {"GPTKIT_HOME": str(gptkit_home)}
    r = run_cli(
        "eval", d, "--hellaswag", "--limit", "5", "--tokens", "640", "--device", "cpu", "--json", env=env, check=True
    )
    out = json.loads(r.stdout)  # --data defaults to the newest tokenized data set
    assert out["data"].endswith("corpus") and out["val_tokens"] == 640 and out["hellaswag"]["n"] == 5
    table = run_cli("eval", d, "--tokens", "640", "--hellaswag", "--device", "cpu", env=env, check=True).stdout
    assert "val loss" in table and f"{out['val_loss']:.4f}" in table
    # each HellaSwag row says which acc_norm it is
    assert "hellaswag acc_norm/token" in table and "built-in, llm.c's" in table
    assert "hellaswag acc_norm/char" in table and "built-in, lm-eval's rule" in table


def test_tokenizer_mismatch_is_refused(hf_model, text_file, tmp_path, gptkit_home):
    d, _ = hf_model
    shards = tokenize(text_file, tmp_path / "bytes_shards", "bytes")
    line = assert_one_line_error(run_cli("eval", d, "--data", shards, "--device", "cpu"))
    assert "'bytes'" in line and "'gpt2'" in line and "tokenize" in line


def test_missing_hellaswag_is_one_line(hf_model, gptkit_home):
    d, _ = hf_model
    env = {"GPTKIT_HOME": str(gptkit_home)}
    line = assert_one_line_error(run_cli("eval", d, "--tokens", "0", "--hellaswag", "--device", "cpu", env=env))
    assert "gptkit download hellaswag" in line


def test_model_by_run_name(text_file, tmp_path, gptkit_home):
    """`gptkit eval NAME` evaluates the latest checkpoint of $GPTKIT_HOME/runs/NAME, as sample does."""
    from gptkit import paths
    from gptkit.checkpoint import save_checkpoint
    from gptkit.model import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=SEQ, vocab_size=50257, padded_vocab_size=50304, n_layer=1, n_head=2, n_embd=16))
    ck = save_checkpoint(paths.runs_dir("myrun") / "step_000040", model, config=model.config, tokenizer="gpt2")
    shards = tokenize(text_file, tmp_path / "shards", "gpt2")
    args = ("eval", "myrun", "--data", shards, "--tokens", "640", "--device", "cpu", "--precision", "fp32", "--json")
    r = run_cli(*args, cwd=tmp_path, env={"HF_ENDPOINT": "http://127.0.0.1:9"}, check=True)
    out = json.loads(r.stdout)
    want = evaluate(ck, data=shards, tokens=640, device="cpu", precision="fp32")
    assert out["val_loss"] == pytest.approx(want.val_loss) and out["val_tokens"] == 640
    assert str(ck) in out["model"]


def test_hub_name_download_is_drawn_on_stderr(text_file, tmp_path, gptkit_home):
    """eval of a hub name not on disk: fetched through the mirror, drawn on stderr; stdout is the JSON only."""
    from hubfixtures import make_model_repo, running_mirror

    from gptkit import paths

    make_model_repo(tmp_path / "hub" / "gpt2", "openai-community/gpt2", vocab="gpt2", n_positions=SEQ)
    shards = tokenize(text_file, tmp_path / "shards", "gpt2")
    with running_mirror(tmp_path / "hub") as server:
        args = ("eval", "gpt2", "--endpoint", server.url, "--data", shards, "--tokens", "640", "--device", "cpu")
        r = run_cli(*args, "--json", check=True)
    out = json.loads(r.stdout)
    assert out["val_tokens"] == 640 and out["val_loss"] > 1.0
    assert f"gptkit: gpt2: not on disk; downloading openai-community/gpt2 from {server.url}" in r.stderr
    assert "  model.safetensors (" in r.stderr
    assert (paths.data_dir("gpt2") / "model.safetensors").is_file()
