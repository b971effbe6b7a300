"""`gptkit train` with real torchrun processes on CPU (gloo): equivalences, exact resume, nodes, NaN.

One reference run (2 processes, 8 steps) is shared; every other run is compared with it.
"""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import assert_one_line_error, free_port, run_cli, tiny_training
from safetensors.torch import load_file
from test_train_data import make_dataset

from gptkit.errors import GptkitError
from gptkit.train.config import LaunchOverrides, TrainOverrides
from gptkit.train.launch import train
from gptkit.train.metrics import read_metrics

# 8 sequences of 32 tokens per step: 2 processes x micro-batch 4, or 1 process x 4 x 2 micro-steps.
FLAGS = dict(
    preset="tiny",
    seq_len=32,
    batch_tokens=256,
    micro_batch=4,
    max_steps=8,
    lr=3e-3,
    warmup_steps=2,
    eval_every=4,
    eval_tokens=512,
    hellaswag_every=8,
    sample_every=4,
    sample_tokens=8,
    checkpoint_every=2,
    keep_checkpoints=3,
)
CLI_FLAGS = tiny_training(  # the same run from the command line (--gpus and --nproc given with it)
    gpus=None, nproc=None, batch_tokens=256, micro_batch=4, max_steps=8, lr="3e-3", warmup_steps=2, eval_every=4,
    eval_tokens=512, hellaswag_every=8, sample_every=4, checkpoint_every=2, keep=3,
)  # fmt: skip
HELLASWAG = [  # 5 examples: with 2 ranks, one scores 3 and the other 2; the counts must add up
    {"ctx": f"example {i}: the cat", "endings": ["sat on the mat.", "ran", "is here", "jumps high"], "label": i % 4}
    for i in range(5)
]


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """One GPTKIT_HOME for the module: the data set, the runs, the cached CPU peak."""
    h = tmp_path_factory.mktemp("train_home")
    make_dataset(h / "shards" / "toy")
    hs = h / "data" / "hellaswag" / "validation.jsonl"
    hs.parent.mkdir(parents=True)
    hs.write_text("".join(json.dumps(e) + "\n" for e in HELLASWAG))
    # One thread per process whatever the process count: tiny ops on a shared 2-core machine are
    # much faster that way, and bitwise comparisons need the same thread count in both runs.
    env = {"GPTKIT_HOME": str(h), "OMP_NUM_THREADS": "1"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield h
    for k, v in old.items():
        if v is None:
            os.environ.pop(k)
        else:
            os.environ[k] = v


def launch(name, nproc, echo=lambda s: None, parallel=None, **overrides):
    flags = {**FLAGS, **overrides}
    resume = flags.pop("resume", None)
    launch_ = LaunchOverrides(gpus=0, nproc=nproc, parallel=parallel)
    return train(TrainOverrides(**flags), launch_, name=name, resume=resume, echo=echo)


@pytest.fixture(scope="module")
def reference(home, trains):
    assert launch("ref", nproc=2) == 0
    return home / "runs" / "ref"


def weights(ckpt: Path) -> dict:
    return load_file(str(ckpt / "model.safetensors"))


def assert_same(a: dict, b: dict, exact: bool):
    assert a.keys() == b.keys()
    for k in a:
        if exact:
            assert torch.equal(a[k], b[k]), f"{k} differs"
        else:
            torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=lambda m, k=k: f"{k}: {m}")


