""".pt files: gptkit's and nanoGPT's ckpt.pt, build-nanogpt's model_XXXXX.pt, or a bare state dict.

Every .pt is read with torch.load(weights_only=True): tensors and plain containers only. Older
nanoGPT-family scripts pickle their GPTConfig dataclass; that one class name is mapped onto an inert
stand-in that only holds attributes, so no code from the file ever runs.

Written as nanoGPT's {'model', 'model_args', 'iter_num', ...}, with gptkit's full config and the
model's tokenizer (as plain strings) alongside.

nanoGPT's ckpt.pt names no tokenizer; its sample.py looks for data/<config['dataset']>/meta.pkl and
otherwise uses GPT-2. Reading one does the same, looking beside the checkpoint first, then under
data/ in the current directory and in each directory above the checkpoint, and assumes GPT-2 only
for GPT-2's vocabulary size. Its MLP is the exact GELU and its biases are optional (model_args['bias']).
"""

from __future__ import annotations

import pickle
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from gptkit import __version__
from gptkit.checkpoint import TIED_KEY
from gptkit.errors import GptkitError
from gptkit.formats.loaded import (
    NEEDS_TOKENIZER,
    Format,
    Loaded,
    assemble,
    cast_state_dict,
    nanogpt_default_tokenizer,
    to_gptkit_names,
    tokenizer_from_record,
    tokenizer_record,
)
from gptkit.tokenizer import Tokenizer, get_tokenizer


class PickledConfig:
    """Inert stand-in for a GPTConfig dataclass pickled by nanoGPT-family training scripts.

    torch.load(weights_only=True) builds it from plain attribute values; it has no behaviour, so a
    file naming this class can set attributes and nothing else.
    """

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:
            state = state[0] or {}
        if isinstance(state, dict):
            self.__dict__.update({k: v for k, v in state.items() if isinstance(v, (int, float, str, bool, type(None)))})


# Where those scripts' GPTConfig lives when pickled: build-nanogpt's train_gpt2.py runs as __main__.
PICKLED_CONFIG_NAMES = ("__main__.GPTConfig", "train_gpt2.GPTConfig", "model.GPTConfig")


def torch_load(path: Path) -> Any:
    """torch.load with weights_only=True; a file that needs more than tensors is refused in one line."""
    safe: list[Callable[..., Any] | tuple[Callable[..., Any], str]] = [(PickledConfig, n) for n in PICKLED_CONFIG_NAMES]
    try:
        # torch warns (two lines) about a plain pickle's protocol before refusing it below in one
        with torch.serialization.safe_globals(safe), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        m = re.search(r"GLOBAL ([\w.]+)|unrecognized function ([^\s]+)|(Unsupported operand \S+)", str(e))
        what = next((g for g in (m.groups() if m else ()) if g), "a Python object")
        if what.startswith("Unsupported operand"):  # an opcode torch.save never writes (pickle.dump's FRAME)
            what = "a plain pickle, not a torch.save file"
        raise GptkitError(
            f"{path}: refusing to unpickle {what}: gptkit loads .pt files with torch.load(weights_only=True), "
            "which allows tensors and plain containers only (convert it with its own code to safetensors)"
        ) from None
    except Exception as e:  # noqa: BLE001 - zip, EOF and storage errors all mean an unreadable file
        raise GptkitError(f"{path}: cannot read ({e.__class__.__name__}); the file is corrupt or truncated") from None


PICKLE_PROTOCOLS = (b"\x02", b"\x03", b"\x04", b"\x05")


def detect(path: Path, head: bytes | None) -> bool:
    # torch.save's zip, or a legacy pickle: PROTO opcode 0x80 and a protocol number 2..5. (A safetensors
    # file may also start with 0x80, the low byte of its header length: safetensors is tried first.)
    return head is not None and (head[:4] == b"PK\x03\x04" or (head[:1] == b"\x80" and head[1:2] in PICKLE_PROTOCOLS))


def find_meta_pkl(path: Path, dataset: object) -> Path | None:
    """nanoGPT's character vocabulary for a ckpt.pt: beside it, else data/<dataset>/meta.pkl under the
    current directory or any directory above the checkpoint (nanoGPT's sample.py runs from the repo root)."""
    candidates = [path.parent / "meta.pkl"]
    if isinstance(dataset, str) and dataset and "/" not in dataset and dataset not in (".", ".."):
        for root in [Path.cwd(), *path.resolve().parents]:
            candidates.append(root / "data" / dataset / "meta.pkl")
    return next((c for c in candidates if c.is_file()), None)


