"""HellaSwag accuracy, completion style, as in the GPT-2 124M reproductions.

Each example is a context and four endings. The model scores each ending by its summed loss given
the context (the ending is tokenized with a leading space, as it follows the context); the lowest
is the prediction. Two published "acc_norm"s divide that sum by a length first, and the numbers
differ, so both are reported, each under its own name:

    acc             the summed loss (no normalisation)
    acc_norm_token  per token of the ending: build-nanogpt and llm.c's acc_norm (GPT-2 124M ≈ 0.294)
    acc_norm_char   per character of the ending (without its leading space): lm-evaluation-harness's
                    acc_norm (GPT-2 124M ≈ 0.311 there, on its preprocessed text; here the raw text)

A context and ending longer than the model's block_size keep their last block_size tokens: the
context is cut from the left, the ending is scored whole (lm-eval cuts the same way); an ending of
block_size tokens or more is scored on its last block_size - 1. Such examples are counted
(`truncated`), never cut silently. The 10,042 validation examples are spread over the ranks and the
counts all-reduced.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from gptkit import paths
from gptkit.errors import GptkitError


@dataclass
class Example:
    ctx: str
    endings: list[str]
    label: int


def find_hellaswag(root: Path | None = None) -> list[Path]:
    """Parquet / JSONL files of the validation split under data/hellaswag (from `gptkit download hellaswag`)."""
    root = root or paths.data_dir("hellaswag")
    if not root.is_dir():
        return []
    files = sorted(
        p
        for p in root.rglob("*")
        if p.suffix in (".parquet", ".jsonl") and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )  # hidden folders hold download bookkeeping, never data
    val = [p for p in files if "val" in str(p.relative_to(root)).lower()]
    return val or files


def _example(row: dict, where: str) -> Example:
    try:
        endings = [str(e) for e in row["endings"]]
        label = int(row["label"])
        ex = Example(ctx=str(row["ctx"]), endings=endings, label=label)
    except (KeyError, TypeError, ValueError) as e:
        raise GptkitError(f"{where}: not a HellaSwag row (needs ctx, endings, label): {e}") from None
    if len(endings) != 4 or not 0 <= label < 4:
        raise GptkitError(f"{where}: a HellaSwag row needs 4 endings and a label 0-3")
    return ex


def load_examples(files: list[Path], limit: int | None = None) -> list[Example]:
    out: list[Example] = []
    for f in files:
        if f.suffix == ".jsonl":
            with open(f) as fh:
                for i, line in enumerate(fh):
                    if line.strip():
                        out.append(_example(json.loads(line), f"{f}:{i + 1}"))
                    if limit and len(out) >= limit:
                        return out
        else:
            import pyarrow.parquet as pq

            for i, row in enumerate(pq.read_table(f, columns=["ctx", "endings", "label"]).to_pylist()):
                out.append(_example(row, f"{f} row {i}"))
                if limit and len(out) >= limit:
                    return out
    return out


def unencodable(examples: list[Example], tokenizer) -> str | None:
    """Why TOKENIZER cannot encode these examples (a character vocabulary without some of their
    characters), or None. Any tokenizer that encodes the text will do: scores are per ending."""
    for ex in examples:
        for text in (ex.ctx, *(" " + e for e in ex.endings)):
            try:
                tokenizer.encode(text)
            except GptkitError as e:
                return str(e)
    return None


def encode_example(ex: Example, tokenizer, max_len: int):
    """(tokens (4, L), mask (4, L), truncated) as lists: mask is 1 on ending tokens. Keeps the last
    max_len tokens of each row (the module's rule); truncated says whether any row lost tokens."""
    ctx = tokenizer.encode(ex.ctx)
    rows, masks = [], []
    truncated = False
    for ending in ex.endings:
        end = tokenizer.encode(" " + ending)
        toks, mask = ctx + end, [0] * len(ctx) + [1] * len(end)
        truncated |= len(toks) > max_len
        rows.append(toks[-max_len:])
        masks.append(mask[-max_len:])
    return rows, masks, truncated


def score_example(model, rows, masks, device, autocast, chars: list[int] | None = None):
    """(predicted ending per token, by summed loss, per character, mean losses) for one encoded
    example; chars are the endings' lengths in characters (None: per character is not computed, -1)."""
    import torch
    import torch.nn.functional as F

    L = max(len(r) for r in rows)
    tokens = torch.zeros(len(rows), L, dtype=torch.long)
    mask = torch.zeros(len(rows), L, dtype=torch.long)
    for i, (r, m) in enumerate(zip(rows, masks, strict=True)):
        tokens[i, : len(r)] = torch.tensor(r)
        mask[i, : len(m)] = torch.tensor(m)
    tokens, mask = tokens.to(device), mask.to(device)
    with torch.no_grad(), autocast():
        logits, _ = model(tokens)
    # position t predicts token t + 1; the padded vocabulary rows are no tokens, so not in the softmax
    logits = logits[:, :-1, : model.config.vocab_size].float()
    losses = F.cross_entropy(logits.reshape(-1, logits.size(-1)), tokens[:, 1:].reshape(-1), reduction="none")
    losses = losses.view(len(rows), -1) * mask[:, 1:]
    total = losses.sum(dim=1)
    mean = total / mask[:, 1:].sum(dim=1).clamp(min=1)
    per_char = -1
    if chars is not None:
        per_char = int((total.double().cpu() / torch.tensor(chars, dtype=torch.float64).clamp(min=1)).argmin())
    return int(mean.argmin()), int(total.argmin()), per_char, mean.tolist()


def evaluate(model, examples: list[Example], tokenizer, *, device, autocast, rank: int = 0, world_size: int = 1):
    """{'acc_norm_token', 'acc_norm_char', 'acc', 'n', 'truncated'} over all examples (the module
    docstring defines each), each rank scoring examples rank, rank + world, ...

    Every rank makes the same number of forward passes (a sharded model all-gathers in each, so a
    rank with one fewer would leave the others waiting): a rank short of the longest share scores
    its first example again and does not count it."""
    import torch

    max_len = model.config.block_size
    # n, correct per token, correct by sum, correct per character, truncated examples
    counts = torch.zeros(5, dtype=torch.float64, device=device)
    was_training = model.training
    model.eval()
    mine = examples[rank::world_size]
    for i in range(-(-len(examples) // world_size)):
        ex = mine[i] if i < len(mine) else (mine or examples)[0]
        rows, masks, cut = encode_example(ex, tokenizer, max_len)
        chars = [len(e) for e in ex.endings]
        pred_token, pred_sum, pred_char, _ = score_example(model, rows, masks, device, autocast, chars)
        if i < len(mine):
            hits = [1, pred_token == ex.label, pred_sum == ex.label, pred_char == ex.label, cut]
            counts += torch.tensor(hits, dtype=torch.float64, device=device)
    model.train(was_training)
    if world_size > 1:
        import torch.distributed as dist

        dist.all_reduce(counts)
    n, token, plain, char, truncated = counts.tolist()
    return {
        "acc_norm_token": token / max(n, 1),
        "acc_norm_char": char / max(n, 1),
        "acc": plain / max(n, 1),
        "n": int(n),
        "truncated": int(truncated),
    }
