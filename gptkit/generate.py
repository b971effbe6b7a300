"""Text generation, built from small pure functions (the gpt-fast way):

    logits_to_probs   logits -> probabilities (temperature, top-k, top-p)
    next_token        logits -> one token per row (greedy at temperature 0)
    prefill           the prompt through the model, filling the KV cache -> first new token
    decode_one        one token through the model at position `pos` -> the next token
    decode_n          decode_one repeated, yielding each token as it is made
    generate          composes them around the model's pre-allocated KV cache; stops at EOT

Plus `StreamDecoder`, which turns a stream of token ids into text without ever printing half a
character, and the model resolution `gptkit sample --model` uses.
"""

from __future__ import annotations

import codecs
import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
import torch.nn as nn

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
            raise GptkitError("--top-k must be at least 1")
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


def prefill(model: GPT, idx: torch.Tensor, sample: Sampler) -> torch.Tensor:
    """Run the (B, T) prompt from position 0, filling the KV cache; return the first new (B,) token."""
    logits, _ = model(idx, pos=0)
    return sample(logits[:, -1])


def decode_one(model: GPT, token: torch.Tensor, pos: int, sample: Sampler) -> torch.Tensor:
    """Feed (B,) tokens at position `pos` (the cache holds 0..pos-1); return the next (B,) tokens."""
    logits, _ = model(token.view(-1, 1), pos=pos)
    return sample(logits[:, -1])


def decode_n(model: GPT, token: torch.Tensor, pos: int, n: int, sample: Sampler) -> Iterator[torch.Tensor]:
    """Decode n tokens after `token` (which sits at `pos`), yielding each as soon as it exists."""
    for i in range(n):
        token = decode_one(model, token, pos + i, sample)
        yield token


def full_recompute(model: GPT, idx: torch.Tensor, n: int, sample: Sampler) -> Iterator[torch.Tensor]:
    """Reference decoding without a cache: the whole sequence through the model at every step."""
    for _ in range(n):
        logits, _ = model(idx)
        token = sample(logits[:, -1])
        idx = torch.cat([idx, token.view(-1, 1)], dim=1)
        yield token


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
) -> Iterator[torch.Tensor]:
    """Yield (num_samples,) new tokens per step. A row that has produced EOT keeps yielding EOT;
    generation ends when every row has (or after max_new_tokens, or at the model's context length).
    """
    cfg.validate()
    T = len(prompt)
    block = model.config.block_size
    if T == 0:
        raise GptkitError("empty prompt: give some text, or start from the end-of-text token")
    if T >= block:
        raise GptkitError(f"the prompt is {T} tokens but the model's context is {block}; shorten it")
    n = min(cfg.max_new_tokens, block - T)
    device = model.transformer.wte.weight.device
    generator = None
    if cfg.temperature > 0:
        generator = torch.Generator(device=device)
        generator.manual_seed(cfg.seed if cfg.seed is not None else torch.seed())
    sample = make_sampler(cfg, vocab_size, generator)
    idx = torch.tensor([prompt] * cfg.num_samples, dtype=torch.long, device=device)  # (B, T)
    stop = eot_token if cfg.stop_at_eot else None
    done = torch.zeros(cfg.num_samples, dtype=torch.bool, device=device)
    ctx = autocast if autocast is not None else contextlib.nullcontext()

    def finish(token: torch.Tensor) -> torch.Tensor:
        nonlocal done
        if stop is None:
            return token
        token = token.masked_fill(done, stop)
        done = done | (token == stop)
        return token

    with ctx:
        if not use_cache:
            for token in full_recompute(model, idx, n, sample):
                yield finish(token)
                if stop is not None and bool(done.all()):
                    return
            return
        model.setup_kv_cache(cfg.num_samples, max_len=T + n)
        try:
            token = finish(prefill(model, idx, sample))
            yield token
            if n == 1 or (stop is not None and bool(done.all())):
                return
            for token in decode_n(model, token, T, n - 1, sample):
                yield finish(token)
                if stop is not None and bool(done.all()):
                    return
        finally:
            model.clear_kv_cache()


# --- decoding layout ------------------------------------------------------------------------------


