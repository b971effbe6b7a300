"""`gptkit doctor`: the checks people otherwise run by hand before a training run.

`run_checks()` returns a list of `Check` rows (status ok / warn / fail, a one-line detail, a
one-line fix for each problem, and structured `data` for --json). Every check is wrapped, so a
surprise on some machine becomes a failed row with the error instead of a traceback.

The output of nvidia-smi and nvcc is parsed by pure functions (`parse_smi_header`,
`parse_gpu_query`, `parse_nvcc_version`), so tests can feed them text; the tests also put fake
executables printing the real formats on PATH.

torch is imported inside the checks, never at module level: a broken torch install is one of the
things doctor has to report rather than die on.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from gptkit import __version__

OK, WARN, FAIL = "ok", "warn", "fail"
STATUSES = (OK, WARN, FAIL)

# The two nvidia-smi invocations doctor makes (the test fakes answer exactly these).
SMI_QUERY_FIELDS = "name,memory.total,compute_cap,driver_version"
SMI_QUERY_ARGS = (f"--query-gpu={SMI_QUERY_FIELDS}", "--format=csv,noheader,nounits")
TOOL_TIMEOUT = 15.0  # nvidia-smi can take seconds when persistence mode is off

# CUDA variants of the official torch wheels (download.pytorch.org/whl/<tag>).
TORCH_WHEEL_CUDA = ("11.8", "12.1", "12.4", "12.6", "12.8", "12.9", "13.0")
MIN_TORCH = (2, 4)

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
    data: dict = field(default_factory=dict)  # structured facts for --json
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# Pure parsing and decision functions (tested directly with text)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    memory_mib: int | None
    compute_capability: str | None  # "8.0"
    driver_version: str | None = None

    @property
    def native_bf16(self) -> bool:
        # Same rule as gptkit.device: bf16 tensor cores from compute capability 8.0 (Ampere).
        return self.compute_capability is not None and version_tuple(self.compute_capability) >= (8,)


def version_tuple(text: str | None) -> tuple[int, ...]:
    """'12.4' -> (12, 4); '2.5.1+cu124' -> (2, 5, 1); unparseable -> ()."""
    if not text:
        return ()
    m = re.match(r"\d+(?:\.\d+)*", text.strip())
    return tuple(int(p) for p in m.group(0).split(".")) if m else ()


def parse_smi_header(text: str) -> tuple[str | None, str | None]:
    """Driver version and the highest CUDA version the driver supports, from plain `nvidia-smi`."""
    driver = re.search(r"Driver Version:\s*([0-9][0-9.]*)", text)
    cuda = re.search(r"CUDA Version:\s*([0-9][0-9.]*)", text)
    return (driver.group(1) if driver else None, cuda.group(1) if cuda else None)


def _na(value: str) -> bool:
    return value.strip().strip("[]").lower() in ("n/a", "not supported", "unknown error", "")


def parse_gpu_query(text: str) -> list[Gpu]:
    """Rows of `nvidia-smi --query-gpu=name,memory.total,compute_cap,driver_version --format=csv,noheader,nounits`."""
    gpus = []
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


def torch_wheel_tag(driver_cuda: str | None) -> str | None:
    """The newest official torch wheel variant (cuXYZ) a driver supporting `driver_cuda` runs."""
    have = version_tuple(driver_cuda)
    if not have:
        return None
    same_major = [v for v in TORCH_WHEEL_CUDA if version_tuple(v)[0] == have[0]]
    fitting = [v for v in same_major if version_tuple(v) <= have[:2]]
    # CUDA minor-version compatibility: a 12.x runtime runs on any 12.x driver (PTX JIT aside),
    # so the oldest wheel of the driver's major version is next best; then older major versions.
    choice = fitting[-1:] or same_major[:1] or [v for v in TORCH_WHEEL_CUDA if version_tuple(v) <= have[:2]][-1:]
    return "cu" + choice[0].replace(".", "") if choice else None


def install_cuda_torch_hint(driver_cuda: str | None) -> str:
    tag = torch_wheel_tag(driver_cuda)
    if tag is None:
        return "upgrade the NVIDIA driver (CUDA 11.8 or newer), then install a CUDA torch wheel"
    return f"pip uninstall -y torch && pip install torch --index-url https://download.pytorch.org/whl/{tag}"


def cuda_compat(torch_cuda: str | None, driver_cuda: str | None) -> tuple[str, str, str]:
    """(status, detail, fix) for torch's CUDA runtime against the newest CUDA the driver supports."""
    t, d = version_tuple(torch_cuda), version_tuple(driver_cuda)
    if not t or not d:
        return OK, "", ""
    if t[0] > d[0]:
        return (
            FAIL,
            f"torch's CUDA {torch_cuda} runtime is newer than the driver supports (CUDA {driver_cuda})",
            f"upgrade the NVIDIA driver, or {install_cuda_torch_hint(driver_cuda)}",
        )
    if t[:2] > d[:2]:
        # Same major version: runs through CUDA minor-version compatibility, except for PTX JIT.
        return (
            WARN,
            f"torch's CUDA {torch_cuda} is newer than the driver's {driver_cuda} (minor-version compatibility)",
            f"if kernels fail with 'unsupported toolchain', upgrade the driver or {install_cuda_torch_hint(driver_cuda)}",
        )
    return OK, "", ""


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


