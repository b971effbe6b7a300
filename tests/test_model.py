"""The model core against transformers' GPT2LMHeadModel and naive references."""

import math

import pytest
import torch
import torch.nn.functional as F

from gptkit.errors import GptkitError
from gptkit.model import CONV1D_SUFFIXES, GPT, GPTConfig, get_preset


def small_config(**kw):
    base = dict(block_size=64, vocab_size=300, padded_vocab_size=320, n_layer=3, n_head=4, n_embd=64)
    base.update(kw)
    return GPTConfig(**base)


def to_hf(model: GPT):
    """Build transformers' GPT2LMHeadModel with the same weights: only Conv1D transposes + vocab crop."""
    from transformers import GPT2Config, GPT2LMHeadModel

    c = model.config
    hf_cfg = GPT2Config(
        vocab_size=c.vocab_size,
        n_positions=c.block_size,
        n_embd=c.n_embd,
        n_layer=c.n_layer,
        n_head=c.n_head,
        activation_function="gelu_new",
        resid_pdrop=0,
        embd_pdrop=0,
        attn_pdrop=0,
        layer_norm_epsilon=1e-5,
        tie_word_embeddings=True,
    )
    hf = GPT2LMHeadModel(hf_cfg).eval()
    sd = {}
    for k, v in model.state_dict().items():
        if k == "lm_head.weight":
            continue
        if k.endswith(CONV1D_SUFFIXES):
            v = v.t()
        if k == "transformer.wte.weight":
            v = v[: c.vocab_size]
        sd[k] = v.clone()
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    assert not unexpected, unexpected
    assert set(missing) <= {"lm_head.weight"} | {
        k for k in missing if k.endswith("attn.bias") or k.endswith("masked_bias")
    }
    hf.tie_weights()
    return hf