class WideLinear(nn.Module):
    """y = x @ W^T + b with W kept transposed, (in, out), for batch-1 decoding on a CPU.

    Decoding one token is a matrix-vector product per weight, bound by memory bandwidth. For the
    matrices that widen (out > in: c_attn, c_fc and the 768 -> 50,304 lm_head) the BLAS streams the
    (in, out) layout markedly faster than nn.Linear's (out, in) on the CPUs we measured (about 1.4x
    for c_fc and 1.5x for lm_head with MKL on an AVX2 EPYC); for the narrowing ones it is the
    other way round, so those stay nn.Linear. Values are the same fp32 weights: only the order of
    the sums changes, so logits agree to fp32 rounding.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.register_buffer("weight_t", weight.detach().t().contiguous())  # (in, out)
        self.register_buffer("bias", None if bias is None else bias.detach())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.size(-1))  # (B*T, in)
        y = flat @ self.weight_t if self.bias is None else torch.addmm(self.bias, flat, self.weight_t)
        return y.view(*x.shape[:-1], self.weight_t.size(1))


def prepare_for_decoding(model: GPT) -> GPT:
    """Switch a CPU model to the decoding layout above, in place (sampling only: the changed model
    no longer has gptkit's parameter names, so it is not for training or saving). The lm_head gets
    its own transposed copy of wte (+ padded_vocab x n_embd floats); the embedding lookup keeps wte.
    """
    if model.transformer.wte.weight.device.type != "cpu" or getattr(model, "decoding_layout", False):
        return model
    for block in model.transformer.h:
        block.attn.c_attn = WideLinear(block.attn.c_attn.weight, block.attn.c_attn.bias)
        block.mlp.c_fc = WideLinear(block.mlp.c_fc.weight, block.mlp.c_fc.bias)
    model.lm_head = WideLinear(model.transformer.wte.weight, None)
    model.decoding_layout = True
    return model.eval()


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
    stop_reason: str  # eot | max_new_tokens | context


@dataclass
class SampleResult:
    prompt: str
    samples: list[Sample]
    new_tokens: int
    seconds: float
    model: str

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
    room = model.config.block_size - len(ids)
    for r in range(B):
        tail = decoders[r].flush()
        texts[r] += tail
        if r == 0 and on_text and tail:
            on_text(0, tail)
        if reasons[r] == "max_new_tokens" and len(toks[r]) >= room and room < cfg.max_new_tokens:
            reasons[r] = "context"
    samples = [Sample(texts[r], toks[r], reasons[r]) for r in range(B)]
    return SampleResult(prompt=prompt, samples=samples, new_tokens=steps * B, seconds=seconds, model=model_name)


# --- which model ---------------------------------------------------------------------------------


def newest_run_checkpoint() -> Path | None:
    """The latest checkpoint of the most recently written run under runs_dir(), if any."""
    from gptkit import paths
    from gptkit.checkpoint import latest_checkpoint

    runs = paths.runs_dir()
    if not runs.is_dir():
        return None
    found = []
    for run in runs.iterdir():
        if run.is_dir() and not run.name.startswith("."):
            ck = latest_checkpoint(run)
            if ck is not None:
                found.append((ck.stat().st_mtime, ck))
    return max(found)[1] if found else None


def resolve_model_path(spec: str | None, *, endpoint: str | None = None) -> Path:
    """--model as a path (run, checkpoint, .pt, .safetensors, .gguf, HF dir) or a hub name such as gpt2.

    No --model: the newest local run, else pretrained gpt2. A hub name is looked up in
    data_dir(name) first (where `gptkit download` puts it) and downloaded only when absent.
    """
    from gptkit import paths

    if spec is None:
        ck = newest_run_checkpoint()
        if ck is not None:
            return ck
        spec = "gpt2"
    p = Path(spec).expanduser()
    if p.exists():
        return p
    looks_like_path = spec.startswith((".", "/", "~")) or Path(spec).suffix in (".pt", ".safetensors", ".gguf", ".bin")
    if looks_like_path or spec.count("/") > 1:
        raise GptkitError(f"--model {spec}: no such file or directory")
    local = paths.data_dir(spec)
    if _complete_hf_dir(local):
        return local
    from gptkit.hub import download as hub  # a hub name not on disk yet: download it (resumes a partial download)

    return Path(hub.download(spec, endpoint=endpoint).local_dir)


def _complete_hf_dir(d: Path) -> bool:
    from gptkit.hub.manifest import read_manifest

    manifest = read_manifest(d) if d.is_dir() else None
    if manifest is not None:
        return bool(manifest.get("complete"))
    return (d / "config.json").is_file() and any((d / w).is_file() for w in ("model.safetensors", "pytorch_model.bin"))


def load_for_sampling(path: Path, device: torch.device):
    """(model, tokenizer, description) for any format convert reads; checks the vocabularies agree."""
    from gptkit.data.tokenizers import get_tokenizer
    from gptkit.formats.convert import load

    loaded = load(path)
    tokenizer = get_tokenizer(loaded.tokenizer)
    cfg = loaded.config
    if cfg.vocab_size != tokenizer.vocab_size:
        raise GptkitError(
            f"{path}: the model has a vocabulary of {cfg.vocab_size} but its tokenizer {tokenizer.name!r} has "
            f"{tokenizer.vocab_size}; this checkpoint does not go with that tokenizer"
        )
    model = prepare_for_decoding(loaded.build_model(device))
    return model, tokenizer, f"{loaded.path} ({loaded.format})"