def exit_code(checks: list[Check], strict: bool = False) -> int:
    bad = {FAIL, WARN} if strict else {FAIL}
    return 1 if any(c.status in bad for c in checks) else 0


def summary(checks: list[Check], strict: bool = False) -> dict:
    counts = {s: sum(c.status == s for c in checks) for s in STATUSES}
    return {**counts, "strict": strict, "exit_code": exit_code(checks, strict)}


def report(checks: list[Check], strict: bool = False) -> dict:
    """The --json document: for bug reports and scripts. Holds no tokens or secrets."""
    return {
        "gptkit": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "checks": [c.to_dict() for c in checks],
        "summary": summary(checks, strict),
    }


# ---------------------------------------------------------------------------------------------
# Running tools and probing the network (started early, collected later, so doctor stays quick)
# ---------------------------------------------------------------------------------------------


@dataclass
class ToolRun:
    path: str | None  # None: not found
    returncode: int | None = None
    output: str = ""  # stdout + stderr
    error: str | None = None  # timeout / OSError


class _Tool:
    """A tool started in the background; `.result()` waits for it."""

    def __init__(self, path: str | None, args: tuple[str, ...], timeout: float):
        self.path, self.timeout, self.proc, self.error = path, timeout, None, None
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
        if self.proc is None:
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


@dataclass
class Probe:
    url: str
    status: int | None = None  # HTTP status, None if no answer
    error: str | None = None
    ms: float | None = None


class _EndpointProbe:
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
        except Exception as e:  # noqa: BLE001 - timeouts, resets, TLS errors: all mean "no answer"
            r.error = f"{type(e).__name__}: {e}"
        r.ms = (time.perf_counter() - start) * 1000

    def result(self) -> Probe:
        self.thread.join(self.timeout + 0.5)
        if self.thread.is_alive():
            return Probe(self.result_.url, error=f"no answer within {self.timeout:g} s")
        return self.result_


# ---------------------------------------------------------------------------------------------
# The checks
# ---------------------------------------------------------------------------------------------


@dataclass
class _Context:
    """Facts shared between checks (the driver's GPUs matter to the torch checks)."""

    smi_plain: _Tool
    smi_query: _Tool
    nvcc: _Tool
    probe: _EndpointProbe | None
    endpoint: str
    endpoint_source: str
    data_dir: Path
    driver_version: str | None = None
    driver_cuda: str | None = None
    smi_gpus: list[Gpu] = field(default_factory=list)
    torch: object = None
    torch_error: str | None = None

    def need_torch(self):
        if self.torch is None:
            raise _Skip(f"skipped: torch is not importable ({self.torch_error})")
        return self.torch


class _Skip(Exception):
    pass


def _first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return ""


