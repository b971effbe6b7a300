"""What doctor asks the machine: nvidia-smi, nvcc, the torch import and the Hugging Face endpoint.

The tools and the endpoint probe start in the background and are collected later, so doctor stays
quick. Their output is parsed by pure functions (`parse_smi_header`, `parse_gpu_query`,
`parse_nvcc_version`), so tests can feed them text; the tests also put fake executables printing the
real formats on PATH.

Nothing here imports torch at module level: a broken torch install is one of the things doctor has
to report rather than die on.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from gptkit import __version__

# The two nvidia-smi invocations doctor makes (the test fakes answer exactly these).
SMI_QUERY_FIELDS = "name,memory.total,compute_cap,driver_version"
SMI_QUERY_ARGS = (f"--query-gpu={SMI_QUERY_FIELDS}", "--format=csv,noheader,nounits")
TOOL_TIMEOUT = 15.0  # nvidia-smi can take seconds when persistence mode is off


# --- parsing tool output -------------------------------------------------------------------------
@dataclass(frozen=True)
class Gpu:
    """One GPU as the driver lists it."""

    index: int
    name: str
    memory_mib: int | None
    compute_capability: str | None  # "8.0"
    driver_version: str | None = None

    @property
    def native_bf16(self) -> bool:
        """gptkit.device's rule, applied to the compute capability nvidia-smi reports. Imports torch:
        read it only once torch is known to import."""
        from gptkit.device import compute_capability_has_bf16

        cc = version_tuple(self.compute_capability)
        return bool(cc) and compute_capability_has_bf16(cc[0])


def version_tuple(text: str | None) -> tuple[int, ...]:
    """'12.4' -> (12, 4); '2.5.1+cu124' -> (2, 5, 1); unparseable -> ()."""
    if not text:
        return ()
    m = re.match(r"\d+(?:\.\d+)*", text.strip())
    return tuple(int(p) for p in m.group(0).split(".")) if m else ()


def first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return ""


def parse_smi_header(text: str) -> tuple[str | None, str | None]:
    """Driver version and the highest CUDA version the driver supports, from plain `nvidia-smi`."""
    driver = re.search(r"Driver Version:\s*([0-9][0-9.]*)", text)
    cuda = re.search(r"CUDA Version:\s*([0-9][0-9.]*)", text)
    return (driver.group(1) if driver else None, cuda.group(1) if cuda else None)


def _na(value: str) -> bool:
    return value.strip().strip("[]").lower() in ("n/a", "not supported", "unknown error", "")


def parse_gpu_query(text: str) -> list[Gpu]:
    """Rows of `nvidia-smi --query-gpu=name,memory.total,compute_cap,driver_version --format=csv,noheader,nounits`."""
    gpus: list[Gpu] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        # GPU names contain no commas; split from the right so a surprise in the name cannot shift fields.
        parts = [p.strip() for p in line.rsplit(",", 3)]
        if len(parts) != 4:
            raise ValueError(f"unexpected nvidia-smi query line: {line!r}")
        name, mem, cc, driver = parts
        gpus.append(
            Gpu(
                index=len(gpus),
                name=name,
                memory_mib=None if _na(mem) else int(float(mem)),
                compute_capability=None if _na(cc) else cc,
                driver_version=None if _na(driver) else driver,
            )
        )
    return gpus


def describe_gpus(gpus: list[Gpu]) -> str:
    """'4× NVIDIA A100-SXM4-80GB (81920 MiB, cc 8.0)', grouping identical GPUs."""
    groups: dict[tuple[str, int | None, str | None], int] = {}
    for g in gpus:
        key = (g.name, g.memory_mib, g.compute_capability)
        groups[key] = groups.get(key, 0) + 1
    parts = []
    for (name, mem, cc), n in groups.items():
        facts = ", ".join(x for x in (f"{mem} MiB" if mem else "", f"cc {cc}" if cc else "") if x)
        parts.append(f"{n}× {name}" + (f" ({facts})" if facts else ""))
    return "; ".join(parts)


def parse_nvcc_version(text: str) -> str | None:
    """'Cuda compilation tools, release 12.4, V12.4.131' -> '12.4.131' (or '12.4' without the V part)."""
    m = re.search(r"release\s+(\d+\.\d+)(?:,\s*V(\d+(?:\.\d+)+))?", text)
    if not m:
        return None
    return m.group(2) or m.group(1)


def format_cudnn_version(v: int | None) -> str | None:
    """torch.backends.cudnn.version(): 8902 -> '8.9.2' (cuDNN 8), 90100 -> '9.1.0' (cuDNN 9+)."""
    if not v:
        return None
    if v >= 90000:
        return f"{v // 10000}.{v // 100 % 100}.{v % 100}"
    return f"{v // 1000}.{v // 100 % 10}.{v % 100}"


# --- running tools -------------------------------------------------------------------------------
@dataclass
class ToolRun:
    path: str | None  # None: not found
    returncode: int | None = None
    output: str = ""  # stdout + stderr
    error: str | None = None  # timeout / OSError


class Tool:
    """A tool started in the background; `.result()` waits for it."""

    def __init__(self, path: str | None, args: tuple[str, ...], timeout: float):
        self.path, self.timeout = path, timeout
        self.proc: subprocess.Popen[str] | None = None
        self.error: str | None = None
        self._result: ToolRun | None = None
        if path is None:
            return
        try:
            self.proc = subprocess.Popen(
                [path, *args],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                text=True,
                errors="replace",
            )
        except OSError as e:
            self.error = f"could not run {path}: {e.strerror or e}"

    def result(self) -> ToolRun:
        if self._result is None:
            self._result = self._wait()
        return self._result

    def _wait(self) -> ToolRun:
        if self.proc is None or self.path is None:
            return ToolRun(self.path, error=self.error)
        try:
            out, _ = self.proc.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            return ToolRun(self.path, error=f"{Path(self.path).name} did not answer within {self.timeout:.0f} s")
        return ToolRun(self.path, self.proc.returncode, out)


def find_nvcc() -> str | None:
    found = shutil.which("nvcc")
    if found:
        return found
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            candidate = Path(os.environ[var]) / "bin" / "nvcc"
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    return None


def import_torch() -> tuple[ModuleType | None, str | None]:
    """(torch, None), or (None, why it does not import)."""
    try:
        import torch
    except Exception as e:  # ImportError, OSError from missing CUDA libraries, ...: all are the report
        return None, f"{type(e).__name__}: {e}"
    return torch, None


# --- the endpoint --------------------------------------------------------------------------------
@dataclass
class Probe:
    url: str
    status: int | None = None  # HTTP status, None if no answer
    error: str | None = None
    ms: float | None = None


class EndpointProbe:
    """One HEAD of the endpoint's root with a hard deadline (urllib's timeout does not cover DNS,
    so it runs in a thread). The Hub, hf-mirror.com and `gptkit mirror serve` all answer it."""

    def __init__(self, endpoint: str, timeout: float):
        self.result_ = Probe(url=f"{endpoint}/")
        self.timeout = timeout
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        r = self.result_
        # Only a User-Agent: never an Authorization header, whatever HF_TOKEN holds.
        req = urllib.request.Request(r.url, method="HEAD", headers={"User-Agent": f"gptkit/{__version__} (doctor)"})
        start = time.perf_counter()
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                r.status = resp.status
        except urllib.error.HTTPError as e:
            r.status = e.code  # an HTTP error is still an answer
        except urllib.error.URLError as e:
            r.error = str(getattr(e, "reason", e))
        except Exception as e:  # timeouts, resets, TLS errors: all mean "no answer"
            r.error = f"{type(e).__name__}: {e}"
        r.ms = (time.perf_counter() - start) * 1000

    def result(self) -> Probe:
        self.thread.join(self.timeout + 0.5)
        if self.thread.is_alive():
            return Probe(self.result_.url, error=f"no answer within {self.timeout:g} s")
        return self.result_
