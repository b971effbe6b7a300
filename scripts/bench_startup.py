#!/usr/bin/env python
"""Start-up time of `gptkit --help` and every `gptkit COMMAND --help`, as a markdown table.

    python scripts/bench_startup.py            # 7 timed runs each, plus one warm-up
    python scripts/bench_startup.py --runs 15

Each figure is the median wall time of a fresh process. In the same run it measures the bare
interpreter (`python -c pass`), so the table shows what gptkit itself adds, and `import torch`,
which is what the CLI avoids by importing torch only inside the commands (the "share" column is
load-independent; the absolute figures grow on a busy machine, whose load average is printed).
Targets are timed round-robin so a noisy neighbour slows all of them alike. Exits 1 if a
command's median misses the limit.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

TORCH = "python -c 'import torch'"
COMMANDS = [
    [],
    ["doctor"],
    ["download"],
    ["mirror", "serve"],
    ["tokenize"],
    ["train"],
    ["sample"],
    ["convert"],
    ["plot"],
]


def gptkit_argv(use_module: bool) -> list[str]:
    """The installed `gptkit` script next to this interpreter (what users type), else `python -m gptkit`."""
    script = Path(sys.executable).parent / "gptkit"
    if not use_module and script.is_file():
        return [str(script)]
    found = shutil.which("gptkit")
    if not use_module and found:
        return [found]
    return [sys.executable, "-m", "gptkit"]


def time_once(argv: list[str]) -> float:
    start = time.perf_counter()
    r = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = (time.perf_counter() - start) * 1000
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({r.returncode}):\n{r.stderr}")
    return elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7, help="timed runs per command (default 7)")
    ap.add_argument("--limit-ms", type=float, default=1000.0, help="goal for each command's median (default 1000)")
    ap.add_argument("--module", action="store_true", help="time `python -m gptkit` instead of the gptkit script")
    ap.add_argument("--no-torch", action="store_true", help="skip timing `import torch` for comparison")
    args = ap.parse_args()

    base = gptkit_argv(args.module)
    targets: dict[str, list[str]] = {"python -c pass": [sys.executable, "-c", "pass"]}
    for cmd in COMMANDS:
        targets[" ".join(["gptkit", *cmd, "--help"])] = [*base, *cmd, "--help"]
    if not args.no_torch:
        targets[TORCH] = [sys.executable, "-c", "import torch"]

    for argv in targets.values():  # warm-up: page cache and .pyc files
        time_once(argv)
    samples: dict[str, list[float]] = {name: [] for name in targets}
    for _ in range(args.runs):
        for name, argv in targets.items():
            samples[name].append(time_once(argv))

    bare = statistics.median(samples["python -c pass"])
    torch_ms = statistics.median(samples[TORCH]) if TORCH in samples else None
    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    print(
        f"Start-up time, median of {args.runs} runs ({platform.python_implementation()} {platform.python_version()}, "
        f"{os.cpu_count()} CPUs{load}); gptkit run as `{' '.join(Path(a).name for a in base)}`.\n"
    )
    print(
        f"| command | median ms | min ms | over bare python ms |{' share of import torch |' if torch_ms else ''} "
        f"under {args.limit_ms:.0f} ms |"
    )
    print(f"|---|---:|---:|---:|{'---:|' if torch_ms else ''}:---:|")
    misses = []
    for name, times in samples.items():
        med = statistics.median(times)
        is_cli = name.startswith("gptkit")
        verdict = ("yes" if med < args.limit_ms else "**no**") if is_cli else ""
        if is_cli and med >= args.limit_ms:
            misses.append(name)
        over = "" if name == "python -c pass" else f"{med - bare:+.0f}"
        share = (f" {100 * med / torch_ms:.0f}% |" if is_cli else " |") if torch_ms else ""
        print(f"| `{name}` | {med:.0f} | {min(times):.0f} | {over} |{share} {verdict} |")
    cli = [statistics.median(t) for n, t in samples.items() if n.startswith("gptkit")]
    print(
        f"\nSlowest gptkit command: {max(cli):.0f} ms (goal < {args.limit_ms:.0f} ms); bare interpreter {bare:.0f} ms"
        + (f"; `import torch` alone {torch_ms:.0f} ms." if torch_ms else ".")
    )
    if misses:
        print(f"Over the limit: {', '.join(misses)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
