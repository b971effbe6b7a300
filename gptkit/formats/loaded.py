"""The one internal form every model format is read into and written from, and what a format module
registers: `Loaded` = (GPTConfig, state dict in gptkit names, the model's own Tokenizer or None);
`Format` = how to detect, read and write one format.

Readers of other projects' files go through `to_gptkit_names` and `assemble`, which turn any GPT-2
state dict plus whatever the file says about its config into a `Loaded`. Single-file formats gptkit
writes (pt, safetensors, gguf) carry the tokenizer inside the file: `tokenizer_record` is the plain
strings that hold it and `tokenizer_from_record` reads them back, checked against the recorded hash.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from gptkit.checkpoint import TIED_KEY, clean_state_dict, model_from_state_dict
from gptkit.errors import GptkitError
from gptkit.model import CONV1D_SUFFIXES, GPT, GPT2_VOCAB_SIZE, GPTConfig, pad_vocab
from gptkit.tokenizer import CharTokenizer, HFTokenizer, Tokenizer, get_tokenizer, tokenizer_for

NEEDS_TOKENIZER = "`gptkit sample` will need --tokenizer"
ASSUMED_GPT2 = "no tokenizer in the source; assuming GPT-2's"


@dataclass
class Loaded:
    """A model in gptkit's terms, whatever file it came from."""

    config: GPTConfig
    state_dict: dict[str, torch.Tensor] = field(repr=False)  # gptkit names, no lm_head, padded vocab rows
    tokenizer: Tokenizer | None  # the model's own; None when the source has none
    path: Path
    format: str
    meta: dict = field(default_factory=dict)  # step and other provenance, when the source has them
    notes: list[str] = field(default_factory=list)  # what the reader had to assume, for the user
    assumed_tokenizer: bool = False  # a default (nanoGPT's GPT-2), not read from the source: --tokenizer may replace it
    # A check of the source's files still running beside the caller (a gptkit checkpoint's checksums,
    # checkpoint.Verification); formats.convert.load waits for it unless told the caller will.
    pending_check: Callable[[], str | None] | None = field(default=None, repr=False)

    def finish_check(self) -> None:
        """Wait for `pending_check`: its error is raised, its note joins `notes`."""
        check, self.pending_check = self.pending_check, None
        if check is not None and (note := check()) is not None:
            self.notes.append(note)

    def build_model(self, device: str | torch.device = "cpu") -> GPT:
        return model_from_state_dict(self.config, self.state_dict, device=device, source=self.path)

    @property
    def tokenizer_name(self) -> str | None:
        return self.tokenizer.name if self.tokenizer is not None else None

    def with_tokenizer(self, tok: Tokenizer, given: str) -> Loaded:
        """This model with the tokenizer --tokenizer names: it must fit the model's vocabulary, and a
        tokenizer the source carries is never replaced by a different one."""
        own = self.tokenizer
        if own is not None and not self.assumed_tokenizer:
            if own.vocab_hash != tok.vocab_hash:
                raise GptkitError(
                    f"{self.path} carries its own tokenizer ({own.name}, {own.vocab_size} tokens); "
                    f"--tokenizer {given} ({tok.name}) is a different vocabulary"
                )
            return self
        c = self.config
        rows = c.padded_vocab_size
        if tok.vocab_size == c.vocab_size:
            config = c
        elif only_padding_past(tok.vocab_size, c.vocab_size):
            config = replace(c, vocab_size=tok.vocab_size)
        else:
            raise GptkitError(
                f"--tokenizer {given} has {tok.vocab_size} tokens but the model's vocabulary is {c.vocab_size}"
                + (f" ({rows} rows)" if rows != c.vocab_size else "")
                + "; it is not this model's tokenizer"
            )
        notes = [n for n in self.notes if NEEDS_TOKENIZER not in n and not n.startswith(ASSUMED_GPT2)]
        return replace(self, config=config, tokenizer=tok, assumed_tokenizer=False, notes=notes)


def only_padding_past(tokens: int, rows: int) -> bool:
    """Rows past a tokenizer's tokens that only pad its vocabulary to a multiple of 64 (nanoGPT's
    50304; a transformers model resized to it): padding, never sampled, not other tokens."""
    return tokens < rows <= pad_vocab(tokens)


def never(key: str, v: torch.Tensor) -> bool:
    return False


