"""Model conversion through one internal form, `Loaded` = (GPTConfig, state dict in gptkit names,
tokenizer). The formats themselves live in their own modules (gptkit.formats.registry):

    format       read                                               write
    gptkit       checkpoint directory, or a run directory (latest)  checkpoint directory (train continues from it)
    pt           gptkit's / nanoGPT's ckpt.pt / build-nanogpt's     nanoGPT-compatible {'model', 'model_args', ...}
                 model_XXXXX.pt, or a bare state dict
    safetensors  one file; the config rides in its metadata          same
    hf           config.json + model.safetensors | pytorch_model.bin GPT2LMHeadModel directory + GPT-2 tokenizer files
    gguf         arch gpt2, as llama.cpp's convert_hf_to_gguf writes  same, through the `gguf` package

Here: which format a path holds (by content), loading it, and `convert()`, which writes under a
temporary name, verifies the result by reloading it and comparing logits on fixed prompts, and only
then renames it into place: an existing output is either replaced whole or left untouched.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from gptkit.checkpoint import model_from_state_dict
from gptkit.errors import GptkitError
from gptkit.formats.loaded import Loaded
from gptkit.formats.registry import DETECTION_ORDER, FORMATS
from gptkit.fsutil import atomic_output, disk_errors
from gptkit.model import GPT, GPTConfig

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
FORMAT_HELP = (
    "a gptkit checkpoint or run directory, a Hugging Face model directory, or a .pt, .safetensors or .gguf file"
)


def detect_format(path: Path) -> str:
    """By content, not by name: directories by their config.json, files by their first bytes."""
    path = Path(path)
    if not path.exists():
        raise GptkitError(f"{path}: no such file or directory")
    head = None
    if not path.is_dir():
        with open(path, "rb") as f:
            head = f.read(16)
        if not head:
            raise GptkitError(f"{path}: the file is empty")
    for name in DETECTION_ORDER:
        if FORMATS[name].detect(path, head):
            return name
    raise GptkitError(f"{path}: unknown model format; expected {FORMAT_HELP}")


def output_format(dst: Path, to: str | None) -> str:
    if to is not None:
        if to not in FORMATS:
            raise GptkitError(f"unknown output format {to!r}; choose one of: {', '.join(FORMATS)}")
        return to
    suffix = Path(dst).suffix.lower()
    fmt = next((f.name for f in FORMATS.values() if suffix in f.suffixes), None)
    if fmt is None:
        raise GptkitError(f"{dst}: cannot tell the output format from the name; pass --to {'|'.join(FORMATS)}")
    return fmt


def load(path: str | Path, fmt: str | None = None) -> Loaded:
    """Read any supported format (detected from the content unless `fmt` is given)."""
    path = Path(path)
    return FORMATS[fmt or detect_format(path)].read(path)


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
    keeps_fp32 = FORMATS[fmt].keeps_fp32
    rounded = {k: v if keeps_fp32(k, v) else v.to(dtype).float() for k, v in src.state_dict.items()}
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


# --- convert ---------------------------------------------------------------------------------------


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
    need = sum(v.numel() for v in loaded.state_dict.values()) * torch_dtype.itemsize
    # --force: the old output is replaced whole, only once verified; a full disk leaves no temporary copy
    with atomic_output(dst) as tmp, disk_errors(dst, need, point="convert"):
        notes = FORMATS[fmt].write(loaded, tmp, torch_dtype)
        check = verify(loaded, tmp, fmt, torch_dtype) if verify_output else None
    return ConvertResult(src, loaded.format, dst, fmt, dtype, loaded.tokenizer, loaded.config, check, notes)
