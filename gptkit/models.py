"""Which model `gptkit sample` uses and how it is loaded for decoding.

resolve_model_path   --model (a path, a run name, a hub name, or nothing: the newest run, else gpt2) -> a path
load_for_sampling    any format gptkit.formats reads -> (model in the decoding layout, the model's own tokenizer)
prepare_for_decoding the CPU decoding layout (WideLinear): same values, faster batch-1 matmuls
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from gptkit import paths
from gptkit.checkpoint import latest_checkpoint
from gptkit.errors import GptkitError
from gptkit.formats.convert import load
from gptkit.model import GPT, MLP, CausalSelfAttention
from gptkit.runs import newest_run
from gptkit.tokenizer import Tokenizer

if TYPE_CHECKING:
    from gptkit.hub.download import Log, ProgressFn

# --- which model ---------------------------------------------------------------------------------


def newest_run_checkpoint() -> Path | None:
    """The latest checkpoint of the most recently written run under runs_dir(), if any."""
    run = newest_run()
    return latest_checkpoint(run) if run is not None else None


def resolve_model_path(
    spec: str | None,
    *,
    endpoint: str | None = None,
    progress: ProgressFn | None = None,
    log: Log | None = None,
    option: str | None = "--model",
) -> Path:
    """--model, looked for in this order: a path (run, checkpoint, .pt, .safetensors, .gguf, HF dir), a run
    name under runs_dir() (its latest checkpoint), a hub name already in data_dir(name) (where
    `gptkit download` puts it), and last the hub itself: a download, resuming a partial one.

    No --model: the newest local run, else pretrained gpt2. `log` gets a note saying which model was
    picked and that a download starts; `progress` and `log` then go to gptkit.hub.download as they are.
    Messages name `spec` after `option`, the command's flag for it (None: a positional argument).
    """
    from gptkit.runs import run_checkpoint

    say = log or (lambda msg: None)
    label = f"{option} {spec}" if option else str(spec)
    if spec is None:
        ck = newest_run_checkpoint()
        if ck is not None:
            say(f"no --model: the newest run, {ck.parent.name} ({ck})")
            return ck
        say(f"no --model and no run with a checkpoint in {paths.runs_dir()}: pretrained gpt2")
        spec, label = "gpt2", "gpt2"
    p = Path(spec).expanduser()
    if p.exists():
        return p
    looks_like_path = spec.startswith((".", "/", "~")) or Path(spec).suffix in (".pt", ".safetensors", ".gguf", ".bin")
    if looks_like_path or spec.count("/") > 1:
        raise GptkitError(f"{label}: no such file or directory")
    local = paths.data_dir(spec)
    ck = run_checkpoint(spec)
    if ck is not None:
        if _complete_hf_dir(local):
            say(f"{label}: the run {ck.parent}, not the download in {local} (give that path to use it)")
        return ck
    if _complete_hf_dir(local):
        return local
    return _download(spec, label, local, endpoint, progress, log)


def _download(
    spec: str, label: str, local: Path, endpoint: str | None, progress: ProgressFn | None, log: Log | None
) -> Path:
    """A hub name found nowhere on disk: download it, or say every place that was looked in."""
    from gptkit.hub import download as hub
    from gptkit.hub.endpoint import redact_url, resolve_endpoint
    from gptkit.hub.presets import PRESETS, resolve_target

    looked = f"{label}: not a file, not a run in {paths.runs_dir()}, not a download in {paths.data_dir()}"
    try:
        target = resolve_target(spec)
    except GptkitError:  # neither a preset nor ORG/NAME: not worth asking the hub
        models = ", ".join(p.name for p in PRESETS.values() if p.repo_type == "model")
        raise GptkitError(f"{looked}, nor a hub model ({models} or an ORG/NAME repo)") from None
    if target.repo_type != "model":
        raise GptkitError(f"{looked}; {spec} is a {target.repo_type} on the hub, not a model")
    url = resolve_endpoint(endpoint)
    if log is not None:
        how = "resuming the download of" if local.is_dir() else "downloading"
        log(f"{label}: not on disk; {how} {target.repo_id} from {redact_url(url)} into {local}")
    try:
        return Path(hub.download(spec, endpoint=url, progress=progress, log=log).local_dir)
    except GptkitError as e:
        raise GptkitError(f"{looked}; and from the hub: {e}") from None


def _complete_hf_dir(d: Path) -> bool:
    from gptkit.hub.manifest import read_manifest

    manifest = read_manifest(d) if d.is_dir() else None
    if manifest is not None:
        return bool(manifest.get("complete"))
    return (d / "config.json").is_file() and any((d / w).is_file() for w in ("model.safetensors", "pytorch_model.bin"))


def load_for_sampling(
    path: Path, device: torch.device, tokenizer: str | Path | None = None
) -> tuple[GPT, Tokenizer, str]:
    """(model, its own tokenizer, description) for any format convert reads. `tokenizer` (--tokenizer)
    is for models that carry none; it must fit the vocabulary and never replaces the model's own."""
    loaded = load(path, tokenizer=tokenizer)
    tok = loaded.tokenizer
    if tok is None:
        raise GptkitError(
            f"{path}: the model carries no tokenizer; name it with --tokenizer (a tokenizer.json, "
            "a vocab.json + merges.txt directory, a nanoGPT meta.pkl, gpt2 or bytes)"
        )
    cfg = loaded.config
    if cfg.vocab_size != tok.vocab_size:
        raise GptkitError(
            f"{path}: the model has a vocabulary of {cfg.vocab_size} but its tokenizer {tok.name!r} has "
            f"{tok.vocab_size}; this checkpoint does not go with that tokenizer"
        )
    model = prepare_for_decoding(loaded.build_model(device))
    described = f"{loaded.path} ({loaded.format}, tokenizer {tok.name}"
    if loaded.assumed_tokenizer:
        described += ", assumed: the source names none"
    return model, tok, described + ")"


