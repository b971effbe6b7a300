"""Check that every `gptkit …` command in README.md's code blocks resolves as printed.

Each command is parsed by the real CLI (the Typer app's Click command, as `gptkit` would parse it):
its subcommand exists, every option is one the command has and every value has the option's type.
Nothing runs: most of the README's commands download gigabytes or train for hours. Whether the
names they use resolve (runs/my-run, the shards a `next:` line names) is tested by running them in
tests/test_first_hour.py.

    python scripts/check_readme.py [README.md]     exit 1 naming each command that does not parse
"""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```")
SHELL_BLOCKS = ("bash", "sh", "shell", "console")
ENV_PREFIX = re.compile(r"^(?:[A-Z_][A-Z0-9_]*=\S*\s+)+")  # HF_ENDPOINT=... gptkit download


def commands(text: str) -> list[tuple[int, str]]:
    """(line number, command) of each `gptkit …` command in the fenced code blocks."""
    out: list[tuple[int, str]] = []
    inside = shell = False
    pending: tuple[int, str] | None = None
    for n, raw in enumerate(text.splitlines(), 1):
        if FENCE.match(raw.strip()):
            inside = not inside
            shell = inside and raw.strip()[3:] in SHELL_BLOCKS
            continue
        if not inside:
            continue
        line = raw.rstrip()
        if not shell and pending is None and not line.startswith("$ "):
            continue  # a block of output or a diagram: only its `$ ` lines are commands
        if pending is not None:  # a continuation line (after a trailing backslash)
            start, so_far = pending
            joined = so_far + " " + line.strip()
        else:
            start, joined = n, line.strip()
        if joined.endswith("\\"):
            pending = (start, joined[:-1])
            continue
        pending = None
        joined = joined.removeprefix("$ ")
        # one line may chain several (`a && (b &)`): each part that is a gptkit command
        for part in re.split(r"&&|;|\||\s>\s", _drop_comment(joined)):
            part = ENV_PREFIX.sub("", part.strip().strip("()&").strip())
            if part.startswith("gptkit "):
                out.append((start, part))
    return out


def _drop_comment(line: str) -> str:
    """The line without its shell comment (a # outside quotes)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def check(command: str) -> str | None:
    """None when the CLI parses `command`; else why not, in one line. (Only the public typer API:
    typer vendors its Click, so the command objects are duck-typed, not imported.)"""
    import typer

    from gptkit.cli import app

    args = [a for a in shlex.split(command)[1:] if a != "..."]
    cmd = typer.main.get_command(app)
    path: list[str] = []
    while hasattr(cmd, "get_command") and args and not args[0].startswith("-"):
        sub = cmd.get_command(cmd.context_class(cmd), args[0])
        if sub is None:
            return f"no command {' '.join([*path, args[0]])!r}"
        path.append(args.pop(0))
        cmd = sub
    try:
        cmd.make_context(" ".join(["gptkit", *path]), args)
    except Exception as e:
        if type(e).__name__ == "Exit":
            return None  # --help, --version
        if hasattr(e, "format_message"):  # a usage error: unknown option, bad value, missing argument
            return e.format_message()
        raise
    return None


def main(argv: list[str]) -> int:
    readme = Path(argv[0]) if argv else ROOT / "README.md"
    found = commands(readme.read_text(encoding="utf-8"))
    bad = [(n, c, why) for n, c in found if (why := check(c)) is not None]
    for n, c, why in bad:
        print(f"{readme.name}:{n}: {c}\n    {why}")
    print(f"{len(found) - len(bad)} of {len(found)} `gptkit` commands in {readme.name} parse")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
