"""The training workers import the installed gptkit wherever `gptkit train` is started (issue 18)."""

import subprocess
import sys
from pathlib import Path

from test_train_data import make_dataset

TINY = ["--preset", "tiny", "--seq-len", "16", "--batch-tokens", "32", "--micro-batch", "2", "--max-steps", "1"]
QUIET = ["--eval-tokens", "0", "--sample-tokens", "0", "--checkpoint-every", "1", "--gpus", "0", "--nproc", "1"]


def test_training_started_beside_a_folder_named_gptkit(tmp_path, gptkit_home, trains):
    # The parent of a clone: torchrun's `python -m gptkit.train.main` put this folder first on the
    # workers' sys.path, and every worker died importing an empty namespace package as gptkit.
    shards = make_dataset(tmp_path / "shards", docs=40, shard_tokens=2000, val_tokens=500)
    where = tmp_path / "parent"
    (where / "gptkit").mkdir(parents=True)
    cli = Path(sys.executable).parent / "gptkit"  # the installed command: `python -m gptkit` would shadow itself
    r = subprocess.run(
        [str(cli), "train", "--data", str(shards), "--out", str(tmp_path / "run"), *TINY, *QUIET],
        cwd=where,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert (tmp_path / "run" / "step_000001" / "model.safetensors").is_file()
