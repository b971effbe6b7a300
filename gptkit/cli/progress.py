"""Drawing a gptkit.hub download: the one display for `gptkit download` and for the downloads that
`gptkit sample` and `gptkit eval` start when --model names a hub model that is not on disk yet.

gptkit.hub.download is quiet and reports through two callbacks; DownloadDisplay.update and
DownloadDisplay.log are those callbacks.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from gptkit.hub.transfer import Progress


class DownloadDisplay:
    """Rich bars on stderr (one for the whole download, one per file in flight), or, without bars, a line
    per finished file on `out`; notes (retries, Xet) go to stderr with bars, to `out` without.

    `files=False` drops the per-file lines (e.g. `gptkit download --json`, whose stdout is the JSON
    document only). Commands whose stdout is their result (sample, eval) pass out=sys.stderr.
    The bars start with the first progress event, so a display that never sees one draws nothing.
    """

    def __init__(self, bars: bool, out: TextIO | None = None, files: bool = True, prefix: str = ""):
        self.bars, self.files, self.prefix = bars, files, prefix  # prefix: put before each note
        self.out = out  # None: sys.stdout when drawing (read late, so a redirected stdout is honoured)
        self.live: Any = None  # a rich.progress.Progress while drawing
        self.tasks: dict[str, Any] = {}  # file -> its bar
        self.overall: Any = None
        self.lock = threading.Lock()  # the download's worker threads call update and log at once

    def __enter__(self) -> DownloadDisplay:
        # Our own retry notes replace huggingface_hub's multi-line warnings.
        from huggingface_hub.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        return self

    def _start(self) -> Any:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self.live = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self.live.__enter__()
        return self.live

    def update(self, p: Progress) -> None:
        with self.lock:
            self._update(p)

    def _update(self, p: Progress) -> None:
        if not self.bars:
            if p.finished and self.files:
                from gptkit.hub.plan import human

                print(f"  {p.file} ({human(p.file_size)})", file=self.out or sys.stdout, flush=True)
            return
        live = self.live or self._start()
        if self.overall is None:
            self.overall = live.add_task("download", total=p.total)
        live.update(self.overall, completed=p.done)
        task = self.tasks.get(p.file)
        if p.finished:
            if task is not None:
                live.remove_task(self.tasks.pop(p.file))
            return
        if task is None:
            task = self.tasks[p.file] = live.add_task(_short(p.file), total=p.file_size)
        live.update(task, completed=p.file_done)

    def log(self, msg: str) -> None:
        with self.lock:
            self._log(self.prefix + msg)

    def _log(self, msg: str) -> None:
        if self.live is not None:
            self.live.console.print(msg, markup=False, highlight=False, soft_wrap=True)
        elif self.bars:
            print(msg, file=sys.stderr, flush=True)
        else:
            print(msg, file=self.out or sys.stdout, flush=True)

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.__exit__(*exc)
            self.live = None


def _short(path: str) -> str:
    return path if len(path) <= 40 else f"…{path[-39:]}"


def resolve_model_shown(model: str | None, url: str | None, *, option: str | None) -> Path:
    """MODEL (or --model) resolved by gptkit.models.resolve_model_path (url: the resolved endpoint), a
    hub download drawn on stderr (sample, eval and serve: their stdout is the result only)."""
    from gptkit.models import resolve_model_path

    with DownloadDisplay(sys.stderr.isatty(), out=sys.stderr, prefix="gptkit: ") as display:
        return resolve_model_path(model, endpoint=url, progress=display.update, log=display.log, option=option)
