"""Model FLOPs utilisation: achieved training FLOPs over the hardware's peak, never above 100%.

GPUs: dense (no sparsity) peak TFLOP/s from the vendors' data sheets, per precision.

CPUs: no useful data sheet number, so the matmul rate is measured (about 1 s) in the precision
training actually runs: a bf16 matmul where the CPU runs bf16 natively and training autocasts to it
(gptkit.device's policy), fp32 otherwise. A bf16 matmul on an AVX512-BF16 CPU is several times
faster than fp32, so an fp32 peak would make a bf16 run read far above 100%. The result is cached
under $GPTKIT_HOME per CPU flags, cores, threads, torch version and precision (the model name alone,
e.g. "AMD EPYC", is the same across generations). A peak measured on a busy machine is too low:
when a reading exceeds 100% the peak is measured again (the better of the two is kept), and only a
reading still above 100% after that is clamped, with a note saying so.
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from importlib import metadata
from typing import NamedTuple

from gptkit import paths
from gptkit.fsutil import write_json_atomic

# (name fragment, {precision: dense peak TFLOP/s}), from NVIDIA's data sheets (dense = half the "with
# sparsity" figure). A fragment matches whole words of torch.cuda.get_device_name() ("H200" is not in
# "NVIDIA GH200 480GB", "A40" not in "NVIDIA RTX A4000"); the first match wins, so the more specific
# names (NVL, PCIe) come before their family's.
GPU_PEAK_TFLOPS: list[tuple[str, dict[str, float]]] = [
    ("H100 NVL", {"bf16": 835.0, "fp16": 835.0, "tf32": 417.5, "fp32": 60.0}),
    ("H100 PCIe", {"bf16": 756.0, "fp16": 756.0, "tf32": 378.0, "fp32": 51.2}),
    ("H100", {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9}),  # SXM
    ("H800 PCIe", {"bf16": 756.0, "fp16": 756.0, "tf32": 378.0, "fp32": 51.2}),  # H800 data sheet (PCIe)
    ("H800", {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9}),  # H800 data sheet (SXM)
    ("H200 NVL", {"bf16": 835.5, "fp16": 835.5, "tf32": 417.5, "fp32": 60.0}),  # H200 data sheet, NVL: 1,671 sparse
    ("H200", {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9}),  # H200 data sheet, SXM: 1,979 sparse
    ("GH200", {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9}),  # GH200 data sheet: 1,979 sparse
    ("GB200", {"bf16": 2500.0, "fp16": 2500.0, "tf32": 1250.0, "fp32": 80.0}),  # GB200 NVL72 data sheet, per GPU
    ("B200", {"bf16": 2250.0, "fp16": 2250.0, "tf32": 1100.0, "fp32": 75.0}),  # HGX B200 data sheet: 4.5 PF sparse
    ("A100", {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5}),
    ("A10G", {"bf16": 70.0, "fp16": 70.0, "tf32": 35.0, "fp32": 31.2}),
    ("A10", {"bf16": 125.0, "fp16": 125.0, "tf32": 62.5, "fp32": 31.2}),
    ("A40", {"bf16": 149.7, "fp16": 149.7, "tf32": 74.8, "fp32": 37.4}),  # A40 data sheet: 299.4 sparse
    ("RTX A6000", {"bf16": 154.8, "fp16": 154.8, "tf32": 77.4, "fp32": 38.7}),  # RTX A6000 data sheet: 309.7 sparse
    ("L40S", {"bf16": 362.1, "fp16": 362.1, "tf32": 183.0, "fp32": 91.6}),
    ("L40", {"bf16": 181.0, "fp16": 181.0, "tf32": 90.5, "fp32": 90.5}),
    ("L4", {"bf16": 121.0, "fp16": 121.0, "tf32": 60.0, "fp32": 30.3}),
    # RTX Blackwell whitepaper, RTX 5090: FP16/BF16 with FP32 accumulate (what autocast runs) 419 sparse
    ("RTX 5090", {"bf16": 209.5, "fp16": 209.5, "tf32": 104.8, "fp32": 104.8}),
    ("RTX 4090", {"bf16": 165.2, "fp16": 165.2, "tf32": 82.6, "fp32": 82.6}),
    ("RTX 3090", {"bf16": 71.0, "fp16": 71.0, "tf32": 35.6, "fp32": 35.6}),
    ("V100", {"fp16": 125.0, "fp32": 15.7}),  # Volta: no bf16, no tf32
    ("T4", {"fp16": 65.0, "fp32": 8.1}),
]

CACHE_FILE = "cpu_peak.json"
CACHE_VERSION = 2
MEASURE_SECONDS = 1.0
MIN_MATMUL_SECONDS = 0.004  # one timed matmul at least this long: timer and dispatch overhead vanish
MAX_N = 4096


def gpu_peak_flops(device_name: str, precision: str) -> float | None:
    """Peak FLOP/s of one GPU for 'bf16' | 'fp16' | 'tf32' | 'fp32', or None if unknown."""
    row = gpu_peak_row(device_name)
    tf = row[1].get(precision) if row else None
    return tf * 1e12 if tf else None


def gpu_peak_row(device_name: str) -> tuple[str, dict[str, float]] | None:
    """The row of GPU_PEAK_TFLOPS whose name fragment is the first one found, as whole words, in
    `device_name` (a torch.cuda.get_device_name() string); None for a GPU the table lacks."""
    for fragment, table in GPU_PEAK_TFLOPS:
        if re.search(rf"(?<![a-z0-9]){re.escape(fragment.lower())}(?![a-z0-9])", device_name.lower()):
            return fragment, table
    return None


# --- CPU: measured ---------------------------------------------------------------------------------


def cpu_matmul_precision(training_precision: str) -> str:
    """The matmul precision a CPU training step runs in: bf16 under bf16 autocast, else fp32."""
    return "bf16" if training_precision == "bf16" else "fp32"


def usable_cores() -> int:
    """Cores this process may run on (a container's CPU set, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def threads_per_process(nproc: int) -> int:
    """Threads each of `nproc` CPU workers on a node runs: OMP_NUM_THREADS where the user set it,
    else an equal slice of the usable cores (torchrun alone would give each 1)."""
    given = os.environ.get("OMP_NUM_THREADS", "").strip()
    if given.isdigit() and int(given) > 0:
        return int(given)
    return max(1, usable_cores() // max(1, nproc))


def measure_cpu_peak_flops(
    precision: str = "fp32", threads: int | None = None, n: int | None = None, seconds: float = MEASURE_SECONDS
) -> float:
    """The best square-matmul rate (FLOP/s) of this CPU in `precision` ('fp32' | 'bf16') with `threads`.

    Best of many single timed matmuls: on a shared machine the best one is the closest to the
    hardware's ceiling. n=None sizes the matrices until one matmul takes MIN_MATMUL_SECONDS (bf16
    needs larger ones than fp32 for the same time, and so do many cores).
    """
    return _measure(precision, threads, n, seconds)[0]


def _measure(precision: str, threads: int | None, n: int | None, seconds: float) -> tuple[float, int]:
    """(best FLOP/s, matrix size used)."""
    import torch

    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    old = torch.get_num_threads()
    torch.set_num_threads(threads or usable_cores())
    deadline = time.perf_counter() + seconds
    try:
        size = n or 512
        while True:
            a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
            c = torch.empty(size, size, dtype=dtype)
            torch.mm(a, b, out=c)  # warm up the thread pool, caches and the kernel choice
            t = time.perf_counter()
            torch.mm(a, b, out=c)
            one = time.perf_counter() - t
            if n or one >= MIN_MATMUL_SECONDS or size >= MAX_N:
                break
            size *= 2
        best, tries = 2 * size**3 / one, 1
        while tries < 3 or time.perf_counter() < deadline:
            t = time.perf_counter()
            torch.mm(a, b, out=c)
            best = max(best, 2 * size**3 / (time.perf_counter() - t))
            tries += 1
        return best, size
    finally:
        torch.set_num_threads(old)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _torch_version() -> str:
    try:
        return metadata.version("torch")  # no torch import: doctor and `--help` stay fast
    except metadata.PackageNotFoundError:
        return "unknown"


def cache_key(precision: str, threads: int | None = None) -> str:
    """What makes a measured peak valid: the CPU's features (not its marketing name), cores, threads,
    torch (its BLAS and oneDNN) and the precision."""
    from gptkit.device import cpu_flags

    flags = hashlib.sha256(" ".join(sorted(cpu_flags())).encode()).hexdigest()[:16]
    return (
        f"{precision}|flags {flags}|cores {os.cpu_count()}|threads {threads or usable_cores()}"
        f"|torch {_torch_version()}|{platform.machine()}"
    )


def _read_cache() -> dict[str, dict]:
    import json

    try:
        data = json.loads((paths.home() / CACHE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION or not isinstance(data.get("entries"), dict):
        return {}  # an older layout (keyed by CPU model name): measure again
    return {k: v for k, v in data["entries"].items() if isinstance(v, dict) and v.get("flops", 0) > 0}


def cpu_peak_flops(precision: str = "fp32", *, remeasure: bool = False) -> float:
    """The CPU matmul peak (FLOP/s, all usable cores) for `precision`, measured once and cached.

    remeasure: measure again now and keep the better of the cached and the new figure (a cached
    figure that a training step beat was measured while something else was using the cores).
    """
    precision = cpu_matmul_precision(precision)
    key = cache_key(precision)
    entries = _read_cache()
    old = entries.get(key)
    if old is not None and not remeasure:
        return float(old["flops"])
    flops, n = _measure(precision, None, None, MEASURE_SECONDS)
    if old is not None and float(old["flops"]) > flops:
        flops, n = float(old["flops"]), int(old.get("n", n))
    entries[key] = {
        "flops": flops,
        "precision": precision,
        "n": n,
        "cpu": cpu_model(),
        "threads": usable_cores(),
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "remeasured": remeasure or bool(old and old.get("remeasured")),
    }
    home = paths.home()
    home.mkdir(parents=True, exist_ok=True)
    write_json_atomic(home / CACHE_FILE, {"version": CACHE_VERSION, "entries": entries})
    return flops


class PeakInfo(NamedTuple):
    precision: str  # the matmul precision the peak is for
    flops: float | None  # None: not known (not measured yet, or a GPU missing from the table)
    source: str  # where the figure comes from, for a human


def cached_peak(device_type: str = "cpu") -> PeakInfo:
    """The peak `gptkit train --precision auto` would use on this machine, without measuring anything
    (for `gptkit doctor`): the cached CPU figure, or the data sheet figure of CUDA device 0."""
    if device_type == "cuda":
        import torch

        from gptkit.device import cuda_has_native_bf16

        name = torch.cuda.get_device_name()
        prec = "bf16" if cuda_has_native_bf16() else "fp32"
        flops = gpu_peak_flops(name, prec)
        return PeakInfo(prec, flops, f"data sheet, {name}" if flops else f"{name} is not in the peak table")
    from gptkit.device import cpu_has_native_bf16

    prec = "bf16" if cpu_has_native_bf16() else "fp32"
    entry = _read_cache().get(cache_key(prec))
    if entry is None:
        return PeakInfo(prec, None, "not measured yet (the first `gptkit train` on this CPU measures it, ~1 s)")
    how = "re-measured" if entry.get("remeasured") else "measured"
    return PeakInfo(
        prec, float(entry["flops"]), f"{how} {entry.get('measured_at', '?')}, {entry.get('threads')} threads"
    )


def peak_flops(device_type: str, precision: str, tf32: bool, *, world_size: int, nodes: int) -> float | None:
    """The peak of the whole job: per-GPU peak times the GPUs, or the CPU peak times the nodes.

    CPU processes on one node share its cores, so their peak is the node's, not per process.
    """
    if device_type == "cuda":
        import torch

        mode = precision if precision in ("bf16", "fp16") else ("tf32" if tf32 else "fp32")
        one = gpu_peak_flops(torch.cuda.get_device_name(), mode)
        return one * world_size if one else None
    if device_type == "cpu":
        return cpu_peak_flops(precision) * nodes
    return None


# --- readings --------------------------------------------------------------------------------------


class MfuMeter:
    """MFU readings of one run: flops_per_token x tokens/s over the peak.

    A reading above 1 means the peak is wrong. The first time, the peak is measured again (CPU);
    if a reading is still above 1, it is reported as 1.0. Both are noted in `notes` (take_notes),
    which the trainer writes to metrics.jsonl.
    """

    def __init__(self, flops_per_token: float, peak: float | None, remeasure: Callable[[], float | None] | None = None):
        self.flops_per_token = flops_per_token
        self.peak = peak
        self._remeasure = remeasure
        self.remeasured = False
        self.clamped = 0  # readings reported as 1.0
        self._notes: list[str] = []

    def raw(self, tok_per_s: float) -> float | None:
        return self.flops_per_token * tok_per_s / self.peak if self.peak else None

    def reading(self, tok_per_s: float) -> float | None:
        m = self.raw(tok_per_s)
        if m is None or m <= 1.0:
            return m
        if not self.remeasured and self._remeasure is not None:
            self.remeasured = True
            old = self.peak
            new = self._remeasure()
            if new and old and new > old:
                self.peak = new
            self._notes.append(
                f"MFU read {m:.0%}: peak re-measured, {(old or 0) / 1e9:.0f} -> {(self.peak or 0) / 1e9:.0f} GFLOP/s"
            )
            m = self.raw(tok_per_s)
            if m is None or m <= 1.0:
                return m
        if not self.clamped:
            after = " even after re-measuring the peak" if self.remeasured else ""
            self._notes.append(f"MFU read {m:.0%}{after}; readings above 100% are reported as 100%")
        self.clamped += 1
        return 1.0

    def take_notes(self) -> list[str]:
        notes, self._notes = self._notes, []
        return notes


def meter_for_run(
    flops_per_token: float, device_type: str, precision: str, tf32: bool, *, world_size: int, nodes: int
) -> MfuMeter:
    """The meter a training run uses: the job's peak, re-measurable on CPU."""
    peak = peak_flops(device_type, precision, tf32, world_size=world_size, nodes=nodes)
    remeasure = partial(_remeasured_cpu_peak, precision, nodes) if device_type == "cpu" else None
    return MfuMeter(flops_per_token, peak, remeasure)


def _remeasured_cpu_peak(precision: str, nodes: int) -> float:
    return cpu_peak_flops(precision, remeasure=True) * nodes
