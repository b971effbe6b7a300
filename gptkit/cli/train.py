"""`gptkit train`: pretrain with torchrun (DDP) on GPUs, or gloo processes on CPU."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from gptkit.cli.settings import with_settings
from gptkit.train.config import LaunchOverrides, TrainOverrides

# Every run setting (TrainConfig) and launch setting (LaunchConfig) becomes an option of its own,
# declared with its field in gptkit/train/config.py. The options below are not settings: they say
# which run, how to show it, or what to do instead of training.


@with_settings(("overrides", TrainOverrides), ("launch", LaunchOverrides))
def train(
    overrides: TrainOverrides,
    launch: LaunchOverrides,
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
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run", help="Print the torchrun command and resolved config; do not train.", rich_help_panel="Run"
        ),
    ] = False,
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
    sbatch: Annotated[
        str | None,
        typer.Option(
            "--sbatch",
            metavar="FILE",
            help="Write a SLURM batch script for this run to FILE ('-': standard output); start nothing.",
            rich_help_panel="SLURM",
        ),
    ] = None,
    partition: Annotated[
        str | None,
        typer.Option("--partition", help="With --sbatch (default: $SBATCH_PARTITION).", rich_help_panel="SLURM"),
    ] = None,
    account: Annotated[
        str | None,
        typer.Option("--account", help="With --sbatch (default: $SBATCH_ACCOUNT).", rich_help_panel="SLURM"),
    ] = None,
    time_limit: Annotated[
        str | None,
        typer.Option(
            "--time", metavar="TIME", help="With --sbatch (default: $SBATCH_TIMELIMIT).", rich_help_panel="SLURM"
        ),
    ] = None,
) -> None:
    """Train a GPT on tokenized shards: builds and runs the torchrun command, one process per GPU.

    A setting not given takes the --preset's value (on a CPU without --preset: the auto-sizing's), so
    most have no single default here: --plan prints the run's values, --dry-run its whole config.
    """
    from gptkit.train.launch import train as run_train

    if sbatch is not None or partition or account or time_limit:
        import os

        from gptkit.errors import GptkitError
        from gptkit.train.slurm import batch_script

        if sbatch is None:
            raise GptkitError("--partition, --account and --time go with --sbatch")
        args = sys.argv[1:]
        script = batch_script(
            args[args.index("train") + 1 :],
            nodes=launch.nodes,
            gpus=launch.gpus,
            name=name,
            out=str(out) if out else None,
            partition=partition,
            account=account,
            time=time_limit,
            env=os.environ,
            python=sys.executable,
        )
        if sbatch == "-":
            sys.stdout.write(script)
        else:
            Path(sbatch).write_text(script)
            print(f"wrote {sbatch}; submit it with `sbatch {sbatch}`")
        return

    if plan or gpu_type or json_out:
        from gptkit.errors import GptkitError
        from gptkit.train.plan import render_plan
        from gptkit.train.resolve import make_plan

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
