"""Generation: sampling filters, KV cache vs full recompute, seeds, EOT, UTF-8 streaming, the CLI."""

import json

import pytest
import torch
from conftest import assert_one_line_error, run_cli

from gptkit.checkpoint import save_checkpoint
from gptkit.generate import (
    SampleConfig,
    StreamDecoder,
    generate,
    logits_to_probs,
    next_token,
    sample_text,
)
from gptkit.model import GPT, GPTConfig
from gptkit.models import prepare_for_decoding, resolve_model_path
from gptkit.tokenizer import BytesTokenizer, get_tokenizer


def random_model(vocab=256, padded=None, seed=0, **kw):
    cfg = dict(block_size=64, vocab_size=vocab, padded_vocab_size=padded or vocab, n_layer=2, n_head=2, n_embd=32)
    cfg.update(kw)
    torch.manual_seed(seed)
    model = GPT(GPTConfig(**cfg)).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # every weight non-trivial, so greedy choices are well separated
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


# --- logits -> probabilities -------------------------------------------------------------------


def test_top_k_keeps_exactly_the_k_largest():
    logits = torch.tensor([[1.0, 4.0, 3.0, -2.0, 2.0]])
    probs = logits_to_probs(logits, temperature=1.0, top_k=2)
    assert probs[0].nonzero().flatten().tolist() == [1, 2]
    expected = torch.softmax(torch.tensor([4.0, 3.0]), dim=0)
    torch.testing.assert_close(probs[0, [1, 2]], expected)


def test_top_p_keeps_the_smallest_set_reaching_p():
    p = torch.tensor([0.05, 0.5, 0.15, 0.3])  # deliberately unsorted
    logits = p.log().unsqueeze(0)
    kept = lambda top_p: sorted(logits_to_probs(logits, top_p=top_p)[0].nonzero().flatten().tolist())  # noqa: E731
    assert kept(0.75) == [1, 3]  # 0.5 + 0.3 reaches 0.75
    assert kept(0.85) == [1, 2, 3]  # needs the 0.15 too
    assert kept(0.01) == [1]  # the most likely token always survives
    assert kept(1.0) == [0, 1, 2, 3]
    probs = logits_to_probs(logits, top_p=0.75)[0]
    torch.testing.assert_close(probs[[1, 3]], torch.tensor([0.5, 0.3]) / 0.8)


def test_temperature_scales_logits():
    logits = torch.randn(3, 10)
    torch.testing.assert_close(logits_to_probs(logits, temperature=0.5), torch.softmax(logits / 0.5, dim=-1))


def test_sampling_draws_from_the_filtered_distribution():
    logits = torch.tensor([[0.0, 2.0, 1.0, 1.5, -1.0]]).repeat(4000, 1)
    g = torch.Generator().manual_seed(0)
    ids = next_token(logits, vocab_size=5, temperature=1.0, top_k=2, generator=g)
    assert set(ids.tolist()) == {1, 3}
    expected = torch.softmax(torch.tensor([2.0, 1.5]), dim=0)[0].item()
    assert abs((ids == 1).float().mean().item() - expected) < 0.03
    ids = next_token(logits, vocab_size=5, temperature=1.0, top_p=0.5, generator=g)
    assert set(ids.tolist()) == {1, 3}  # p(1) = 0.46 alone is short of 0.5


def test_padded_vocab_ids_are_never_sampled():
    logits = torch.zeros(4, 64)
    logits[:, 50:] = 100.0  # padding rows with the highest logits
    assert (next_token(logits, vocab_size=50, temperature=0) < 50).all()
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        assert (next_token(logits, vocab_size=50, temperature=1.0, generator=g) < 50).all()


# --- generation --------------------------------------------------------------------------------


def tokens(model, prompt, cfg, **kw):
    out = list(generate(model, prompt, cfg, vocab_size=model.config.vocab_size, **kw))
    return torch.stack(out, dim=1).tolist()  # (B, steps)


