"""Model formats in and out, through one internal form: (GPTConfig, state dict in gptkit names, tokenizer).

    format       read                                               write
    gptkit       checkpoint directory, or a run directory (latest)  checkpoint directory (train continues from it)
    pt           gptkit's / nanoGPT's ckpt.pt / build-nanogpt's     nanoGPT-compatible {'model', 'model_args', ...}
                 model_XXXXX.pt, or a bare state dict
    safetensors  one file; the config rides in its metadata          same
    hf           config.json + model.safetensors | pytorch_model.bin GPT2LMHeadModel directory + GPT-2 tokenizer files
    gguf         arch gpt2, as llama.cpp's convert_hf_to_gguf writes  same, through the `gguf` package

Every .pt is read with torch.load(weights_only=True): tensors and plain containers only. Older
nanoGPT-family scripts pickle their GPTConfig dataclass; that one class name is mapped onto an inert
stand-in that only holds attributes, so no code from the file ever runs.

`convert()` writes under a temporary name, verifies the result by reloading it and comparing logits
on fixed prompts, and only then renames it into place: an existing output is either replaced whole
or left untouched.
"""

from __future__ import annotations

import functools
import json
import os
import pickle
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from gptkit import __version__
from gptkit.checkpoint import (
    CONFIG,
    STEP_RE,
    TIED_KEY,
    WEIGHTS,
    clean_state_dict,
    latest_checkpoint,
    load_checkpoint,
    model_from_state_dict,
    read_json,
    save_checkpoint,
)
from gptkit.errors import GptkitError
from gptkit.fsutil import write_json_atomic
from gptkit.model import CONV1D_SUFFIXES, GPT, GPT2_VOCAB_SIZE, GPTConfig, pad_vocab

FORMATS = ("gptkit", "pt", "safetensors", "hf", "gguf")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
SUFFIX_FORMAT = {".pt": "pt", ".pth": "pt", ".ckpt": "pt", ".bin": "pt", ".safetensors": "safetensors", ".gguf": "gguf"}
KNOWN_VOCABS = {"gpt2": GPT2_VOCAB_SIZE, "bytes": 256}
FORMAT_HELP = (
    "a gptkit checkpoint or run directory, a Hugging Face model directory, or a .pt, .safetensors or .gguf file"
)


@dataclass
class Loaded:
    """A model in gptkit's terms, whatever file it came from."""

    config: GPTConfig
    state_dict: dict[str, torch.Tensor] = field(repr=False)  # gptkit names, no lm_head, padded vocab rows
    tokenizer: str
    path: Path
    format: str
    meta: dict = field(default_factory=dict)  # step and other provenance, when the source has them

    def build_model(self, device: str | torch.device = "cpu") -> GPT:
        return model_from_state_dict(self.config, self.state_dict, device=device, source=self.path)


# --- format detection --------------------------------------------------------------------------


def detect_format(path: Path) -> str:
    """By content, not by name: directories by their config.json, files by their first bytes."""
    path = Path(path)
    if not path.exists():
        raise GptkitError(f"{path}: no such file or directory")
    if path.is_dir():
        if (path / CONFIG).is_file():
            cfg = read_json(path / CONFIG)
            if isinstance(cfg.get("model"), dict) and (path / WEIGHTS).is_file():
                return "gptkit"
            if "model_type" in cfg or "architectures" in cfg:
                return "hf"
        if latest_checkpoint(path) is not None:
            return "gptkit"
        raise GptkitError(f"{path}: unknown model format; expected {FORMAT_HELP}")
    with open(path, "rb") as f:
        head = f.read(16)
    if not head:
        raise GptkitError(f"{path}: the file is empty")
    if head[:4] == b"GGUF":
        return "gguf"
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":  # torch.save's zip, or a legacy pickle
        return "pt"
    if len(head) >= 9 and 0 < int.from_bytes(head[:8], "little") < 1 << 30 and head[8:9] == b"{":
        return "safetensors"  # 8-byte little-endian header length, then the JSON header
    raise GptkitError(f"{path}: unknown model format; expected {FORMAT_HELP}")


