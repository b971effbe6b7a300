"""The fused lm_head + cross-entropy used for CPU training equals the model's own loss."""

import pytest
import torch
import torch.nn.functional as F

from gptkit.model import GPT, get_preset
from gptkit.train import loss as L


@pytest.mark.parametrize("chunk_elements", [L.CHUNK_ELEMENTS, 300 * 5])  # one chunk; chunks of 5 rows
def test_matches_cross_entropy_in_value_and_gradients(monkeypatch, chunk_elements):
    monkeypatch.setattr(L, "CHUNK_ELEMENTS", chunk_elements)
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
    fused = L.FusedLossGPT(model)
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
    assert "workspace" not in dict(fused.named_buffers()) and fused.workspace is not None


def test_rows_whose_probability_underflows_still_get_the_exact_loss():
    h = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    w = torch.tensor([[300.0, 0.0], [0.0, 0.0], [-300.0, 0.0]])
    t = torch.tensor([2, 1])  # row 0: target logit -300 against 300, p = exp(-600) = 0 in fp32
    ref = F.cross_entropy(h @ w.t(), t)
    out = L.linear_cross_entropy(h, w, t)
    assert torch.isfinite(out)
    torch.testing.assert_close(out, ref)
