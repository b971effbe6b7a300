"""Checkpoints: one directory per checkpoint, written atomically, loaded without unpickling.

    step_000500/
        model.safetensors   weights; the tied wte/lm_head matrix stored once, no wrapper prefixes
        config.json         {"model": GPTConfig, "tokenizer": name, "tokenizer_info": Tokenizer.info(),
                             "train": config, "step": n, ...}
        tokenizer/          the tokenizer (gptkit/tokenizer.save_tokenizer; for built-ins only its info)
        optimizer.pt        (training only) optimizer state, tensors only: torch.load(weights_only=True)
        trainer.json        (training only) step, data position, anything else needed to resume
        checksums.json      the size and sha256 of every other file, and a sha256 of its own list

A checkpoint is assembled in a hidden temporary directory beside its final place and renamed into
place as the last step, so a crash can never leave a half-written checkpoint under a name that
`latest_checkpoint` would pick. What the disk does to it later (a flipped bit, a truncation, a
file copied half) is caught by `verify_checkpoint` against checksums.json: every load for training
(resume, --init-from), convert, eval and sample checks it, and `newest_valid_checkpoint` is the one
rule for which checkpoint a resume continues from. Checkpoints written before checksums.json (gptkit
0.1) still load, with a note that they are not verified.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode

from gptkit import __version__
from gptkit.errors import GptkitError
from gptkit.fsutil import (
    atomic_output,
    disk_errors,
    remove_stale_temps,
    save_safetensors,
    sha256_file,
    write_json_atomic,
)
from gptkit.model import GPT, GPTConfig
from gptkit.tokenizer import Tokenizer
from gptkit.vocab_files import SAVED_DIR

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
OPTIMIZER = "optimizer.pt"
TRAINER = "trainer.json"
CHECKSUMS = "checksums.json"
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
    from gptkit.vocab_files import SAVED_INFO

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
            "torch_version": torch.__version__,  # for the model card (formats/card.py)
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
        write_checksums(tmp)
        for f in tmp.rglob("*"):  # data on disk before the rename makes the checkpoint visible
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
    return path


# --- checksums ---------------------------------------------------------------------------------


class CorruptCheckpoint(GptkitError):
    """A checkpoint file that is missing, truncated or changed since it was written (one line naming it)."""


def _list_digest(files: dict) -> str:
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def write_checksums(folder: Path) -> None:
    """checksums.json for every file under `folder` (the checkpoint being assembled). The list carries
    a sha256 of itself, so a byte changed in checksums.json is named as checksums.json, never as the
    file whose recorded hash it happened to hit."""
    files = {}
    for f in sorted(folder.rglob("*")):
        if f.is_file() and f.name != CHECKSUMS:
            files[f.relative_to(folder).as_posix()] = {"size": f.stat().st_size, "sha256": sha256_file(f)}
    write_json_atomic(folder / CHECKSUMS, {"algorithm": "sha256", "files": files, "list_sha256": _list_digest(files)})


UNVERIFIED = "written before checkpoints recorded checksums (no checksums.json); its files are not verified"


def read_checksums(path: Path) -> dict[str, dict] | None:
    """The recorded {file: {size, sha256}} of the checkpoint at `path`; None for one written before
    checksums.json existed. A damaged checksums.json is a CorruptCheckpoint naming it."""
    f = path / CHECKSUMS
    if not f.exists():
        return None
    bad = CorruptCheckpoint(
        f"{f}: damaged (its own sha256 does not match its contents); the checkpoint cannot be verified"
    )
    try:
        body = json.loads(f.read_bytes())
        files = body["files"]
        ok = body.get("algorithm") == "sha256" and body["list_sha256"] == _list_digest(files)
    except (ValueError, KeyError, TypeError):  # not JSON, not UTF-8, or not this shape
        raise bad from None
    except OSError as e:
        raise CorruptCheckpoint(f"{f}: cannot read ({e.strerror})") from None
    if not ok or not isinstance(files, dict) or CONFIG not in files or WEIGHTS not in files:
        raise bad
    return files


# What a reader of the model alone (sample, eval, convert, --init-from) uses: it checks these and not
# the optimizer's state, twice the weights' size, which it never reads (a resume checks everything).
MODEL_PARTS = (WEIGHTS, CONFIG, SAVED_DIR)


def verify_checkpoint(path: str | Path, model_only: bool = False) -> str | None:
    """Check every file the checkpoint at `path` recorded (`model_only`: those in MODEL_PARTS):
    present, same size, same sha256. Raises CorruptCheckpoint naming the first bad file; returns a
    note for a checkpoint written without checksums."""
    path = Path(path)
    files = read_checksums(path)
    if files is None:
        return f"{path}: {UNVERIFIED}"
    for name, want in files.items():
        if model_only and name.split("/", 1)[0] not in MODEL_PARTS:
            continue
        f = path / name
        try:
            size = f.stat().st_size
            if size != want["size"]:
                raise CorruptCheckpoint(
                    f"{f}: {size} bytes, but {want['size']} when the checkpoint was written; the file is corrupt "
                    "or truncated"
                )
            if sha256_file(f) != want["sha256"]:
                raise CorruptCheckpoint(
                    f"{f}: sha256 differs from the one recorded when the checkpoint was written; the file is corrupt"
                )
        except FileNotFoundError:
            raise CorruptCheckpoint(f"{f}: missing (listed in {CHECKSUMS}); the checkpoint is incomplete") from None
        except OSError as e:
            raise CorruptCheckpoint(f"{f}: cannot read ({e.strerror})") from None
    return None


class Verification:
    """verify_checkpoint(path) in a background thread, for a caller with its own work to overlap
    (sampling: hashing a 124M checkpoint takes about as long as loading it; see models.py).
    `result()` waits, then raises what verify_checkpoint raised or returns its note."""

    def __init__(self, path: Path, model_only: bool = False):
        self._note: str | None = None
        self._error: GptkitError | None = None
        self._thread = threading.Thread(target=self._run, args=(path, model_only), name="gptkit-verify", daemon=True)
        self._thread.start()

    def _run(self, path: Path, model_only: bool) -> None:
        try:
            self._note = verify_checkpoint(path, model_only)
        except GptkitError as e:
            self._error = e

    def result(self) -> str | None:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._note


def newest_valid_checkpoint(run_dir: str | Path, log: Callable[[str], object] = lambda m: None) -> Path | None:
    """The checkpoint a resume of `run_dir` continues from: the newest step_* that verifies. Each newer
    one that is incomplete (a step_* folder without weights or config) or corrupt is skipped with one
    line to `log` naming it. None when the run has no step_* at all; when it has some and none is
    usable, one CorruptCheckpoint naming them all and the fix (and nothing logged)."""
    run_dir = Path(run_dir)
    steps = sorted(
        (int(m.group(1)), p)
        for p in (run_dir.iterdir() if run_dir.is_dir() else ())
        if (m := STEP_RE.match(p.name)) and p.is_dir()
    )
    if not steps:
        return None
    skipped: list[tuple[str, str]] = []
    for _, p in reversed(steps):
        try:
            if not is_checkpoint(p):
                raise CorruptCheckpoint(f"{p}: incomplete (no {WEIGHTS} or {CONFIG})")
            note = verify_checkpoint(p)
        except CorruptCheckpoint as e:
            skipped.append((p.name, str(e)))
            continue
        for _, why in skipped:
            log(f"skipping {why}")
        if note is not None:
            log(note)
        return p
    raise CorruptCheckpoint(
        f"{run_dir}: every checkpoint is corrupt or incomplete ({', '.join(n for n, _ in skipped)}; the newest: "
        f"{skipped[0][1]}); nothing to resume from. Restore a good copy of one, or start again: delete {run_dir} "
        "or train under another --name"
    )


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
    notes: list[str] = field(default_factory=list)  # for the user: e.g. that its files are not verified

    @property
    def train_config(self) -> dict:
        return self.meta.get("train", {})

    @property
    def step(self) -> int | None:
        return self.meta.get("step")

    def build_model(self, device: str | torch.device = "cpu") -> GPT:
        """A GPT with these weights, in eval mode, on `device`."""
        return model_from_state_dict(self.config, self.state_dict, device=device, source=self.path)

    def has_optimizer_state(self) -> bool:
        return (self.path / OPTIMIZER).is_file()

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


def load_checkpoint(
    path: str | Path, device: str | torch.device = "cpu", *, verify: bool = True, weights: bool = True
) -> Checkpoint:
    """Load a checkpoint directory (or the latest checkpoint of a run directory), its files checked
    against checksums.json first (`verify=False`: the caller verified them, or does so beside).
    weights=False: its config and metadata only (an empty state dict): a rank that receives the
    weights from rank 0."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.exists():
        raise GptkitError(f"{path}: no such checkpoint or run directory")
    found = resolve_checkpoint(path)
    if found is None:
        raise GptkitError(f"{path}: not a gptkit checkpoint (no {WEIGHTS} + {CONFIG}) and holds no step_* checkpoints")
    path = found
    notes = [note] if verify and (note := verify_checkpoint(path)) else []
    config, meta = read_config(path)
    if not weights:
        return Checkpoint(
            path=path, config=config, tokenizer=meta.get("tokenizer", "gpt2"), meta=meta, state_dict={}, notes=notes
        )
    try:
        sd = load_file(str(path / WEIGHTS), device=str(device))
    except (SafetensorError, OSError, ValueError) as e:
        raise GptkitError(f"{path / WEIGHTS}: cannot read weights ({e}); the file is corrupt or truncated") from None
    return Checkpoint(
        path=path, config=config, tokenizer=meta.get("tokenizer", "gpt2"), meta=meta, state_dict=sd, notes=notes
    )


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
