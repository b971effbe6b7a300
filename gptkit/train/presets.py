"""The training recipe of each model preset (gptkit.model.PRESETS holds the shapes): the TrainConfig
fields a preset sets beyond TrainConfig's defaults, which are the GPT-2 124M recipe."""

from __future__ import annotations

# Per model size: the GPT-2 reproduction recipe for the four OpenAI sizes (GPT-3 paper learning
# rates); short CPU-sized schedules for the small ones.
TRAIN_PRESETS: dict[str, dict] = {
    "gpt2": dict(micro_batch=64),
    "gpt2-medium": dict(micro_batch=32, lr=3e-4),
    "gpt2-large": dict(micro_batch=16, lr=2.5e-4),
    "gpt2-xl": dict(micro_batch=8, lr=2e-4),
    # The gpt2 recipe (10B tokens: how many Muon saves at 124M cannot be measured on a CPU) with Muon
    # for the block matrices. match_rms_adamw scales Muon's update to AdamW's RMS, so Muon shares
    # --lr and --weight-decay (Moonshot's "Muon is scalable" recipe); scripts/bench_recipe.py
    # measured the small-scale side (README).
    "gpt2-muon": dict(micro_batch=64, optimizer="muon", muon_adjust_lr="match_rms_adamw"),
    "small": dict(
        seq_len=256,
        batch_tokens=16_384,
        micro_batch=16,
        max_steps=2000,
        lr=1e-3,
        warmup_steps=100,
        eval_every=100,
        eval_tokens=65_536,
        hellaswag_every=500,
        hellaswag_limit=500,
        sample_every=200,
        checkpoint_every=200,
        log_every=1,
    ),
    "tiny": dict(
        seq_len=128,
        batch_tokens=4096,
        micro_batch=16,
        max_steps=500,
        lr=2e-3,
        warmup_steps=20,
        eval_every=50,
        eval_tokens=16_384,
        hellaswag_every=0,
        hellaswag_limit=200,
        sample_every=100,
        checkpoint_every=100,
        log_every=1,
    ),
    # Character or byte data (`gptkit tokenize FILE --tokenizer bytes`, or nanoGPT's meta.pkl);
    # nanoGPT's CPU recipe for shakespeare_char: batch 12 x 64, AdamW beta2 0.99, lr 1e-3 to 1e-4.
    "char": dict(
        seq_len=64,
        batch_tokens=768,
        micro_batch=12,
        max_steps=2000,
        lr=1e-3,
        warmup_steps=100,
        beta2=0.99,
        eval_every=250,
        eval_tokens=16_384,
        hellaswag_every=0,
        sample_every=500,
        checkpoint_every=500,
        log_every=10,
    ),
}
