"""Training: config and presets, the torchrun launcher, the data stream, the loop, evaluation, metrics.

config.py     TrainConfig / LaunchConfig (every setting, declared once), TOML/YAML, batch arithmetic
presets.py    each preset's training recipe
launch.py     `gptkit train` as a function: validate, write RUN/config.json, run torchrun
main.py       the torchrun target (tiny)
failures.py   one rank's error in RUN/.errors, for the launcher and the other ranks
resolve.py    a run settled from preset, checkpoint, file and flags; its checks before launch
auto.py       the CPU auto-sizing
estimate.py   parameters, FLOPs, memory, a timed CPU step
plan.py       `train --plan` of a settled run
trainer.py    the loop: accumulation, checkpoints, exact resume
parallel.py   how the model is distributed (DDP): the seam the loop calls
optim.py      the optimizers: which parameter goes to which group, the one builder
loss.py       the CPU fused lm_head + loss
validation.py the validation loss loop (training and `gptkit eval`)
dist.py       ranks, process group (gloo / NCCL), collectives, per-step seed
data.py       memory-mapped shards as one deterministic shuffled stream
schedule.py   warmup + cosine / WSD
hellaswag.py  HellaSwag (acc_norm per token and per character), sharded across ranks
metrics.py    the reporter: live line, records to the loggers
loggers.py    metrics.jsonl, TensorBoard, wandb behind one protocol
mfu.py        peak FLOPs per GPU; measured CPU peak
plot.py       `gptkit plot`: loss, lr, throughput as a PNG
"""
