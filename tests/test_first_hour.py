"""The first hour on a laptop (issue 23): a run's record is the run, and what gptkit prints as the next
step works as printed, typed from a working directory outside the repository and outside $GPTKIT_HOME."""

import json
import os
import shlex
import signal
import subprocess
import sys
import time

from conftest import ROOT, assert_one_line_error, run_cli, tiny_training
from test_train_data import make_dataset

from gptkit import paths


def _wait(cond, proc, seconds, what):
    deadline = time.time() + seconds
    while not cond():
        assert proc.poll() is None, (what, proc.communicate())
        assert time.time() < deadline, what
        time.sleep(0.05)


def test_a_run_killed_before_its_first_checkpoint_restarts_with_its_own_settings(gptkit_home, tmp_path, trains):
    first = make_dataset(paths.shards_dir("first"), docs=120)
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    run = paths.runs_dir("nock")
    flags = tiny_training(data="first", name="nock", max_steps=3, batch_tokens=128, checkpoint_every=100)
    env = {**os.environ, "GPTKIT_FAULTS": "train.step_sleep=30"}
    p = subprocess.Popen(
        [sys.executable, "-m", "gptkit", "train", *flags], env=env, cwd=cwd, stdout=subprocess.PIPE, text=True
    )
    _wait(lambda: (run / "config.json").is_file(), p, 120, "no config.json")
    p.send_signal(signal.SIGKILL)  # before its first checkpoint (the first step takes 30 s)
    p.communicate()
    assert not list(run.glob("step_*"))
    recorded = json.loads((run / "config.json").read_text())["train"]
    make_dataset(paths.shards_dir("newer"), docs=60, seed=1)  # now the newest data: not the run's

    # A mistyped name is a new run, said in one line (a job script's first start is this case too).
    typo = run_cli("train", "--resume", "auto", "--name", "nokc", "--gpus", "0", "--dry-run", cwd=cwd, check=True)
    assert f"--resume auto: no run {paths.runs_dir('nokc')} yet; starting a new one" in typo.stdout, typo.stdout
    # As a requeued job types it: only the run's name (--dry-run first: the old code sized a new run).
    dry = run_cli("train", "--resume", "auto", "--name", "nock", "--gpus", "0", "--dry-run", cwd=cwd, check=True)
    resolved = json.loads(dry.stdout[dry.stdout.index("{") :])
    assert resolved["train"] == recorded and resolved["resume_from"] is None
    r = run_cli("train", "--resume", "auto", "--name", "nock", "--gpus", "0", cwd=cwd, check=True)
    assert f"{run} has no checkpoint yet: restarting it from step 0 with its recorded settings" in r.stdout, r.stdout
    assert "tiny" in r.stdout and "124" not in r.stdout
    after = json.loads((run / "config.json").read_text())
    assert after["train"] == recorded and after["data_dir"] == str(first.resolve())
    assert (run / "step_000003").is_dir()
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert steps[0] == 1 and steps[-1] == 3, steps


def _next(out: str) -> list[str]:
    """The `next:` line's command, as a user would type it (without the leading `gptkit`)."""
    lines = [ln for ln in out.splitlines() if ln.startswith("next: gptkit ")]
    assert len(lines) == 1, out
    return shlex.split(lines[0].removeprefix("next: gptkit "))


