"""scripts/gpu_check.py: without CUDA it says so in one line and a report; its stage runner records
every stage's result or failure and rewrites the report after each one (fake stages, no GPU); and
`--rehearse` runs every real stage on the CPU, so the script's own code is exercised without a GPU."""

import importlib.util
import json
import os
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


def ctx_for(gpu_check, tmp_path, lines=None, deadline_s=60.0, **kw):
    return gpu_check.Ctx(
        tmp_path, time.monotonic() + deadline_s, echo=(lines.append if lines is not None else lambda s: None), **kw
    )


def stages_of(gpu_check, *named, limit_s=30.0):
    return [gpu_check.Stage(name, fn, limit_s) for name, fn in named]


def test_stages_are_recorded_one_by_one_and_failures_do_not_stop_the_run(gpu_check, tmp_path):
    path = tmp_path / "report.json"
    report = gpu_check.Report(path, cuda=True)
    seen = []

    def first(ctx):
        return {"value": 1}

    def crashes(ctx):
        seen.append(json.loads(path.read_text())["stages"])  # what a reader sees mid-run
        raise ValueError("boom\nsecond line")

    def oom(ctx):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    def below_target(ctx):
        seen.append(json.loads(path.read_text())["stages"])
        return {"passed": False, "max_abs": 3.0}

    lines = []
    stages = stages_of(gpu_check, ("first", first), ("crashes", crashes), ("oom", oom), ("below", below_target))
    ok = gpu_check.run_stages(report, stages, ctx_for(gpu_check, tmp_path, lines))
    assert ok is False
    # Each stage was in the file before the next one ran (and the running one was marked so).
    assert seen[0]["first"]["status"] == "ok" and seen[0]["crashes"] == {"status": "running", "limit_s": 30.0}
    assert seen[1]["crashes"]["status"] == "error" and seen[1]["oom"]["oom"] is True
    stages = json.loads(path.read_text())["stages"]
    assert list(stages) == ["first", "crashes", "oom", "below"]
    assert stages["first"]["value"] == 1 and stages["first"]["status"] == "ok"
    assert stages["crashes"]["error"] == "ValueError: boom" and "Traceback" in stages["crashes"]["traceback"]
    assert stages["crashes"]["oom"] is False
    assert stages["oom"]["status"] == "error" and stages["oom"]["oom"] is True
    assert stages["below"]["status"] == "failed" and stages["below"]["max_abs"] == 3.0
    assert all(isinstance(s["seconds"], float) and s["limit_s"] == 30.0 for s in stages.values())
    assert lines[0].startswith("[first] ok") and lines[1].endswith("ValueError: boom")


def test_stages_past_the_deadline_are_skipped_and_say_so(gpu_check, tmp_path):
    report = gpu_check.Report(tmp_path / "r.json")
    ran = []
    stages = stages_of(gpu_check, ("late", lambda ctx: ran.append(1) or {}))
    ok = gpu_check.run_stages(report, stages, ctx_for(gpu_check, tmp_path, deadline_s=-1))
    assert ok is False and ran == []
    assert json.loads((tmp_path / "r.json").read_text())["stages"]["late"] == {
        "status": "skipped",
        "reason": "out of time",
        "limit_s": 30.0,
    }


def test_a_stage_past_its_own_limit_is_stopped_with_its_subprocess_and_the_next_one_runs(gpu_check, tmp_path):
    """The in-process part stops at the limit (SIGALRM), and a subprocess it started is killed."""
    report = gpu_check.Report(tmp_path / "r.json")
    pid_file = tmp_path / "child.pid"

    def spins(ctx):
        while True:
            time.sleep(0.05)

    def hangs_in_a_child(ctx):
        code = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(600)"
        gpu_check.run_process(ctx, [sys.executable, "-c", code], timeout=600)
        return {}

    stages = [
        gpu_check.Stage("spins", spins, limit_s=0.5),
        gpu_check.Stage("child", hangs_in_a_child, limit_s=2.0),
        gpu_check.Stage("after", lambda ctx: {"passed": True}, limit_s=5.0),
    ]
    lines = []
    t0 = time.monotonic()
    ok = gpu_check.run_stages(report, stages, ctx_for(gpu_check, tmp_path, lines))
    stages = json.loads((tmp_path / "r.json").read_text())["stages"]
    assert ok is False and time.monotonic() - t0 < 30
    assert stages["spins"]["status"] == "timeout" and "limit of 0.5 s" in stages["spins"]["error"]
    assert stages["child"]["status"] == "timeout" and stages["after"]["status"] == "ok"
    pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert lines[0].startswith("[spins] timeout")


def test_a_stage_needing_more_gpus_than_there_are_is_na_and_does_not_fail(gpu_check, tmp_path):
    report = gpu_check.Report(tmp_path / "r.json")
    ran = []
    stages = [
        gpu_check.Stage("two", lambda ctx: ran.append(1) or {}, limit_s=30.0, min_gpus=2),
        gpu_check.Stage("one", lambda ctx: {"passed": True}, limit_s=30.0),
    ]
    assert gpu_check.run_stages(report, stages, ctx_for(gpu_check, tmp_path, gpus=1)) is True
    data = json.loads((tmp_path / "r.json").read_text())
    assert ran == [] and data["stages"]["two"] == {"status": "n/a", "reason": "needs 2 GPUs, 1 here"}
    assert data["limits_sum_s"] == 30.0


