"""`gptkit serve` with the real openai client on loopback: greedy text equal to `gptkit sample`'s for one
and for four concurrent clients, streaming, seeds under load, stop strings, a client that goes away,
the limits and the errors; and the text pipeline (whole UTF-8 characters, stop strings) directly."""

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from conftest import run_cli
from servefixtures import Server, tiny_checkpoint

from gptkit.serve.engine import TextStream
from gptkit.tokenizer import BytesTokenizer, get_tokenizer

BLOCK = 32  # the tiny model's context: 40 new tokens after these prompts restart its window
PROMPTS = ["Hello", "The quick brown fox jumps over", "A much longer prompt, so that the rows of one batch", "x"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    ck = tiny_checkpoint(tmp_path_factory.mktemp("serve") / "run" / "step_000010", block_size=BLOCK)
    s = Server(ck.parent, "--max-batch", "4", "--max-queue", "1", "--max-tokens", "5000")
    yield s
    s.close()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def sample_greedy(server, prompt: str, n: int) -> dict:
    """`gptkit sample --temperature 0` on the same checkpoint: (text, tokens)."""
    r = run_cli(
        "sample", prompt, "-m", server.model, "-t", "0", "-n", n, "--device", "cpu", "--precision", "fp32", "--json"
    )
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["samples"][0]


def test_greedy_equals_sample_for_one_client(server, client):
    want = sample_greedy(server, PROMPTS[1], 40)
    got = client.completions.create(model=server.model, prompt=PROMPTS[1], max_tokens=40, temperature=0)
    assert got.choices[0].text == want["text"]
    assert got.usage.completion_tokens == want["tokens"] == 40
    assert got.usage.prompt_tokens == len(get_tokenizer("gpt2").encode(PROMPTS[1]))
    assert got.choices[0].finish_reason == "length"


def test_greedy_equals_sample_for_four_concurrent_clients(server, client):
    """Four prompts of different lengths decode in one batch (per-row positions, padded prefill, each
    row's window restarting at its own step) and each gets what it gets alone."""
    want = [sample_greedy(server, p, 40) for p in PROMPTS]
    start = threading.Barrier(len(PROMPTS))

    def ask(prompt):
        start.wait()
        return client.completions.create(model=server.model, prompt=prompt, max_tokens=40, temperature=0)

    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        got = list(pool.map(ask, PROMPTS))
    assert [g.choices[0].text for g in got] == [w["text"] for w in want]
    assert [g.usage.completion_tokens for g in got] == [w["tokens"] for w in want]


def test_stream_comes_in_chunks_that_join_to_the_whole_text(server, client):
    whole = client.completions.create(model=server.model, prompt=PROMPTS[0], max_tokens=30, temperature=0)
    chunks = list(
        client.completions.create(model=server.model, prompt=PROMPTS[0], max_tokens=30, temperature=0, stream=True)
    )
    texts = [c.choices[0].text for c in chunks]
    assert sum(1 for t in texts if t) > 1
    assert "".join(texts) == whole.choices[0].text
    assert chunks[-1].choices[0].finish_reason == "length" and all(
        c.choices[0].finish_reason is None for c in chunks[:-1]
    )
    assert chunks[-1].usage.completion_tokens == 30 and chunks[-1].usage.total_tokens == 30 + whole.usage.prompt_tokens


def test_seed_gives_the_same_text_alone_and_under_load(server, client):
    def seeded(seed, prompt=PROMPTS[2]):
        r = client.completions.create(
            model=server.model, prompt=prompt, max_tokens=30, temperature=0.9, seed=seed, extra_body={"top_k": 50}
        )
        return r.choices[0].text

    alone = seeded(5)
    assert seeded(6) != alone  # the seed matters
    with ThreadPoolExecutor(4) as pool:
        others = [pool.submit(seeded, 100 + i, PROMPTS[i]) for i in range(3)]
        under_load = pool.submit(seeded, 5)
        assert under_load.result() == alone
        [f.result() for f in others]


def test_stop_string_spanning_tokens_is_cut_and_never_streamed(server, client):
    tok = get_tokenizer("gpt2")
    full = (
        client.completions.create(model=server.model, prompt=PROMPTS[0], max_tokens=30, temperature=0).choices[0].text
    )
    ids = tok.encode(full)
    # a stop string made of the end of one token and the start of the next
    cut = next(
        i for i in range(3, len(ids)) if len(tok.decode(ids[i - 1 : i])) > 1 and len(tok.decode(ids[i : i + 1])) > 1
    )
    head = tok.decode(ids[:cut])
    stop = head[-2:] + tok.decode(ids[cut : cut + 1])[:2]
    at = full.index(stop)
    got = client.completions.create(model=server.model, prompt=PROMPTS[0], max_tokens=30, temperature=0, stop=[stop])
    assert got.choices[0].text == full[:at] and got.choices[0].finish_reason == "stop"
    streamed = list(
        client.completions.create(
            model=server.model, prompt=PROMPTS[0], max_tokens=30, temperature=0, stop=stop, stream=True
        )
    )
    texts = [c.choices[0].text for c in streamed]
    assert "".join(texts) == full[:at] and streamed[-1].choices[0].finish_reason == "stop"


def test_client_that_goes_away_frees_its_row(server):
    server.wait_idle()
    before = server.health()["generated_tokens"]
    body = {"model": server.model, "prompt": "Hello", "max_tokens": 5000, "temperature": 0, "stream": True}
    with httpx.Client(timeout=60) as http, http.stream("POST", server.url + "/v1/completions", json=body) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        assert next(line for line in lines if line.startswith("data: "))
    # the connection is closed here, long before 5000 tokens
    h = server.wait_idle()
    assert h["active"] == 0
    assert h["generated_tokens"] - before < 5000


def test_past_the_limit_is_a_429(server, client):
    """4 rows decoding and 1 waiting: a sixth request is refused, OpenAI-style."""
    server.wait_idle()
    body = {"model": server.model, "prompt": "Hello", "max_tokens": 5000, "temperature": 0, "stream": True}
    with httpx.Client(timeout=60) as http:
        streams = [http.stream("POST", server.url + "/v1/completions", json=body) for _ in range(5)]
        opened = [s.__enter__() for s in streams]
        try:
            assert all(r.status_code == 200 for r in opened)
            with pytest.raises(openai.RateLimitError) as e:
                client.completions.create(model=server.model, prompt="Hi", max_tokens=1)
            assert e.value.status_code == 429 and e.value.code == "rate_limit_exceeded"
        finally:
            for s in streams:
                s.__exit__(None, None, None)
    assert server.wait_idle()["active"] == 0


def test_bad_requests_are_openai_errors(server, client):
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.completions.create(model=server.model, prompt="Hi", temperature=-1)
    with pytest.raises(openai.BadRequestError, match="unknown parameter 'frobnicate'"):
        client.completions.create(model=server.model, prompt="Hi", extra_body={"frobnicate": 1})
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=server.model, prompt="word " * 100, max_tokens=1)
    assert e.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError, match="n=2 is not supported"):
        client.completions.create(model=server.model, prompt="Hi", n=2)
    with pytest.raises(openai.BadRequestError, match="max_tokens must be from 1 to 5000"):
        client.completions.create(model=server.model, prompt="Hi", max_tokens=5001)
    with pytest.raises(openai.NotFoundError, match="not served here"):
        client.completions.create(model="gpt-4", prompt="Hi")
    with pytest.raises(openai.BadRequestError, match="no chat format"):
        client.chat.completions.create(model=server.model, messages=[{"role": "user", "content": "Hi"}])
    r = httpx.post(server.url + "/v1/completions", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.post(server.url + "/v1/completions", content=b"x" * (1 << 20 + 1))
    assert r.status_code == 413 and "at most" in r.json()["error"]["message"]
    assert [m.id for m in client.models.list()] == [server.model]
    r = httpx.options(server.url + "/v1/completions", headers={"Origin": "http://elsewhere.test"})
    assert r.status_code == 405 and "access-control-allow-origin" not in r.headers  # CORS is off by default
    assert "Traceback" not in "".join(server.log)


# --- the text a request is sent ------------------------------------------------------------------


def test_text_stream_never_splits_a_character():
    tok = BytesTokenizer()
    text = "héllo 你好 🙂!"
    ts = TextStream(tok, [])
    pieces = [ts.push(b) for b in text.encode()] + [ts.finish()]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)
    assert sum(1 for p in pieces if p) == len(text)  # one piece per character: nothing held longer


