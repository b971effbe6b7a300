"""GGUF files of arch gpt2, as llama.cpp's convert_hf_to_gguf writes them, through the `gguf` package
(optional: only reading or writing GGUF needs it).

The tokenizer is llama.cpp's: tokenizer.ggml.model "gpt2" (byte-level BPE) with its tokens and
merges, written for GPT-2's vocabulary, a user's byte-level BPE, bytes and characters (ggml_vocab
says how); a vocabulary llama.cpp cannot express (an HF tokenizer that is not byte-level BPE) is
refused before anything is written, and so is a model without a tokenizer (llama.cpp 0.3.36 refused
its "none" tokenizer model for such a file). llama.cpp's gpt2 architecture is tanh GELU with
biases: other shapes are refused. scripts/check_llamacpp.py checks the files against llama.cpp itself.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from gptkit.checkpoint import TIED_KEY
from gptkit.errors import GptkitError
from gptkit.formats.hf import gpt2_hf_vocab
from gptkit.formats.loaded import (
    NEEDS_TOKENIZER,
    Format,
    Loaded,
    assemble,
    to_gptkit_names,
    tokenizer_from_record,
    tokenizer_record,
)
from gptkit.tokenizer import VOCAB_SIZES, HFTokenizer, Tokenizer, bytes_to_unicode, get_tokenizer


def detect(path: Path, head: bytes | None) -> bool:
    return head is not None and head[:4] == b"GGUF"


# GGUF tensor names for arch gpt2, as llama.cpp's convert_hf_to_gguf.py writes them (gguf-py's
# TENSOR_NAMES); "{i}" is the block. The tied output matrix is not stored: llama.cpp reuses token_embd.
GGUF_NAMES = {
    "transformer.wte.weight": "token_embd.weight",
    "transformer.wpe.weight": "position_embd.weight",
    "transformer.ln_f.weight": "output_norm.weight",
    "transformer.ln_f.bias": "output_norm.bias",
}
GGUF_BLOCK_NAMES = {
    "ln_1": "attn_norm",
    "attn.c_attn": "attn_qkv",
    "attn.c_proj": "attn_output",
    "ln_2": "ffn_norm",
    "mlp.c_fc": "ffn_up",
    "mlp.c_proj": "ffn_down",
}


def gguf_name(key: str) -> str:
    if key in GGUF_NAMES:
        return GGUF_NAMES[key]
    m = re.fullmatch(r"transformer\.h\.(\d+)\.(.+)\.(weight|bias)", key)
    if not m or m.group(2) not in GGUF_BLOCK_NAMES:
        raise KeyError(key)
    return f"blk.{m.group(1)}.{GGUF_BLOCK_NAMES[m.group(2)]}.{m.group(3)}"


def gptkit_name_from_gguf(name: str) -> str | None:
    inv = {v: k for k, v in GGUF_NAMES.items()}
    if name in inv:
        return inv[name]
    m = re.fullmatch(r"blk\.(\d+)\.(\w+)\.(weight|bias)", name)
    blocks = {v: k for k, v in GGUF_BLOCK_NAMES.items()}
    if m and m.group(2) in blocks:
        return f"transformer.h.{m.group(1)}.{blocks[m.group(2)]}.{m.group(3)}"
    return None


def gguf_field(f, index: int = 0):
    """One value of a GGUFReader field: a str for strings, a Python number otherwise."""
    import gguf

    part = f.parts[f.data[index]]
    if f.types[-1] == gguf.GGUFValueType.STRING:
        return bytes(part).decode("utf-8")
    return part.tolist()[0]


def read(path: Path) -> Loaded:
    try:
        import gguf
        import numpy as np
    except ImportError:
        raise GptkitError("reading GGUF needs the gguf package: pip install gguf") from None
    try:
        reader = gguf.GGUFReader(str(path))
        fields = {k: gguf_field(f) for k, f in reader.fields.items() if not k.startswith("tokenizer.ggml.")}
        arch = fields.get("general.architecture")
        if arch != "gpt2":
            raise GptkitError(f"{path}: GGUF architecture {arch!r}; gptkit reads gpt2 only")
        sd = {}
        for t in reader.tensors:
            key = gptkit_name_from_gguf(t.name)
            if key is None:
                if t.name != "output.weight":
                    raise GptkitError(f"{path}: unexpected GGUF tensor {t.name!r} for a GPT-2 model")
                key = TIED_KEY  # an explicit copy of the tied head: checked equal to wte below
            if t.tensor_type in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
                data = np.array(t.data)
            else:
                data = gguf.quants.dequantize(t.data, t.tensor_type)
            sd[key] = torch.from_numpy(np.ascontiguousarray(data)).float()
        model_field = reader.fields.get("tokenizer.ggml.model")
        tok_model = gguf_field(model_field) if model_field is not None else None
        tokens = field_strings(reader.fields.get("tokenizer.ggml.tokens"))
        merges = field_strings(reader.fields.get("tokenizer.ggml.merges"))
        types_field = reader.fields.get("tokenizer.ggml.token_type")
        types = [gguf_field(types_field, i) for i in range(len(types_field.data))] if types_field else []
        control = [i for i, t in enumerate(types) if t == gguf.TokenType.CONTROL]
    except GptkitError:
        raise
    except Exception as e:  # noqa: BLE001 - truncated files surface as ValueError/IndexError from numpy
        raise GptkitError(
            f"{path}: cannot read GGUF ({e.__class__.__name__}); the file is corrupt or truncated"
        ) from None
    tokenizer, notes = read_tokenizer(path, fields, tok_model, tokens, merges, control)
    a = f"{arch}."
    hints = {
        "n_layer": fields.get(a + "block_count"),
        "n_head": fields.get(a + "attention.head_count"),
        "block_size": fields.get(a + "context_length"),
        "layer_norm_epsilon": fields.get(a + "attention.layer_norm_epsilon", 1e-5),
        "padded_vocab_size": fields.get("gptkit.padded_vocab_size"),
    }
    hints = {k: v for k, v in hints.items() if v is not None}
    return assemble(to_gptkit_names(sd, path), hints, path, "gguf", tokenizer=tokenizer, notes=notes)


def field_strings(f) -> list[str]:
    """All strings of an array field of a GGUFReader (tokens, merges); [] when absent."""
    return [bytes(f.parts[i]).decode("utf-8") for i in f.data] if f is not None else []


def read_tokenizer(
    path: Path, fields: dict, tok_model: str | None, tokens: list[str], merges: list[str], control: list[int]
) -> tuple[Tokenizer | None, list[str]]:
    """llama.cpp's byte-level BPE (tokenizer.ggml.*) when the file has one, checked against the
    vocabulary gptkit recorded; else the tokenizer gptkit stored in its own metadata."""
    info = json.loads(fields["gptkit.tokenizer_info"]) if fields.get("gptkit.tokenizer_info") else {}
    name = info.get("name") or fields.get("gptkit.tokenizer")
    if tok_model != "gpt2" or not tokens or name in ("bytes",) or fields.get("gptkit.tokenizer_chars"):
        tok = tokenizer_from_record(fields, path)
        if tok is None and tok_model is None:
            return None, [f"no tokenizer metadata; {NEEDS_TOKENIZER}"]
        if tok is None and len(tokens) == VOCAB_SIZES["bytes"] and not merges:
            tok = get_tokenizer("bytes")  # what gptkit wrote for its byte vocabulary before it recorded the name
        if tok is None:
            return None, [f"tokenizer.ggml.model {tok_model!r} is not byte-level BPE; {NEEDS_TOKENIZER}"]
        return tok, []
    if len(tokens) == VOCAB_SIZES["gpt2"] and tokens[-1] == "<|endoftext|>" and name in (None, "gpt2"):
        tok = get_tokenizer("gpt2")
        byte_char = bytes_to_unicode()
        gpt2_tokens = ["".join(byte_char[b] for b in tok.decode_bytes([i])) for i in range(len(tokens) - 1)]
        if tokens[:-1] != gpt2_tokens:
            raise GptkitError(f"{path}: a 50,257-token vocabulary that is not GPT-2's; gptkit cannot read it")
        return tok, []
    tok = bpe_from_ggml(tokens, merges, control, path)
    if info.get("vocab_hash") and info["vocab_hash"] != tok.vocab_hash:
        raise GptkitError(f"{path}: its tokenizer.ggml tokens and merges differ from the vocabulary gptkit recorded")
    return tok, []


def bpe_from_ggml(tokens: list[str], merges: list[str], control: list[int], path: Path) -> HFTokenizer:
    """llama.cpp's gpt2 tokenizer (byte-level BPE, GPT-2's pre-tokenizer) as a `tokenizers` model."""
    try:
        from tokenizers import AddedToken, decoders, models, pre_tokenizers
        from tokenizers import Tokenizer as TK
    except ImportError:
        raise GptkitError("reading a GGUF tokenizer needs the `tokenizers` package: pip install tokenizers") from None
    pairs = []
    for m in merges:
        a, sep, b = m.partition(" ")
        if not sep:
            raise GptkitError(f"{path}: malformed tokenizer.ggml.merges entry {m!r}")
        pairs.append((a, b))
    tk = TK(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=pairs))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    if control:
        tk.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False) for i in control])
    return HFTokenizer(tk, spec=str(path), source=f"GGUF tokenizer ({path})")


# llama.cpp refuses a gpt2 tokenizer without tokenizer.ggml.merges ("cannot find tokenizer merges"),
# and gguf refuses to write an empty array. A vocabulary with no merges of its own (bytes, ASCII
# characters) gets this one, which never applies: llama.cpp's GPT-2 pre-tokenizer always splits a
# letter from a digit (` ?\p{L}+| ?\p{N}+`), so no piece it merges holds "a" then "1".
INERT_MERGE = "a 1"


def ggml_vocab(tok: Tokenizer | None) -> tuple[list[str], list[str], set[int]] | None:
    """(tokens by id, merges, special ids) for llama.cpp's byte-level BPE, or None if `tok` is not one."""
    if tok is None:
        return None
    if tok.kind == "builtin" and tok.name == "gpt2":
        vocab, merges = gpt2_hf_vocab()
        return sorted(vocab, key=vocab.__getitem__), merges, {vocab["<|endoftext|>"]}
    byte_char = bytes_to_unicode()
    if tok.kind == "builtin" and tok.name == "bytes":
        # Byte i is token i; llama.cpp's byte-level BPE with no (applicable) merges yields single bytes.
        return [byte_char[i] for i in range(256)], [INERT_MERGE], {tok.eot_token or 0}
    chars = getattr(tok, "chars", None)
    if tok.kind == "chars" and isinstance(chars, list | tuple) and len(chars) == tok.vocab_size:
        # Character i is token i: its UTF-8 bytes in byte-level form, built by merges left to right
        # (a merge's intermediate need not be a token). A character outside the vocabulary is dropped
        # by llama.cpp, where gptkit refuses it.
        tokens, merges = [], []
        for c in chars:
            units = [byte_char[b] for b in str(c).encode("utf-8")]
            for k in range(1, len(units)):
                merges.append(f"{''.join(units[:k])} {units[k]}")
            tokens.append("".join(units))
        if len(set(tokens)) != len(tokens):
            return None
        merges = list(dict.fromkeys(merges)) or [INERT_MERGE]
        eot = tok.eot_token
        return tokens, merges, set() if eot is None else {eot}
    if isinstance(tok, HFTokenizer) and tok.byte_level:
        spec = json.loads(tok.tk.to_str())
        model = spec.get("model") or {}
        if model.get("type") != "BPE":
            return None
        tokens = [tok.tk.id_to_token(i) for i in range(tok.vocab_size)]
        if any(t is None for t in tokens):
            return None  # ids with holes: llama.cpp's token list is dense
        merges = [mg if isinstance(mg, str) else " ".join(mg) for mg in model.get("merges") or []]
        special = {a["id"] for a in spec.get("added_tokens") or [] if a.get("special")}
        return tokens, merges or [INERT_MERGE], special
    return None