def output_format(dst: Path, to: str | None) -> str:
    if to is not None:
        if to not in FORMATS:
            raise GptkitError(f"unknown output format {to!r}; choose one of: {', '.join(FORMATS)}")
        return to
    fmt = SUFFIX_FORMAT.get(Path(dst).suffix.lower())
    if fmt is None or fmt == "pt" and Path(dst).suffix.lower() == ".bin":
        raise GptkitError(f"{dst}: cannot tell the output format from the name; pass --to {'|'.join(FORMATS)}")
    return fmt


# --- state dicts from other projects -----------------------------------------------------------


def to_gptkit_names(sd: dict[str, torch.Tensor], source) -> dict[str, torch.Tensor]:
    """Any GPT-2 state dict (HF Conv1D or Linear layout, with or without `transformer.`, compile/DDP
    prefixes, causal-mask buffers, a tied lm_head copy) -> gptkit names and nn.Linear layout."""
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
    if not any(k.endswith(".bias") for k in out):  # nanoGPT with bias=False: zero biases are equivalent
        for k in list(out):
            if k.endswith(".weight") and ("ln_" in k or ".c_" in k):
                out[k[: -len("weight")] + "bias"] = torch.zeros(out[k].shape[0], dtype=out[k].dtype)
    return out


def decide_vocab(rows: int, tokenizer: str | None, source) -> tuple[str, int]:
    """(tokenizer, real vocab size) for an embedding with `rows` rows and an optional stated tokenizer."""
    if tokenizer is None:
        if rows == 256:
            tokenizer = "bytes"
        elif rows >= GPT2_VOCAB_SIZE:
            tokenizer = "gpt2"
        else:
            raise GptkitError(
                f"{source}: a vocabulary of {rows} tokens matches no gptkit tokenizer (gpt2: {GPT2_VOCAB_SIZE}, bytes: 256)"
            )
    real = KNOWN_VOCABS.get(tokenizer, rows)
    return tokenizer, min(real, rows)  # rows < real: kept as is, and sampling reports the mismatch


def assemble(sd: dict[str, torch.Tensor], hints: dict, source, fmt: str, meta: dict | None = None) -> Loaded:
    """gptkit-named weights + whatever the source said about the config -> Loaded (vocab padded)."""
    wte = sd["transformer.wte.weight"]
    rows, n_embd = wte.shape
    layers = {int(m.group(1)) for k in sd if (m := re.match(r"transformer\.h\.(\d+)\.", k))}
    n_layer = hints.get("n_layer", len(layers))
    n_head = hints.get("n_head") or max(1, n_embd // 64)  # GPT-2's sizes all use 64-wide heads
    tokenizer, vocab = decide_vocab(rows, hints.get("tokenizer"), source)
    padded = max(hints.get("padded_vocab_size") or 0, rows, pad_vocab(vocab))
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
        )
    except ValueError as e:
        raise GptkitError(f"{source}: inconsistent model config ({e})") from None
    if rows < padded:  # HF and GGUF store exactly the real vocabulary; gptkit keeps the padded rows
        sd = dict(sd)
        sd["transformer.wte.weight"] = torch.cat([wte, wte.new_zeros(padded - rows, n_embd)])
    return Loaded(config, sd, tokenizer, Path(source), fmt, meta or {})


# --- readers -----------------------------------------------------------------------------------


class PickledConfig:
    """Inert stand-in for a GPTConfig dataclass pickled by nanoGPT-family training scripts.

    torch.load(weights_only=True) builds it from plain attribute values; it has no behaviour, so a
    file naming this class can set attributes and nothing else.
    """

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 2:
            state = state[0] or {}
        if isinstance(state, dict):
            self.__dict__.update({k: v for k, v in state.items() if isinstance(v, (int, float, str, bool, type(None)))})


# Where those scripts' GPTConfig lives when pickled: build-nanogpt's train_gpt2.py runs as __main__.
PICKLED_CONFIG_NAMES = ("__main__.GPTConfig", "train_gpt2.GPTConfig", "model.GPTConfig")


