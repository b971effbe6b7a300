"""Config resolution, batch arithmetic, schedules, the torchrun command (no processes). MFU: test_mfu.py."""

import json
from itertools import pairwise
from pathlib import Path

import pytest
from test_train_data import make_dataset

from gptkit.errors import GptkitError
from gptkit.train import config as C
from gptkit.train.launch import torchrun_command, worker_env
from gptkit.train.metrics import read_metrics, truncate_metrics
from gptkit.train.resolve import prepare
from gptkit.train.schedule import lr_at

TINY = C.TrainOverrides(preset="tiny")


def test_gpt2_preset_is_the_reproduction_recipe():
    cfg = C.preset_config("gpt2")
    assert (cfg.batch_tokens, cfg.seq_len, cfg.lr, cfg.warmup_steps, cfg.max_steps) == (524288, 1024, 6e-4, 715, 19073)
    assert (cfg.beta1, cfg.beta2, cfg.weight_decay, cfg.grad_clip, cfg.min_lr_ratio) == (0.9, 0.95, 0.1, 1.0, 0.1)
    assert cfg.batch_tokens * cfg.max_steps == pytest.approx(10e9, rel=0.001)


@pytest.mark.parametrize("world,accum", [(1, 8), (2, 4), (4, 2), (8, 1)])
def test_accumulation_follows_the_world_size_and_the_batch_does_not(world, accum):
    plan = C.plan_batches(C.preset_config("gpt2"), world, micro_batch_given=False)
    assert plan.micro_batch == 64 and plan.grad_accum == accum
    assert plan.micro_batch * plan.grad_accum * world * 1024 == 524288


def test_the_preset_micro_batch_shrinks_to_fit_but_an_explicit_one_must_divide():
    cfg = C.preset_config("gpt2")
    assert C.plan_batches(cfg, 16, micro_batch_given=False).micro_batch == 32  # 32 sequences per GPU
    with pytest.raises(GptkitError, match="does not divide over 3 processes"):
        C.plan_batches(cfg, 3, micro_batch_given=False)
    with pytest.raises(GptkitError, match="--micro-batch 48 does not divide"):
        C.plan_batches(C.merge(cfg, {"micro_batch": 48}, "test"), 1, micro_batch_given=True)


def test_schedules():
    kw = dict(lr=1.0, max_steps=100, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, **kw) == pytest.approx(0.1) and lr_at(9, **kw) == pytest.approx(1.0)
    assert lr_at(10, **kw) == pytest.approx(1.0) and lr_at(55, **kw) == pytest.approx(0.55)
    assert lr_at(100, **kw) == pytest.approx(0.1) and lr_at(500, **kw) == pytest.approx(0.1)
    cos = [lr_at(s, **kw) for s in range(10, 100)]
    assert all(a >= b for a, b in pairwise(cos))
    wsd = dict(kw, schedule="wsd", decay_frac=0.2)
    assert [lr_at(s, **wsd) for s in (10, 50, 79)] == [1.0, 1.0, 1.0]
    assert lr_at(90, **wsd) == pytest.approx(0.55) and lr_at(100, **wsd) == pytest.approx(0.1)


def test_config_files_and_flags_resolve_in_order(tmp_path, gptkit_home):
    make_dataset(gptkit_home / "shards" / "toy")
    toml = tmp_path / "run.toml"
    toml.write_text('preset = "tiny"\nlr = 0.01\nmax_steps = 50\nseq_len = 64\nnproc = 2\n')
    rr = prepare(C.TrainOverrides(max_steps=7), C.LaunchOverrides(gpus=0), config_file=toml, name="r")
    assert (rr.train.preset, rr.train.lr, rr.train.max_steps, rr.train.seq_len) == ("tiny", 0.01, 7, 64)
    assert rr.launch.nproc == 2 and rr.plan.world_size == 2
    assert rr.train.data == str((gptkit_home / "shards" / "toy").resolve())  # pinned for resumes
    yaml = tmp_path / "run.yaml"
    yaml.write_text("preset: tiny\nschedule: wsd\nwarmup-steps: 3\n")
    rr = prepare(C.TrainOverrides(), C.LaunchOverrides(gpus=0, nproc=1), config_file=yaml, name="r")
    assert (rr.train.schedule, rr.train.warmup_steps) == ("wsd", 3)
    bad = tmp_path / "bad.toml"
    bad.write_text("learning_rate = 1\n")
    with pytest.raises(GptkitError, match="unknown setting 'learning_rate'"):
        prepare(C.TrainOverrides(), C.LaunchOverrides(gpus=0), config_file=bad)
    bad.write_text('lr = "fast"\n')
    with pytest.raises(GptkitError, match="lr must be float"):
        prepare(C.TrainOverrides(), C.LaunchOverrides(gpus=0), config_file=bad)


