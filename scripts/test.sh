#!/usr/bin/env bash
# Set up a virtual environment, lint and type-check, then run the whole test suite
# (CPU, offline, < 15 min on 2 cores). CI runs exactly this (.ci/run).
#   scripts/test.sh                  lint, types, import contracts, all tests
#   scripts/test.sh -m "not slow"    the fast lane: every test but those that start a training or
#                                    torchrun (the `trains` fixture marks them slow, tests/conftest.py;
#                                    one that trains without it fails); ~2.5 min on 2 cores, all ~6
#   scripts/test.sh -k model         extra arguments go to pytest
#   GPTKIT_LINT=0 scripts/test.sh    tests only (scripts/check_floors.sh: old dependencies, same tools)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_env.sh

if [ "${GPTKIT_LINT:-1}" != 0 ]; then
  # Seconds, before minutes of tests: each fails the run on its own.
  echo "lint: ruff, ruff format, mypy, import contracts" >&2
  ruff check --quiet .
  ruff format --check --quiet .
  mypy
  lint-imports --no-cache
fi

# Tests never touch the user's own cache, data or runs.
export GPTKIT_HOME="${GPTKIT_TEST_HOME:-$PWD/.test_home}"
export HF_HOME="$GPTKIT_HOME/hf"
export TIKTOKEN_CACHE_DIR="$GPTKIT_HOME/tiktoken-cache"
export HF_HUB_DISABLE_TELEMETRY=1
python scripts/get_gpt2_vocab.py

set +e
# Two workers (pytest-xdist; GPTKIT_TEST_WORKERS to change): the trainings run one at a time on
# one of them (tests/conftest.py groups them) while the other takes the tests that start none.
# The 20 slowest tests, and each lane's count (tests/conftest.py), close the report.
python -m pytest -q -p no:cacheprovider -n "${GPTKIT_TEST_WORKERS:-2}" --dist loadgroup --durations=20 "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "error: pytest collected no tests" >&2
  exit 1
fi
exit "$rc"
