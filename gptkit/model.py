"""GPT-2, in one file.

The architecture is OpenAI's GPT-2 exactly as Hugging Face's GPT2LMHeadModel implements it:
learned position embeddings, pre-LayerNorm blocks, tanh-approximated GELU, biases everywhere (both can be changed in the config, e.g. for nanoGPT models),
and the token embedding tied to the output head. Parameter names match HF's, so importing or
exporting HF weights is only the transpose of the four Conv1D matrices per block.

Reads top to bottom: config and presets, attention (with its KV cache), MLP, block, model.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Protocol, cast

import torch
import torch.nn as nn
import torch.nn.functional as F

from gptkit.attention import cached_attention, causal_attention

GPT2_VOCAB_SIZE = 50257  # 50,000 merges + 256 byte tokens + <|endoftext|>
# The MLP's GELU, by Hugging Face's names: GPT-2 trained with the tanh approximation (gelu_new);
# nanoGPT uses the exact erf form. They differ by up to ~1e-3 per activation, so a model keeps its own.
ACTIVATIONS = ("gelu_new", "gelu")


def pad_vocab(n: int, multiple: int = 64) -> int:
    """Round the vocabulary up so the embedding and lm_head matmuls hit fast tile sizes."""
    return ((n + multiple - 1) // multiple) * multiple


@dataclass
class GPTConfig:
    block_size: int = 1024  # maximum sequence length (HF: n_positions)
    vocab_size: int = GPT2_VOCAB_SIZE  # the tokenizer's real vocabulary
    padded_vocab_size: int = pad_vocab(GPT2_VOCAB_SIZE)  # 50304: rows in wte / lm_head
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    layer_norm_epsilon: float = 1e-5
    bias: bool = True  # biases in every Linear and LayerNorm (GPT-2: yes; nanoGPT can turn them off)
    activation: str = "gelu_new"  # gelu_new: GPT-2's tanh approximation; gelu: exact (nanoGPT's nn.GELU)

    def __post_init__(self):
        for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.padded_vocab_size < self.vocab_size:
            raise ValueError("padded_vocab_size must be >= vocab_size")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), not {self.dropout}")
        if self.layer_norm_epsilon <= 0:
            raise ValueError(f"layer_norm_epsilon must be positive, not {self.layer_norm_epsilon}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, not {self.activation!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, written_by: str | None = None) -> GPTConfig:
        """The config `to_dict` wrote. A field this version does not know is refused, never dropped:
        a later gptkit's new shape field, left out, would build a different model from the same
        file. `written_by`: the gptkit version that wrote `d`, for the message."""
        from gptkit import __version__

        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            who = f"gptkit {written_by}" if written_by else "an unknown gptkit version"
            raise ValueError(
                f"unknown setting {unknown[0]!r}, written by {who}; this is gptkit {__version__}: upgrade gptkit to read it"
            )
        return cls(**d)

    def with_vocab(self, vocab_size: int) -> GPTConfig:
        """The same architecture for another tokenizer (e.g. bytes, 256)."""
        return replace(self, vocab_size=vocab_size, padded_vocab_size=pad_vocab(vocab_size))

    @property
    def shape(self) -> str:
        """'3x3x96': layers x heads x width, how messages name a model that is no preset."""
        return f"{self.n_layer}x{self.n_head}x{self.n_embd}"


# Named model sizes: the defaults of `gptkit train --preset`, each field overridable (--n-layer ...).
# The four GPT-2 sizes are OpenAI's; the rest fit a laptop or a test.
PRESETS: dict[str, GPTConfig] = {
    "gpt2": GPTConfig(n_layer=12, n_head=12, n_embd=768),  # 124M
    "gpt2-medium": GPTConfig(n_layer=24, n_head=16, n_embd=1024),  # 355M
    "gpt2-large": GPTConfig(n_layer=36, n_head=20, n_embd=1280),  # 774M
    "gpt2-xl": GPTConfig(n_layer=48, n_head=25, n_embd=1600),  # 1558M (param_count below)
    # GPT-2 124M's shape trained with Muon (train/presets.py): the architecture stays GPT-2's, so
    # every export (HF, GGUF, nanoGPT, llm.c) is the same as gpt2's.
    "gpt2-muon": GPTConfig(n_layer=12, n_head=12, n_embd=768),
    "small": GPTConfig(block_size=256, n_layer=4, n_head=4, n_embd=256),  # 16.1M with GPT-2 vocab
    "tiny": GPTConfig(block_size=128, n_layer=2, n_head=2, n_embd=64),  # 3.3M, tests and demos
    # nanoGPT's shakespeare_char "baby GPT" as its README runs it on a CPU: 0.8M with a byte vocabulary
    "char": GPTConfig(block_size=64, n_layer=4, n_head=4, n_embd=128),
}


def get_preset(name: str) -> GPTConfig:
    from gptkit.errors import GptkitError

    if name not in PRESETS:
        raise GptkitError(f"unknown model preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return replace(PRESETS[name])


def param_count(config: GPTConfig, padded: bool = False) -> int:
    """Parameters of GPT(config), by arithmetic (no tensors): the tied lm_head counted once, position
    embeddings included. padded=False counts the tokenizer's real rows (the figure GPT-2's sizes are
    quoted in: 124M, 355M, 774M, 1558M); padded=True equals GPT(config).num_params(non_embedding=False)."""
    C, b = config.n_embd, int(config.bias)
    rows = config.padded_vocab_size if padded else config.vocab_size
    ln = C + b * C  # weight, bias
    block = 2 * ln + (C * 3 * C + b * 3 * C) + (C * C + b * C) + (C * 4 * C + b * 4 * C) + (4 * C * C + b * C)
    return rows * C + config.block_size * C + config.n_layer * block + ln


def flops_per_token(config: GPTConfig, seq_len: int | None = None) -> float:
    """Training FLOPs per token (forward + backward) of GPT(config), by arithmetic: 6N plus attention,
    as in the PaLM paper, N without the position embeddings. The planner and the launcher call this
    (no tensors: building even a meta-device model costs a second of imports)."""
    T = seq_len or config.block_size
    n = param_count(config, padded=True) - config.block_size * config.n_embd
    return 6 * n + 12 * config.n_layer * config.n_embd * T


def preset_sizes() -> str:
    """'gpt2 124.4M, gpt2-medium 354.8M, ...': every preset with its size (GPT-2 vocabulary), as
    `gptkit train --help` and the README list them."""
    return ", ".join(f"{name} {param_count(cfg) / 1e6:.1f}M" for name, cfg in PRESETS.items())


def vocab_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, vocab_size: int, reduction: str = "sum"
) -> torch.Tensor:
    """Cross-entropy over the real vocabulary, the padded rows' logits left out, as llm.c's and
    transformers' are: training, validation and `gptkit eval` all use it. (An imported model's padding
    rows are zeros; GPT-2's real logits are far below 0, so logits of 0 would take nearly all the
    probability and a fine-tuning run would start by wrecking the model to push them down.)"""
    flat = logits[..., :vocab_size].float().reshape(-1, vocab_size)
    return F.cross_entropy(flat, targets.reshape(-1), ignore_index=-1, reduction=reduction)


class KVCache(nn.Module):
    """Pre-allocated keys and values for one attention layer: (B, nh, max_len, hs) each.

    Allocated once for the whole generation, so decoding never concatenates or reallocates.
    """

    k: torch.Tensor  # buffers, registered below
    v: torch.Tensor

    def __init__(self, batch_size, n_head, max_len, head_dim, dtype, device):
        super().__init__()
        shape = (batch_size, n_head, max_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        # The batch rows the next forward reads and writes (a view, never a copy): a batch of
        # requests (gptkit.generate.DecodeBatch) prefills a new row, or decodes its rows 0..n-1,
        # in a cache sized for the most it will hold.
        self.rows = slice(None)

    def update(self, pos: int | RowPositions, k: torch.Tensor, v: torch.Tensor):
        """Write k, v (B, nh, T, hs) at positions pos..pos+T; return all keys/values so far.
        With RowPositions (T = 1), row b's token goes to its own position, and the keys returned
        reach the furthest row (the others are masked past their own)."""
        ck, cv = self.k[self.rows], self.v[self.rows]  # (B, nh, max_len, hs) views
        if isinstance(pos, RowPositions):
            rows = torch.arange(k.size(0), device=k.device)
            ck[rows, :, pos.pos] = k[:, :, 0]
            cv[rows, :, pos.pos] = v[:, :, 0]
            return ck[:, :, : pos.length], cv[:, :, : pos.length]
        t = k.size(2)
        ck[:, :, pos : pos + t] = k
        cv[:, :, pos : pos + t] = v
        return ck[:, :, : pos + t], cv[:, :, : pos + t]


@dataclass
class RowPositions:
    """One decoding step of a batch whose rows are at different positions (requests of different
    lengths decoded together): row b's one new token is at position pos[b]."""

    pos: torch.Tensor  # (B,) long
    length: int  # max(pos) + 1: the cached keys the furthest row attends to
    mask: torch.Tensor  # (B, 1, 1, length) bool: True where row b may look (keys 0..pos[b])

    @classmethod
    def of(cls, pos: torch.Tensor) -> RowPositions:
        length = int(pos.max()) + 1
        keys = torch.arange(length, device=pos.device)
        return cls(pos, length, (keys[None, :] <= pos[:, None]).view(pos.size(0), 1, 1, length))


