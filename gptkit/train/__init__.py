"""Training: config and presets, the torchrun launcher, the data stream, the loop, evaluation, metrics.

config.py     TrainConfig / LaunchConfig, presets, TOML/YAML, batch arithmetic
launch.py     `gptkit train` as a function: validate, write RUN/config.json, run torchrun
main.py       the torchrun target (tiny)
trainer.py    the loop: DDP, accumulation, checkpoints, exact resume
data.py       memory-mapped shards as one deterministic shuffled stream
schedule.py   warmup + cosine / WSD
hellaswag.py  HellaSwag acc_norm, sharded across ranks
metrics.py    metrics.jsonl, Rich progress, TensorBoard / wandb
mfu.py        peak FLOPs per GPU; measured CPU peak
plot.py       `gptkit plot`: loss, lr, throughput as a PNG
"""
