"""The parallel strategies in one process: `auto`'s choice, the refusals before launch."""

from dataclasses import replace

import pytest
from conftest import assert_one_line_error, run_cli

from gptkit.errors import GptkitError
from gptkit.model import get_preset, param_count
from gptkit.train import estimate as E
from gptkit.train.config import LaunchConfig, TrainConfig, check_parallel

GB = 10**9


def test_auto_picks_ddp_then_fsdp_then_checkpointing_then_a_smaller_micro_batch():
    xl = get_preset("gpt2-xl")
    n = param_count(xl, padded=True)
    # Four 24 GB cards, GPT-2 XL in bf16: DDP needs ~28 GB before any activation; FSDP2 fits.
    c = E.choose_parallel(xl, n, 1024, 4, 128, True, 24 * GB, world=4)
    assert (c.strategy, c.checkpointing, c.micro_batch) == ("fsdp", False, 4)
    assert "DDP needs ~40.4 GB" in c.why
    # The preset's micro-batch 8: FSDP2's activations do not fit, with checkpointing they do.
    c = E.choose_parallel(xl, n, 1024, 8, 128, True, 24 * GB, world=4)
    assert (c.strategy, c.checkpointing, c.micro_batch) == ("fsdp", True, 8)
    # Nothing fits 64 rows: the largest micro-batch that does.
    c = E.choose_parallel(xl, n, 1024, 64, 128, True, 24 * GB, world=4)
    assert c.micro_batch < 64 and 128 % c.micro_batch == 0 and "none fits 64" in c.why
    assert E.memory_estimate(
        xl, n, 1024, c.micro_batch, True, 24 * GB, strategy="fsdp", world=4, checkpointing=True
    ).fits
    # The tiny model on a CPU with plenty of RAM stays DDP, as runs do today; one process never shards.
    tiny = get_preset("tiny")
    c = E.choose_parallel(tiny, param_count(tiny, padded=True), 64, 16, 16, False, 8 * GB, world=2)
    assert (c.strategy, c.checkpointing) == ("ddp", False)
    c = E.choose_parallel(xl, n, 1024, 4, 4, True, 24 * GB, world=1)
    assert c.strategy == "ddp"
    # What was asked narrows the candidates.
    c = E.choose_parallel(xl, n, 1024, 8, 128, True, 24 * GB, world=4, parallel="fsdp", checkpointing="none")
    assert (c.strategy, c.checkpointing) == ("fsdp", False) and c.micro_batch < 8