def test_a_download_s_next_step_and_a_bare_out_name_work_as_printed(hub, gptkit_home, tmp_path):
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    r = run_cli(
        "download", "HuggingFaceFW/fineweb", "--repo-type", "dataset", "--endpoint", hub.url, "--no-progress", cwd=cwd
    )
    assert r.returncode == 0, r.stderr
    assert "-> " + str(paths.data_dir("HuggingFaceFW--fineweb")) in r.stdout
    step = _next(r.stdout)
    assert step == ["tokenize", "HuggingFaceFW--fineweb"]  # the folder name it printed
    r = run_cli(*step, "--tokenizer", "bytes", "--out", "fw-bytes", cwd=cwd, check=True)
    assert (paths.shards_dir("fw-bytes") / "manifest.json").is_file()  # a bare --out is a name under shards/
    assert not (cwd / "fw-bytes").exists()
    step = _next(r.stdout)
    assert step == ["train", "--data", "fw-bytes"]
    r = run_cli(*step, "--gpus", "0", "--preset", "tiny", "--dry-run", cwd=cwd, check=True)
    assert json.loads(r.stdout[r.stdout.index("{") :])["data_dir"] == str(paths.shards_dir("fw-bytes").resolve())
    # ./DIR is a folder here, and the next step says so
    r = run_cli("tokenize", "HuggingFaceFW--fineweb", "--tokenizer", "bytes", "--out", "./here", cwd=cwd, check=True)
    assert (cwd / "here" / "manifest.json").is_file()
    assert _next(r.stdout) == ["train", "--data", "./here"]
    # a model download names its folder the same way, and sample takes it
    r = run_cli("download", "gpt2", "--endpoint", hub.url, "--no-progress", cwd=cwd, check=True)
    assert _next(r.stdout)[:3] == ["sample", "Hello,", "--model"] and _next(r.stdout)[3] == "gpt2"


def test_tokenize_train_sample_by_their_next_lines_from_a_text_folder_here(gptkit_home, tmp_path, trains):
    """`gptkit tokenize mytext` of a folder here; each printed next step, typed as printed (with a
    tiny run's flags added), works from the same folder; the README's `--model runs/NAME` too."""
    cwd = tmp_path / "elsewhere"
    (cwd / "mytext").mkdir(parents=True)
    (cwd / "mytext" / "a.txt").write_text("the cat sat on the mat. " * 2000)
    r = run_cli("tokenize", "mytext", "--tokenizer", "bytes", "--val-tokens", "4000", cwd=cwd, check=True)
    step = _next(r.stdout)
    assert step == ["train", "--data", "mytext"]
    flags = tiny_training(name="my-run", max_steps=2, batch_tokens=64, eval_tokens=64, sample_tokens=0)
    r = run_cli(*step, *flags, cwd=cwd, check=True)
    step = _next(r.stdout)
    assert step == ["sample", "--model", "my-run"]
    r = run_cli(*step, "-n", "4", "--json", cwd=cwd, check=True)
    assert json.loads(r.stdout)["model"].startswith(str(paths.runs_dir("my-run")))
    r = run_cli("sample", "Hello", "--model", "runs/my-run", "-n", "4", "--json", cwd=cwd, check=True)
    assert json.loads(r.stdout)["model"].startswith(str(paths.runs_dir("my-run")))
    r = run_cli("convert", "runs/my-run", "m.safetensors", "--json", cwd=cwd, check=True)
    assert (cwd / "m.safetensors").is_file()


def test_every_readme_command_parses_and_a_bad_one_is_named(tmp_path):
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import check_readme
    finally:
        sys.path.pop(0)
    found = check_readme.commands((ROOT / "README.md").read_text())
    assert len(found) > 50
    cpu = [c for _, c in found if "--n-layer 4" in c]  # the continued line is one command
    assert cpu and cpu[0].endswith("--batch-tokens 768"), cpu
    assert check_readme.main([str(ROOT / "README.md")]) == 0
    fake = tmp_path / "README.md"
    fake.write_text(
        "text gptkit nothing\n```bash\ngptkit train --no-such-flag 3   # a comment\n"
        "gptkit tokenz x && gptkit sample 'a # b' -n 3\ngptkit train --max-steps lots\n```\n"
    )
    assert [c for _, c in check_readme.commands(fake.read_text())] == [
        "gptkit train --no-such-flag 3",
        "gptkit tokenz x",
        "gptkit sample 'a # b' -n 3",
        "gptkit train --max-steps lots",
    ]
    assert check_readme.check("gptkit train --no-such-flag 3") is not None
    assert check_readme.check("gptkit tokenz x") == "no command 'tokenz'"
    assert check_readme.check("gptkit sample 'a # b' -n 3") is None
    assert "--max-steps" in check_readme.check("gptkit train --max-steps lots")
    assert check_readme.main([str(fake)]) == 1


