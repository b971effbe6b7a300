"""What rank 0 reports: the live Rich display, and every record to the loggers (train/loggers.py:
metrics.jsonl always, TensorBoard and wandb when asked for); reading metrics.jsonl back.

metrics.jsonl has one JSON object per line, each with "step" (optimizer steps completed) and one
kind of measurement:
    {"step", "loss", "lr", "grad_norm", "tokens", "tok_per_s", "mfu", "dt", "time"}   training
    {"step", "val_loss"}                                                                validation
    {"step", "hellaswag", "hellaswag_norm_char", "hellaswag_acc", "hellaswag_n", "hellaswag_truncated"}
                                       HellaSwag (train/hellaswag.py): "hellaswag" is acc_norm per token
                                       (build-nanogpt, llm.c), "hellaswag_norm_char" per character
                                       (lm-eval's acc_norm); runs before both were logged have the first
    {"step", "sample"}                                                                  a text sample
    {"step", "mfu_note"}                         MFU read above 100%: peak re-measured, or clamped
    {"step", "start"}                            a session began (a fresh start or a resume), unix time
    {"step", "restart", "cause", "failed_at", "resumed_from"}   torchrun restarted the workers (train/restarts.py)
"time" is the Unix time a step ended; TensorBoard and wandb get "elapsed" seconds instead (loggers.py).
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

from gptkit.fsutil import atomic_output
from gptkit.train import loggers
from gptkit.train.loggers import METRICS

# How the live line names an event's values where the key alone would not say which figure it is.
EVENT_LABELS = {
    "hellaswag": "hellaswag acc_norm/token",
    "hellaswag_norm_char": "acc_norm/char (lm-eval's)",
    "hellaswag_acc": "acc",
    "hellaswag_n": "n",
    "hellaswag_truncated": "truncated",
}


def read_metrics(run_dir: Path) -> list[dict]:
    f = Path(run_dir) / METRICS
    if not f.is_file():
        return []
    out = []
    for line in f.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut short by a kill; the rest is still good
    return out


def truncate_metrics(run_dir: Path, step: int) -> None:
    """On resume from `step`, drop what the interrupted run logged after it: training records after
    that step, and evaluations at it or after (the resumed run evaluates at its first step again)."""
    f = Path(run_dir) / METRICS
    if not f.is_file():
        return
    # (a restart's record stays: it is the history of the run, not a measurement that is redone)
    keep = [
        m
        for m in read_metrics(run_dir)
        if m.get("step", 0) < step or ("loss" in m and m["step"] == step) or "restart" in m
    ]
    with atomic_output(f) as tmp:
        tmp.write_text("".join(json.dumps(m) + "\n" for m in keep))


def requested_loggers(tensorboard: bool, wandb: str | None) -> dict[str, object]:
    """The training config's logger options, by backend name (loggers.LOGGERS)."""
    return {"jsonl": True, "tensorboard": tensorboard, "wandb": wandb}


def check_backends(tensorboard: bool, wandb: str | None) -> None:
    """Fail before launching, in one line, if a requested logger is not installed."""
    loggers.check(requested_loggers(tensorboard, wandb))


def _fmt_tokens(n: float) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= div:
            return f"{n / div:.1f}{unit}"
    return f"{n:.0f}"


