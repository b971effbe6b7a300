"""`gptkit train --plan`, and the terminal's step line and end-of-run summary (pure functions)."""

import json

import pytest
from conftest import assert_one_line_error, run_cli
from test_train_data import make_dataset

from gptkit.model import get_preset, param_count
from gptkit.train import config as C
from gptkit.train.estimate import largest_fitting_micro_batch, memory_estimate
from gptkit.train.metrics import LIVE_WIDTH, step_fields, step_line, summarize, summary_lines
from gptkit.train.mfu import gpu_peak_flops
from gptkit.train.plan import ASSUMED_GPU_MFU, render_plan
from gptkit.train.resolve import make_plan

H100 = C.LaunchOverrides(gpus=8)


def test_gpt2_on_8_h100_is_planned_from_the_data_sheet(gptkit_home):
    p = make_plan(C.TrainOverrides(preset="gpt2"), H100, gpu_type="H100")
    assert p.device == "cuda" and p.processes == 8 and p.precision == "bf16"
    assert p.n_params == 124_475_904  # GPT-2 small with the vocabulary padded to 50304
    assert (p.tokens_per_step, p.steps, p.total_tokens) == (524_288, 19_073, 524_288 * 19_073)
    assert (p.micro_batch, p.grad_accum) == (64, 1)
    fpt = 6 * (p.n_params - 1024 * 768) + 12 * 12 * 768 * 1024
    assert p.step_s == pytest.approx(fpt * 524_288 / (8 * gpu_peak_flops("H100", "bf16") * ASSUMED_GPU_MFU))
    assert 20 * 60 < p.wall_s < 2 * 3600
    assert p.memory.free == 80e9 and p.memory.fits
    assert "assumed MFU of 40%" in p.time_basis
    assert any("GPT-2's vocabulary" in n for n in p.notes)  # no data in this home
    text = "\n".join(render_plan(p))
    for word in ("124.5M parameters", "524,288", "19,073", "10.0B", "AdamW", "activations", "wall time"):
        assert word in text


@pytest.mark.parametrize("gpu", ["T4", "V100"])
def test_gpus_without_bf16_are_planned_in_fp32_as_the_run_resolves_auto(gptkit_home, gpu):
    """device.precision_policy decides for the plan as for the run: auto is fp32 without native bf16
    (the plan used to say fp16: ~8x short, half-size weights)."""
    p = make_plan(C.TrainOverrides(preset="gpt2"), C.LaunchOverrides(gpus=1), gpu_type=gpu)
    assert p.precision == "fp32" and p.memory.weights == 4 * p.n_params
    fpt = 6 * (p.n_params - 1024 * 768) + 12 * 12 * 768 * 1024
    assert p.step_s == pytest.approx(fpt * 524_288 / (gpu_peak_flops(gpu, "fp32") * ASSUMED_GPU_MFU))
    assert (
        make_plan(C.TrainOverrides(preset="gpt2", precision="fp16"), C.LaunchOverrides(gpus=1), gpu_type=gpu).precision
        == "fp16"
    )


def test_fp32_on_an_ampere_gpu_is_timed_at_its_tf32_peak(gptkit_home):
    p = make_plan(C.TrainOverrides(preset="gpt2", precision="fp32"), H100, gpu_type="H100")
    fpt = 6 * (p.n_params - 1024 * 768) + 12 * 12 * 768 * 1024
    assert p.precision == "fp32"
    assert p.step_s == pytest.approx(fpt * 524_288 / (8 * gpu_peak_flops("H100", "tf32") * ASSUMED_GPU_MFU))
    assert p.time_basis.startswith("data-sheet fp32 (TF32 matmuls) peak 495 TFLOP/s per GPU"), p.time_basis


