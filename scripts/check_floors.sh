#!/usr/bin/env bash
# Do pyproject's dependency floors hold? Build a fresh venv with every dependency pinned at its
# floor (constraints/lowest.txt) and run the fast test lane there. No system site-packages:
# only what pip resolves under those pins is importable.
#   scripts/check_floors.sh                 fast lane (-m "not slow")
#   scripts/check_floors.sh -k download     other pytest arguments instead
#   GPTKIT_FLOORS_VENV=DIR                  where the venv goes (default /tmp/gptkit-floors, rebuilt each run)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${GPTKIT_FLOORS_VENV:-/tmp/gptkit-floors}"
rm -rf "$VENV"
python3 -m venv "$VENV"

# Every pip install below (also the ones in _env.sh) resolves under the floors.
export PIP_CONSTRAINT="$PWD/constraints/lowest.txt"
export GPTKIT_VENV="$VENV" GPTKIT_EXTRAS="test,gguf,plot,eval"
export GPTKIT_TEST_HOME="${GPTKIT_TEST_HOME:-$VENV-home}"
# shellcheck disable=SC1091
source scripts/_env.sh
echo "floors: installed" >&2
pip list --format=freeze | grep -iE '^(torch|typer|rich|tiktoken|datasets|huggingface.hub|safetensors|numpy|pytest|transformers|gguf|matplotlib|click|pyarrow|lm.eval|accelerate)==' >&2
# Pins that pip could not honour fail here rather than passing on other versions.
pip check >&2
python - "$PIP_CONSTRAINT" <<'PY'
import sys
from importlib.metadata import version

bad = []
for line in open(sys.argv[1]):
    line = line.split("#")[0].strip()
    if "==" in line:
        name, want = line.split("==")
        have = version(name)
        if have.split("+")[0] != want:
            bad.append(f"{name} {have} (pinned {want})")
if bad:
    sys.exit("floors: not at the pinned versions: " + ", ".join(bad))
PY

# The tools (ruff, mypy) are pinned in the dev extra and run by CI; here only the tests.
[ "$#" -gt 0 ] || set -- -m "not slow"
GPTKIT_LINT=0 exec bash scripts/test.sh "$@"
