"""The rows of `gptkit doctor`, and the checks that need no torch (driver, toolkit, network, disk).

A check takes the shared `Context` and returns one `Check`: status ok / warn / fail, a one-line
detail, a one-line fix for each problem, and structured `data` for --json. The checks that import
torch are in `gptkit.doctor.torch_checks`; the order they run in is `gptkit.doctor.report.CHECKS`.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from gptkit.doctor.probes import (
    EndpointProbe,
    Gpu,
    Tool,
    describe_gpus,
    first_line,
    parse_gpu_query,
    parse_nvcc_version,
    parse_smi_header,
)

OK, WARN, FAIL = "ok", "warn", "fail"
STATUSES = (OK, WARN, FAIL)

GB = 10**9
# FineWeb-Edu sample-10BT: ~30 GB of parquet plus ~20 GB of uint16 token shards.
DISK_WARN_BYTES = 50 * GB
DISK_FAIL_BYTES = 1 * GB


@dataclass
class Check:
    name: str
    status: str  # ok | warn | fail
    detail: str
    fix: str = ""  # one line, for warn / fail rows
    data: dict[str, Any] = field(default_factory=dict)  # structured facts for --json
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Context:
    """Facts shared between checks (the driver's GPUs matter to the torch checks)."""

    smi_plain: Tool
    smi_query: Tool
    nvcc: Tool
    probe: EndpointProbe | None
    endpoint: str
    endpoint_source: str
    data_dir: Path
    torch: ModuleType | None = None
    torch_error: str | None = None
    driver_version: str | None = None
    driver_cuda: str | None = None
    smi_gpus: list[Gpu] = field(default_factory=list)
    gpus: int | None = None  # `doctor --gpus N`: GPUs this machine must have (None: none asked for)

    def need_torch(self) -> ModuleType:
        if self.torch is None:
            raise Skip(f"skipped: torch is not importable ({self.torch_error})")
        return self.torch


class Skip(Exception):
    """A check that cannot run because an earlier one failed (shown as a warning)."""


def check_nvidia_smi(ctx: Context) -> Check:
    plain = ctx.smi_plain.result()
    if plain.path is None:
        if ctx.gpus:
            return Check(
                "nvidia-smi",
                FAIL,
                f"not found: no NVIDIA driver / no GPU (or nvidia-smi is not on PATH), and --gpus {ctx.gpus} asks for GPUs",
                "install the NVIDIA driver (it provides nvidia-smi), or leave --gpus out on a CPU machine",
            )
        # Not applicable on a CPU machine: an ok row, so `doctor --strict` can pass there.
        return Check(
            "nvidia-smi",
            OK,
            "not found: no NVIDIA driver / no GPU; not applicable on a CPU machine (--gpus N to require GPUs)",
        )
    if plain.error:
        return Check(
            "nvidia-smi", WARN, plain.error, "check the driver with `nvidia-smi`; a hung GPU may need a reset or reboot"
        )
    if plain.returncode != 0:
        msg = first_line(plain.output) or f"exit code {plain.returncode}"
        data: dict[str, Any] = {
            "path": plain.path,
            "returncode": plain.returncode,
            "output": plain.output.strip()[:500],
        }
        if "version mismatch" in plain.output.lower():
            return Check(
                "nvidia-smi",
                FAIL,
                msg,
                "reboot: the loaded kernel driver is older than the installed driver libraries",
                data,
            )
        if "couldn't communicate" in plain.output or "driver is not loaded" in plain.output.lower():
            return Check(
                "nvidia-smi",
                WARN,
                "installed, but the NVIDIA driver is not loaded (no GPU usable)",
                "install a driver matching the kernel and load it (`sudo modprobe nvidia` or reboot)",
                data,
            )
        return Check("nvidia-smi", WARN, msg, "run `nvidia-smi` and fix the driver error it reports", data)

    ctx.driver_version, ctx.driver_cuda = parse_smi_header(plain.output)
    query = ctx.smi_query.result()
    data = {"path": plain.path, "driver_version": ctx.driver_version, "cuda_version": ctx.driver_cuda, "gpus": []}
    head = f"driver {ctx.driver_version or '?'}, supports CUDA ≤ {ctx.driver_cuda or '?'}"
    if query.error or query.returncode != 0:
        why = query.error or first_line(query.output) or f"exit code {query.returncode}"
        return Check(
            "nvidia-smi", WARN, f"{head}; could not list GPUs: {why}", "update the NVIDIA driver (510 or newer)", data
        )
    ctx.smi_gpus = parse_gpu_query(query.output)
    # The bf16 rule lives in gptkit.device, which needs torch: unknown (None) when torch is broken.
    data["gpus"] = [asdict(g) | {"native_bf16": g.native_bf16 if ctx.torch else None} for g in ctx.smi_gpus]
    if not ctx.smi_gpus:
        return Check(
            "nvidia-smi",
            WARN,
            f"{head}; no GPUs listed",
            "check that the GPUs are visible to this machine/container",
            data,
        )
    return Check("nvidia-smi", OK, f"{head}; {describe_gpus(ctx.smi_gpus)}", data=data)


def check_nvcc(ctx: Context) -> Check:
    r = ctx.nvcc.result()
    if r.path is None:
        return Check("nvcc", OK, "not installed (not needed for pip torch wheels)", data={"version": None})
    if r.error or r.returncode != 0:
        return Check(
            "nvcc",
            WARN,
            f"{r.path}: {r.error or first_line(r.output) or f'exit code {r.returncode}'}",
            "reinstall the CUDA toolkit or remove the broken nvcc from PATH (pip torch wheels do not need it)",
            {"path": r.path},
        )
    version = parse_nvcc_version(r.output)
    return Check(
        "nvcc",
        OK,
        f"CUDA toolkit {version or '(unknown version)'} ({r.path}); only used to build extensions",
        data={"path": r.path, "version": version},
    )


def check_endpoint(ctx: Context) -> Check:
    from gptkit.hub.endpoint import MIRROR_ENDPOINT, is_official

    data: dict[str, Any] = {"endpoint": ctx.endpoint, "source": ctx.endpoint_source}
    head = f"{ctx.endpoint} (from {ctx.endpoint_source})"
    if ctx.probe is None:
        return Check(
            "HF endpoint", OK, f"{head}; not contacted (offline: HF_HUB_OFFLINE is set)", data=data | {"offline": True}
        )
    p = ctx.probe.result()
    data |= {"http_status": p.status, "error": p.error, "ms": None if p.ms is None else round(p.ms)}
    if p.status is None:
        fix = (
            f"behind a firewall? use --mirror or export HF_ENDPOINT={MIRROR_ENDPOINT}"
            if is_official(ctx.endpoint)
            else f"start that server (e.g. `gptkit mirror serve`) or use --mirror (HF_ENDPOINT={MIRROR_ENDPOINT})"
        )
        return Check("HF endpoint", WARN, f"{head}; unreachable: {p.error}", fix, data)
    answer = f"answers (HTTP {p.status}, {p.ms:.0f} ms)"
    if p.status >= 500:
        return Check(
            "HF endpoint",
            WARN,
            f"{head}; {answer}: server error",
            "try again later or use another endpoint (--mirror)",
            data,
        )
    return Check("HF endpoint", OK, f"{head}; {answer}", data=data)


def check_vocab(ctx: Context) -> Check:
    from gptkit.tokenizer import gpt2_vocab_offline

    where = gpt2_vocab_offline()
    if where is None:
        return Check(
            "GPT-2 vocab",
            WARN,
            "not available offline (the `bytes` tokenizer still works)",
            "run `python scripts/get_gpt2_vocab.py` or `gptkit download gpt2`",
            {"path": None},
        )
    return Check("GPT-2 vocab", OK, f"offline at {where}", data={"path": where})


def check_disk(ctx: Context) -> Check:
    target = Path(ctx.data_dir).expanduser().absolute()
    where = nearest_existing(target)
    usage = shutil.disk_usage(where)
    status = disk_status(usage.free)
    data = {"data_dir": str(target), "measured_at": str(where), "free_bytes": usage.free, "total_bytes": usage.total}
    detail = f"{usage.free / GB:.1f} GB free at {where}" + ("" if where == target else f" (for {target})")
    fix = ""
    if status != OK:
        fix = (
            f"FineWeb-Edu 10B needs ~{DISK_WARN_BYTES // GB} GB (parquet + token shards): free space, "
            "or set GPTKIT_HOME to a bigger disk"
        )
    return Check("disk", status, detail, fix, data)


def disk_status(free_bytes: int) -> str:
    if free_bytes < DISK_FAIL_BYTES:
        return FAIL
    if free_bytes < DISK_WARN_BYTES:
        return WARN
    return OK


def nearest_existing(path: Path) -> Path:
    path = Path(path).expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path