def test_memory_estimate_adds_up_and_the_largest_micro_batch_fits():
    mc = get_preset("gpt2")
    n = param_count(mc, padded=True)
    m = memory_estimate(mc, n, 1024, 8, half=True, free=None)
    assert m.total == m.weights + m.optimizer + m.gradients + m.activations and m.fits is None
    assert m.optimizer == 8 * n and m.gradients == 4 * n
    assert memory_estimate(mc, n, 1024, 16, True, None).activations == 2 * m.activations  # linear in rows
    free = 10 * 2**30
    best = largest_fitting_micro_batch(mc, n, 1024, 64, True, free)
    assert best is not None and 64 % best == 0
    assert memory_estimate(mc, n, 1024, best, True, free).fits
    bigger = [d for d in (2, 4, 8, 16, 32, 64) if d > best]
    assert all(not memory_estimate(mc, n, 1024, d, True, free).fits for d in bigger)
    assert largest_fitting_micro_batch(mc, n, 1024, 64, True, 1000) is None  # nothing fits in 1 kB


def test_a_plan_that_does_not_fit_warns(gptkit_home):
    p = make_plan(C.TrainOverrides(preset="gpt2-xl"), C.LaunchOverrides(gpus=1), gpu_type="T4")
    assert p.memory.fits is False
    assert any("will not fit" in w for w in p.warnings)


def test_cpu_plan_measures_the_real_model(gptkit_home):
    make_dataset(gptkit_home / "shards" / "toy")
    p = make_plan(C.TrainOverrides(preset="tiny", max_steps=10), C.LaunchOverrides(gpus=0))
    assert p.device == "cpu" and p.steps == 10 and p.step_s > 0 and p.wall_s == pytest.approx(10 * p.step_s)
    assert p.time_basis.startswith("measured here")
    assert p.memory.free and p.memory.fits and p.max_micro_batch == 32  # all 32 rows of a step fit
    assert p.n_params == param_count(get_preset("tiny").with_vocab(256), padded=True)


def test_the_plan_is_of_the_shape_given_not_the_presets(gptkit_home):
    from gptkit.model import GPTConfig

    make_dataset(gptkit_home / "shards" / "toy")
    given = C.TrainOverrides(n_layer=3, n_head=2, n_embd=48, seq_len=32, max_steps=10)
    p = make_plan(given, C.LaunchOverrides(gpus=0))
    want = GPTConfig(block_size=32, n_layer=3, n_head=2, n_embd=48).with_vocab(256)
    assert p.n_params == param_count(want, padded=True) and p.shape == "3 layers x 2 heads x 48 wide, block 32"


def test_plan_cli_json_and_errors(gptkit_home):
    r = run_cli("train", "--plan", "--preset", "gpt2", "--gpus", "8", "--gpu-type", "H100", "--json", check=True)
    d = json.loads(r.stdout)
    assert d["n_params"] == 124_475_904 and d["processes"] == 8 and d["memory"]["fits"] is True
    assert not (gptkit_home / "runs").exists()  # nothing written, nothing started
    line = assert_one_line_error(run_cli("train", "--plan", "--gpus", "2", "--gpu-type", "Z80"))
    assert "Z80" in line and "H100" in line
    assert "--plan" in assert_one_line_error(run_cli("train", "--gpu-type", "H100"))


# --- the terminal ------------------------------------------------------------------------------------
FIELDS = step_fields(loss=3.14159, lr=6e-4, grad_norm=0.512, tok_per_s=123_456, mfu=0.4123, eta_s=3725)


def test_step_line_keeps_everything_in_a_log_file():
    line = step_line(12_345, 19_073, FIELDS)
    assert line == (
        "step 12345/19073 | loss 3.1416 | lr 6.00e-04 | gnorm 0.51 | 123.5k tok/s | mfu 41.2% | eta 1:02:05"
    )


@pytest.mark.parametrize("width", [80, 60, 40, 20, 5])
def test_step_line_fits_the_terminal_and_never_drops_the_step(width):
    line = step_line(12_345, 19_073, FIELDS, width)
    assert line.startswith("step 12345/19073")
    assert len(line) <= max(width, len("step 12345/19073"))
    if width >= LIVE_WIDTH:
        assert "loss" in line and "eta" in line and "tok/s" in line and "mfu" in line  # the important ones stay


