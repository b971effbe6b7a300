"""Text generation, built from small pure functions (the gpt-fast way):

    logits_to_probs   logits -> probabilities (temperature, top-k, top-p)
    next_token        logits -> one token per row (greedy at temperature 0)
    prefill           the prompt through the model, filling the KV cache -> first new token
    decode_one        one token through the model at position `pos` -> the next token
    cached_decode     prefill, then decode_one repeated, yielding each token as it is made
    generate          composes them around the model's pre-allocated KV cache; stops at EOT

Past the context. Positions are learned and absolute (wpe has block_size rows), so a rolling KV
cache, whose keys were computed at other positions, would be wrong. Instead the window restarts:
when the cache is full, the most recent `window_keep(block_size)` tokens (half the context) are
prefilled again at positions 0..k-1 and decoding goes on from there. Every token is then predicted
from at most block_size preceding tokens at positions 0..block_size-1, as in training, at the cost
of one k-token forward every block_size - k tokens. A prompt longer than the context keeps its last
block_size tokens (sample_text reports how many it dropped). `reference_decode` is the same window
policy without a cache, for the tests.

Plus `StreamDecoder`, which turns a stream of token ids into text without ever printing half a
character, and `sample_text`, which puts them together. Finding and loading the model is
gptkit.models.
"""

from __future__ import annotations

import codecs
import contextlib
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from functools import partial

import torch

from gptkit.errors import GptkitError
from gptkit.model import GPT


@dataclass
class SampleConfig:
    max_new_tokens: int = 200
    temperature: float = 0.8  # 0 = greedy
    top_k: int | None = 200
    top_p: float | None = None
    num_samples: int = 1
    seed: int | None = None
    stop_at_eot: bool = True

    def validate(self) -> None:
        if self.max_new_tokens < 1:
            raise GptkitError("--max-new-tokens must be at least 1")
        if self.temperature < 0:
            raise GptkitError("--temperature must be >= 0 (0 means greedy)")
        if self.top_k is not None and self.top_k < 1:
            raise GptkitError(f"--top-k must be at least 1, or 0 for no limit (got {self.top_k})")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise GptkitError("--top-p must be in (0, 1]")
        if self.num_samples < 1:
            raise GptkitError("--num-samples must be at least 1")


# --- logits -> token ---------------------------------------------------------------------------


def logits_to_probs(
    logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None
) -> torch.Tensor:
    """(B, V) logits -> (B, V) probabilities after temperature, then top-k, then top-p (nucleus)."""
    logits = logits.float() / max(temperature, 1e-5)
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1) the k-th largest
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        sorted_probs = torch.softmax(sorted_logits, dim=-1)
        # Drop a token once the tokens ranked above it already hold top_p of the mass: what is
        # kept is the smallest set reaching top_p, and the most likely token always survives.
        before = sorted_probs.cumsum(dim=-1) - sorted_probs
        drop_sorted = before >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return torch.softmax(logits, dim=-1)


