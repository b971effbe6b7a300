"""scripts/bench.py reads what the benchmark scripts really print: each one runs here for real, tiny
and short (the figures mean nothing; the keys, flags and goals must line up), and bench.py turns its
JSON into the README's rows."""

import json
import subprocess
import sys

from conftest import ROOT

SCRIPTS = ROOT / "scripts"
sys.path.insert(0, str(SCRIPTS))
import bench  # noqa: E402  (scripts/ is not a package)


def run_json(script: str, *args: str):
    r = subprocess.run(
        [sys.executable, str(SCRIPTS / script), "--json", *args], capture_output=True, text=True, timeout=600
    )
    assert r.returncode in (0, 1), r.stderr[-3000:]  # 1: a goal missed, which a tiny run may well do
    return r.stdout


def test_sample_rows_from_a_real_bench_sample_run():
    out = run_json("bench_sample.py", "--preset", "tiny", "--new-tokens", "8", "--prompt-tokens", "4", "--rounds", "1")
    rows = bench.sample_rows(bench.last_json_line(out))
    assert len(rows) == 4
    for row in rows:
        assert set(row) == {"benchmark", "result", "limit", "ratio", "goal", "ok"} and isinstance(row["ok"], bool)
    assert rows[0]["goal"] == "≥ 2.0×" and rows[2]["goal"] == "≥ 50%" and rows[3]["goal"] == "≤ 1 s"
    assert "tok/s" in rows[0]["result"] and "GB/s" in rows[2]["limit"]
    assert "tokens same as transformers': yes" in rows[1]["benchmark"]


def test_train_rows_from_a_real_bench_train_run(trains):
    out = run_json("bench_train.py", "--steps", "1", "--configs", "bytes", "--precisions", "fp32", "--modes", "inproc")
    results = json.loads(out[out.index("[") : out.rindex("]") + 1])
    rows = bench.train_rows(results)
    assert len(rows) == 1 and "byte-level, fp32, inproc" in rows[0]["benchmark"]
    assert rows[0]["limit"].endswith("fp32 matmul peak") and rows[0]["ratio"].endswith("MFU")
    assert rows[0]["ok"] is None and rows[0]["goal"] == "—"  # the goals are bf16's
    # a bf16 row is judged on its config's best mode
    bf16 = [dict(results[0], precision="bf16", mfu=0.61, mode="inproc"), dict(results[0], precision="bf16", mfu=0.5)]
    assert [r["ok"] for r in bench.train_rows(bf16)] == [True, True]
    assert [r["ok"] for r in bench.train_rows([dict(results[0], precision="bf16", mfu=0.59)])] == [False]


def test_recipe_bench_quick_runs_both_optimizers_side_by_side(trains, tmp_path):
    """scripts/bench_recipe.py --quick (the one recipe bench CI runs): AdamW and Muon on the same data,
    every sweep point printed, two seeds at each best, tokens to AdamW's loss, the step-time ratios."""
    out = run_json("bench_recipe.py", "--quick", "--plot", str(tmp_path / "curves.png"))
    r = bench.last_json_line(out)
    for side in ("adamw", "muon"):
        assert [len(s["curve"]) for s in r[side]["seeds"]] == [3, 3]  # evaluations at steps 0, 3, 6
        assert [s["seed"] for s in r[side]["seeds"]] == [1337, 1338] and r[side]["sweep"]
    assert r["muon"]["seeds"][0]["optimizer"] == "muon" and r["muon"]["seeds"][0]["lr"] == r["adamw"]["best_lr"]
    assert r["target_val_loss"] == round(r["adamw"]["final"], 4)
    assert set(r["step_s"]) == {"adamw", "muon", "muon_split", "muon_bf16_ns"}
    assert r["step_ratio"] > 0 and r["step_ratio_bf16_ns"] > 0
    assert (tmp_path / "curves.png").stat().st_size > 0


def test_bare_run_bench_on_the_machines_own_documentation(trains):
    """scripts/bench_bare.py cut to 5 steps on 0.3 MB of /usr/share/doc: a bare run's announced
    estimate is read, its validation loss and sample scored, the goal judged from them."""
    out = json.loads(run_json("bench_bare.py", "--corpora", "machine-docs", "--max-mb", "0.3", "--max-steps", "5"))
    (row,) = out["rows"]
    assert row["announced"].startswith("no GPU, no --preset:") and row["estimate_s"] is not None  # "~0 s" when fast
    assert row["steps"] == 5 and row["val_last"] is not None and 0 <= row["real_words"] <= 1
    assert row["within_goal"] == (row["within_budget"] and row["val_last"] <= 1.8)
