"""The model card (README.md) `convert --to hf` writes: the Hub's metadata (library_name, tags,
datasets, metrics and a model-index with the run's results, as huggingface_hub's ModelCardData
writes them) and what the run knows, read from the checkpoint and the run directory around it:
the data and tokens, the steps, the last validation loss and HellaSwag (both acc_norm definitions)
in RUN/metrics.jsonl, the recipe, the gptkit and torch versions, the hardware and the wall time.

A source that is not a gptkit checkpoint inside a run (an HF folder, a .pt) gets the metadata and
the model's shape only: the card never claims what the source does not record.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

import torch

from gptkit import __version__
from gptkit.checkpoint import CONFIG, read_trainer_state
from gptkit.formats.loaded import Loaded
from gptkit.runs import CONFIG_FILE
from gptkit.train.metrics import read_metrics, summarize

# metrics.jsonl key -> (model-index metric type, name shown on the Hub, dataset)
RESULTS = {
    "val_loss": ("loss", "validation loss (nats per token)", "validation shard"),
    "hellaswag": ("acc_norm", "HellaSwag acc_norm, per token (build-nanogpt, llm.c)", "hellaswag"),
    "hellaswag_norm_char": ("acc_norm", "HellaSwag acc_norm, per character (lm-eval's)", "hellaswag"),
    "hellaswag_acc": ("acc", "HellaSwag acc", "hellaswag"),
}


def last_results(records: list[dict]) -> dict[str, tuple[int, float]]:
    """The last value of each RESULTS key in metrics.jsonl's records: {key: (step, value)}."""
    out: dict[str, tuple[int, float]] = {}
    for r in records:
        for k in RESULTS:
            if isinstance(r.get(k), int | float):
                out[k] = (int(r.get("step", 0)), float(r[k]))
    return out


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def model_card(m: Loaded, name: str) -> str:
    """README.md for the HF export of `m` (a model named `name` on the card)."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    c = m.config
    meta = _json(m.path / CONFIG) if m.format == "gptkit" else {}
    train = meta.get("train") or {}
    trainer = (read_trainer_state(m.path) or {}) if m.format == "gptkit" else {}
    run = m.path.parent if m.format == "gptkit" and (m.path.parent / "metrics.jsonl").is_file() else None
    records = read_metrics(run) if run is not None else []
    step = trainer.get("step", m.meta.get("step"))
    if step is not None:  # this checkpoint's metrics, not a later one's in the same run
        records = [r for r in records if int(r.get("step", 0)) <= int(step)]
    results = last_results(records)
    summary = summarize(records) or {}
    run_cfg = _json(run / CONFIG_FILE) if run is not None else {}
    shards = _json(Path(train["data"]) / "manifest.json") if train.get("data") else {}
    repo = (shards.get("source") or {}).get("repo_id")

    evals = [
        EvalResult(
            task_type="text-generation",
            dataset_type=RESULTS[k][2],
            dataset_name=RESULTS[k][2],
            metric_type=RESULTS[k][0],
            metric_name=RESULTS[k][1],
            metric_value=v,
        )
        for k, (_, v) in results.items()
    ]
    data = ModelCardData(
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=["gptkit", "gpt2", "text-generation"],
        datasets=[repo] if repo else None,
        metrics=sorted({RESULTS[k][0] for k in results}) or None,
        model_name=name,
        eval_results=evals or None,
    )
    tok = m.tokenizer
    lines = [
        f"# {name}",
        "",
        f"A GPT-2-architecture model ({c.n_layer} layers, {c.n_head} heads, {c.n_embd} wide, context "
        f"{c.block_size}, vocabulary {c.vocab_size}, {c.activation}), trained with "
        f"[gptkit](https://pypi.org/project/gptkit/) and exported as a `GPT2LMHeadModel` folder.",
        "",
        "## What the run recorded",
        "",
        "| | |",
        "|---|---|",
    ]
    rows: list[tuple[str, object]] = [
        ("tokenizer", tok.name if tok is not None else "none (give one to sample)"),
        ("training data", repo or train.get("data")),
        ("tokens seen", trainer.get("tokens") or summary.get("tokens")),
        ("steps", step),
        ("recipe", _recipe(train)),
        ("hardware", _hardware(run_cfg, train)),
        ("wall time", f"{summary['wall_s']:.0f} s" if summary.get("wall_s") else None),
        ("gptkit", f"{meta.get('gptkit_version', '?')} (trained), {__version__} (exported)" if meta else __version__),
        (
            "torch",
            f"{meta['torch_version']} (trained)" if meta.get("torch_version") else f"{torch.__version__} (exported)",
        ),
        ("exported on", platform.platform()),
    ]
    for k, (s, v) in results.items():
        rows.append((RESULTS[k][1], f"{v:.4f} (step {s})"))
    lines += [f"| {k} | {v} |" for k, v in rows if v not in (None, "")]
    if not results:
        lines += ["", "The source records no evaluation: no results are claimed."]
    lines += [
        "",
        "The two HellaSwag acc_norm figures differ in how a choice's log-likelihood is normalised: by its",
        "tokens (build-nanogpt, llm.c: GPT-2 124M ≈ 0.294) or by its characters (lm-evaluation-harness's",
        "`acc_norm`: GPT-2 124M ≈ 0.31). Compare each only with figures of the same definition.",
        "",
    ]
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))
    return str(card)


def _recipe(train: dict) -> str | None:
    keys = ("preset", "batch_tokens", "seq_len", "lr", "min_lr", "warmup_steps", "max_steps", "weight_decay")
    parts = [f"{k}={train[k]}" for k in keys if train.get(k) is not None]
    return ", ".join(parts) or None


def _hardware(run_cfg: dict, train: dict) -> str | None:
    device = run_cfg.get("device_type") or (run_cfg.get("extra") or {}).get("device_type") or train.get("device")
    if not device:
        return None
    procs = run_cfg.get("nproc_per_node") or (run_cfg.get("extra") or {}).get("nproc_per_node") or 1
    nodes = (run_cfg.get("launch") or {}).get("nodes") or 1
    return f"{device}, {procs} process(es) per node x {nodes} node(s), {train.get('precision', '?')} precision"
