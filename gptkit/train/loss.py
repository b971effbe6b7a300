"""lm_head and cross-entropy fused, for CPU training in fp32 and in bf16.

With GPT-2's vocabulary the logits are the largest tensor of a step ((tokens, 50304) numbers) and,
on a CPU, the unfused loss walks over them many times: log_softmax, a zero-filled gradient, the
scatter, log_softmax's backward (and under bf16 autocast also a cast to fp32 and back). Here each
chunk of logits is turned into its gradient in place by one softmax (which works row by row in
cache) right after it is computed, and the two gradient matmuls follow. Both gradients are ready at
the end of the forward pass; backward only scales them. The loss equals F.cross_entropy over the
real vocabulary (ignore_index=-1), as in GPT.forward: the padded rows' logits are set to -inf before
the softmax, so they take no probability and get no gradient from the loss (the matmul still spans
them: the same FLOPs as the unfused path).

bf16 (the CPU's bf16 autocast, as gptkit.device's policy picks it on AVX512-BF16 CPUs): the three
matmuls take bf16 operands (the hidden states and the tied weight cast once, as autocast would) and
accumulate in fp32 inside oneDNN, so the logits come out in bf16 exactly as the unfused path's do.
The softmax, the loss and the "minus one" at the target run in fp32, on a block of rows at a time
copied into a small fp32 buffer that stays in cache; only the finished gradient (p - onehot) is
rounded to bf16 for the two gradient matmuls, which is the rounding the unfused path applies to
its fp32 logits gradient too. Doing the softmax in bf16 instead would round p before the "minus
one": a target with p = 0.999 would get the gradient 0, not -0.001. grad_w is summed over chunks
in fp32. So the loss matches the unfused bf16 loss to fp32 rounding and the gradients to bf16
rounding (tests/test_train_loss.py states the tolerances).

The logits chunk lives in a workspace kept between steps: a fresh tensor that large is new memory
from the kernel every time, and its page faults alone cost a third of the lm_head matmul.

GPUs keep the unfused path: torch.compile fuses it there.
"""

from __future__ import annotations

import torch

from gptkit.model import GPT

CHUNK_BYTES = 1 << 28  # logits per chunk (256 MB): bounds the extra memory
SOFTMAX_ROWS = 16  # bf16: rows per fp32 softmax block (16 x 50304 floats = 3 MB, in cache)


