"""FSDP2 (`--parallel fsdp`) with real torchrun processes on CPU (gloo), against DDP.

Seven runs of the tiny model in all: DDP and FSDP2 (2 processes, 30 steps, accumulation 2, dropout
0.1, evaluation, HellaSwag over an example count that 2 does not divide, samples, checkpoints); an
FSDP2 run SIGKILLed and resumed; the FSDP2 checkpoint resumed under DDP on one process and the DDP
checkpoint under FSDP2 on four; the DDP checkpoint as --init-from of an FSDP2 run. The FSDP2 run's
checkpoint is also sampled and converted to HF.
"""

import contextlib
import json
import os
from pathlib import Path

import pytest
import torch
from conftest import run_cli
from safetensors.torch import load_file
from test_train_data import make_dataset
from test_train_dist import kill_when

from gptkit.train.config import LaunchOverrides, TrainOverrides
from gptkit.train.launch import train
from gptkit.train.metrics import read_metrics

# 16 sequences of 32 tokens per step: 2 processes x micro-batch 4 x 2 micro-steps (1 process: x 4).
FLAGS = dict(
    preset="tiny",
    seq_len=32,
    batch_tokens=512,
    micro_batch=4,
    max_steps=30,
    lr=3e-3,
    warmup_steps=2,
    dropout=0.1,
    precision="fp32",
    eval_every=10,
    eval_tokens=512,
    hellaswag_every=30,
    sample_every=15,
    sample_tokens=8,
    checkpoint_every=10,
    keep_checkpoints=0,
)
HELLASWAG = [  # 5 examples over 2 ranks: 3 and 2, so one rank pads a forward
    {"ctx": f"example {i}: the cat", "endings": ["sat on the mat.", "ran", "is here", "jumps high"], "label": i % 4}
    for i in range(5)
]


# The runs are made once per test session, whichever xdist worker asks first (the others wait on a
# lock and reuse them): several tests read them, and may run on different workers.
@contextlib.contextmanager
def exclusive(path: Path):
    import fcntl

    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def home(tmp_path_factory):
    base = tmp_path_factory.getbasetemp()  # under xdist: pytest-N/popen-gwK, the session's is pytest-N
    h = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "fsdp_home"
    h.mkdir(exist_ok=True)
    with exclusive(h / "setup.lock"):
        if not (h / "ready").exists():
            make_dataset(h / "shards" / "toy")
            hs = h / "data" / "hellaswag" / "validation.jsonl"
            hs.parent.mkdir(parents=True)
            hs.write_text("".join(json.dumps(e) + "\n" for e in HELLASWAG))
            (h / "ready").touch()
    return h


def run_once(home: Path, name: str, *args, **kwargs) -> Path:
    with exclusive(home / f"{name}.lock"):
        if not (home / f"{name}.done").exists():
            assert launch(home, name, *args, **kwargs) == 0
            (home / f"{name}.done").touch()
    return home / "runs" / name


def env_of(home: Path) -> dict[str, str]:
    return {"GPTKIT_HOME": str(home), "OMP_NUM_THREADS": "1"}  # bitwise comparisons: the same threads


@contextlib.contextmanager
def environment(env: dict[str, str]):
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k)
            else:
                os.environ[k] = v


def launch(home, name, nproc, parallel, *, checkpointing="auto", **overrides):
    flags = {**FLAGS, **overrides}
    resume = flags.pop("resume", None)
    launch_ = LaunchOverrides(gpus=0, nproc=nproc, parallel=parallel, activation_checkpointing=checkpointing)
    with environment(env_of(home)):
        return train(TrainOverrides(**flags), launch_, name=name, resume=resume, echo=lambda s: None)


@pytest.fixture(scope="session")
def ddp(home, trains):
    return run_once(home, "ddp", 2, "ddp")


@pytest.fixture(scope="session")
def fsdp(home, trains):
    return run_once(home, "fsdp", 2, "fsdp")


def losses(run: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run) if "loss" in r}


def weights(ckpt: Path) -> dict:
    return load_file(str(ckpt / "model.safetensors"))


