"""CPU auto-sizing of a bare `gptkit train`, the warmup cap, and the one-line warnings."""

import json

import pytest
from test_train_data import make_dataset

from gptkit.train import auto
from gptkit.train import config as C
from gptkit.train.launch import write_run_config
from gptkit.train.resolve import prepare

GB = 1 << 30


def fixed_timer(tok_per_s):
    """A timer that reports `tok_per_s` for every model: seconds per row = seq_len / tok/s."""
    return lambda mc, seq_len: seq_len / tok_per_s


def test_little_data_gets_the_tiny_model_and_a_bounded_run():
    m = auto.Machine(train_tokens=400_000, vocab_size=256, free_ram=8 * GB, processes=1)
    c = auto.choose(m, timer=fixed_timer(10_000))
    assert c.preset == "tiny"
    s = c.settings
    # 4 passes over the data at most: 1.6M tokens / 4096 per step
    assert s["max_steps"] == 4 * 400_000 // 4096
    assert s["warmup_steps"] == round(0.05 * s["max_steps"])
    assert 1 <= s["eval_every"] <= s["max_steps"] // 5
    assert s["micro_batch"] == 16
    assert c.est_seconds == pytest.approx(s["max_steps"] * 4096 / 10_000)
    assert "\n" not in c.line and "tiny" in c.line and "--preset gpt2" in c.line


