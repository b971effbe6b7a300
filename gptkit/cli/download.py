"""`gptkit download`: a preset or any Hub repo, through huggingface.co or a mirror (gptkit.hub)."""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType
from typing import Annotated

import typer

from gptkit.cli.options import Endpoint, JsonOut, Mirror, within


def download(
    name: Annotated[
        str | None, typer.Argument(help="A preset (see --list) or any ORG/NAME repo.", show_default=False)
    ] = None,
    list_presets: Annotated[bool, typer.Option("--list", help="Show the presets and their sizes.")] = False,
    repo_type: Annotated[
        str | None,
        typer.Option("--repo-type", metavar="TYPE", help="model or dataset, for ORG/NAME repos (default model)."),
    ] = None,
    subset: Annotated[
        str | None,
        typer.Option("--subset", help="fineweb / fineweb-edu: sample-10BT (default), sample-100BT, sample-350BT."),
    ] = None,
    shards: Annotated[
        int | None, typer.Option("--shards", metavar="N", help="Only the first N data files, in sorted order.")
    ] = None,
    include: Annotated[
        list[str] | None,
        typer.Option(
            "--include", metavar="GLOB", help="Glob of repo paths to fetch (repeatable); replaces the preset's."
        ),
    ] = None,
    exclude: Annotated[
        list[str] | None, typer.Option("--exclude", metavar="GLOB", help="Glob of repo paths to skip (repeatable).")
    ] = None,
    revision: Annotated[
        str | None, typer.Option("--revision", metavar="REV", help="Branch, tag or commit (default main).")
    ] = None,
    local_dir: Annotated[
        Path | None,
        typer.Option("--local-dir", metavar="DIR", help="Where to put the files (default $GPTKIT_HOME/data/NAME)."),
    ] = None,
    endpoint: Endpoint = None,
    mirror: Mirror = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List the files and total size, check free disk, download nothing.")
    ] = False,
    progress: Annotated[
        bool | None,
        typer.Option(
            "--progress/--no-progress", help="Progress bars (default: when stderr is a terminal).", show_default=False
        ),
    ] = None,
    workers: Annotated[
        int,
        typer.Option("--workers", metavar="N", help="Files downloaded in parallel (1 to 32).", callback=within(1, 32)),
    ] = 4,
    json_out: JsonOut = False,
):
    """Download a dataset or model from the Hugging Face Hub or a mirror; re-running resumes.

    The endpoint is --endpoint, else --mirror (https://hf-mirror.com), else $HF_ENDPOINT, else huggingface.co.

    A token, if needed, comes from $HF_TOKEN and is never printed.
    """
    from gptkit.hub import download as hub
    from gptkit.hub import presets
    from gptkit.hub.plan import human

    if list_presets:
        return _print_presets(presets, json_out)
    if not name:
        from gptkit.errors import GptkitError

        raise GptkitError("give a preset or an ORG/NAME repo to download; `gptkit download --list` shows the presets")
    from gptkit.cli.progress import DownloadDisplay

    bars = sys.stderr.isatty() if progress is None else progress
    # --json: stdout is the JSON document only, so no per-file lines and the notes on stderr
    with DownloadDisplay(bars, out=sys.stderr if json_out else None, files=not json_out) as display:
        result = hub.download(
            name,
            endpoint=endpoint,
            mirror=mirror,
            subset=subset,
            shards=shards,
            include=include,
            exclude=exclude,
            revision=revision,
            local_dir=local_dir,
            repo_type=repo_type,
            dry_run=dry_run,
            workers=workers,
            progress=display.update,
            log=display.log,
        )
    if json_out:
        import json

        out = {
            "repo_id": result.repo_id,
            "repo_type": result.repo_type,
            "revision": result.revision,
            "commit": result.commit,
            "endpoint": result.endpoint,
            "local_dir": str(result.local_dir),
            "dry_run": result.dry_run,
            "files": [{"path": f.path, "size": f.size} for f in result.files],
            "fetched": result.fetched,
            "skipped": result.skipped,
            "total_bytes": result.total_bytes,
            "fetch_bytes": result.fetch_bytes,
            "free_bytes": result.free_bytes,
            "xet_disabled": result.xet_disabled,
        }
        print(json.dumps(out, indent=1))
        return
    repo = f"{result.repo_type} {result.repo_id}@{result.commit[:12]}"
    if dry_run:
        pending = set(result.fetched)
        for f in result.files:
            print(f"  {'get ' if f.path in pending else 'have'}  {human(f.size):>10}  {f.path}")
        print(
            f"{repo}: {_files(result.files)}, {human(result.total_bytes)}; to download "
            f"{_files(result.fetched)}, {human(result.fetch_bytes)}; "
            f"{human(result.free_bytes)} free in {result.local_dir}"
        )
        return
    print(
        f"{repo}: {_files(result.fetched)} downloaded ({human(result.fetch_bytes)}), "
        f"{len(result.skipped)} already complete -> {result.local_dir}"
    )
    hint = next_step(name, result.repo_type, Path(result.local_dir))
    if hint:
        print(f"next: {hint}")


def next_step(name: str, repo_type: str, folder: Path) -> str | None:
    """The command that uses a download, as it works from here: its folder's name when it is under
    $GPTKIT_HOME/data (tokenize and sample take it), else its path. None for an evaluation set."""
    import shlex

    from gptkit import paths
    from gptkit.hub.presets import PRESETS

    if folder.resolve() == paths.data_dir(folder.name).resolve():
        spec = folder.name
    else:
        spec = str(folder) if folder.is_absolute() or str(folder).startswith(".") else f"./{folder}"
    if repo_type == "model":
        return f"gptkit sample 'Hello,' --model {shlex.quote(spec)}"
    if name in PRESETS and PRESETS[name].text_column is None:
        return None  # HellaSwag: `gptkit train` and `gptkit eval` read it themselves
    return f"gptkit tokenize {shlex.quote(spec)}"


def _files(items) -> str:
    return f"{len(items)} file{'' if len(items) == 1 else 's'}"


def _print_presets(presets: ModuleType, json_out: bool) -> None:
    if json_out:
        import json

        print(json.dumps(presets.presets_table(), indent=1))
        return
    for p in presets.list_presets():
        kind = "dataset" if p.repo_type == "dataset" else "model  "
        print(f"{p.name:<12} {kind} {p.repo_id:<28} {p.size}")
        print(f"{'':<12} {p.about}; files: {', '.join(p.files)}")
    print("Any other repo: gptkit download ORG/NAME [--repo-type dataset]. Exact sizes: --dry-run.")
