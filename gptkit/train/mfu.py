"""Model FLOPs utilisation: achieved training FLOPs over the hardware's peak.

GPUs: dense (no sparsity) peak TFLOP/s from the vendors' data sheets, per precision. CPU: there is
no useful data sheet number, so the fp32 matmul rate is measured once and cached under
$GPTKIT_HOME (a few seconds; it is the ceiling any training step on this machine can reach).
"""

from __future__ import annotations

import json
import os
import platform
import time

from gptkit import paths

# (name fragment, {precision: dense peak TFLOP/s}); the first fragment found in the device name wins,
# so the more specific names come first.
GPU_PEAK_TFLOPS: list[tuple[str, dict[str, float]]] = [
    ("H100 NVL", {"bf16": 835.0, "fp16": 835.0, "tf32": 417.5, "fp32": 60.0}),
    ("H100 PCIe", {"bf16": 756.0, "fp16": 756.0, "tf32": 378.0, "fp32": 51.2}),
    ("H100", {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9}),  # SXM
    ("H200", {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9}),
    ("GH200", {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9}),
    ("A100", {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5}),
    ("A10G", {"bf16": 70.0, "fp16": 70.0, "tf32": 35.0, "fp32": 31.2}),
    ("A10", {"bf16": 125.0, "fp16": 125.0, "tf32": 62.5, "fp32": 31.2}),
    ("L40S", {"bf16": 362.1, "fp16": 362.1, "tf32": 183.0, "fp32": 91.6}),
    ("L40", {"bf16": 181.0, "fp16": 181.0, "tf32": 90.5, "fp32": 90.5}),
    ("L4", {"bf16": 121.0, "fp16": 121.0, "tf32": 60.0, "fp32": 30.3}),
    ("RTX 4090", {"bf16": 165.2, "fp16": 165.2, "tf32": 82.6, "fp32": 82.6}),
    ("RTX 3090", {"bf16": 71.0, "fp16": 71.0, "tf32": 35.6, "fp32": 35.6}),
    ("V100", {"fp16": 125.0, "fp32": 15.7}),  # Volta: no bf16, no tf32
    ("T4", {"fp16": 65.0, "fp32": 8.1}),
]


def gpu_peak_flops(device_name: str, precision: str) -> float | None:
    """Peak FLOP/s of one GPU for 'bf16' | 'fp16' | 'tf32' | 'fp32', or None if unknown."""
    for fragment, table in GPU_PEAK_TFLOPS:
        if fragment.lower() in device_name.lower():
            tf = table.get(precision)
            return tf * 1e12 if tf else None
    return None


def measure_cpu_peak_flops(threads: int | None = None, n: int = 1024, seconds: float = 1.0) -> float:
    """The best fp32 matmul rate of this CPU (FLOP/s) with `threads` threads (default: all cores)."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(threads or os.cpu_count() or 1)
    try:
        a, b = torch.randn(n, n), torch.randn(n, n)
        c = torch.empty(n, n)
        for _ in range(3):  # warm up the BLAS thread pool and caches
            torch.mm(a, b, out=c)
        best = 0.0
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            t = time.perf_counter()
            for _ in range(4):
                torch.mm(a, b, out=c)
            best = max(best, 4 * 2 * n**3 / (time.perf_counter() - t))
        return best
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


def cpu_peak_flops() -> float:
    """The measured fp32 matmul peak of this machine (all cores), cached per CPU model and core count."""
    import torch

    key = f"{cpu_model()}|{os.cpu_count()}|torch {torch.__version__}"
    cache = paths.home() / "cpu_peak.json"
    try:
        data = json.loads(cache.read_text())
        if data.get("key") == key and data.get("flops", 0) > 0:
            return float(data["flops"])
    except (OSError, ValueError):
        pass
    flops = measure_cpu_peak_flops()
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(f".{cache.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps({"key": key, "flops": flops}))
    os.replace(tmp, cache)
    return flops


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
        return cpu_peak_flops() * nodes
    return None
