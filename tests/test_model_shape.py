"""The model's shape is data: flags, config files, presets as named defaults, written into the run
and every checkpoint, kept on resume, checked against --init-from weights. And --help reads like
the tools people know."""

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import assert_one_line_error, run_cli, tiny_training
from test_train_data import make_dataset

from gptkit.checkpoint import read_config, save_checkpoint
from gptkit.errors import GptkitError
from gptkit.model import GPT, PRESETS, GPTConfig, flops_per_token, param_count, preset_sizes
from gptkit.train import config as C
from gptkit.train.resolve import prepare

ROOT = Path(__file__).resolve().parent.parent
CPU = C.LaunchOverrides(gpus=0, nproc=1)
SHAPE = dict(n_layer=3, n_head=3, n_embd=96)


@pytest.fixture
def toy(gptkit_home):
    return make_dataset(gptkit_home / "shards" / "toy")


# --- presets and sizes ---------------------------------------------------------------------------
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("name", list(PRESETS))
def test_param_count_is_the_models(name, bias):
    cfg = replace(PRESETS[name], bias=bias)
    with torch.device("meta"):
        model = GPT(cfg)
    assert param_count(cfg, padded=True) == model.num_params(non_embedding=False)
    assert (
        param_count(cfg)
        == model.num_params(non_embedding=False) - (cfg.padded_vocab_size - cfg.vocab_size) * cfg.n_embd
    )
    # FLOPs by arithmetic (the planner's) against the built model's parameters: 6N plus attention
    n = sum(p.numel() for name, p in model.named_parameters() if name != "transformer.wpe.weight")
    assert flops_per_token(cfg, 256) == 6 * n + 12 * cfg.n_layer * cfg.n_embd * 256


def test_gpt2_sizes_are_the_published_ones():
    millions = {n: round(param_count(PRESETS[n]) / 1e6) for n in ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")}
    assert millions == {"gpt2": 124, "gpt2-medium": 355, "gpt2-large": 774, "gpt2-xl": 1558}


def test_train_help_and_readme_list_the_presets_with_their_computed_sizes():
    from gptkit.train.config import PRESET_SIZES

    assert PRESET_SIZES == preset_sizes()
    help_text = " ".join(run_cli("train", "--help", env={"COLUMNS": "400"}, check=True).stdout.split())
    assert preset_sizes() in help_text
    readme = (ROOT / "README.md").read_text()
    train_section = readme.split("### `gptkit train`", 1)[1].split("\n### ", 1)[0]
    for name, cfg in PRESETS.items():
        assert re.search(rf"`{re.escape(name)}`.*{param_count(cfg) / 1e6:.1f}M", train_section), name


def test_presets_are_named_defaults_of_every_shape_field():
    cfg = C.preset_config("small")
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.block_size, cfg.seq_len) == (4, 4, 256, None, 256)
    assert C.resolve_shape(cfg).block_size == 256
    for name, model in PRESETS.items():
        shape = C.resolve_shape(C.preset_config(name))
        assert GPTConfig(**C.model_settings(shape)) == model, name  # the preset's own model, field for field


# --- resolving a new run -------------------------------------------------------------------------
def test_shape_flags_and_config_file_keys(toy, tmp_path):
    rr = prepare(C.TrainOverrides(preset="tiny", seq_len=64, **SHAPE), CPU, name="flags")
    assert (rr.train.n_layer, rr.train.n_head, rr.train.n_embd, rr.train.block_size) == (3, 3, 96, 64)
    toml = tmp_path / "shape.toml"
    toml.write_text(
        'preset = "tiny"\nn_layer = 3\nn_head = 3\nn_embd = 96\nseq_len = 64\ndropout = 0.1\n'
        'bias = false\nactivation = "exact"\nln_eps = 1e-6\n'
    )
    rr = prepare(C.TrainOverrides(), CPU, config_file=toml, name="file")
    t = rr.train
    assert (t.n_layer, t.n_head, t.n_embd, t.block_size, t.dropout, t.bias, t.activation, t.ln_eps) == (
        3,
        3,
        96,
        64,
        0.1,
        False,
        "gelu",  # "exact" is an alias
        1e-6,
    )
    yaml = tmp_path / "shape.yaml"
    yaml.write_text("preset: tiny\nn-layer: 5\nblock-size: 256\n")
    rr = prepare(C.TrainOverrides(n_layer=6), CPU, config_file=yaml, name="yaml")  # the flag wins
    assert (rr.train.n_layer, rr.train.block_size, rr.train.seq_len) == (6, 256, 128)
    written = json.loads(json.dumps(rr.to_dict()))
    assert C.ResolvedRun.from_dict(written).train == rr.train
    yaml.write_text("n_embd: wide\n")
    with pytest.raises(GptkitError, match="n_embd must be int"):
        prepare(C.TrainOverrides(), CPU, config_file=yaml, name="bad")


