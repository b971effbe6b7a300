"""`gptkit doctor` as a whole: run every check in order, then the summary, exit code and --json document.

Tools and the network probe start first and run while torch imports. Every check is wrapped, so a
surprise on some machine becomes a failed row with the error instead of a traceback.
"""

from __future__ import annotations

import platform
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gptkit import __version__
from gptkit.doctor import checks as c
from gptkit.doctor import torch_checks as t
from gptkit.doctor.probes import SMI_QUERY_ARGS, TOOL_TIMEOUT, EndpointProbe, Tool, find_nvcc, first_line, import_torch
from gptkit.tokenizer import hub_offline

CHECKS: tuple[tuple[str, Callable[[c.Context], c.Check]], ...] = (
    ("nvidia-smi", c.check_nvidia_smi),
    ("nvcc", c.check_nvcc),
    ("torch", t.check_torch),
    ("cuDNN", t.check_cudnn),
    ("NCCL", t.check_nccl),
    ("GPUs", t.check_gpus),
    ("CPU", t.check_cpu),
    ("attention", t.check_attention),
    ("torchrun", t.check_torchrun),
    ("HF endpoint", c.check_endpoint),
    ("GPT-2 vocab", c.check_vocab),
    ("disk", c.check_disk),
)


def safe(name: str, fn: Callable[[c.Context], c.Check], ctx: c.Context) -> c.Check:
    start = time.perf_counter()
    try:
        check = fn(ctx)
    except c.Skip as e:
        check = c.Check(name, c.WARN, str(e), "fix the torch row first")
    except Exception as e:  # doctor must report, never crash
        check = c.Check(
            name,
            c.FAIL,
            f"check crashed: {type(e).__name__}: {first_line(str(e))}",
            "please report this with the output of `gptkit doctor --json`",
        )
    check.seconds = round(time.perf_counter() - start, 3)
    return check


def run_checks(
    endpoint: str, endpoint_source: str, data_dir: Path, timeout: float = 3.0, gpus: int | None = None
) -> list[c.Check]:
    """Run every check. Tools and the network probe start first and run while torch imports.
    `gpus`: GPUs the machine must have (--gpus N); without it the GPU rows of a CPU machine are ok."""
    offline = hub_offline()
    smi = shutil.which("nvidia-smi")
    ctx = c.Context(
        smi_plain=Tool(smi, (), TOOL_TIMEOUT),
        smi_query=Tool(smi, SMI_QUERY_ARGS, TOOL_TIMEOUT),
        nvcc=Tool(find_nvcc(), ("--version",), TOOL_TIMEOUT),
        probe=None if offline else EndpointProbe(endpoint, timeout),
        endpoint=endpoint,
        endpoint_source=endpoint_source,
        data_dir=Path(data_dir),
        gpus=gpus,
    )
    start = time.perf_counter()
    ctx.torch, ctx.torch_error = import_torch()  # before the nvidia-smi row: the bf16 rule needs torch
    imported = time.perf_counter() - start
    checks = [safe(name, fn, ctx) for name, fn in CHECKS]
    for check in checks:
        if check.name == "torch":
            check.seconds = round(check.seconds + imported, 3)  # the import is the torch row's cost
    for tool in (ctx.smi_plain, ctx.smi_query, ctx.nvcc):
        tool.result()  # reap the ones an early return left running
    return checks


def exit_code(checks: list[c.Check], strict: bool = False) -> int:
    bad = {c.FAIL, c.WARN} if strict else {c.FAIL}
    return 1 if any(check.status in bad for check in checks) else 0


def summary(checks: list[c.Check], strict: bool = False) -> dict[str, Any]:
    counts = {s: sum(check.status == s for check in checks) for s in c.STATUSES}
    return {**counts, "strict": strict, "exit_code": exit_code(checks, strict)}


def report(checks: list[c.Check], strict: bool = False) -> dict[str, Any]:
    """The --json document: for bug reports and scripts. Holds no tokens or secrets."""
    return {
        "gptkit": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "checks": [check.to_dict() for check in checks],
        "summary": summary(checks, strict),
    }
