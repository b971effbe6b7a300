"""One rule for every name a user types: a model (sample, convert, eval, plot, ...), shards (--data),
a download (tokenize).

- Written as a path (`./x`, `/x`, `~/x`, a model file's suffix): only that path.
- A bare name: the gptkit object of that name (a run under runs/, shards under shards/, a download
  under data/) if there is one; else a usable thing at that path in the working directory; else,
  for a name with a folder in it (runs/my-run), a usable thing at that path under $GPTKIT_HOME;
  else (where the command has one) a hub name.
- An existing folder that is not usable for the command never wins: `./quickstart/` holding a
  script's outputs does not hide the run named quickstart.
- A bare name that is both a gptkit object and a usable folder here is one line naming both and how
  to choose (`./NAME` for the folder, the full path for the object).
- An output a user names (`tokenize --out NAME`): a bare name is the gptkit object's place
  (shards/NAME), so the printed `--data NAME` finds it from anywhere; a path is that path.

Each command says what its objects are and what "usable" means; the order is decided here only.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from gptkit import paths
from gptkit.errors import GptkitError

MODEL_SUFFIXES = (".pt", ".safetensors", ".gguf", ".bin")


def looks_like_path(spec: str) -> bool:
    """Written as a path (./x, /x, ~/x, a model file's name): never read as a gptkit or hub name."""
    return spec.startswith((".", "/", "~")) or Path(spec).suffix in MODEL_SUFFIXES


def output_path(spec: str | Path, home_of: Callable[[str], Path]) -> Path:
    """Where an output the user named goes: a bare name (no folder in it) is home_of(NAME), the
    gptkit object of that name; anything written as a path (./x, /x, ~/x, a/b) is that path."""
    if isinstance(spec, Path) or looks_like_path(spec) or "/" in spec or "\\" in spec:
        return Path(spec).expanduser()
    return home_of(spec)


def pick(
    spec: str,
    *,
    label: str,
    objects: list[tuple[str, Path]],
    usable: Callable[[Path], bool],
) -> Path | None:
    """The path `spec` names, or None when it names nothing local (the caller may try the hub).

    `objects`: (what, path) of the gptkit objects named `spec`, best first (e.g. ("the run", RUN)).
    `usable(path)`: whether a path in the working directory is something this command can use.
    A path-like `spec` is returned as it is when it exists (the command's reader says what is wrong
    with it) and is an error when it does not."""
    local = Path(spec).expanduser()
    if looks_like_path(spec):
        if not local.exists():
            raise GptkitError(f"{label}: no such file or directory")
        return local
    here = local.exists() and usable(local)
    if objects:
        what, found = objects[0]
        if here and not _same(local, found):
            raise GptkitError(
                f"{label} names both {what} {found} and the folder ./{spec} here; "
                f"write ./{spec} for the folder, or {found} for {what}"
            )
        return found
    if here:
        return local
    # A name with a folder in it that names nothing here, such as runs/my-run: under $GPTKIT_HOME
    # (the README's form), so it works from any working directory.
    under_home = paths.home() / spec
    if "/" in spec and under_home.exists() and usable(under_home):
        return under_home
    return None


def _same(a: Path, b: Path) -> bool:
    """One thing (or one inside the other: a run and its latest checkpoint)."""
    a, b = a.resolve(), b.resolve()
    return a == b or a in b.parents or b in a.parents


def unusable_note(spec: str, what: str) -> str:
    """', and ./NAME here is not WHAT': for the error that ends a failed look-up."""
    return f"; ./{spec} here is not {what}" if not looks_like_path(spec) and Path(spec).exists() else ""
