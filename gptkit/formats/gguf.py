"""GGUF files of arch gpt2, as llama.cpp's convert_hf_to_gguf writes them, through the `gguf` package
(optional: only reading or writing GGUF needs it). Tokenizer metadata for gpt2 and bytes vocabularies.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from gptkit.checkpoint import TIED_KEY
from gptkit.data.tokenizers import EOT_TOKENS, VOCAB_SIZES, bytes_to_unicode
from gptkit.errors import GptkitError
from gptkit.formats.hf import gpt2_hf_vocab
from gptkit.formats.loaded import Format, Loaded, assemble, to_gptkit_names


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
        tokens = reader.fields.get("tokenizer.ggml.tokens")
        n_tokens = len(tokens.data) if tokens is not None else 0
        last_token = gguf_field(tokens, n_tokens - 1) if n_tokens else None
    except GptkitError:
        raise
    except Exception as e:  # noqa: BLE001 - truncated files surface as ValueError/IndexError from numpy
        raise GptkitError(
            f"{path}: cannot read GGUF ({e.__class__.__name__}); the file is corrupt or truncated"
        ) from None
    tokenizer = fields.get("gptkit.tokenizer")
    if tokenizer is None and tok_model == "gpt2":
        if n_tokens == VOCAB_SIZES["gpt2"] and last_token == "<|endoftext|>":
            tokenizer = "gpt2"
        elif n_tokens == VOCAB_SIZES["bytes"]:
            tokenizer = "bytes"
    a = f"{arch}."
    hints = {
        "n_layer": fields.get(a + "block_count"),
        "n_head": fields.get(a + "attention.head_count"),
        "block_size": fields.get(a + "context_length"),
        "layer_norm_epsilon": fields.get(a + "attention.layer_norm_epsilon", 1e-5),
        "tokenizer": tokenizer,
        "padded_vocab_size": fields.get("gptkit.padded_vocab_size"),
    }
    hints = {k: v for k, v in hints.items() if v is not None}
    return assemble(to_gptkit_names(sd, path), hints, path, "gguf")


def gguf_keeps_f32(key: str, v: torch.Tensor) -> bool:
    """llama.cpp's rule, whatever the file type: 1-D tensors (norms, biases) and position embeddings stay F32."""
    return v.dim() == 1 or key == "transformer.wpe.weight"


def write(m: Loaded, out: Path, dtype: torch.dtype) -> list[str]:
    try:
        import gguf
        import numpy as np
    except ImportError:
        raise GptkitError("writing GGUF needs the gguf package: pip install gguf") from None
    c = m.config
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
    w.add_string("gptkit.tokenizer", m.tokenizer)
    notes = []
    if m.tokenizer == "gpt2":
        vocab, merges = gpt2_hf_vocab()
        tokens = sorted(vocab, key=vocab.__getitem__)
        eot = vocab["<|endoftext|>"]
    elif m.tokenizer == "bytes":
        # Byte i is token i; llama.cpp's byte-level BPE with no merges then yields single bytes.
        byte_char = bytes_to_unicode()
        tokens, merges, eot = [byte_char[i] for i in range(256)], [], EOT_TOKENS["bytes"]
    else:
        tokens = None
        notes.append(f"no tokenizer metadata: unknown tokenizer {m.tokenizer!r}")
    if tokens is not None:
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("gpt-2")
        w.add_token_list(tokens)
        w.add_token_types([gguf.TokenType.CONTROL if i == eot else gguf.TokenType.NORMAL for i in range(len(tokens))])
        if merges:
            w.add_token_merges(merges)
        else:
            notes.append("no merges: llama.cpp needs tokenizer.ggml.merges to tokenize text with this file")
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
