"""`convert --to hf` writes a model card (issue 22): the Hub's metadata, read back by huggingface_hub's
own ModelCard.load, with the run's last metrics.jsonl values as its results."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import run_cli, tiny_training

GOLDEN = Path(__file__).resolve().parent / "golden" / "v0.1.0"
HELLASWAG = [
    {"ctx": f"example {i}: the cat", "endings": ["sat on the mat.", "ran", "is here", "jumps high"], "label": i % 4}
    for i in range(4)
]


def test_hf_export_carries_a_model_card_with_the_runs_last_metrics(tmp_path, gptkit_home, trains):
    from huggingface_hub import ModelCard

    from gptkit.train.metrics import read_metrics

    hs = gptkit_home / "data" / "hellaswag" / "validation.jsonl"
    hs.parent.mkdir(parents=True)
    hs.write_text("".join(json.dumps(e) + "\n" for e in HELLASWAG))
    run = tmp_path / "card-run"
    flags = tiny_training(
        batch_tokens=256, micro_batch=8, max_steps=3, eval_every=2, hellaswag_every=2, sample_every=100
    )
    trains.cli("--data", GOLDEN / "shards", *flags, "--out", run, check=True)
    run_cli("convert", run, tmp_path / "hf", "--to", "hf", check=True)

    card = ModelCard.load(tmp_path / "hf" / "README.md")
    d = card.data
    assert d.library_name == "transformers" and "gptkit" in d.tags and set(d.metrics) == {"loss", "acc_norm", "acc"}
    got = {r.metric_name: r.metric_value for r in d.eval_results}
    records = read_metrics(run)
    last = {k: [r[k] for r in records if k in r][-1] for k in ("val_loss", "hellaswag", "hellaswag_norm_char")}
    assert got["validation loss (nats per token)"] == last["val_loss"]
    assert got["HellaSwag acc_norm, per token (build-nanogpt, llm.c)"] == last["hellaswag"]
    assert got["HellaSwag acc_norm, per character (lm-eval's)"] == last["hellaswag_norm_char"]
    text = card.text
    trainer = json.loads((run / "step_000003" / "trainer.json").read_text())
    assert "| steps | 3 |" in text and f"| tokens seen | {trainer['tokens']} |" in text
    assert "| torch | " in text and "(trained)" in text and "| hardware | cpu, 1 process(es)" in text
    assert "| wall time | " in text and "preset=tiny" in text
