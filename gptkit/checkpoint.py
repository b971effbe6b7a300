"""Checkpoints: one directory per checkpoint, written atomically, loaded without unpickling.

    step_000500/
        model.safetensors   weights; the tied wte/lm_head matrix stored once, no wrapper prefixes
        config.json         {"model": GPTConfig, "tokenizer": name, "tokenizer_info": Tokenizer.info(),
                             "train": config, "step": n, ...}
        tokenizer/          the tokenizer (gptkit/tokenizer.save_tokenizer; for built-ins only its info)
        optimizer.pt        (training only) optimizer state, tensors only: torch.load(weights_only=True)
        trainer.json        (training only) step, data position, anything else needed to resume

A checkpoint is assembled in a hidden temporary directory beside its final place and renamed into
place as the last step, so a crash can never leave a half-written checkpoint under a name that
`latest_checkpoint` would pick.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode

from gptkit import __version__
from gptkit.errors import GptkitError
from gptkit.fsutil import atomic_output, disk_errors, remove_stale_temps, save_safetensors, write_json_atomic
from gptkit.model import GPT, GPTConfig
from gptkit.tokenizer import Tokenizer

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
OPTIMIZER = "optimizer.pt"
TRAINER = "trainer.json"
STEP_RE = re.compile(r"^step_(\d+)$")
TIED_KEY = "lm_head.weight"  # derived from transformer.wte.weight, never stored


def step_dirname(step: int) -> str:
    return f"step_{step:06d}"


def clean_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip torch.compile's `_orig_mod.` and DDP's `module.` prefixes; drop the tied lm_head copy."""
    out = {}
    for k, v in sd.items():
        for prefix in ("_orig_mod.", "module."):
            while k.startswith(prefix):
                k = k[len(prefix) :]
        k = k.replace("._orig_mod.", ".")
        if k == TIED_KEY:
            continue
        out[k] = v.detach().contiguous()
    return out


def save_checkpoint(
    path: str | Path,
    model: torch.nn.Module | dict[str, torch.Tensor],
    *,
    config: GPTConfig,
    tokenizer: Tokenizer | Path | str,
    train_config: dict | None = None,
    optimizer_state: dict | None = None,
    trainer_state: dict | None = None,
    extra: dict | None = None,
) -> Path:
    """Write a complete checkpoint directory at `path`, atomically. Returns `path`. `model`: the
    module or its state dict (a training run's, gathered by its parallel strategy).

    `tokenizer`: the Tokenizer, or a saved `tokenizer/` folder (copied), goes into the checkpoint's
    tokenizer/ with its info in config.json; a bare name (old callers) records only the name.
    """
    from gptkit.tokenizer import save_tokenizer
    from gptkit.vocab_files import SAVED_DIR, SAVED_INFO

    tok_info = None
    if isinstance(tokenizer, Tokenizer):
        tok_info = tokenizer.info()
    elif isinstance(tokenizer, Path):
        tok_info = read_json(tokenizer / SAVED_INFO)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent, r"step_\d+")  # left by killed runs: never renamed into place
    need = checkpoint_bytes(model, optimizer_state is not None)
    # re-saving the same step replaces the old one whole; a full disk is one line, the temporary copy removed
    with atomic_output(path) as tmp, disk_errors(path, need, point="checkpoint"):
        tmp.mkdir()
        full = model if isinstance(model, dict) else model.state_dict()
        sd = {k: v.cpu() for k, v in clean_state_dict(full).items()}
        save_safetensors(sd, tmp / WEIGHTS, metadata={"format": "pt", "producer": f"gptkit {__version__}"})
        meta = {
            "gptkit_version": __version__,
            "model": config.to_dict(),
            "tokenizer": tok_info["name"] if tok_info else tokenizer,  # the name, for readers before tokenizer_info
            "train": train_config or {},
        }
        if tok_info is not None:
            meta["tokenizer_info"] = tok_info
            if isinstance(tokenizer, Tokenizer):
                save_tokenizer(tokenizer, tmp / SAVED_DIR)
            else:
                shutil.copytree(Path(tokenizer), tmp / SAVED_DIR)
        if trainer_state is not None and "step" in trainer_state:
            meta["step"] = trainer_state["step"]
        meta.update(extra or {})
        write_json_atomic(tmp / CONFIG, meta)
        if optimizer_state is not None:
            torch.save(optimizer_state, tmp / OPTIMIZER)
        if trainer_state is not None:
            write_json_atomic(tmp / TRAINER, trainer_state)
        for f in tmp.rglob("*"):  # data on disk before the rename makes the checkpoint visible
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
    return path


