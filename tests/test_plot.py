"""`gptkit plot`: a PNG from metrics.jsonl; one-line errors for a missing run."""

import json

import pytest
from conftest import assert_one_line_error, run_cli

from gptkit.train.plot import plot_run, resolve_run


def write_run(run_dir, hellaswag=True):
    run_dir.mkdir(parents=True)
    lines = []
    for s in range(1, 41):
        lines.append(
            {
                "step": s,
                "loss": 5 - s / 20,
                "lr": 1e-3 * min(1, s / 5),
                "grad_norm": 1.0,
                "tokens": s * 512,
                "tok_per_s": 1000 + s,
                "mfu": 0.5,
                "dt": 0.1,
                "time": s,
            }
        )
        if s % 10 == 0:
            lines.append({"step": s, "val_loss": 5 - s / 18})
            if hellaswag:
                lines.append({"step": s, "hellaswag": 0.25 + s / 1000, "hellaswag_acc": 0.25, "hellaswag_n": 10})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in lines))


def png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_plot_writes_a_png_with_one_panel_per_measurement(tmp_path):
    write_run(tmp_path / "a", hellaswag=False)
    write_run(tmp_path / "b", hellaswag=True)
    wa, ha = png_size(plot_run(tmp_path / "a"))
    wb, hb = png_size(plot_run(tmp_path / "b", tmp_path / "out" / "b.png"))
    assert (tmp_path / "a" / "metrics.png").is_file() and (tmp_path / "out" / "b.png").is_file()
    assert ha == hb and wb > wa  # the HellaSwag panel is added beside the other three


def test_plot_cli_finds_runs_by_name_and_fails_in_one_line(gptkit_home):
    write_run(gptkit_home / "runs" / "myrun")
    r = run_cli("plot", "myrun", check=True)
    assert r.stdout.strip() == str(gptkit_home / "runs" / "myrun" / "metrics.png")
    assert resolve_run(None) == gptkit_home / "runs" / "myrun"  # the newest run by default
    line = assert_one_line_error(run_cli("plot", "nope"))
    assert "nope" in line and "metrics.jsonl" in line


def test_every_panel_is_labelled_and_the_loss_axis_is_framed_on_training(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gptkit.train.plot import build_figure, loss_limits

    write_run(tmp_path / "r", hellaswag=True)
    rows = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    rows.insert(0, {"step": 0, "val_loss": 10.9})  # a fresh model's evaluation, far above the curve
    fig = build_figure(rows, "r", plt)
    try:
        assert len(fig.axes) == 4
        for ax in fig.axes:
            assert ax.get_xlabel() and ax.get_ylabel(), ax.get_title()
        lo, hi = fig.axes[0].get_ylim()
        train = [r["loss"] for r in rows if "loss" in r]
        vals = [r["val_loss"] for r in rows if "val_loss" in r]
        assert (lo, hi) == pytest.approx(loss_limits(train, vals))
        assert max(train) < hi < 10.9 and lo < min(train + vals)
        # the step-0 point is still drawn: a marker on the top edge, and its value written beside it
        texts = [t.get_text() for t in fig.axes[0].texts]
        assert any("10.90" in t and "step 0" in t for t in texts)
    finally:
        plt.close(fig)
    assert loss_limits([], [3.0]) is None
    assert loss_limits([4.0, 2.0], [1.0]) == pytest.approx((1.0 - 0.15, 4.0 + 0.15))


class _Refuse:
    """A meta-path finder that makes `import matplotlib` fail the way a user's install can."""

    def __init__(self, error):
        self.error = error

    def find_spec(self, name, path=None, target=None):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise self.error
        return None


@pytest.mark.parametrize(
    ("error", "says"),
    [
        (ModuleNotFoundError("No module named 'matplotlib'"), "needs matplotlib: pip install 'gptkit[plot]'"),
        (ImportError("numpy.core.multiarray failed to import"), "installed but does not import (numpy.core"),
    ],
)
def test_a_missing_or_broken_matplotlib_is_one_clear_error(tmp_path, monkeypatch, error, says):
    import sys

    from gptkit.errors import GptkitError

    write_run(tmp_path / "a")
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "meta_path", [_Refuse(error), *sys.meta_path])
    with pytest.raises(GptkitError, match="matplotlib") as e:
        plot_run(tmp_path / "a")
    assert says in str(e.value)
    assert not (tmp_path / "a" / "metrics.png").exists()


def test_a_muon_run_draws_both_learning_rates_labelled(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gptkit.train.plot import build_figure

    write_run(tmp_path / "r", hellaswag=False)
    rows = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        if "lr" in r:
            r["muon_lr"] = 16 * r["lr"]
    fig = build_figure(rows, "r", plt)
    try:
        ax = fig.axes[1]
        assert [line.get_label() for line in ax.get_lines()] == ["AdamW", "Muon"]
        assert max(ax.get_lines()[1].get_ydata()) == pytest.approx(16e-3)
    finally:
        plt.close(fig)
