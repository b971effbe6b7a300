"""Sampling past the context: the window restarts (gptkit.generate docstring), -n is always honoured."""

import json

import pytest
import torch
from conftest import run_cli

from gptkit.checkpoint import save_checkpoint
from gptkit.generate import SampleConfig, generate, sample_text, window_keep
from gptkit.model import GPT, GPTConfig
from gptkit.tokenizer import BytesTokenizer, CharTokenizer


def random_model(block_size=16, vocab=97, seed=0):
    torch.manual_seed(seed)
    cfg = GPTConfig(block_size=block_size, vocab_size=vocab, padded_vocab_size=vocab, n_layer=2, n_head=2, n_embd=32)
    model = GPT(cfg).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # every weight non-trivial, so greedy choices are well separated
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def run(model, prompt, n, use_cache, num_samples=1):
    cfg = SampleConfig(max_new_tokens=n, temperature=0, num_samples=num_samples, stop_at_eot=False)
    out = list(generate(model, prompt, cfg, vocab_size=model.config.vocab_size, use_cache=use_cache))
    return torch.stack(out, dim=1).tolist()


@torch.inference_mode()
def independent_reference(model, prompt, n):
    """The window policy spelled out from scratch: one row, plain lists, the full forward each step."""
    block, keep = model.config.block_size, window_keep(model.config.block_size)
    window, out = list(prompt[-block:]), []
    for _ in range(n):
        logits, _ = model(torch.tensor([window]))
        t = int(logits[0, -1, : model.config.vocab_size].argmax())
        out.append(t)
        window.append(t)
        if len(window) > block:
            window = window[-keep:]
    return out


@pytest.mark.parametrize("block", [16, 15, 1])
@pytest.mark.parametrize("prompt_len", [3, 16, 40])
def test_cached_past_the_context_equals_the_no_cache_reference(block, prompt_len):
    model = random_model(block_size=block)
    prompt = [(7 * i + 3) % 97 for i in range(prompt_len)]
    n = 5 * block + 7  # several restarts
    cached = run(model, prompt, n, use_cache=True, num_samples=2)
    assert cached == run(model, prompt, n, use_cache=False, num_samples=2)
    assert cached[0] == cached[1] == independent_reference(model, prompt, n)
    assert len(cached[0]) == n
    assert all(b.attn.kv_cache is None for b in model.transformer.h)


@pytest.mark.parametrize("use_top_k", [False, True])
def test_sampled_past_the_context_equals_the_reference_draw_for_draw(use_top_k):
    """Greedy on a random model soon repeats one token; sampling shows varied text crossing restarts."""
    model = random_model(block_size=16)
    cfg = SampleConfig(max_new_tokens=90, temperature=1.0, top_k=20 if use_top_k else None, seed=5, stop_at_eot=False)
    prompt = list(range(1, 30))
    cached = [t.tolist() for t in generate(model, prompt, cfg, vocab_size=97, use_cache=True)]
    full = [t.tolist() for t in generate(model, prompt, cfg, vocab_size=97, use_cache=False)]
    assert cached == full and len(cached) == 90
    assert len({t[0] for t in cached}) > 10


def test_block_64_samples_1000_tokens_whole():
    model = random_model(block_size=64, vocab=256)
    res = sample_text(
        model, BytesTokenizer(), "hi", SampleConfig(max_new_tokens=1000, temperature=1.0, seed=0, stop_at_eot=False)
    )
    assert len(res.samples[0].tokens) == 1000 and res.samples[0].stop_reason == "max_new_tokens"
    assert res.new_tokens == 1000 and res.prompt_tokens_dropped == 0


def test_long_prompt_keeps_its_last_tokens():
    model = random_model(block_size=16, vocab=256)
    tok = BytesTokenizer()
    long = "abcdefghijklmnopqrstuvwxyz0123456789"  # 36 byte tokens
    cfg = SampleConfig(max_new_tokens=20, temperature=0, stop_at_eot=False)
    res = sample_text(model, tok, long, cfg)
    assert res.prompt_tokens_dropped == 36 - 16
    assert res.samples[0].tokens == sample_text(model, tok, long[-16:], cfg).samples[0].tokens


def test_cli_n_past_the_context_is_honoured(tmp_path):
    # A character vocabulary without an end-of-text token: a random model drawing 300 of 256 bytes
    # would likely draw byte 0, the bytes vocabulary's end-of-text, and stop early (rightly)
    chars = [chr(c) for c in range(32, 127)] + ["\n"]
    model = random_model(block_size=64, vocab=len(chars))
    tok = CharTokenizer(chars, None, spec="test", source="test")
    ck = save_checkpoint(tmp_path / "ck", model, config=model.config, tokenizer=tok)
    r = run_cli("sample", "x" * 100, "--model", ck, "-n", "300", "--seed", "1", "--device", "cpu", "--json", check=True)
    out = json.loads(r.stdout)
    assert out["samples"][0]["tokens"] == 300 and out["samples"][0]["stop"] == "max_new_tokens"
    assert out["prompt_tokens_dropped"] == 36
    r = run_cli("sample", "x" * 100, "--model", ck, "-n", "300", "--seed", "1", "--device", "cpu", check=True)
    assert "first 36 tokens were not seen" in r.stderr and "context length" not in r.stderr


def test_cli_stops_at_end_of_text_unless_told_to_ignore_it(tmp_path):
    chars = [chr(c) for c in range(32, 127)]
    model = random_model(block_size=64, vocab=len(chars))
    free = sample_text(
        model, CharTokenizer(chars, None, spec="t", source="t"), "ab", SampleConfig(max_new_tokens=20, temperature=0)
    ).samples[0]
    eot = free.tokens[3]  # the greedy run's fourth token becomes the vocabulary's end-of-text
    first = free.tokens.index(eot)
    ck = save_checkpoint(
        tmp_path / "ck", model, config=model.config, tokenizer=CharTokenizer(chars, eot, spec="t", source="t")
    )
    args = ["sample", "ab", "--model", ck, "-n", "20", "--temperature", "0", "--device", "cpu", "--json"]
    stopped = json.loads(run_cli(*args, check=True).stdout)["samples"][0]
    assert stopped["stop"] == "eot" and stopped["tokens"] == first
    whole = json.loads(run_cli(*args, "--ignore-eot", check=True).stdout)["samples"][0]
    assert whole["stop"] == "max_new_tokens" and whole["tokens"] == 20
    assert whole["text"] == free.text