@dataclass(frozen=True)
class Format:
    """One model format: registered in gptkit.formats.registry."""

    name: str
    # By content, not by name: `head` is a file's first 16 bytes, None for a directory.
    detect: Callable[[Path, bytes | None], bool]
    read: Callable[[Path], Loaded]
    # Writes the model at the given path in the given dtype; returns notes for the user. A shape
    # the format cannot express is a GptkitError (one line), raised before anything is written.
    write: Callable[[Loaded, Path, torch.dtype], list[str]]
    suffixes: tuple[str, ...] = ()  # output names that imply this format
    # Tensors the format stores in fp32 whatever --dtype (verification rounds only the others).
    keeps_fp32: Callable[[str, torch.Tensor], bool] = never


def cast_state_dict(sd: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in sd.items()}


def to_gptkit_names(sd: dict[str, Any], source: object) -> dict[str, torch.Tensor]:
    """Any GPT-2 state dict (HF Conv1D or Linear layout, with or without `transformer.`, compile/DDP
    prefixes, causal-mask buffers, a tied lm_head copy) -> gptkit names and nn.Linear layout.
    Biases stay as they are: a model without them (nanoGPT's bias=False) gets a config without them."""
    sd = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    head = next((v for k, v in sd.items() if k == TIED_KEY or k.endswith("." + TIED_KEY)), None)
    sd = clean_state_dict(sd)  # strips _orig_mod. / module., drops lm_head.weight
    out = {}
    for k, v in sd.items():
        if k.endswith((".attn.bias", ".attn.masked_bias")):
            continue  # HF's and old nanoGPT's causal-mask buffers, not weights
        if not k.startswith("transformer."):
            k = "transformer." + k  # HF GPT2Model naming (openai-community/gpt2 stores h.0..., wte...)
        out[k] = v
    if "transformer.wte.weight" not in out:
        raise GptkitError(f"{source}: not a GPT-2 state dict (no wte / transformer.wte.weight)")
    wte = out["transformer.wte.weight"]
    if head is not None and (head.shape != wte.shape or not torch.equal(head, wte)):
        raise GptkitError(f"{source}: lm_head is not tied to the token embedding; gptkit models always tie them")
    c = wte.shape[1]
    qkv = out.get("transformer.h.0.attn.c_attn.weight")
    if qkv is not None and tuple(qkv.shape) == (c, 3 * c):  # HF Conv1D stores (in, out)
        out = {k: (v.t().contiguous() if k.endswith(CONV1D_SUFFIXES) else v) for k, v in out.items()}
    return out


def nanogpt_default_tokenizer(rows: int) -> tuple[Tokenizer | None, list[str]]:
    """nanoGPT's convention when no meta.pkl is found: GPT-2's BPE, but only for its vocabulary size."""
    if rows in (GPT2_VOCAB_SIZE, pad_vocab(GPT2_VOCAB_SIZE)):
        note = f"{ASSUMED_GPT2} ({rows} rows is nanoGPT's default vocabulary)"
        return get_tokenizer("gpt2"), [note]
    return None, [f"no tokenizer found for a vocabulary of {rows} tokens; {NEEDS_TOKENIZER}"]