def randomize(model):
    """Non-trivial weights everywhere, including biases and LayerNorm (init zeroes/ones them)."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def test_parameter_names_match_hf():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT(small_config(padded_vocab_size=300))
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=300, n_positions=64, n_embd=64, n_layer=3, n_head=4))
    ours = set(model.state_dict())
    theirs = {k for k in hf.state_dict() if not k.endswith((".attn.bias", ".attn.masked_bias"))}
    assert ours == theirs


def test_logits_match_transformers():
    torch.manual_seed(0)
    model = randomize(GPT(small_config())).eval()
    hf = to_hf(model)
    idx = torch.randint(0, 300, (2, 50))
    with torch.no_grad():
        ours, _ = model(idx)
        theirs = hf(idx).logits
    diff = (ours[..., :300] - theirs).abs().max().item()
    assert diff <= 1e-5, diff


def test_weights_tied_and_padded_vocab():
    model = GPT(small_config())
    assert model.lm_head.weight is model.transformer.wte.weight
    assert model.transformer.wte.weight.shape == (320, 64)
    assert get_preset("gpt2").padded_vocab_size == 50304


def test_gpt2_init_statistics():
    torch.manual_seed(0)
    cfg = small_config(n_layer=8, n_embd=128, n_head=4)
    model = GPT(cfg)
    h0 = model.transformer.h[0]
    assert abs(h0.attn.c_attn.weight.std().item() - 0.02) < 0.002
    expect = 0.02 / math.sqrt(2 * cfg.n_layer)
    assert abs(h0.attn.c_proj.weight.std().item() - expect) < 0.1 * expect
    assert abs(h0.mlp.c_proj.weight.std().item() - expect) < 0.1 * expect
    assert torch.all(h0.attn.c_attn.bias == 0)
    assert torch.all(model.transformer.ln_f.weight == 1)


def test_gpt2_124m_parameter_count():
    with torch.device("meta"):
        model = GPT(GPTConfig(padded_vocab_size=50257))
    # OpenAI's 124M: 124,439,808 parameters including position embeddings, tied head counted once.
    assert model.num_params(non_embedding=False) == 124_439_808


def test_sdpa_matches_naive_attention():
    torch.manual_seed(0)
    model = randomize(GPT(small_config())).eval()
    attn = model.transformer.h[0].attn
    x = torch.randn(2, 40, 64)
    with torch.no_grad():
        y = attn(x)
        B, T, C = x.shape
        q, k, v = attn.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, 4, C // 4).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(C // 4)
        att = att.masked_fill(torch.ones(T, T).tril() == 0, float("-inf"))
        ref = (F.softmax(att, dim=-1) @ v).transpose(1, 2).reshape(B, T, C)
        ref = attn.c_proj(ref)
    assert torch.allclose(y, ref, atol=1e-5), (y - ref).abs().max()


def test_kv_cache_matches_full_forward_at_every_position():
    torch.manual_seed(0)
    model = randomize(GPT(small_config())).eval()
    idx = torch.randint(0, 300, (2, 30))
    with torch.no_grad():
        full, _ = model(idx)
        model.setup_kv_cache(batch_size=2, max_len=30)
        # prefill 10, then a chunk of 5 (masked path), then one token at a time
        outs = [model(idx[:, :10], pos=0)[0], model(idx[:, 10:15], pos=10)[0]]
        for t in range(15, 30):
            outs.append(model(idx[:, t : t + 1], pos=t)[0])
        model.clear_kv_cache()
    inc = torch.cat(outs, dim=1)
    assert torch.allclose(full, inc, atol=1e-5), (full - inc).abs().max()


def test_kv_cache_is_preallocated():
    model = GPT(small_config())
    model.setup_kv_cache(batch_size=1, max_len=20)
    cache = model.transformer.h[0].attn.kv_cache
    ptr = cache.k.data_ptr()
    with torch.no_grad():
        model(torch.zeros(1, 5, dtype=torch.long), pos=0)
        model(torch.zeros(1, 1, dtype=torch.long), pos=5)
    assert cache.k.shape == (1, 4, 20, 16) and cache.k.data_ptr() == ptr
    with pytest.raises(ValueError):
        model.setup_kv_cache(batch_size=1, max_len=65)


def test_a_compiled_training_forward_is_not_recompiled_after_a_sample_on_its_modules():
    """The trainer samples with the plain module its compiled model shares (every --sample-every
    steps). Attaching and clearing the KV cache must leave the modules as dynamo's guards saw them:
    a cleared cache used to stay behind as a None submodule and recompile the next training step.
    (Guards do not depend on the backend: "eager" keeps the compile out of the test's time.)"""
    import torch._dynamo

    from gptkit.generate import SampleConfig, sample_text
    from gptkit.tokenizer import get_tokenizer

    torch._dynamo.reset()
    model = GPT(small_config().with_vocab(256))
    compiled = torch.compile(model, backend="eager")
    x = torch.randint(0, 256, (2, 16))
    compiled(x, x)[1].backward()
    before = dict(vars(model.transformer.h[0].attn)), dict(model.transformer.h[0].attn._modules)
    model.eval()
    sample_text(model, get_tokenizer("bytes"), "hi", SampleConfig(max_new_tokens=4, temperature=1.0, top_k=5, seed=0))
    model.train()
    assert (dict(vars(model.transformer.h[0].attn)), dict(model.transformer.h[0].attn._modules)) == before
    with torch._dynamo.config.patch(error_on_recompile=True):
        compiled(x, x)[1].backward()
    torch._dynamo.reset()


def test_loss_is_cross_entropy_ignoring_minus_one():
    torch.manual_seed(0)
    model = GPT(small_config()).eval()
    idx = torch.randint(0, 300, (2, 16))
    targets = torch.randint(0, 300, (2, 16))
    targets[:, -4:] = -1
    logits, loss = model(idx, targets)
    # over the 300 real tokens: the 20 padded rows are left out of the softmax
    ref = F.cross_entropy(logits[:, :-4, :300].reshape(-1, 300), targets[:, :-4].reshape(-1))
    assert torch.allclose(loss, ref, atol=1e-6)
    assert abs(loss.item() - math.log(300)) < 0.2  # near-uniform at init


def test_unknown_preset():
    with pytest.raises(GptkitError, match="unknown model preset"):
        get_preset("gpt5")


def test_shape_fields_bias_and_activation():
    import torch.nn.functional as F

    from gptkit.model import GPT, GPTConfig

    base = dict(block_size=16, vocab_size=50, padded_vocab_size=64, n_layer=2, n_head=2, n_embd=32)
    no_bias = GPT(GPTConfig(**base, bias=False))
    assert not [n for n, _ in no_bias.named_parameters() if n.endswith(".bias")]
    with_bias = GPT(GPTConfig(**base))
    assert sum(p.numel() for p in with_bias.parameters()) > sum(p.numel() for p in no_bias.parameters())
    exact = GPT(GPTConfig(**base, activation="gelu")).eval()
    x = torch.randn(3, 32)
    mlp = exact.transformer.h[0].mlp
    torch.testing.assert_close(mlp(x), mlp.c_proj(F.gelu(mlp.c_fc(x))))  # erf form, not tanh
    for bad in (dict(activation="relu"), dict(dropout=1.5), dict(n_layer=0), dict(layer_norm_epsilon=0.0)):
        with pytest.raises(ValueError):
            GPTConfig(**{**base, **bad})
