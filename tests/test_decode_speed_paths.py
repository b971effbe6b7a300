"""The fast decoding paths give the same answers: weights in the decoding dtype, the lm_head cut to the
real vocabulary, loading without init or copy, torch's bf16 gemv. Correctness only: speed is measured
by scripts/bench_sample.py, never in tests."""

import copy

import pytest
import torch

from gptkit.checkpoint import model_from_state_dict, save_checkpoint
from gptkit.generate import SampleConfig, generate, reference_decode
from gptkit.model import GPT, GPTConfig
from gptkit.models import load_for_sampling, prepare_for_decoding


def seeded_model(vocab=300, padded=320, seed=0, scale=0.1, **kw):
    cfg = dict(block_size=64, vocab_size=vocab, padded_vocab_size=padded, n_layer=2, n_head=2, n_embd=32)
    cfg.update(kw)
    model = GPT(GPTConfig(**cfg)).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # every weight non-trivial, so greedy choices are well separated
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
        model.transformer.wte.weight[vocab:] = 50.0  # padded rows that would win every argmax if read
    return model


def greedy(model, prompt, n=40, **kw):
    cfg = SampleConfig(max_new_tokens=n, temperature=0, stop_at_eot=False, **kw)
    return torch.stack(list(generate(model, prompt, cfg, vocab_size=model.config.vocab_size)), dim=1).tolist()


def reference(model, prompt, n=40, rows=1):
    """No cache, the untouched fp32 model, its logits sliced to the real vocabulary."""
    sample = lambda logits: logits[:, : model.config.vocab_size].argmax(-1)  # noqa: E731
    idx = torch.tensor([prompt] * rows)
    with torch.inference_mode():
        return torch.stack(list(reference_decode(model, idx, n, sample)), dim=1).tolist()


@pytest.mark.parametrize("rows", [1, 3])
def test_fp32_decoding_layout_gives_the_reference_greedy_ids(rows):
    model = seeded_model()
    fast = prepare_for_decoding(copy.deepcopy(model), torch.float32)
    assert fast.lm_head.weight_t.shape == (32, 300)  # real vocabulary only, (in, out)
    prompt = [5, 17, 250, 3]
    got = greedy(fast, prompt, num_samples=rows)
    assert got == reference(model, prompt, rows=rows)
    assert all(t < 300 for row in got for t in row) and len(set(got[0])) > 2


def test_bf16_weights_cache_and_logits():
    model = seeded_model()
    fast = prepare_for_decoding(copy.deepcopy(model), torch.bfloat16)
    assert {p.dtype for p in fast.parameters()} == {torch.bfloat16}
    wte = fast.get_parameter("transformer.wte.weight")
    assert wte.shape == (300, 32) and fast.lm_head.weight is wte  # cut once, still tied
    idx = torch.randint(0, 300, (2, 20), generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        want = model(idx)[0][..., :300]
        got = fast(idx)[0]
    assert got.dtype == torch.bfloat16 and got.shape == want.shape
    # bf16 keeps 8 bits of mantissa: a two-layer model's logits (|x| up to ~3 here) agree to a few 1e-2
    assert (got.float() - want).abs().max().item() < 0.1
    assert (got.float().argmax(-1) == want.argmax(-1)).float().mean().item() > 0.9

    steps = generate(fast, [1, 2, 3], SampleConfig(max_new_tokens=5, temperature=0), vocab_size=300)
    next(steps)
    caches = [b.attn.kv_cache for b in fast.transformer.h]
    assert all(c is not None and c.k.dtype == torch.bfloat16 and c.v.dtype == torch.bfloat16 for c in caches)
    steps.close()
    assert all(b.attn.kv_cache is None for b in fast.transformer.h)


def test_bf16_greedy_starts_like_fp32_and_stays_in_the_vocabulary():
    model = seeded_model(scale=0.2)
    fast = prepare_for_decoding(copy.deepcopy(model), torch.bfloat16)
    prompt = [7, 8, 9, 10]
    ref = reference(model, prompt)[0]
    got = greedy(fast, prompt)[0]
    assert got[:8] == ref[:8]  # large margins on this seeded model: the first tokens are the same
    assert all(0 <= t < 300 for t in got)
    two = greedy(fast, prompt, num_samples=2)  # several rows take oneDNN's kernels: same tokens
    assert two[0] == two[1] == got


def test_onednn_setting_is_restored_even_when_the_caller_stops_early():
    fast = prepare_for_decoding(seeded_model(), torch.bfloat16)
    before = torch.backends.mkldnn.enabled
    steps = generate(fast, [1, 2], SampleConfig(max_new_tokens=10, temperature=0), vocab_size=300)
    next(steps), next(steps), next(steps)
    assert torch.backends.mkldnn.enabled == before  # switched only while a token goes through the model
    steps.close()
    assert torch.backends.mkldnn.enabled == before


def test_assigned_load_equals_the_copying_load(tmp_path):
    model = seeded_model()
    sd = {k: v.clone() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    copied = model_from_state_dict(model.config, sd)
    assigned = model_from_state_dict(model.config, sd, assign=True)
    assert assigned.transformer.wte.weight.data_ptr() == sd["transformer.wte.weight"].data_ptr()  # no copy
    assert assigned.lm_head.weight is assigned.transformer.wte.weight  # tied again
    idx = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        torch.testing.assert_close(assigned(idx)[0], copied(idx)[0], rtol=0, atol=0)
        torch.testing.assert_close(assigned(idx)[0], model(idx)[0], rtol=0, atol=0)

    bf16_sd = {k: v.to(torch.bfloat16) for k, v in sd.items()}  # a bf16 source still builds an fp32 model
    assert model_from_state_dict(model.config, bf16_sd, assign=True).transformer.wte.weight.dtype == torch.float32


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_load_for_sampling_keeps_the_checkpoint_values(tmp_path, dtype):
    model = seeded_model(vocab=256, padded=256)
    ck = save_checkpoint(tmp_path / "ck", model, config=model.config, tokenizer="bytes")
    net, tok, _ = load_for_sampling(ck, torch.device("cpu"), dtype=dtype)
    assert tok.vocab_size == 256 and net.get_parameter("transformer.wte.weight").dtype == (dtype or torch.float32)
    prompt = list(b"hello")
    if dtype is None:
        assert greedy(net, prompt) == reference(model, prompt)
    else:
        assert greedy(net, prompt, n=6) == reference(model, prompt, n=6)


def test_sample_decodes_in_the_dtype_of_the_precision_policy():
    """bf16 weights wherever the policy trains in bf16 (GPUs, CPUs with native bf16), fp32 elsewhere
    and whenever --precision fp32 is asked for."""
    from gptkit.device import resolve_precision
    from gptkit.models import decoding_dtype

    cpu = torch.device("cpu")
    native = resolve_precision("auto", cpu).autocast_dtype == torch.bfloat16
    assert decoding_dtype("auto", cpu) == (torch.bfloat16 if native else None)
    assert decoding_dtype("fp32", cpu) is None