def test_all_ok_when_every_stage_passes(gpu_check, tmp_path):
    report = gpu_check.Report(tmp_path / "r.json")
    stages = stages_of(gpu_check, ("a", lambda ctx: {"passed": True}), ("b", lambda ctx: {}))
    assert gpu_check.run_stages(report, stages, ctx_for(gpu_check, tmp_path)) is True


def test_the_real_stages_fit_the_eight_minutes_on_one_gpu(gpu_check):
    names = [st.name for st in gpu_check.STAGES]
    assert len(names) == len(set(names)) and all(st.limit_s > 0 and st.about for st in gpu_check.STAGES)
    assert gpu_check.limits_sum(gpu_check.STAGES, gpus=1) <= gpu_check.TOTAL_LIMIT_S == 480
    r = subprocess.run([sys.executable, str(SCRIPT), "--list"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and all(n in r.stdout for n in names)
    assert f"{gpu_check.limits_sum(gpu_check.STAGES):.0f} s of 480" in r.stdout


def test_is_oom(gpu_check):
    assert gpu_check.is_oom(torch.cuda.OutOfMemoryError("x"))
    assert gpu_check.is_oom(RuntimeError("CUDA error: out of memory"))
    assert not gpu_check.is_oom(ValueError("shape mismatch"))


def test_the_rehearsal_runs_every_stage_on_the_cpu_end_to_end(gpu_check, tmp_path, trains):
    """The stages themselves (not fakes), on the CPU with the tiny model: a stage calling an API that
    no longer exists, or passing `gptkit train` a flag it refuses, fails here and not first on a GPU."""
    out = tmp_path / "r.json"
    r = subprocess.run(
        [sys.executable, str(SCRIPT), "--rehearse", "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=1800,  # its own limits stop it first
    )
    report = json.loads(out.read_text())
    stages = report["stages"]
    failed = {k: v.get("error") or v for k, v in stages.items() if v["status"] != "ok"}
    assert r.returncode == 0 and not failed, (failed, r.stdout[-2000:], r.stderr[-2000:])
    assert report["rehearsal"] is True and report["ok"] is True
    assert list(stages) == [st.name for st in gpu_check.STAGES]  # every stage ran, none was n/a
    assert stages["parity"]["max_abs"] <= stages["parity"]["tolerance"]["max_abs"]
    train = stages["train_124m"]
    assert train["preset"] == "tiny" and train["compile"] is False and train["sdpa"].startswith("rehearsal")
    for run in train["micro_batches"].values():
        assert run["tok_per_s"] > 0 and run["mfu"] is None and run["timed_steps"] == 3
    ddp = stages["ddp"]
    assert ddp["steps"] == 10 and ddp["checkpoint"] and ddp["processes"] == 2
    assert "NCCL not exercised" in ddp["nccl"]
    fsdp = stages["fsdp"]  # FSDP2 + activation checkpointing: the ddp stage's first losses, to rounding in fp32
    assert fsdp["strategy"] == "fsdp" and fsdp["checkpointing"] is True and fsdp["losses_agree"] is True
    assert fsdp["first_losses"][0] == pytest.approx(ddp["loss_first_last"][0], rel=1e-5) and fsdp["steps"] == 10
    assert stages["sample"]["new_tokens"] == 256
    assert stages["dist"]["all_correct"] and stages["dist"]["consistent"] and stages["dist"]["processes"] == 2
    muon = stages["muon"]  # fp32 here: the Newton-Schulz iteration runs in the machine's own precision
    assert muon["ns_dtype"] == "float32" and muon["ratio"] > 0 and set(muon["step_ms"]) == {"adamw", "muon"}
    kv = stages["kv_cache"]
    assert kv["fp32"]["max_abs_logit_diff"] <= kv["fp32"]["tolerance"]
    assert kv["fp32"]["next_token_agree"] == 1.0
    trainer = stages["trainer"]  # the real Trainer: evaluation, HellaSwag, samples
    assert trainer["steps"] == 4 and len(trainer["val_loss"]) == 3 and len(trainer["hellaswag"]) == 3
    assert trainer["samples"] == 2
    assert stages["fp16_resume"]["weights_bitwise_equal"] and stages["fp16_resume"]["killed_after"][0] == "step_000002"
    oom = stages["oom"]
    assert oom["train"]["lines"] == 1 and oom["train"]["line"].startswith("gptkit: error: CUDA out of memory at")
    assert all(oom[p]["line"].startswith("CUDA out of memory") for p in ("evaluation", "hellaswag", "sample"))
    assert stages["copies"]["same_tensors"] and stages["copies"]["pinned"].startswith("no")
    assert stages["attention"]["kernels"]
    assert stages["ddp_exact"]["ranks"] == 2 and stages["ddp_exact"]["distinct_weights"] == 1
    failure = stages["rank0_failure"]
    assert failure["ranks_that_heard"] == [1] and "no space left" in failure["line"]
    assert "rehearsal" in r.stdout and "all stages ok" in r.stdout
