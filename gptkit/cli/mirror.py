"""`gptkit mirror serve`: repos on this machine, served to huggingface_hub / datasets clients (gptkit.hub.mirror)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gptkit.cli.options import Command, Group, within

app = typer.Typer(help="Serve local repos as a Hugging Face mirror.", no_args_is_help=True, cls=Group)


@app.command("serve", cls=Command)
def serve(
    roots: Annotated[
        list[Path] | None,
        typer.Argument(
            help="Folders to serve (default: $GPTKIT_HOME/data and the Hugging Face cache).", show_default=False
        ),
    ] = None,
    host: Annotated[
        str, typer.Option("--host", help="Address to listen on; 0.0.0.0 for the other nodes of a cluster.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on.", callback=within(0, 65535))] = 8080,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No access log.")] = False,
):
    """Serve downloaded repos read-only; clients use HF_ENDPOINT=http://HOST:PORT.

    Fault drills: GPTKIT_FAULTS=mirror.error_rate=0.2,mirror.cut_rate=0.1,mirror.rate_limit=1e6 (bytes/s).
    """
    from gptkit import paths
    from gptkit.errors import GptkitError
    from gptkit.hub.mirror.server import MirrorServer, Request

    if not roots:
        from huggingface_hub import constants

        roots = [p for p in (paths.data_dir(), Path(constants.HF_HUB_CACHE)) if p.is_dir()]
        if not roots:
            raise GptkitError(f"nothing to serve: {paths.data_dir()} does not exist yet; run `gptkit download` first")

    def access_log(r: Request) -> None:
        note = f" ({r['note']})" if r["note"] else ""
        print(
            f'{r["client"]} "{r["method"]} {r["path"]}" {r["status"]} {r["sent"]} {r["seconds"]:.3f}s{note}', flush=True
        )

    server = MirrorServer(list(roots), host, port, on_request=None if quiet else access_log)
    repos = server.catalog.repos()
    for rtype, rid, where in repos:
        print(f"  {rtype:<7} {rid:<40} {where}")
    shown = "<this-host>" if host in ("0.0.0.0", "::") else server.host
    print(
        f"serving {len(repos)} repos from {', '.join(map(str, roots))} at http://{shown}:{server.port}\n"
        f"clients: export HF_ENDPOINT=http://{shown}:{server.port}   (Ctrl-C stops)",
        flush=True,
    )
    server.warm_hashes()
    server.serve_forever()