def test_greedy_with_kv_cache_equals_full_recompute():
    model = random_model(vocab=300, padded=320)
    cfg = SampleConfig(max_new_tokens=40, temperature=0, num_samples=2, stop_at_eot=False)
    cached = tokens(model, [5, 17, 250, 3], cfg, use_cache=True)
    full = tokens(model, [5, 17, 250, 3], cfg, use_cache=False)
    assert cached == full
    assert len(cached[0]) == 40 and len(set(cached[0])) > 2  # a real continuation, not one repeated id
    assert all(b.attn.kv_cache is None for b in model.transformer.h)  # cache released afterwards


@torch.inference_mode()
def test_cached_logits_equal_full_forward_at_every_position():
    model = random_model(vocab=300, padded=320)
    idx = torch.randint(0, 300, (2, 24), generator=torch.Generator().manual_seed(3))
    full, _ = model(idx)
    model.setup_kv_cache(2, max_len=24)
    try:
        steps = [model(idx[:, :6], pos=0)[0]]  # prefill
        steps += [model(idx[:, t : t + 1], pos=t)[0] for t in range(6, 20)]  # decode one at a time
        steps.append(model(idx[:, 20:], pos=20)[0])  # a chunk after a cached prefix (masked path)
    finally:
        model.clear_kv_cache()
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-5)