def test_config_file_values_are_checked_against_the_field_types():
    check = C.check_types
    assert check({"lr": 1, "micro_batch": None, "max_steps": None}, C.TrainConfig, "f") == {
        "lr": 1.0,  # an int is taken for a float
        "micro_batch": None,  # may be None
    }  # max_steps cannot be None: a bare key keeps the default
    assert check({"master_port": 29500, "master_addr": "h"}, C.LaunchConfig, "f") == {
        "master_port": 29500,
        "master_addr": "h",
    }
    for key, value, want in (
        ("max_steps", True, "int"),
        ("max_steps", 1.5, "int"),
        ("lr", "fast", "float"),
        ("compile", 1, "bool"),
        ("wandb", 3, "str"),
    ):
        with pytest.raises(GptkitError, match=f"^f: {key} must be {want}, got"):
            check({key: value}, C.TrainConfig, "f")
    with pytest.raises(GptkitError, match="nproc must be int"):
        check({"nproc": "2"}, C.LaunchConfig, "f")


def test_an_unknown_preset_is_refused_in_one_place():
    for refuse in (C.preset_config, lambda name: C.validate(C.TrainConfig(preset=name))):
        with pytest.raises(GptkitError, match="unknown model preset 'gpt5'; choose one of: gpt2, "):
            refuse("gpt5")


@pytest.mark.parametrize(
    "setting,value,message",
    [
        ("grad_clip", -1.0, "--grad-clip cannot be negative (got -1.0); 0 turns clipping off"),
        ("seed", -1, "--seed must be 0 or more"),
        ("precision", "fp8", "unknown --precision 'fp8'; choose one of: auto, fp32, bf16, fp16"),
        ("weight_decay", -0.1, "--weight-decay cannot be negative"),
        ("beta1", 1.5, "beta1 must be in [0, 1)"),
        ("beta2", -0.1, "beta2 must be in [0, 1)"),
        ("eps", 0.0, "eps must be positive"),
        ("keep_checkpoints", -3, "--keep must be 0 (keep all) or more"),
        ("hellaswag_limit", 0, "--hellaswag-limit must be at least 1"),
        ("optimizer", "lion", "unknown --optimizer 'lion'; choose one of: adamw, muon"),
        ("muon_lr", 0.0, "--muon-lr must be positive"),
        ("muon_momentum", 1.0, "--muon-momentum must be in [0, 1)"),
        ("muon_adjust_lr", "rms", "unknown --muon-adjust-lr 'rms'; choose one of: original, match_rms_adamw"),
        ("muon_qkv", "qkv", "unknown --muon-qkv 'qkv'; choose one of: whole, split"),
    ],
)
def test_optimiser_settings_a_worker_would_refuse_or_misuse_are_refused_first(setting, value, message):
    C.validate(C.TrainConfig(preset="tiny"))
    with pytest.raises(GptkitError) as e:
        C.validate(C.TrainConfig(preset="tiny", **{setting: value}))
    assert str(e.value).startswith(message), str(e.value)


def test_a_too_small_validation_set_names_what_limits_it(gptkit_home):
    make_dataset(gptkit_home / "shards" / "small-val", val_tokens=100)
    launch = C.LaunchOverrides(gpus=0, nproc=1)
    flags = dict(preset="tiny", data="small-val", batch_tokens=256, hellaswag_every=0)
    with pytest.raises(GptkitError, match=r"validation shard \(\d+ tokens\) is too small .* larger --val-tokens"):
        prepare(C.TrainOverrides(seq_len=128, eval_tokens=10_000, **flags), launch, out=gptkit_home / "a")
    with pytest.raises(GptkitError, match="--eval-tokens 16 is too small .*; raise --eval-tokens"):
        prepare(C.TrainOverrides(seq_len=32, eval_tokens=16, **flags), launch, out=gptkit_home / "b")