def checkpoint_bytes(model: torch.nn.Module | dict[str, torch.Tensor], optimizer: bool) -> int:
    """About what a checkpoint of `model` takes on disk (AdamW's two moments triple it)."""
    sd = model if isinstance(model, dict) else model.state_dict()
    n = sum(v.numel() * v.element_size() for k, v in sd.items() if not k.endswith(TIED_KEY))
    return n * (3 if optimizer else 1)


@dataclass
class Checkpoint:
    path: Path
    config: GPTConfig
    tokenizer: str
    meta: dict
    state_dict: dict[str, torch.Tensor] = field(repr=False)

    @property
    def train_config(self) -> dict:
        return self.meta.get("train", {})

    @property
    def step(self) -> int | None:
        return self.meta.get("step")

    def build_model(self, device: str | torch.device = "cpu") -> GPT:
        """A GPT with these weights, in eval mode, on `device`."""
        return model_from_state_dict(self.config, self.state_dict, device=device, source=self.path)

    def optimizer_state(self, device: str | torch.device = "cpu") -> dict | None:
        f = self.path / OPTIMIZER
        if not f.exists():
            return None
        try:
            return torch.load(f, map_location=device, weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unpickling failure means a bad file
            raise GptkitError(
                f"{f}: cannot read optimizer state ({e.__class__.__name__}); the file is corrupt"
            ) from None

    def trainer_state(self) -> dict | None:
        return read_trainer_state(self.path)

    def load_tokenizer(self) -> Tokenizer:
        """The tokenizer this checkpoint records (see `checkpoint_tokenizer`)."""
        return checkpoint_tokenizer(self.path, self.meta)

    def load_into(self, model: torch.nn.Module) -> None:
        """Copy these weights into an existing model of the same config (resuming training)."""
        load_weights(model, self.state_dict)


def read_json(path: Path) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise GptkitError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}); the file is corrupt") from None
    except OSError as e:
        raise GptkitError(f"{path}: cannot read ({e.strerror})") from None