def test_decoding_layout_keeps_logits_and_tokens():
    import copy

    model = random_model(vocab=300, padded=320)
    fast = prepare_for_decoding(copy.deepcopy(model))
    assert fast.decoding_layout and type(fast.lm_head).__name__ == "WideLinear"
    idx = torch.randint(0, 300, (2, 20), generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        # the padded vocabulary rows are cut off once at load: logits over the real 300 only
        torch.testing.assert_close(fast(idx)[0], model(idx)[0][..., :300], rtol=1e-5, atol=1e-5)
    cfg = SampleConfig(max_new_tokens=30, temperature=0, stop_at_eot=False)
    assert tokens(fast, [1, 2, 3], cfg) == tokens(model, [1, 2, 3], cfg)


def test_stops_at_eot():
    model = random_model()
    free = tokens(model, [65, 66], SampleConfig(max_new_tokens=30, temperature=0, stop_at_eot=False))[0]
    eot = free[5]
    first = free.index(eot)
    stopped = tokens(model, [65, 66], SampleConfig(max_new_tokens=30, temperature=0), eot_token=eot)[0]
    assert len(stopped) == first + 1 and stopped[-1] == eot and stopped[:first] == free[:first]

    class Tok(BytesTokenizer):
        eot_token = eot

    res = sample_text(model, Tok(), "AB", SampleConfig(max_new_tokens=30, temperature=0))
    assert res.samples[0].stop_reason == "eot"
    assert res.samples[0].tokens == free[:first]


def test_same_seed_same_text_different_seed_different_text():
    model = random_model()
    tok = BytesTokenizer()

    def cfg(seed):
        return SampleConfig(max_new_tokens=40, temperature=1.0, top_k=None, num_samples=2, seed=seed, stop_at_eot=False)

    a = [s.tokens for s in sample_text(model, tok, "hello", cfg(1)).samples]
    b = [s.tokens for s in sample_text(model, tok, "hello", cfg(1)).samples]
    c = [s.tokens for s in sample_text(model, tok, "hello", cfg(2)).samples]
    assert a == b
    assert a != c
    assert a[0] != a[1]  # the samples of one batch are independent draws


def test_utf8_streaming_never_splits_a_character():
    tok = get_tokenizer("gpt2")
    text = "你好，世界"
    ids = tok.encode(text)
    naive = [tok.decode([i]) for i in ids]
    assert any("\ufffd" in piece for piece in naive)  # GPT-2 splits these characters across tokens
    dec = StreamDecoder(tok)
    pieces = [dec.push([i]) for i in ids] + [dec.flush()]
    assert all("\ufffd" not in piece for piece in pieces)
    assert "".join(pieces) == text
    assert sum(1 for p in pieces if p) > 1  # and it did stream, character by character


# --- model resolution and the CLI --------------------------------------------------------------


@pytest.fixture
def gpt2_vocab_checkpoint(tmp_path):
    model = random_model(vocab=50257, padded=50304, block_size=32, n_embd=16)
    return save_checkpoint(tmp_path / "run" / "step_000010", model, config=model.config, tokenizer="gpt2")


def test_cli_sample_json_is_reproducible_and_streams(gpt2_vocab_checkpoint):
    args = [
        "sample",
        "Hello",
        "--model",
        gpt2_vocab_checkpoint.parent,
        "--seed",
        "7",
        "-n",
        "12",
        "--top-k",
        "50",
        "--num-samples",
        "2",
        "--device",
        "cpu",
    ]
    a = json.loads(run_cli(*args, "--json", check=True).stdout)
    assert len(a["samples"]) == 2 and all(s["tokens"] == 12 for s in a["samples"])
    assert a["samples"][0]["text"] != a["samples"][1]["text"]
    streamed = run_cli(*args, check=True)  # another process, same seed: the same text, streamed
    assert streamed.stdout.startswith("--- sample 1/2 ---\nHello" + a["samples"][0]["text"])  # each has its header
    assert "--- sample 2/2 ---" in streamed.stdout and a["samples"][1]["text"] in streamed.stdout


def test_cli_vocab_mismatch_is_one_line(tmp_path):
    model = random_model(vocab=256)
    ck = save_checkpoint(tmp_path / "ck", model, config=model.config, tokenizer="gpt2")  # wrong tokenizer
    line = assert_one_line_error(run_cli("sample", "hi", "--model", ck, "--device", "cpu"))
    assert "vocabulary of 256" in line and "50257" in line


def test_cli_missing_model_is_one_line(tmp_path):
    line = assert_one_line_error(run_cli("sample", "hi", "--model", tmp_path / "nope.pt"))
    assert "nope.pt" in line


def test_default_model_is_the_newest_run(gptkit_home):
    from gptkit import paths

    old = random_model()
    save_checkpoint(paths.runs_dir("old") / "step_000001", old, config=old.config, tokenizer="bytes")
    import os
    import time

    past = time.time() - 100
    os.utime(paths.runs_dir("old") / "step_000001", (past, past))
    new = save_checkpoint(paths.runs_dir("new") / "step_000005", old, config=old.config, tokenizer="bytes")
    assert resolve_model_path(None) == new


def test_hub_name_uses_the_downloaded_copy(gptkit_home, tmp_path):
    """`--model gpt2` with data_dir('gpt2') holding an HF directory loads it, with no network."""
    from gptkit import paths
    from gptkit.formats.convert import convert

    model = random_model(vocab=256)
    ck = save_checkpoint(tmp_path / "ck", model, config=model.config, tokenizer="bytes")
    convert(ck, paths.data_dir("gpt2"), to="hf")
    assert resolve_model_path("gpt2") == paths.data_dir("gpt2")
    r = run_cli(
        "sample",
        "abc",
        "--model",
        "gpt2",
        "-n",
        "5",
        "--temperature",
        "0",
        "--json",
        "--device",
        "cpu",
        "--precision",
        "fp32",  # compared with the fp32 model below; the default decodes in bf16 weights where native
        env={"HF_ENDPOINT": "http://127.0.0.1:9"},
        check=True,
    )
    out = json.loads(r.stdout)
    expected = sample_text(model, BytesTokenizer(), "abc", SampleConfig(max_new_tokens=5, temperature=0))
    assert out["samples"][0]["text"] == expected.samples[0].text


def test_hub_name_is_fetched_through_the_mirror(gptkit_home, tmp_path):
    """`--model gpt2` with nothing local: the real huggingface_hub client downloads it from our mirror."""
    from hubfixtures import make_model_repo, running_mirror

    from gptkit import paths
    from gptkit.models import load_for_sampling

    make_model_repo(tmp_path / "hub" / "gpt2", "openai-community/gpt2", vocab="gpt2", n_positions=32)
    with running_mirror(tmp_path / "hub") as server:
        r = run_cli(
            "sample",
            "Hello",
            "--model",
            "gpt2",
            "--endpoint",
            server.url,
            "-n",
            "6",
            "--temperature",
            "0",
            "--json",
            "--device",
            "cpu",
            check=True,
        )
    out = json.loads(r.stdout)
    assert (paths.data_dir("gpt2") / "model.safetensors").is_file()  # where `gptkit download gpt2` puts it
    model, tok, _ = load_for_sampling(paths.data_dir("gpt2"), torch.device("cpu"))
    expected = sample_text(model, tok, "Hello", SampleConfig(max_new_tokens=6, temperature=0))
    assert out["samples"][0]["text"] == expected.samples[0].text and out["samples"][0]["tokens"] == 6


# --- --model as a run name, the places looked in, the download drawn on stderr -----------------


def test_model_by_run_name_is_its_latest_checkpoint(gptkit_home, tmp_path):
    """`--model NAME` finds $GPTKIT_HOME/runs/NAME from any directory, as plot and train do."""
    from gptkit import paths

    old, new = random_model(seed=1), random_model(seed=2)
    save_checkpoint(paths.runs_dir("myrun") / "step_000010", old, config=old.config, tokenizer="bytes")
    latest = save_checkpoint(paths.runs_dir("myrun") / "step_000020", new, config=new.config, tokenizer="bytes")
    assert resolve_model_path("myrun") == latest
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    args = ("sample", "abc", "--model", "myrun", "-n", "5", "--temperature", "0", "--device", "cpu", "--json")
    r = run_cli(*args, cwd=elsewhere, env={"HF_ENDPOINT": "http://127.0.0.1:9"}, check=True)
    out = json.loads(r.stdout)
    assert out["model"] == str(latest)
    expected = sample_text(new, BytesTokenizer(), "abc", SampleConfig(max_new_tokens=5, temperature=0))
    assert out["samples"][0]["text"] == expected.samples[0].text
    assert "downloading" not in r.stderr  # found locally: the hub is never asked


def test_run_without_a_checkpoint_is_one_line(gptkit_home):
    from gptkit import paths

    run = paths.runs_dir("fresh")
    run.mkdir(parents=True)
    (run / "config.json").write_text("{}")
    line = assert_one_line_error(run_cli("sample", "hi", "--model", "fresh", "--device", "cpu"))
    assert str(run) in line and "no checkpoint yet" in line


def test_unknown_name_says_where_it_looked(gptkit_home):
    """Not a path, run, download or hub name: one line naming each local place, and no network."""
    from gptkit import paths

    line = assert_one_line_error(
        run_cli("sample", "hi", "--model", "nosuchrun", env={"HF_ENDPOINT": "http://127.0.0.1:9"})
    )
    assert line.startswith("gptkit: error: --model nosuchrun: not a file")
    assert str(paths.runs_dir()) in line and str(paths.data_dir()) in line and "ORG/NAME" in line
    line = assert_one_line_error(run_cli("sample", "hi", "--model", "fineweb"))
    assert "dataset" in line and str(paths.runs_dir()) in line


def test_unreachable_hub_error_names_the_local_places_first(gptkit_home):
    from gptkit import paths

    r = run_cli("sample", "hi", "--model", "someorg/tiny", "--endpoint", "http://127.0.0.1:9", "--device", "cpu")
    assert r.returncode == 1 and "Traceback" not in r.stderr and r.stdout == ""
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("gptkit: error: --model someorg/tiny: not a file, not a run in ")
    assert str(paths.runs_dir()) in last and str(paths.data_dir()) in last
    assert "http://127.0.0.1:9 cannot be reached" in last
    # before it, the notes of the attempt: what was being downloaded, from where, and the retries
    assert "downloading someorg/tiny from http://127.0.0.1:9" in r.stderr and "retry 1/" in r.stderr


def test_no_model_says_which_it_picked(gptkit_home):
    from gptkit import paths

    m = random_model()
    save_checkpoint(paths.runs_dir("only") / "step_000003", m, config=m.config, tokenizer="bytes")
    r = run_cli("sample", "a", "-n", "2", "--device", "cpu", "--json", check=True)
    assert json.loads(r.stdout)["model"].endswith("step_000003")
    assert "no --model: the newest run, only" in r.stderr


def test_hub_download_is_drawn_on_stderr_not_stdout(gptkit_home, tmp_path):
    """A hub name fetched for sampling: the notes and each finished file on stderr, the JSON alone on stdout."""
    from hubfixtures import make_model_repo, running_mirror

    from gptkit import paths

    make_model_repo(tmp_path / "hub" / "gpt2", "openai-community/gpt2", vocab="gpt2", n_positions=32)
    with running_mirror(tmp_path / "hub") as server:
        args = ("sample", "Hi", "--model", "gpt2", "--endpoint", server.url, "-n", "3", "--device", "cpu")
        r = run_cli(*args, "--json", check=True)
        assert json.loads(r.stdout)["samples"][0]["tokens"] == 3  # stdout is the JSON document, nothing else
        assert f"gptkit: --model gpt2: not on disk; downloading openai-community/gpt2 from {server.url}" in r.stderr
        assert f"into {paths.data_dir('gpt2')}" in r.stderr
        assert "Xet transfers off" in r.stderr  # the library's own note, passed through
        assert "  model.safetensors (" in r.stderr and "  config.json (" in r.stderr  # one line per file
        again = run_cli(*args, check=True)  # now on disk: no download, nothing drawn
    assert "downloading" not in again.stderr and "model.safetensors (" not in again.stderr
    assert again.stdout.startswith("Hi")


def test_download_display_takes_events_from_many_threads(capsys):
    """The bars start with the first event, which the download's workers send at once: one display, no lost bar."""
    import threading

    from gptkit.cli.progress import DownloadDisplay
    from gptkit.hub.transfer import Progress

    files = [f"f{i}.bin" for i in range(8)]
    total = 1000 * len(files)
    start = threading.Barrier(len(files))
    done = [0]

    def worker(display, name):
        start.wait()
        for k in range(1, 11):
            done[0] += 100  # roughly; the display only draws it
            display.update(Progress(name, 100 * k, 1000, min(done[0], total), total, finished=k == 10))
        display.log(f"{name} ok")

    with DownloadDisplay(bars=True, prefix="gptkit: ") as display:
        threads = [threading.Thread(target=worker, args=(display, f)) for f in files]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert display.live is not None and display.tasks == {}  # every file's bar gone once finished
        assert len(display.live.tasks) == 1  # only the overall bar, in the one display
    err = capsys.readouterr().err
    assert all(f"gptkit: {f} ok" in err for f in files)


def test_ctrl_c_while_sampling_is_one_line(tmp_path):
    """Typer hands a Ctrl-C inside a command back as exit code 130; gptkit still says so in one line."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from gptkit.tokenizer import CharTokenizer

    chars = [chr(c) for c in range(32, 127)]  # no end-of-text token: the generation never ends by itself
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=32, n_layer=1, n_head=1, n_embd=16).with_vocab(len(chars)))
    tok = CharTokenizer(chars, None, spec="test", source="test")
    ck = save_checkpoint(tmp_path / "ck", model, config=model.config, tokenizer=tok)
    p = subprocess.Popen(
        [sys.executable, "-m", "gptkit", "sample", "x", "--model", str(ck), "-n", "10000000", "--device", "cpu"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        # Ctrl-C as a shell delivers it: the test worker's own SIGINT disposition and mask (another
        # test may leave it ignored or blocked, and a child inherits both) must not reach the child.
        preexec_fn=lambda: (
            signal.signal(signal.SIGINT, signal.SIG_DFL),
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT}),
        ),
    )
    try:
        assert p.stdout.read(1) == b"x"  # the prompt is echoed once the model is loaded: generating now
        time.sleep(0.3)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=120)
    finally:
        p.kill()
    assert p.returncode == 130 and out.endswith(b"\n")  # the text ends its line before the message
    lines = [ln for ln in err.decode().splitlines() if ln.strip() and not ln.startswith("gptkit: sampling from")]
    assert lines == ["gptkit: interrupted"], err.decode()