def _fmt_eta(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


# The fields of a step's line in the order shown, and the order they are dropped in when the line
# is too wide for the terminal (first dropped first). The step count is never dropped.
LINE_ORDER = ("loss", "lr", "gnorm", "tok_s", "mfu", "eta")
DROP_ORDER = ("gnorm", "lr", "mfu", "tok_s", "eta", "loss")
LIVE_WIDTH = 80


def step_fields(
    *,
    loss: float,
    lr: float,
    grad_norm: float,
    tok_per_s: float,
    mfu: float | None,
    eta_s: float,
    muon_lr: float | None = None,
) -> dict[str, str]:
    return {
        "loss": f"loss {loss:.4f}",
        "lr": f"lr {lr:.2e}" + (f" muon {muon_lr:.2e}" if muon_lr is not None else ""),
        "gnorm": f"gnorm {grad_norm:.2f}",
        "tok_s": f"{_fmt_tokens(tok_per_s)} tok/s",
        "mfu": f"mfu {mfu:.1%}" if mfu is not None else "mfu n/a",
        "eta": f"eta {_fmt_eta(eta_s)}",
    }


def step_line(step: int, max_steps: int, fields: dict[str, str], width: int | None = None) -> str:
    """`step S/N | loss ... | eta ...`, dropping fields (DROP_ORDER) until it fits `width` columns;
    width None keeps them all (log files). The step count always stays."""
    keep = [k for k in LINE_ORDER if k in fields]
    head = f"step {step}/{max_steps}"

    def render() -> str:
        return " | ".join([head] + [fields[k] for k in keep])

    for k in DROP_ORDER:
        if width is None or len(render()) <= width:
            break
        if k in keep:
            keep.remove(k)
    return render()


# --- the end of a run ------------------------------------------------------------------------------
def summarize(records: list[dict]) -> dict | None:
    """Best validation loss, tokens, wall time, mean tokens/s and MFU of a run's metrics.jsonl records
    (None if no step was logged). Wall time: each session's, from its start (or its first step's) to its
    last step's end, summed: the hours between a stop and a resume are not the run's."""
    train = [r for r in records if "loss" in r]
    if not train:
        return None
    vals = [r for r in records if r.get("val_loss") is not None]
    best = min(vals, key=lambda r: r["val_loss"]) if vals else None
    mfus = [r["mfu"] for r in train if r.get("mfu") is not None]
    wall = _wall_time(records) or sum(r.get("dt", 0.0) for r in train)
    busy = sum(r.get("dt", 0.0) for r in train)
    steps_tokens = sum(r["tok_per_s"] * r["dt"] for r in train if r.get("dt") and r.get("tok_per_s"))
    return {
        "steps": train[-1]["step"],
        "final_loss": train[-1]["loss"],
        "best_val_loss": best["val_loss"] if best else None,
        "best_val_step": best["step"] if best else None,
        "tokens": train[-1].get("tokens"),
        "wall_s": wall,
        "tok_per_s": steps_tokens / busy if busy else None,  # tokens over time spent in steps
        "mfu": sum(mfus) / len(mfus) if mfus else None,
    }


def _wall_time(records: list[dict]) -> float:
    """Summed over sessions (split at "start" records; files from before them are one session)."""
    total, begin, last = 0.0, None, None
    for r in [*records, {"start": None}]:
        if "start" in r:
            if begin is not None and last is not None:
                total += last - begin
            begin, last = r["start"], None
        elif "loss" in r and r.get("time") is not None:
            if begin is None:  # no start record: the first step's start
                begin = r["time"] - r.get("dt", 0.0)
            last = r["time"]
    return total


HEADER_COLUMNS = 80


def run_header(run_dir: str, *parts: str | None) -> list[str]:
    """The run's header (pure): `run DIR`, then the parts joined by " | " into lines of at most
    HEADER_COLUMNS (one ~150-character line wrapped on an 80-column terminal)."""
    lines = [f"run {run_dir}"]
    cur = ""
    for part in filter(None, parts):
        if cur and len(cur) + 3 + len(part) > HEADER_COLUMNS:
            lines.append(cur)
            cur = part
        else:
            cur = f"{cur} | {part}" if cur else part
    if cur:
        lines.append(cur)
    return lines


def summary_lines(s: dict, checkpoint: str | None, run: str) -> list[str]:
    """The last lines of a successful run (pure: tests call it with made-up numbers)."""
    parts = [f"done: {s['steps']} steps"]
    if s.get("best_val_loss") is not None:
        parts.append(f"best val loss {s['best_val_loss']:.4f} (step {s['best_val_step']})")
    else:
        parts.append(f"final loss {s['final_loss']:.4f}")
    if s.get("tokens"):
        parts.append(f"{_fmt_tokens(s['tokens'])} tokens")
    parts.append(f"in {_fmt_eta(s['wall_s'])}")
    speed = []
    if s.get("tok_per_s"):
        speed.append(f"{_fmt_tokens(s['tok_per_s'])} tok/s")
    if s.get("mfu") is not None:
        speed.append(f"mfu {s['mfu']:.1%}")
    if speed:
        parts.append("mean " + ", ".join(speed))
    lines = [" | ".join(parts)]
    if checkpoint:
        lines.append(f"checkpoint: {checkpoint}")
    lines.append(f"next: gptkit sample --model {run}")
    return lines


class Reporter:
    """Rank 0's reporting: the console and live line here, every record to the loggers (loggers.py).
    Other ranks get a Reporter with enabled=False, which does nothing."""

    def __init__(
        self,
        run_dir: Path,
        *,
        enabled: bool,
        max_steps: int,
        start_step: int,
        log_every: int = 1,
        tensorboard: bool = False,
        wandb: str | None = None,
        config: dict | None = None,
    ):
        self.enabled = enabled
        self.max_steps, self.log_every = max_steps, log_every
        self.progress = self.task = None
        self.loggers: list[loggers.Logger] = []
        self._closing = contextlib.ExitStack()
        if not enabled:
            return
        from rich.console import Console

        self.console = Console(highlight=False, soft_wrap=True)  # log lines stay whole in files
        run_dir = Path(run_dir)
        started = time.time()
        # "elapsed" continues from the earlier sessions' wall time (what truncate_metrics kept of them).
        before = _wall_time(read_metrics(run_dir))
        ctx = loggers.LogContext(run_dir, start_step, started, started - before, config, self.print)
        with contextlib.ExitStack() as stack:  # a backend that fails to start closes those already open
            self.loggers = loggers.open_loggers(requested_loggers(tensorboard, wandb), ctx, stack)
            self._closing = stack.pop_all()
        self.live = self.console.is_terminal
        if self.live:
            from rich.progress import Progress, TextColumn

            # One text column: the line is drawn by step_line, to the terminal's width (at most 80).
            self.progress = Progress(
                TextColumn("{task.fields[info]}", markup=False),
                console=self.console,
                transient=False,
                refresh_per_second=4,
            )
            self.width = min(LIVE_WIDTH, self.console.width - 1)
            first = f"step {start_step}/{max_steps} | starting"
            self.task = self.progress.add_task("train", total=max_steps, completed=start_step, info=first)
            self.progress.start()

    def print(self, text: str) -> None:
        if self.enabled:
            (self.progress.console if self.progress else self.console).print(text, markup=False)

    def _write(self, step: int, values: dict) -> None:
        for lg in self.loggers:
            lg.log(values, step)

    def train_step(
        self,
        step: int,
        *,
        loss: float,
        lr: float,
        grad_norm: float,
        tokens: int,
        tok_per_s: float,
        mfu: float | None,
        dt: float,
        eta_s: float,
        muon_lr: float | None = None,
    ) -> None:
        """Record the step that just completed (`step` optimizer steps are now done). `lr` is AdamW's
        (every parameter's, or the embeddings' and gains' beside Muon), `muon_lr` Muon's if it runs."""
        if not self.enabled:
            return
        self._write(
            step,
            {
                "loss": loss,
                "lr": lr,
                **({"muon_lr": muon_lr} if muon_lr is not None else {}),
                "grad_norm": grad_norm,
                "tokens": tokens,
                "tok_per_s": tok_per_s,
                "mfu": mfu,
                "dt": dt,
                "time": time.time(),
            },
        )
        fields = step_fields(
            loss=loss, lr=lr, grad_norm=grad_norm, tok_per_s=tok_per_s, mfu=mfu, eta_s=eta_s, muon_lr=muon_lr
        )
        if self.progress and self.task is not None:
            self.progress.update(self.task, completed=step, info=step_line(step, self.max_steps, fields, self.width))
        elif step % self.log_every == 0 or step == self.max_steps:
            self.console.print(step_line(step, self.max_steps, fields), markup=False)

    def record(self, step: int, **values) -> None:
        """A record for the loggers only (its line was printed already)."""
        if self.enabled:
            self._write(step, values)

    def event(self, step: int, **values) -> None:
        """Validation loss, HellaSwag, a sample: written and printed above the progress bar."""
        if not self.enabled:
            return
        self._write(step, values)
        if "sample" in values:
            self.print(f"step {step} sample: {values['sample']!r}")
        else:
            named = ((EVENT_LABELS.get(k, k), v) for k, v in values.items())
            parts = [f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in named]
            self.print(f"step {step} | " + " | ".join(parts))

    def close(self) -> None:
        if not self.enabled:
            return
        if self.progress:
            self.progress.stop()
        self._closing.close()  # every logger, last opened first, even if one of them fails
        self.loggers = []
