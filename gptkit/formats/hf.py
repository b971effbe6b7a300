"""Hugging Face GPT-2 directories: config.json + model.safetensors (or pytorch_model.bin) and the
model's own tokenizer files (tokenizer.json, or vocab.json + merges.txt).

On output, the model's tokenizer as transformers' AutoTokenizer loads it: GPT-2's files rebuilt from
the tiktoken ranks gptkit already has; a user's Hugging Face tokenizer as its tokenizer.json (plus
vocab.json + merges.txt for byte-level BPE); the `bytes` vocabulary as a byte-level BPE without
merges. Character vocabularies have no HF equivalent: they go in a gptkit `tokenizer/` folder only
gptkit reads. HF's GPT-2 always has biases; its activation_function says which GELU (gelu_new: tanh,
gelu: exact).
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

import torch

from gptkit import __version__
from gptkit.checkpoint import read_json
from gptkit.errors import GptkitError
from gptkit.formats.loaded import NEEDS_TOKENIZER, Format, Loaded, assemble, cast_state_dict, to_gptkit_names
from gptkit.formats.pt import torch_load
from gptkit.fsutil import save_safetensors, write_json_atomic
from gptkit.model import CONV1D_SUFFIXES
from gptkit.tokenizer import (
    GPT2_EOT,
    HFTokenizer,
    Tokenizer,
    bytes_to_unicode,
    get_tokenizer,
    save_tokenizer,
    tokenizer_for,
)
from gptkit.vocab_files import SAVED_DIR, SAVED_INFO


def detect(path: Path, head: bytes | None) -> bool:
    if head is not None or not (path / "config.json").is_file():
        return False
    cfg = read_json(path / "config.json")
    return "model_type" in cfg or "architectures" in cfg


def read(path: Path) -> Loaded:
    cfg = read_json(path / "config.json")
    if cfg.get("model_type") != "gpt2":
        raise GptkitError(f"{path}: a {cfg.get('model_type')!r} model; gptkit reads GPT-2 (model_type gpt2) only")
    missing = [k for k in ("n_embd", "n_layer", "n_head") if not isinstance(cfg.get(k), int)]
    if missing:
        raise GptkitError(f"{path / 'config.json'}: no {', '.join(missing)}; not a GPT-2 config")
    act = cfg.get("activation_function", "gelu_new")
    if act not in HF_ACTIVATIONS:
        raise GptkitError(
            f"{path}: activation_function {act!r}; gptkit's model computes {', '.join(HF_ACTIVATIONS)} only"
        )
    if cfg.get("n_inner") not in (None, 4 * cfg["n_embd"]):
        raise GptkitError(f"{path}: n_inner {cfg['n_inner']} differs from 4 * n_embd, which gptkit's model uses")
    if (
        cfg.get("scale_attn_by_inverse_layer_idx")
        or cfg.get("reorder_and_upcast_attn")
        or cfg.get("scale_attn_weights") is False
    ):
        raise GptkitError(f"{path}: non-standard GPT-2 attention options; gptkit's model cannot reproduce them")
    if cfg.get("tie_word_embeddings") is False:
        raise GptkitError(f"{path}: untied embeddings; gptkit models always tie lm_head to wte")
    sd = {}
    index = path / "model.safetensors.index.json"
    files = [path / "model.safetensors"] if (path / "model.safetensors").is_file() else []
    if not files and index.is_file():
        files = [path / name for name in sorted(set(read_json(index).get("weight_map", {}).values()))]
    if files:
        from safetensors.torch import load_file

        for f in files:
            try:
                sd.update(load_file(str(f)))
            except Exception as e:  # noqa: BLE001
                raise GptkitError(
                    f"{f}: cannot read weights ({e.__class__.__name__}); the file is corrupt or truncated"
                ) from None
    elif (path / "pytorch_model.bin").is_file():
        sd = torch_load(path / "pytorch_model.bin")
    else:
        raise GptkitError(f"{path}: no model.safetensors or pytorch_model.bin")
    g = cfg.get("gptkit", {}) if isinstance(cfg.get("gptkit"), dict) else {}
    hints = {
        "n_layer": cfg["n_layer"],
        "n_head": cfg["n_head"],
        "block_size": cfg.get("n_positions", 1024),
        "layer_norm_epsilon": cfg.get("layer_norm_epsilon", 1e-5),
        "padded_vocab_size": g.get("padded_vocab_size"),
        "vocab_size": cfg.get("vocab_size"),
        "bias": True,
        "activation": HF_ACTIVATIONS[act],
    }
    tok, notes = read_tokenizer(path, g)
    return assemble(to_gptkit_names(sd, path), hints, path, "hf", tokenizer=tok, notes=notes)


# HF activation_function -> gptkit's activation (HF's ACT2FN: gelu_new and gelu_pytorch_tanh are the
# same tanh approximation, gelu is the exact erf form).
HF_ACTIVATIONS = {"gelu_new": "gelu_new", "gelu_pytorch_tanh": "gelu_new", "gelu": "gelu"}
HF_TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt")


def read_tokenizer(path: Path, g: dict) -> tuple[Tokenizer | None, list[str]]:
    """The directory's own tokenizer files, as AutoTokenizer would find them; else the gptkit
    `tokenizer/` folder or built-in name that gptkit wrote for vocabularies HF cannot express."""
    info = g.get("tokenizer_info") or g.get("tokenizer")
    if (path / "tokenizer.json").is_file() or ((path / "vocab.json").is_file() and (path / "merges.txt").is_file()):
        tok = get_tokenizer(path)
        if isinstance(info, dict) and info.get("kind", "builtin") == "builtin" and info.get("name") == "bytes":
            return bytes_from_files(tok, path), []
        want = info.get("vocab_hash") if isinstance(info, dict) else None
        if want and want != tok.vocab_hash:
            raise GptkitError(f"{path}: its tokenizer files differ from the vocabulary gptkit recorded in config.json")
        return tok, []
    if info or (path / SAVED_DIR / SAVED_INFO).is_file():
        return tokenizer_for(info or {}, path, str(path)), []
    return None, [f"no tokenizer files (tokenizer.json, or vocab.json + merges.txt); {NEEDS_TOKENIZER}"]


def bytes_from_files(files: Tokenizer, path: Path) -> Tokenizer:
    """gptkit's `bytes` tokenizer, once the directory's files are shown to encode as it does: every
    byte value, end-of-text (byte 0) and "Ā" (the character byte 0 is drawn as) included."""
    tok = get_tokenizer("bytes")
    probe = "".join(map(chr, range(256))) + " Ā\u0100 héllo 世界  \t\n "
    if files.encode(probe) != tok.encode(probe):
        raise GptkitError(f"{path}: its tokenizer files do not encode as the bytes vocabulary config.json names")
    return tok


@functools.lru_cache(maxsize=1)
def gpt2_hf_vocab() -> tuple[dict[str, int], list[str]]:
    """GPT-2's vocab.json and merges.txt, rebuilt from the tiktoken ranks gptkit already has.

    Each token's merge is recovered by running BPE on its bytes with only the lower-ranked merges:
    what is left is exactly two parts, the pair whose merge created the token.
    """
    tok = get_tokenizer("gpt2")
    eot = GPT2_EOT
    ranks = {tok.decode_bytes([i]): i for i in range(eot)}
    byte_char = bytes_to_unicode()

    def text(b: bytes) -> str:
        return "".join(byte_char[x] for x in b)

    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) == 1:
            continue
        parts = [bytes([b]) for b in token]
        while len(parts) > 2:
            best = min(range(len(parts) - 1), key=lambda i: ranks.get(parts[i] + parts[i + 1], 1 << 30))
            if ranks.get(parts[best] + parts[best + 1], 1 << 30) >= rank:
                break
            parts[best : best + 2] = [parts[best] + parts[best + 1]]
        if len(parts) != 2:
            raise GptkitError(f"cannot rebuild GPT-2's merges at token {rank}; the vocabulary is not GPT-2's")
        merges.append(f"{text(parts[0])} {text(parts[1])}")
    vocab = {text(tok): i for tok, i in ranks.items()}
    vocab["<|endoftext|>"] = eot
    return vocab, merges


def write_gpt2_tokenizer(out: Path, block_size: int) -> None:
    vocab, merges = gpt2_hf_vocab()
    write_byte_level_bpe(out, vocab, merges, "<|endoftext|>", block_size, "GPT2Tokenizer")


def write_bytes_tokenizer(out: Path, block_size: int) -> None:
    """gptkit's `bytes` vocabulary (id = the byte's value) as a byte-level BPE with no merges: the
    byte-level pre-tokenizer maps byte b to the character bytes_to_unicode()[b], whose id is b.
    End-of-text is byte 0 (id 0). Programs that score or generate need it named as BOS/EOS
    (lm-evaluation-harness prefixes rolling windows and empty contexts with it and stops generating
    at it; without one it fails), so id 0 is the special token "<|endoftext|>", as in GPT-2's files
    (that text encodes as end-of-text, as there). Id 0 needs that name in the vocabulary itself (the
    `tokenizers` library gives an added token that is not in it a new id), in place of byte 0's
    character U+0100, which no text reaches: the normalizer drops NUL first. Declaring U+0100
    special instead would make the text "Ā" encode as end-of-text. PreTrainedTokenizerFast, not
    GPT2Tokenizer, which would add a "<|endoftext|>" token of its own."""
    vocab = {ch: b for b, ch in sorted(bytes_to_unicode().items()) if b}
    vocab["<|endoftext|>"] = 0
    # Text never holds byte 0 (gptkit's encoder drops it, so it only ever means end-of-text).
    drop_nul = {"type": "Replace", "pattern": {"String": "\u0000"}, "content": ""}
    write_byte_level_bpe(out, vocab, [], "<|endoftext|>", block_size, "PreTrainedTokenizerFast", normalizer=drop_nul)


def write_byte_level_bpe(
    out: Path,
    vocab: dict[str, int],
    merges: list[str],
    eot: str | None,
    block_size: int,
    cls: str,
    normalizer: dict | None = None,
) -> None:
    """vocab.json + merges.txt (slow tokenizers, llama.cpp's converter), tokenizer.json (the
    `tokenizers` library: fast tokenizers, TGI, candle) and the configs AutoTokenizer reads."""
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (out / "merges.txt").write_text("#version: 0.2\n" + "".join(m + "\n" for m in merges), encoding="utf-8")
    special = {"bos_token": eot, "eos_token": eot, "unk_token": eot} if eot else {}
    write_json_atomic(
        out / "tokenizer_config.json",
        {"tokenizer_class": cls, "model_max_length": block_size, "add_prefix_space": False, **special},
    )
    write_json_atomic(out / "special_tokens_map.json", special)
    # Byte-level pre-tokenisation and decoding around a plain BPE model.
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    added = (
        [
            {
                "id": vocab[eot],
                "content": eot,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True,
            }
        ]
        if eot
        else []
    )
    write_json_atomic(
        out / "tokenizer.json",
        {
            "version": "1.0",
            "truncation": None,
            "padding": None,
            "added_tokens": added,
            "normalizer": normalizer,
            "pre_tokenizer": byte_level,
            "post_processor": {**byte_level, "trim_offsets": False},
            "decoder": byte_level,
            "model": {
                "type": "BPE",
                "dropout": None,
                "unk_token": None,
                "continuing_subword_prefix": "",
                "end_of_word_suffix": "",
                "fuse_unk": False,
                "byte_fallback": False,
                "ignore_merges": False,
                "vocab": vocab,
                "merges": merges,
            },
        },
    )


def write_user_tokenizer(tok: HFTokenizer, out: Path, block_size: int) -> None:
    """A user's HF tokenizer: its tokenizer.json as it is, plus vocab.json + merges.txt when it is a
    byte-level BPE (what GPT-2-style slow tokenizers and llama.cpp's converter read)."""
    tok.tk.save(str(out / "tokenizer.json"))
    spec = json.loads(tok.tk.to_str())
    model = spec.get("model") or {}
    if tok.byte_level and model.get("type") == "BPE":
        merges = [mg if isinstance(mg, str) else " ".join(mg) for mg in model.get("merges") or []]
        vocab = tok.tk.get_vocab(with_added_tokens=True)
        (out / "vocab.json").write_text(
            json.dumps(dict(sorted(vocab.items(), key=lambda kv: kv[1])), ensure_ascii=False), encoding="utf-8"
        )
        (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    special = {}
    if tok.eot_token is not None:
        eot = tok.tk.id_to_token(tok.eot_token)
        special = {"bos_token": eot, "eos_token": eot, "unk_token": eot}
    # PreTrainedTokenizerFast loads tokenizer.json as it is, so AutoTokenizer encodes exactly as the
    # `tokenizers` library does; a class that rebuilds its own pipeline might not.
    write_json_atomic(
        out / "tokenizer_config.json",
        {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": block_size, **special},
    )
    write_json_atomic(out / "special_tokens_map.json", special)


HF_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def write(m: Loaded, out: Path, dtype: torch.dtype) -> list[str]:
    """A directory GPT2LMHeadModel.from_pretrained loads: Conv1D layout, the real vocabulary only."""
    c = m.config
    if not c.bias:
        raise GptkitError(
            "Hugging Face GPT-2 has no bias=False: this model has no biases, so it cannot be written as hf"
        )
    act = next(k for k, v in HF_ACTIVATIONS.items() if v == c.activation)
    tok = m.tokenizer
    out.mkdir()
    sd = {}
    for k, v in cast_state_dict(m.state_dict, dtype).items():
        if k.endswith(CONV1D_SUFFIXES):
            v = v.t().contiguous()  # nn.Linear (out, in) -> Conv1D (in, out)
        if k == "transformer.wte.weight":
            v = v[: c.vocab_size].contiguous()  # the padded rows are never used: HF has none
        sd[k] = v
    save_safetensors(sd, out / "model.safetensors", metadata={"format": "pt"})  # 0644 like the JSON beside it
    eot = tok.eot_token if tok is not None else None
    gptkit_block: dict = {"padded_vocab_size": c.padded_vocab_size, "version": __version__}
    if tok is not None:
        gptkit_block.update(tokenizer=tok.name, tokenizer_info=tok.info())
    write_json_atomic(
        out / "config.json",
        {
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            "activation_function": act,
            "vocab_size": c.vocab_size,
            "n_positions": c.block_size,
            "n_ctx": c.block_size,
            "n_embd": c.n_embd,
            "n_layer": c.n_layer,
            "n_head": c.n_head,
            "n_inner": None,
            "layer_norm_epsilon": c.layer_norm_epsilon,
            "resid_pdrop": c.dropout,
            "embd_pdrop": c.dropout,
            "attn_pdrop": c.dropout,
            "initializer_range": 0.02,
            "scale_attn_weights": True,
            "scale_attn_by_inverse_layer_idx": False,
            "reorder_and_upcast_attn": False,
            "tie_word_embeddings": True,
            "use_cache": True,
            "bos_token_id": eot,
            "eos_token_id": eot,
            "torch_dtype": HF_DTYPE_NAMES[dtype],
            "gptkit": gptkit_block,
        },
    )
    write_json_atomic(out / "generation_config.json", {"bos_token_id": eot, "eos_token_id": eot})
    from gptkit.formats.card import model_card

    name = m.path.parent.name if re.fullmatch(r"step_\d+", m.path.name) else (m.path.stem or "gptkit-model")
    (out / "README.md").write_text(model_card(m, name), encoding="utf-8")
    if tok is None:
        return [f"no tokenizer files: the source has no tokenizer; {NEEDS_TOKENIZER}"]
    if tok.kind == "builtin" and tok.name == "gpt2":
        write_gpt2_tokenizer(out, c.block_size)
        return []
    if tok.kind == "builtin" and tok.name == "bytes":
        write_bytes_tokenizer(out, c.block_size)
        return []
    if isinstance(tok, HFTokenizer):
        write_user_tokenizer(tok, out, c.block_size)
        return []
    save_tokenizer(tok, out / SAVED_DIR)
    return [
        f"no Hugging Face tokenizer files: the {tok.name} vocabulary has no Hugging Face equivalent "
        f"(gptkit reads it from {SAVED_DIR}/)"
    ]


FORMAT = Format("hf", detect, read, write)
