"""Forward compatibility: a file written by a later gptkit, with a setting this one does not know, is
refused in one line naming the setting and the version that wrote it, never read as something else."""

import json

import pytest
import torch
from conftest import assert_one_line_error, run_cli

from gptkit import __version__
from gptkit.checkpoint import load_checkpoint, save_checkpoint, write_checksums
from gptkit.errors import GptkitError
from gptkit.model import GPT, get_preset
from gptkit.train.config import LaunchConfig, Plan, ResolvedRun, TrainConfig


def later_checkpoint(tmp_path, version: str | None = "9.9.0"):
    """A checkpoint whose model config has a shape field from the future (and who wrote it)."""
    torch.manual_seed(0)
    model = GPT(get_preset("tiny").with_vocab(256))
    ck = save_checkpoint(tmp_path / "ck", model, config=model.config, tokenizer="bytes")
    meta = json.loads((ck / "config.json").read_text())
    meta["model"]["rope_theta"] = 10000.0  # dropped, the weights would load as a learned-position model
    if version is None:
        del meta["gptkit_version"]
    else:
        meta["gptkit_version"] = version
    (ck / "config.json").write_text(json.dumps(meta))
    write_checksums(ck)  # as that gptkit would have
    return ck


def test_checkpoints_record_the_gptkit_that_wrote_them(tmp_path):
    model = GPT(get_preset("tiny").with_vocab(256))
    ck = save_checkpoint(tmp_path / "ck", model, config=model.config, tokenizer="bytes")
    assert json.loads((ck / "config.json").read_text())["gptkit_version"] == __version__


def test_an_unknown_model_setting_names_it_and_the_writer(tmp_path):
    ck = later_checkpoint(tmp_path)
    with pytest.raises(GptkitError, match=r"'rope_theta', written by gptkit 9\.9\.0; this is gptkit .*upgrade") as e:
        load_checkpoint(ck)
    assert "\n" not in str(e.value)


def test_a_checkpoint_without_a_version_says_so(tmp_path):
    ck = later_checkpoint(tmp_path, version=None)
    with pytest.raises(GptkitError, match=r"'rope_theta', written by an unknown gptkit version"):
        load_checkpoint(ck)


def test_sample_refuses_a_later_checkpoint_in_one_line(tmp_path, gptkit_home):
    ck = later_checkpoint(tmp_path)
    line = assert_one_line_error(run_cli("sample", "x", "--model", ck, "--device", "cpu"))
    assert "rope_theta" in line and "gptkit 9.9.0" in line, line


def run_config(train: dict, **top) -> dict:
    rr = ResolvedRun(TrainConfig(), LaunchConfig(), Plan(1, 1, 1, 1), data_dir="d", run_dir="r")
    return {**rr.to_dict(), "train": {**rr.train.to_dict(), **train}, **top}


def test_run_config_records_the_version_and_refuses_a_later_setting(tmp_path):
    d = run_config({})
    assert d["gptkit_version"] == __version__
    assert ResolvedRun.from_dict(d).to_dict() == d  # the version is not carried as an extra
    path = tmp_path / "config.json"
    path.write_text(json.dumps(run_config({"soap_lr": 0.02}, gptkit_version="9.9.0")))
    with pytest.raises(GptkitError, match=r"config\.json: unknown setting 'soap_lr', written by gptkit 9\.9\.0"):
        ResolvedRun.read(path)
    old = run_config({"soap_lr": 0.02})
    del old["gptkit_version"]  # run configs before the version was recorded
    with pytest.raises(GptkitError, match=r"'soap_lr', written by an unknown gptkit version"):
        ResolvedRun.from_dict(old)


def test_a_checkpoints_training_config_names_the_writer():
    with pytest.raises(GptkitError, match=r"^ck/config\.json: unknown setting 'soap_lr', written by gptkit 9\.9\.0"):
        TrainConfig.from_dict({"soap_lr": 0.02}, "ck/config.json", written_by="9.9.0")
