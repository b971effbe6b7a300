"""The precision policy: bf16 only where the hardware runs it natively."""

import pytest
import torch

from gptkit import device as dev
from gptkit.errors import GptkitError


def test_this_cpu_gets_the_policy_its_flags_imply():
    p = dev.resolve_precision("auto", torch.device("cpu"))
    expected = "bf16" if dev.cpu_has_native_bf16() else "fp32"
    assert p.name == expected
    if expected == "fp32":
        assert p.autocast_dtype is None and not p.use_grad_scaler


def test_cpu_with_amx_or_avx512_bf16_autocasts(monkeypatch):
    for flag in ("avx512_bf16", "amx_bf16"):
        monkeypatch.setattr(dev, "cpu_flags", lambda flag=flag: frozenset({"avx2", flag}))
        p = dev.resolve_precision("auto", torch.device("cpu"))
        assert p.name == "bf16" and p.autocast_dtype is torch.bfloat16


def test_avx2_only_cpu_never_autocasts_bf16(monkeypatch):
    monkeypatch.setattr(dev, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    assert dev.resolve_precision("auto", torch.device("cpu")).name == "fp32"
    with pytest.raises(GptkitError, match="no native bf16"):
        dev.resolve_precision("bf16", torch.device("cpu"))


@pytest.mark.parametrize("cc,expected", [((7, 0), "fp32"), ((7, 5), "fp32"), ((8, 0), "bf16"), ((9, 0), "bf16")])
def test_cuda_policy_by_compute_capability(monkeypatch, cc, expected):
    # No GPU here: stand in for torch.cuda's two answers the policy depends on.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: cc)
    assert dev.resolve_precision("auto", torch.device("cuda")).name == expected
    p16 = dev.resolve_precision("fp16", torch.device("cuda"))
    assert p16.use_grad_scaler and p16.autocast_dtype is torch.float16


def test_fp16_needs_cuda_and_unknown_precision():
    with pytest.raises(GptkitError, match="fp16 needs a CUDA GPU"):
        dev.resolve_precision("fp16", torch.device("cpu"))
    with pytest.raises(GptkitError, match="unknown precision"):
        dev.resolve_precision("fp8", torch.device("cpu"))


def test_autocast_context_is_noop_for_fp32():
    p = dev.resolve_precision("fp32", torch.device("cpu"))
    with p.autocast():
        y = torch.ones(2, 2) @ torch.ones(2, 2)
    assert y.dtype is torch.float32


def test_pick_device():
    assert dev.pick_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(GptkitError, match="no CUDA GPU"):
            dev.pick_device("cuda")
