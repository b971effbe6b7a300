"""Device choice and the one precision policy every command uses.

Policy (`--precision auto`):
- bf16 autocast only where the hardware runs bf16 natively: CUDA compute capability >= 8.0
  (Ampere and newer), or a CPU with AVX512-BF16 or AMX. On an AVX2-only CPU a bf16 matmul is
  emulated and runs tens of times slower than fp32, so autocasting there would be a bug.
- TF32 matmuls on Ampere and newer (same condition as bf16 on CUDA).
- fp16 with a GradScaler only when asked for (`--precision fp16`), for pre-Ampere GPUs.
- fp32 otherwise.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from pathlib import Path

import torch

from gptkit.errors import GptkitError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def pick_device(requested: str = "auto", *, allow_mps: bool = True) -> torch.device:
    """'auto' -> cuda if present, else mps (unless `allow_mps` is False), else cpu. An explicit
    device must exist. The one device choice: sampling, doctor and training all come here."""
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if allow_mps and getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(requested)
    except RuntimeError as e:
        raise GptkitError(f"unknown device {requested!r}: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise GptkitError(f"device {requested!r} requested but torch sees no CUDA GPU (run `gptkit doctor`)")
    return dev


@functools.cache
def cpu_flags() -> frozenset[str]:
    """CPU feature flags from /proc/cpuinfo (empty where there is none, e.g. macOS)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_native_bf16() -> bool:
    flags = cpu_flags()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def compute_capability_has_bf16(major: int) -> bool:
    """bf16 tensor cores arrived with compute capability 8.0 (Ampere)."""
    return major >= 8


def cuda_has_native_bf16(device: torch.device | None = None) -> bool:
    if not torch.cuda.is_available():
        return False
    major, _ = torch.cuda.get_device_capability(device)
    return compute_capability_has_bf16(major)


def native_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        return cuda_has_native_bf16(device)
    if device.type == "cpu":
        return cpu_has_native_bf16()
    return False


@dataclass(frozen=True)
class Precision:
    """What a command should do for one device: the autocast dtype (None = fp32) and scaler."""

    name: str  # fp32 | bf16 | fp16
    device_type: str
    reason: str

    @property
    def autocast_dtype(self):
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.name)

    @property
    def use_grad_scaler(self) -> bool:
        return self.name == "fp16"

    def autocast(self):
        """A context manager for the forward pass: autocast for bf16/fp16, nothing for fp32."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.autocast_dtype)


def resolve_precision(requested: str, device: torch.device) -> Precision:
    """Apply the policy. Explicit requests that cannot work are refused rather than silently slow."""
    return precision_policy(requested, device.type, native_bf16(device))


def precision_policy(requested: str, device_type: str, native: bool) -> Precision:
    """The policy itself, for a device that may not be this machine's (`train --plan --gpu-type`):
    `native` says whether it runs bf16 natively (CUDA compute capability >= 8.0, AVX512-BF16/AMX)."""
    if requested not in PRECISIONS:
        raise GptkitError(f"unknown precision {requested!r}; choose one of: {', '.join(PRECISIONS)}")
    if requested == "auto":
        if native:
            why = "CUDA compute capability >= 8.0" if device_type == "cuda" else "CPU has AVX512-BF16/AMX"
            return Precision("bf16", device_type, f"bf16 autocast ({why})")
        return Precision("fp32", device_type, "fp32 (no native bf16 on this device)")
    if requested == "bf16" and not native:
        raise GptkitError(
            f"--precision bf16: {device_type} here has no native bf16 and would run many times slower; "
            "use --precision auto (fp32 here) or fp16 on an older GPU"
        )
    if requested == "fp16" and device_type != "cuda":
        raise GptkitError("--precision fp16 needs a CUDA GPU (it is meant for pre-Ampere GPUs); use auto")
    return Precision(requested, device_type, f"{requested} (requested)")


def configure_matmul(device: torch.device) -> None:
    """TF32 for fp32 matmuls and convolutions on Ampere and newer; exact fp32 elsewhere."""
    if device.type == "cuda" and cuda_has_native_bf16(device):
        # Same hardware condition as bf16: TF32 tensor cores arrived with Ampere (sm_80).
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