def gguf_keeps_f32(key: str, v: torch.Tensor) -> bool:
    """llama.cpp's rule, whatever the file type: 1-D tensors (norms, biases) and position embeddings stay F32."""
    return v.dim() == 1 or key == "transformer.wpe.weight"


def write(m: Loaded, out: Path, dtype: torch.dtype) -> list[str]:
    c = m.config
    unlike = [
        w for w, differs in (("the exact GELU", c.activation != "gelu_new"), ("no biases", not c.bias)) if differs
    ]
    if unlike:
        raise GptkitError(
            f"GGUF's gpt2 architecture is tanh GELU with biases; this model has {' and '.join(unlike)}, "
            "which llama.cpp would compute differently"
        )
    try:
        import gguf
        import numpy as np
    except ImportError:
        raise GptkitError("writing GGUF needs the gguf package: pip install gguf") from None
    qtype = {
        torch.float32: gguf.GGMLQuantizationType.F32,
        torch.float16: gguf.GGMLQuantizationType.F16,
        torch.bfloat16: gguf.GGMLQuantizationType.BF16,
    }[dtype]
    ftype = {
        torch.float32: gguf.LlamaFileType.ALL_F32,
        torch.float16: gguf.LlamaFileType.MOSTLY_F16,
        torch.bfloat16: gguf.LlamaFileType.MOSTLY_BF16,
    }[dtype]
    w = gguf.GGUFWriter(str(out), arch="gpt2")
    w.add_name(m.path.stem or "gptkit-model")
    w.add_block_count(c.n_layer)
    w.add_context_length(c.block_size)
    w.add_embedding_length(c.n_embd)
    w.add_feed_forward_length(4 * c.n_embd)
    w.add_head_count(c.n_head)
    w.add_layer_norm_eps(c.layer_norm_epsilon)
    w.add_file_type(ftype)
    w.add_uint32("gptkit.padded_vocab_size", c.padded_vocab_size)
    notes: list[str] = []
    tok = m.tokenizer
    ggml = ggml_vocab(tok)
    if tok is None:  # before anything is written: llama.cpp refuses a GGUF without a vocabulary
        raise GptkitError(
            "the model carries no tokenizer, and llama.cpp does not load a GGUF without one; name it with "
            "--tokenizer (gpt2, bytes, a tokenizer.json, a meta.pkl)"
        )
    if ggml is None:  # before anything is written: llama.cpp could not load the file
        raise GptkitError(
            f"llama.cpp cannot read the {tok.name} vocabulary from a GGUF: its gpt2 tokenizer is byte-level BPE, "
            "which this tokenizer is not; convert to hf, safetensors or gptkit instead"
        )
    record = tokenizer_record(tok)
    if ggml is not None:
        record.pop("gptkit.tokenizer_json", None)  # tokens and merges say it all
    for key, value in record.items():
        w.add_string(key, value)
    if ggml is not None:
        tokens, merges, special = ggml
        eot = tok.eot_token if tok is not None else None
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("gpt-2")
        w.add_token_list(tokens)
        w.add_token_types(
            [gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL for i in range(len(tokens))]
        )
        w.add_token_merges(merges)
        if eot is not None:
            w.add_bos_token_id(eot)
            w.add_eos_token_id(eot)
            w.add_unk_token_id(eot)
    for k, v in m.state_dict.items():
        if k == "transformer.wte.weight":
            v = v[: c.vocab_size]
        name = gguf_name(k)
        arr = v.detach().float().contiguous().numpy()
        if gguf_keeps_f32(k, v) or qtype == gguf.GGMLQuantizationType.F32:
            w.add_tensor(name, arr)
        elif qtype == gguf.GGMLQuantizationType.F16:
            w.add_tensor(name, arr.astype(np.float16))
        else:
            raw = gguf.quants.quantize(arr, qtype)
            w.add_tensor(name, raw, raw_shape=raw.shape, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return notes


FORMAT = Format("gguf", detect, read, write, suffixes=(".gguf",), keeps_fp32=gguf_keeps_f32)
