"""Where gptkit keeps things by default, so the commands chain without typing paths.

$GPTKIT_HOME/                 (default ~/.cache/gptkit)
    data/<name>/              gptkit download <name>
    shards/<name>/            gptkit tokenize <name>
    runs/<name>/              gptkit train
"""

from __future__ import annotations

import os
import re
from pathlib import Path


def home() -> Path:
    env = os.environ.get("GPTKIT_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "gptkit"


def data_dir(name: str | None = None) -> Path:
    d = home() / "data"
    return d / safe_name(name) if name else d


def shards_dir(name: str | None = None) -> Path:
    d = home() / "shards"
    return d / safe_name(name) if name else d


def runs_dir(name: str | None = None) -> Path:
    d = home() / "runs"
    return d / safe_name(name) if name else d


def safe_name(name: str) -> str:
    """A repo id or preset name as one folder name: 'HuggingFaceFW/fineweb-edu' -> 'HuggingFaceFW--fineweb-edu'."""
    return re.sub(r"[^A-Za-z0-9._-]+", "--", name).strip("-.") or "default"