class _NoInit(TorchFunctionMode):
    """Skips the initialisers while a model is built on the meta device: every value is replaced by
    the weights loaded next, and the first initialiser run on meta imports torch's Python
    decompositions, about 2 s of a 124M model's load to its first token."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__module__", None) == "torch.nn.init" or getattr(func, "__name__", "") in _INITIALISERS:
            return args[0] if args else kwargs["tensor"]
        return func(*args, **kwargs)


_INITIALISERS = ("normal_", "uniform_", "fill_", "zero_")


def model_from_state_dict(
    config: GPTConfig, sd: dict[str, torch.Tensor], device="cpu", source="weights", *, assign: bool = False
) -> GPT:
    """Build a GPT and load `sd` (gptkit names, lm_head optional); clear errors on any mismatch.

    assign=True: the model takes `sd`'s tensors themselves (moved to `device` and made fp32 only where
    they are not already), so nothing is initialised or copied; the model then shares memory with `sd`.
    For a 124M model that saves about a second of copying (gptkit.models loads for sampling this way).
    """
    sd = clean_state_dict(sd)
    with torch.device("meta"), _NoInit():
        model = GPT(config)
    expected = {k: v.shape for k, v in model.state_dict().items() if k != TIED_KEY}
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    if missing or unexpected:
        what = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise GptkitError(f"{source}: weights do not match the model config ({what})")
    for k, shape in expected.items():
        if tuple(sd[k].shape) != tuple(shape):
            raise GptkitError(f"{source}: {k} has shape {tuple(sd[k].shape)} but the config expects {tuple(shape)}")
    if assign:
        sd = {k: v.to(device=device, dtype=torch.float32 if v.is_floating_point() else v.dtype) for k, v in sd.items()}
        model.load_state_dict({**sd, TIED_KEY: sd["transformer.wte.weight"]}, strict=True, assign=True)
    else:
        model = model.to_empty(device=device)
        load_weights(model, sd)
    model.lm_head.weight = model.get_parameter("transformer.wte.weight")  # to_empty unties; tie again
    return model.eval()


def load_weights(model: torch.nn.Module, sd: dict[str, torch.Tensor]) -> None:
    """Load `sd` (any wrapper prefixes, lm_head optional) into `model` in place, strictly; the tied
    lm_head gets the token embedding, which the file stores once."""
    sd = clean_state_dict(sd)
    model.load_state_dict({**sd, TIED_KEY: sd["transformer.wte.weight"]}, strict=True)


def is_checkpoint(path: Path) -> bool:
    return (path / WEIGHTS).is_file() and (path / CONFIG).is_file()


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    """Load a checkpoint directory (or the latest checkpoint of a run directory)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.exists():
        raise GptkitError(f"{path}: no such checkpoint or run directory")
    found = resolve_checkpoint(path)
    if found is None:
        raise GptkitError(f"{path}: not a gptkit checkpoint (no {WEIGHTS} + {CONFIG}) and holds no step_* checkpoints")
    path = found
    config, meta = read_config(path)
    try:
        sd = load_file(str(path / WEIGHTS), device=str(device))
    except (SafetensorError, OSError, ValueError) as e:
        raise GptkitError(f"{path / WEIGHTS}: cannot read weights ({e}); the file is corrupt or truncated") from None
    return Checkpoint(path=path, config=config, tokenizer=meta.get("tokenizer", "gpt2"), meta=meta, state_dict=sd)


def resolve_checkpoint(path: Path) -> Path | None:
    """`path` if it is a checkpoint, the latest checkpoint in it if it is a run directory, else None."""
    if is_checkpoint(path):
        return path
    return latest_checkpoint(path) if path.is_dir() else None


def read_meta(path: Path) -> dict:
    """A checkpoint's config.json as it is, without reading the weights."""
    return read_json(path / CONFIG)


def read_config(path: Path) -> tuple[GPTConfig, dict]:
    """A checkpoint's model config and its whole config.json, without reading the weights."""
    meta = read_meta(path)
    if "model" not in meta:
        raise GptkitError(f"{path / CONFIG}: no 'model' section; not a gptkit checkpoint config")
    try:
        return GPTConfig.from_dict(meta["model"], written_by=meta.get("gptkit_version")), meta
    except (TypeError, ValueError) as e:
        raise GptkitError(f"{path / CONFIG}: invalid model config ({e})") from None


def read_trainer_state(path: Path) -> dict | None:
    """trainer.json of a checkpoint written by training; None for an exported or converted one."""
    f = path / TRAINER
    return read_json(f) if f.exists() else None


def checkpoint_tokenizer(path: Path, meta: dict | None = None) -> Tokenizer:
    """The tokenizer of the checkpoint at PATH: its tokenizer/ folder, checked against the recorded
    info, else the built-in its config names (checkpoints written before tokenizer/ existed)."""
    from gptkit.tokenizer import tokenizer_for

    meta = read_meta(path) if meta is None else meta
    return tokenizer_for(meta.get("tokenizer_info") or meta.get("tokenizer", "gpt2"), path, str(path))


def has_trainer_state(path: Path) -> bool:
    return (path / TRAINER).is_file()


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints in run_dir, oldest first. Temporary (hidden) directories never match."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = []
    for p in run_dir.iterdir():
        m = STEP_RE.match(p.name)
        if m and p.is_dir() and is_checkpoint(p):
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    cks = list_checkpoints(run_dir)
    return cks[-1][1] if cks else None


def prune_checkpoints(run_dir: str | Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` checkpoints (keep <= 0 keeps everything)."""
    if keep <= 0:
        return []
    removed = []
    for _, p in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    return removed
