"""Which model `gptkit sample` uses and how it is loaded for decoding.

resolve_model_path   --model (a path, a run name, a hub name, or nothing: the newest run, else gpt2) -> a path
load_for_sampling    any format gptkit.formats reads -> (model in the decoding layout, the model's own tokenizer)
prepare_for_decoding the CPU decoding layout (WideLinear): same values, faster batch-1 matmuls
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from gptkit import paths
from gptkit.checkpoint import latest_checkpoint, model_from_state_dict
from gptkit.errors import GptkitError
from gptkit.formats.convert import complete_download as _complete_hf_dir
from gptkit.formats.convert import load
from gptkit.formats.loaded import ASSUMED_GPT2, NEEDS_TOKENIZER, Loaded
from gptkit.memory import pack_on_huge_pages
from gptkit.model import GPT, MLP, CausalSelfAttention
from gptkit.names import looks_like_path
from gptkit.runs import newest_run
from gptkit.tokenizer import Tokenizer

if TYPE_CHECKING:
    from gptkit.hub.transfer import Log, ProgressFn

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
    """--model by gptkit.names' rule (formats.convert.find_model: a path; a run under runs_dir(), its
    latest checkpoint; a download in data_dir(name); a model here), and last the hub itself: a
    download, resuming a partial one.

    No --model: the newest local run, else pretrained gpt2. `log` gets a note saying which model was
    picked and that a download starts; `progress` and `log` then go to gptkit.hub.download as they are.
    Messages name `spec` after `option`, the command's flag for it (None: a positional argument).
    """
    from gptkit.formats.convert import find_model

    say = log or (lambda msg: None)
    label = f"{option} {spec}" if option else str(spec)
    if spec is None:
        ck = newest_run_checkpoint()
        if ck is not None:
            say(f"no --model: the newest run, {ck.parent.name} ({ck})")
            return ck
        say(f"no --model and no run with a checkpoint in {paths.runs_dir()}: pretrained gpt2")
        spec, label = "gpt2", "gpt2"
    found = find_model(spec, label)
    if found is not None:
        local = paths.data_dir(spec)
        if found != local and _complete_hf_dir(local) and not looks_like_path(spec):
            say(f"{label}: the run {found.parent}, not the download in {local} (give that path to use it)")
        return found
    if spec.count("/") > 1:
        raise GptkitError(f"{label}: no such file or directory")
    return _download(spec, label, paths.data_dir(spec), endpoint, progress, log)


def _download(
    spec: str, label: str, local: Path, endpoint: str | None, progress: ProgressFn | None, log: Log | None
) -> Path:
    """A hub name found nowhere on disk: download it, or say every place that was looked in."""
    from gptkit.hub import download as hub
    from gptkit.hub.endpoint import redact_url, resolve_endpoint
    from gptkit.hub.presets import PRESETS, resolve_target
    from gptkit.names import unusable_note

    looked = f"{label}: not a file, not a run in {paths.runs_dir()}, not a download in {paths.data_dir()}"
    looked += unusable_note(spec, "a model")
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


def decoding_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The dtype `sample` keeps the weights in (None: fp32): the precision policy's, so bf16 on GPUs
    and on CPUs that run bf16 natively (AVX512-BF16, AMX), fp32 elsewhere.

    Decoding one token reads every weight once, so halving the bytes is what counts: on a 2-core
    AVX512-BF16 CPU the 124M model decodes at 71-76 tok/s in bf16 against 29-30 in fp32 (256 new
    tokens; 68 against 31 at 900). On CPUs without native bf16 the policy is fp32, where bf16 would
    be emulated and slow."""
    from gptkit.device import resolve_precision

    return resolve_precision(precision, device).autocast_dtype


def load_for_sampling(
    path: Path,
    device: torch.device,
    tokenizer: str | Path | None = None,
    dtype: torch.dtype | None = None,
    log: Callable[[str], None] | None = None,
    steps: int = 0,
) -> tuple[GPT, Tokenizer, str]:
    """(model, its own tokenizer, description) for any format convert reads. `tokenizer` (--tokenizer)
    is for models that carry none; it must fit the vocabulary and never replaces the model's own.
    `dtype` is the decoding dtype the precision policy picked (None: fp32); the weights are kept in it.
    `log` receives what the reader had to assume about the model (its head count, its activation).
    `steps`: how many decoding steps the caller means to run (its max_new_tokens: a step reads the
    weights once, however many samples it makes), which decides the huge pages (below)."""
    # A checkpoint's checksums are hashed in a thread meanwhile, and waited for before the model is
    # returned, so no token comes from unverified weights. Measured on the 124M shape
    # (scripts/bench_sample.py, README): hashing alone is ~1 s at ~0.5 GB/s, more than the load itself.
    loaded = load(path, tokenizer=tokenizer, wait_check=False)
    check = loaded.pending_check
    try:
        model, tok = _decoding_model(path, loaded, device, dtype, log, steps)
    except GptkitError:
        if check is not None:
            check()  # a file that fails its checksum is named first, whatever it then broke
        raise
    where, fmt, assumed = loaded.path, loaded.format, loaded.assumed_tokenizer
    del loaded
    if check is not None and (note := check()) is not None and log is not None:
        log(note)
    described = f"{where} ({fmt}, tokenizer {tok.name}"
    if assumed:
        described += ", assumed: the source names none"
    return model, tok, described + ")"