def test_block_size_follows_seq_len_and_must_cover_it(toy):
    rr = prepare(C.TrainOverrides(preset="small", seq_len=64), CPU, name="b1")
    assert rr.train.block_size == 64  # not the preset's 256: positions 64-255 would never be trained
    rr = prepare(C.TrainOverrides(preset="small", seq_len=64, block_size=512), CPU, name="b2")
    assert rr.train.block_size == 512
    with pytest.raises(GptkitError, match=r"^--block-size 32 is smaller than --seq-len 64"):
        prepare(C.TrainOverrides(preset="small", seq_len=64, block_size=32), CPU, name="b3")


@pytest.mark.parametrize(
    "given, message",
    [
        (dict(n_embd=100, n_head=3), r"^--n-embd 100 is not divisible by --n-head 3 .*; try --n-embd 102$"),
        (dict(n_layer=0), r"^--n-layer must be at least 1"),
        (dict(dropout=1.0), r"^--dropout must be in \[0, 1\)"),
        (dict(ln_eps=0.0), r"^--ln-eps must be positive"),
        (dict(activation="relu"), r"^unknown --activation 'relu'"),
    ],
)
def test_bad_shapes_are_one_line_errors(given, message):
    cfg = C.resolve_shape(replace(C.preset_config("tiny"), **given))
    with pytest.raises(GptkitError, match=message) as e:
        C.validate(cfg)
    assert "\n" not in str(e.value)


def test_the_nanogpt_cpu_recipe_is_expressible(toy):
    # nanoGPT's shakespeare-char CPU recipe: 4 layers, 4 heads, 128 wide, context 64, dropout 0.2,
    # batch 12 (x 64 tokens = 768 per step, no accumulation).
    rr = prepare(
        C.TrainOverrides(
            n_layer=4, n_head=4, n_embd=128, seq_len=64, dropout=0.2, micro_batch=12, batch_tokens=768, eval_tokens=4096
        ),
        CPU,
        name="nanogpt",
    )
    t = rr.train
    assert (t.n_layer, t.n_head, t.n_embd, t.block_size, t.dropout) == (4, 4, 128, 64, 0.2)
    assert (rr.plan.micro_batch, rr.plan.grad_accum) == (12, 1)


# --- resume and --init-from ----------------------------------------------------------------------
def fake_checkpoint(path: Path, model: GPTConfig, train: dict | None, step: int = 2) -> Path:
    """A resumable checkpoint without a training run: real weights, trainer state and configs."""
    save_checkpoint(
        path,
        GPT(model),
        config=model,
        tokenizer="bytes",
        train_config=train,
        optimizer_state={"state": {}, "param_groups": []},
        trainer_state={"step": step, "data_pos": 0} if train is not None else None,
    )
    return path


def test_resume_takes_the_checkpoints_shape_and_refuses_another(toy, gptkit_home):
    model = GPTConfig(block_size=64, **SHAPE, dropout=0.1, bias=False).with_vocab(256)
    old_style = {k: v for k, v in C.preset_config("tiny").to_dict().items() if k not in C.SHAPE_KEYS}
    old_style.update(seq_len=64, max_steps=10, data=str(toy))  # a run written before the shape was in "train"
    fake_checkpoint(gptkit_home / "runs" / "r" / "step_000002", model, old_style)
    rr = prepare(C.TrainOverrides(), CPU, name="r", resume="auto")
    t = rr.train
    assert (t.n_layer, t.n_head, t.n_embd, t.block_size, t.dropout, t.bias) == (3, 3, 96, 64, 0.1, False)
    rr = prepare(C.TrainOverrides(n_layer=3, seq_len=32), CPU, name="r", resume="auto")  # the same value: fine
    assert (rr.train.n_layer, rr.train.block_size, rr.train.seq_len) == (3, 64, 32)
    for flag, value in (("n_layer", 4), ("block_size", 128), ("bias", True), ("dropout", 0.0), ("activation", "gelu")):
        with pytest.raises(GptkitError, match=rf"^--{flag.replace('_', '-')} \S+ conflicts with the run being resumed"):
            prepare(C.TrainOverrides(**{flag: value}), CPU, name="r", resume="auto")
    with pytest.raises(GptkitError, match="--seq-len 128 exceeds the block size 64 of the run being resumed"):
        prepare(C.TrainOverrides(seq_len=128), CPU, name="r", resume="auto")


