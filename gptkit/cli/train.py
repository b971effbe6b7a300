"""`gptkit train`: pretrain with torchrun (DDP) on GPUs, or gloo processes on CPU."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from gptkit.cli.options import OptionalPrecision

Int = int | None
Float = float | None

# Written out, not computed, so that `gptkit --help` never imports torch; test_model_shape checks it
# against gptkit.model.preset_sizes().
PRESET_SIZES = "gpt2 124.4M, gpt2-medium 354.8M, gpt2-large 774.0M, gpt2-xl 1557.6M, small 16.1M, tiny 3.3M, char 7.2M"


def train(
    preset: Annotated[
        str | None,
        typer.Option(
            "--preset",
            "-p",
            metavar="PRESET",
            help=f"Named defaults for the model shape and the recipe: {PRESET_SIZES} parameters (GPT-2 vocabulary). "
            "Default: gpt2.",
            rich_help_panel="Run",
        ),
    ] = None,
    data: Annotated[
        str | None,
        typer.Option(
            "--data",
            "-d",
            metavar="DIR",
            help="Tokenized data: a directory or a name under shards/ (default: the newest).",
            rich_help_panel="Run",
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            metavar="FILE",
            help="TOML or YAML file with any settings (flags win over it).",
            rich_help_panel="Run",
        ),
    ] = None,
    name: Annotated[
        str | None,
        typer.Option(
            "--name", metavar="NAME", help="Run name under runs/ (default: PRESET-DATE-TIME).", rich_help_panel="Run"
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", metavar="DIR", help="Run directory (default: runs/NAME).", rich_help_panel="Run"),
    ] = None,
    resume: Annotated[
        str | None,
        typer.Option(
            "--resume",
            metavar="PATH",
            help="'auto' (latest checkpoint of this or the newest run) or a checkpoint / run path.",
            rich_help_panel="Run",
        ),
    ] = None,
    init_from: Annotated[
        str | None,
        typer.Option(
            "--init-from",
            metavar="PATH",
            help="Start from these weights (a gptkit checkpoint or run dir, e.g. made by `gptkit convert`): fresh optimizer, step 0.",
            rich_help_panel="Run",
        ),
    ] = None,
    # --- Model: the shape; each defaults to the preset's (block size: --seq-len) --------------------
    n_layer: Annotated[
        Int, typer.Option("--n-layer", metavar="N", help="Transformer blocks.", rich_help_panel="Model")
    ] = None,
    n_head: Annotated[
        Int, typer.Option("--n-head", metavar="N", help="Attention heads per block.", rich_help_panel="Model")
    ] = None,
    n_embd: Annotated[
        Int,
        typer.Option(
            "--n-embd", metavar="N", help="Width (embedding size); a multiple of --n-head.", rich_help_panel="Model"
        ),
    ] = None,
    block_size: Annotated[
        Int,
        typer.Option(
            "--block-size",
            metavar="N",
            help="Context length: position embeddings (default: --seq-len; at least --seq-len).",
            rich_help_panel="Model",
        ),
    ] = None,
    dropout: Annotated[
        Float, typer.Option("--dropout", metavar="P", help="Dropout probability (0 = off).", rich_help_panel="Model")
    ] = None,
    bias: Annotated[
        bool | None,
        typer.Option(
            "--bias/--no-bias", help="Biases in the Linear and LayerNorm layers (GPT-2: on).", rich_help_panel="Model"
        ),
    ] = None,
    activation: Annotated[
        str | None,
        typer.Option(
            "--activation",
            metavar="NAME",
            help="GELU form: gelu_new (tanh approximation, GPT-2's; alias tanh) or gelu (exact, nanoGPT's; alias exact).",
            rich_help_panel="Model",
        ),
    ] = None,
    ln_eps: Annotated[
        Float, typer.Option("--ln-eps", metavar="EPS", help="LayerNorm epsilon.", rich_help_panel="Model")
    ] = None,
    # -------------------------------------------------------------------------------------------------
    gpus: Annotated[
        Int, typer.Option("--gpus", help="GPUs on this node (default: all; 0 = CPU).", rich_help_panel="Where")
    ] = None,
    nproc: Annotated[
        Int, typer.Option("--nproc", help="CPU processes on this node (gloo).", rich_help_panel="Where")
    ] = None,
    nodes: Annotated[Int, typer.Option("--nodes", "--nnodes", help="Number of nodes.", rich_help_panel="Where")] = None,
    node_rank: Annotated[
        Int, typer.Option("--node-rank", help="This node's rank; 0 hosts the rendezvous.", rich_help_panel="Where")
    ] = None,
    master_addr: Annotated[
        str | None, typer.Option("--master-addr", help="Address of node 0.", rich_help_panel="Where")
    ] = None,
    master_port: Annotated[
        Int,
        typer.Option(
            "--master-port", help="Rendezvous port on node 0 (needed for several nodes).", rich_help_panel="Where"
        ),
    ] = None,
    watchdog: Annotated[
        Float,
        typer.Option(
            "--watchdog",
            help="Seconds without progress before a hang is reported and the run stops (0 = off; "
            "default: 10x the median step, at least 5 minutes).",
            rich_help_panel="Where",
        ),
    ] = None,
    break_lock: Annotated[
        bool,
        typer.Option(
            "--break-lock",
            help="Take over the run directory's lock held from another host (only if that run is gone).",
            rich_help_panel="Run",
        ),
    ] = False,
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose", help="Show torchrun's and the workers' own output (tracebacks).", rich_help_panel="Run"
        ),
    ] = False,
    device: Annotated[
        str | None, typer.Option("--device", help="auto, cpu, cuda or mps.", rich_help_panel="Where")
    ] = None,
    precision: OptionalPrecision = None,
    compile: Annotated[
        bool | None,
        typer.Option("--compile/--no-compile", help="torch.compile (default: on for CUDA).", rich_help_panel="Where"),
    ] = None,
    seq_len: Annotated[
        Int, typer.Option("--seq-len", help="Tokens per sequence.", rich_help_panel="Optimisation")
    ] = None,
    batch_tokens: Annotated[
        Int,
        typer.Option(
            "--batch-tokens",
            help="Global batch in tokens (all processes, all micro-steps).",
            rich_help_panel="Optimisation",
        ),
    ] = None,
    micro_batch: Annotated[
        Int, typer.Option("--micro-batch", help="Sequences per process per micro-step.", rich_help_panel="Optimisation")
    ] = None,
    max_steps: Annotated[
        Int, typer.Option("--max-steps", help="Optimizer steps in the whole run.", rich_help_panel="Optimisation")
    ] = None,
    lr: Annotated[Float, typer.Option("--lr", help="Peak learning rate.", rich_help_panel="Optimisation")] = None,
    warmup_steps: Annotated[Int, typer.Option("--warmup-steps", rich_help_panel="Optimisation")] = None,
    schedule: Annotated[
        str | None,
        typer.Option("--schedule", help="cosine or wsd (warmup-stable-decay).", rich_help_panel="Optimisation"),
    ] = None,
    weight_decay: Annotated[Float, typer.Option("--weight-decay", rich_help_panel="Optimisation")] = None,
    grad_clip: Annotated[
        Float,
        typer.Option(
            "--grad-clip", help="Clip the gradient norm here (0: no clipping).", rich_help_panel="Optimisation"
        ),
    ] = None,
    seed: Annotated[Int, typer.Option("--seed", rich_help_panel="Optimisation")] = None,
    eval_every: Annotated[
        Int,
        typer.Option(
            "--eval-every",
            help="Validation loss every N steps (off: --eval-tokens 0).",
            rich_help_panel="Evaluation and logging",
        ),
    ] = None,
    eval_tokens: Annotated[
        Int,
        typer.Option(
            "--eval-tokens", help="Validation budget in tokens (0 = off).", rich_help_panel="Evaluation and logging"
        ),
    ] = None,
    hellaswag_every: Annotated[
        Int,
        typer.Option(
            "--hellaswag-every", help="HellaSwag every N steps (0 = off).", rich_help_panel="Evaluation and logging"
        ),
    ] = None,
    hellaswag_limit: Annotated[
        Int,
        typer.Option(
            "--hellaswag-limit", help="Only the first N HellaSwag examples.", rich_help_panel="Evaluation and logging"
        ),
    ] = None,
    sample_every: Annotated[
        Int,
        typer.Option(
            "--sample-every",
            help="A short sample every N steps (off: --sample-tokens 0).",
            rich_help_panel="Evaluation and logging",
        ),
    ] = None,
    sample_tokens: Annotated[
        Int,
        typer.Option(
            "--sample-tokens", help="Tokens per sample (0 = no samples).", rich_help_panel="Evaluation and logging"
        ),
    ] = None,
    checkpoint_every: Annotated[
        Int,
        typer.Option(
            "--checkpoint-every",
            help="Checkpoint every N steps (and at the end).",
            rich_help_panel="Evaluation and logging",
        ),
    ] = None,
    keep_checkpoints: Annotated[
        Int,
        typer.Option("--keep", help="Keep the last K checkpoints (0 = all).", rich_help_panel="Evaluation and logging"),
    ] = None,
    log_every: Annotated[
        Int,
        typer.Option(
            "--log-every",
            help="Log line every N steps when not on a terminal.",
            rich_help_panel="Evaluation and logging",
        ),
    ] = None,
    tensorboard: Annotated[
        bool | None,
        typer.Option(
            "--tensorboard/--no-tensorboard", help="Also log to TensorBoard.", rich_help_panel="Evaluation and logging"
        ),
    ] = None,
    wandb: Annotated[
        str | None,
        typer.Option("--wandb", help="Also log to this wandb project.", rich_help_panel="Evaluation and logging"),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run", help="Print the torchrun command and resolved config; do not train.", rich_help_panel="Run"
        ),
    ] = False,
    # --- the plan (issue 11) ---
    plan: Annotated[
        bool,
        typer.Option("--plan", help="Show the run's size, memory and time; start nothing.", rich_help_panel="Run"),
    ] = False,
    gpu_type: Annotated[
        str | None,
        typer.Option(
            "--gpu-type", help="With --plan: plan for --gpus GPUs of this kind (e.g. H100).", rich_help_panel="Run"
        ),
    ] = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="With --plan: the plan as JSON.", rich_help_panel="Run")
    ] = False,
) -> None:
    """Train a GPT on tokenized shards: builds and runs the torchrun command, one process per GPU."""
    from gptkit.train.config import LaunchOverrides, TrainOverrides
    from gptkit.train.launch import train as run_train

    overrides = TrainOverrides(
        preset=preset,
        n_layer=n_layer,
        n_head=n_head,
        n_embd=n_embd,
        block_size=block_size,
        dropout=dropout,
        bias=bias,
        activation=activation,
        ln_eps=ln_eps,
        data=data,
        init_from=init_from,
        seq_len=seq_len,
        batch_tokens=batch_tokens,
        micro_batch=micro_batch,
        max_steps=max_steps,
        lr=lr,
        warmup_steps=warmup_steps,
        schedule=schedule,
        weight_decay=weight_decay,
        grad_clip=grad_clip,
        device=device,
        precision=precision,
        compile=compile,
        seed=seed,
        eval_every=eval_every,
        eval_tokens=eval_tokens,
        hellaswag_every=hellaswag_every,
        hellaswag_limit=hellaswag_limit,
        sample_every=sample_every,
        sample_tokens=sample_tokens,
        checkpoint_every=checkpoint_every,
        keep_checkpoints=keep_checkpoints,
        log_every=log_every,
        tensorboard=tensorboard,
        wandb=wandb,
    )
    launch = LaunchOverrides(
        gpus=gpus,
        nproc=nproc,
        nodes=nodes,
        node_rank=node_rank,
        master_addr=master_addr,
        master_port=master_port,
        watchdog=watchdog,
    )
    if plan or gpu_type or json_out:
        from gptkit.errors import GptkitError
        from gptkit.train.plan import make_plan, render_plan

        if not plan:
            raise GptkitError("--gpu-type and --json go with --plan")
        p = make_plan(overrides, launch, config_file=config, gpu_type=gpu_type)
        if json_out:
            import json

            print(json.dumps(p.to_dict(), indent=2))
        else:
            print("\n".join(render_plan(p)))
        return
    rc = run_train(
        overrides,
        launch,
        config_file=config,
        name=name,
        out=out,
        resume=resume,
        dry_run=dry_run,
        break_lock=break_lock,
        verbose=verbose,
        echo=print,
    )
    if rc:
        sys.exit(rc)  # not typer.Exit: an exit code of 130 from a graceful stop is not a bare Ctrl-C (see cli/__init__)
