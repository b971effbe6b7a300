"""Where rank 0's records go: one small interface, one class per backend, chosen by name.

A record is what `Reporter` writes for one step or event: numbers, text (a sample, an MFU note) or
None (no MFU reading). Every backend gets the same records and keeps what it can hold:

    jsonl        RUN/metrics.jsonl, every record as it is (the file `summarize`, `plot` and resume read)
    tensorboard  RUN/tensorboard/, the numbers as scalars
    wandb        RUN/wandb/, the numbers; the run id in RUN/wandb-run.json, so a resume continues it

Adding a backend is one `Logger` subclass and one `LOGGERS` entry.

TensorBoard and wandb store scalars as float32, which cannot hold a Unix time (near 1.7e9 s its
values are 128 s apart: off by up to a minute), so they get "elapsed" instead of a training
record's "time": seconds of the run's wall time up to the record, summed over its sessions with the
hours between a stop and a resume left out (the summary's wall time, `metrics.summarize`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from gptkit.errors import GptkitError
from gptkit.fsutil import disk_errors, write_json_atomic

METRICS = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
WANDB_RUN = "wandb-run.json"  # {"id", "project"}: the wandb run a resume continues


@dataclass(frozen=True)
class LogContext:
    """What a backend may need when a session begins."""

    run_dir: Path
    start_step: int  # optimizer steps done when this session began (0: a fresh start)
    started: float  # Unix time this session began
    origin: float  # Unix time at which "elapsed" is 0: `started` less the earlier sessions' wall time
    config: dict | None = None  # the resolved run, for backends that keep it (wandb)
    print: Callable[[str], object] = lambda line: None  # a line for the user's terminal


class Logger:
    """One destination for a run's records. `option` is the value that asked for it (True for a
    switch, the project for wandb)."""

    requires: ClassVar[str | None] = None  # the package it imports, checked before launch
    flag: ClassVar[str] = ""  # the option that asks for it, named in the error line

    def __init__(self, ctx: LogContext, option: Any) -> None:
        self.ctx = ctx

    def log(self, values: Mapping[str, object], step: int) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


def scalars(values: Mapping[str, object], origin: float) -> dict[str, float]:
    """The numbers of a record for a float32 backend: "time" becomes "elapsed" (see the top)."""
    out = {k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and k != "time"}
    t = values.get("time")
    if isinstance(t, (int, float)):
        out["elapsed"] = t - origin
    return out


class JsonlLogger(Logger):
    """RUN/metrics.jsonl, one JSON object per line, beginning with this session's "start" record."""

    def __init__(self, ctx: LogContext, option: Any) -> None:
        super().__init__(ctx, option)
        self.path = ctx.run_dir / METRICS
        self.file = open(self.path, "a")
        # Where this session begins: the summary's wall time leaves out the time between sessions.
        self.log({"start": ctx.started}, ctx.start_step)

    def log(self, values: Mapping[str, object], step: int) -> None:
        with disk_errors(self.path, point="metrics"):  # a full disk: one line, not a traceback
            self.file.write(json.dumps({"step": step, **values}) + "\n")
            self.file.flush()

    def close(self) -> None:
        with disk_errors(self.path):
            self.file.close()


class TensorBoardLogger(Logger):
    """RUN/tensorboard/, through torch's SummaryWriter."""

    requires, flag = "tensorboard", "--tensorboard"

    def __init__(self, ctx: LogContext, option: Any) -> None:
        super().__init__(ctx, option)
        from torch.utils.tensorboard import SummaryWriter

        # As truncate_metrics does for metrics.jsonl: hide what an interrupted session logged after the
        # checkpoint (a fresh start: everything). The checkpoint step's own training scalars stay; an
        # evaluation logged there is logged again by this session, at the same weights.
        purge = ctx.start_step + 1 if ctx.start_step else 0
        self.writer = SummaryWriter(log_dir=str(ctx.run_dir / TENSORBOARD_DIR), purge_step=purge)

    def log(self, values: Mapping[str, object], step: int) -> None:
        for k, v in scalars(values, self.ctx.origin).items():
            self.writer.add_scalar(k, v, step)

    def close(self) -> None:
        self.writer.close()