def optimizer(ckpt: Path) -> dict:
    return torch.load(ckpt / "optimizer.pt", weights_only=True)


def test_fsdp_equals_ddp_and_is_sharded(ddp, fsdp):
    a, b = losses(ddp), losses(fsdp)
    assert sorted(a) == sorted(b) == list(range(1, 31))
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-5), step
    val_a = [r["val_loss"] for r in read_metrics(ddp) if "val_loss" in r]
    val_b = [r["val_loss"] for r in read_metrics(fsdp) if "val_loss" in r]
    assert len(val_b) == 4 and val_b == pytest.approx(val_a, rel=1e-5)
    wa, wb = weights(ddp / "step_000030"), weights(fsdp / "step_000030")
    assert wa.keys() == wb.keys() and "lm_head.weight" not in wb  # the tied matrix stored once
    for k in wa:
        a_, b_ = wa[k], wb[k]
        if k.endswith("attn.c_attn.bias"):
            # The key biases' gradient is zero in exact arithmetic (softmax ignores a constant added
            # to every score of a row), so they hold rounding noise, which AdamW scales up to
            # lr-sized steps: a reduction order's last bit shows there (measured 1.3e-5). The query
            # and value biases are compared as the rest.
            n = a_.numel() // 3
            torch.testing.assert_close(b_[n : 2 * n], a_[n : 2 * n], rtol=0, atol=1e-4)
            a_, b_ = torch.cat([a_[:n], a_[2 * n :]]), torch.cat([b_[:n], b_[2 * n :]])
        torch.testing.assert_close(b_, a_, rtol=1e-5, atol=1e-5, msg=lambda m, k=k: f"{k}: {m}")
    # Really sharded: rank 0 held half of every matrix (a fallback to DDP holds all of each).
    shard = [r for r in read_metrics(fsdp) if "shard_min" in r]
    assert shard and shard[0]["parallel"] == "fsdp" and shard[0]["shard_min"] == shard[0]["shard_max"] == 0.5
    assert not [r for r in read_metrics(ddp) if "shard_min" in r]
    # One optimizer-file layout: torch's, by parameter index, as DDP writes it.
    oa, ob = optimizer(ddp / "step_000030"), optimizer(fsdp / "step_000030")
    assert ob["param_groups"] == oa["param_groups"] and ob["state"].keys() == oa["state"].keys()
    for i, st in oa["state"].items():
        for k, v in st.items():
            torch.testing.assert_close(ob["state"][i][k], v, rtol=1e-4, atol=1e-6)
    # Evaluation and samples ran on every rank: HellaSwag counted all 5, samples at 15 and 30.
    hs_a = [(r["hellaswag_n"], r["hellaswag"]) for r in read_metrics(ddp) if "hellaswag" in r]
    hs_b = [(r["hellaswag_n"], r["hellaswag"]) for r in read_metrics(fsdp) if "hellaswag" in r]
    assert [n for n, _ in hs_b] == [5, 5] and hs_b == hs_a
    assert [r["step"] for r in read_metrics(fsdp) if "sample" in r] == [15, 30]


def test_the_fsdp_checkpoint_samples_and_converts(fsdp, tmp_path):
    ck = fsdp / "step_000030"
    r = run_cli("sample", "-m", str(ck), "--max-new-tokens", "8", "--seed", "1", "the cat")
    assert r.returncode == 0 and r.stdout.strip(), r.stderr
    from gptkit.formats.convert import convert

    res = convert(ck, tmp_path / "hf", to="hf")
    assert res.verification is not None and res.verification.max_abs_diff <= res.verification.tolerance
    from transformers import GPT2LMHeadModel

    from gptkit.checkpoint import load_checkpoint

    ours = load_checkpoint(ck).build_model()
    theirs = GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    ids = torch.tensor([[5, 17, 99, 200, 3, 42]])
    with torch.no_grad():
        a = ours(ids)[0][..., : ours.config.vocab_size]
        b = theirs(ids).logits[..., : ours.config.vocab_size]
    torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)