def test_the_plan_and_the_auto_sizing_print_one_estimate_of_several_timed_passes(gptkit_home):
    from gptkit.model import get_preset
    from gptkit.train import config as C
    from gptkit.train.estimate import CpuTiming, human_duration, time_cpu_step
    from gptkit.train.resolve import make_plan

    t = time_cpu_step(get_preset("tiny").with_vocab(256), 32, "fp32", max_rows=2)
    assert t.passes >= 3 and 0 < t.cpu_share <= 1 and t.spread >= 1 and "median of" in t.describe()
    assert "+ one AdamW step" in t.describe()
    m = time_cpu_step(get_preset("tiny").with_vocab(256), 32, "fp32", max_rows=2, optimizer="muon")
    assert "+ one Muon (+ AdamW) step" in m.describe() and m.optimizer_s > 0  # the run's optimizer is timed
    busy = CpuTiming(0.01, 0.001, passes=5, spread=1.2, cpu_share=0.25)
    assert busy.busy and "busy" in busy.busy_note() and "25%" in busy.busy_note() and "4x" in busy.busy_note()
    assert CpuTiming(0.01, 0.001, passes=5, spread=1.1, cpu_share=0.95).busy_note() is None
    assert CpuTiming(0.01, 0.001, passes=5, spread=3.0, cpu_share=0.95).busy  # passes far apart

    make_dataset(paths.shards_dir("toy"), docs=120)
    p = make_plan(C.TrainOverrides(), C.LaunchOverrides(gpus=0))
    assert p.auto and f"~{human_duration(p.wall_s)} at a measured" in p.auto  # the same figure in both places
    assert p.time_basis.startswith("measured here for the auto-sizing: the median of")
    # the largest micro-batch memory allows, not the batch's own rows echoed
    assert p.memory_micro_batch > p.rows_per_process >= p.max_micro_batch


def test_smaller_items_help_plurals_and_bf16_refused_before_launch(gptkit_home, tmp_path):
    from gptkit.device import cpu_has_native_bf16

    r = run_cli("train", "--help", env={"COLUMNS": "200"}, check=True)
    assert "Default: gpt2 with a GPU; on a CPU, none: a run sized for this machine" in " ".join(r.stdout.split())
    (tmp_path / "one.txt").write_text("just one document, " * 400)
    r = run_cli("tokenize", tmp_path / "one.txt", "--tokenizer", "bytes", "--out", "one", cwd=tmp_path, check=True)
    assert " 1 document (" in r.stdout and " 2 shards," in r.stdout, r.stdout
    # --precision bf16 where the CPU only emulates it: one line before anything starts, with --preset too
    for preset in ([], ["--preset", "char"]):
        r = run_cli("train", "--data", "one", "--gpus", "0", *preset, "--precision", "bf16", "--dry-run")
        if cpu_has_native_bf16():
            assert r.returncode == 0, r.stderr
        else:
            assert "--precision bf16: cpu here has no native bf16" in assert_one_line_error(r)


def test_the_run_header_fits_80_columns():
    from gptkit.train.metrics import run_header

    parts = (
        "small 3.4M params",
        "tokenizer bytes (256 tokens)",
        "2 x cpu | fp32",
        "batch 16384 tokens = 2 procs x 16 x 256 x 2 accum",
        "resumed at step 1200",
    )
    lines = run_header("/home/me/.cache/gptkit/runs/laptop", *parts)
    assert lines[0] == "run /home/me/.cache/gptkit/runs/laptop"
    assert all(len(line) <= 80 for line in lines), lines
    assert " | ".join(lines[1:]) == " | ".join(parts)  # every part, in order, none cut


def test_a_bad_optimiser_setting_is_refused_before_the_cpu_auto_sizing_times_a_model(gptkit_home, monkeypatch):
    import pytest

    from gptkit.errors import GptkitError
    from gptkit.train import config as C
    from gptkit.train import estimate
    from gptkit.train.resolve import make_plan

    make_dataset(paths.shards_dir("toy"), docs=120)

    def timed(*a, **k):
        raise AssertionError("a model was timed before the settings were checked")

    monkeypatch.setattr(estimate, "time_cpu_step", timed)
    for given, message in (
        (dict(optimizer="foo"), "unknown --optimizer 'foo'"),
        (dict(lr=-1.0), "--lr must be positive"),
    ):
        with pytest.raises(GptkitError, match=message):
            make_plan(C.TrainOverrides(**given), C.LaunchOverrides(gpus=0))
