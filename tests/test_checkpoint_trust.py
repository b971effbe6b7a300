"""Checkpoints you can trust (issue 22): every file's sha256 is recorded when a checkpoint is written
(checksums.json) and checked by every reader; a byte flipped anywhere is one line naming the file;
`--resume auto` skips a bad newest checkpoint and resumes from the newest valid one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import assert_one_line_error, run_cli, tiny_training

from gptkit.checkpoint import (
    CHECKSUMS,
    MODEL_PARTS,
    CorruptCheckpoint,
    load_checkpoint,
    newest_valid_checkpoint,
    save_checkpoint,
    step_dirname,
    verify_checkpoint,
)
from gptkit.model import GPT, GPTConfig
from gptkit.tokenizer import get_tokenizer

GOLDEN = Path(__file__).resolve().parent / "golden" / "v0.1.0"


def tiny_checkpoint(path: Path, step: int = 2) -> Path:
    """A training checkpoint with every kind of file: weights, config, tokenizer/, optimizer, trainer state."""
    torch.manual_seed(0)
    cfg = GPTConfig(block_size=16, vocab_size=256, n_layer=1, n_head=2, n_embd=16)
    model = GPT(cfg)
    return save_checkpoint(
        path,
        model,
        config=cfg,
        tokenizer=get_tokenizer("bytes"),
        train_config={"preset": "tiny"},
        optimizer_state={"state": {0: {"exp_avg": torch.randn(64)}}},  # (the reader never unpacks it)
        trainer_state={"step": step, "data_pos": 0, "tokens": 0},
    )


def files_of(ck: Path) -> list[str]:
    return sorted(f.relative_to(ck).as_posix() for f in ck.rglob("*") if f.is_file())


def flip_byte(f: Path) -> None:
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x01
    f.write_bytes(bytes(data))


def test_checksums_cover_every_file_and_each_flipped_byte_is_named_by_every_reader(tmp_path):
    """One byte flipped in each file, loaded through each library path the commands take: resume
    (resolve_run_dir), --init-from (read_init_from), convert / eval / sample (formats.convert.load and
    models.load_for_sampling, which verifies in a thread while the weights load)."""
    from gptkit.formats.convert import load
    from gptkit.models import load_for_sampling
    from gptkit.train.resolve import read_init_from, resolve_run_dir

    pristine = tiny_checkpoint(tmp_path / "pristine")
    recorded = json.loads((pristine / CHECKSUMS).read_text())["files"]
    files = files_of(pristine)
    assert sorted([*recorded, CHECKSUMS]) == files
    assert {"model.safetensors", "config.json", "optimizer.pt", "trainer.json", CHECKSUMS} <= set(files)
    assert any(f.startswith("tokenizer/") for f in files)
    assert verify_checkpoint(pristine) is None
    assert torch.equal(
        load(pristine).state_dict["transformer.wte.weight"],
        load_checkpoint(pristine).state_dict["transformer.wte.weight"],
    )

    cpu = torch.device("cpu")
    readers = {
        "resume": lambda ck: resolve_run_dir(None, None, str(ck), "tiny"),
        "load_checkpoint": lambda ck: load_checkpoint(ck),
        "init-from": lambda ck: read_init_from(str(ck), verify=print),
        "convert": lambda ck: load(ck),
        "sample/eval": lambda ck: load_for_sampling(ck, cpu),
    }
    model_readers = {"init-from", "convert", "sample/eval"}
    for name in files:
        ck = tmp_path / "run" / step_dirname(2)
        shutil.rmtree(ck.parent, ignore_errors=True)
        shutil.copytree(pristine, ck)
        flip_byte(ck / name)
        for how, read in readers.items():
            if how in model_readers and name != CHECKSUMS and name.split("/")[0] not in MODEL_PARTS:
                read(ck)  # the optimizer's state and trainer.json are not what these read: not checked
                continue
            with pytest.raises(CorruptCheckpoint) as e:
                read(ck)
            msg = str(e.value)
            assert msg.startswith(f"{ck / name}: ") and "\n" not in msg, (how, msg)

    # truncated, and missing: named too
    ck = tmp_path / "cut"
    shutil.copytree(pristine, ck)
    (ck / "model.safetensors").write_bytes((ck / "model.safetensors").read_bytes()[:100])
    with pytest.raises(
        CorruptCheckpoint, match=r"model\.safetensors: 100 bytes, but \d+ when the checkpoint was written"
    ):
        load_checkpoint(ck)
    (ck / "model.safetensors").unlink()
    (ck / "optimizer.pt").unlink()
    shutil.copy(pristine / "model.safetensors", ck / "model.safetensors")
    with pytest.raises(CorruptCheckpoint, match=r"optimizer\.pt: missing \(listed in checksums\.json\)"):
        verify_checkpoint(ck)
    assert verify_checkpoint(ck, model_only=True) is None


def test_newest_valid_rule_skips_bad_checkpoints_and_says_when_none_is_left(tmp_path):
    run = tmp_path / "run"
    for step in (2, 4, 6):
        tiny_checkpoint(run / step_dirname(step), step)
    flip_byte(run / step_dirname(6) / "optimizer.pt")
    (run / step_dirname(4) / "model.safetensors").unlink()  # incomplete: a step_* folder without weights
    said: list[str] = []
    assert newest_valid_checkpoint(run, said.append) == run / step_dirname(2)
    assert said == [
        f"skipping {run / step_dirname(6) / 'optimizer.pt'}: sha256 differs from the one recorded when the "
        "checkpoint was written; the file is corrupt",
        f"skipping {run / step_dirname(4)}: incomplete (no model.safetensors or config.json)",
    ]
    flip_byte(run / step_dirname(2) / CHECKSUMS)
    said.clear()
    with pytest.raises(CorruptCheckpoint) as e:
        newest_valid_checkpoint(run, said.append)
    assert said == []  # the one error says it all
    msg = str(e.value)
    assert msg.startswith(
        f"{run}: every checkpoint is corrupt or incomplete (step_000006, step_000004, step_000002; the newest: "
        f"{run / step_dirname(6) / 'optimizer.pt'}: sha256 differs"
    ), msg
    assert f"delete {run} or train under another --name" in msg
    assert newest_valid_checkpoint(tmp_path / "empty") is None


def test_old_checkpoints_without_checksums_load_with_a_note(tmp_path):
    from gptkit.formats.convert import load

    old = GOLDEN / "run" / "step_000004"
    assert not (old / CHECKSUMS).exists()
    note = verify_checkpoint(old)
    assert note is not None and note.startswith(f"{old}: written before checkpoints recorded checksums")
    assert load_checkpoint(old).notes == [note]
    assert note in load(old).notes
    said: list[str] = []
    assert newest_valid_checkpoint(GOLDEN / "run", said.append) == old and said == [note]


def test_cli_paths_name_the_corrupt_file_in_one_line(tmp_path, gptkit_home):
    """convert, eval and sample as a user runs them, each on a checkpoint with one flipped byte."""
    pristine = tiny_checkpoint(tmp_path / "pristine")
    cases = {
        ("convert", "{ck}", str(tmp_path / "out.safetensors")): "model.safetensors",
        ("eval", "{ck}", "--data", str(GOLDEN / "shards")): "config.json",
        ("sample", "hi", "--model", "{ck}", "-n", "2"): "tokenizer/" + files_of(pristine / "tokenizer")[0],
    }
    for i, (args, name) in enumerate(cases.items()):
        ck = tmp_path / f"ck{i}"
        shutil.copytree(pristine, ck)
        flip_byte(ck / name)
        line = assert_one_line_error(run_cli(*(a.format(ck=ck) for a in args)))
        assert line.startswith(f"gptkit: error: {ck / name}: sha256 differs"), line
    assert not (tmp_path / "out.safetensors").exists()


def test_resume_auto_continues_from_the_newest_valid_checkpoint(tmp_path, gptkit_home, trains):
    flags = tiny_training(
        batch_tokens=256, micro_batch=8, eval_tokens=0, sample_every=100, checkpoint_every=2, keep=0
    )  # fmt: skip
    data = GOLDEN / "shards"
    run = tmp_path / "run"
    trains.cli("--data", data, *flags, "--max-steps", "4", "--out", run, check=True)
    assert (run / step_dirname(4) / CHECKSUMS).is_file()
    bad = run / step_dirname(4) / "model.safetensors"
    flip_byte(bad)
    r = trains.cli("--data", data, *flags, "--max-steps", "3", "--out", run, "--resume", "auto", check=True)
    out = r.stdout + r.stderr
    assert f"warning: --resume auto: skipping {bad}: sha256 differs" in out, out
    assert "resumed at step 2" in out, out
    assert verify_checkpoint(run / step_dirname(3)) is None
    # --init-from a corrupt checkpoint: one line before anything starts
    line = assert_one_line_error(
        trains.cli(
            "--data", data, *flags, "--max-steps", "2", "--out", tmp_path / "ft", "--init-from", run / step_dirname(4)
        )
    )
    assert line.startswith(f"gptkit: error: {bad}: sha256 differs"), line
    # every checkpoint bad: said, with the fix
    for step in (2, 3):
        flip_byte(run / step_dirname(step) / "trainer.json")
    line = assert_one_line_error(
        trains.cli("--data", data, *flags, "--max-steps", "8", "--out", run, "--resume", "auto")
    )
    assert f"{run}: every checkpoint is corrupt or incomplete (step_000004, step_000003, step_000002; " in line, line
    assert f"delete {run} or train under another --name" in line
