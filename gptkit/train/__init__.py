"""Training: config and presets, the torchrun launcher, the data stream, the loop, evaluation, metrics.

config.py     TrainConfig / LaunchConfig, TOML/YAML, batch arithmetic
presets.py    each preset's training recipe
launch.py     `gptkit train` as a function: validate, write RUN/config.json, run torchrun
main.py       the torchrun target (tiny)
trainer.py    the loop: DDP, accumulation, checkpoints, exact resume
dist.py       ranks, process group (gloo / NCCL), collectives, per-step seed
data.py       memory-mapped shards as one deterministic shuffled stream
schedule.py   warmup + cosine / WSD
hellaswag.py  HellaSwag acc_norm, sharded across ranks
metrics.py    metrics.jsonl, Rich progress, TensorBoard / wandb
mfu.py        peak FLOPs per GPU; measured CPU peak
plot.py       `gptkit plot`: loss, lr, throughput as a PNG
"""
