"""lm_head and cross-entropy fused, for CPU training in fp32.

With GPT-2's vocabulary the logits are the largest tensor of a step ((tokens, 50304) floats) and,
on a CPU, the unfused loss walks over them many times: log_softmax, a zero-filled gradient, the
scatter, log_softmax's backward. Here each chunk of logits is turned into its gradient in place by
one softmax (which works row by row in cache) right after it is computed, and the two gradient
matmuls follow. Both gradients are ready at the end of the forward pass; backward only scales them.
The loss equals F.cross_entropy over the padded vocabulary (ignore_index=-1), as in GPT.forward.

The logits chunk lives in a workspace kept between steps: a fresh tensor that large is new memory
from the kernel every time, and its page faults alone cost a third of the lm_head matmul.

GPUs keep the unfused path: torch.compile fuses it there, and under autocast the logits would be
bf16, which this function does not handle.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from gptkit.model import GPT

CHUNK_ELEMENTS = 1 << 26  # logits per chunk (256 MB in fp32): bounds the extra memory


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, workspace: torch.Tensor):
        # h (N, C) hidden states, weight (V, C) the tied lm_head, targets (N,) with -1 = ignore,
        # workspace: at least (chunk * V) floats of scratch for the logits
        N = h.size(0)
        valid = targets >= 0
        n_valid = int(valid.sum())
        all_valid = n_valid == N
        scale = 1.0 / max(n_valid, 1)
        grad_h = torch.empty_like(h)
        grad_w = torch.empty_like(weight)
        loss = torch.zeros((), dtype=torch.float64, device=h.device)
        chunk = chunk_rows(weight.size(0), N)
        for s in range(0, N, chunk):
            hc, tc = h[s : s + chunk], targets[s : s + chunk]
            rows = torch.arange(len(tc), device=h.device)
            tcl = tc.clamp(min=0)
            logits = workspace[: len(tc) * weight.size(0)].view(len(tc), weight.size(0))
            torch.mm(hc, weight.t(), out=logits)  # (n, V)
            target_logit = logits[rows, tcl]  # a copy, taken before the softmax overwrites them
            # In place, one row at a time while it is in cache: max, exp and sum, scale.
            probs = torch.softmax(logits, dim=1, out=logits)
            row_loss = -probs[rows, tcl].log()
            lost = row_loss.isinf()  # p underflowed to 0 (loss > ~100): redo those rows exactly
            if bool(lost.any()):
                lse = torch.logsumexp(hc[lost] @ weight.t(), dim=1)
                row_loss[lost] = lse - target_logit[lost]
            probs[rows, tcl] -= 1.0  # softmax - one-hot: d(row loss) / d(logits)
            if not all_valid:
                vc = valid[s : s + chunk]
                row_loss = row_loss * vc
                probs.mul_(vc.unsqueeze(1))
            loss += row_loss.sum(dtype=torch.float64)
            # The mean's 1/n_valid goes in as the matmuls' alpha, not as another pass over probs.
            gh = grad_h[s : s + chunk]
            torch.addmm(gh, probs, weight, beta=0, alpha=scale, out=gh)
            if s == 0:
                torch.addmm(grad_w, probs.t(), hc, beta=0, alpha=scale, out=grad_w)  # beta=0: not read
            else:
                grad_w.addmm_(probs.t(), hc, alpha=scale)
        ctx.save_for_backward(grad_h, grad_w)
        return (loss * scale).to(h.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        # Scaled in place: these are ours alone, and backward runs once per forward.
        return grad_h.mul_(grad_out), grad_w.mul_(grad_out), None, None


def chunk_rows(vocab: int, n: int | None = None) -> int:
    """Rows per chunk: as many as fit CHUNK_ELEMENTS, spread evenly over the n rows."""
    most = max(1, CHUNK_ELEMENTS // vocab)
    if n is None or n <= most:
        return most if n is None else n
    chunks = -(-n // most)
    return -(-n // chunks)


def linear_cross_entropy(
    h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, workspace: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean cross-entropy of (h @ weight.T) against targets, without keeping the logits."""
    need = chunk_rows(weight.size(0), h.size(0)) * weight.size(0)
    if workspace is None or workspace.numel() < need:
        workspace = torch.empty(need, dtype=h.dtype, device=h.device)
    return _LinearCrossEntropy.apply(h, weight, targets, workspace)


class FusedLossGPT(nn.Module):
    """Training view of a GPT: (idx, targets) -> (None, loss) through the fused loss. It holds the
    same module, so DDP and the optimizer see the very same parameters."""

    def __init__(self, model: GPT):
        super().__init__()
        self.model = model
        self.workspace: torch.Tensor | None = None  # scratch, not state: never saved

    def forward(self, idx: torch.Tensor, targets: torch.Tensor):
        h = self.model.hidden(idx).flatten(0, 1)  # (B * T, C)
        w = self.model.lm_head.weight
        need = chunk_rows(w.size(0), h.size(0)) * w.size(0)
        if self.workspace is None or self.workspace.numel() < need or self.workspace.dtype != h.dtype:
            self.workspace = torch.empty(need, dtype=h.dtype, device=h.device)
        return None, linear_cross_entropy(h, w, targets.reshape(-1), self.workspace)