def test_init_from_takes_the_weights_context_and_cpu_sizing(gptkit_home):
    """`gptkit train --init-from imported/ --lr 1e-4` (the README's line) on a small imported model:
    no --seq-len 1024 it cannot take, and on a CPU the auto-sizing for that model."""
    from gptkit.checkpoint import save_checkpoint
    from gptkit.model import GPT, GPTConfig

    make_dataset(gptkit_home / "shards" / "toy")
    m = GPT(GPTConfig(block_size=96, vocab_size=256, padded_vocab_size=256, n_layer=2, n_head=2, n_embd=32))
    ck = save_checkpoint(gptkit_home / "imported", m, config=m.config, tokenizer="bytes")
    launch = C.LaunchOverrides(gpus=0, nproc=1)
    notes = []
    rr = prepare(
        C.TrainOverrides(init_from=str(ck), data="toy", lr=1e-4), launch, out=gptkit_home / "a", warn=notes.append
    )
    t = rr.train
    assert (t.n_layer, t.n_embd, t.block_size) == (2, 32, 96) and t.seq_len <= 96 and t.lr == 1e-4
    assert rr.extra["auto"]["line"].startswith("no GPU, no --preset: your 2x2x32 model with the ")
    # a GPU recipe given by name: its 1024-token sequence becomes the weights' 96, the batch whole rows
    rr = prepare(C.TrainOverrides(init_from=str(ck), data="toy", preset="gpt2"), launch, out=gptkit_home / "b")
    assert rr.train.seq_len == 96 and rr.train.batch_tokens % 96 == 0
    assert abs(rr.train.batch_tokens - 524_288) <= 48
    with pytest.raises(GptkitError, match="--seq-len 1024 exceeds the model's context length 96"):
        prepare(C.TrainOverrides(init_from=str(ck), data="toy", seq_len=1024), launch, out=gptkit_home / "c")
    hf = gptkit_home / "hf-folder"  # a Hugging Face folder: its config.json is not a checkpoint's
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 2}))
    (hf / "model.safetensors").write_bytes(b"")
    with pytest.raises(GptkitError, match=r"--init-from .*hf-folder: .*; make a checkpoint with `gptkit convert"):
        prepare(C.TrainOverrides(init_from=str(hf), data="toy"), launch, out=gptkit_home / "d")


def test_no_data_is_the_one_line_without_a_recipe_warning_first(gptkit_home):
    warnings = []
    with pytest.raises(GptkitError, match="no tokenized data"):
        prepare(C.TrainOverrides(max_steps=2), C.LaunchOverrides(gpus=0, nproc=1), name="x", warn=warnings.append)
    assert warnings == []


def test_grad_clip_0_means_no_clipping(gptkit_home, trains):
    """nanoGPT's meaning: 0 turns clipping off (it used to scale every gradient to zero)."""
    import torch

    from gptkit.train.dist import Dist
    from gptkit.train.trainer import Trainer

    make_dataset(gptkit_home / "shards" / "toy")
    weights = {}
    for clip in (0.0, 1e9, 0.01):
        flags = dict(seq_len=32, batch_tokens=256, micro_batch=4, eval_tokens=0, hellaswag_every=0, precision="fp32")
        o = C.TrainOverrides(preset="tiny", data="toy", grad_clip=clip, warmup_steps=0, lr=1e-3, **flags)
        tr = Trainer(prepare(o, C.LaunchOverrides(gpus=0, nproc=1), out=gptkit_home / f"clip{clip}"), Dist("cpu"))
        tr.train_step()
        weights[clip] = torch.cat([p.detach().flatten() for p in tr.model.parameters()])
    assert torch.equal(weights[0.0], weights[1e9])
    assert not torch.allclose(weights[0.0], weights[0.01])  # clipping does act at a small bound