def torch_load(path: Path):
    """torch.load with weights_only=True; a file that needs more than tensors is refused in one line."""
    safe = [(PickledConfig, name) for name in PICKLED_CONFIG_NAMES]
    try:
        with torch.serialization.safe_globals(safe):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        m = re.search(r"GLOBAL ([\w.]+)|unrecognized function ([^\s]+)|(Unsupported operand \S+)", str(e))
        what = next((g for g in (m.groups() if m else ()) if g), "a Python object")
        raise GptkitError(
            f"{path}: refusing to unpickle {what}: gptkit loads .pt files with torch.load(weights_only=True), "
            "which allows tensors and plain containers only (convert it with its own code to safetensors)"
        ) from None
    except Exception as e:  # noqa: BLE001 - zip, EOF and storage errors all mean an unreadable file
        raise GptkitError(f"{path}: cannot read ({e.__class__.__name__}); the file is corrupt or truncated") from None


def read_pt(path: Path) -> Loaded:
    obj = torch_load(path)
    hints: dict = {}
    meta: dict = {}
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        sd = obj["model"]
        if isinstance(obj.get("gptkit"), dict):  # gptkit's own .pt: the full config
            g = obj["gptkit"]
            hints.update(g.get("model", {}))
            hints["tokenizer"] = g.get("tokenizer")
        elif isinstance(obj.get("model_args"), dict):  # nanoGPT ckpt.pt
            hints.update(
                {
                    k: v
                    for k, v in obj["model_args"].items()
                    if k in ("n_layer", "n_head", "n_embd", "block_size", "dropout")
                }
            )
        elif obj.get("config") is not None:  # build-nanogpt model_XXXXX.pt: a pickled GPTConfig (or a dict)
            c = obj["config"]
            c = c if isinstance(c, dict) else vars(c)
            hints.update({k: v for k, v in c.items() if k in ("n_layer", "n_head", "n_embd", "block_size")})
        for key in ("iter_num", "step"):
            if isinstance(obj.get(key), int):
                meta["step"] = obj[key]
    elif isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        sd = obj  # a bare state dict
    else:
        raise GptkitError(
            f"{path}: not a model checkpoint (expected a state dict, or a dict with a 'model' state dict)"
        )
    return assemble(to_gptkit_names(sd, path), hints, path, "pt", meta)


def read_safetensors(path: Path) -> Loaded:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            sd = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - SafetensorError, OSError, header errors
        raise GptkitError(
            f"{path}: cannot read weights ({e.__class__.__name__}); the file is corrupt or truncated"
        ) from None
    hints: dict = {}
    if "gptkit.config" in meta:
        try:
            hints.update(json.loads(meta["gptkit.config"]))
        except json.JSONDecodeError:
            raise GptkitError(f"{path}: its gptkit.config metadata is not valid JSON") from None
    if meta.get("gptkit.tokenizer"):
        hints["tokenizer"] = meta["gptkit.tokenizer"]
    return assemble(to_gptkit_names(sd, path), hints, path, "safetensors")


def read_hf(path: Path) -> Loaded:
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


def read_gguf(path: Path) -> Loaded:
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
        if n_tokens == GPT2_VOCAB_SIZE and last_token == "<|endoftext|>":
            tokenizer = "gpt2"
        elif n_tokens == 256:
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


def read_gptkit(path: Path) -> Loaded:
    ck = load_checkpoint(path)
    m = STEP_RE.match(ck.path.name)
    step = ck.step if ck.step is not None else (int(m.group(1)) if m else None)
    return Loaded(ck.config, ck.state_dict, ck.tokenizer, ck.path, "gptkit", {"step": step} if step is not None else {})


READERS = {"gptkit": read_gptkit, "pt": read_pt, "safetensors": read_safetensors, "hf": read_hf, "gguf": read_gguf}


def load(path: str | Path, fmt: str | None = None) -> Loaded:
    """Read any supported format (detected from the content unless `fmt` is given)."""
    path = Path(path)
    fmt = fmt or detect_format(path)
    return READERS[fmt](path)


# --- writers -----------------------------------------------------------------------------------


def cast_state_dict(sd: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in sd.items()}


