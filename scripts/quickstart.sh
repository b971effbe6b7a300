#!/usr/bin/env bash
# gptkit quickstart: the whole pipeline, offline, on CPU, in a few minutes.
#
#   doctor → mirror → download (through HF_ENDPOINT) → tokenize → train (2 processes, gloo)
#          → sample → convert to Hugging Face (and load it in transformers) → plot
#
# The data is an embedded corpus every Python has: the documentation topics and the docstrings of
# the standard library (gptkit's built-in `python-docs`, ~2 MB of English), published as a dataset
# repo by gptkit's own Hub mirror, so nothing leaves this machine. The model reads bytes (256 tokens):
# on 2 CPU cores a byte-level model learns to spell in a couple of minutes, where a model with GPT-2's
# 50,257-token vocabulary and the same budget is mostly embedding and writes punctuation.
# Everything it writes goes under ./quickstart/ (override with QUICKSTART_DIR).
#
#   QUICKSTART_STEPS=300 scripts/quickstart.sh     # fewer/more optimizer steps (default 700; the training is most of the script's ~5 min on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT_DIR=$PWD
source scripts/_env.sh

QS="${QUICKSTART_DIR:-$ROOT_DIR/quickstart}"
STEPS="${QUICKSTART_STEPS:-700}"
export GPTKIT_HOME="$QS/home"
export HF_HOME="$QS/hf"
export HF_HUB_DISABLE_TELEMETRY=1
mkdir -p "$QS"

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

step "1. gptkit doctor"
gptkit doctor --endpoint http://127.0.0.1:9 --timeout 1 || true   # warnings are expected on a CPU laptop

step "2. gptkit mirror serve: publish the embedded corpus as a dataset repo"
HUB="$QS/hub"
REPO=gptkit/python-docs
python - "$HUB/datasets/$REPO" <<'PY'
import pathlib, sys

import pyarrow as pa
import pyarrow.parquet as pq

from gptkit.data import corpora

out = pathlib.Path(sys.argv[1]) / "data"
out.mkdir(parents=True, exist_ok=True)
docs = corpora.texts("python-docs")
pq.write_table(pa.table({"text": list(docs)}), out / "train-00000-of-00001.parquet")
(out.parent / "README.md").write_text("# python-docs\nPython's documentation topics and standard-library docstrings.\n")
print(f"wrote {len(docs)} documents ({sum(map(len, docs)) / 1e6:.1f} MB) to {out}")
PY
PORT=$(python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
gptkit mirror serve "$HUB" --port "$PORT" --quiet > "$QS/mirror.log" 2>&1 &
MIRROR_PID=$!
trap 'kill $MIRROR_PID 2>/dev/null || true' EXIT
export HF_ENDPOINT="http://127.0.0.1:$PORT"
python - "$HF_ENDPOINT" <<'PY'
import sys, time, urllib.request
for _ in range(100):
    try:
        urllib.request.urlopen(sys.argv[1] + "/", timeout=1); break
    except Exception:
        time.sleep(0.1)
else:
    sys.exit("the mirror did not start; see quickstart/mirror.log")
PY
echo "mirror serving $HUB at $HF_ENDPOINT"

step "3. gptkit download $REPO (huggingface_hub client → HF_ENDPOINT=$HF_ENDPOINT)"
gptkit download "$REPO" --repo-type dataset

step "4. gptkit tokenize $REPO --tokenizer bytes (one token per byte → uint16 shards)"
gptkit tokenize "$REPO" --tokenizer bytes

# Muon for the block matrices (AdamW at --lr for the rest): scripts/bench_recipe.py measured it
# reaching AdamW's best validation loss in fewer tokens at this shape (README, "Muon against AdamW").
step "5. gptkit train: 2 processes on CPU (torchrun, gloo), $STEPS steps of a 0.8M byte-level model (Muon)"
RUN="$GPTKIT_HOME/runs/quickstart"
rm -rf "$RUN"
gptkit train --gpus 0 --nproc 2 --name quickstart \
  --n-layer 4 --n-head 4 --n-embd 128 --seq-len 128 --batch-tokens 4096 --micro-batch 16 \
  --max-steps "$STEPS" --optimizer muon --lr 3e-3 --muon-lr 0.016 --warmup-steps 30 --eval-every $((STEPS / 4)) --eval-tokens 32768 \
  --sample-every $((STEPS / 2)) --checkpoint-every $((STEPS / 2)) --keep 2

step "6. gptkit sample --model quickstart (the run by name, KV cache): 300 bytes"
gptkit sample "The " --model quickstart --max-new-tokens 300 --seed 1 --temperature 0.7 --json > "$QS/sample.json"
python - "$QS/sample.json" <<'PY'
import json, re, sys

from gptkit.data import corpora

text = json.load(open(sys.argv[1]))["samples"][0]["text"]
print(text)
known = {w for d in corpora.texts("python-docs") for w in re.findall(r"[A-Za-z]+", d)}
words = re.findall(r"[A-Za-z]+", text)
share = sum(w in known for w in words) / max(1, len(words))
print(f"\n-- {len(words)} words, {share:.0%} of them words of the corpus")
PY

step "7. gptkit convert → Hugging Face, then load it with transformers"
rm -rf "$QS/hf-export"
gptkit convert quickstart "$QS/hf-export" --to hf
python - "$QS/hf-export" <<'PY'
import sys

from transformers import AutoTokenizer, GPT2LMHeadModel

d = sys.argv[1]
tok = AutoTokenizer.from_pretrained(d)  # the bytes vocabulary, as a byte-level BPE without merges
model = GPT2LMHeadModel.from_pretrained(d).eval()
ids = tok("The with statement", return_tensors="pt").input_ids
out = model.generate(ids, max_new_tokens=80, do_sample=False, pad_token_id=0)
print("transformers loaded the export; greedy continuation:\n" + tok.decode(out[0]))
PY

step "8. gptkit plot"
gptkit plot quickstart

VAL=$(python - "$RUN/metrics.jsonl" <<'PY'
import json, math, sys
vals = [r["val_loss"] for r in map(json.loads, open(sys.argv[1])) if r.get("val_loss") is not None]
print(f"{vals[0]:.2f} -> {vals[-1]:.2f} nats per byte ({vals[-1] / math.log(2):.2f} bits per byte)" if vals else "n/a")
PY
)
step "Done. Validation loss: $VAL (a fresh model starts near ln(256) ≈ 5.5)"
cat <<EOF
Artifacts:
  corpus repo (served by the mirror)  $HUB/datasets/$REPO
  downloaded copy                     $GPTKIT_HOME/data/
  token shards + manifest.json        $GPTKIT_HOME/shards/
  training run (checkpoints, metrics) $RUN
  sample (JSON)                       $QS/sample.json
  loss / lr / throughput plot         $RUN/metrics.png
  Hugging Face export                 $QS/hf-export

The next: lines above name the runs and data under $GPTKIT_HOME. To go on from this shell's
folder with them (gptkit is installed in .venv):
  source .venv/bin/activate && export GPTKIT_HOME="$GPTKIT_HOME"
  gptkit sample "The " --model quickstart
EOF