def test_text_stream_holds_back_a_stop_string_across_tokens():
    tok = BytesTokenizer()
    ts = TextStream(tok, ["END", "你好"])
    pieces = [ts.push(b) for b in "abc 你好 xyz".encode()]
    assert "".join(pieces) == "abc " and ts.stopped
    assert all("你" not in p for p in pieces)
    ts = TextStream(tok, ["END"])
    pieces = [ts.push(b) for b in b"xEN"]
    assert pieces == ["x", "", ""]  # "EN" could still become "END": held back
    assert ts.finish() == "EN"  # it did not: released at the end


# --- the key and the host ------------------------------------------------------------------------


def test_api_key_comes_from_a_file_or_the_environment_never_both(tmp_path):
    from gptkit.errors import GptkitError
    from gptkit.serve.server import is_loopback, read_api_key

    f = tmp_path / "key"
    f.write_text("sk-abc\n")
    assert read_api_key(str(f), {}) == ("sk-abc", f"from {f}")
    assert read_api_key(None, {"GPTKIT_API_KEY": "sk-env"}) == ("sk-env", "from GPTKIT_API_KEY")
    assert read_api_key(None, {}) == (None, "none")
    with pytest.raises(GptkitError, match="not both"):
        read_api_key(str(f), {"GPTKIT_API_KEY": "sk-env"})
    f.write_text("two words\n")
    with pytest.raises(GptkitError, match="one word"):
        read_api_key(str(f), {})
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5")


def test_cli_unreadable_key_file_is_one_line_before_loading(tmp_path):
    from conftest import assert_one_line_error

    r = run_cli("serve", "no-such-model", "--api-key-file", tmp_path / "missing")
    assert "--api-key-file" in assert_one_line_error(r)