def test_out_of_memory_in_every_phase_is_one_line_with_what_to_change(gptkit_home, trains, monkeypatch):
    """CUDA out of memory (raised here by the fault point train.oom, as a GPU would) in evaluation,
    HellaSwag and sampling gets a line with the fix, as the training step does, never a traceback;
    and it is this rank's alone (peers stop for it). The real CUDA error: scripts/gpu_check.py."""
    from gptkit.train.dist import Dist, TrainingError
    from gptkit.train.trainer import Trainer

    make_dataset(gptkit_home / "shards" / "toy")
    hs = gptkit_home / "data" / "hellaswag" / "val.jsonl"
    hs.parent.mkdir(parents=True)
    hs.write_text(json.dumps({"ctx": "a cat", "endings": ["sat", "ran", "is", "jumps"], "label": 1}) + "\n")
    flags = dict(seq_len=32, batch_tokens=256, micro_batch=4, eval_tokens=256, precision="fp32", max_steps=2)
    cadence = dict(eval_every=1, hellaswag_every=1, sample_every=1, sample_tokens=4, log_every=1)
    want = {
        "train": "CUDA out of memory at --micro-batch 4; try --micro-batch 2 (gradient accumulation keeps the "
        "global batch at 256 tokens)",
        "evaluation": "CUDA out of memory in evaluation (its batches have --micro-batch rows too) at --micro-batch 4; "
        "try --micro-batch 2 (",
        "hellaswag": "CUDA out of memory in HellaSwag (beside what the training steps keep) at --micro-batch 4; try "
        "--micro-batch 2 (",
        "sample": "CUDA out of memory while sampling 4 tokens (beside what the training steps keep) at --micro-batch 4",
    }
    ends = {"hellaswag": "; or turn it off with --hellaswag-every 0", "sample": "; or --sample-tokens 0"}
    for phase, line in want.items():
        o = C.TrainOverrides(preset="tiny", data="toy", **flags, **cadence)
        tr = Trainer(prepare(o, C.LaunchOverrides(gpus=0, nproc=1), out=gptkit_home / f"oom-{phase}"), Dist("cpu"))
        monkeypatch.setenv("GPTKIT_FAULTS", f"train.oom={phase}")
        with pytest.raises(TrainingError) as e:
            tr.fit()
        monkeypatch.delenv("GPTKIT_FAULTS")
        msg = str(e.value)
        assert msg.startswith(line) and msg.endswith(ends.get(phase, "tokens)")) and "\n" not in msg, (phase, msg)
        assert e.value.collective is False
        done = [m for m in read_metrics(Path(tr.run_dir)) if "loss" in m]
        assert len(done) == (1 if phase == "sample" else 0), phase  # a sample comes after a step


def test_trainer_saves_and_restores_its_grad_scaler(gptkit_home, trains):
    """fp16 resume: the scaler's scale and growth tracker go into the checkpoint and back. fp16 is
    refused on CPU, so the (real, CPU) GradScaler is given to fp32 trainers by hand."""
    import torch
    from test_checkpoint import moved_scaler

    from gptkit.train.dist import Dist
    from gptkit.train.trainer import Trainer

    make_dataset(gptkit_home / "shards" / "toy")
    flags = dict(seq_len=32, batch_tokens=256, micro_batch=4, eval_tokens=0, hellaswag_every=0, precision="fp32")
    rr = prepare(C.TrainOverrides(preset="tiny", data="toy", **flags), C.LaunchOverrides(gpus=0, nproc=1), name="sc")
    first = Trainer(rr, Dist("cpu"))
    first.scaler = scaler = moved_scaler()
    first.step = 1
    first.save()
    ck = Path(rr.run_dir) / "step_000001"
    assert json.loads((ck / "trainer.json").read_text())["grad_scaler"]["scale"] == 2.0**15
    again = Trainer(rr, Dist("cpu"))
    again.scaler = torch.amp.GradScaler("cpu", growth_interval=1000)
    again._load(ck)
    assert again.scaler.state_dict() == scaler.state_dict() and again.step == 1


