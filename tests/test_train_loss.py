"""The fused lm_head + cross-entropy used for CPU training equals the model's own loss.

fp32 (and fp64): the same as F.cross_entropy to the dtype's rounding. bf16 autocast: the logits are
bf16 in both paths, so the fused loss must equal the unfused bf16 loss to fp32 rounding of the
softmax (both take it in fp32 over the same bf16 logits, up to the matmuls' summation order), and
its gradients must be as close to the exact (fp64) ones as the unfused bf16 path's are: bf16
rounding of the logits' gradient, nothing worse.
"""

import contextlib

import pytest
import torch
import torch.nn.functional as F

from gptkit.device import cpu_has_native_bf16
from gptkit.model import GPT, GPTConfig, get_preset
from gptkit.train import loss as L

# bf16 matmuls run (slowly, emulated) on any CPU; the tests need correctness, not speed.
BF16 = torch.autocast("cpu", dtype=torch.bfloat16)


@pytest.mark.parametrize("chunk_bytes", [L.CHUNK_BYTES, 300 * 5 * 8])  # one chunk; chunks of 5 rows
def test_matches_cross_entropy_in_value_and_gradients(monkeypatch, chunk_bytes):
    monkeypatch.setattr(L, "CHUNK_BYTES", chunk_bytes)
    torch.manual_seed(0)
    h = torch.randn(23, 16, dtype=torch.float64, requires_grad=True)
    w = torch.randn(300, 16, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 300, (23,))
    t[[3, 17]] = -1  # ignored positions
    ref = F.cross_entropy(h @ w.t(), t, ignore_index=-1)
    gh_ref, gw_ref = torch.autograd.grad(ref * 0.5, (h, w))
    out = L.linear_cross_entropy(h, w, t)
    gh, gw = torch.autograd.grad(out * 0.5, (h, w))
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(gh, gh_ref)
    torch.testing.assert_close(gw, gw_ref)


def test_training_view_of_the_model_gives_the_same_loss_and_gradients():
    torch.manual_seed(0)
    model = GPT(get_preset("tiny").with_vocab(256))
    fused = fused_view(model)
    for shape in ((2, 16), (3, 8)):  # the second call reuses (part of) the first one's workspace
        x, y = torch.randint(0, 256, (2, *shape))
        model.zero_grad()
        _, ref = model(x, y)
        (ref / 3).backward()
        ref_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        model.zero_grad()
        _, loss = fused(x, y)
        (loss / 3).backward()
        torch.testing.assert_close(loss, ref)
        for n, p in model.named_parameters():
            torch.testing.assert_close(p.grad, ref_grads[n], rtol=1e-4, atol=1e-6, msg=lambda m, n=n: f"{n}: {m}")
    assert fused.head.workspace is not None and not any("workspace" in k for k in model.state_dict())


