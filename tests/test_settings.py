"""Every setting is declared once (its TrainConfig / LaunchConfig field) and reaches the run: each one
given on a real `gptkit train --dry-run` command line is in the resolved run it prints."""

import json
from dataclasses import fields

from conftest import run_cli
from test_train_data import make_dataset

from gptkit.checkpoint import save_checkpoint
from gptkit.model import GPT, GPTConfig
from gptkit.tokenizer import get_tokenizer
from gptkit.train import config as C
from gptkit.train.presets import TRAIN_PRESETS

# A value for every setting, unlike its default and every preset's, and valid together: 2 nodes x 2
# processes, 24 sequences of 24 tokens per step in micro-batches of 3, --init-from weights whose
# shape is the one given. A new field without a value here fails the test.
SHAPE = dict(n_layer=3, n_head=3, n_embd=48, block_size=40, bias=False, activation="gelu", ln_eps=1e-6)
TRAIN = dict(
    preset="small",
    **SHAPE,
    dropout=0.15,
    # data: the shards' folder, init_from: the checkpoint (made by the test)
    seq_len=24,
    batch_tokens=576,
    micro_batch=3,
    max_steps=37,
    lr=0.00123,
    min_lr_ratio=0.05,
    warmup_steps=3,
    schedule="wsd",
    decay_frac=0.3,
    weight_decay=0.05,
    beta1=0.8,
    beta2=0.97,
    eps=1e-7,
    optimizer="muon",
    muon_lr=0.0123,
    muon_momentum=0.9,
    muon_nesterov=False,
    muon_adjust_lr="original",
    muon_qkv="split",
    grad_clip=0.5,
    device="cpu",
    precision="fp32",
    compile=False,
    seed=7,
    eval_every=11,
    eval_tokens=500,
    hellaswag_every=7,
    hellaswag_limit=3,
    sample_every=13,
    sample_tokens=9,
    sample_prompt="Once upon",
    sample_temperature=0.7,
    checkpoint_every=17,
    keep_checkpoints=5,
    log_every=2,
    tensorboard=True,
    wandb="my-project",
)
LAUNCH = dict(
    gpus=0,
    nproc=2,
    nodes=2,
    node_rank=1,
    master_addr="127.0.0.2",
    master_port=29533,
    watchdog=123.0,
    collective_timeout=9000.0,
    max_restarts=2,
    parallel="ddp",
    activation_checkpointing="blocks",
)


def _flags(cls, values):
    out = []
    for f in fields(cls):
        v, flag = values[f.name], C.option_flag(f)
        if isinstance(v, bool):
            out.append(flag if v else "--no-" + flag[2:])
        else:
            out += [flag, str(v)]
    return out


def test_every_setting_given_on_the_command_line_reaches_the_run(gptkit_home, tmp_path):
    data = make_dataset(tmp_path / "shards")
    vocab = get_tokenizer("bytes").vocab_size
    m = GPT(
        GPTConfig(
            vocab_size=vocab, padded_vocab_size=vocab, dropout=0.0, **{C.SHAPE_KEYS[k]: v for k, v in SHAPE.items()}
        )
    )
    ck = save_checkpoint(tmp_path / "weights", m, config=m.config, tokenizer="bytes")
    train = {**TRAIN, "data": str(data), "init_from": str(ck)}
    assert set(train) == set(C.TRAIN_KEYS) and set(LAUNCH) == set(C.LAUNCH_KEYS)
    defaults, presets = C.TrainConfig(), [C.preset_config(p) for p in TRAIN_PRESETS]
    for k, v in train.items():
        # (the preset's own name is the one value a preset has for `preset`; a choice of two, such
        # as the optimizer, has no third value that neither the default nor every preset takes)
        assert v != getattr(defaults, k), k
        assert all(v != getattr(p, k) for p in presets) or k in ("preset", "optimizer"), k
    assert all(v != getattr(C.LaunchConfig(), k) for k, v in LAUNCH.items())
    r = run_cli("train", "--dry-run", "--name", "every", *_flags(C.TrainConfig, train), *_flags(C.LaunchConfig, LAUNCH))
    assert r.returncode == 0, r.stderr
    resolved = json.loads(r.stdout[r.stdout.index("\n{") :])
    assert {k: resolved["train"][k] for k in train} == train
    assert resolved["launch"] == LAUNCH


def test_the_overrides_are_the_configs_fields():
    assert C.TrainOverrides(lr=0.5, wandb=None).given() == {"lr": 0.5}  # None = not given
    assert C.TrainOverrides().micro_batch is None
    cfg = C.TrainOverrides(lr=0.5, compile=False).apply(C.preset_config("tiny"))
    assert (cfg.lr, cfg.compile, cfg.max_steps) == (0.5, False, 500)
    try:
        C.TrainOverrides(learning_rate=1)
    except TypeError as e:
        assert "learning_rate" in str(e)
    else:
        raise AssertionError("an unknown setting was taken")
