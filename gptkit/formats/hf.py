"""Hugging Face GPT-2 directories: config.json + model.safetensors (or pytorch_model.bin), and on
output the GPT-2 tokenizer files (vocab.json, merges.txt, tokenizer.json), rebuilt from the tiktoken
ranks gptkit already has, so GPT2LMHeadModel and GPT2Tokenizer load the directory as it is.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import torch

from gptkit import __version__
from gptkit.checkpoint import read_json
from gptkit.data.tokenizers import EOT_TOKENS, bytes_to_unicode, get_tokenizer
from gptkit.errors import GptkitError
from gptkit.formats.loaded import Format, Loaded, assemble, cast_state_dict, to_gptkit_names
from gptkit.formats.pt import torch_load
from gptkit.fsutil import write_json_atomic
from gptkit.model import CONV1D_SUFFIXES


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
    if act not in ("gelu_new", "gelu_pytorch_tanh"):
        raise GptkitError(f"{path}: activation {act!r} differs from GPT-2's tanh GELU, which gptkit's model uses")
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
        "tokenizer": g.get("tokenizer") or ("gpt2" if (path / "vocab.json").is_file() else None),
        "padded_vocab_size": g.get("padded_vocab_size"),
    }
    return assemble(to_gptkit_names(sd, path), hints, path, "hf")


@functools.lru_cache(maxsize=1)
def gpt2_hf_vocab() -> tuple[dict[str, int], list[str]]:
    """GPT-2's vocab.json and merges.txt, rebuilt from the tiktoken ranks gptkit already has.

    Each token's merge is recovered by running BPE on its bytes with only the lower-ranked merges:
    what is left is exactly two parts, the pair whose merge created the token.
    """
    tok = get_tokenizer("gpt2")
    eot = tok.eot_token
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


def write_hf_tokenizer(out: Path, block_size: int) -> None:
    vocab, merges = gpt2_hf_vocab()
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    eot = "<|endoftext|>"
    write_json_atomic(
        out / "tokenizer_config.json",
        {
            "tokenizer_class": "GPT2Tokenizer",
            "model_max_length": block_size,
            "add_prefix_space": False,
            "bos_token": eot,
            "eos_token": eot,
            "unk_token": eot,
        },
    )
    write_json_atomic(out / "special_tokens_map.json", {"bos_token": eot, "eos_token": eot, "unk_token": eot})
    # The same tokenizer for the `tokenizers` library (fast tokenizers, TGI, candle, ...):
    # byte-level pre-tokenisation and decoding around a plain BPE model.
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    write_json_atomic(
        out / "tokenizer.json",
        {
            "version": "1.0",
            "truncation": None,
            "padding": None,
            "added_tokens": [
                {
                    "id": vocab[eot],
                    "content": eot,
                    "single_word": False,
                    "lstrip": False,
                    "rstrip": False,
                    "normalized": False,
                    "special": True,
                }
            ],
            "normalizer": None,
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


HF_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def write(m: Loaded, out: Path, dtype: torch.dtype) -> list[str]:
    """A directory GPT2LMHeadModel.from_pretrained loads: Conv1D layout, the real vocabulary only."""
    from safetensors.torch import save_file

    c = m.config
    out.mkdir()
    sd = {}
    for k, v in cast_state_dict(m.state_dict, dtype).items():
        if k.endswith(CONV1D_SUFFIXES):
            v = v.t().contiguous()  # nn.Linear (out, in) -> Conv1D (in, out)
        if k == "transformer.wte.weight":
            v = v[: c.vocab_size].contiguous()  # the padded rows are never used: HF has none
        sd[k] = v
    save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
    eot = EOT_TOKENS.get(m.tokenizer)
    write_json_atomic(
        out / "config.json",
        {
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            "activation_function": "gelu_new",
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
            "gptkit": {"tokenizer": m.tokenizer, "padded_vocab_size": c.padded_vocab_size, "version": __version__},
        },
    )
    write_json_atomic(out / "generation_config.json", {"bos_token_id": eot, "eos_token_id": eot})
    if m.tokenizer == "gpt2":
        write_hf_tokenizer(out, c.block_size)
        return []
    return [f"no tokenizer files: gptkit's {m.tokenizer!r} tokenizer has no Hugging Face equivalent"]


FORMAT = Format("hf", detect, read, write)
