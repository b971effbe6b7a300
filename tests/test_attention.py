"""The causal attention kernels: bf16 matmul attention on CPU for short sequences, SDPA otherwise."""

import pytest
import torch
import torch.nn.functional as F

from gptkit.attention import (
    MATMUL_MAX_T,
    MatmulCausalAttention,
    cached_attention,
    causal_attention,
    use_matmul_attention,
)


def qkv(B=3, H=2, T=40, D=16, dtype=torch.bfloat16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, T, D, generator=g).to(dtype).requires_grad_() for _ in range(3)]


def reference(q, k, v):
    """Causal attention in fp64, written out."""
    q, k, v = (t.detach().double().requires_grad_() for t in (q, k, v))
    s = (q @ k.transpose(-2, -1)) / q.size(-1) ** 0.5
    s = s.masked_fill(torch.ones(s.shape[-2:], dtype=torch.bool).triu(1), float("-inf"))
    return s.softmax(-1) @ v, (q, k, v)


def test_matmul_attention_matches_the_reference_forward_and_backward():
    q, k, v = qkv()
    out = MatmulCausalAttention.apply(q, k, v)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    out.backward(grad)
    want, leaves = reference(q, k, v)
    want.backward(grad.double())
    # bf16 has 8 bits of mantissa: errors of a few 1e-2 on values of order 1 are its rounding
    assert (out.double() - want).abs().max() < 3e-2
    for got, ref in zip((q.grad, k.grad, v.grad), (t.grad for t in leaves), strict=True):
        assert (got.double() - ref).abs().max() < 6e-2 * max(1.0, ref.abs().max().item())
    # and no worse than PyTorch's own bf16 kernel on the same inputs
    q2, k2, v2 = (t.detach().clone().requires_grad_() for t in (q, k, v))
    theirs = F.scaled_dot_product_attention(q2, k2, v2, is_causal=True)
    assert (out.double() - want).abs().max() <= 2 * (theirs.double() - want).abs().max() + 1e-2


def test_the_first_position_sees_only_itself_and_the_future_never_leaks():
    q, k, v = qkv(T=8)
    out = MatmulCausalAttention.apply(q, k, v)
    assert torch.equal(out[:, :, 0], v[:, :, 0])  # softmax over one score is exactly 1
    k2, v2 = k.detach().clone(), v.detach().clone()
    k2[:, :, 5:] += 3.0
    v2[:, :, 5:] -= 3.0
    assert torch.equal(MatmulCausalAttention.apply(q, k2, v2)[:, :, :5], out[:, :, :5])


@pytest.mark.parametrize(
    "dtype, T, dropout, device, expected",
    [
        (torch.bfloat16, 256, 0.0, "cpu", True),
        (torch.bfloat16, MATMUL_MAX_T, 0.0, "cpu", True),
        (torch.bfloat16, MATMUL_MAX_T + 1, 0.0, "cpu", False),  # the flash kernel is faster, P grows as T^2
        (torch.float32, 256, 0.0, "cpu", False),  # no faster in fp32
        (torch.bfloat16, 256, 0.1, "cpu", False),  # dropout stays with SDPA
        (torch.bfloat16, 256, 0.0, "meta", False),  # any other device (CUDA) keeps its fused kernel
    ],
)
def test_which_kernel(dtype, T, dropout, device, expected):
    q = torch.empty(1, 1, T, 8, dtype=dtype, device=device)
    assert use_matmul_attention(q, dropout) is expected


def test_fp32_takes_sdpa_unchanged():
    q, k, v = qkv(dtype=torch.float32)
    assert torch.equal(causal_attention(q, k, v), F.scaled_dot_product_attention(q, k, v, is_causal=True))


def decode_reference(q, k, v, mask=None):
    """One or more new queries against every cached key (or those `mask` allows), in fp64."""
    s = (q.double() @ k.double().transpose(-2, -1)) / q.size(-1) ** 0.5
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    return s.softmax(-1) @ v.double()


@pytest.mark.parametrize("S", [1, 17, 300])
def test_cached_attention_in_bf16_is_computed_in_fp32_and_returned_in_bf16(S):
    g = torch.Generator().manual_seed(S)
    q = torch.randn(2, 3, 1, 16, generator=g).bfloat16()
    k, v = (torch.randn(2, 3, S, 16, generator=g).bfloat16() for _ in range(2))
    out = cached_attention(q, k, v)
    assert out.dtype == torch.bfloat16 and out.shape == q.shape
    want = decode_reference(q, k, v)
    # fp32 inside: the only error left is the final rounding to bf16, half an ulp of each value
    # (bf16 keeps 8 significant bits: an ulp is 2^(exponent - 7)), plus fp32's own ~1e-6
    half_ulp = torch.exp2(torch.floor(torch.log2(want.abs().clamp_min(1e-30))) - 8)
    assert ((out.double() - want).abs() <= half_ulp + 1e-6).all()


def test_cached_attention_honours_the_chunk_mask():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 2, 3, 8, generator=g).bfloat16()
    k, v = (torch.randn(1, 2, 7, 8, generator=g).bfloat16() for _ in range(2))
    mask = torch.ones(3, 7, dtype=torch.bool).tril(diagonal=4)  # a 3-token chunk after 4 cached ones
    got = cached_attention(q, k, v, mask)
    assert (got.double() - decode_reference(q, k, v, mask)).abs().max() < 1e-2
    k2, v2 = k.clone(), v.clone()
    k2[:, :, 5:] += 3.0  # what row 0 of the chunk (position 4) must not see
    v2[:, :, 5:] -= 3.0
    assert torch.equal(cached_attention(q, k2, v2, mask)[:, :, 0], got[:, :, 0])


def test_cached_attention_in_fp32_is_sdpa_unchanged():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 2, 1, 8, generator=g)
    k, v = (torch.randn(1, 2, 9, 8, generator=g) for _ in range(2))
    assert torch.equal(cached_attention(q, k, v), F.scaled_dot_product_attention(q, k, v))


def test_matmul_attention_gradients_pass_gradcheck_in_fp64():
    """The hand-written backward against numerical differentiation (the Function is dtype-agnostic;
    fp64 makes the finite differences exact enough), on non-contiguous q, k, v cut from one qkv
    tensor the way the model cuts them."""
    g = torch.Generator().manual_seed(3)
    qkv = torch.randn(2, 5, 3, 2, 4, generator=g, dtype=torch.float64, requires_grad=True)  # B, T, 3, nh, hs
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))  # (B, nh, T, hs) views
    assert not q.is_contiguous()
    assert torch.autograd.gradcheck(MatmulCausalAttention.apply, (q, k, v))
