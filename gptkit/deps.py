"""The dependency versions gptkit needs, checked when the CLI starts.

pip enforces pyproject's floors when gptkit is installed, but an environment changes afterwards
(another project's `pip install`, a conda update), and an old typer or huggingface_hub then fails
deep inside a command with an AttributeError. Versions come from package metadata: no import, of
torch least of all, and a few milliseconds.
"""

from __future__ import annotations

import re
from importlib import metadata

from gptkit.errors import GptkitError

# The floors of pyproject.toml's [project] dependencies; tests/test_deps.py keeps the two equal.
MINIMUM: dict[str, str] = {
    "torch": "2.13",
    "typer": "0.29",
    "rich": "13.8",
    "tiktoken": "0.12",
    "datasets": "5.1",
    "huggingface_hub": "2.0",
    "safetensors": "0.8",
    "numpy": "2.0",
    "pyarrow": "26",
    "tokenizers": "0.23.3",
}


def release(version: str) -> tuple[int, ...] | None:
    """'2.13.0+cpu' -> (2, 13, 0, 0); a pre-release counts as its release; None if unreadable."""
    m = re.match(r"\d+(?:\.\d+)*", version.strip())
    if not m:
        return None
    parts = tuple(int(p) for p in m.group(0).split("."))
    return (parts + (0, 0, 0, 0))[: max(4, len(parts))]


def check_dependencies() -> None:
    """Raise a one-line GptkitError naming the first installed dependency that is too old or missing."""
    for name, floor in MINIMUM.items():
        fix = f"pip install -U '{name}>={floor}'"
        try:
            found = metadata.version(name)
        except metadata.PackageNotFoundError:
            raise GptkitError(f"gptkit needs {name}>={floor} (not installed): {fix}") from None
        have, need = release(found), release(floor)
        if have is not None and need is not None and have < need:
            raise GptkitError(f"gptkit needs {name}>={floor} (found {found}): {fix}")
