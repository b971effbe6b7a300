#!/usr/bin/env python
"""gptkit's trainer against a plain PyTorch loop: validation loss at equal steps on the same char data.

    python scripts/bench_charlevel.py                   # 500 steps each, Python's pydoc topics as bytes
    python scripts/bench_charlevel.py --steps 2000      # the whole `--preset char` recipe
    python scripts/bench_charlevel.py --steps 2000 --data DIR   # any byte-level `gptkit tokenize` output

The shape is nanoGPT's shakespeare_char baseline: 4 layers, 4 heads, 128 wide, sequences of 64, batch
12, dropout 0, AdamW lr 1e-3 (betas 0.9/0.99, weight decay 0.1), warmup then cosine to lr/10, fp32.

gptkit side: `--preset char` through the real Trainer (in this process, one rank), reading its
shuffled stream of windows.
Reference side: a separately written minimal GPT and loop (below; no gptkit code) drawing random
windows from the same training tokens, as nanoGPT's get_batch does. Both final models are scored by
the same function on the same validation windows. The two sample their batches differently, so
equal is "within noise", not bitwise: a gap of a few hundredths of a nat is sampling; a large gap
means one side trains worse.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

LAYERS, HEADS, WIDTH, SEQ, BATCH = 4, 4, 128, 64, 12
LR, MIN_LR_RATIO, BETAS, WD = 1e-3, 0.1, (0.9, 0.99), 0.1
EVAL_WINDOWS = 400


# --- the reference: a plain GPT and loop --------------------------------------------------------
class RefBlock(nn.Module):
    def __init__(self, c: int, h: int):
        super().__init__()
        self.h = h
        self.ln1, self.ln2 = nn.LayerNorm(c), nn.LayerNorm(c)
        self.qkv, self.proj = nn.Linear(c, 3 * c), nn.Linear(c, c)
        self.fc, self.out = nn.Linear(c, 4 * c), nn.Linear(4 * c, c)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.h, C // self.h).transpose(1, 2) for t in (q, k, v))  # (B, h, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)
        x = x + self.proj(y)
        return x + self.out(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))


class RefGPT(nn.Module):
    def __init__(self, vocab: int):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, WIDTH), nn.Embedding(SEQ, WIDTH)
        self.blocks = nn.ModuleList(RefBlock(WIDTH, HEADS) for _ in range(LAYERS))
        self.ln = nn.LayerNorm(WIDTH)
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                std = 0.02 / math.sqrt(2 * LAYERS) if name.endswith(("proj.weight", "out.weight")) else 0.02
                nn.init.normal_(p, 0.0, std)
            elif "ln" not in name:
                nn.init.zeros_(p)

    def forward(self, idx, targets):
        x = self.tok(idx) + self.pos(torch.arange(idx.size(1)))
        for b in self.blocks:
            x = b(x)
        logits = self.ln(x) @ self.tok.weight.T  # tied head
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))


def lr_of(step: int, steps: int, warmup: int) -> float:
    if step < warmup:
        return LR * (step + 1) / warmup
    frac = (step - warmup) / max(1, steps - warmup)
    return LR * MIN_LR_RATIO + 0.5 * (1 + math.cos(math.pi * frac)) * LR * (1 - MIN_LR_RATIO)


def train_reference(train: np.ndarray, vocab: int, steps: int, warmup: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = RefGPT(vocab)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": WD}, {"params": rest, "weight_decay": 0.0}], betas=BETAS)
    rng = np.random.default_rng(seed)
    for step in range(steps):
        starts = rng.integers(0, len(train) - SEQ - 1, BATCH)
        xy = torch.from_numpy(np.stack([train[s : s + SEQ + 1] for s in starts]).astype(np.int64))
        for g in opt.param_groups:
            g["lr"] = lr_of(step, steps, warmup)
        loss = model(xy[:, :-1], xy[:, 1:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return model


# --- gptkit ---------------------------------------------------------------------------------------
def train_gptkit(data_dir: Path, steps: int, warmup: int, seed: int, home: Path) -> nn.Module:
    os.environ["GPTKIT_HOME"] = str(home)
    from gptkit.train.config import LaunchOverrides, TrainOverrides
    from gptkit.train.dist import Dist
    from gptkit.train.launch import write_run_config
    from gptkit.train.resolve import prepare
    from gptkit.train.trainer import Trainer

    # The documented recipe (--preset char); the flags below only restate it or turn off what the
    # reference does not do (evaluation, samples, checkpoints) and pin fp32 as the reference runs.
    overrides = TrainOverrides(
        preset="char",
        data=str(data_dir),
        seq_len=SEQ,
        batch_tokens=SEQ * BATCH,
        micro_batch=BATCH,
        max_steps=steps,
        lr=LR,
        min_lr_ratio=MIN_LR_RATIO,
        warmup_steps=warmup,
        beta2=BETAS[1],
        weight_decay=WD,
        precision="fp32",
        compile=False,
        seed=seed,
        eval_tokens=0,
        hellaswag_every=0,
        sample_every=10**9,
        sample_tokens=0,
        checkpoint_every=10**9,
        log_every=10**9,
    )
    rr = prepare(overrides, LaunchOverrides(gpus=0, nproc=1), name="charbench")
    write_run_config(rr)
    trainer = Trainer(rr, Dist("cpu"))
    trainer.fit()
    return trainer.model


@torch.no_grad()
def val_loss(forward, val: np.ndarray) -> float:
    """Mean loss over EVAL_WINDOWS evenly spaced windows of the validation tokens."""
    starts = np.linspace(0, len(val) - SEQ - 2, EVAL_WINDOWS).astype(np.int64)
    xy = torch.from_numpy(np.stack([val[s : s + SEQ + 1] for s in starts]).astype(np.int64))
    losses = [
        forward(xy[i : i + 50, :-1].contiguous(), xy[i : i + 50, 1:].contiguous()) for i in range(0, EVAL_WINDOWS, 50)
    ]
    return float(sum(losses) / len(losses))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--threads", type=int, default=1, help="torch threads for both sides (a 0.8M model: 1 is fastest)")
    ap.add_argument("--data", type=Path, help="a byte-level `gptkit tokenize` output (default: pydoc topics)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from gptkit.data.shards import find_shards, open_shard

    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        data = args.data
        if data is None:
            from gptkit.data.tokenize import Settings, tokenize

            data = home / "shards" / "pydoc"
            tokenize("pydoc", data, Settings(tokenizer="bytes", val_tokens=50_000), workers=1)
        val_paths, train_paths, manifest = find_shards(data)
        vocab = int(manifest["tokenizer"]["vocab_size"])
        if vocab > 512:
            sys.exit(f"{data}: tokenizer {manifest['tokenizer']['name']} is not character/byte level")
        train = np.concatenate([np.asarray(open_shard(p)) for p in train_paths])
        val = np.concatenate([np.asarray(open_shard(p)) for p in val_paths])
        warmup = max(1, args.steps // 20)
        print(f"data {data}: {len(train):,} train / {len(val):,} val tokens, vocab {vocab}; {args.steps} steps")

        t = time.perf_counter()
        ref = train_reference(train, vocab, args.steps, warmup, args.seed).eval()
        ref_s = time.perf_counter() - t
        print(f"reference: {ref_s:.0f} s", flush=True)
        t = time.perf_counter()
        gk = train_gptkit(Path(data), args.steps, warmup, args.seed, home).eval()
        gk_s = time.perf_counter() - t

        ref_val = val_loss(ref, val)
        gk_val = val_loss(lambda x, y: gk(x, y)[1], val)
        result = {
            "steps": args.steps,
            "tokens_per_step": SEQ * BATCH,
            "val_loss": {"gptkit": round(gk_val, 4), "reference": round(ref_val, 4)},
            "gap": round(gk_val - ref_val, 4),
            "seconds": {"gptkit": round(gk_s, 1), "reference": round(ref_s, 1)},
            "uniform_loss": round(math.log(vocab), 4),
        }
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
