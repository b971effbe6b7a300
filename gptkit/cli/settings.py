"""Command-line options derived from config dataclasses: one declaration per setting.

A config field declared with `gptkit.train.config.setting(...)` carries its help, panel, flag and
metavar; `with_settings(TrainConfig, LaunchConfig)` gives a Typer command one option per field
(None = not given) and hands the command the values, by config, as overrides. Adding a setting is
adding a field: the option, the overrides, the config-file key and the run's config follow.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import fields
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin, get_type_hints

import typer


def _base_type(hint: Any) -> Any:
    """int for `int | None`, str for str: the option's type (every option may be left out)."""
    if get_origin(hint) in (Union, UnionType):
        return next(t for t in get_args(hint) if t is not type(None))
    return hint


def options_of(cls: type) -> list[inspect.Parameter]:
    """One keyword parameter per field of the dataclass `cls`, annotated for Typer."""
    from gptkit.train.config import option_flag

    hints = get_type_hints(cls)
    params = []
    for f in fields(cls):
        base = _base_type(hints[f.name])
        flag = option_flag(f)
        decls = (f"{flag}/--no-{flag[2:]}",) if base is bool else (flag, *f.metadata.get("names", ()))
        info = typer.Option(
            *decls, help=f.metadata["help"], rich_help_panel=f.metadata["panel"], metavar=f.metadata.get("metavar")
        )
        params.append(
            inspect.Parameter(
                f.name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[base | None, info]
            )
        )
    return params


def with_settings(*configs: tuple[str, Any]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a command `fn(..., NAME=overrides, ...)`: each (NAME, OverridesClass) becomes one option
    per field of its config, and fn gets NAME=OverridesClass(**the values given)."""

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        own = [p for p in inspect.signature(fn, eval_str=True).parameters.values() if p.name not in dict(configs)]
        generated = [p for _, ov in configs for p in options_of(ov.CONFIG)]
        clash = {p.name for p in own} & {p.name for p in generated}
        if clash:  # a hand-written option must not shadow a setting
            raise TypeError(f"{fn.__name__}: {sorted(clash)} are settings, not hand-written options")
        groups = {name: [f.name for f in fields(ov.CONFIG)] for name, ov in configs}

        @functools.wraps(fn)
        def command(**kwargs: Any) -> Any:
            for name, ov in configs:
                kwargs[name] = ov(**{k: kwargs.pop(k) for k in groups[name]})
            return fn(**kwargs)

        # Typer reads the parameters from the signature: the settings, then the hand-written ones.
        params = generated + [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own]
        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        del command.__wrapped__  # else inspect.signature follows it to fn
        return command

    return wrap