class ResidualProjection(nn.Linear):
    """A Linear that writes into the residual stream: GPT-2 scales its init (see GPT._init_weights)."""


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v for all heads
        self.c_proj = ResidualProjection(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.kv_cache: KVCache | None = None

    def forward(self, x: torch.Tensor, pos: int | RowPositions = 0) -> torch.Tensor:
        B, T, C = x.size()
        hs = C // self.n_head
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q = q.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)

        mask = None
        is_causal = True
        if self.kv_cache is not None:
            k, v = self.kv_cache.update(pos, k, v)  # (B, nh, pos+T, hs)
            if isinstance(pos, RowPositions):  # rows at different positions: each sees its own past
                is_causal, mask = False, pos.mask
            elif pos > 0:
                is_causal = False
                if T > 1:
                    # A chunk after a cached prefix: row i sees the prefix and chunk rows <= i.
                    # Only this rare case builds a mask; training and single-token decoding never do.
                    S = pos + T
                    mask = torch.ones(T, S, dtype=torch.bool, device=x.device).tril(diagonal=pos)
        dropout_p = self.dropout if self.training else 0.0
        if is_causal and mask is None:
            # Training and full-sequence forwards: a fused kernel (see attention.py for which)
            y = causal_attention(q, k, v, dropout_p)  # (B, nh, T, hs)
        else:  # decoding after a cached prefix
            y = cached_attention(q, k, v, mask, dropout_p)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble heads side by side
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = ResidualProjection(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)
        self.approximate = "tanh" if config.activation == "gelu_new" else "none"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate=self.approximate)))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, pos: int | RowPositions = 0) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), pos)
        x = x + self.mlp(self.ln_2(x))
        return x


