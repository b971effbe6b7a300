#!/usr/bin/env bash
# Set up a virtual environment and run the whole test suite (CPU, offline, < 15 min on 2 cores).
#   scripts/test.sh              all tests
#   scripts/test.sh -k model     extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_env.sh

# Tests never touch the user's own cache, data or runs.
export GPTKIT_HOME="${GPTKIT_TEST_HOME:-$PWD/.test_home}"
export HF_HOME="$GPTKIT_HOME/hf"
export TIKTOKEN_CACHE_DIR="$GPTKIT_HOME/tiktoken-cache"
export HF_HUB_DISABLE_TELEMETRY=1
python scripts/get_gpt2_vocab.py

set +e
python -m pytest -q -p no:cacheprovider "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "error: pytest collected no tests" >&2
  exit 1
fi
exit "$rc"
