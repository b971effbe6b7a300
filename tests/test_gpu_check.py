"""scripts/gpu_check.py: without CUDA it says so in one line and a report; its stage runner records
every stage's result or failure and rewrites the report after each one (fake stages, no GPU); and
`--rehearse` runs every real stage on the CPU, so the script's own code is exercised without a GPU."""

import importlib.util
import json
import subprocess
import sys
import time

import pytest
import torch
from conftest import ROOT

SCRIPT = ROOT / "scripts" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = mod  # dataclasses look their module up while the class is made
    spec.loader.exec_module(mod)
    yield mod
    sys.modules.pop("gpu_check", None)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA path")
def test_without_cuda_one_line_exit_0_and_a_report(tmp_path):
    out = tmp_path / "r" / "report.json"
    r = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(out)], capture_output=True, text=True, cwd=tmp_path, timeout=300
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout == "no CUDA device: nothing to check\n"
    report = json.loads(out.read_text())
    assert report["cuda"] is False and report["message"] == "no CUDA device: nothing to check"
    assert report["stages"] == {} and report["torch"] == torch.__version__


def test_default_report_path_is_gpu_check_json(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("would run the whole check")
    r = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert r.returncode == 0 and json.loads((tmp_path / "gpu_check.json").read_text())["cuda"] is False


def test_stages_are_recorded_one_by_one_and_failures_do_not_stop_the_run(gpu_check, tmp_path):
    path = tmp_path / "report.json"
    report = gpu_check.Report(path, cuda=True)
    seen = []

    def first():
        return {"value": 1}

    def crashes():
        seen.append(json.loads(path.read_text())["stages"])  # what a reader sees mid-run
        raise ValueError("boom\nsecond line")

    def oom():
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    def below_target():
        seen.append(json.loads(path.read_text())["stages"])
        return {"passed": False, "max_abs": 3.0}

    lines = []
    ok = gpu_check.run_stages(
        report,
        [("first", first), ("crashes", crashes), ("oom", oom), ("below", below_target)],
        deadline=time.monotonic() + 60,
        echo=lines.append,
    )
    assert ok is False
    # Each stage was in the file before the next one ran (and the running one was marked so).
    assert seen[0]["first"]["status"] == "ok" and seen[0]["crashes"] == {"status": "running"}
    assert seen[1]["crashes"]["status"] == "error" and seen[1]["oom"]["oom"] is True
    stages = json.loads(path.read_text())["stages"]
    assert list(stages) == ["first", "crashes", "oom", "below"]
    assert stages["first"]["value"] == 1 and stages["first"]["status"] == "ok"
    assert stages["crashes"]["error"] == "ValueError: boom" and "Traceback" in stages["crashes"]["traceback"]
    assert stages["crashes"]["oom"] is False
    assert stages["oom"]["status"] == "error" and stages["oom"]["oom"] is True
    assert stages["below"]["status"] == "failed" and stages["below"]["max_abs"] == 3.0
    assert all(isinstance(s["seconds"], float) for s in stages.values())
    assert lines[0].startswith("[first] ok") and lines[1].endswith("ValueError: boom")


def test_stages_past_the_deadline_are_skipped_and_say_so(gpu_check, tmp_path):
    report = gpu_check.Report(tmp_path / "r.json")
    ran = []
    ok = gpu_check.run_stages(
        report, [("late", lambda: ran.append(1) or {})], deadline=time.monotonic() - 1, echo=print
    )
    assert ok is False and ran == []
    assert json.loads((tmp_path / "r.json").read_text())["stages"]["late"] == {
        "status": "skipped",
        "reason": "out of time",
    }


def test_all_ok_when_every_stage_passes(gpu_check, tmp_path):
    report = gpu_check.Report(tmp_path / "r.json")
    stages = [("a", lambda: {"passed": True}), ("b", dict)]
    assert gpu_check.run_stages(report, stages, deadline=time.monotonic() + 60, echo=lambda s: None) is True


def test_is_oom(gpu_check):
    assert gpu_check.is_oom(torch.cuda.OutOfMemoryError("x"))
    assert gpu_check.is_oom(RuntimeError("CUDA error: out of memory"))
    assert not gpu_check.is_oom(ValueError("shape mismatch"))


def test_the_rehearsal_runs_every_stage_on_the_cpu_end_to_end(tmp_path, trains):
    """The stages themselves (not fakes), on the CPU with the tiny model: a stage calling an API that
    no longer exists, or passing `gptkit train` a flag it refuses, fails here and not first on a GPU."""
    out = tmp_path / "r.json"
    r = subprocess.run(
        [sys.executable, str(SCRIPT), "--rehearse", "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
    )
    report = json.loads(out.read_text())
    stages = report["stages"]
    failed = {k: v.get("error") or v for k, v in stages.items() if v["status"] != "ok"}
    assert r.returncode == 0 and not failed, (failed, r.stdout[-2000:], r.stderr[-2000:])
    assert report["rehearsal"] is True and report["ok"] is True
    assert list(stages) == ["doctor", "parity", "train_124m", "ddp", "sample", "kv_cache"]
    assert stages["parity"]["max_abs"] <= stages["parity"]["tolerance"]["max_abs"]
    train = stages["train_124m"]
    assert train["preset"] == "tiny" and train["compile"] is False and train["sdpa"].startswith("rehearsal")
    for run in train["micro_batches"].values():
        assert run["tok_per_s"] > 0 and run["mfu"] is None and run["timed_steps"] == 3
    ddp = stages["ddp"]
    assert ddp["steps"] == 10 and ddp["checkpoint"] and ddp["processes"] == 2
    assert "NCCL not exercised" in ddp["nccl"]
    assert stages["sample"]["new_tokens"] == 256
    kv = stages["kv_cache"]
    assert kv["fp32"]["max_abs_logit_diff"] <= kv["fp32"]["tolerance"]
    assert kv["fp32"]["next_token_agree"] == 1.0
    assert "rehearsal" in r.stdout and "all stages ok" in r.stdout
