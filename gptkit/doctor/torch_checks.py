"""The checks that need torch: its build against the driver, cuDNN, NCCL, GPUs, CPU, attention kernels
and torchrun. torch comes from `Context.need_torch()`; a check that cannot get it is skipped.

The bf16 rule and the precision policy are gptkit.device's; these checks only report them.
"""

from __future__ import annotations

import os
import shutil

from gptkit.doctor.checks import FAIL, OK, WARN, Check, Context
from gptkit.doctor.probes import first_line, format_cudnn_version, version_tuple

# CUDA variants of the official torch wheels (download.pytorch.org/whl/<tag>).
TORCH_WHEEL_CUDA = ("11.8", "12.1", "12.4", "12.6", "12.8", "12.9", "13.0")
MIN_TORCH = (2, 4)


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


def check_torch(ctx: Context) -> Check:
    if ctx.torch is None:
        return Check(
            "torch", FAIL, f"import failed: {ctx.torch_error}", "pip install 'torch>=2.4' (see README for CUDA wheels)"
        )
    torch = ctx.torch
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


def check_cudnn(ctx: Context) -> Check:
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


def check_nccl(ctx: Context) -> Check:
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
    except Exception as e:  # older torch, or a missing library: the version is only informative
        return Check(
            "NCCL", WARN, f"available but its version is unreadable ({type(e).__name__}: {e})", "", {"version": None}
        )
    version = ".".join(map(str, v)) if isinstance(v, tuple) else str(v)
    return Check("NCCL", OK, version, data={"version": version})


def check_gpus(ctx: Context) -> Check:
    torch = ctx.need_torch()
    from gptkit.device import native_bf16, resolve_precision

    smi_n = len(ctx.smi_gpus)
    count = torch.cuda.device_count() if torch.version.cuda or getattr(torch.version, "hip", None) else 0
    data: dict = {"count": count, "gpus": [], "nvidia_smi_count": smi_n}
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if ctx.gpus and count < ctx.gpus:
        return Check(
            "GPUs",
            FAIL,
            f"--gpus {ctx.gpus} asked for, torch sees {count}"
            + (f" (nvidia-smi shows {smi_n})" if smi_n != count else ""),
            "check the driver and CUDA_VISIBLE_DEVICES, or ask for fewer",
            data,
        )
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
        except Exception as e:  # whatever CUDA init raises is the useful part of the report
            err = first_line(str(e))
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


def check_cpu(ctx: Context) -> Check:
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
    # The peak `gptkit train` divides by for MFU (a GPU's when training would run on one); never measured here.
    from gptkit.train.mfu import cached_peak

    where = "cuda" if torch.cuda.is_available() else "cpu"
    peak = cached_peak(where)
    data["mfu_peak"] = {"device": where, "precision": peak.precision, "flops": peak.flops, "source": peak.source}
    if peak.flops:
        unit, div = ("TFLOP/s", 1e12) if peak.flops >= 1e12 else ("GFLOP/s", 1e9)
        mfu = f"MFU peak {peak.flops / div:.0f} {unit} {peak.precision} ({peak.source})"
    else:
        mfu = f"MFU peak: {peak.source}"
    detail = f"{usable}/{cores} cores, {isa}, {bf16} → auto precision {precision.name}; {mfu}"
    return Check("CPU", OK, detail, data=data)


def check_attention(ctx: Context) -> Check:
    torch = ctx.need_torch()
    import warnings

    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from gptkit.device import native_bf16, pick_device, resolve_precision

    device = pick_device("auto")
    if device.type == "cuda":
        # The fused CUDA kernels only take half precision: bf16 where training autocasts to it, else fp16.
        dtype = resolve_precision("auto", device).autocast_dtype or torch.float16
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
            except Exception as e:  # "no viable backend" and friends: a kernel that does not run
                runs[name] = False
                why = [str(w.message) for w in caught] or [str(e)]
                reasons[name] = first_line(why[0])[:200]
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


def check_torchrun(ctx: Context) -> Check:
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