def test_fields_go_in_priority_order():
    # gnorm first, then lr, then mfu, then tok/s, eta, loss
    widths = [len(step_line(12_345, 19_073, FIELDS, w)) for w in range(100, 10, -1)]
    assert widths == sorted(widths, reverse=True)
    at = {w: step_line(12_345, 19_073, FIELDS, w) for w in (90, 80, 70, 50, 40)}
    assert "gnorm" not in at[90] and "lr" in at[90]
    assert "lr" not in at[80] and "mfu" in at[80]
    assert "mfu" not in at[70] and "tok/s" in at[70]
    assert at[50] == "step 12345/19073 | loss 3.1416 | eta 1:02:05"
    assert at[40] == "step 12345/19073 | loss 3.1416"


def test_summary_of_a_run():
    records = [
        {"step": 0, "val_loss": 5.5},
        *[
            {
                "step": s,
                "loss": 5 - s / 10,
                "tokens": 4096 * s,
                "tok_per_s": 2000.0,
                "mfu": 0.1,
                "dt": 2.048,
                "time": 100 + 2.048 * s,
            }
            for s in range(1, 11)
        ],
        {"step": 5, "val_loss": 4.2},
        {"step": 10, "val_loss": 4.3},
    ]
    s = summarize(records)
    assert s["best_val_loss"] == 4.2 and s["best_val_step"] == 5 and s["steps"] == 10
    assert s["tokens"] == 40_960 and s["tok_per_s"] == pytest.approx(2000) and s["mfu"] == pytest.approx(0.1)
    assert s["wall_s"] == pytest.approx(10 * 2.048)
    lines = summary_lines(s, "/runs/x/step_000010", "x")
    assert (
        lines[0]
        == "done: 10 steps | best val loss 4.2000 (step 5) | 41.0k tokens | in 0:20 | mean 2.0k tok/s, mfu 10.0%"
    )
    assert lines[1:] == ["checkpoint: /runs/x/step_000010", "next: gptkit sample --model x"]
    assert summarize([{"step": 0, "val_loss": 5.5}]) is None
    no_val = summary_lines(summarize(records[1:11]), None, "/abs/run")
    assert "final loss 4.0000" in no_val[0] and no_val[-1] == "next: gptkit sample --model /abs/run"


def test_wall_time_leaves_out_the_time_between_a_stop_and_a_resume():
    def steps(first, last, t0):
        return [{"step": s, "loss": 1.0, "dt": 1.0, "time": t0 + (s - first + 1)} for s in range(first, last + 1)]

    # session 1: starts at t=0 (an evaluation first), steps 1-20 end at t=22; an hour later, steps 21-30
    records = [{"step": 0, "start": 0.0}, *[dict(r, time=r["time"] + 2) for r in steps(1, 20, 0.0)]]
    records += [{"step": 20, "start": 3600.0}, *steps(21, 30, 3601.0)]
    assert summarize(records)["wall_s"] == pytest.approx(22 + 11)
    # an older file without start records: the first step's start to the last step's end, as before
    assert summarize(steps(1, 20, 0.0))["wall_s"] == pytest.approx(20)


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_the_optimizer_state_estimate_is_the_real_optimizers_bytes(optimizer):
    """The state the run's optimizers hold after a step (build_optimizers: AdamW, or Muon's one
    momentum per block-matrix entry beside AdamW's two for the rest), byte for byte."""
    import torch

    from gptkit.model import GPT
    from gptkit.train.config import TrainConfig
    from gptkit.train.optim import build_optimizers

    mc = get_preset("tiny").with_vocab(256)
    model = GPT(mc)
    opts = build_optimizers(TrainConfig(optimizer=optimizer), model, torch.device("cpu"))
    x = torch.randint(0, 256, (2, 16))
    model(x, x)[1].backward()
    for o in opts:
        o.step()
    held = sum(t.numel() * t.element_size() for o in opts for st in o.state.values() for t in st.values() if t.dim())
    n = param_count(mc, padded=True)
    m = memory_estimate(mc, n, 16, 2, half=False, free=None, optimizer=optimizer)
    assert m.optimizer == held, (m.optimizer, held)
    assert (m.optimizer < 8 * n) == (optimizer == "muon")
