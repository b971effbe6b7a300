"""The optimizers: which parameter goes to which group, and the builder (gptkit/train/optim.py)."""

import pytest
import torch

from gptkit.model import GPT, GPTConfig
from gptkit.train.config import TrainConfig
from gptkit.train.optim import (
    Muon,
    adamw_groups,
    build_optimizers,
    kind,
    model_groups,
    newton_schulz,
    schedule_lrs,
)


def small_config() -> GPTConfig:
    return GPTConfig(block_size=64, vocab_size=300, padded_vocab_size=320, n_layer=3, n_head=4, n_embd=64)


def test_groups_cover_each_parameter_once():
    model = GPT(small_config())
    g = model_groups(model)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(names[id(p)].startswith("transformer.h.") and p.dim() == 2 for p in g["matrix"] + g["qkv"])
    assert [names[id(p)] for p in g["qkv"]] == [f"transformer.h.{i}.attn.c_attn.weight" for i in range(3)]
    assert sorted(names[id(p)] for p in g["embedding"]) == ["transformer.wpe.weight", "transformer.wte.weight"]
    assert all(p.dim() == 1 for p in g["gain"])
    assert model.lm_head.weight is model.transformer.wte.weight  # the tied head: decayed once, as wte
    n = sum(p.numel() for ps in g.values() for p in ps)
    assert n == model.num_params(non_embedding=False)


def test_adamw_groups_keep_the_checkpoint_order():
    """The decayed group is every >= 2-D parameter in the model's order (the order a checkpoint's
    optimizer state was written in before optim.py existed), the other group the 1-D ones."""
    model = GPT(small_config())
    decay, no_decay = adamw_groups(model, 0.1)
    assert [id(p) for p in decay["params"]] == [id(p) for p in model.parameters() if p.dim() >= 2]
    assert [id(p) for p in no_decay["params"]] == [id(p) for p in model.parameters() if p.dim() < 2]
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.1, 0.0)
    (opt,) = build_optimizers(TrainConfig(weight_decay=0.05), model, torch.device("cpu"))
    assert isinstance(opt, torch.optim.AdamW) and opt.param_groups[0]["weight_decay"] == 0.05


# --- Muon: the iteration against the SVD, the step against torch's and against the paper ------------
def _model_shapes(C: int = 64) -> list[tuple[int, int]]:
    """The block matrices' shapes (rows x columns, as nn.Linear stores them): c_attn tall (3C x C),
    c_fc tall (4C x C), the MLP's c_proj wide (C x 4C), attention's c_proj square."""
    return [(3 * C, C), (4 * C, C), (C, 4 * C), (C, C)]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_newton_schulz_is_near_the_polar_factor(dtype):
    """On Gaussian matrices of the model's shapes: every singular value of the update whose input
    singular value is above 1e-3 of the largest lies in [0.6, 1.2] (torch's coefficients give
    0.68-1.14; a square Gaussian matrix has near-zero singular values that stay small), and the
    update's cosine with U V^T (the SVD's polar factor) is at least 0.97."""
    g = torch.Generator().manual_seed(0)
    for rows, cols in _model_shapes():
        G = torch.randn(rows, cols, generator=g, dtype=torch.float64)
        U, S, Vh = torch.linalg.svd(G, full_matrices=False)
        Ot = newton_schulz(G.float(), getattr(torch, dtype)).double()
        # Ot's singular values along G's singular directions: diag(U^T Ot V)
        s_out = torch.diagonal(U.T @ Ot @ Vh.T)
        kept = S > 1e-3 * S.max()
        assert kept.sum() >= min(rows, cols) - 3
        assert s_out[kept].min() >= 0.6 and s_out[kept].max() <= 1.2, (rows, cols, s_out[kept].aminmax())
        polar = U @ Vh
        cos = (Ot * polar).sum() / (Ot.norm() * polar.norm())
        assert cos >= 0.97, (rows, cols, float(cos))


