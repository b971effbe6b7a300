"""Option types shared by several commands, so each is spelled and documented once; and the help
layout every command uses.

Help reads like click's and argparse's: a flag shows no value label, a value shows its metavar in
capitals (--seq-len N, --data DIR), arguments are SRC DST / [ROOTS...]. Short options mean the same
thing in every command: -o --out, -m --model, -n the number of tokens to generate (sample, as in
nanoGPT and llama.cpp), -c --config, -d --data, -p --preset, -t --temperature, -j --workers,
-q --quiet, -h --help.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup


def within(lo: float, hi: float | None = None):
    """An option's range, checked by a callback rather than click's min=/max=, which print a
    `[0.1<=x<=60]` label into the help; the help text says the range in words instead."""

    def check(value):
        if value is not None and (value < lo or (hi is not None and value > hi)):
            span = f"at least {lo:g}" if hi is None else f"between {lo:g} and {hi:g}"
            raise typer.BadParameter(f"{value:g} is not {span}")
        return value

    return check


Device = Annotated[str, typer.Option("--device", metavar="DEVICE", help="auto, cpu, cuda, cuda:1, mps.")]
_PRECISION_HELP = "auto (bf16 only where the hardware runs it natively), fp32, bf16, fp16."
Precision = Annotated[str, typer.Option("--precision", metavar="PRECISION", help=_PRECISION_HELP)]
OptionalPrecision = Annotated[  # None = not given
    str | None, typer.Option("--precision", metavar="PRECISION", help=_PRECISION_HELP)
]
Force = Annotated[bool, typer.Option("--force", help="Overwrite an existing output.")]
JsonOut = Annotated[bool, typer.Option("--json", help="Machine-readable JSON output.")]
Endpoint = Annotated[
    str | None,
    typer.Option(
        "--endpoint",
        metavar="URL",
        help="Hugging Face endpoint URL (default: $HF_ENDPOINT or https://huggingface.co).",
    ),
]
Mirror = Annotated[bool, typer.Option("--mirror", help="Shorthand for --endpoint https://hf-mirror.com.")]
# A str, not a Path: Path("./x") is "x", and ./x (a folder here) and x (a name under $GPTKIT_HOME) differ.
OutDir = Annotated[
    str | None,
    typer.Option("--out", "-o", metavar="DIR", help="Output: a NAME under $GPTKIT_HOME, or a path (./DIR, /DIR, a/b)."),
]


# --- help layout ---------------------------------------------------------------------------------
class _Argument(TyperArgument):
    """A positional argument shown by its metavar alone: SRC, [NAME], [ROOTS...]."""

    def display_type_rich(self, ctx: Any) -> str | None:
        return None

    def get_usage_pieces(self, ctx: Any) -> list[str]:
        name = self.metavar or ""  # set by _readable
        return [name if self.required else f"[{name}]"]


def _readable(params: list) -> list:
    # Typer labels every parameter with its Python type (<bool>, <str>, <list[Path]>, {src}); the
    # metavar, where a parameter has one, replaces the label, so each gets one here.
    for p in params:
        if isinstance(p, TyperArgument):
            if p.metavar is None:
                p.metavar = (p.name or "").upper() + ("..." if p.nargs != 1 else "")
            p.__class__ = _Argument
        elif getattr(p, "is_flag", False):
            p.metavar = ""  # a flag takes no value
        elif p.metavar is None:  # argparse's default: --seq-len SEQ_LEN
            p.metavar = next(o for o in p.opts if o.startswith("--"))[2:].replace("-", "_").upper()
    return params


class Command(TyperCommand):
    """Every gptkit command: app.command(..., cls=Command)."""

    def get_params(self, ctx: Any) -> list:
        return _readable(super().get_params(ctx))


class Group(TyperGroup):
    """gptkit and its command groups: typer.Typer(..., cls=Group)."""

    def get_params(self, ctx: Any) -> list:
        return _readable(super().get_params(ctx))
