"""One rule for the names a user types (gptkit.names): a run, shards or a download by name; a path as a
path; a folder here that the command cannot use never wins; a name that means two usable things is
one line naming both."""

import json

import pytest
import torch
from conftest import assert_one_line_error, run_cli

from gptkit import names, paths
from gptkit.checkpoint import save_checkpoint, step_dirname
from gptkit.data.shards import resolve_shards_dir
from gptkit.errors import GptkitError
from gptkit.model import GPT, get_preset


def _run(name, step=5):
    """A run under runs/ as training leaves it: a checkpoint and metrics.jsonl."""
    torch.manual_seed(0)
    model = GPT(get_preset("tiny").with_vocab(256))
    run = paths.runs_dir(name)
    ck = save_checkpoint(run / step_dirname(step), model, config=model.config, tokenizer="bytes")
    (run / "metrics.jsonl").write_text(
        "".join(
            json.dumps({"step": s, "loss": 5.0 - s / 10, "lr": 1e-3, "tok_per_s": 1e3, "dt": 0.1}) + "\n"
            for s in (1, 2)
        )
    )
    return run, ck


def test_the_quickstart_folder_does_not_hide_the_run(gptkit_home, tmp_path):
    """The README's quickstart leaves ./quickstart/ (its outputs) beside a run named quickstart:
    sample, convert and plot by that name use the run."""
    run, ck = _run("quickstart")
    cwd = tmp_path / "repo"
    (cwd / "quickstart" / "hf-export").mkdir(parents=True)
    (cwd / "quickstart" / "mirror.log").write_text("")
    r = run_cli("sample", "A", "--model", "quickstart", "-n", "3", "--json", cwd=cwd, check=True)
    assert json.loads(r.stdout)["model"] == str(ck)
    r = run_cli("convert", "quickstart", tmp_path / "m.safetensors", "--json", cwd=cwd, check=True)
    assert json.loads(r.stdout)["src"] == str(ck)
    r = run_cli("plot", "quickstart", cwd=cwd, check=True)
    assert (run / "metrics.png").is_file()
    assert not (cwd / "quickstart" / "metrics.png").exists()


def test_a_usable_folder_here_and_a_run_of_that_name_is_one_line(gptkit_home, tmp_path):
    _run("twin")
    cwd = tmp_path / "cwd"
    torch.manual_seed(1)
    m = GPT(get_preset("tiny").with_vocab(256))
    save_checkpoint(cwd / "twin", m, config=m.config, tokenizer="bytes")
    line = assert_one_line_error(run_cli("sample", "A", "--model", "twin", "-n", "2", cwd=cwd))
    assert "./twin" in line and str(paths.runs_dir("twin")) in line
    # ./twin is the folder, whatever runs/ holds
    r = run_cli("convert", "./twin", tmp_path / "x.safetensors", "--json", cwd=cwd, check=True)
    assert (cwd / json.loads(r.stdout)["src"]).resolve() == (cwd / "twin").resolve()


def test_pick_order_and_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    obj = tmp_path / "home" / "x"
    obj.mkdir(parents=True)
    (tmp_path / "x").mkdir()
    # a folder here that is not usable: the object
    assert names.pick("x", label="x", objects=[("the run", obj)], usable=lambda p: False) == obj
    # nothing named: the usable folder here; an unusable one is no answer
    assert names.pick("x", label="x", objects=[], usable=lambda p: True).resolve() == tmp_path / "x"
    assert names.pick("x", label="x", objects=[], usable=lambda p: False) is None
    # both usable: an error naming both
    with pytest.raises(GptkitError, match=r"both the run .* and the folder \./x"):
        names.pick("x", label="x", objects=[("the run", obj)], usable=lambda p: True)
    # written as a path: only the path, never the object
    assert names.pick("./x", label="./x", objects=[("the run", obj)], usable=lambda p: True).resolve() == tmp_path / "x"
    with pytest.raises(GptkitError, match="no such file"):
        names.pick("./nope", label="./nope", objects=[], usable=lambda p: True)
    assert names.looks_like_path("m.safetensors") and names.looks_like_path("~/m") and not names.looks_like_path("m")


def test_data_name_prefers_the_shards_over_a_text_folder_here(gptkit_home, tmp_path, monkeypatch):
    """`gptkit tokenize mytext` writes shards/mytext and says `--data mytext`: the text folder ./mytext
    (no shards in it) must not be taken for the data."""
    shards = paths.shards_dir("mytext")
    shards.mkdir(parents=True)
    (shards / "manifest.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mytext").mkdir()
    (tmp_path / "mytext" / "a.txt").write_text("hello")
    assert resolve_shards_dir("mytext") == shards
    with pytest.raises(GptkitError, match=r"\./other here is not tokenized data"):
        (tmp_path / "other").mkdir()
        resolve_shards_dir("other")
    # tokenized data in a folder here (tokenize --out ./corpus) and none of that name under shards/
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "manifest.json").write_text("{}")
    assert resolve_shards_dir("corpus").resolve() == tmp_path / "corpus"
    (tmp_path / "mytext" / "manifest.json").write_text("{}")
    with pytest.raises(GptkitError, match="both"):
        resolve_shards_dir("mytext")
