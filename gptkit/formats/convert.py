"""Model conversion through one internal form, `Loaded` = (GPTConfig, state dict in gptkit names,
tokenizer). The formats themselves live in their own modules (gptkit.formats.registry):

    format       read                                               write
    gptkit       checkpoint directory, or a run directory (latest)  checkpoint directory + tokenizer/ (train continues)
    pt           gptkit's / nanoGPT's ckpt.pt (+ its meta.pkl) /    nanoGPT-compatible {'model', 'model_args', ...}
                 build-nanogpt's model_XXXXX.pt, or a state dict
    safetensors  one file; config and tokenizer ride in its metadata same
    hf           config.json + weights + the model's tokenizer files GPT2LMHeadModel directory + the model's tokenizer
    gguf         arch gpt2, as llama.cpp's convert_hf_to_gguf writes  same, through the `gguf` package

Here: which format a path holds (by content), loading it (with --tokenizer, checked against the
model), and `convert()`, which writes under a temporary name, verifies the result by reloading it,
comparing logits on fixed prompts and the tokenizer's ids on fixed strings, and only then renames
it into place: an existing output is either replaced whole or left untouched.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from gptkit.checkpoint import model_from_state_dict
from gptkit.errors import GptkitError
from gptkit.formats.loaded import NEEDS_TOKENIZER, Loaded
from gptkit.formats.registry import DETECTION_ORDER, FORMATS
from gptkit.fsutil import atomic_output, disk_errors, make_dirs
from gptkit.model import GPT, GPTConfig
from gptkit.tokenizer import Tokenizer, get_tokenizer

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


def usable_model(path: Path) -> bool:
    """A model this package reads (a checkpoint, a run with one, an HF folder, a model file)."""
    try:
        detect_format(path)
    except GptkitError:
        return False
    return True


def find_model(spec: str, label: str) -> Path | None:
    """The model `spec` names on disk (gptkit.names' rule): a path; or a run under runs/ (its latest
    checkpoint), else a complete download under data/, else a model folder or file here; None if it
    names nothing local (`gptkit sample` then asks the hub)."""
    from gptkit import names, paths
    from gptkit.runs import run_checkpoint

    objects: list[tuple[str, Path]] = []
    if not names.looks_like_path(spec):
        ck = run_checkpoint(spec)
        if ck is not None:
            objects.append(("the run", ck))
        if complete_download(paths.data_dir(spec)):
            objects.append(("the download", paths.data_dir(spec)))
    return names.pick(spec, label=label, objects=objects, usable=usable_model)


def complete_download(d: Path) -> bool:
    """A model folder `gptkit download` finished (or an HF folder with config and weights)."""
    from gptkit.hub.manifest import read_manifest

    manifest = read_manifest(d) if d.is_dir() else None
    if manifest is not None:
        return bool(manifest.get("complete"))
    return (d / "config.json").is_file() and any((d / w).is_file() for w in ("model.safetensors", "pytorch_model.bin"))


def source_path(src: str | Path) -> Path:
    """`gptkit convert SRC`: a path, or a name (a run, a download) as `find_model` resolves it."""
    from gptkit import paths
    from gptkit.names import unusable_note

    if isinstance(src, Path):
        return src
    found = find_model(src, src)
    if found is None:
        raise GptkitError(
            f"{src}: no such file or directory, nor a run with a checkpoint in {paths.runs_dir()}, "
            f"nor a download in {paths.data_dir()}{unusable_note(src, 'a model')}"
        )
    return found


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


def load(
    path: str | Path, fmt: str | None = None, tokenizer: str | Path | None = None, *, wait_check: bool = True
) -> Loaded:
    """Read any supported format (detected from the content unless `fmt` is given). `tokenizer`
    (--tokenizer) names the model's tokenizer: it must fit the vocabulary, and it never replaces a
    different tokenizer that the source carries. `wait_check=False`: a check of the files still
    running (a checkpoint's checksums) is left to the caller's `Loaded.finish_check()`."""
    path = Path(path)
    loaded = FORMATS[fmt or detect_format(path)].read(path)
    if wait_check:
        loaded.finish_check()
    if tokenizer is not None:
        loaded = loaded.with_tokenizer(get_tokenizer(tokenizer), str(tokenizer))
    return loaded


# --- verification ------------------------------------------------------------------------------


def fixed_prompts(config: GPTConfig, n: int = 2, length: int = 16) -> torch.Tensor:
    """The same (n, length) token ids every time: seeded, within the real vocabulary."""
    g = torch.Generator().manual_seed(1234)
    return torch.randint(0, config.vocab_size, (n, min(length, config.block_size)), generator=g)


@torch.inference_mode()
def logits_of(model: GPT, idx: torch.Tensor, vocab_size: int) -> torch.Tensor:
    return model(idx)[0][..., :vocab_size].float()


# Text the tokenizers of the source and the output must split into the same ids: ASCII, accents
# (precomposed and combining), CJK, and runs of whitespace (where byte-level BPE pre-tokenizers differ).
FIXED_STRINGS = (
    "Hello, world! The quick brown fox jumps over the lazy dog; 3.14159 isn't 42.",
    "Café, naïve résumé: Ångström and Zoë ate crème brûlée (e\u0301 combining).",
    "你好，世界。日本語のテキストと한국어 문장.",
    "  two leading spaces\tand a tab\n\n\n   three newlines,    four spaces   \n",
)


@dataclass
class TokenizerCheck:
    status: str  # "same ids" | "not carried" (the output holds no tokenizer; a note says so) | "none"
    strings: int = 0  # fixed strings compared
    tokens: int = 0  # ids compared in all
    same_vocab_hash: bool | None = None


@dataclass
class Verification:
    max_abs_diff: float  # written file vs the source with weights rounded to --dtype: must be ~0
    tolerance: float
    drift: float  # written file vs the unrounded source: the cost of --dtype itself (informational)
    tokenizer: TokenizerCheck = field(default_factory=lambda: TokenizerCheck("none"))


def encode_or_refuse(tok: Tokenizer, text: str) -> list[int] | str:
    """The ids of `text`, or the refusal of a vocabulary that cannot hold it (characters)."""
    try:
        return tok.encode(text)
    except GptkitError:
        return "cannot encode"


def check_tokenizers(src: Tokenizer | None, back: Tokenizer | None) -> TokenizerCheck:
    """The output's tokenizer must split fixed strings into the same ids as the source's."""
    if src is None:
        return TokenizerCheck("none")
    if back is None:
        return TokenizerCheck("not carried")
    if back.vocab_size != src.vocab_size or back.eot_token != src.eot_token:
        raise GptkitError(
            f"verification failed: the output's tokenizer has {back.vocab_size} tokens (end-of-text "
            f"{back.eot_token}), the source's {src.vocab_size} ({src.eot_token})"
        )
    strings = list(FIXED_STRINGS)
    chars = getattr(src, "chars", None)
    if chars is not None:  # a character vocabulary: also its own characters, in a scrambled order
        strings.append("".join(chars[(7 * i) % len(chars)] for i in range(len(chars))))
    n = 0
    for text in strings:
        want, got = encode_or_refuse(src, text), encode_or_refuse(back, text)
        if want != got:
            raise GptkitError(
                f"verification failed: the output's tokenizer encodes {text[:24]!r}... differently from the source's"
            )
        n += len(want) if isinstance(want, list) else 0
    return TokenizerCheck("same ids", len(strings), n, back.vocab_hash == src.vocab_hash)


def verify(src: Loaded, out: Path, fmt: str, dtype: torch.dtype) -> Verification:
    """Reload `out` with its reader and compare it with the source: the config, logits on fixed
    prompts (over the real vocabulary), and the tokenizer's ids on fixed strings.

    Both sides compute in fp32, and the reference uses the source weights rounded to `dtype`, so
    whatever the dtype the logits must agree to fp32 accuracy; only a wrong layout, name or
    value can fail. How far rounding moved the logits is reported as `drift`.
    """
    back = load(out, fmt)
    c, b = src.config, back.config
    for name in ("n_layer", "n_head", "n_embd", "block_size", "vocab_size", "bias", "activation"):
        if getattr(c, name) != getattr(b, name):
            raise GptkitError(
                f"verification failed: {name} is {getattr(b, name)} in the output but {getattr(c, name)} in the source"
            )
    tok_check = check_tokenizers(src.tokenizer, back.tokenizer)
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
    return Verification(diff, tol, (exact - got).abs().max().item(), tok_check)


# --- convert ---------------------------------------------------------------------------------------


@dataclass
class ConvertResult:
    src: Path
    src_format: str
    dst: Path
    format: str
    dtype: str
    tokenizer: Tokenizer | None
    config: GPTConfig
    verification: Verification | None
    notes: list[str]


def check_fp16_range(loaded: Loaded, keeps_fp32: Callable[[str, torch.Tensor], bool]) -> None:
    """A weight past fp16's largest value (65504) would be written as inf: refused, naming it."""
    top = torch.finfo(torch.float16).max
    for k, v in loaded.state_dict.items():
        if v.is_floating_point() and v.numel() and not keeps_fp32(k, v) and (big := v.abs().max().item()) > top:
            raise GptkitError(
                f"{k} holds values up to {big:.3g}, past fp16's range ({top:.0f}); use --dtype bf16 or fp32"
            )


def convert(
    src: str | Path,
    dst: str | Path,
    to: str | None = None,
    dtype: str = "fp32",
    verify_output: bool = True,
    force: bool = False,
    tokenizer: str | Path | None = None,
) -> ConvertResult:
    """Convert `src` (any readable format) to `dst` in format `to` (from dst's suffix if not given);
    `tokenizer` names the model's tokenizer when the source does not carry it."""
    src, dst = source_path(src), Path(dst)
    fmt = output_format(dst, to)
    if dtype not in DTYPES:
        raise GptkitError(f"unknown dtype {dtype!r}; choose one of: {', '.join(DTYPES)}")
    if dst.exists() or dst.is_symlink():
        if not force:
            raise GptkitError(f"{dst} already exists; pass --force to replace it")
        if src.exists() and (dst.resolve() == src.resolve() or dst.resolve() in src.resolve().parents):
            raise GptkitError(f"{dst}: the output would replace its own source")
        if src.is_dir() and src.resolve() in dst.resolve().parents:  # e.g. an HF folder's model.safetensors
            raise GptkitError(f"{dst}: the output would replace a file inside its source {src}; write it elsewhere")
    loaded = load(src, tokenizer=tokenizer)
    torch_dtype = DTYPES[dtype]
    if torch_dtype == torch.float16:
        check_fp16_range(loaded, FORMATS[fmt].keeps_fp32)
    created = [d for d in [dst.parent, *dst.parent.parents] if not d.exists()]  # deepest first
    make_dirs(dst.parent)
    need = sum(v.numel() for v in loaded.state_dict.values()) * torch_dtype.itemsize
    # --force: the old output is replaced whole, only once verified; a full disk leaves no temporary copy
    try:
        with atomic_output(dst) as tmp, disk_errors(dst, need, point="convert"):
            notes = loaded.notes + FORMATS[fmt].write(loaded, tmp, torch_dtype)
            check = verify(loaded, tmp, fmt, torch_dtype) if verify_output else None
    except BaseException:
        for d in created:  # the folders made for this output only, left empty by the failure
            try:
                d.rmdir()
            except OSError:
                break
        raise
    if loaded.tokenizer is None and not any(NEEDS_TOKENIZER in n for n in notes):
        notes.append(f"the model has no tokenizer; {NEEDS_TOKENIZER}")
    elif loaded.tokenizer is not None and loaded.tokenizer.kind != "builtin" and fmt in ("pt", "safetensors"):
        notes.append(
            f"the tokenizer rides in the file's gptkit metadata; other tools reading this {fmt} will not find it"
        )
    return ConvertResult(src, loaded.format, dst, fmt, dtype, loaded.tokenizer, loaded.config, check, notes)