def cli(*args, env=None):
    return subprocess.Popen(
        [sys.executable, "-m", "gptkit", "train", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def kill_when(p, checkpoint: Path, timeout: float) -> None:
    """Wait until `checkpoint` exists while `p` still runs, then SIGKILL p's whole tree: gptkit,
    torchrun and the workers (torchrun gives them their own session, so a process group is not enough)."""
    deadline = time.time() + timeout
    while not checkpoint.exists():
        assert p.poll() is None, p.communicate()
        assert time.time() < deadline, f"no checkpoint {checkpoint.name}"
        time.sleep(0.05)
    for pid in descendants(p.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_reference_run_layout_and_metrics(reference):
    ckpts = sorted(p.name for p in reference.glob("step_*"))
    assert ckpts == ["step_000004", "step_000006", "step_000008"]  # every 2 steps, the last 3 kept
    m = read_metrics(reference)
    train_steps = [r["step"] for r in m if "loss" in r]
    assert train_steps == list(range(1, 9))
    val = [r for r in m if "val_loss" in r]
    assert [r["step"] for r in val] == [0, 4, 8] and val[-1]["val_loss"] < val[0]["val_loss"]
    assert all(r["mfu"] is not None and r["mfu"] > 0 for r in m if "loss" in r)
    assert [r["step"] for r in m if "sample" in r] == [4, 8]
    hs = [r for r in m if "hellaswag" in r]
    assert [r["step"] for r in hs] == [0, 8] and all(r["hellaswag_n"] == 5 for r in hs)
    # both acc_norms (per token: llm.c's; per character: lm-eval's); each example's first ending is
    # 34 bytes with its context, over the 32-token context, so all 5 are counted as cut
    assert all(0 <= r["hellaswag_norm_char"] <= 1 and r["hellaswag_truncated"] == 5 for r in hs)

    cfg = json.loads((reference / "config.json").read_text())
    assert cfg["plan"] == {"world_size": 2, "micro_batch": 4, "grad_accum": 1, "rows": 8}
    meta = json.loads((reference / "step_000008" / "config.json").read_text())
    assert meta["train"]["lr"] == 3e-3 and meta["tokenizer"] == "bytes" and meta["step"] == 8


def test_two_processes_equal_one_process_with_accumulation(home, reference):
    assert launch("one_proc", nproc=1) == 0
    run = home / "runs" / "one_proc"
    assert json.loads((run / "config.json").read_text())["plan"]["grad_accum"] == 2
    assert_same(weights(run / "step_000008"), weights(reference / "step_000008"), exact=False)
    a = [r["val_loss"] for r in read_metrics(run) if "val_loss" in r]
    b = [r["val_loss"] for r in read_metrics(reference) if "val_loss" in r]
    assert a == pytest.approx(b, rel=1e-5)
    hs_a = [r["hellaswag"] for r in read_metrics(run) if "hellaswag" in r]
    hs_b = [r["hellaswag"] for r in read_metrics(reference) if "hellaswag" in r]
    assert hs_a == hs_b


def test_compiled_training_matches_eager(home, trains):
    """--compile, the default on CUDA, here through inductor's CPU backend: torch.compile under DDP,
    then checkpoints, evaluation and samples from the uncompiled module. In fp32 (bf16's rounding
    would hide a real difference) the weights after 8 steps match the eager run's."""
    assert launch("eager32", nproc=2, precision="fp32") == 0
    assert launch("compiled32", nproc=2, precision="fp32", compile=True) == 0
    eager, run = home / "runs" / "eager32", home / "runs" / "compiled32"
    assert json.loads((run / "config.json").read_text())["train"]["compile"] is True
    w_eager, w_compiled = weights(eager / "step_000008"), weights(run / "step_000008")
    assert w_eager.keys() == w_compiled.keys()  # no `_orig_mod.` prefix from the compiled wrapper
    assert_same(w_compiled, w_eager, exact=False)  # measured: 4e-6 at most
    a = [r["val_loss"] for r in read_metrics(run) if "val_loss" in r]
    b = [r["val_loss"] for r in read_metrics(eager) if "val_loss" in r]
    assert a == pytest.approx(b, rel=1e-5)
    assert [r["step"] for r in read_metrics(run) if "sample" in r] == [4, 8]


def test_sigkill_then_resume_is_bitwise_exact(home, reference):
    run = home / "runs" / "killed"
    p = cli(
        "--gpus", "0", "--nproc", "2", "--name", "killed", *CLI_FLAGS, env={"GPTKIT_FAULTS": "train.step_sleep=0.4"}
    )
    kill_when(p, run / "step_000004", 120)
    p.communicate()
    assert p.returncode == -signal.SIGKILL
    assert not (run / "step_000008").exists(), "the run finished before it was killed"
    killed_at = max(r["step"] for r in read_metrics(run) if "loss" in r)
    assert 4 <= killed_at < 8

    assert launch("killed", nproc=2, resume="auto") == 0
    assert_same(weights(run / "step_000008"), weights(reference / "step_000008"), exact=True)
    opt_a = torch.load(run / "step_000008" / "optimizer.pt", weights_only=True)
    opt_b = torch.load(reference / "step_000008" / "optimizer.pt", weights_only=True)
    for k, st in opt_a["state"].items():
        assert torch.equal(st["exp_avg_sq"], opt_b["state"][k]["exp_avg_sq"])
    steps = [r["step"] for r in read_metrics(run) if "loss" in r]
    assert steps == list(range(1, 9))  # what the killed run logged after step 4 was replaced, not repeated
    with pytest.raises(GptkitError, match=r"already finished \(8 of 8 steps\)"):
        launch("killed", nproc=2, resume="auto")
    losses = [r["loss"] for r in read_metrics(run) if "loss" in r]
    assert losses == [r["loss"] for r in read_metrics(reference) if "loss" in r]


MUON = dict(optimizer="muon", muon_lr=0.01, muon_qkv="split")  # split: c_attn as three blocks


@pytest.fixture(scope="module")
def muon_ref(home, trains):
    assert launch("muon_ref", nproc=2, **MUON) == 0
    return home / "runs" / "muon_ref"


def test_muon_sigkill_then_resume_is_bitwise_exact_and_the_ranks_agree(home, muon_ref, reference):
    """--optimizer muon through DDP (2 ranks, gloo): both ranks' weights are checked equal at every
    checkpoint; a run SIGKILLed after step 4 and resumed ends bitwise equal to muon_ref, weights, AdamW
    moments and Muon momentum buffers; the log has each group's own learning rate; a checkpoint
    resumes only with its own optimizer (one line each way)."""
    run = home / "runs" / "muon_killed"
    muon_flags = ["--optimizer", "muon", "--muon-lr", "0.01", "--muon-qkv", "split"]
    p = cli("--gpus", "0", "--nproc", "2", "--name", "muon_killed", *CLI_FLAGS, *muon_flags,
            env={"GPTKIT_FAULTS": "train.step_sleep=0.4"})  # fmt: skip
    kill_when(p, run / "step_000004", 120)
    p.communicate()
    assert not (run / "step_000008").exists(), "the run finished before it was killed"
    assert launch("muon_killed", nproc=2, resume="auto", **MUON) == 0

    assert_same(weights(run / "step_000008"), weights(muon_ref / "step_000008"), exact=True)
    opt_a = torch.load(run / "step_000008" / "optimizer.pt", weights_only=True)["optimizers"]
    opt_b = torch.load(muon_ref / "step_000008" / "optimizer.pt", weights_only=True)["optimizers"]
    (adamw_a, muon_a), (adamw_b, muon_b) = opt_a, opt_b
    assert {g["role"] for g in muon_a["param_groups"]} == {"matrix", "qkv"}
    assert muon_a["state"] and all(torch.equal(st["momentum_buffer"], muon_b["state"][k]["momentum_buffer"])
                                   for k, st in muon_a["state"].items())  # fmt: skip
    assert all(torch.equal(st["exp_avg_sq"], adamw_b["state"][k]["exp_avg_sq"]) for k, st in adamw_a["state"].items())
    for ck in (run / "step_000008", muon_ref / "step_000008"):
        assert json.loads((ck / "trainer.json").read_text())["replicas_equal"] == 2
    m = [r for r in read_metrics(run) if "loss" in r]
    assert [r["step"] for r in m] == list(range(1, 9))
    assert [r["loss"] for r in m] == [r["loss"] for r in read_metrics(muon_ref) if "loss" in r]
    assert all(r["muon_lr"] == pytest.approx(r["lr"] * 0.01 / 3e-3) for r in m)  # one schedule, two peaks
    # Muon's first 8 steps train differently from AdamW's (the same data, weights and --lr)
    assert m[-1]["loss"] != [r["loss"] for r in read_metrics(reference) if "loss" in r][-1]

    with pytest.raises(GptkitError, match=r"trained with --optimizer adamw; it resumes only with that optimizer"):
        launch("ref", nproc=2, resume="auto", max_steps=10, **MUON)
    with pytest.raises(GptkitError, match=r"trained with --optimizer muon; .* --init-from"):
        launch("muon_killed", nproc=2, resume="auto", max_steps=10, optimizer="adamw")


def test_muon_under_fsdp_equals_ddp_and_resumes_exactly(home, muon_ref):
    """--optimizer muon --parallel fsdp (2 ranks, each holding half of every matrix by rows, so half of
    c_attn is Q and part of K): the Newton-Schulz iteration runs on the whole matrix and splits Q, K, V
    there, so the run equals muon_ref (DDP) within 1e-5 in fp32; the momentum buffers are gathered into
    the same optimizer file; resumed from its step 4, it ends bitwise equal to the uninterrupted run."""
    run = home / "runs" / "muon_fsdp"
    assert launch("muon_fsdp", nproc=2, parallel="fsdp", **MUON) == 0
    assert [r["shard_max"] for r in read_metrics(run) if "shard_max" in r] == [0.5]
    a = {r["step"]: r["loss"] for r in read_metrics(run) if "loss" in r}
    b = {r["step"]: r["loss"] for r in read_metrics(muon_ref) if "loss" in r}
    assert sorted(a) == sorted(b) == list(range(1, 9))
    assert all(a[s] == pytest.approx(b[s], rel=1e-5) for s in a), (a, b)
    wa, wb = weights(run / "step_000008"), weights(muon_ref / "step_000008")
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-5, msg=lambda m, k=k: f"{k}: {m}")
    opt_a = torch.load(run / "step_000008" / "optimizer.pt", weights_only=True)["optimizers"]
    opt_b = torch.load(muon_ref / "step_000008" / "optimizer.pt", weights_only=True)["optimizers"]
    for oa, ob in zip(opt_a, opt_b, strict=True):
        assert oa["param_groups"] == ob["param_groups"] and oa["state"].keys() == ob["state"].keys()
        for i, st in ob["state"].items():
            for k, v in st.items():
                torch.testing.assert_close(oa["state"][i][k], v, rtol=1e-4, atol=1e-6)
    assert {g["role"] for g in opt_a[1]["param_groups"]} == {"matrix", "qkv"}  # (whole buffers, not shards)

    resumed = home / "runs" / "muon_fsdp_resumed"
    resumed.mkdir()
    shutil.copytree(run / "step_000004", resumed / "step_000004")
    assert launch("muon_fsdp_resumed", nproc=2, parallel="fsdp", resume="auto", **MUON) == 0
    assert_same(weights(resumed / "step_000008"), wa, exact=True)
    opt_r = torch.load(resumed / "step_000008" / "optimizer.pt", weights_only=True)["optimizers"]
    assert all(torch.equal(v, opt_a[j]["state"][i][k]) for j, o in enumerate(opt_r)
               for i, st in o["state"].items() for k, v in st.items())  # fmt: skip
    assert {r["step"]: r["loss"] for r in read_metrics(resumed) if "loss" in r and r["step"] > 4} == {
        s: v for s, v in a.items() if s > 4
    }


def test_resume_with_another_process_count_keeps_batch_and_data(home, reference):
    run = home / "runs" / "regrid"
    run.mkdir()
    shutil.copytree(reference / "step_000004", run / "step_000004")
    assert launch("regrid", nproc=1, resume="auto", micro_batch=None) == 0
    plan = json.loads((run / "config.json").read_text())["plan"]
    assert plan["world_size"] == 1 and plan["rows"] == 8  # same global batch, re-split
    a = json.loads((run / "step_000008" / "trainer.json").read_text())
    b = json.loads((reference / "step_000008" / "trainer.json").read_text())
    assert a["data_pos"] == b["data_pos"] and a["world_size"] == 1
    assert_same(weights(run / "step_000008"), weights(reference / "step_000008"), exact=False)


def test_two_nodes_on_loopback_equal_one_node(home, reference):
    from gptkit.train.resolve import check_port

    port = free_port()
    check_port("127.0.0.1", port)
    # Node 1 from the command line; node 0 (which hosts the rendezvous) through the library here.
    n1 = cli(
        "--gpus",
        "0",
        "--nproc",
        "1",
        "--nodes",
        "2",
        "--node-rank",
        "1",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        port,
        "--name",
        "twonode",
        *CLI_FLAGS,
    )
    lines = []
    rc = train(
        TrainOverrides(**FLAGS),
        LaunchOverrides(gpus=0, nproc=1, nodes=2, node_rank=0, master_addr="127.0.0.1", master_port=port),
        name="twonode",
        echo=lines.append,
    )
    out1, err1 = n1.communicate(timeout=300)
    assert rc == 0 and n1.returncode == 0, err1
    assert "--rdzv-backend c10d" in lines[0] and "--nnodes 2 --node-rank 0" in lines[0]
    assert "--nnodes 2 --node-rank 1" in out1
    run = home / "runs" / "twonode"
    assert_same(weights(run / "step_000008"), weights(reference / "step_000008"), exact=False)


def test_nodes_with_different_process_counts_stop_in_one_line_after_the_rendezvous(home, trains):
    """Node 0 with one process, node 1 with two (as an allocation with different GPU counts per node):
    the rendezvous gathers 3, which neither node planned; every node ends in one line naming the fix."""
    from gptkit.train.resolve import check_port

    port = free_port()
    check_port("127.0.0.1", port)
    node = ["--gpus", "0", "--nodes", "2", "--master-addr", "127.0.0.1", "--master-port", port, "--name", "uneven"]
    flags = [*CLI_FLAGS, "--micro-batch", "2", "--data", str(home / "shards" / "toy")]
    n1 = cli(*node, "--node-rank", "1", "--nproc", "2", *flags)
    n0 = cli(*node, "--node-rank", "0", "--nproc", "1", *flags)
    for p in (n0, n1):
        out, err = p.communicate(timeout=300)
        line = assert_one_line_error(subprocess.CompletedProcess(p.args, p.returncode, out, err))
        assert "the 2 nodes started different numbers of processes (3 in all;" in line, line
        assert "give every node the same --gpus (under SLURM: --gpus-per-node)" in line, line
    assert not list((home / "runs" / "uneven").glob("step_*"))


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(home, reference):
    run = home / "runs" / "diverge"
    run.mkdir()
    shutil.copytree(reference / "step_000004", run / "step_000004")
    before = {
        str(f): hashlib.sha256(f.read_bytes()).hexdigest() for f in (run / "step_000004").rglob("*") if f.is_file()
    }
    p = cli(
        "--gpus", "0", "--nproc", "2", "--name", "diverge", "--resume", "auto", "--lr", "1e30", "--warmup-steps", "0"
    )
    out, err = p.communicate(timeout=300)
    line = assert_one_line_error(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    assert "nan" in line.lower() or "inf" in line.lower(), line
    assert "step_000004" in line and "lower --lr" in line
    after = {
        str(f): hashlib.sha256(f.read_bytes()).hexdigest() for f in (run / "step_000004").rglob("*") if f.is_file()
    }
    assert after == before
    assert sorted(p.name for p in run.glob("step_*")) == ["step_000004"]


def test_bad_configs_fail_with_one_line(home):
    import socket

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    cases = {
        "unknown model preset": ["--preset", "gpt5"],
        "not a multiple of --seq-len": ["--preset", "tiny", "--seq-len", "32", "--batch-tokens", "1000"],
        "does not divide": ["--preset", "tiny", "--seq-len", "32", "--batch-tokens", "256", "--micro-batch", "3"],
        "nothing-here: no such file or directory": ["--preset", "tiny", "--data", str(home / "nothing-here")],
        "already in use": ["--preset", "tiny", "--master-port", str(port)],
        "--grad-clip cannot be negative": ["--preset", "tiny", "--grad-clip", "-1"],
        "--seed must be 0 or more": ["--preset", "tiny", "--seed", "-1"],
    }
    try:
        for i, (msg, args) in enumerate(cases.items()):
            line = assert_one_line_error(run_cli("train", "--gpus", "0", "--name", f"bad{i}", *args, timeout=120))
            assert msg in line, line
    finally:
        busy.close()
    assert not any((home / "runs" / f"bad{i}").exists() for i in range(len(cases)))


def test_sigterm_saves_a_checkpoint_and_stops(home, trains):
    run = home / "runs" / "term"
    p = cli(
        "--gpus",
        "0",
        "--nproc",
        "2",
        "--name",
        "term",
        *CLI_FLAGS,
        "--max-steps",
        "1000",
        env={"GPTKIT_FAULTS": "train.step_sleep=0.2"},
    )
    deadline = time.time() + 120
    while len([r for r in read_metrics(run) if "loss" in r]) < 2:
        assert p.poll() is None, p.communicate()
        assert time.time() < deadline, "training did not start"
        time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 128 + signal.SIGTERM, err
    last = max(r["step"] for r in read_metrics(run) if "loss" in r)
    assert last < 1000 and f"stopped at step {last}" in out
    assert sorted(x.name for x in run.glob("step_*"))[-1] == f"step_{last:06d}"
    assert "Traceback" not in err


def test_init_from_a_converted_checkpoint_continues_from_its_weights(home, reference, tmp_path):
    """nanoGPT-format file -> `convert --to gptkit` -> `train --init-from`: training starts from those weights."""
    from gptkit.formats.convert import convert

    pt = tmp_path / "ckpt.pt"
    convert(reference, pt, to="pt")
    imported = tmp_path / "imported"
    convert(pt, imported, to="gptkit")
    assert launch("from-import", nproc=1, init_from=str(imported), max_steps=2, eval_every=1, hellaswag_every=0) == 0
    ref_val = [m["val_loss"] for m in read_metrics(reference) if "val_loss" in m]
    new_val = [m["val_loss"] for m in read_metrics(home / "runs" / "from-import") if "val_loss" in m]
    # A fresh model starts near ln(256) = 5.5; this one starts where the reference ended.
    assert abs(new_val[0] - ref_val[-1]) < 0.05, (new_val, ref_val)
    assert new_val[0] < ref_val[0] - 0.3


def test_init_from_with_another_vocabulary_is_refused(home, tmp_path):
    from gptkit.checkpoint import save_checkpoint
    from gptkit.model import GPT, get_preset

    cfg = get_preset("tiny")  # GPT-2 vocabulary; the toy data is byte-level
    save_checkpoint(tmp_path / "gpt2ck", GPT(cfg), config=cfg, tokenizer="gpt2")
    with pytest.raises(GptkitError, match="vocabulary"):
        launch("bad-init", nproc=1, init_from=str(tmp_path / "gpt2ck"))
    with pytest.raises(GptkitError, match="not a gptkit checkpoint"):
        launch("bad-init2", nproc=1, init_from=str(tmp_path))


# --- the cluster: SLURM, restarts (issue 20) --------------------------------------------------------
def slurm_step(node: int, nodes: int = 2) -> dict:
    """What `srun -N2 --ntasks-per-node 1` sets on node NODE, for a job whose port is free now; the
    nodelist's first name (the rendezvous host) resolves here: 127.0.0.1."""
    import socket

    from gptkit.train.slurm import job_port

    job = 7000 + os.getpid() % 3000
    while True:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", job_port(str(job))))
                break
            except OSError:
                job += 1
    return {
        "SLURM_JOB_ID": str(job),
        "SLURM_JOB_NUM_NODES": str(nodes),
        "SLURM_JOB_NODELIST": f"127.0.0.[1-{nodes}]",
        "SLURM_STEP_ID": "0",
        "SLURM_STEP_NUM_NODES": str(nodes),
        "SLURM_STEP_NODELIST": f"127.0.0.[1-{nodes}]",
        "SLURM_STEP_NUM_TASKS": str(nodes),
        "SLURM_NODEID": str(node),
    }


STAND_IN_SRUN = """#!/bin/bash
# A stand-in for srun: drops its own options, starts the command once per node of the job with the
# variables srun sets there, each node's output in $SRUN_OUT/nodeN.out; fails if any node fails.
while [[ $1 == -* ]]; do shift; done
pids=()
for n in $(seq 0 $((SLURM_JOB_NUM_NODES - 1))); do
  SLURM_STEP_ID=0 SLURM_STEP_NUM_NODES=$SLURM_JOB_NUM_NODES SLURM_STEP_NODELIST=$SLURM_JOB_NODELIST \\
    SLURM_STEP_NUM_TASKS=$SLURM_JOB_NUM_NODES SLURM_NODEID=$n "$@" > "$SRUN_OUT/node$n.out" 2>&1 &
  pids+=($!)
done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=1; done
exit $rc
"""


def test_the_sbatch_script_trains_on_two_simulated_slurm_nodes(home, reference, tmp_path):
    """`gptkit train --nodes 2 ... --sbatch FILE`, run by bash with a stand-in srun on PATH: each node's
    `gptkit train` gets only SLURM's variables (no node flag, no --gpus/--nproc), trains to the end,
    with the config the flags give (the reference run's, from the same flags)."""
    script = tmp_path / "job.sh"
    flags = [*CLI_FLAGS, "--sample-tokens", "8"]  # FLAGS, the reference's
    r = run_cli("train", "--nodes", "2", "--name", "slurm2", *flags, "--sbatch", script, "--time", "0:10:00")
    assert r.returncode == 0, r.stderr
    text = script.read_text()
    assert "#SBATCH --nodes=2" in text and "#SBATCH --time=0:10:00" in text and "#SBATCH --requeue" in text
    assert "--partition" not in text and "--account" not in text  # never guessed
    srun = tmp_path / "bin" / "srun"
    srun.parent.mkdir()
    srun.write_text(STAND_IN_SRUN)
    srun.chmod(0o755)
    job = slurm_step(0)
    env = {k: v for k, v in job.items() if k.startswith("SLURM_JOB_")}
    env.update(PATH=f"{srun.parent}{os.pathsep}{os.environ['PATH']}", SRUN_OUT=str(tmp_path))
    p = subprocess.run(["bash", str(script)], env={**os.environ, **env}, capture_output=True, text=True, timeout=300)
    outs = [(tmp_path / f"node{n}.out").read_text() for n in (0, 1)]
    assert p.returncode == 0, outs
    for rank, out in enumerate(outs):
        assert "no checkpoint yet" not in out  # the other node's config.json is this start's, no restart
        first = out.splitlines()[0]
        assert first.startswith(f"from SLURM (job {job['SLURM_JOB_ID']}): nodes 2 (SLURM_STEP_NUM_NODES), "), first
        assert f"node-rank {rank} (SLURM_NODEID)" in first and "master-addr 127.0.0.1" in first
        assert f"--nnodes 2 --node-rank {rank}" in out and "--max-restarts 3" in out
    run = home / "runs" / "slurm2"
    cfg, ref = (json.loads((d / "config.json").read_text()) for d in (run, reference))
    assert cfg["train"] == ref["train"] and cfg["plan"] == ref["plan"]
    assert_same(weights(run / "step_000008"), weights(reference / "step_000008"), exact=False)
    assert not any((run / ".nodes").iterdir())  # the shared-directory markers are gone


def test_nodes_that_do_not_share_the_run_directory_are_refused(home, trains, tmp_path):
    """Node 1 has a GPTKIT_HOME of its own (as a node without the shared filesystem would): both
    nodes stop at start in one line, restarts on (SLURM's 3) or not."""
    step = slurm_step(0)
    data = ["--data", str(home / "shards" / "toy")]
    other = tmp_path / "node1_home"
    n1 = cli("--name", "unshared", *CLI_FLAGS, *data, env={**step, "SLURM_NODEID": "1", "GPTKIT_HOME": str(other)})
    n0 = cli("--name", "unshared", *CLI_FLAGS, *data, env={**step, "SLURM_NODEID": "0"})
    for p in (n0, n1):
        out, err = p.communicate(timeout=300)
        line = assert_one_line_error(subprocess.CompletedProcess(p.args, p.returncode, out, err))
        assert "the nodes do not share the run directory" in line, line
    assert not list((home / "runs" / "unshared").glob("step_*"))


def test_sigkill_with_restarts_resumes_by_itself_bitwise(home, reference):
    """A worker SIGKILLed after the first checkpoint (step 4) and a step past it: with --max-restarts 1
    the run finishes by itself, bitwise equal to the uninterrupted one, the restart in the log and
    metrics, the failed attempt's files in RUN/attempt-1/."""
    run = home / "runs" / "restarted"
    p = cli(
        "--gpus", "0", "--nproc", "2", "--max-restarts", "1", "--name", "restarted", *CLI_FLAGS,
        env={"GPTKIT_FAULTS": "train.kill_rank=1,train.kill_step=5"},
    )  # fmt: skip
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    assert_same(weights(run / "step_000008"), weights(reference / "step_000008"), exact=True)
    losses = [r["loss"] for r in read_metrics(run) if "loss" in r]
    assert losses == [r["loss"] for r in read_metrics(reference) if "loss" in r]
    restarts = [r for r in read_metrics(run) if "restart" in r]
    assert len(restarts) == 1 and restarts[0]["resumed_from"] == "step_000004", restarts
    assert restarts[0]["failed_at"] == 5 and restarts[0]["cause"] == "local rank 1 of node 0 died with SIGKILL"
    line = [ln for ln in out.splitlines() if ln.startswith("restart 1/1 after ")]
    assert line == ["restart 1/1 after local rank 1 of node 0 died with SIGKILL at step 5: resuming from step_000004"]
    assert (run / "attempt-1" / "failed.json").is_file()


def test_doctor_dist_measures_all_reduce_and_finds_a_rank_with_other_shards(home, trains, tmp_path):
    """`gptkit doctor --dist` on two loopback nodes of one process each, the second given a copy of the
    shards whose manifest differs: every all-reduce result is right, algbw and busbw follow from the
    recorded sizes and times (nccl-tests' formulas), and the shards check fails (exit 1)."""
    from gptkit.doctor.dist import LINK_WARN, LINKS
    from gptkit.train.resolve import check_port

    shards = home / "shards" / "toy"
    other = tmp_path / "other"
    shutil.copytree(shards, other)
    manifest = json.loads((other / "manifest.json").read_text())
    (other / "manifest.json").write_text(json.dumps({**manifest, "note": "another tokenize run"}))
    port = free_port()
    check_port("127.0.0.1", port)
    node = ["--nodes", "2", "--master-addr", "127.0.0.1", "--master-port", str(port), "--nproc", "1"]
    base = [sys.executable, "-m", "gptkit", "doctor", "--dist", "--max-size", "4", "--json", *node]
    n1 = subprocess.Popen([*base, "--node-rank", "1", "--data", str(other)], stdout=subprocess.PIPE, text=True)
    n0 = subprocess.run(
        [*base, "--node-rank", "0", "--data", str(shards), "--link", "eth-10g"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    out1 = n1.communicate(timeout=300)[0]
    assert n1.returncode == 0 and "node 1: joined the check" in out1
    assert n0.returncode == 1, n0.stderr
    assert n0.stdout.strip(), n0.stderr  # the report, not an error before it
    rep = json.loads(n0.stdout)
    assert rep["world_size"] == 2 and [r["size_bytes"] for r in rep["sizes"]] == [1 << 20, 4 << 20]
    for r in rep["sizes"]:
        assert r["correct"]
        assert r["algbw_GBps"] == pytest.approx(r["size_bytes"] / r["seconds"] / 1e9)
        assert r["busbw_GBps"] == pytest.approx(r["algbw_GBps"] * 2 * (2 - 1) / 2)
    c = rep["consistency"]
    assert c["torch"]["same"] and c["gptkit"]["same"]
    assert not c["shards"]["same"] and len(set(c["shards"]["by_rank"].values())) == 2
    assert rep["link"] == {"name": "eth-10g", "how": "given with --link", "GBps": 1.25, "source": LINKS["eth-10g"][1]}
    best = max(r["busbw_GBps"] for r in rep["sizes"])  # the warning follows from the figures, either way
    assert (rep["link_warning"] is None) == (best >= LINK_WARN * 1.25), (best, rep["link_warning"])


def test_nccl_tests_formulas():
    from gptkit.doctor.dist import algbw, busbw

    assert algbw(8 << 20, 0.5) == 16 << 20
    assert busbw(8 << 20, 0.5, 8) == (16 << 20) * 2 * 7 / 8  # nccl-tests: 2(n-1)/n for all-reduce
