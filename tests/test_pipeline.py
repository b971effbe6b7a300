"""The main job end to end, as a new user meets it, at tiny scale.

Every step is the real `gptkit` command in its own process: the mirror serves a small
FineWeb-Edu-like repo over loopback, the real huggingface_hub client downloads it through
HF_ENDPOINT, tokenize / train / sample / plot find their inputs with no paths typed (the
defaults chain), training runs as real torchrun processes (gloo, 2 ranks), and transformers
loads the Hugging Face export.
"""

import json
import os
import subprocess
import sys
import time
import urllib.request

import pytest
from conftest import free_port, run_cli, tiny_training
from hubfixtures import WORDS, make_dataset_repo, make_hellaswag_repo


@pytest.fixture
def mirror_process(tmp_path):
    """`gptkit mirror serve` as a separate process, serving a FineWeb-Edu-like and a HellaSwag repo."""
    root = tmp_path / "hub"
    make_dataset_repo(root / "fineweb-edu", "HuggingFaceFW/fineweb-edu", {"sample/10BT": 3}, rows=60, words=80)
    make_hellaswag_repo(root / "hellaswag", rows=8)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gptkit", "mirror", "serve", str(root), "--port", str(port), "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while True:
        try:
            urllib.request.urlopen(url + "/", timeout=1)
            break
        except Exception:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                raise AssertionError(f"mirror did not start:\n{proc.stdout.read()}") from None
            time.sleep(0.1)
    yield url
    proc.terminate()
    proc.wait(timeout=10)


def test_download_tokenize_train_sample_convert_plot(tmp_path, mirror_process, monkeypatch, trains):
    home = tmp_path / "home"
    env = {
        "GPTKIT_HOME": str(home),
        "HF_ENDPOINT": mirror_process,
        "HF_HOME": str(tmp_path / "hf"),
        # the session's GPT-2 vocabulary (installed by scripts/get_gpt2_vocab.py) stays reachable
        "TIKTOKEN_CACHE_DIR": os.environ.get("TIKTOKEN_CACHE_DIR", ""),
    }

    def gptkit(*args, timeout=600):
        return run_cli(*args, env=env, cwd=tmp_path, timeout=timeout, check=True)

    # download: presets through the endpoint in HF_ENDPOINT
    gptkit("download", "fineweb-edu", "--shards", "2", "--no-progress")
    gptkit("download", "hellaswag", "--no-progress")
    data = home / "data" / "fineweb-edu" / "sample" / "10BT"
    assert len(list(data.glob("*.parquet"))) == 2

    # tokenize: no SRC -> the newest downloaded preset
    r = gptkit("tokenize", "--val-tokens", "3000")
    shards = home / "shards" / "fineweb-edu"
    manifest = json.loads((shards / "manifest.json").read_text())
    assert manifest["tokenizer"]["name"] == "gpt2" and manifest["shards"][0]["split"] == "val"
    assert len(manifest["source"]["files"]) == 2
    gptkit("tokenize", "--verify", "fineweb-edu")

    # train: no --data -> the newest shards; 2 CPU ranks under torchrun
    flags = tiny_training(
        nproc=2, name="e2e", seq_len=64, batch_tokens=1024, micro_batch=4, max_steps=30, lr="3e-3", warmup_steps=5,
        eval_every=10, eval_tokens=1024, hellaswag_every=30, sample_every=30, checkpoint_every=15,
    )  # fmt: skip
    r = trains.cli(*flags, env=env, cwd=tmp_path, check=True)
    assert "torch.distributed.run" in r.stdout + r.stderr  # the printed torchrun command
    run = home / "runs" / "e2e"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    val = [m["val_loss"] for m in rows if "val_loss" in m]
    assert len(val) >= 3 and val[-1] < val[0] - 1.0, val  # it learned
    assert any("hellaswag" in k for m in rows for k in m), "HellaSwag was evaluated"
    assert (run / "step_000030" / "model.safetensors").is_file()

    # sample: no --model -> the newest run
    # (three samples: a 30-step model may well end a document at once, which one draw can hit)
    args = ("sample", "The student", "--max-new-tokens", "20", "--num-samples", "3", "--seed", "3", "--json")
    r = gptkit(*args)
    samples = json.loads(r.stdout)["samples"]
    assert all(s["tokens"] == 20 or s["stop"] == "eot" for s in samples)
    words = " ".join(s["text"] for s in samples).split()
    # it writes the corpus's own vocabulary: most generated words come from the repo's word list
    known = sum(w.strip(".,").lower() in WORDS for w in words)
    assert len(words) >= 5 and known >= 0.6 * len(words), samples
    r2 = gptkit(*args)
    assert json.loads(r2.stdout)["samples"] == samples  # same seed, same text

    # convert to Hugging Face and load it with transformers
    export = tmp_path / "hf-export"
    gptkit("convert", str(run), str(export), "--to", "hf")
    import torch
    from transformers import AutoTokenizer, GPT2LMHeadModel

    from gptkit.checkpoint import load_checkpoint

    tok = AutoTokenizer.from_pretrained(export)
    hf = GPT2LMHeadModel.from_pretrained(export).eval()
    ids = tok("The student", return_tensors="pt").input_ids
    ours = load_checkpoint(run).build_model()
    with torch.no_grad():
        a = hf(ids).logits
        b = ours(ids)[0][..., : a.size(-1)]
    assert (a - b).abs().max().item() <= 1e-4

    # plot: no RUN -> the latest run
    gptkit("plot")
    png = run / "metrics.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
