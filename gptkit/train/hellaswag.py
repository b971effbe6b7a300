"""HellaSwag accuracy, completion style, as in the GPT-2 124M reproductions.

Each example is a context and four endings. The model scores each ending by its mean per-token
loss given the context (the ending is tokenized with a leading space, as it follows the context);
the lowest mean loss is the prediction. That is `acc_norm` (length-normalised); `acc` uses the
summed loss. The 10,042 validation examples are spread over the ranks and the counts all-reduced.
GPT-2 124M scores about 0.29-0.30 acc_norm this way.
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
    """(tokens (4, L), mask (4, L)) as lists: mask is 1 on ending tokens. Keeps the last max_len tokens."""
    ctx = tokenizer.encode(ex.ctx)
    rows, masks = [], []
    for ending in ex.endings:
        end = tokenizer.encode(" " + ending)
        toks, mask = ctx + end, [0] * len(ctx) + [1] * len(end)
        rows.append(toks[-max_len:])
        masks.append(mask[-max_len:])
    return rows, masks


def score_example(model, rows, masks, device, autocast):
    """(predicted ending by mean loss, by summed loss, mean losses) for one encoded example."""
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
    return int(mean.argmin()), int(total.argmin()), mean.tolist()


def evaluate(model, examples: list[Example], tokenizer, *, device, autocast, rank: int = 0, world_size: int = 1):
    """{'acc_norm', 'acc', 'n'} over all examples, each rank scoring examples rank, rank + world, ..."""
    import torch

    max_len = model.config.block_size
    counts = torch.zeros(3, dtype=torch.float64, device=device)  # n, correct (norm), correct (sum)
    was_training = model.training
    model.eval()
    for ex in examples[rank::world_size]:
        rows, masks = encode_example(ex, tokenizer, max_len)
        pred_norm, pred_sum, _ = score_example(model, rows, masks, device, autocast)
        counts += torch.tensor([1, pred_norm == ex.label, pred_sum == ex.label], dtype=torch.float64, device=device)
    model.train(was_training)
    if world_size > 1:
        import torch.distributed as dist

        dist.all_reduce(counts)
    n, norm, plain = counts.tolist()
    return {"acc_norm": norm / max(n, 1), "acc": plain / max(n, 1), "n": int(n)}
