"""Causal self-attention for training and full-sequence forwards: PyTorch's fused kernel, except for
short bf16 sequences on a CPU, where plain batched matmuls are faster.

PyTorch's flash-attention CPU kernel is tiled for long sequences: for the short ones CPU runs use
(T <= 512) its bf16 forward and backward run at a few percent of the matmul peak. There, computing
the T x T scores with bf16 matmuls, a softmax and a fused softmax backward takes 0.3-0.7x its time
(measured on an AVX512-BF16 EPYC, B x 4 heads x 64: T=128 15.8 ms against 45.6 ms, T=256 24 against
37, T=512 42 against 68, forward and backward; at T=1024 it is 2x slower, and in fp32 no faster).
It keeps the probabilities (B, heads, T, T) for the backward, which is why it stops at T=512.

Every other case (CUDA, fp32, long sequences, dropout, an explicit mask) takes
F.scaled_dot_product_attention: FlashAttention-2 on CUDA, the flash CPU kernel elsewhere.

Decoding (`cached_attention`: new queries against a KV cache) on a CPU with a bf16 or fp16 cache
upcasts q, k and v to fp32 first. The flash CPU kernel's bf16 path is slow for a one-row query:
12 heads x 64 against 272 cached positions took 229 us in bf16 and 62 us upcast (1024: 718 against
198; 17: 18 against 22), and fp32 is also the more exact of the two. The cache itself stays in its
dtype, so decoding reads no more bytes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

MATMUL_MAX_T = 512  # above this the flash kernel is faster, and the saved probabilities grow as T^2

_causal_biases: dict[tuple[int, torch.dtype, torch.device], torch.Tensor] = {}


def _causal_bias(t: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(t, t): 0 on and below the diagonal, -inf above it (the future); one per length, kept."""
    key = (t, dtype, device)
    bias = _causal_biases.get(key)
    if bias is None:
        future = torch.ones(t, t, dtype=torch.bool, device=device).triu_(1)
        bias = _causal_biases[key] = torch.zeros(t, t, dtype=dtype, device=device).masked_fill_(future, float("-inf"))
    return bias


class MatmulCausalAttention(torch.autograd.Function):
    """softmax(q k^T / sqrt(d) + causal mask) v with bf16 matmuls; the backward recomputes nothing.

    The scale and the mask ride on the matmuls (baddbmm: bias + alpha * q k^T, and alpha on the
    gradients' products) instead of three more passes over the (B, nh, T, T) scores: 1.2 ms less per
    forward at 8 x 4 heads x 256 x 64. The numbers are the same as scaling afterwards when 1/sqrt(d)
    is a power of two (d = 16, 64, 256); otherwise the products are rounded to bf16 once instead of
    twice, a little closer to exact (at d = 32: RMS error 9.2e-4 against 1.06e-3 for the output).
    """

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        B, H, T, D = q.shape
        q3, k3, v3 = (x.reshape(B * H, T, D) for x in (q, k, v))
        scale = 1.0 / math.sqrt(D)
        scores = torch.baddbmm(_causal_bias(T, q.dtype, q.device), q3, k3.transpose(1, 2), alpha=scale)
        probs = torch.softmax(scores, dim=-1)  # accumulates in fp32 inside the kernel
        ctx.save_for_backward(q3, k3, v3, probs)
        ctx.scale = scale
        return torch.bmm(probs, v3).view(B, H, T, D)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        q3, k3, v3, probs = ctx.saved_tensors
        shape = grad_out.shape
        g3 = grad_out.reshape(q3.shape)
        grad_v = torch.bmm(probs.transpose(1, 2), g3)
        grad_probs = torch.bmm(g3, v3.transpose(1, 2))
        # probs * (grad_probs - rowsum(grad_probs * probs)) in one kernel; masked entries stay 0
        grad_scores = torch._softmax_backward_data(grad_probs, probs, -1, probs.dtype)
        # beta=0: the first argument only gives the shape, its contents are never read
        grad_q = torch.baddbmm(q3, grad_scores, k3, beta=0, alpha=ctx.scale)
        grad_k = torch.baddbmm(k3, grad_scores.transpose(1, 2), q3, beta=0, alpha=ctx.scale)
        return grad_q.view(shape), grad_k.view(shape), grad_v.view(shape)


def use_matmul_attention(q: torch.Tensor, dropout_p: float) -> bool:
    return q.device.type == "cpu" and q.dtype == torch.bfloat16 and q.size(-2) <= MATMUL_MAX_T and dropout_p == 0.0


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0) -> torch.Tensor:
    """Causal attention over (B, nh, T, hs) tensors, each position seeing itself and the past."""
    if use_matmul_attention(q, dropout_p):
        return MatmulCausalAttention.apply(q, k, v)
    # is_causal=True with no mask: no T x T tensor is ever materialised
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p)


def cached_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None, dropout_p: float = 0.0
) -> torch.Tensor:
    """New queries (B, nh, T, hs) against the cache's keys and values (B, nh, S, hs); `mask` (T, S) is
    True where a query may look, None when every query sees every key (one token after its prefix)."""
    if q.device.type == "cpu" and q.dtype in (torch.bfloat16, torch.float16) and dropout_p == 0.0:
        y = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask)
        return y.to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