def _decoding_model(
    path: Path,
    loaded: Loaded,
    device: torch.device,
    dtype: torch.dtype | None,
    log: Callable[[str], None] | None,
    steps: int,
) -> tuple[GPT, Tokenizer]:
    if log is not None:
        for note in loaded.notes:
            if NEEDS_TOKENIZER not in note and not note.startswith(ASSUMED_GPT2):  # the description says those
                log(note)
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
    # The model takes the loaded tensors themselves (no random init, no copy), then casts once.
    model = model_from_state_dict(cfg, loaded.state_dict, device, loaded.path, assign=True)
    loaded.state_dict = {}  # the model holds the tensors now: the cast below frees the fp32 ones
    return prepare_for_decoding(model, dtype, huge_pages=steps >= HUGE_PAGES_FROM_STEPS), tok


# --- decoding layout ------------------------------------------------------------------------------

# Huge pages save ~0.7 ms per gpt2 decoding step (gptkit.memory) but cost their first touch once:
# ~0.02 s on a plain machine, up to 0.4 s on the VMs we measured, whose host backs fresh guest memory
# lazily. From about this many steps they pay for themselves even there; `gptkit sample`'s default
# 200 tokens stay on 4 kB pages.
HUGE_PAGES_FROM_STEPS = 1000


class WideLinear(nn.Module):
    """y = x @ W^T + b with W kept transposed, (in, out), for batch-1 fp32 decoding on a CPU.

    Decoding one token is a matrix-vector product per weight, bound by memory bandwidth. For the
    matrices that widen (out > in: c_attn, c_fc and the 768 -> 50,257 lm_head) MKL streams the fp32
    (in, out) layout markedly faster than nn.Linear's (out, in) on the CPUs we measured (about 1.4x
    for c_fc and 1.5x for lm_head on an AVX2 EPYC, 1.2-2x on an AVX512 EPYC); for the narrowing
    ones it is the other way round, so those stay nn.Linear. In bf16 it is the opposite: torch's
    bf16 matrix-vector kernel wants (out, in) and is 10-30x slower on (in, out), so bf16 keeps
    nn.Linear everywhere. Values are the same weights: only the order of the sums changes.
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


def prepare_for_decoding(model: GPT, dtype: torch.dtype | None = None, huge_pages: bool = False) -> GPT:
    """The decoding layout, in place (sampling only: the changed model no longer has gptkit's parameter
    names and shapes, so it is not for training or saving):

    - every weight in `dtype` (the precision policy's decoding dtype; None keeps the model's), so a
      token reads 2 bytes per weight in bf16 instead of autocast re-reading and converting fp32 ones;
      the KV cache follows (GPT.setup_kv_cache allocates it in the embedding's dtype);
    - the token embedding and the tied lm_head cut to the real vocabulary once (a view, no copy): the
      padded rows are never sampled, so reading them every token was 0.1% of the lm_head for nothing;
    - fp32 on a CPU: WideLinear for the widening matrices (its docstring). lm_head then gets its own
      transposed copy of the embedding;
    - with `huge_pages`, on a CPU, every tensor moved onto huge pages where the OS allows
      (gptkit.memory; HUGE_PAGES_FROM_STEPS says when that is worth it).
    """
    wte = model.get_parameter("transformer.wte.weight")
    if getattr(model, "decoding_layout", False):
        return model
    dtype = dtype or wte.dtype
    model = model.to(dtype=dtype).requires_grad_(False)
    V = model.config.vocab_size
    real = nn.Parameter(model.get_parameter("transformer.wte.weight").data[:V], requires_grad=False)  # (V, C) view
    emb = model.transformer.wte
    emb.weight, emb.num_embeddings = real, V
    if real.device.type == "cpu" and dtype == torch.float32:
        for m in list(model.modules()):
            if isinstance(m, CausalSelfAttention):
                m.register_module("c_attn", WideLinear(m.c_attn.weight, m.c_attn.bias))
            elif isinstance(m, MLP):
                m.register_module("c_fc", WideLinear(m.c_fc.weight, m.c_fc.bias))
        model.register_module("lm_head", WideLinear(real, None))
    else:
        head = nn.Linear(real.size(1), V, bias=False, device="meta")
        head.weight = real  # tied, as in training
        model.register_module("lm_head", head)
    if huge_pages and real.device.type == "cpu":
        pack_on_huge_pages(model)  # gptkit.memory: fewer TLB misses per token where Linux allows
    model.decoding_layout = True  # type: ignore[assignment]  # torch types unknown Module attributes as Tensor | Module
    return model.eval()