def write_gptkit(m: Loaded, out: Path, dtype: torch.dtype) -> list[str]:
    model = m.build_model().to(dtype)
    provenance = {"path": str(m.path), "format": m.format, **m.meta}
    save_checkpoint(out, model, config=m.config, tokenizer=m.tokenizer, extra={"converted_from": provenance})
    return []


def write_pt(m: Loaded, out: Path, dtype: torch.dtype) -> list[str]:
    sd = cast_state_dict(m.state_dict, dtype)
    sd[TIED_KEY] = sd[
        "transformer.wte.weight"
    ]  # nanoGPT's state dict has both names; torch.save stores the storage once
    c = m.config
    obj = {
        "model": sd,
        # nanoGPT's GPTConfig(**model_args); its vocab_size is our padded row count
        "model_args": dict(
            n_layer=c.n_layer,
            n_head=c.n_head,
            n_embd=c.n_embd,
            block_size=c.block_size,
            bias=True,
            vocab_size=c.padded_vocab_size,
            dropout=c.dropout,
        ),
        "iter_num": int(m.meta.get("step") or 0),
        "best_val_loss": 1e9,
        "config": {},
        "gptkit": {"model": c.to_dict(), "tokenizer": m.tokenizer, "version": __version__},
    }
    torch.save(obj, out)
    return ["nanoGPT can sample from it (init_from='resume'); it holds no optimizer state to resume training with"]


def write_safetensors(m: Loaded, out: Path, dtype: torch.dtype) -> list[str]:
    from safetensors.torch import save_file

    meta = {
        "format": "pt",
        "gptkit.config": json.dumps(m.config.to_dict()),
        "gptkit.tokenizer": m.tokenizer,
        "producer": f"gptkit {__version__}",
    }
    save_file(cast_state_dict(m.state_dict, dtype), str(out), metadata=meta)
    return []


@functools.lru_cache(maxsize=1)
def gpt2_hf_vocab() -> tuple[dict[str, int], list[str]]:
    """GPT-2's vocab.json and merges.txt, rebuilt from the tiktoken ranks gptkit already has.

    Each token's merge is recovered by running BPE on its bytes with only the lower-ranked merges:
    what is left is exactly two parts, the pair whose merge created the token.
    """
    from gptkit.data.tokenizers import bytes_to_unicode, get_tokenizer

    enc = get_tokenizer("gpt2").enc
    eot = enc.eot_token
    ranks = {enc.decode_single_token_bytes(i): i for i in range(eot)}
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


def write_hf(m: Loaded, out: Path, dtype: torch.dtype) -> list[str]:
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
    eot = {"gpt2": GPT2_VOCAB_SIZE - 1, "bytes": 0}.get(m.tokenizer)
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


def gguf_keeps_f32(key: str, v: torch.Tensor) -> bool:
    """llama.cpp's rule, whatever the file type: 1-D tensors (norms, biases) and position embeddings stay F32."""
    return v.dim() == 1 or key == "transformer.wpe.weight"


def write_gguf(m: Loaded, out: Path, dtype: torch.dtype) -> list[str]:
    try:
        import gguf
        import numpy as np
    except ImportError:
        raise GptkitError("writing GGUF needs the gguf package: pip install gguf") from None
    from gptkit.data.tokenizers import bytes_to_unicode

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
        tokens = sorted(vocab, key=vocab.get)
        eot = vocab["<|endoftext|>"]
    elif m.tokenizer == "bytes":
        # Byte i is token i; llama.cpp's byte-level BPE with no merges then yields single bytes.
        byte_char = bytes_to_unicode()
        tokens, merges, eot = [byte_char[i] for i in range(256)], [], 0
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


WRITERS = {"gptkit": write_gptkit, "pt": write_pt, "safetensors": write_safetensors, "hf": write_hf, "gguf": write_gguf}


# --- verification ------------------------------------------------------------------------------


def fixed_prompts(config: GPTConfig, n: int = 2, length: int = 16) -> torch.Tensor:
    """The same (n, length) token ids every time: seeded, within the real vocabulary."""
    g = torch.Generator().manual_seed(1234)
    return torch.randint(0, config.vocab_size, (n, min(length, config.block_size)), generator=g)


