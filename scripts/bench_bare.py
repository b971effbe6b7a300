#!/usr/bin/env python
"""What a bare `gptkit train` (no --preset, on a CPU) reaches within the time it announces, on English
text of a few MB read as bytes: the auto-sizing's choice, judged by its result.

    python scripts/bench_bare.py                          # both corpora, one after the other (~45 min)
    python scripts/bench_bare.py --corpora python-docs    # one (~20 min on 2 cores)
    python scripts/bench_bare.py --json

The corpora:
- `python-docs`: gptkit's built-in one (Python's documentation topics and its standard library's
  docstrings, ~2 MB);
- `machine-docs`: the text this machine ships under /usr/share/doc (README, copyright and changelog
  files, gzipped ones unpacked; sorted by path, up to --max-mb), one file per document.

For each: `gptkit tokenize SRC --tokenizer bytes`, then a bare `gptkit train --data NAME --gpus 0` as
a user types it; its announced estimate is read from the line it prints first; the real time is the
training command's wall time; the result is the run's last validation loss (nats per byte) and the
share of words in 300 sampled bytes (`gptkit sample`, temperature 0.7) that are words of the corpus.
Goal (issue 23): <= 1.8 nats per byte within the announced budget (real <= 1.5x the estimate, the
planner's own tolerance). Exit 1 when a goal is missed.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_plan import gptkit  # noqa: E402  (one way to run a gptkit command in a bench; scripts/ is no package)

GOAL_NATS = 1.8
TIME_TOLERANCE = 1.5
DOC_ROOT = Path("/usr/share/doc")


def machine_docs(out: Path, max_bytes: int) -> Path:
    """The machine's own documentation as text files, up to max_bytes: English prose, not code."""
    out.mkdir(parents=True)
    total = 0
    for i, f in enumerate(sorted(p for p in DOC_ROOT.rglob("*") if p.is_file() and not p.is_symlink())):
        name = f.name.lower()
        if not (name.startswith(("readme", "copyright", "changelog", "news")) or name.endswith((".txt", ".txt.gz"))):
            continue
        try:
            data = gzip.decompress(f.read_bytes()) if name.endswith(".gz") else f.read_bytes()
            text = data.decode("utf-8")
        except (OSError, ValueError, EOFError):
            continue  # not gzip after all, or not UTF-8 text
        if len(text) < 200:
            continue
        text = text[: max_bytes - total]
        (out / f"{i:05d}.txt").write_text(text, encoding="utf-8")
        total += len(text.encode())
        if total >= max_bytes:
            break
    if total == 0:
        raise SystemExit(f"no text found under {DOC_ROOT}")
    return out


def words_of(texts) -> set[str]:
    return {w for t in texts for w in re.findall(r"[A-Za-z]+", t)}


def measure(env: dict, home: Path, corpus: str, src: str, vocabulary: set[str], max_steps: int | None) -> dict:
    gptkit(env, "tokenize", src, "--tokenizer", "bytes", "--out", corpus)
    steps = ["--max-steps", str(max_steps)] if max_steps else []  # (a check of this script, not a figure)
    t0 = time.perf_counter()
    r = gptkit(env, "train", "--data", corpus, "--gpus", "0", "--name", f"bare-{corpus}", *steps)
    wall = time.perf_counter() - t0
    line = next((ln for ln in r.stdout.splitlines() if ln.startswith("no GPU, no --preset:")), "")
    m = re.search(r"~(\d+(?:\.\d+)?) (min|s|h)\b", line)
    est = float(m.group(1)) * {"s": 1, "min": 60, "h": 3600}[m.group(2)] if m else None
    run = home / "runs" / f"bare-{corpus}"
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    vals = [x["val_loss"] for x in records if x.get("val_loss") is not None]
    train_s = sum(x["dt"] for x in records if "loss" in x and "dt" in x)
    s = gptkit(
        env, "sample", "The ", "--model", f"bare-{corpus}", "-n", "300", "--seed", "1", "--temperature", "0.7", "--json"
    )
    text = json.loads(s.stdout)["samples"][0]["text"]
    words = re.findall(r"[A-Za-z]+", text)
    real_words = sum(w in vocabulary for w in words) / max(1, len(words))
    cfg = json.loads((run / "config.json").read_text())
    within = est is not None and wall <= TIME_TOLERANCE * est
    return {
        "corpus": corpus,
        "announced": line,
        "preset": cfg["train"]["preset"],
        "steps": cfg["train"]["max_steps"],
        "estimate_s": est,
        "wall_s": round(wall, 1),
        "train_s": round(train_s, 1),
        "val_first": round(vals[0], 3) if vals else None,
        "val_last": round(vals[-1], 3) if vals else None,
        "real_words": round(real_words, 3),
        "sample": text,
        "within_budget": within,
        "within_goal": within and bool(vals) and vals[-1] <= GOAL_NATS,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpora", default="python-docs,machine-docs")
    ap.add_argument("--max-mb", type=float, default=3.0, help="machine-docs: megabytes of text")
    ap.add_argument("--max-steps", type=int, help="cut the runs short (the script's own test; no figure)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-bare-") as tmp:
        home = Path(tmp)
        env = {**os.environ, "GPTKIT_HOME": str(home)}
        for corpus in args.corpora.split(","):
            if corpus == "python-docs":
                from gptkit.data import corpora

                src, vocabulary = "python-docs", words_of(corpora.texts("python-docs"))
            elif corpus == "machine-docs":
                folder = machine_docs(home / "machine-docs-src", int(args.max_mb * 1e6))
                src = str(folder)
                vocabulary = words_of(p.read_text(encoding="utf-8") for p in folder.iterdir())
            else:
                raise SystemExit(f"unknown corpus {corpus!r}: python-docs or machine-docs")
            rows.append(measure(env, home, corpus, src, vocabulary, args.max_steps))
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "sample"}), file=sys.stderr, flush=True)
    load = os.getloadavg()[0]
    if args.json:
        print(json.dumps({"rows": rows, "load_1min": load, "cores": os.cpu_count()}, indent=1))
    else:
        for r in rows:
            est = f"~{r['estimate_s'] / 60:.1f} min" if r["estimate_s"] else "no estimate"
            print(
                f"{r['corpus']:<13} {r['preset']:<6} {r['steps']:>5} steps  announced {est}, took "
                f"{r['wall_s'] / 60:.1f} min  val {r['val_first']} -> {r['val_last']} nats/byte  "
                f"{r['real_words']:.0%} real words  {'ok' if r['within_goal'] else 'MISSED'}"
            )
            print(f"  {r['announced']}")
            print("  sample: " + r["sample"][:160].replace("\n", " | "))
        print(
            f"load average {load:.1f} on {os.cpu_count()} cores; goal <= {GOAL_NATS} nats/byte within the announced time"
        )
    return 0 if all(r["within_goal"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