def read(path: Path) -> Loaded:
    obj = torch_load(path)
    hints: dict = {}
    meta: dict = {}
    tokenizer: Tokenizer | None = None
    notes: list[str] = []
    assumed = False
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        sd = obj["model"]
        rows = next((v.shape[0] for k, v in sd.items() if k.endswith("wte.weight") and hasattr(v, "shape")), 0)
        if isinstance(obj.get("gptkit"), dict):  # gptkit's own .pt: the full config and the tokenizer
            g = obj["gptkit"]
            hints.update(g.get("model", {}))
            tokenizer = tokenizer_from_record(g, path)
            if tokenizer is None:
                notes.append(f"the file names no tokenizer; {NEEDS_TOKENIZER}")
        elif isinstance(obj.get("model_args"), dict):  # nanoGPT ckpt.pt: exact GELU, optional biases
            args = obj["model_args"]
            hints.update(
                {k: v for k, v in args.items() if k in ("n_layer", "n_head", "n_embd", "block_size", "dropout")}
            )
            hints["bias"] = bool(args.get("bias", True))
            hints["activation"] = "gelu"
            config: dict = obj["config"] if isinstance(obj.get("config"), dict) else {}
            found = find_meta_pkl(path, config.get("dataset"))
            if found is not None:
                tokenizer = get_tokenizer(found)
                # nanoGPT sets vocab_size to meta.pkl's: any other meta.pkl is not this model's
                if isinstance(args.get("vocab_size"), int) and args["vocab_size"] != tokenizer.vocab_size:
                    raise GptkitError(
                        f"{path}: the checkpoint's vocab_size is {args['vocab_size']} but {found} has "
                        f"{tokenizer.vocab_size} characters; it is not this model's vocabulary"
                    )
            else:
                tokenizer, notes = nanogpt_default_tokenizer(rows)
                assumed = tokenizer is not None
        elif obj.get("config") is not None:  # build-nanogpt model_XXXXX.pt: a pickled GPTConfig (or a dict)
            c = obj["config"]
            c = c if isinstance(c, dict) else vars(c)
            hints.update({k: v for k, v in c.items() if k in ("n_layer", "n_head", "n_embd", "block_size")})
            tokenizer, notes = nanogpt_default_tokenizer(rows)  # build-nanogpt trains on GPT-2 tokens
            assumed = tokenizer is not None
        else:
            tokenizer, notes = nanogpt_default_tokenizer(rows)
            assumed = tokenizer is not None
        for key in ("iter_num", "step"):
            if isinstance(obj.get(key), int):
                meta["step"] = obj[key]
    elif isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        sd = obj  # a bare state dict
        rows = next((v.shape[0] for k, v in sd.items() if k.endswith("wte.weight")), 0)
        tokenizer, notes = nanogpt_default_tokenizer(rows)
        assumed = tokenizer is not None
        notes.append("a bare state dict says nothing of its activation: assuming GPT-2's tanh GELU")
    else:
        raise GptkitError(
            f"{path}: not a model checkpoint (expected a state dict, or a dict with a 'model' state dict)"
        )
    return assemble(
        to_gptkit_names(sd, path), hints, path, "pt", meta, tokenizer=tokenizer, notes=notes, assumed=assumed
    )


def write(m: Loaded, out: Path, dtype: torch.dtype) -> list[str]:
    c = m.config
    sd = cast_state_dict(m.state_dict, dtype)
    # Only the real vocabulary's rows: nanoGPT's sample.py draws from every row it is given, and a
    # padding row's id has no entry in a meta.pkl (gptkit reads the padding back from its own record).
    sd["transformer.wte.weight"] = sd["transformer.wte.weight"][: c.vocab_size].clone()
    # nanoGPT's state dict has both names; torch.save stores the shared storage once
    sd[TIED_KEY] = sd["transformer.wte.weight"]
    obj = {
        "model": sd,
        # nanoGPT's GPTConfig(**model_args); its vocab_size is the embedding's row count
        "model_args": dict(
            n_layer=c.n_layer,
            n_head=c.n_head,
            n_embd=c.n_embd,
            block_size=c.block_size,
            bias=c.bias,
            vocab_size=c.vocab_size,
            dropout=c.dropout,
        ),
        "iter_num": int(m.meta.get("step") or 0),
        "best_val_loss": 1e9,
        "config": {},
        "gptkit": {"model": c.to_dict(), "version": __version__, **tokenizer_record(m.tokenizer)},
    }
    torch.save(obj, out)
    if c.activation != "gelu":
        return [
            "nanoGPT's own model.py computes the exact GELU, this model the tanh one: nanoGPT would get "
            "slightly different logits from this file (gptkit reads it exactly)"
        ]
    return ["nanoGPT can sample from it (init_from='resume'); it holds no optimizer state to resume training with"]


# .bin is read as a .pt but never implies one on output: HF's pytorch_model.bin is a different thing.
FORMAT = Format("pt", detect, read, write, suffixes=(".pt", ".pth", ".ckpt"))