@torch.inference_mode()
def logits_of(model: GPT, idx: torch.Tensor, vocab_size: int) -> torch.Tensor:
    return model(idx)[0][..., :vocab_size].float()


@dataclass
class Verification:
    max_abs_diff: float  # written file vs the source with weights rounded to --dtype: must be ~0
    tolerance: float
    drift: float  # written file vs the unrounded source: the cost of --dtype itself (informational)


def verify(src: Loaded, out: Path, fmt: str, dtype: torch.dtype) -> Verification:
    """Reload `out` with its reader and compare logits with the source on fixed prompts.

    Both sides compute in fp32, and the reference uses the source weights rounded to `dtype`, so
    whatever the dtype the logits must agree to fp32 accuracy; only a wrong layout, name or
    value can fail. How far rounding moved the logits is reported as `drift`.
    """
    back = load(out, fmt)
    c, b = src.config, back.config
    for name in ("n_layer", "n_head", "n_embd", "block_size", "vocab_size"):
        if getattr(c, name) != getattr(b, name):
            raise GptkitError(
                f"verification failed: {name} is {getattr(b, name)} in the output but {getattr(c, name)} in the source"
            )
    if back.tokenizer != src.tokenizer:
        raise GptkitError(
            f"verification failed: the output says tokenizer {back.tokenizer!r}, the source {src.tokenizer!r}"
        )
    idx = fixed_prompts(c)
    rounded = {
        k: v if fmt == "gguf" and gguf_keeps_f32(k, v) else v.to(dtype).float() for k, v in src.state_dict.items()
    }
    ref = logits_of(model_from_state_dict(c, rounded, source=src.path), idx, c.vocab_size)
    got = logits_of(back.build_model(), idx, c.vocab_size)
    exact = logits_of(src.build_model(), idx, c.vocab_size) if dtype != torch.float32 else ref
    diff = (ref - got).abs().max().item()
    tol = 1e-5 * max(1.0, ref.abs().max().item())
    if not diff <= tol:
        raise GptkitError(
            f"verification failed: logits of the written {fmt} differ from the source by {diff:.3g} (> {tol:.3g})"
        )
    return Verification(diff, tol, (exact - got).abs().max().item())


# --- convert -----------------------------------------------------------------------------------


@dataclass
class ConvertResult:
    src: Path
    src_format: str
    dst: Path
    format: str
    dtype: str
    tokenizer: str
    config: GPTConfig
    verification: Verification | None
    notes: list[str]


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def convert(
    src: str | Path,
    dst: str | Path,
    to: str | None = None,
    dtype: str = "fp32",
    verify_output: bool = True,
    force: bool = False,
) -> ConvertResult:
    """Convert `src` (any readable format) to `dst` in format `to` (from dst's suffix if not given)."""
    src, dst = Path(src), Path(dst)
    fmt = output_format(dst, to)
    if dtype not in DTYPES:
        raise GptkitError(f"unknown dtype {dtype!r}; choose one of: {', '.join(DTYPES)}")
    if dst.exists() or dst.is_symlink():
        if not force:
            raise GptkitError(f"{dst} already exists; pass --force to replace it")
        if src.exists() and (dst.resolve() == src.resolve() or dst.resolve() in src.resolve().parents):
            raise GptkitError(f"{dst}: the output would replace its own source")
    loaded = load(src)
    torch_dtype = DTYPES[dtype]
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    _remove(tmp)
    try:
        notes = WRITERS[fmt](loaded, tmp, torch_dtype)
        check = verify(loaded, tmp, fmt, torch_dtype) if verify_output else None
        if dst.exists() or dst.is_symlink():  # --force: swap in the new one whole, then drop the old
            old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
            _remove(old)
            os.replace(dst, old)
            os.replace(tmp, dst)
            _remove(old)
        else:
            os.replace(tmp, dst)
    finally:
        _remove(tmp)
    return ConvertResult(src, loaded.format, dst, fmt, dtype, loaded.tokenizer, loaded.config, check, notes)