@pytest.mark.parametrize("bf16", [False, True])
def test_padded_vocabulary_rows_take_no_probability_and_get_no_gradient(bf16):
    """Zero padding rows, as an imported GPT-2 has (its real logits sit near -60): the loss, fused or
    not, is the real vocabulary's, as transformers and llm.c compute it, and the padding learns nothing."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=16, vocab_size=300, padded_vocab_size=320, n_layer=1, n_head=2, n_embd=32))
    with torch.no_grad():
        model.transformer.wte.weight[300:] = 0
        model.transformer.ln_f.bias.fill_(-3.0)  # pushes every real logit far below 0
        model.transformer.wte.weight[:300] += 0.5
    x, y = torch.randint(0, 300, (2, 2, 16))
    ctx = BF16 if bf16 else contextlib.nullcontext()
    with torch.no_grad(), ctx:
        logits = model(x)[0]
        assert logits[..., :300].max() < -5  # a zero padding row's logit of 0 would dominate
        want = F.cross_entropy(logits[..., :300].float().reshape(-1, 300), y.reshape(-1))
    for name, run in (("unfused", model), ("fused", fused_view(model))):
        model.zero_grad()
        with ctx:
            _, loss = run(x, y)
        loss.backward()
        torch.testing.assert_close(loss.float(), want, rtol=2e-3 if bf16 else 1e-5, atol=1e-4, msg=name)
        pad_grad = model.transformer.wte.weight.grad[300:]
        assert torch.count_nonzero(pad_grad) == 0, name  # tied: embedding and lm_head rows alike


def test_rows_whose_probability_underflows_still_get_the_exact_loss():
    h = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    w = torch.tensor([[300.0, 0.0], [0.0, 0.0], [-300.0, 0.0]])
    t = torch.tensor([2, 1])  # row 0: target logit -300 against 300, p = exp(-600) = 0 in fp32
    ref = F.cross_entropy(h @ w.t(), t)
    out = L.linear_cross_entropy(h, w, t)
    assert torch.isfinite(out)
    torch.testing.assert_close(out, ref)
    with BF16:
        out = L.linear_cross_entropy(h, w, t)
    assert out.dtype == torch.float32 and torch.isfinite(out)
    torch.testing.assert_close(out, ref)  # these logits are exact in bf16


def _rel_err(a: torch.Tensor, exact: torch.Tensor) -> float:
    return float((a.double() - exact).norm() / exact.norm())


def _bf(x: torch.Tensor) -> torch.Tensor:
    return x.bfloat16().double()


def _bf16_case(n=61, v=1000, c=64):
    torch.manual_seed(0)
    h = torch.randn(n, c)
    h[:10] *= 8  # confident rows: p(target) near 1 for some, where rounding p before "- 1" would show
    w = torch.randn(v, c) * 0.3
    t = torch.randint(0, v, (n,))
    t[:10] = (h[:10] @ w.t()).argmax(1)
    t[[20, 41]] = -1  # ignored positions
    return h, w, t


@pytest.mark.parametrize("chunk_bytes,softmax_rows", [(L.CHUNK_BYTES, L.SOFTMAX_ROWS), (1000 * 2 * 7, 3)])
def test_bf16_matches_the_unfused_bf16_loss_and_is_as_accurate(monkeypatch, chunk_bytes, softmax_rows):
    # the second case: chunks of 7 rows, fp32 softmax blocks of 3 (a partial one in every chunk)
    monkeypatch.setattr(L, "CHUNK_BYTES", chunk_bytes)
    monkeypatch.setattr(L, "SOFTMAX_ROWS", softmax_rows)
    h, w, t = _bf16_case()

    def grads(fn):
        hh, ww = h.clone().requires_grad_(), w.clone().requires_grad_()
        out = fn(hh, ww)
        return (out, *torch.autograd.grad(out * 0.5, (hh, ww)))

    # exact: fp64 from the bf16-rounded inputs (what both bf16 paths start from)
    exact = grads(lambda a, b: F.cross_entropy(_bf(a) @ _bf(b).t(), t, ignore_index=-1))
    with BF16:
        unfused = grads(lambda a, b: F.cross_entropy(F.linear(a, b).float(), t, ignore_index=-1))
        fused = grads(lambda a, b: L.linear_cross_entropy(a, b, t))
    assert fused[0].dtype == unfused[0].dtype == torch.float32
    assert fused[1].dtype == fused[2].dtype == torch.float32  # gradients in the parameters' dtype
    # The same bf16 logits, softmax in fp32: equal to fp32 rounding.
    torch.testing.assert_close(fused[0], unfused[0], rtol=1e-5, atol=1e-5)
    # Each gradient within bf16 tolerance of the unfused one, elementwise (bf16's relative step
    # 2^-8, and as an absolute floor that step of the tensor's largest element: sums over chunks
    # round differently from one sum, which shows where terms cancel) ...
    for name, f, u in (("grad h", fused[1], unfused[1]), ("grad w", fused[2], unfused[2])):
        floor = 2**-8 * float(u.abs().max())
        torch.testing.assert_close(f, u, rtol=2**-6, atol=floor, msg=lambda m, name=name: f"{name}: {m}")
    # ... and no further from the exact gradient than the unfused bf16 one (plus a little slack): the
    # logits' own bf16 rounding (large here, on purpose) is most of both errors.
    for i, name in ((1, "grad h"), (2, "grad w")):
        f, u = _rel_err(fused[i], exact[i]), _rel_err(unfused[i], exact[i])
        assert f < 1.25 * u + 1e-4, f"{name}: fused relative error {f:.2e}, unfused {u:.2e}"


def test_bf16_softmax_is_taken_before_rounding():
    # Row 0 has p(target) = 0.999, which bf16 cannot hold (it rounds to 1.0): a bf16 softmax would
    # give its target logit the gradient 0 instead of p - 1 = -0.001. Row 1 touches w[0] only in
    # column 1, so grad w[0, 0] is row 0's alone: (p - 1) * h[0, 0] / 2 rows.
    h = torch.eye(2)
    lg = torch.log(torch.tensor([0.999, 0.001]))
    w = torch.tensor([[float(lg[0]), 0.0], [float(lg[1]), 0.0]])  # row 0's logits: lg
    t = torch.tensor([0, 1])
    ww = w.clone().requires_grad_()
    with BF16:
        out = L.linear_cross_entropy(h, ww, t)
    (gw,) = torch.autograd.grad(out, ww)
    p0 = torch.softmax(w.bfloat16().double()[:, 0], 0)[0]  # from the bf16 logits, as the unfused path
    torch.testing.assert_close(gw[0, 0].double(), (p0 - 1) / 2, rtol=2**-7, atol=0)


def test_bf16_training_view_of_the_model_matches_the_unfused_bf16_model():
    torch.manual_seed(0)
    model = GPT(get_preset("tiny").with_vocab(256))
    fused = fused_view(model)
    x, y = torch.randint(0, 256, (2, 3, 16))
    y[0, :3] = -1
    model.zero_grad()
    with BF16:
        _, ref = model(x, y)
    ref.backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    with BF16:
        _, loss = fused(x, y)
    loss.backward()
    assert fused.head.workspace is not None and fused.head.workspace.dtype == torch.bfloat16
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-5)
    for n, p in model.named_parameters():
        # bf16 rounding of the logits' gradient, carried through the layers below
        err = _rel_err(p.grad, ref_grads[n].double())
        assert err < 2e-2, f"{n}: relative difference {err:.2e} from the unfused bf16 gradient"


@pytest.mark.skipif(not cpu_has_native_bf16(), reason="this CPU trains in fp32")
def test_trainer_uses_the_fused_loss_for_bf16_on_this_cpu():
    from gptkit.device import resolve_precision

    assert resolve_precision("auto", torch.device("cpu")).name == "bf16"


def fused_view(model):
    """model(x, y) through the fused loss (GPT.head_loss), leaving the model unfused between calls."""
    head = L.FusedHeadLoss()  # one workspace across calls, as in training

    def run(x, y):
        model.head_loss = head
        try:
            return model(x, y)
        finally:
            model.head_loss = None

    run.head = head
    return run


def test_the_fused_loss_runs_inside_the_models_own_forward():
    """A wrapper's hooks on GPT.forward (DDP's, FSDP's unsharding of lm_head) run for the fused loss:
    it is computed in forward, not by reading lm_head's weight from outside. Only in training with
    gradients: evaluation keeps the logits."""
    torch.manual_seed(0)
    model = L.fuse_loss(GPT(get_preset("tiny").with_vocab(256)))
    calls = []
    model.register_forward_pre_hook(lambda m, args: calls.append("pre"))
    model.register_forward_hook(lambda m, args, out: calls.append("post"))
    x, y = torch.randint(0, 256, (2, 2, 16))
    logits, loss = model(x, y)
    assert logits is None and calls == ["pre", "post"]
    loss.backward()
    assert model.lm_head.weight.grad is not None
    with torch.no_grad():
        logits, ref = model(x, y)
    assert logits is not None  # no gradients: the plain path
    torch.testing.assert_close(loss.detach(), ref)
