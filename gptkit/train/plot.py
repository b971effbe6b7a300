"""`gptkit plot RUN`: the run's metrics.jsonl as one PNG (loss, learning rate, throughput)."""

from __future__ import annotations

from pathlib import Path

from gptkit import names, paths
from gptkit.errors import GptkitError
from gptkit.fsutil import make_dirs
from gptkit.runs import named_run, newest_run
from gptkit.train.metrics import METRICS, read_metrics


def metrics_file(run_dir: Path) -> Path | None:
    f = run_dir / METRICS
    return f if f.is_file() else None


def resolve_run(run: str | None) -> Path:
    """A run directory, a name under runs/, or (None) the run that logged most recently."""
    if run is None:
        found = newest_run(metrics_file)
        if found is None:
            raise GptkitError(f"no runs with {METRICS} under {paths.runs_dir()}; train first or give a run directory")
        return found
    named = named_run(run, metrics_file)
    found = names.pick(
        run, label=run, objects=[("the run", named)] if named else [], usable=lambda p: metrics_file(p) is not None
    )
    if found is None or metrics_file(found) is None:
        raise GptkitError(f"{run}: no {METRICS} there (nor under {paths.runs_dir()}); is it a `gptkit train` run?")
    return found


def plot_run(run_dir: Path, out: Path | None = None) -> Path:
    """Write the PNG (default RUN/metrics.png) and return its path."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, no display needed
        import matplotlib.pyplot as plt
    except ModuleNotFoundError:
        raise GptkitError(
            "`gptkit plot` needs matplotlib: pip install 'gptkit[plot]' (or pip install matplotlib)"
        ) from None
    except ImportError as e:  # installed but broken, e.g. built for numpy 1 under numpy 2
        raise GptkitError(f"matplotlib is installed but does not import ({e}); pip install -U 'gptkit[plot]'") from None

    fig = build_figure(read_metrics(run_dir), run_dir.name, plt)
    if fig is None:
        raise GptkitError(f"{run_dir / METRICS}: no training steps logged yet")
    out = Path(out) if out else run_dir / "metrics.png"
    make_dirs(out.parent)
    tmp = out.with_name(f".{out.stem}.tmp{out.suffix}")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(out)
    return out


def loss_limits(train_losses: list[float], val_losses: list[float]) -> tuple[float, float] | None:
    """The loss axis, framed on the training curve: from the lowest loss (train or validation) to the
    highest training loss, with a 5% margin. A validation point above it (the step-0 evaluation of a
    fresh model, ~ln(vocabulary)) is drawn on the top edge, not allowed to flatten the curve.
    None: no training losses (the axis scales itself)."""
    if not train_losses:
        return None
    lo = min(train_losses + val_losses)
    hi = max(train_losses)
    pad = 0.05 * (hi - lo) or 0.05 * abs(hi) or 0.05
    return lo - pad, hi + pad


def build_figure(rows: list[dict], title: str, plt):
    """One panel per measurement, every axis labelled; None if nothing was logged."""
    train = [r for r in rows if "loss" in r]
    val = [r for r in rows if r.get("val_loss") is not None]
    hs = [r for r in rows if "hellaswag" in r]
    if not train and not val:
        return None

    panels = 4 if hs else 3
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4), constrained_layout=True)
    ax = axes[0]
    if train:
        ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="train", lw=1, alpha=0.8)
    if val:
        ax.plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-", label="val", ms=3)
    limits = loss_limits([r["loss"] for r in train], [r["val_loss"] for r in val])
    if limits:
        ax.set_ylim(*limits)
        for r in (r for r in val if r["val_loss"] > limits[1]):
            ax.plot([r["step"]], [limits[1]], "^", color="C1", ms=7, clip_on=False)
            ax.annotate(
                f"val {r['val_loss']:.2f} at step {r['step']}",
                (r["step"], limits[1]),
                xytext=(6, -12),
                textcoords="offset points",
                fontsize=8,
                color="C1",
            )
    ax.set(title="loss", xlabel="step", ylabel="cross-entropy (nats)")
    ax.legend()
    ax.grid(alpha=0.3)

    ax = axes[1]
    muon = [r for r in train if r.get("muon_lr") is not None]
    # Beside Muon, `lr` is AdamW's (embeddings and gains): both peaks are drawn, each labelled.
    ax.plot([r["step"] for r in train], [r["lr"] for r in train], label="AdamW" if muon else None)
    if muon:
        ax.plot([r["step"] for r in muon], [r["muon_lr"] for r in muon], label="Muon")
        ax.legend()
    ax.set(title="learning rate", xlabel="step", ylabel="learning rate")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    ax.grid(alpha=0.3)

    ax = axes[2]
    ax.plot([r["step"] for r in train], [r["tok_per_s"] for r in train], lw=1)
    ax.set(title="throughput", xlabel="step", ylabel="tokens / s")
    mfus = [r["mfu"] for r in train if r.get("mfu") is not None]
    if mfus:
        ax.set_title(f"throughput (median MFU {100 * sorted(mfus)[len(mfus) // 2]:.0f}%)")
    ax.grid(alpha=0.3)

    if hs:
        ax = axes[3]
        ax.plot([r["step"] for r in hs], [r["hellaswag"] for r in hs], "o-", ms=3, label="per token (llm.c)")
        chars = [r for r in hs if "hellaswag_norm_char" in r]
        if chars:
            steps, values = [r["step"] for r in chars], [r["hellaswag_norm_char"] for r in chars]
            ax.plot(steps, values, "s-", ms=3, label="per character (lm-eval)")
        ax.axhline(0.25, color="grey", ls="--", lw=1, label="chance")
        ax.set(title="HellaSwag", xlabel="step", ylabel="acc_norm")
        ax.legend()
        ax.grid(alpha=0.3)

    fig.suptitle(title)
    return fig