def next_token(
    logits: torch.Tensor,
    *,
    vocab_size: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """(B, padded_V) logits of the last position -> (B,) token ids, always < vocab_size.

    The padded rows of the vocabulary (ids >= the tokenizer's vocab_size) are cut off first, so
    they can never be sampled, whatever their logits.
    """
    logits = logits[:, :vocab_size]
    if logits.dtype in (torch.bfloat16, torch.float16):
        # fp32 first: the same values, and torch's argmax and topk over 50k bf16 logits take ~3x as
        # long as the upcast plus the fp32 kernel (187 against 61 us on the EPYC of attention.py)
        logits = logits.float()
    if temperature == 0:
        return logits.argmax(dim=-1)
    if top_k is not None and top_k < vocab_size:
        # Same distribution as masking all but the top k, but the softmax, top-p and the draw then
        # touch k candidates instead of 50,257: on a CPU that is most of the sampling time.
        values, ids = torch.topk(logits, top_k, dim=-1)  # (B, k) each
        probs = logits_to_probs(values, temperature, None, top_p)
        return ids.gather(-1, torch.multinomial(probs, 1, generator=generator)).squeeze(-1)
    probs = logits_to_probs(logits, temperature, None, top_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


Sampler = Callable[[torch.Tensor], torch.Tensor]  # (B, V) logits -> (B,) ids


def make_sampler(cfg: SampleConfig, vocab_size: int, generator: torch.Generator | None) -> Sampler:
    return partial(
        next_token,
        vocab_size=vocab_size,
        temperature=cfg.temperature,
        top_k=cfg.top_k,
        top_p=cfg.top_p,
        generator=generator,
    )


# --- model steps -------------------------------------------------------------------------------


@contextlib.contextmanager
def matvec_kernels(model: GPT, rows: int) -> Iterator[None]:
    """bf16 weights on a CPU, one row: torch's own matrix-vector kernels instead of oneDNN's.

    Decoding is one (1, in) x (out, in)^T product per weight. oneDNN's bf16 matmul, which torch picks
    whenever the CPU has AVX512-BF16, streamed such a product at 3-5 GB/s on the AVX512-BF16 EPYC we
    measured; torch's native bf16 gemv (fp32 accumulation) at 15-19 GB/s, close to a plain read of the
    same bytes. So oneDNN is switched off while one token goes through the model. Not for a prompt:
    with several rows (a prompt, --num-samples) the native bf16 kernel is the slow one. fp32 (MKL) and other devices are left alone.
    """
    w = model.get_parameter("transformer.wte.weight")
    if rows != 1 or w.device.type != "cpu" or w.dtype != torch.bfloat16:
        yield
        return
    was = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False  # type: ignore[assignment]  # a ContextProp in torch's stubs
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = was


def prefill(model: GPT, idx: torch.Tensor, sample: Sampler) -> torch.Tensor:
    """Run the (B, T) prompt from position 0, filling the KV cache; return the first new (B,) token."""
    logits, _ = model(idx, pos=0)
    return sample(logits[:, -1])


def decode_one(model: GPT, token: torch.Tensor, pos: int, sample: Sampler) -> torch.Tensor:
    """Feed (B,) tokens at position `pos` (the cache holds 0..pos-1); return the next (B,) tokens."""
    with matvec_kernels(model, token.numel()):
        logits, _ = model(token.view(-1, 1), pos=pos)
    return sample(logits[:, -1])


def window_keep(block_size: int) -> int:
    """Tokens kept when the window restarts: half the context (at least one)."""
    return max(1, block_size // 2)


def crop_prompt(idx: torch.Tensor, block_size: int) -> torch.Tensor:
    """A (B, T) prompt longer than the context keeps its last block_size tokens."""
    return idx[:, -block_size:]


def reference_decode(model: GPT, idx: torch.Tensor, n: int, sample: Sampler) -> Generator[torch.Tensor]:
    """Decoding without a cache: at every step the whole window through the model, cropped exactly as
    `generate` crops it (the prompt to block_size; past block_size, the last window_keep tokens)."""
    block = model.config.block_size
    window = crop_prompt(idx, block)
    for _ in range(n):
        logits, _ = model(window)
        token = sample(logits[:, -1])
        window = torch.cat([window, token.view(-1, 1)], dim=1)
        if window.size(1) > block:
            window = window[:, -window_keep(block) :]
        yield token


def _runs(rows: list[int]) -> list[slice]:
    """Sorted row numbers -> the contiguous slices they form ([0, 1, 2, 5] -> 0:3, 5:6)."""
    out: list[slice] = []
    for r in rows:
        if out and out[-1].stop == r:
            out[-1] = slice(out[-1].start, r + 1)
        else:
            out.append(slice(r, r + 1))
    return out


class DecodeBatch:
    """Sequences decoding together: one forward per step for all of them, each at its own position.

    `gptkit serve` keeps its active requests in one (a request joins between two steps and leaves when
    it is done); `cached_decode`, and so `gptkit sample`, its --num-samples rows. Decoding one token
    reads every weight once whatever the batch, so n rows cost about what one does, until the
    matrix products stop being bound by memory.

    The rows are 0..n-1 of a KV cache sized for `capacity`: a new row is prefilled at n, a finished
    one is replaced by the last (its cache moved), so a step is one forward over a view of the first n
    rows (gptkit.model.KVCache.rows). Rows at one position decode with the plain integer position,
    exactly as a single sequence does; rows at different ones with per-row positions and a mask
    (model.RowPositions). Past the context each row's window restarts on its own, by the module
    docstring's rule, so a row's tokens are those it would get alone. Each row has its sampler (a
    request's temperature, top-k, top-p and seeded generator); rows sharing one are sampled in one
    call, as `sample`'s rows always were.
    """

    def __init__(self, model: GPT, capacity: int, max_len: int | None = None):
        self.model = model
        self.block = model.config.block_size
        self.keep = window_keep(self.block)
        self.capacity = capacity
        device = model.get_parameter("transformer.wte.weight").device
        model.setup_kv_cache(capacity, max_len=max_len or self.block)
        self.caches = [b.attn.kv_cache for b in model.transformer.blocks()]
        # Each row's window: the tokens its cache holds at positions 0..pos-1 (for restarts).
        self.held = torch.zeros(capacity, self.block, dtype=torch.long, device=device)
        self.last = torch.zeros(capacity, dtype=torch.long, device=device)  # each row's newest token
        self.pos: list[int] = []  # where each row's newest token goes
        self.samplers: list[Sampler] = []
        self.keys: list[object] = []  # the caller's name for each row (a request), in row order

    def __len__(self) -> int:
        return len(self.pos)

    def close(self) -> None:
        self.model.clear_kv_cache()

    def _rows(self, rows: slice) -> None:
        for c in self.caches:
            if c is not None:
                c.rows = rows

    def _sample(self, logits: torch.Tensor, start: int) -> torch.Tensor:
        """(m, V) logits of rows start..start+m-1 -> their (m,) tokens, each by its row's sampler."""
        samplers = self.samplers[start : start + logits.size(0)]
        if all(s is samplers[0] for s in samplers):
            return samplers[0](logits)
        out = torch.empty(logits.size(0), dtype=torch.long, device=logits.device)
        groups: dict[int, list[int]] = {}
        for j, s in enumerate(samplers):
            groups.setdefault(id(s), []).append(j)
        for js in groups.values():
            out[js] = samplers[js[0]](logits[js])
        return out

    def _prefill(self, start: int, windows: list[torch.Tensor]) -> torch.Tensor:
        """Windows (each <= block tokens) into rows start.. from position 0 -> their first tokens.
        Windows of different lengths are right-padded: causal attention keeps a row's own tokens from
        seeing its padding, and the padding's cache entries are overwritten before they are read."""
        lengths = [w.numel() for w in windows]
        T = max(lengths)
        if all(t == T for t in lengths):
            idx = torch.stack(windows)  # (m, T)
        else:
            idx = torch.zeros(len(windows), T, dtype=torch.long, device=self.held.device)
            for j, w in enumerate(windows):
                idx[j, : w.numel()] = w
        self._rows(slice(start, start + len(windows)))
        logits, _ = self.model(idx, pos=0)  # (m, T, V)
        if all(t == T for t in lengths):
            last = logits[:, -1]
        else:
            last = logits[torch.arange(len(windows)), torch.tensor(lengths, device=logits.device) - 1]
        tokens = self._sample(last, start)
        for j, w in enumerate(windows):
            self.held[start + j, : w.numel()] = w
            self.pos[start + j] = w.numel()
        self.last[start : start + len(windows)] = tokens
        return tokens

    def add(
        self, prompts: list[torch.Tensor], samplers: list[Sampler], keys: list[object] | None = None
    ) -> torch.Tensor:
        """New rows, prefilled together (a prompt longer than the context keeps its last block_size
        tokens) -> their first (m,) tokens."""
        if len(self) + len(prompts) > self.capacity:
            raise ValueError(f"{len(self) + len(prompts)} rows in a batch of {self.capacity}")
        start = len(self)
        self.pos += [0] * len(prompts)
        self.samplers += samplers
        self.keys += keys if keys is not None else [None] * len(prompts)
        return self._prefill(start, [p.reshape(-1)[-self.block :] for p in prompts])

    def step(self) -> torch.Tensor:
        """One new token for every row -> (n,), in row order (self.keys)."""
        n, block, keep = len(self), self.block, self.keep
        out = torch.empty(n, dtype=torch.long, device=self.last.device)
        full = [i for i in range(n) if self.pos[i] == block]  # cache full: restart the window
        if full:
            windows = [torch.cat([self.held[i, block - keep + 1 :], self.last[i : i + 1]]) for i in full]
            for run in _runs(full):
                out[run] = self._prefill(run.start, windows[full.index(run.start) : full.index(run.stop - 1) + 1])
        rest = [i for i in range(n) if i not in full] if full else list(range(n))
        for run in _runs(rest):
            a, b = run.start, run.stop
            pos = self.pos[a:b]
            token = self.last[a:b]
            for i in range(a, b):
                self.held[i, self.pos[i]] = self.last[i]
            at: int | torch.Tensor = pos[0]
            if any(p != pos[0] for p in pos):
                at = torch.tensor(pos, device=token.device)
            self._rows(slice(a, b))
            with matvec_kernels(self.model, b - a):
                logits, _ = self.model(token.view(-1, 1), pos=at)
            out[a:b] = new = self._sample(logits[:, -1], a)
            self.last[a:b] = new
            for i in range(a, b):
                self.pos[i] += 1
        return out

    def remove(self, key: object) -> None:
        """Drop the row named `key`; the last row takes its place (its cache, window and state)."""
        i, j = self.keys.index(key), len(self) - 1
        if i != j:
            p = self.pos[j]
            for c in self.caches:
                if c is not None:
                    c.k[i, :, :p] = c.k[j, :, :p]
                    c.v[i, :, :p] = c.v[j, :, :p]
            self.held[i] = self.held[j]
            self.last[i] = self.last[j]
            self.pos[i], self.samplers[i], self.keys[i] = self.pos[j], self.samplers[j], self.keys[j]
        del self.pos[j], self.samplers[j], self.keys[j]


def cached_decode(model: GPT, idx: torch.Tensor, n: int, sample: Sampler) -> Generator[torch.Tensor]:
    """n tokens with the KV cache, restarting the window when the cache is full (module docstring):
    the rows of idx as one DecodeBatch, sharing one sampler."""
    window = crop_prompt(idx, model.config.block_size)
    B, T = window.shape
    batch = DecodeBatch(model, B, max_len=min(model.config.block_size, T + n))
    try:
        token = batch.add(list(window), [sample] * B)
        yield token
        for _ in range(n - 1):
            token = batch.step()
            yield token
    finally:
        batch.close()


@torch.inference_mode()
def generate(
    model: GPT,
    prompt: list[int],
    cfg: SampleConfig,
    *,
    vocab_size: int,
    eot_token: int | None = None,
    autocast=None,
    use_cache: bool = True,
) -> Generator[torch.Tensor]:
    """Yield (num_samples,) new tokens per step, max_new_tokens of them whatever the context length
    (past it the window restarts, module docstring). A row that has produced EOT keeps yielding EOT;
    generation ends early when every row has.
    """
    cfg.validate()
    if not prompt:
        raise GptkitError("empty prompt: give some text, or start from the end-of-text token")
    n = cfg.max_new_tokens
    device = model.get_parameter("transformer.wte.weight").device
    generator = None
    if cfg.temperature > 0:
        generator = torch.Generator(device=device)
        generator.manual_seed(cfg.seed if cfg.seed is not None else torch.seed())
    sample = make_sampler(cfg, vocab_size, generator)
    idx = torch.tensor([prompt] * cfg.num_samples, dtype=torch.long, device=device)  # (B, T)
    stop = eot_token if cfg.stop_at_eot else None
    done = torch.zeros(cfg.num_samples, dtype=torch.bool, device=device)
    ctx = autocast if autocast is not None else contextlib.nullcontext()
    decode = cached_decode if use_cache else reference_decode
    steps = decode(model, idx, n, sample)
    try:
        while True:
            with ctx:  # around each step only: never left on while the caller runs
                token = next(steps, None)
            if token is None:
                return
            if stop is not None:
                token = token.masked_fill(done, stop)
                done = done | (token == stop)
            yield token
            if stop is not None and bool(done.all()):
                return
    finally:
        steps.close()  # releases the KV cache at once, even when the caller stops early


# --- text out ------------------------------------------------------------------------------------


class StreamDecoder:
    """Token ids in, text out, emitting only complete UTF-8 characters.

    GPT-2's byte-level BPE splits a character such as "你" across tokens; decoding each token on its
    own would print U+FFFD. The incremental UTF-8 decoder holds back an incomplete trailing sequence
    until the bytes that finish it arrive (bytes that can never form a character still become U+FFFD).
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, ids) -> str:
        return self._utf8.decode(self.tokenizer.decode_bytes(ids))

    def flush(self) -> str:
        return self._utf8.decode(b"", final=True)


@dataclass
class Sample:
    text: str
    tokens: list[int] = field(repr=False)
    stop_reason: str  # eot | max_new_tokens


@dataclass
class SampleResult:
    prompt: str
    samples: list[Sample]
    new_tokens: int
    seconds: float
    model: str
    prompt_tokens_dropped: int = 0  # a prompt longer than the context keeps its last block_size tokens

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0


def sample_text(
    model: GPT,
    tokenizer,
    prompt: str,
    cfg: SampleConfig,
    *,
    autocast=None,
    on_text: Callable[[int, str], None] | None = None,
    model_name: str = "",
) -> SampleResult:
    """Generate cfg.num_samples continuations of `prompt`. `on_text(row, piece)` receives text as it is
    made for row 0 (the streamed sample); the other rows are complete when this returns."""
    cfg.validate()
    ids = tokenizer.encode(prompt) if prompt else [tokenizer.eot_token]  # empty: unconditional, GPT-2 style
    B = cfg.num_samples
    decoders = [StreamDecoder(tokenizer) for _ in range(B)]
    texts = [""] * B
    toks: list[list[int]] = [[] for _ in range(B)]
    finished = [False] * B
    reasons = ["max_new_tokens"] * B
    t0 = time.perf_counter()
    steps = 0
    for step in generate(
        model, ids, cfg, vocab_size=tokenizer.vocab_size, eot_token=tokenizer.eot_token, autocast=autocast
    ):
        steps += 1
        for r, t in enumerate(step.tolist()):
            if finished[r]:
                continue
            if cfg.stop_at_eot and t == tokenizer.eot_token:
                finished[r], reasons[r] = True, "eot"
                continue
            toks[r].append(t)
            piece = decoders[r].push([t])
            texts[r] += piece
            if r == 0 and on_text and piece:
                on_text(0, piece)
    seconds = time.perf_counter() - t0
    for r in range(B):
        tail = decoders[r].flush()
        texts[r] += tail
        if r == 0 and on_text and tail:
            on_text(0, tail)
    samples = [Sample(texts[r], toks[r], reasons[r]) for r in range(B)]
    dropped = max(0, len(ids) - model.config.block_size)
    return SampleResult(prompt, samples, steps * B, seconds, model_name, dropped)