def test_fsdp_sigkill_then_resume_is_bitwise_exact_with_checkpointing_too(home, fsdp):
    """Killed and resumed, with activation checkpointing on (both halves): bitwise the uninterrupted
    run's, which ran without it (the recompute replays dropout's random state)."""
    import subprocess
    import sys

    run = home / "runs" / "fsdp-killed"
    flags = [
        a
        for k, v in FLAGS.items()
        for a in ("--keep" if k == "keep_checkpoints" else "--" + k.replace("_", "-"), str(v))
    ]
    p = subprocess.Popen(
        [sys.executable, "-m", "gptkit", "train", "--gpus", "0", "--nproc", "2", "--parallel", "fsdp",
         "--activation-checkpointing", "blocks", "--name", "fsdp-killed", *flags],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, **env_of(home), "GPTKIT_FAULTS": "train.step_sleep=0.15"},
    )  # fmt: skip
    kill_when(p, run / "step_000010", 180)
    out, _ = p.communicate()
    assert "parallel: fsdp with activation checkpointing" in out, out[-2000:]
    assert not (run / "step_000030").exists(), "the run finished before it was killed"
    assert launch(home, "fsdp-killed", 2, "fsdp", checkpointing="blocks", resume="auto") == 0
    wa, wb = weights(run / "step_000030"), weights(fsdp / "step_000030")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    oa, ob = optimizer(run / "step_000030"), optimizer(fsdp / "step_000030")
    assert all(torch.equal(oa["state"][i][k], ob["state"][i][k]) for i in oa["state"] for k in oa["state"][i])
    assert losses(run) == losses(fsdp)


def resume_elsewhere(home, source: Path, name: str, nproc: int, parallel: str) -> Path:
    import shutil

    run = home / "runs" / name
    run.mkdir()
    shutil.copytree(source / "step_000020", run / "step_000020")
    assert launch(home, name, nproc, parallel, resume="auto", micro_batch=4) == 0
    return run


# Across strategies and process counts: the same global batch re-split (2 x 4 rows x 2 micro-steps
# becomes 1 x 4 x 4, or 4 x 4 x 1), and the same dropout masks for the same rows (seeded per block of
# the global batch, not per rank), so the losses agree to rounding with dropout on.
def test_an_fsdp_checkpoint_resumes_under_ddp_on_one_process(home, fsdp):
    run = resume_elsewhere(home, fsdp, "fsdp-to-ddp", 1, "ddp")
    a, b = losses(run), losses(fsdp)
    assert sorted(a) == list(range(21, 31))
    for step in a:
        assert a[step] == pytest.approx(b[step], rel=1e-5), step
    assert not [r for r in read_metrics(run) if "shard_min" in r]


def test_a_ddp_checkpoint_resumes_under_fsdp_on_four_processes(home, ddp):
    run = resume_elsewhere(home, ddp, "ddp-to-fsdp", 4, "fsdp")
    a, b = losses(run), losses(ddp)
    assert sorted(a) == list(range(21, 31))
    for step in a:
        assert a[step] == pytest.approx(b[step], rel=1e-5), step
    assert [r["shard_max"] for r in read_metrics(run) if "shard_max" in r] == [0.25]


def test_init_from_under_fsdp_starts_from_the_weights(home, ddp):
    """--init-from with --parallel fsdp: rank 0 reads the weights and the strategy broadcasts them into
    the shards (as a resume does); the new run's first validation loss is the source's at that step."""
    run = home / "runs" / "fsdp-init"
    flags = dict(max_steps=2, warmup_steps=1, eval_every=1, hellaswag_every=0, sample_every=1000)
    assert launch(home, "fsdp-init", 2, "fsdp", init_from=str(ddp / "step_000020"), **flags) == 0
    val = {r["step"]: r["val_loss"] for r in read_metrics(run) if "val_loss" in r}
    source = {r["step"]: r["val_loss"] for r in read_metrics(ddp) if "val_loss" in r}
    assert val[0] == pytest.approx(source[20], rel=1e-6), (val, source)
    assert [r["shard_max"] for r in read_metrics(run) if "shard_max" in r] == [0.5]