def test_init_from_takes_the_weights_shape_and_checks_the_flags(toy, tmp_path):
    model = GPTConfig(block_size=64, **SHAPE, activation="gelu").with_vocab(256)
    src = fake_checkpoint(tmp_path / "imported", model, None)
    rr = prepare(C.TrainOverrides(preset="tiny", seq_len=64, init_from=str(src)), CPU, name="i1")
    t = rr.train
    assert (t.n_layer, t.n_head, t.n_embd, t.block_size, t.activation, t.dropout) == (3, 3, 96, 64, "gelu", 0.0)
    rr = prepare(
        C.TrainOverrides(preset="tiny", seq_len=32, init_from=str(src), dropout=0.1, n_layer=3), CPU, name="i2"
    )
    assert (rr.train.dropout, rr.train.block_size) == (0.1, 64)  # dropout is a training setting
    with pytest.raises(GptkitError, match=r"^--n-layer 2 conflicts with the weights of --init-from .*n_layer = 3"):
        prepare(C.TrainOverrides(preset="tiny", seq_len=64, init_from=str(src), n_layer=2), CPU, name="i3")
    with pytest.raises(GptkitError, match=r"^--activation gelu_new conflicts with the weights"):
        prepare(C.TrainOverrides(preset="tiny", seq_len=64, init_from=str(src), activation="tanh"), CPU, name="i4")
    # the preset's 128-token sequence becomes the weights' 64 unless --seq-len asks for more
    assert prepare(C.TrainOverrides(preset="tiny", init_from=str(src)), CPU, name="i5").train.seq_len == 64
    with pytest.raises(GptkitError, match="--seq-len 128 exceeds the model's context length 64"):
        prepare(C.TrainOverrides(preset="tiny", seq_len=128, init_from=str(src)), CPU, name="i6")


# --- training with a shape of one's own (real torchrun, 1 process) -------------------------------
TRAIN_FAST = tiny_training(
    batch_tokens=128, max_steps=2, eval_every=2, eval_tokens=256, sample_every=2, checkpoint_every=2
)