class WandbLogger(Logger):
    """A wandb run in project `option`, its files in RUN/wandb/ (never the working directory).

    wandb is kept silent: in a worker its messages would go to stderr, which is RUN/error-0.log
    (train/main.py), where nobody looks. gptkit says what matters on the terminal instead: the run's
    page (online) or, at the end, where the offline run is and the command that uploads it.

    A resume passes the saved id with resume="allow". Online, wandb keeps a run's steps increasing:
    what an interrupted session logged after its checkpoint stays there, and the resumed session's
    records up to that step are ignored by wandb (metrics.jsonl and TensorBoard drop the old ones)."""

    requires, flag = "wandb", "--wandb"

    def __init__(self, ctx: LogContext, option: Any) -> None:
        super().__init__(ctx, option)
        import wandb

        self.project = str(option)
        saved = _read_json(ctx.run_dir / WANDB_RUN) if ctx.start_step else {}
        run_id = saved.get("id") if saved.get("project") == self.project else None
        try:
            self.run = wandb.init(
                project=self.project,
                name=ctx.run_dir.name,
                config=ctx.config,
                dir=str(ctx.run_dir),
                id=run_id,
                resume="allow" if run_id else None,
                settings=wandb.Settings(silent=True),
            )
        except wandb.errors.Error as e:  # not logged in, a bad project name: the user's to fix
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise GptkitError(f"--wandb {self.project}: {first} (or set WANDB_MODE=offline)") from None
        if self.run.disabled:  # WANDB_MODE=disabled: nothing is written, nothing to say
            return
        write_json_atomic(ctx.run_dir / WANDB_RUN, {"id": self.run.id, "project": self.project})
        if not self.run.offline:
            ctx.print(f"wandb: {self.run.url}")

    def log(self, values: Mapping[str, object], step: int) -> None:
        self.run.log(scalars(values, self.ctx.origin), step=step)

    def close(self) -> None:
        offline, disabled = self.run.offline, self.run.disabled
        self.run.finish()
        if offline and not disabled:
            # Each session of a resumed run is its own offline folder with the same id; `wandb sync`
            # uploads them in order as one run. Two sessions started in the same second get the same
            # folder name, which wandb makes unique with "-1", "-2": the pattern covers those too.
            parts = self.ctx.run_dir / "wandb" / f"offline-run-*-{self.run.id}*"
            self.ctx.print(f"wandb: offline run saved in {self.run.sync_dir}; upload it with `wandb sync {parts}`")


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


LOGGERS: dict[str, type[Logger]] = {
    "jsonl": JsonlLogger,
    "tensorboard": TensorBoardLogger,
    "wandb": WandbLogger,
}


def backend(name: str) -> type[Logger]:
    try:
        return LOGGERS[name]
    except KeyError:
        raise GptkitError(f"unknown logger {name!r}; known: {', '.join(LOGGERS)}") from None


def check(requested: Mapping[str, Any]) -> None:
    """Fail in one line if a requested backend is unknown or its package is not installed."""
    for name, option in requested.items():
        cls = backend(name)
        if option and cls.requires and importlib.util.find_spec(cls.requires) is None:
            raise GptkitError(f"{cls.flag} needs the {cls.requires} package: pip install {cls.requires}")


def open_loggers(requested: Mapping[str, Any], ctx: LogContext, stack: contextlib.ExitStack) -> list[Logger]:
    """The requested backends (those whose option is set), in order; each one's close is pushed on
    `stack`, so a backend that fails to start leaves the others closed."""
    check(requested)
    out = []
    for name, option in requested.items():
        if option:
            lg = backend(name)(ctx, option)
            stack.callback(lg.close)
            out.append(lg)
    return out