# --- decoding layout ------------------------------------------------------------------------------


class WideLinear(nn.Module):
    """y = x @ W^T + b with W kept transposed, (in, out), for batch-1 decoding on a CPU.

    Decoding one token is a matrix-vector product per weight, bound by memory bandwidth. For the
    matrices that widen (out > in: c_attn, c_fc and the 768 -> 50,304 lm_head) the BLAS streams the
    (in, out) layout markedly faster than nn.Linear's (out, in) on the CPUs we measured (about 1.4x
    for c_fc and 1.5x for lm_head with MKL on an AVX2 EPYC); for the narrowing ones it is the
    other way round, so those stay nn.Linear. Values are the same fp32 weights: only the order of
    the sums changes, so logits agree to fp32 rounding.
    """

    weight_t: torch.Tensor
    bias: torch.Tensor | None

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.register_buffer("weight_t", weight.detach().t().contiguous())  # (in, out)
        self.register_buffer("bias", None if bias is None else bias.detach())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.size(-1))  # (B*T, in)
        y = flat @ self.weight_t if self.bias is None else torch.addmm(self.bias, flat, self.weight_t)
        return y.view(*x.shape[:-1], self.weight_t.size(1))


def prepare_for_decoding(model: GPT) -> GPT:
    """Switch a CPU model to the decoding layout above, in place (sampling only: the changed model
    no longer has gptkit's parameter names, so it is not for training or saving). The lm_head gets
    its own transposed copy of wte (+ padded_vocab x n_embd floats); the embedding lookup keeps wte.
    """
    wte = model.get_parameter("transformer.wte.weight")
    if wte.device.type != "cpu" or getattr(model, "decoding_layout", False):
        return model
    for m in list(model.modules()):
        if isinstance(m, CausalSelfAttention):
            m.register_module("c_attn", WideLinear(m.c_attn.weight, m.c_attn.bias))
        elif isinstance(m, MLP):
            m.register_module("c_fc", WideLinear(m.c_fc.weight, m.c_fc.bias))
    model.register_module("lm_head", WideLinear(wte, None))
    model.decoding_layout = True  # type: ignore[assignment]  # torch types unknown Module attributes as Tensor | Module
    return model.eval()
