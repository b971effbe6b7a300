"""`gptkit doctor`, run in subprocesses like a user, with fake nvidia-smi / nvcc on PATH.

tests/fake_bin holds executables that print the real output formats of a 4× A100 node (driver
550.54.15, CUDA 12.4, nvcc 12.4.131); an empty directory as PATH is a machine without them. The
endpoint check talks only to loopback: gptkit's own mirror server, or a closed port.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from gptkit.doctor.checks import GB, STATUSES, Check, disk_status
from gptkit.doctor.probes import (
    SMI_QUERY_ARGS,
    EndpointProbe,
    describe_gpus,
    format_cudnn_version,
    parse_gpu_query,
    parse_nvcc_version,
    parse_smi_header,
)
from gptkit.doctor.report import CHECKS, exit_code, run_checks, safe
from gptkit.doctor.torch_checks import cuda_compat, install_cuda_torch_hint, torch_wheel_tag

FAKE_BIN = Path(__file__).resolve().parent / "fake_bin"
SECRET = "hf_doctorTestTokenThatMustNeverLeave"
# Variables that would change what doctor sees; each run sets what it needs.
SCRUB = (
    "FAKE_NVIDIA_SMI",
    "CUDA_HOME",
    "CUDA_PATH",
    "HF_ENDPOINT",
    "HF_HUB_OFFLINE",
    "CUDA_VISIBLE_DEVICES",
    "http_proxy",
    "https_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "all_proxy",
    "ALL_PROXY",
)


def run_doctor(*args, path, env=None, encoding="utf-8"):
    full = {k: v for k, v in os.environ.items() if k not in SCRUB}
    full.update({"PATH": str(path), "PYTHONIOENCODING": encoding, "COLUMNS": "200", **(env or {})})
    return subprocess.run(
        [sys.executable, "-m", "gptkit", "doctor", *map(str, args)],
        capture_output=True,
        text=True,
        env=full,
        timeout=120,
        encoding="utf-8",
        errors="replace",
    )


def as_json(r):
    assert "Traceback" not in r.stderr, r.stderr
    doc = json.loads(r.stdout)
    return doc, {c["name"]: c for c in doc["checks"]}


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """Our own Hub mirror on loopback (it records each request, and whether it carried a token)."""
    from gptkit.hub.mirror.server import MirrorServer

    seen: list = []
    with MirrorServer(tmp_path_factory.mktemp("mirror_root"), on_request=seen.append) as server:
        yield server.url, seen


@pytest.fixture(scope="module")
def closed_port_url():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now: connections are refused
    return f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def no_tools(tmp_path_factory):
    """A PATH with neither nvidia-smi nor nvcc, and homes with no GPT-2 vocabulary."""
    root = tmp_path_factory.mktemp("bare")
    for d in ("bin", "home", "tiktoken"):
        (root / d).mkdir()
    return root


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("data_root")


@pytest.fixture(scope="module")
def four_gpus(hub, data_root):
    url, seen = hub
    from gptkit.tokenizer import gpt2_vocab_offline

    vocab = gpt2_vocab_offline()
    assert vocab, "the session's GPT-2 vocabulary is missing: run `python scripts/get_gpt2_vocab.py`"
    r = run_doctor(
        "--json",
        "--endpoint",
        url,
        "--data-dir",
        data_root / "not" / "made" / "yet",
        path=f"{FAKE_BIN}{os.pathsep}{os.environ['PATH']}",
        env={"HF_TOKEN": SECRET},
    )
    return r, vocab, seen


@pytest.fixture(scope="module")
def bare(no_tools, closed_port_url):
    env = {
        "GPTKIT_HOME": str(no_tools / "home"),
        "TIKTOKEN_CACHE_DIR": str(no_tools / "tiktoken"),
        "HF_ENDPOINT": closed_port_url,
    }
    return run_doctor("--json", path=no_tools / "bin", env=env)


# ----- the 4-GPU machine (fake tools) whose torch is the CPU build of this machine --------------


def test_reports_driver_cuda_and_each_gpu(four_gpus):
    r, _, _ = four_gpus
    _, checks = as_json(r)
    smi = checks["nvidia-smi"]
    assert smi["status"] == "ok", smi
    assert smi["data"]["driver_version"] == "550.54.15"
    assert smi["data"]["cuda_version"] == "12.4"
    gpus = smi["data"]["gpus"]
    assert [g["index"] for g in gpus] == [0, 1, 2, 3]
    for g in gpus:
        assert (g["name"], g["memory_mib"], g["compute_capability"], g["native_bf16"]) == (
            "NVIDIA A100-SXM4-80GB",
            81920,
            "8.0",
            True,
        )
    assert "4× NVIDIA A100-SXM4-80GB" in smi["detail"] and "12.4" in smi["detail"]
    nvcc = checks["nvcc"]
    assert nvcc["status"] == "ok" and nvcc["data"]["version"] == "12.4.131"
    assert nvcc["data"]["path"] == str(FAKE_BIN / "nvcc")


def test_gpus_shown_by_driver_but_not_torch_fail_with_the_wheel_fix(four_gpus):
    import torch

    r, _, _ = four_gpus
    doc, checks = as_json(r)
    gpus = checks["GPUs"]
    if torch.cuda.device_count() == 0:  # this machine: CPU torch wheel, no GPU
        assert gpus["status"] == "fail", gpus
        assert "nvidia-smi shows 4 GPUs but torch sees none" in gpus["detail"]
        if torch.version.cuda is None:
            # The driver supports CUDA 12.4, so the fix names the cu124 wheel index.
            assert "download.pytorch.org/whl/cu124" in gpus["fix"]
        assert r.returncode == 1 and doc["summary"]["exit_code"] == 1 and doc["summary"]["fail"] >= 1
    else:
        assert gpus["status"] != "fail", gpus


def test_endpoint_that_answers_is_ok_and_never_gets_the_token(four_gpus, hub):
    r, _, seen = four_gpus
    url, _ = hub
    _, checks = as_json(r)
    ep = checks["HF endpoint"]
    assert ep["status"] == "ok", ep
    assert ep["data"]["endpoint"] == url and ep["data"]["source"] == "--endpoint"
    assert ep["data"]["http_status"] == 200
    assert seen, "doctor did not contact the endpoint"
    for request in seen:
        assert (request["method"], request["path"], request["status"]) == ("HEAD", "/", 200)
        assert request["auth"] is False, request  # HF_TOKEN was set, yet no Authorization header
    assert SECRET not in r.stdout + r.stderr


def test_vocab_found_offline(four_gpus):
    r, vocab, _ = four_gpus
    _, checks = as_json(r)
    assert checks["GPT-2 vocab"]["status"] == "ok"
    assert checks["GPT-2 vocab"]["data"]["path"] == vocab


def test_every_check_reports_and_json_is_complete(four_gpus):
    r, _, _ = four_gpus
    doc, checks = as_json(r)
    assert list(checks) == [name for name, _ in CHECKS]
    for c in doc["checks"]:
        assert c["status"] in STATUSES and c["detail"]
        if c["status"] != "ok":
            assert c["fix"] and "\n" not in c["fix"], c
    s = doc["summary"]
    assert s["ok"] + s["warn"] + s["fail"] == len(doc["checks"])
    assert checks["torch"]["data"]["version"]
    assert set(checks["attention"]["data"]["runs"]) >= {"flash", "mem-efficient", "math"}


# ----- a machine without the tools, vocabulary or network ---------------------------------------


def test_missing_tools_are_reported_with_the_right_statuses(bare):
    doc, checks = as_json(bare)
    # a CPU machine: the GPU rows are not applicable, so --strict can pass there (issue 23)
    assert checks["nvidia-smi"]["status"] == "ok"
    assert "no NVIDIA driver / no GPU; not applicable on a CPU machine" in checks["nvidia-smi"]["detail"]
    assert checks["nvcc"]["status"] == "ok"
    assert "not installed (not needed for pip torch wheels)" in checks["nvcc"]["detail"]
    # No driver and no GPU in torch: nothing is broken, training runs on the CPU.
    assert checks["GPUs"]["status"] == "ok"
    assert not [c for c in doc["checks"] if c["status"] == "fail"], doc
    assert bare.returncode == 0 and doc["summary"]["exit_code"] == 0


def test_gpus_asked_for_on_a_cpu_machine_fail_their_rows(no_tools, closed_port_url):
    env = {"GPTKIT_HOME": str(no_tools / "home"), "TIKTOKEN_CACHE_DIR": str(no_tools / "tiktoken")}
    r = run_doctor("--json", "--gpus", "2", "--endpoint", closed_port_url, path=no_tools / "bin", env=env)
    doc, checks = as_json(r)
    assert checks["nvidia-smi"]["status"] == "fail" and "--gpus 2 asks for GPUs" in checks["nvidia-smi"]["detail"]
    assert checks["GPUs"]["status"] == "fail" and "--gpus 2 asked for, torch sees 0" in checks["GPUs"]["detail"]
    assert r.returncode == 1


def test_unreachable_endpoint_warns_with_mirror_fix(bare, closed_port_url):
    _, checks = as_json(bare)
    ep = checks["HF endpoint"]
    assert ep["status"] == "warn", ep
    assert ep["data"]["http_status"] is None and ep["data"]["error"]
    assert "--mirror" in ep["fix"] and "hf-mirror.com" in ep["fix"]
    assert ep["data"]["endpoint"] == closed_port_url and ep["data"]["source"] == "HF_ENDPOINT"


def test_vocab_missing_offline_warns_with_fix(bare):
    _, checks = as_json(bare)
    v = checks["GPT-2 vocab"]
    assert v["status"] == "warn" and v["data"]["path"] is None
    assert "scripts/get_gpt2_vocab.py" in v["fix"] and "gptkit download gpt2" in v["fix"]


def test_strict_fails_on_warnings_and_ascii_terminal_does_not_crash(no_tools, closed_port_url, bare):
    env = {"GPTKIT_HOME": str(no_tools / "home"), "TIKTOKEN_CACHE_DIR": str(no_tools / "tiktoken")}
    r = run_doctor("--strict", "--endpoint", closed_port_url, path=no_tools / "bin", env=env, encoding="ascii")
    assert bare.returncode == 0  # the same machine without --strict
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    assert "--strict: warnings fail" in r.stdout
    assert "+" in r.stdout and "fix: " in r.stdout


def test_table_shows_ok_warn_fail_marks_and_fixes(closed_port_url):
    r = run_doctor("--endpoint", closed_port_url, path=f"{FAKE_BIN}{os.pathsep}{os.environ['PATH']}")
    assert "Traceback" not in r.stderr, r.stderr
    rows = {
        ln.split("│")[2].strip(): ln.split("│")[1].strip()
        for ln in r.stdout.splitlines()
        if ln.count("│") >= 3 and ln.split("│")[2].strip()
    }
    assert rows["nvidia-smi"] == "✓"
    assert rows["HF endpoint"] == "!"
    import torch

    if torch.cuda.device_count() == 0:
        assert rows["GPUs"] == "✗"
    assert "fix: " in r.stdout
    # Without --strict, exit 1 and FAILED exactly when some row failed; warnings alone give 0 and OK.
    failed = [name for name, mark in rows.items() if mark == "✗"]
    assert r.returncode == (1 if failed else 0), (failed, r.stdout)
    assert f"{len(failed)} failure(s): {'FAILED' if failed else 'OK'}" in r.stdout


# ----- broken drivers and the free-disk check ---------------------------------------------------


def test_free_disk_where_data_goes(four_gpus, data_root):
    r, _, _ = four_gpus
    _, checks = as_json(r)
    disk = checks["disk"]
    data_dir = data_root / "not" / "made" / "yet"
    assert disk["data"]["data_dir"] == str(data_dir)
    assert disk["data"]["measured_at"] == str(data_root)  # nearest existing parent
    free_now = shutil.disk_usage(data_root).free
    assert abs(disk["data"]["free_bytes"] - free_now) < 2 * GB
    assert disk["status"] == disk_status(disk["data"]["free_bytes"])
    assert f"{disk['data']['free_bytes'] / GB:.1f} GB free" in disk["detail"]
    assert not data_dir.exists()  # doctor only looks


def in_process(monkeypatch, tmp_path, smi_mode):
    """run_checks() in this process with the fake tools in a given failure mode (no network)."""
    monkeypatch.setenv("PATH", str(FAKE_BIN))
    monkeypatch.setenv("FAKE_NVIDIA_SMI", smi_mode)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return {c.name: c for c in run_checks("http://127.0.0.1:9", "test", tmp_path)}


def test_driver_not_loaded_warns(monkeypatch, tmp_path):
    checks = in_process(monkeypatch, tmp_path, "no-driver")
    smi = checks["nvidia-smi"]
    assert smi.status == "warn" and "driver is not loaded" in smi.detail
    assert smi.data["returncode"] == 9 and "modprobe" in smi.fix
    assert checks["GPUs"].status != "fail"  # the driver lists no GPU, so torch misses none
    assert checks["HF endpoint"].status == "ok" and checks["HF endpoint"].data["offline"]


def test_driver_library_mismatch_fails_with_reboot_fix(monkeypatch, tmp_path):
    checks = in_process(monkeypatch, tmp_path, "mismatch")
    smi = checks["nvidia-smi"]
    assert smi.status == "fail" and "version mismatch" in smi.detail and "reboot" in smi.fix
    assert smi.data["returncode"] == 18


# ----- pure functions, fed real output --------------------------------------------------------


def test_parsers_read_the_real_formats():
    plain = subprocess.run([FAKE_BIN / "nvidia-smi"], capture_output=True, text=True, check=True).stdout
    assert parse_smi_header(plain) == ("550.54.15", "12.4")
    old = "| NVIDIA-SMI 450.51.05    Driver Version: 450.51.05    CUDA Version: 11.0     |"
    assert parse_smi_header(old) == ("450.51.05", "11.0")
    assert parse_smi_header("No devices were found") == (None, None)

    query = subprocess.run([FAKE_BIN / "nvidia-smi", *SMI_QUERY_ARGS], capture_output=True, text=True, check=True)
    gpus = parse_gpu_query(query.stdout)
    assert len(gpus) == 4 and gpus[3].index == 3 and gpus[0].memory_mib == 81920
    mixed = parse_gpu_query(
        "Tesla V100-SXM2-16GB, 16384, 7.0, 535.104.05\nNVIDIA H100 80GB HBM3, [N/A], 9.0, 535.104.05\n"
    )
    assert [(g.name, g.memory_mib, g.compute_capability, g.native_bf16) for g in mixed] == [
        ("Tesla V100-SXM2-16GB", 16384, "7.0", False),
        ("NVIDIA H100 80GB HBM3", None, "9.0", True),
    ]
    assert describe_gpus(gpus) == "4× NVIDIA A100-SXM4-80GB (81920 MiB, cc 8.0)"

    nvcc = subprocess.run([FAKE_BIN / "nvcc", "--version"], capture_output=True, text=True, check=True).stdout
    assert parse_nvcc_version(nvcc) == "12.4.131"
    assert parse_nvcc_version("Cuda compilation tools, release 11.8, V11.8.89") == "11.8.89"
    assert parse_nvcc_version("nvcc fatal   : No input files specified") is None


def test_cuda_compatibility_and_wheel_choice():
    assert cuda_compat("12.4", "12.4")[0] == "ok"
    assert cuda_compat("11.8", "12.4")[0] == "ok"
    status, detail, fix = cuda_compat("13.0", "12.4")
    assert status == "fail" and "13.0" in detail and "whl/cu124" in fix
    assert cuda_compat("12.8", "12.4")[0] == "warn"  # minor-version compatibility
    assert cuda_compat(None, "12.4")[0] == "ok" and cuda_compat("12.4", None)[0] == "ok"
    assert [torch_wheel_tag(v) for v in ("12.4", "12.2", "12.0", "13.0", "13.1", "11.4", "10.2", None)] == [
        "cu124",
        "cu121",
        "cu121",
        "cu130",
        "cu130",
        "cu118",
        None,
        None,
    ]
    assert "upgrade the NVIDIA driver" in install_cuda_torch_hint("10.2")


def test_small_decisions():
    assert format_cudnn_version(8902) == "8.9.2"
    assert format_cudnn_version(90100) == "9.1.0"
    assert format_cudnn_version(None) is None
    assert disk_status(100 * GB) == "ok"
    assert disk_status(20 * GB) == "warn"
    assert disk_status(GB // 2) == "fail"
    checks = [Check("a", "ok", "x"), Check("b", "warn", "y", "z")]
    assert exit_code(checks) == 0 and exit_code(checks, strict=True) == 1
    assert exit_code(checks + [Check("c", "fail", "w", "v")]) == 1
    assert exit_code(checks[:1], strict=True) == 0


def test_a_crashing_check_becomes_a_failed_row():
    def boom(ctx):
        raise KeyError("surprise")

    row = safe("boom", boom, ctx=None)
    assert row.status == "fail" and "KeyError" in row.detail and row.fix


def test_endpoint_that_accepts_but_never_answers_gives_up_as_unreachable():
    # A listening socket that never accepts: the TCP handshake succeeds, no HTTP answer follows.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)
    try:
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        probe = EndpointProbe(url, timeout=0.5).result()
        assert probe.status is None
        assert "timed out" in probe.error or "no answer" in probe.error, probe.error
    finally:
        silent.close()


TOPO_NVLINK = """\tGPU0\tGPU1\tCPU Affinity
GPU0\t X \tNV12\t0-63
GPU1\tNV12\t X \t0-63
"""
TOPO_PCIE = """\tGPU0\tGPU1\tCPU Affinity
GPU0\t X \tPHB\t0-63
GPU1\tPHB\t X \t0-63
"""


def test_doctor_dist_knows_what_each_link_should_give_and_warns_far_below_it():
    from gptkit.doctor.dist import LINK_WARN, LINKS, detect_link, link_verdict

    facts = dict(topo=None, ib_gbit=[], eth_mbit=[])
    assert detect_link(1, 0, gpu_name="", **facts)[0] is None  # gloo between CPU processes
    assert detect_link(1, 8, gpu_name="NVIDIA H100 80GB HBM3", **{**facts, "topo": TOPO_NVLINK})[0] == "nvlink4"
    assert detect_link(1, 8, gpu_name="NVIDIA A100-SXM4-80GB", **{**facts, "topo": TOPO_NVLINK})[0] == "nvlink3"
    name, how = detect_link(1, 2, gpu_name="NVIDIA GeForce RTX 4090", **{**facts, "topo": TOPO_PCIE})
    assert name == "pcie3" and "--link pcie4" in how
    assert detect_link(2, 16, gpu_name="x", **{**facts, "ib_gbit": [100.0, 200.0], "eth_mbit": [25_000]})[0] == "ib-hdr"
    assert detect_link(2, 16, gpu_name="x", **{**facts, "eth_mbit": [1000, 25_000]})[0] == "eth-25g"
    assert detect_link(2, 16, gpu_name="x", **facts)[0] is None
    assert all(rate > 0 and source for rate, source in LINKS.values())

    def report(*busbw):
        return {"sizes": [{"busbw_GBps": b} for b in busbw]}

    rate = LINKS["ib-hdr"][0]
    assert link_verdict(report(1.0, LINK_WARN * rate + 0.1), "ib-hdr") is None  # the best size decides
    line = link_verdict(report(1.0, 2.0), "ib-hdr")
    assert line.startswith("all-reduce busbw 2.00 GB/s is 8% of ib-hdr's 25 GB/s")
    assert "NCCL_IB_DISABLE" in line and "NCCL_SOCKET_IFNAME" in line and "NCCL_DEBUG=INFO" in line
    assert link_verdict(report(0.001), None) is None
