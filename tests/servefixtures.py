"""A `gptkit serve` process for a test module (one per module: it loads the model once)."""

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
from conftest import free_port

from gptkit.checkpoint import save_checkpoint


def tiny_checkpoint(path: Path, *, block_size=32, seed=0):
    """A GPT-2-vocabulary model with well-separated random weights (greedy choices are clear-cut)."""
    import torch

    from gptkit.model import GPT, GPTConfig

    torch.manual_seed(seed)
    cfg = GPTConfig(block_size=block_size, vocab_size=50257, padded_vocab_size=50304, n_layer=2, n_head=2, n_embd=16)
    model = GPT(cfg).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return save_checkpoint(path, model, config=cfg, tokenizer="gpt2")


class Server:
    def __init__(self, model: Path, *args: str, env: dict[str, str] | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.model = str(model)
        cmd = [sys.executable, "-m", "gptkit", "serve", self.model, "--port", str(self.port), "--device", "cpu"]
        self.proc = subprocess.Popen(
            [*cmd, "--precision", "fp32", *args],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
        self.log: list[str] = []
        ready = threading.Event()

        def read():
            assert self.proc.stderr is not None
            for line in self.proc.stderr:
                self.log.append(line)
                if "serving " in line:
                    ready.set()
            ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(300) or self.proc.poll() is not None:
            self.close()
            raise RuntimeError("gptkit serve did not start:\n" + "".join(self.log))

    def health(self) -> dict:
        return httpx.get(self.url + "/health", timeout=30).json()

    def wait_idle(self, deadline: float = 120) -> dict:
        """/health once no request is decoding or waiting."""
        end = time.monotonic() + deadline
        while True:
            h = self.health()
            if (h["active"] == 0 and h["queued"] == 0) or time.monotonic() > end:
                return h
            time.sleep(0.05)

    def close(self):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