def test_more_data_and_a_fast_machine_get_the_small_model_within_the_time_budget():
    m = auto.Machine(train_tokens=50_000_000, vocab_size=50257, free_ram=8 * GB, processes=2)
    c = auto.choose(m, timer=fixed_timer(20_000))
    assert c.preset == "small"
    steps = c.settings["max_steps"]
    # time-bound: 20 minutes at 20k tok/s, 16,384 tokens a step
    assert steps == int(20_000 * auto.TARGET_SECONDS // 16_384)
    assert c.est_seconds <= auto.TARGET_SECONDS + 1
    assert 16 % c.settings["micro_batch"] == 0  # divides the 16 rows each of 2 processes gets


def test_a_slow_machine_falls_back_to_tiny_and_says_why():
    m = auto.Machine(train_tokens=50_000_000, vocab_size=50257, free_ram=8 * GB, processes=1)
    c = auto.choose(m, timer=fixed_timer(500))  # small: 500 * 1200 / 16384 = 36 steps < 300
    assert c.preset == "tiny" and "small would manage" in c.line


def test_the_micro_batch_shrinks_to_fit_free_ram():
    m = auto.Machine(train_tokens=400_000, vocab_size=50257, free_ram=int(0.2e9), processes=1)
    c = auto.choose(m, timer=fixed_timer(10_000))
    assert c.settings["micro_batch"] < 16


def test_the_user_s_max_steps_scales_the_schedule():
    m = auto.Machine(train_tokens=400_000, vocab_size=256, free_ram=8 * GB, processes=1)
    c = auto.choose(m, timer=fixed_timer(10_000), max_steps=20)
    assert c.settings["max_steps"] == 20 and c.settings["warmup_steps"] == 1 and c.settings["eval_every"] == 2


def test_a_short_run_fills_its_time_budget_past_20_tokens_per_parameter():
    m = auto.Machine(train_tokens=800_000, vocab_size=256, free_ram=8 * GB, processes=1)
    c = auto.choose(m, timer=fixed_timer(10_000))  # tiny: 124.7k params, 20 per param = 2.5M tokens
    assert c.preset == "tiny" and c.settings["max_steps"] == 4 * 800_000 // 4096  # 4 epochs, in the budget
    m = auto.Machine(train_tokens=800_000, vocab_size=256, free_ram=8 * GB, processes=1)
    c = auto.choose(m, timer=fixed_timer(1_000))  # slower: the 20-minute budget is the limit
    assert c.settings["max_steps"] == 1_000 * auto.TARGET_SECONDS // 4096


def test_steps_for_never_goes_below_the_minimum():
    assert auto.steps_for(1000, 10_000, 4096, 1e6) == auto.MIN_STEPS


def test_bare_train_on_cpu_is_auto_sized_and_recorded(gptkit_home, tmp_path):
    make_dataset(gptkit_home / "shards" / "toy")
    rr = prepare(C.TrainOverrides(), C.LaunchOverrides(gpus=0), name="auto")
    assert rr.train.preset == "tiny"  # a toy data set
    assert rr.train.max_steps < 2000 and rr.train.warmup_steps < rr.train.max_steps
    assert rr.extra["auto"]["line"].startswith("no GPU, no --preset: tiny")
    assert (rr.train.optimizer, rr.train.muon_lr) == ("muon", 0.016)  # issue 21: Muon won the recipe bench
    assert prepare(C.TrainOverrides(optimizer="adamw"), C.LaunchOverrides(gpus=0), name="a").train.optimizer == "adamw"
    assert rr.run_dir.endswith("auto")
    write_run_config(rr)
    saved = json.loads((gptkit_home / "runs" / "auto" / "config.json").read_text())
    assert saved["train"]["max_steps"] == rr.train.max_steps and saved["auto"] == rr.extra["auto"]
    # an explicit preset means the user sized the run: no auto-sizing
    assert "auto" not in prepare(C.TrainOverrides(preset="tiny"), C.LaunchOverrides(gpus=0), name="p").extra
    # a batch of one's own is kept and the rest still sized for the CPU (it fell back to gpt2's 19,073 steps)
    rr = prepare(C.TrainOverrides(seq_len=64, batch_tokens=64 * 16), C.LaunchOverrides(gpus=0), name="s")
    assert "auto" in rr.extra and rr.train.preset == "tiny" and rr.train.batch_tokens == 1024
    assert rr.train.max_steps < 2000 and rr.train.warmup_steps < rr.train.max_steps // 10 + 1
    rr = prepare(C.TrainOverrides(micro_batch=4), C.LaunchOverrides(gpus=0), name="m")
    assert "auto" in rr.extra and rr.train.micro_batch == 4 and rr.train.preset == "tiny"


def test_a_shape_of_one_s_own_is_kept_and_only_the_recipe_is_sized():
    m = auto.Machine(train_tokens=50_000_000, vocab_size=256, free_ram=8 * GB, processes=2)
    timed = []
    timer = lambda mc, T: timed.append((mc.n_layer, mc.n_embd, mc.block_size, T)) or T / 20_000  # noqa: E731
    c = auto.choose(m, timer=timer, shape={"n_layer": 3, "n_head": 3, "n_embd": 96})
    assert timed[0] == (3, 96, 256, 256)  # the user's model was timed, at the recipe's sequence length
    assert c.preset == "small" and "your 3x3x96 model with the small recipe" in c.line
    assert c.settings["seq_len"] == 256 and c.settings["batch_tokens"] == 16_384
    # a block size of one's own bounds the sequence; the batch stays whole micro-batches per process
    c = auto.choose(m, timer=fixed_timer(20_000), shape={"n_layer": 3, "n_head": 3, "n_embd": 96, "block_size": 100})
    assert c.settings["seq_len"] == 100 and c.settings["batch_tokens"] == 16_000  # 2 procs x 16 rows x 100 x 5
    assert c.settings["micro_batch"] == 16


def test_shape_flags_and_seq_len_alone_still_get_a_cpu_recipe(gptkit_home):
    """`gptkit train --n-layer 3 --n-head 3 --n-embd 96` on a laptop: the user's model with a CPU
    recipe, not GPT-2's 10B tokens; --seq-len alone is timed, not taken as sizing the run."""
    make_dataset(gptkit_home / "shards" / "toy")
    rr = prepare(C.TrainOverrides(n_layer=3, n_head=3, n_embd=96), C.LaunchOverrides(gpus=0), name="shape")
    assert (rr.train.n_layer, rr.train.n_head, rr.train.n_embd) == (3, 3, 96)
    assert rr.train.preset == "tiny" and rr.train.batch_tokens == 4096  # a toy data set: the tiny recipe
    assert "your 3x3x96 model" in rr.extra["auto"]["line"]
    rr = prepare(C.TrainOverrides(seq_len=64), C.LaunchOverrides(gpus=0), name="seq")
    assert rr.train.seq_len == 64 and rr.train.block_size == 64 and rr.train.batch_tokens < 100_000
    assert "auto" in rr.extra


def test_resumed_auto_run_keeps_its_choice(gptkit_home, trains):
    from gptkit.train.trainer import run as run_worker

    make_dataset(gptkit_home / "shards" / "toy")
    first = prepare(
        C.TrainOverrides(max_steps=2, eval_tokens=0, sample_tokens=0, hellaswag_every=0, compile=False),
        C.LaunchOverrides(gpus=0),
        name="r",
    )
    write_run_config(first)
    run_worker(first.run_dir)
    # Resuming asks for more steps; nothing else is sized again, even with another data set newest now.
    make_dataset(gptkit_home / "shards" / "zz-bigger", docs=2000)
    again = prepare(C.TrainOverrides(max_steps=4), C.LaunchOverrides(gpus=0), name="r", resume="auto")
    assert again.resume_from is not None
    for k in ("preset", "micro_batch", "warmup_steps", "eval_every", "batch_tokens", "seq_len", "data"):
        assert getattr(again.train, k) == getattr(first.train, k), k
    assert again.extra["auto"] == first.extra["auto"]


def test_warmup_is_capped_unless_given(gptkit_home):
    make_dataset(gptkit_home / "shards" / "toy")
    L = C.LaunchOverrides(gpus=0)
    assert prepare(C.TrainOverrides(preset="tiny", max_steps=20), L, name="w").train.warmup_steps == 2
    assert prepare(C.TrainOverrides(preset="tiny"), L, name="w").train.warmup_steps == 20  # 20 of 500: kept
    given = C.TrainOverrides(preset="tiny", max_steps=20, warmup_steps=20)
    assert prepare(given, L, name="w").train.warmup_steps == 20  # the user's word


def test_warnings_for_tiny_data_and_the_gpt2_recipe_on_cpu(gptkit_home):
    make_dataset(gptkit_home / "shards" / "toy")
    warnings: list[str] = []
    prepare(C.TrainOverrides(preset="gpt2"), C.LaunchOverrides(gpus=0), name="g", warn=warnings.append)
    assert len(warnings) == 2 and all("\n" not in w for w in warnings)
    # The model of the recipe with the data's vocabulary (the toy's: 256 tokens).
    assert "the --preset gpt2 recipe on CPU: 86.0M parameters" in warnings[0] and "over an hour" in warnings[0]
    assert "days" in warnings[0] or " h" in warnings[0]
    assert "fewer than 3 batches" in warnings[1]
    warnings.clear()
    prepare(C.TrainOverrides(preset="tiny"), C.LaunchOverrides(gpus=0), name="t", warn=warnings.append)
    assert warnings == []
    # The recipe's defaults shrunk by flags to a CPU-sized run: no estimate to warn about.
    small = C.TrainOverrides(n_layer=2, n_head=2, n_embd=32, seq_len=32, batch_tokens=256, max_steps=10)
    prepare(small, C.LaunchOverrides(gpus=0), name="s", warn=warnings.append)
    assert not any("recipe on CPU" in w for w in warnings), warnings
    # any preset's recipe stretched past an hour says so, as does an auto-sized run given many steps
    prepare(
        C.TrainOverrides(preset="small", max_steps=200_000), C.LaunchOverrides(gpus=0), name="l", warn=warnings.append
    )
    assert any("the --preset small recipe on CPU" in w and "fewer --max-steps" in w for w in warnings), warnings
    warnings.clear()
    prepare(C.TrainOverrides(max_steps=10_000_000), C.LaunchOverrides(gpus=0), name="a", warn=warnings.append)
    assert any(w.startswith("this CPU run is planned at ~") and "over an hour" in w for w in warnings), warnings
