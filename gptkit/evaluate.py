"""`gptkit eval`: validation loss on tokenized shards and HellaSwag accuracy, for any model gptkit loads.

    evaluate(model_path, data=..., tokens=..., hellaswag=True)  -> EvalResult

The model is whatever gptkit.models.load_for_sampling reads (a run, a checkpoint, a converted nanoGPT
or build-nanogpt checkpoint, a Hugging Face directory, `gpt2`). Its tokenizer must be the one the
shards were made with: the vocabulary hash in the shard manifest is compared with the model's, and a
mismatch is refused (the loss would be a number about nothing).

Validation loss: the validation shards read in order (no shuffling), cut into rows of block_size + 1
tokens (inputs and targets overlap by one, as in training), the first `tokens` of them; the mean
cross-entropy over every target token, on the tokenizer's real vocabulary (the padded rows of the
embedding are no tokens, so they are left out of the softmax). HellaSwag: gptkit.train.hellaswag,
what the trainer logs: acc_norm per token (build-nanogpt, llm.c) and per character (lm-eval's
definition), each under its own name. GPT-2 124M gives about 3.29 on FineWeb-Edu val and 0.294 per token.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from gptkit.errors import GptkitError
from gptkit.tokenizer import Tokenizer

DEFAULT_TOKENS = 10_485_760  # the trainer's validation budget (build-nanogpt's 20 x 524,288)


@dataclass
class EvalResult:
    model: str  # what was loaded, as load_for_sampling describes it
    tokenizer: str
    device: str
    precision: str
    data: str | None = None  # the shards folder
    val_loss: float | None = None
    val_tokens: int = 0  # target tokens the loss averages over
    seq_len: int = 0
    hellaswag: dict[str, Any] | None = None  # acc_norm_token, acc_norm_char, acc, n, truncated, files
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_model(
    path: Path, device: torch.device, tokenizer: str | Path | None = None, log: Callable[[str], None] | None = None
):
    """(model, tokenizer, description): the one place eval loads a model."""
    from gptkit.models import load_for_sampling

    return load_for_sampling(path, device, tokenizer, log=log)


def check_tokenizer(manifest: dict, tokenizer, where: Path) -> None:
    """Refuse shards made with another tokenizer than the model's (tokenizer.same_vocabulary)."""
    from gptkit.tokenizer import same_vocabulary, vocabulary_label

    block = manifest.get("tokenizer")
    if not isinstance(block, dict):
        raise GptkitError(f"{where}: the manifest does not name its tokenizer; re-run `gptkit tokenize`")
    if not same_vocabulary(block, tokenizer):
        raise GptkitError(
            f"{where} was tokenized with {vocabulary_label(block)} but the model's tokenizer is "
            f"{vocabulary_label(tokenizer.info())}; tokenize the text with the model's tokenizer"
        )


def val_rows(val_paths: list[Path], tok: Tokenizer, seq_len: int, tokens: int, batch_size: int):
    """Batches (B, seq_len + 1) int64 of the first `tokens` validation tokens, in order, each read once."""
    from gptkit.train.data import TokenStream
    from gptkit.train.data import val_rows as rows

    stream = TokenStream(val_paths, tok.eot_token, seed=0, shuffle=False, vocab=(tok.name, tok.vocab_size))
    if (stream.total - 1) // seq_len == 0 or tokens < seq_len:
        raise GptkitError(
            f"{val_paths[0].parent}: {stream.total} validation tokens (budget {tokens}) give no full row of "
            f"{seq_len + 1} tokens; tokenize with a larger --val-tokens or raise --tokens"
        )
    return rows(stream, seq_len, tokens, rank=0, world_size=1, micro_batch=batch_size)


def val_loss(model, batches, device: torch.device, autocast: Callable) -> tuple[float, int]:
    """(mean cross-entropy per target token, target tokens) over the batches: the trainer's loop."""
    from gptkit.train.validation import loss_sums

    total = loss_sums(model, batches, device, autocast)
    return float(total[0] / max(float(total[1]), 1.0)), int(total[1])


def evaluate(
    model_path: Path,
    *,
    data: str | Path | None = None,
    tokens: int = DEFAULT_TOKENS,
    hellaswag: bool = False,
    hellaswag_dir: Path | None = None,
    limit: int | None = None,
    batch_size: int = 8,
    device: str = "auto",
    precision: str = "auto",
    tokenizer: str | Path | None = None,
    log: Callable[[str], None] | None = None,
) -> EvalResult:
    """Validation loss (unless tokens == 0) and, with hellaswag, HellaSwag (both acc_norms). Raises GptkitError."""
    from gptkit.device import pick_device, resolve_precision

    say = log or (lambda msg: None)
    if tokens < 0 or batch_size < 1 or (limit is not None and limit < 1):
        raise GptkitError("--tokens must be >= 0, --batch-size and --limit at least 1")
    if tokens == 0 and not hellaswag:
        raise GptkitError("nothing to evaluate: --tokens 0 and no --hellaswag")
    dev = pick_device(device)
    prec = resolve_precision(precision, dev)
    # Find the data before loading a model of gigabytes, so a wrong --data fails at once.
    shards = None
    if tokens:
        from gptkit.train.data import check_data

        shards = check_data(data)
    hs_files: list[Path] = []
    if hellaswag:
        from gptkit import paths
        from gptkit.train.hellaswag import find_hellaswag

        root = hellaswag_dir or paths.data_dir("hellaswag")
        hs_files = find_hellaswag(root)
        if not hs_files:
            raise GptkitError(f"no HellaSwag validation file in {root}; run `gptkit download hellaswag`")
    model, tok, described = load_model(model_path, dev, tokenizer, log=lambda n: say(f"note: {n}"))
    model.eval()
    result = EvalResult(described, tok.name, str(dev), prec.name)
    if shards is not None:
        data_dir, val, _, manifest = shards
        check_tokenizer(manifest, tok, data_dir)
        seq_len = model.config.block_size
        say(f"validation loss on {data_dir}: up to {tokens:,} tokens in rows of {seq_len}")
        t0 = time.perf_counter()
        batches = val_rows(val, tok, seq_len, tokens, batch_size)
        result.val_loss, result.val_tokens = val_loss(model, batches, dev, prec.autocast)
        result.data, result.seq_len = str(data_dir), seq_len
        result.seconds["val_loss"] = round(time.perf_counter() - t0, 3)
    if hellaswag:
        from gptkit.train import hellaswag as hs

        examples = hs.load_examples(hs_files, limit)
        say(f"HellaSwag: {len(examples):,} examples from {', '.join(str(f) for f in hs_files)}")
        t0 = time.perf_counter()
        scores = hs.evaluate(model, examples, tok, device=dev, autocast=prec.autocast)
        result.hellaswag = {**scores, "files": [str(f) for f in hs_files]}
        result.seconds["hellaswag"] = round(time.perf_counter() - t0, 3)
    return result