@pytest.mark.parametrize(("nesterov", "adjust"), [(True, "original"), (False, "match_rms_adamw")])
def test_muon_bf16_step_is_torch_optim_muon_bitwise(nesterov, adjust):
    """gptkit's Muon with the bf16 iteration is torch.optim.Muon's step, bit for bit (weights and
    momentum buffers, three steps, weight decay on), for each of the model's shapes."""
    g = torch.Generator().manual_seed(1)
    for rows, cols in _model_shapes(16):
        ours = torch.randn(rows, cols, generator=g).requires_grad_()
        theirs = ours.detach().clone().requires_grad_()
        kw = dict(lr=0.02, weight_decay=0.1, momentum=0.9, nesterov=nesterov, adjust_lr_fn=adjust)
        a, b = Muon([ours], ns_dtype="bfloat16", **kw), torch.optim.Muon([theirs], **kw)
        for _ in range(3):
            grad = torch.randn(rows, cols, generator=g)
            ours.grad, theirs.grad = grad.clone(), grad.clone()
            a.step()
            b.step()
        assert torch.equal(ours, theirs)
        assert torch.equal(a.state[ours]["momentum_buffer"], b.state[theirs]["momentum_buffer"])


def _paper_orthogonalize(M: torch.Tensor) -> torch.Tensor:
    """Keller Jordan's quintic Newton-Schulz, written from the post's equations in float64:
    X0 = M / ||M||_F; X <- a X + b (X X^T) X + c (X X^T)^2 X, five times, on the wide orientation."""
    a, b, c = 3.4445, -4.7750, 2.0315
    X = M.double()
    if X.shape[0] > X.shape[1]:
        return _paper_orthogonalize(X.T).T
    X = X / X.norm()
    for _ in range(5):
        A = X @ X.T
        X = a * X + (b * A + c * A @ A) @ X
    return X


def test_one_step_of_each_group_equals_the_papers_equations():
    """One training step of the optimizers as built for `--optimizer muon` (c_attn split into Q/K/V,
    both learning-rate adjustments), against a reference written from the equations, not from gptkit's
    or torch's code: Muon's B = mu B + g, Nesterov g + mu B, Ot = NS(.) per block, W <- W (1 - lr wd)
    - lr * adjust(shape) * Ot; AdamW's m, v, bias correction and decoupled decay for the rest."""
    torch.manual_seed(0)
    for adjust, qkv in (("match_rms_adamw", "split"), ("original", "whole")):
        model = GPT(small_config())
        cfg = TrainConfig(
            optimizer="muon", lr=1e-3, muon_lr=0.02, weight_decay=0.1, muon_adjust_lr=adjust, muon_qkv=qkv
        )
        opts = build_optimizers(cfg, model, torch.device("cpu"), "fp32")
        assert [type(o) for o in opts] == [torch.optim.AdamW, Muon]
        lrs = schedule_lrs(opts, lambda peak: peak * 0.5)  # the schedule scales each group's own peak
        assert lrs == {"decay": 5e-4, "gain": 5e-4, "matrix": 0.01, "qkv": 0.01}
        x = torch.randint(0, 300, (2, 16))
        _, loss = model(x, x)
        loss.backward()
        names = {id(p): n for n, p in model.named_parameters()}
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        for o in opts:
            o.step()
        for n, p in model.named_parameters():
            W, G = before[n].double(), grads[n].double()
            if kind(n, p) in ("matrix", "qkv"):
                lr, mu = 0.01, 0.95
                B = G  # mu * 0 + g
                update = G + mu * B
                parts = 3 if kind(n, p) == "qkv" and qkv == "split" else 1
                Ot = torch.cat([_paper_orthogonalize(u) for u in update.chunk(parts)])
                A, Bc = Ot.shape[0] // parts, Ot.shape[1]
                scale = 0.2 * max(A, Bc) ** 0.5 if adjust == "match_rms_adamw" else max(1, A / Bc) ** 0.5
                want = W * (1 - lr * 0.1) - lr * scale * Ot
            else:
                lr, (b1, b2), eps = 5e-4, (0.9, 0.95), 1e-8
                wd = 0.1 if kind(n, p) == "embedding" else 0.0
                m, v = (1 - b1) * G, (1 - b2) * G * G
                want = W * (1 - lr * wd) - lr * (m / (1 - b1)) / ((v / (1 - b2)).sqrt() + eps)
            torch.testing.assert_close(p.detach().double(), want, rtol=0, atol=2e-6, msg=lambda m, n=n: f"{n}: {m}")
        assert len(names) == sum(len(g["params"]) for o in opts for g in o.param_groups)