class Transformer(nn.Module):
    """Everything below lm_head, under HF's parameter names (transformer.wte.weight, transformer.h.0...)."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.wte = nn.Embedding(config.padded_vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias)

    def blocks(self) -> list[Block]:
        """The blocks, typed (iterating an nn.ModuleList yields plain Modules)."""
        return [cast(Block, b) for b in self.h]


class HeadLoss(Protocol):
    """(final hidden states (N, C), lm_head's weight, targets (N,), real vocabulary) -> mean loss."""

    def __call__(
        self, h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, vocab_size: int
    ) -> torch.Tensor: ...


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = Transformer(config)
        self.lm_head = nn.Linear(config.n_embd, config.padded_vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # weight tying, as in GPT-2
        # Training may fuse lm_head with the loss (CPU: gptkit/train/loss.py). It is called from
        # forward, so a wrapper's hooks (DDP, FSDP's unsharding of lm_head) run as for the plain loss.
        self.head_loss: HeadLoss | None = None
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module):
        # GPT-2 initialisation: N(0, 0.02) everywhere, with the projections that write into the
        # residual stream scaled by 1/sqrt(2 * n_layer) (two per block) so its variance stays put.
        if isinstance(module, nn.Linear):
            std = 0.02
            if isinstance(module, ResidualProjection):
                std /= math.sqrt(2 * self.config.n_layer)
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count; the tied lm_head is counted once, position embeddings excluded by default."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.transformer.wpe.weight.numel()
        return n

    def hidden(self, idx: torch.Tensor, pos: int | torch.Tensor = 0) -> torch.Tensor:
        """idx (B, T) -> the final hidden states (B, T, C): everything before lm_head.

        The trainer uses it on CPU to fuse lm_head with the loss (gptkit/train/loss.py).
        """
        B, T = idx.size()
        at: int | RowPositions = 0
        if isinstance(pos, torch.Tensor):  # (B,): one decoding step, each row at its own position
            if T != 1 or pos.shape != (B,):
                raise ValueError(f"per-row positions take one token per row, got idx {tuple(idx.shape)}")
            at = RowPositions.of(pos)
            if at.length > self.config.block_size:
                raise ValueError(f"position {at.length - 1} exceeds block_size {self.config.block_size}")
            x = self.transformer.wte(idx) + self.transformer.wpe(pos).unsqueeze(1)  # (B, 1, C)
        else:
            if pos + T > self.config.block_size:
                raise ValueError(f"sequence of length {pos + T} exceeds block_size {self.config.block_size}")
            at = pos
            positions = torch.arange(pos, pos + T, dtype=torch.long, device=idx.device)  # (T,)
            x = self.transformer.wte(idx) + self.transformer.wpe(positions)  # (B, T, C)
        x = self.transformer.drop(x)
        for block in self.transformer.h:
            x = block(x, at)
        return self.transformer.ln_f(x)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, pos: int | torch.Tensor = 0):
        """idx (B, T) token ids -> logits (B, T, padded_vocab) and, with targets, the mean loss.

        `pos` is the position of idx[:, 0]; it is non-zero only when decoding with a KV cache. A (B,)
        tensor gives each row its own position (one token per row: a batch of requests decoding).
        """
        x = self.hidden(idx, pos)
        if targets is not None and self.head_loss is not None and self.training and torch.is_grad_enabled():
            return None, self.head_loss(
                x.flatten(0, 1), self.lm_head.weight, targets.reshape(-1), self.config.vocab_size
            )
        logits = self.lm_head(x)  # (B, T, padded_vocab)
        loss = None
        if targets is not None:  # over the real vocabulary (the slice costs nothing extra under autocast)
            loss = vocab_cross_entropy(logits, targets, self.config.vocab_size, reduction="mean")
        return logits, loss

    # --- KV cache for incremental decoding -------------------------------------------------
    def setup_kv_cache(self, batch_size: int, max_len: int | None = None, dtype=None):
        """Allocate one pre-sized KVCache per layer; forward(pos=...) then decodes incrementally."""
        max_len = max_len or self.config.block_size
        if max_len > self.config.block_size:
            raise ValueError(f"cache length {max_len} exceeds block_size {self.config.block_size}")
        w = self.transformer.wte.weight
        hs = self.config.n_embd // self.config.n_head
        for block in self.transformer.blocks():
            block.attn.kv_cache = KVCache(batch_size, self.config.n_head, max_len, hs, dtype or w.dtype, w.device)

    def clear_kv_cache(self):
        for block in self.transformer.blocks():
            # Back to the plain attribute __init__ made: nn.Module files an assigned KVCache under
            # _modules, where a None would stay, and a compiled forward sharing these modules (the
            # trainer's, after its periodic sample) guards on the attribute and would recompile.
            block.attn._modules.pop("kv_cache", None)
            block.attn.kv_cache = None

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token (forward + backward): the module function flops_per_token."""
        return flops_per_token(self.config, seq_len)


# The four matrices HF GPT-2 stores as Conv1D (in_features, out_features): transposed on conversion.
CONV1D_SUFFIXES = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
