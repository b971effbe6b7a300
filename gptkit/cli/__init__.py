"""The `gptkit` command. Each subcommand is a thin module in this package over a library function.

Nothing imported here may import torch, datasets or transformers: `gptkit --help` must start fast.
Those imports happen inside the command bodies.
"""

from __future__ import annotations

import sys

import typer

from gptkit import __version__
from gptkit.cli import convert, doctor, download, mirror, plot, sample, serve, tokenize, train
from gptkit.cli import eval as eval_cmd
from gptkit.cli.options import Command, Group
from gptkit.deps import check_dependencies
from gptkit.errors import GptkitError

app = typer.Typer(
    name="gptkit",
    help="Pretrain GPT-2-style language models: doctor → download → tokenize → train → sample / convert.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,  # user errors are one line (below); bugs keep a plain traceback
    context_settings={"help_option_names": ["-h", "--help"]},
    cls=Group,
)


def _version(value: bool) -> None:
    if value:
        print(f"gptkit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Show the version and exit."
    ),
) -> None:
    pass


class HubCommand(Command):
    """A command that may import huggingface_hub: a malformed $HF_ENDPOINT is refused before it runs."""


class HubGroup(Group):
    """A command group whose commands may import huggingface_hub (as HubCommand)."""


app.command("doctor", cls=HubCommand)(doctor.doctor)
app.command("download", cls=HubCommand)(download.download)
app.add_typer(mirror.app, name="mirror", cls=HubGroup)
app.command("tokenize", cls=HubCommand)(tokenize.tokenize)
app.command("train", cls=Command, context_settings={"allow_extra_args": False})(train.train)
app.command("sample", cls=HubCommand)(sample.sample)
app.command("convert", cls=HubCommand)(convert.convert)
app.command("plot", cls=Command)(plot.plot)
app.command("eval", cls=HubCommand)(eval_cmd.eval_model)
app.command("serve", cls=HubCommand)(serve.serve)


def hub_commands() -> set[str]:
    """The top-level commands registered as HubCommand or HubGroup: read from the app, never listed by hand."""
    commands = {c.name for c in app.registered_commands if isinstance(c.cls, type) and issubclass(c.cls, HubCommand)}
    groups = {g.name for g in app.registered_groups if isinstance(g.cls, type) and issubclass(g.cls, HubGroup)}
    return {name for name in commands | groups if isinstance(name, str)}


def main() -> None:
    """Run the CLI: user errors become one line on stderr, never a traceback."""
    # Typer (0.26 and newer) raises its own copy of click's exceptions and exports this one nowhere
    # public; it is already loaded with typer, so importing it here costs nothing.
    from typer._click.exceptions import NoArgsIsHelpError

    try:
        check_dependencies()
        _check_hf_endpoint_env()
        rv = app(standalone_mode=False)
    except GptkitError as e:
        print(f"gptkit: error: {e}", file=sys.stderr)
        sys.exit(1)
    except typer.Abort as e:
        if isinstance(e.__cause__, EOFError):  # click turns any EOFError into Abort: not a Ctrl-C
            print(f"gptkit: error: unexpected end of input ({e.__cause__ or 'EOF'})", file=sys.stderr)
            sys.exit(1)
        print("gptkit: interrupted", file=sys.stderr)
        sys.exit(130)
    except typer.TyperException as e:
        # Usage errors found while parsing (bad flag value, unknown option or command): one line
        # naming the command, instead of the multi-line usage box; exit 2 as usual for usage.
        if isinstance(e, NoArgsIsHelpError):  # bare `gptkit` / `gptkit mirror`: show help
            print(e.ctx.get_help())
            sys.exit(0)
        ctx = getattr(e, "ctx", None)
        where = ctx.command_path if ctx is not None else "gptkit"
        message = " ".join(e.format_message().split()) if hasattr(e, "format_message") else str(e)
        print(f"{where}: error: {message} (see `{where} --help`)", file=sys.stderr)
        sys.exit(getattr(e, "exit_code", 2))
    except KeyboardInterrupt:
        print("gptkit: interrupted", file=sys.stderr)
        sys.exit(130)
    except OSError as e:  # last resort: a full disk or an unusable path that no writer mapped is one line
        mapped = _disk_error(e)
        if mapped is None:
            raise
        print(f"gptkit: error: {mapped}", file=sys.stderr)
        sys.exit(1)
    if rv == 130:  # Typer returns a Ctrl-C inside a command as Exit(130), past the handlers above
        print("gptkit: interrupted", file=sys.stderr)
    sys.exit(rv if isinstance(rv, int) else 0)


def _disk_error(e: OSError) -> GptkitError | None:
    import errno
    from pathlib import Path

    from gptkit.fsutil import DISK_FULL, disk_error, path_error

    if e.errno not in (*DISK_FULL, errno.EROFS):
        return path_error(e)
    return disk_error(e, Path(e.filename) if e.filename else Path.cwd())


def _check_hf_endpoint_env() -> None:
    """A malformed $HF_ENDPOINT is one line before a hub command imports huggingface_hub (which
    fails at import, with a traceback, on one)."""
    import os

    args = sys.argv[1:]
    if not os.environ.get("HF_ENDPOINT") or not args or args[0] not in hub_commands():
        return
    if any(a in ("-h", "--help") for a in args):
        return
    from gptkit.hub.endpoint import check_endpoint_url

    check_endpoint_url(os.environ["HF_ENDPOINT"].strip().rstrip("/"), "HF_ENDPOINT")