def _forward_native(
    h: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    workspace: torch.Tensor,
    valid: torch.Tensor,
    n_valid: int,
    scale: float,
    real: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    N = h.size(0)
    all_valid = n_valid == N
    grad_h = torch.empty_like(h)
    grad_w = torch.empty_like(weight)
    loss = torch.zeros((), dtype=torch.float64, device=h.device)
    chunk = chunk_rows(weight.size(0), N, h.element_size())
    for s in range(0, N, chunk):
        hc, tc = h[s : s + chunk], targets[s : s + chunk]
        rows = torch.arange(len(tc), device=h.device)
        tcl = tc.clamp(min=0)
        logits = workspace[: len(tc) * weight.size(0)].view(len(tc), weight.size(0))
        torch.mm(hc, weight.t(), out=logits)  # (n, V)
        logits[:, real:] = float("-inf")  # the padded rows: no probability, no gradient
        target_logit = logits[rows, tcl]  # a copy, taken before the softmax overwrites them
        # In place, one row at a time while it is in cache: max, exp and sum, scale.
        probs = torch.softmax(logits, dim=1, out=logits)
        row_loss = -probs[rows, tcl].log()
        lost = row_loss.isinf()  # p underflowed to 0 (loss > ~100): redo those rows exactly
        if bool(lost.any()):
            lse = torch.logsumexp(hc[lost] @ weight[:real].t(), dim=1)
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
    return loss, grad_h, grad_w


def _forward_low(
    h: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    workspace: torch.Tensor,
    valid: torch.Tensor,
    n_valid: int,
    scale: float,
    real: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """bf16 matmuls (fp32 accumulation), fp32 softmax and loss; see the module docstring."""
    N, V = h.size(0), weight.size(0)
    low = workspace.dtype
    hl, wl = h.to(low), weight.to(low)  # what autocast feeds lm_head
    grad_hl = torch.empty_like(hl)
    grad_wl = torch.empty_like(wl)  # one chunk's weight gradient
    grad_w: torch.Tensor | None = None  # the fp32 sum over chunks, when there are several
    p_target = torch.empty(N, dtype=torch.float32, device=h.device)
    target_logit = torch.empty(N, dtype=torch.float32, device=h.device)
    block = torch.empty(SOFTMAX_ROWS, V, dtype=torch.float32, device=h.device)
    minus_one = torch.full((SOFTMAX_ROWS, 1), -1.0, device=h.device)
    tcl_all = targets.clamp(min=0)
    chunk = chunk_rows(V, N, workspace.element_size())
    for s in range(0, N, chunk):
        hc = hl[s : s + chunk]
        n = hc.size(0)
        logits = workspace[: n * V].view(n, V)
        torch.mm(hc, wl.t(), out=logits)  # (n, V) bf16, accumulated in fp32
        logits[:, real:] = float("-inf")  # the padded rows: no probability, no gradient
        tc = tcl_all[s : s + n].unsqueeze(1)  # (n, 1)
        target_logit[s : s + n] = logits.gather(1, tc).squeeze(1)
        for b in range(0, n, SOFTMAX_ROWS):
            r = min(SOFTMAX_ROWS, n - b)
            t = tc[b : b + r]
            lg, fb = logits[b : b + r], block[:r]
            fb.copy_(lg)
            torch.softmax(fb, dim=1, out=fb)
            p_target[s + b : s + b + r] = fb.gather(1, t).squeeze(1)
            fb.scatter_add_(1, t, minus_one[:r])  # p - 1 in fp32, before the one rounding to bf16
            if n_valid != N:
                fb.mul_(valid[s + b : s + b + r].unsqueeze(1))
            lg.copy_(fb)
        gh = grad_hl[s : s + chunk]
        torch.addmm(gh, logits, wl, beta=0, alpha=scale, out=gh)
        torch.addmm(grad_wl, logits.t(), hc, beta=0, alpha=scale, out=grad_wl)
        grad_w = grad_wl.to(weight.dtype) if grad_w is None else grad_w.add_(grad_wl)
    row_loss = -p_target.log()
    lost = row_loss.isinf()  # p underflowed to 0 (loss > ~100): redo those rows exactly
    if bool(lost.any()):
        lse = torch.logsumexp((hl[lost] @ wl[:real].t()).float(), dim=1)
        row_loss[lost] = lse - target_logit[lost]
    loss = torch.where(valid, row_loss, 0.0).sum(dtype=torch.float64)
    assert grad_w is not None
    return loss, grad_hl.to(h.dtype), grad_w


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, workspace: torch.Tensor, real: int):
        # h (N, C) hidden states, weight (V, C) the tied lm_head, targets (N,) with -1 = ignore,
        # workspace: at least (chunk * V) numbers of scratch for the logits, in the matmuls' dtype,
        # real: the vocabulary's size (rows from it on are padding)
        valid = targets >= 0
        n_valid = int(valid.sum())
        scale = 1.0 / max(n_valid, 1)
        fwd = _forward_native if workspace.dtype == h.dtype == weight.dtype else _forward_low
        with torch.autocast(h.device.type, enabled=False):  # the dtypes are chosen here, not by autocast
            loss, grad_h, grad_w = fwd(h, weight, targets, workspace, valid, n_valid, scale, real)
        ctx.save_for_backward(grad_h, grad_w)
        return (loss * scale).to(torch.float32 if workspace.dtype != h.dtype else h.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        # Scaled in place: these are ours alone, and backward runs once per forward.
        return grad_h.mul_(grad_out), grad_w.mul_(grad_out), None, None, None


def chunk_rows(vocab: int, n: int | None = None, element_size: int = 4) -> int:
    """Rows per chunk: as many as fit CHUNK_BYTES, spread evenly over the n rows."""
    most = max(1, CHUNK_BYTES // (vocab * element_size))
    if n is None or n <= most:
        return most if n is None else n
    chunks = -(-n // most)
    return -(-n // chunks)


def matmul_dtype(h: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The dtype lm_head's matmul runs in here: autocast's, if autocast is on, else the inputs'."""
    if torch.is_autocast_enabled(h.device.type):
        return torch.get_autocast_dtype(h.device.type)
    return torch.promote_types(h.dtype, weight.dtype)


def linear_cross_entropy(
    h: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    workspace: torch.Tensor | None = None,
    vocab_size: int | None = None,
) -> torch.Tensor:
    """Mean cross-entropy of (h @ weight.T) against targets, without keeping the logits. Under bf16
    autocast the matmuls run in bf16 and the loss is fp32, as lm_head + F.cross_entropy would.
    vocab_size: the real vocabulary; weight's rows past it are padding, left out of the softmax."""
    dtype = matmul_dtype(h, weight)
    if dtype not in (h.dtype, torch.bfloat16):
        raise ValueError(f"fused loss: no {dtype} matmuls for {h.dtype} inputs (fp32, fp64 or bf16 autocast)")
    esize = torch.empty((), dtype=dtype).element_size()
    need = chunk_rows(weight.size(0), h.size(0), esize) * weight.size(0)
    if workspace is None or workspace.numel() < need or workspace.dtype != dtype:
        workspace = torch.empty(need, dtype=dtype, device=h.device)
    return _LinearCrossEntropy.apply(h, weight, targets, workspace, vocab_size or weight.size(0))


class FusedHeadLoss:
    """GPT.head_loss for CPU training: lm_head and the loss fused, its logits workspace kept
    between steps (scratch, not state: never saved)."""

    def __init__(self) -> None:
        self.workspace: torch.Tensor | None = None

    def __call__(self, h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, vocab_size: int) -> torch.Tensor:
        dtype = matmul_dtype(h, weight)
        esize = torch.empty((), dtype=dtype).element_size()
        need = chunk_rows(weight.size(0), h.size(0), esize) * weight.size(0)
        if self.workspace is None or self.workspace.numel() < need or self.workspace.dtype != dtype:
            self.workspace = torch.empty(need, dtype=dtype, device=h.device)
        return linear_cross_entropy(h, weight, targets, self.workspace, vocab_size)


def fuse_loss(model: GPT) -> GPT:
    """The model, training through the fused loss from now on (its forward with targets, in train mode)."""
    model.head_loss = FusedHeadLoss()
    return model