def test_worker_threads_and_the_plan_agree_with_omp_num_threads(gptkit_home, monkeypatch):
    from gptkit.train.mfu import usable_cores
    from gptkit.train.resolve import make_plan

    make_dataset(gptkit_home / "shards" / "toy")
    rr = prepare(TINY, C.LaunchOverrides(gpus=0, nproc=1), name="threads")
    for given, want in (("1", 1), ("3", 3), (None, usable_cores()), ("", usable_cores())):
        if given is None:
            monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        else:
            monkeypatch.setenv("OMP_NUM_THREADS", given)
        assert worker_env(rr)["OMP_NUM_THREADS"] == str(want)
        hardware = make_plan(TINY, C.LaunchOverrides(gpus=0, nproc=1), measure=False).hardware
        assert hardware == f"CPU, 1 process x {want} thread{'s' if want > 1 else ''}", hardware


def test_torchrun_commands(gptkit_home):
    make_dataset(gptkit_home / "shards" / "toy")
    rr = prepare(TINY, C.LaunchOverrides(gpus=0, nproc=2), name="cmd")
    cmd = torchrun_command(rr)
    assert cmd[1:4] == ["-m", "torch.distributed.run", "--nproc-per-node"] and "--standalone" in cmd
    assert cmd[-2:] == ["gptkit.train.main", rr.run_dir]
    env = worker_env(rr)
    assert env["GPTKIT_LAUNCHER"] == "1" and int(env["OMP_NUM_THREADS"]) >= 1
    rr = prepare(
        TINY,
        C.LaunchOverrides(gpus=0, nodes=2, node_rank=1, master_addr="10.1.2.3", master_port=29511),
        name="cmd",
    )
    cmd = " ".join(torchrun_command(rr))
    assert "--nnodes 2 --node-rank 1 --rdzv-backend c10d --rdzv-endpoint 10.1.2.3:29511" in cmd and "is_host=0" in cmd
    assert rr.plan.world_size == 2
    with pytest.raises(GptkitError, match="--master-port"):
        prepare(TINY, C.LaunchOverrides(gpus=0, nodes=2), name="cmd")
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(GptkitError, match="no CUDA GPU"):
            prepare(TINY, C.LaunchOverrides(gpus=2), name="cmd")


def test_resume_refuses_to_overwrite_and_needs_a_real_checkpoint(gptkit_home, tmp_path):
    make_dataset(gptkit_home / "shards" / "toy")
    (gptkit_home / "runs" / "x" / "step_000002").mkdir(parents=True)
    for f in ("model.safetensors", "config.json"):
        (gptkit_home / "runs" / "x" / "step_000002" / f).write_text("{}")
    with pytest.raises(GptkitError, match="already holds checkpoints; continue it with --resume auto"):
        prepare(TINY, C.LaunchOverrides(gpus=0), name="x")
    with pytest.raises(GptkitError, match="holds no training state"):
        prepare(TINY, C.LaunchOverrides(gpus=0), name="x", resume="auto")
    with pytest.raises(GptkitError, match="not a checkpoint"):
        prepare(TINY, C.LaunchOverrides(gpus=0), resume=str(tmp_path))


def test_truncating_metrics_on_resume(tmp_path):
    lines = [
        {"step": 0, "val_loss": 5},
        {"step": 1, "loss": 4},
        {"step": 2, "loss": 3},
        {"step": 2, "val_loss": 3},
        {"step": 3, "loss": 2},
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in lines) + '{"step": 4, "lo')
    truncate_metrics(tmp_path, 2)
    assert read_metrics(tmp_path) == lines[:3]


def test_optional_loggers_must_be_installed_before_launch(gptkit_home):
    import importlib.util

    make_dataset(gptkit_home / "shards" / "toy")
    for flag, module in (({"tensorboard": True}, "tensorboard"), ({"wandb": "proj"}, "wandb")):
        if importlib.util.find_spec(module) is None:
            with pytest.raises(GptkitError, match=f"pip install {module}"):
                prepare(C.TrainOverrides(preset="tiny", **flag), C.LaunchOverrides(gpus=0), name="log")
        else:
            assert prepare(C.TrainOverrides(preset="tiny", **flag), C.LaunchOverrides(gpus=0), name="log")