def assemble(
    sd: dict[str, torch.Tensor],
    hints: dict,
    source: str | Path,
    fmt: str,
    meta: dict | None = None,
    *,
    tokenizer: Tokenizer | None = None,
    notes: list[str] | None = None,
    assumed: bool = False,
) -> Loaded:
    """gptkit-named weights + whatever the source said about the config -> Loaded (vocab padded).

    The real vocabulary is the one the source states (hints["vocab_size"]), else its tokenizer's,
    else the embedding's row count. A tokenizer must fit it: never a silent mismatch.
    """
    wte = sd["transformer.wte.weight"]
    rows, n_embd = wte.shape
    layers = {int(m.group(1)) for k in sd if (m := re.match(r"transformer\.h\.(\d+)\.", k))}
    n_layer = hints.get("n_layer", len(layers))
    notes = list(notes or [])
    n_head = hints.get("n_head")
    if not n_head:  # GPT-2's sizes all use 64-wide heads; a wrong guess gives other logits, so say it
        n_head = max(1, n_embd // 64)
        notes.append(f"the source does not record its number of heads: assuming {n_head} (64 wide, as GPT-2's)")
    vocab = hints.get("vocab_size") or (tokenizer.vocab_size if tokenizer is not None else rows)
    if tokenizer is not None and only_padding_past(tokenizer.vocab_size, vocab):
        notes.append(
            f"the {vocab - tokenizer.vocab_size} embedding rows past the tokenizer's {tokenizer.vocab_size} tokens "
            "pad it to a multiple of 64: taken as padding, never sampled"
        )
        vocab = tokenizer.vocab_size
    if vocab > rows:
        raise GptkitError(f"{source}: the vocabulary is {vocab} tokens but the embedding has only {rows} rows")
    if tokenizer is not None and tokenizer.vocab_size != vocab:
        raise GptkitError(
            f"{source}: the model's vocabulary is {vocab} tokens but its tokenizer {tokenizer.name} has "
            f"{tokenizer.vocab_size}; they do not go together"
        )
    padded = max(hints.get("padded_vocab_size") or 0, rows, pad_vocab(vocab))
    bias = hints.get("bias")
    if bias is None:
        bias = any(k.endswith(".bias") for k in sd)
    try:
        config = GPTConfig(
            block_size=hints.get(
                "block_size", sd["transformer.wpe.weight"].shape[0] if "transformer.wpe.weight" in sd else 1024
            ),
            vocab_size=vocab,
            padded_vocab_size=padded,
            n_layer=n_layer,
            n_head=n_head,
            n_embd=n_embd,
            dropout=float(hints.get("dropout", 0.0)),
            layer_norm_epsilon=float(hints.get("layer_norm_epsilon", 1e-5)),
            bias=bool(bias),
            activation=hints.get("activation", "gelu_new"),
        )
    except ValueError as e:
        raise GptkitError(f"{source}: inconsistent model config ({e})") from None
    if rows < padded:  # HF and GGUF store exactly the real vocabulary; gptkit keeps the padded rows
        sd = dict(sd)
        sd["transformer.wte.weight"] = torch.cat([wte, wte.new_zeros(padded - rows, n_embd)])
    return Loaded(config, sd, tokenizer, Path(source), fmt, meta or {}, notes, assumed)


# --- a tokenizer inside a single file ---------------------------------------------------------------


def tokenizer_record(tok: Tokenizer | None) -> dict[str, str]:
    """The tokenizer as plain strings for a file's metadata: its info block and, unless it is built
    in, what it takes to rebuild it (tokenizer.json text, or the character table)."""
    if tok is None:
        return {}
    rec = {"gptkit.tokenizer": tok.name, "gptkit.tokenizer_info": json.dumps(tok.info())}
    if isinstance(tok, HFTokenizer):
        rec["gptkit.tokenizer_json"] = tok.tk.to_str()
    elif isinstance(tok, CharTokenizer):
        rec["gptkit.tokenizer_chars"] = json.dumps({"chars": tok.chars, "eot": tok.eot_token}, ensure_ascii=False)
    return rec


def tokenizer_from_record(rec: dict, where: Path) -> Tokenizer | None:
    """The inverse of tokenizer_record (also reads files that only name a built-in tokenizer)."""
    info_text = rec.get("gptkit.tokenizer_info")
    name = rec.get("gptkit.tokenizer")
    if not info_text and not name:
        return None
    try:
        info = json.loads(info_text) if info_text else {"name": name}
        if rec.get("gptkit.tokenizer_json"):
            from tokenizers import Tokenizer as TK

            tok: Tokenizer = HFTokenizer(
                TK.from_str(rec["gptkit.tokenizer_json"]), spec=str(where), source=f"tokenizer inside {where}"
            )
        elif rec.get("gptkit.tokenizer_chars"):
            d = json.loads(rec["gptkit.tokenizer_chars"])
            tok = CharTokenizer(d["chars"], d.get("eot"), spec=str(where), source=f"tokenizer inside {where}")
        else:
            return tokenizer_for(info, None, str(where))
    except (ValueError, KeyError, TypeError) as e:
        raise GptkitError(f"{where}: its tokenizer metadata is damaged ({e.__class__.__name__})") from None
    if info.get("vocab_hash") and info["vocab_hash"] != tok.vocab_hash:
        raise GptkitError(f"{where}: the tokenizer stored inside does not match its recorded vocabulary hash")
    return tok