def check_nvidia_smi(ctx: _Context) -> Check:
    plain = ctx.smi_plain.result()
    if plain.path is None:
        return Check(
            "nvidia-smi",
            WARN,
            "not found: no NVIDIA driver / no GPU (or nvidia-smi is not on PATH)",
            "nothing to do on a CPU machine; on a GPU machine install the NVIDIA driver (it provides nvidia-smi)",
        )
    if plain.error:
        return Check(
            "nvidia-smi", WARN, plain.error, "check the driver with `nvidia-smi`; a hung GPU may need a reset or reboot"
        )
    if plain.returncode != 0:
        msg = _first_line(plain.output) or f"exit code {plain.returncode}"
        data = {"path": plain.path, "returncode": plain.returncode, "output": plain.output.strip()[:500]}
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
        why = query.error or _first_line(query.output) or f"exit code {query.returncode}"
        return Check(
            "nvidia-smi", WARN, f"{head}; could not list GPUs: {why}", "update the NVIDIA driver (510 or newer)", data
        )
    ctx.smi_gpus = parse_gpu_query(query.output)
    data["gpus"] = [asdict(g) | {"native_bf16": g.native_bf16} for g in ctx.smi_gpus]
    if not ctx.smi_gpus:
        return Check(
            "nvidia-smi",
            WARN,
            f"{head}; no GPUs listed",
            "check that the GPUs are visible to this machine/container",
            data,
        )
    return Check("nvidia-smi", OK, f"{head}; {describe_gpus(ctx.smi_gpus)}", data=data)


def describe_gpus(gpus: list[Gpu]) -> str:
    """'4× NVIDIA A100-SXM4-80GB (81920 MiB, cc 8.0)', grouping identical GPUs."""
    groups: dict[tuple, int] = {}
    for g in gpus:
        key = (g.name, g.memory_mib, g.compute_capability)
        groups[key] = groups.get(key, 0) + 1
    parts = []
    for (name, mem, cc), n in groups.items():
        facts = ", ".join(x for x in (f"{mem} MiB" if mem else "", f"cc {cc}" if cc else "") if x)
        parts.append(f"{n}× {name}" + (f" ({facts})" if facts else ""))
    return "; ".join(parts)