def test_fsdp_shards_the_model_state_and_adds_the_gathers():
    xl = get_preset("gpt2-xl")
    n = param_count(xl, padded=True)
    ddp = E.memory_estimate(xl, n, 1024, 1, True, None)
    fsdp = E.memory_estimate(xl, n, 1024, 1, True, None, strategy="fsdp", world=4)
    assert fsdp.optimizer == -(-ddp.optimizer // 4) and fsdp.gradients == -(-ddp.gradients // 4)
    assert fsdp.weights == -(-4 * n // 4) and ddp.gather == 0 < fsdp.gather < ddp.weights
    ac = E.memory_estimate(xl, n, 1024, 8, True, None, strategy="fsdp", world=4, checkpointing=True)
    assert ac.activations < E.memory_estimate(xl, n, 1024, 8, True, None).activations / 3


def test_fsdp_refuses_what_it_cannot_serve_in_one_line():
    fsdp = replace(LaunchConfig(), parallel="fsdp")
    with pytest.raises(GptkitError, match="no FSDP2 grad scaler"):
        check_parallel(fsdp, replace(TrainConfig(), precision="fp16"), "cuda")
    with pytest.raises(GptkitError, match="on MPS use --parallel ddp"):
        check_parallel(fsdp, TrainConfig(), "mps")
    check_parallel(fsdp, TrainConfig(), "cuda")
    check_parallel(fsdp, replace(TrainConfig(), optimizer="muon"), "cpu")  # refused before issue 21's FSDP2 Muon
    check_parallel(replace(LaunchConfig(), parallel="ddp"), replace(TrainConfig(), precision="fp16"), "cuda")


def test_an_unknown_strategy_is_one_line_before_anything_starts(gptkit_home):
    from test_train_data import make_dataset

    make_dataset(gptkit_home / "shards" / "toy")
    for flags, msg in (
        (["--parallel", "zero3"], "unknown --parallel 'zero3'; choose one of: auto, ddp, fsdp"),
        (["--activation-checkpointing", "all"], "unknown --activation-checkpointing 'all'"),
    ):
        r = run_cli("train", "--gpus", "0", "--preset", "tiny", "--name", "bad", "--dry-run", *flags)
        assert msg in assert_one_line_error(r)
    assert not (gptkit_home / "runs" / "bad").exists()


def _step(mc, x, checkpointing: bool):
    """One forward/backward of a fresh model (fp32, CPU, the fused head as the trainer runs it): the
    loss, the gradients, and the bytes autograd saved for backward (parameters aside, each storage once)."""
    import torch

    from gptkit.model import GPT
    from gptkit.train.loss import fuse_loss
    from gptkit.train.parallel import checkpoint_blocks

    torch.manual_seed(0)
    m = fuse_loss(GPT(mc))
    if checkpointing:
        checkpoint_blocks(m)
    params = {p.untyped_storage().data_ptr() for p in m.parameters()}
    saved: dict[int, int] = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            saved[s.data_ptr()] = s.nbytes()
        return t

    torch.manual_seed(1)  # the dropout masks
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        _, loss = m(x[:, :-1], x[:, 1:])
    loss.backward()
    return loss.item(), [p.grad for p in m.parameters()], sum(saved.values())


def test_activation_checkpointing_is_exact_and_saves_what_the_plan_says():
    import torch

    mc = replace(get_preset("tiny"), dropout=0.1, block_size=128).with_vocab(256)
    B, T = 4, 128
    x = torch.randint(0, 256, (B, T + 1), generator=torch.Generator().manual_seed(0))
    loss, grads, full = _step(mc, x, checkpointing=False)
    loss_ac, grads_ac, kept = _step(mc, x, checkpointing=True)
    # Identical: the recompute replays the forward's random state, so dropout draws the same masks.
    assert loss_ac == loss and all(torch.equal(a, b) for a, b in zip(grads, grads_ac, strict=True))
    assert kept < full / 5  # measured: 0.7 MB of 8.3 MB; a wrapper that recomputed nothing saves it all

    # The plan's activation estimate against what autograd saves, with and without checkpointing
    # (fp32, the fused CPU head, no dropout: GPT-2's pretraining setting; dropout on CPU takes SDPA's
    # math path, which also saves the attention scores).
    mc = replace(mc, dropout=0.0)
    _, _, full = _step(mc, x, checkpointing=False)
    _, _, kept = _step(mc, x, checkpointing=True)
    # (each block's input is among them: the first op inside saves it through the outer hooks too)
    planned_full = E.activation_bytes(mc, T, B, False, fused_head=True)
    planned_kept = E.checkpointed_activation_bytes(mc, T, B, False, fused_head=True, recompute=False)
    assert abs(planned_full / full - 1) < 0.1, (planned_full, full)  # measured: 4.78 vs 4.56 MB
    assert abs(planned_kept / kept - 1) < 0.1, (planned_kept, kept)


def test_the_plan_shows_every_strategy_and_picks_fsdp_for_gpt2_xl_on_four_24gb_cards(gptkit_home):
    r = run_cli("train", "--plan", "--preset", "gpt2-xl", "--gpus", "4", "--gpu-type", "rtx4090")
    assert r.returncode == 0, r.stderr
    rows = {line.strip().split("  ")[0]: line for line in r.stdout.splitlines() if line.strip()}
    assert rows["parallel"].split()[1:5] == ["fsdp", "with", "activation", "checkpointing"], rows["parallel"]
    assert "DDP needs ~52.8 GB" in rows["parallel"] and "fits in 24.0 GB" in rows["parallel"]
    assert "DOES NOT FIT" in rows["ddp"] and "none fits" in rows["ddp"]
    assert "DOES NOT FIT" in rows["fsdp"] and "largest micro-batch 4" in rows["fsdp"]
    assert " fits = weights 1.6 GB + grads 1.6 GB + AdamW 3.1 GB" in rows["fsdp + checkpointing"]
    assert "all-gather 0.4 GB" in rows["memory / process"]


def test_the_plans_per_rank_state_is_what_each_strategy_holds():
    """Weights, gradients and AdamW moments on rank 0 of 2, as the real tensors hold them after a step:
    FSDP2 over a fake process group (one process plays rank 0 of 2; collectives do nothing), DDP's
    in a plain model. The plan's figures are exact for these parts."""
    import torch
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor
    from torch.testing._internal.distributed.fake_pg import FakeStore

    from gptkit.model import GPT
    from gptkit.train.config import TrainConfig
    from gptkit.train.dist import Dist
    from gptkit.train.optim import build_optimizers
    from gptkit.train.parallel import make_strategy

    mc = get_preset("tiny").with_vocab(256)
    n = param_count(mc, padded=True)

    def held(model, opts) -> tuple[int, int, int]:
        def local(t):
            return t.to_local() if isinstance(t, DTensor) else t

        weights = sum(local(p).nbytes for p in model.parameters())
        grads = sum(local(p.grad).nbytes for p in model.parameters())
        moments = sum(local(v).nbytes for o in opts for st in o.state.values() for k, v in st.items() if k != "step")
        return weights, grads, moments

    def one_step(model):
        opts = build_optimizers(TrainConfig(), model, torch.device("cpu"))
        x = torch.randint(0, 256, (2, 33), generator=torch.Generator().manual_seed(0))
        model(x[:, :-1], x[:, 1:])[1].backward()
        for o in opts:
            o.step()
        return held(model, opts)

    ddp = E.memory_estimate(mc, n, 32, 2, False, None)
    assert one_step(GPT(mc)) == (ddp.weights, ddp.gradients, ddp.optimizer)
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=2)
    try:
        model = GPT(mc)
        make_strategy("fsdp", Dist("cpu")).wrap(model, compile=False)
        fsdp = E.memory_estimate(mc, n, 32, 2, False, None, strategy="fsdp", world=2)
        assert one_step(model) == (fsdp.weights, fsdp.gradients, fsdp.optimizer)
        assert fsdp.weights * 2 == ddp.weights
    finally:
        dist.destroy_process_group()


def test_auto_shards_a_muon_run_where_ddp_does_not_fit(monkeypatch):
    """gpt2-xl in fp32 on 4 CPU processes sharing 96 GB: DDP does not fit, FSDP2 does, and Muon now
    goes with it (before issue 21's FSDP2 Muon, auto kept Muon on DDP). MPS still stays DDP."""
    from types import SimpleNamespace

    from gptkit.train.resolve import choose_parallel

    monkeypatch.setattr(E, "free_ram", lambda: 96 * GB)  # the machine's RAM is what cannot be set here
    plan = SimpleNamespace(micro_batch=2, rows=32, world_size=4)
    auto = replace(LaunchConfig(), parallel="auto")
    for opt in ("adamw", "muon"):
        cfg = replace(TrainConfig(), optimizer=opt, precision="fp32", seq_len=1024)
        assert choose_parallel(cfg, auto, "cpu", 4, plan, get_preset("gpt2-xl")).strategy == "fsdp", opt
    assert choose_parallel(cfg, auto, "mps", 4, plan, get_preset("gpt2-xl")).strategy == "ddp"