@pytest.mark.parametrize("how", ["flags", "config"])
def test_a_shape_of_ones_own_trains_and_lands_in_the_checkpoint(toy, tmp_path, how, trains):
    if how == "flags":
        args = ["--n-layer", "3", "--n-head", "3", "--n-embd", "96", "--dropout", "0.1", "--activation", "exact"]
    else:
        (tmp_path / "run.toml").write_text(
            'n_layer = 3\nn_head = 3\nn_embd = 96\ndropout = 0.1\nactivation = "exact"\n'
        )
        args = ["--config", tmp_path / "run.toml"]
    r = trains.cli(*TRAIN_FAST, *args, "--name", how, env={"OMP_NUM_THREADS": "1"}, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    run = toy.parent.parent / "runs" / how
    model, meta = read_config(run / "step_000002")
    assert (model.n_layer, model.n_head, model.n_embd, model.block_size) == (3, 3, 96, 32)
    assert (model.dropout, model.activation, model.vocab_size) == (0.1, "gelu", 256)
    assert {k: meta["train"][k] for k in ("n_layer", "n_head", "n_embd", "block_size")} == {
        "n_layer": 3,
        "n_head": 3,
        "n_embd": 96,
        "block_size": 32,
    }
    assert json.loads((run / "config.json").read_text())["train"]["n_embd"] == 96
    # Resuming takes that shape; a conflicting flag is one line.
    again = run_cli("train", *TRAIN_FAST, "--n-layer", "4", "--name", how, "--resume", "auto", cwd=tmp_path)
    assert "--n-layer 4 conflicts with the run being resumed" in assert_one_line_error(again)


# --- --help reads like the tools people know -----------------------------------------------------
HELP_PAGES = [(), ("doctor",), ("download",), ("mirror",), ("mirror", "serve"), ("tokenize",), ("train",)]
HELP_PAGES += [("sample",), ("convert",), ("plot",)]


def _help_pages() -> dict[tuple, str]:
    from typer.testing import CliRunner

    from gptkit.cli import app

    runner = CliRunner()
    pages = {}
    for cmd in HELP_PAGES:
        r = runner.invoke(app, [*cmd, "--help"], prog_name="gptkit", env={"COLUMNS": "200", "NO_COLOR": "1"})
        assert r.exit_code == 0, (cmd, r.output)
        pages[cmd] = r.output
    return pages


def test_help_has_no_type_labels_and_capital_metavars():
    for cmd, page in _help_pages().items():
        where = "gptkit " + " ".join(cmd)
        assert not re.search(r"<[^>\s]+>", page), f"{where}: a <type> label:\n{page}"
        assert not re.search(r"\{\w+\}", page), f"{where}: a {{placeholder}}:\n{page}"
        assert not re.search(r"\[[\d.]*<?=?x[<>]=?", page), f"{where}: a [x>=1] range label:\n{page}"
        usage = next(line for line in page.splitlines() if "Usage:" in line)
        arguments = usage.split("[OPTIONS]", 1)[1]
        assert arguments == arguments.upper(), usage
    for cmd, params in _params().items():
        for p in params:
            assert p.help or p.opts == ["--help", "-h"] or not p.opts[0].startswith("-"), (cmd, p.opts)  # never blank
            if getattr(p, "is_flag", False):
                assert p.metavar == "", (cmd, p.opts)  # a flag takes no value: no label
            else:
                assert re.fullmatch(r"[A-Z][A-Z0-9_]*(\.\.\.)?", p.metavar), (cmd, p.opts, p.metavar)


def test_flags_show_no_value_label():
    pages = _help_pages()
    for flag, cmd in (("--json", ("doctor",)), ("--dry-run", ("train",)), ("--bias", ("train",)), ("--help", ())):
        line = next(ln for ln in pages[cmd].splitlines() if re.search(rf"\s{flag}\s", ln))
        rest = line.split(flag, 1)[1]
        rest = re.sub(r"^\s+(-\w\s+)?(--no-[\w-]+\s+)?", "", rest)
        assert not re.match(r"[A-Z_]{2,}\s", rest), line  # straight on to the help text
    assert re.search(r"--seq-len\s+N\s", pages[("train",)])
    assert re.search(r"--n-layer\s+N\s", pages[("train",)])
    assert "Usage: gptkit convert [OPTIONS] SRC DST" in pages[("convert",)]
    assert "Usage: gptkit mirror serve [OPTIONS] [ROOTS...]" in pages[("mirror", "serve")]


def _params() -> dict[str, list]:
    """Every command's parameters as its --help shows them (the help option included)."""
    import typer

    from gptkit.cli import app

    out: dict[str, list] = {}

    def walk(cmd, ctx):
        out[ctx.command_path] = cmd.get_params(ctx)
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, typer.Context(sub, info_name=name, parent=ctx))

    root = typer.main.get_command(app)
    walk(root, typer.Context(root, info_name="gptkit", **root.context_settings))  # -h / --help
    return out


def test_each_short_option_means_one_thing_in_every_command():
    meaning: dict[str, set[str]] = {}
    for params in _params().values():
        for p in params:
            longs = [o for o in p.opts if o.startswith("--")]
            for short in (o for o in p.opts + p.secondary_opts if re.fullmatch(r"-\w", o)):
                meaning.setdefault(short, set()).add(longs[0])
    clashes = {s: sorted(longs) for s, longs in meaning.items() if len(longs) > 1}
    assert not clashes, clashes
    assert meaning["-n"] == {"--max-new-tokens"} and meaning["-o"] == {"--out"} and meaning["-h"] == {"--help"}


def test_the_run_header_names_a_shape_of_ones_own():
    from gptkit.model import get_preset
    from gptkit.train.trainer import shape_label

    small = get_preset("small")
    assert shape_label(small, "small") == "small"
    assert shape_label(replace(small, n_layer=3, n_head=3, n_embd=96), "small") == "3x3x96 (layers x heads x width)"