def check_nvcc(ctx: _Context) -> Check:
    r = ctx.nvcc.result()
    if r.path is None:
        return Check("nvcc", OK, "not installed (not needed for pip torch wheels)", data={"version": None})
    if r.error or r.returncode != 0:
        return Check(
            "nvcc",
            WARN,
            f"{r.path}: {r.error or _first_line(r.output) or f'exit code {r.returncode}'}",
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


def check_torch(ctx: _Context) -> Check:
    try:
        import torch
    except Exception as e:  # noqa: BLE001 - ImportError, OSError from missing CUDA libraries, ...
        ctx.torch_error = f"{type(e).__name__}: {e}"
        return Check(
            "torch", FAIL, f"import failed: {ctx.torch_error}", "pip install 'torch>=2.4' (see README for CUDA wheels)"
        )
    ctx.torch = torch
    data = {"version": torch.__version__, "cuda": torch.version.cuda, "hip": getattr(torch.version, "hip", None)}
    if version_tuple(torch.__version__)[:2] < MIN_TORCH:
        return Check(
            "torch",
            FAIL,
            f"{torch.__version__} is too old (gptkit needs ≥ {'.'.join(map(str, MIN_TORCH))})",
            "pip install -U 'torch>=2.4'",
            data,
        )
    if torch.version.cuda is None:
        build = "ROCm build (HIP " + data["hip"] + ")" if data["hip"] else "CPU-only build"
        return Check("torch", OK, f"{torch.__version__}, {build}", data=data)
    status, why, fix = cuda_compat(torch.version.cuda, ctx.driver_cuda)
    detail = f"{torch.__version__}, built with CUDA {torch.version.cuda}"
    return Check("torch", status, f"{detail}; {why}" if why else detail, fix, data)


def check_cudnn(ctx: _Context) -> Check:
    torch = ctx.need_torch()
    if torch.version.cuda is None:
        return Check("cuDNN", OK, "not used (torch has no CUDA)", data={"version": None, "available": False})
    available = bool(torch.backends.cudnn.is_available())
    version = format_cudnn_version(torch.backends.cudnn.version()) if available else None
    data = {"version": version, "available": available}
    if not available:
        return Check(
            "cuDNN",
            WARN,
            "not usable by this CUDA torch build",
            "reinstall the CUDA torch wheel (it brings its own cuDNN via the nvidia-cudnn package)",
            data,
        )
    return Check("cuDNN", OK, f"{version}, usable", data=data)


def check_nccl(ctx: _Context) -> Check:
    torch = ctx.need_torch()
    import torch.distributed as dist

    available = dist.is_available() and dist.is_nccl_available()
    if not available:
        if torch.version.cuda is None:
            return Check(
                "NCCL", OK, "not in this torch build (no CUDA); multi-process runs use gloo", data={"version": None}
            )
        many = len(ctx.smi_gpus) > 1
        return Check(
            "NCCL",
            WARN if many else OK,
            "not available in this torch build",
            "multi-GPU training needs NCCL: use the Linux CUDA torch wheel" if many else "",
            {"version": None},
        )
    try:
        v = torch.cuda.nccl.version()
    except Exception as e:  # noqa: BLE001 - older torch / missing library
        return Check(
            "NCCL", WARN, f"available but its version is unreadable ({type(e).__name__}: {e})", "", {"version": None}
        )
    version = ".".join(map(str, v)) if isinstance(v, tuple) else str(v)
    return Check("NCCL", OK, version, data={"version": version})


def check_gpus(ctx: _Context) -> Check:
    torch = ctx.need_torch()
    from gptkit.device import native_bf16, resolve_precision

    smi_n = len(ctx.smi_gpus)
    count = torch.cuda.device_count() if torch.version.cuda or getattr(torch.version, "hip", None) else 0
    data: dict = {"count": count, "gpus": [], "nvidia_smi_count": smi_n}
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if count == 0:
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return Check("GPUs", OK, "Apple MPS (no CUDA)", data=data | {"mps": True})
        if smi_n == 0:
            return Check("GPUs", OK, "none visible to torch (training runs on CPU)", data=data)
        seen = f"nvidia-smi shows {smi_n} GPU{'s' * (smi_n > 1)} but torch sees none"
        if torch.version.cuda is None:
            return Check(
                "GPUs",
                FAIL,
                f"{seen}: torch {torch.__version__} is a CPU-only build",
                install_cuda_torch_hint(ctx.driver_cuda),
                data,
            )
        if visible is not None:
            return Check(
                "GPUs",
                FAIL,
                f"{seen}: CUDA_VISIBLE_DEVICES={visible!r}",
                "unset CUDA_VISIBLE_DEVICES or list GPU ids in it",
                data,
            )
        status, why, fix = cuda_compat(torch.version.cuda, ctx.driver_cuda)
        if why:
            return Check("GPUs", FAIL, f"{seen}: {why}", fix, data)
        try:
            torch.cuda.init()
            err = "torch.cuda.is_available() is False"
        except Exception as e:  # noqa: BLE001 - the CUDA init error is the useful part
            err = _first_line(str(e))
        return Check(
            "GPUs",
            FAIL,
            f"{seen}: {err}",
            "run `python -c 'import torch; torch.cuda.init()'` and fix the error it reports",
            data,
        )

    for i in range(count):
        dev = torch.device("cuda", i)
        major, minor = torch.cuda.get_device_capability(dev)
        props = torch.cuda.get_device_properties(dev)
        data["gpus"].append(
            {
                "index": i,
                "name": torch.cuda.get_device_name(dev),
                "memory_mib": props.total_memory // 2**20,
                "compute_capability": f"{major}.{minor}",
                "native_bf16": native_bf16(dev),
            }
        )
    precision = resolve_precision("auto", torch.device("cuda", 0))
    data["precision"] = precision.name
    names = ", ".join(
        f"{g['name']} (cc {g['compute_capability']}, bf16 {'yes' if g['native_bf16'] else 'no'})" for g in data["gpus"]
    )
    detail = f"{count}: {names}; auto precision → {precision.reason}"
    if smi_n > count and visible is None:
        return Check(
            "GPUs",
            WARN,
            f"{detail}; nvidia-smi shows {smi_n}",
            "check which GPUs are assigned to this process/container",
            data,
        )
    return Check("GPUs", OK, detail, data=data)


def check_cpu(ctx: _Context) -> Check:
    torch = ctx.need_torch()
    from gptkit.device import cpu_flags, cpu_has_native_bf16, resolve_precision

    cores = os.cpu_count() or 0
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    flags = cpu_flags()
    simd = [
        name
        for flag, name in (
            ("avx2", "AVX2"),
            ("avx512f", "AVX-512"),
            ("avx512_bf16", "AVX512-BF16"),
            ("amx_bf16", "AMX-BF16"),
        )
        if flag in flags
    ]
    precision = resolve_precision("auto", torch.device("cpu"))
    data = {
        "cores": cores,
        "usable_cores": usable,
        "simd": simd,
        "native_bf16": cpu_has_native_bf16(),
        "torch_threads": torch.get_num_threads(),
        "precision": precision.name,
    }
    isa = ", ".join(simd) if simd else ("flags unknown" if not flags else "no AVX2")
    bf16 = "native bf16" if data["native_bf16"] else "no native bf16"
    return Check("CPU", OK, f"{usable}/{cores} cores, {isa}, {bf16} → auto precision {precision.name}", data=data)


def check_attention(ctx: _Context) -> Check:
    torch = ctx.need_torch()
    import warnings

    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from gptkit.device import native_bf16, pick_device

    device = pick_device("auto")
    if device.type == "cuda":
        # The fused CUDA kernels only take half precision; use what training would use.
        dtype = torch.bfloat16 if native_bf16(device) else torch.float16
    else:
        dtype = torch.float32
    backends = {
        "flash": SDPBackend.FLASH_ATTENTION,
        "mem-efficient": SDPBackend.EFFICIENT_ATTENTION,
        "math": SDPBackend.MATH,
    }
    if device.type == "cuda" and hasattr(SDPBackend, "CUDNN_ATTENTION"):
        backends["cudnn"] = SDPBackend.CUDNN_ATTENTION
    q = torch.randn(1, 2, 64, 64, device=device, dtype=dtype)  # (B, nh, T, hs), as in the model
    runs, reasons = {}, {}
    for name, backend in backends.items():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                with sdpa_kernel(backend):
                    F.scaled_dot_product_attention(q, q, q, is_causal=True)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                runs[name] = True
            except Exception as e:  # noqa: BLE001 - "no viable backend" and friends
                runs[name] = False
                why = [str(w.message) for w in caught] or [str(e)]
                reasons[name] = _first_line(why[0])[:200]
    data = {"device": str(device), "dtype": str(dtype).replace("torch.", ""), "runs": runs, "reasons": reasons}
    listing = ", ".join(f"{n} {'✓' if ok else '✗'}" for n, ok in runs.items())
    detail = f"{listing} ({device.type}, {data['dtype']})"
    if device.type == "cpu" and not runs["mem-efficient"]:
        detail += "; mem-efficient is CUDA-only"
    if not runs["math"] and not any(runs.values()):
        return Check(
            "attention",
            FAIL,
            f"{detail}: no attention backend runs",
            "reinstall torch; SDPA must run for any model",
            data,
        )
    fused = any(ok for n, ok in runs.items() if n != "math")
    if not fused:
        fix = (
            "flash needs compute capability ≥ 8.0 and mem-efficient ≥ 5.0; upgrade torch if your GPU qualifies"
            if device.type == "cuda"
            else "upgrade torch (≥ 2.3 has the CPU flash kernel)"
        )
        return Check("attention", WARN, f"{detail}: only the slow math kernel runs", fix, data)
    if device.type == "cuda" and native_bf16(device) and not runs["flash"]:
        return Check(
            "attention",
            WARN,
            f"{detail}: FlashAttention should run on this GPU",
            "upgrade torch to a current CUDA wheel",
            data,
        )
    return Check("attention", OK, detail, data=data)


def check_torchrun(ctx: _Context) -> Check:
    ctx.need_torch()
    import importlib.util

    import torch.distributed as dist

    launcher = importlib.util.find_spec("torch.distributed.run") is not None
    available = dist.is_available()
    backends = [
        b
        for b, ok in (
            ("gloo", available and dist.is_gloo_available()),
            ("nccl", available and dist.is_nccl_available()),
        )
        if ok
    ]
    script = shutil.which("torchrun")
    data = {"launcher": launcher, "distributed": available, "backends": backends, "torchrun_path": script}
    if not (launcher and available):
        return Check(
            "torchrun",
            WARN,
            "torch.distributed is not available in this torch build: single process only",
            "for multi-GPU training install the Linux CUDA torch wheel",
            data,
        )
    where = f"torchrun at {script}" if script else "python -m torch.distributed.run"
    return Check("torchrun", OK, f"{where}; backends: {', '.join(backends) or 'none'}", data=data)


def check_endpoint(ctx: _Context) -> Check:
    from gptkit.hub.endpoint import MIRROR_ENDPOINT, is_official

    data = {"endpoint": ctx.endpoint, "source": ctx.endpoint_source}
    head = f"{ctx.endpoint} (from {ctx.endpoint_source})"
    if ctx.probe is None:
        return Check("HF endpoint", OK, f"{head}; not contacted (HF_HUB_OFFLINE=1)", data=data | {"offline": True})
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


def check_vocab(ctx: _Context) -> Check:
    from gptkit.data.tokenizers import gpt2_vocab_offline

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


def check_disk(ctx: _Context) -> Check:
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


CHECKS: tuple[tuple[str, Callable[[_Context], Check]], ...] = (
    ("nvidia-smi", check_nvidia_smi),
    ("nvcc", check_nvcc),
    ("torch", check_torch),
    ("cuDNN", check_cudnn),
    ("NCCL", check_nccl),
    ("GPUs", check_gpus),
    ("CPU", check_cpu),
    ("attention", check_attention),
    ("torchrun", check_torchrun),
    ("HF endpoint", check_endpoint),
    ("GPT-2 vocab", check_vocab),
    ("disk", check_disk),
)


def _safe(name: str, fn: Callable[[_Context], Check], ctx: _Context) -> Check:
    start = time.perf_counter()
    try:
        check = fn(ctx)
    except _Skip as e:
        check = Check(name, WARN, str(e), "fix the torch row first")
    except Exception as e:  # noqa: BLE001 - doctor must report, never crash
        check = Check(
            name,
            FAIL,
            f"check crashed: {type(e).__name__}: {_first_line(str(e))}",
            "please report this with the output of `gptkit doctor --json`",
        )
    check.seconds = round(time.perf_counter() - start, 3)
    return check


def run_checks(endpoint: str, endpoint_source: str, data_dir: Path, timeout: float = 3.0) -> list[Check]:
    """Run every check. Tools and the network probe start first and run while torch imports."""
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    smi = shutil.which("nvidia-smi")
    ctx = _Context(
        smi_plain=_Tool(smi, (), TOOL_TIMEOUT),
        smi_query=_Tool(smi, SMI_QUERY_ARGS, TOOL_TIMEOUT),
        nvcc=_Tool(find_nvcc(), ("--version",), TOOL_TIMEOUT),
        probe=None if offline else _EndpointProbe(endpoint, timeout),
        endpoint=endpoint,
        endpoint_source=endpoint_source,
        data_dir=Path(data_dir),
    )
    checks = [_safe(name, fn, ctx) for name, fn in CHECKS]
    for tool in (ctx.smi_plain, ctx.smi_query, ctx.nvcc):
        tool.result()  # reap the ones an early return left running
    return checks


def stdout_can_encode(text: str) -> bool:
    try:
        text.encode(sys.stdout.encoding or "ascii")
        return True
    except (UnicodeEncodeError, LookupError):
        return False
