# Sourced by test.sh, quickstart.sh and check_floors.sh: create (or reuse) the virtual environment
# and install gptkit into it. Set GPTKIT_VENV to use another location.
VENV="${GPTKIT_VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
# shellcheck disable=SC1091
source "$VENV/bin/activate"
export PIP_DISABLE_PIP_VERSION_CHECK=1
if ! python -c "import torch" 2>/dev/null; then
  # Pin the exact release: a bare `torch` or an open range would pull a multi-GB CUDA build on
  # machines where only the CPU wheel of 2.13.0 is at hand. GPU users: install your CUDA torch
  # wheel into the venv first and this step is skipped.
  pip install -q "torch==2.13.0"
fi
# Extras: test (pytest and the reference libraries), dev (ruff, mypy, import-linter: pinned),
# gguf, plot, eval (lm-evaluation-harness). GPTKIT_EXTRAS overrides the list.
EXTRAS="${GPTKIT_EXTRAS:-test,dev,gguf,plot,eval}"
if ! python -c "import gptkit, pytest, transformers, gguf, matplotlib, lm_eval, accelerate" 2>/dev/null \
   || { [[ ",$EXTRAS," == *",dev,"* ]] && ! python -c "import mypy, importlinter, ruff" 2>/dev/null; } \
   || [ pyproject.toml -nt "$VENV/.gptkit-installed" ]; then
  pip install -q -e ".[$EXTRAS]"
  touch "$VENV/.gptkit-installed"
fi
