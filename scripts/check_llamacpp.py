#!/usr/bin/env python3
"""gptkit's GGUF against llama.cpp itself (llama-cpp-python), for every vocabulary gptkit writes.

For each vocabulary (GPT-2's, bytes, characters from a nanoGPT meta.pkl, a user's byte-level BPE
trained with `tokenizers`, and a model without a tokenizer) a small GPT-2 with seeded random
weights is saved as a gptkit checkpoint and converted with `gptkit convert --to gguf` (fp32). Then,
in this process with gptkit and in a second interpreter with llama.cpp:

- tokenization of a few strings (ASCII, accents, CJK, runs of whitespace; characters outside a
  character vocabulary are left out, since gptkit refuses them): the same ids;
- greedy text: 24 new tokens after a prompt, token for token;
- logits at every prompt position: the largest difference, against a tolerance of 2e-3 x the
  largest logit. llama.cpp sums in another order, and ggml's CPU GELU rounds its input to fp16 for
  a lookup table (GGML_GELU_FP16), a relative error near 5e-4 per activation; with these random
  weights (std 0.3, so greedy decoding has no near-ties) the logits reach about 10.

A model without a tokenizer is refused by `convert` before anything is written (the row says so).

llama.cpp is not a dependency of gptkit and takes long to build (its PyPI sdist compiles it with
cmake: 30+ minutes on 2 busy cores), so this is a script, not a test. Install it in a venv of its own
and point --llama-python at that interpreter:

    python -m venv /tmp/llama && CMAKE_ARGS="-DGGML_NATIVE=ON" /tmp/llama/bin/pip install llama-cpp-python
    python scripts/check_llamacpp.py --llama-python /tmp/llama/bin/python

Prints one line per check and exits 1 when any differs. Needs the GPT-2 vocabulary offline
(scripts/get_gpt2_vocab.py) for the GPT-2 row; --skip-gpt2 leaves it out.
"""

from __future__ import annotations

import argparse
import json
import pickle
import subprocess
import tempfile
from pathlib import Path

STRINGS = [
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "Café, naïve résumé: Ångström and Zoë.",
    "你好，世界。",
    "  two leading spaces\tand a tab\n\n   three newlines",
    "digits 1234567 and a1b2c3",
]
PROMPT = "The quick brown fox"
NEW_TOKENS = 24

# The llama.cpp side, run by --llama-python: reads a JSON job on stdin, prints a JSON answer.
LLAMA_SIDE = r"""
import json, sys
import numpy as np
from llama_cpp import Llama
job = json.load(sys.stdin)
out = {}
try:
    llm = Llama(model_path=job["gguf"], n_ctx=job["n_ctx"], logits_all=True, verbose=False, n_threads=2, seed=0)
except Exception as e:
    print(json.dumps({"load_error": f"{type(e).__name__}: {e}"})); raise SystemExit
import llama_cpp
out["version"] = getattr(llama_cpp, "__version__", "?")
out["tokens"] = [llm.tokenize(s.encode("utf-8"), add_bos=False, special=False) for s in job["strings"]]
prompt = job["prompt_ids"]
llm.reset()
llm.eval(prompt)
out["logits"] = np.asarray(llm.scores[: len(prompt)], dtype=np.float64).tolist()
greedy = []
for tok in llm.generate(prompt, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0, reset=True):
    greedy.append(int(tok))
    if len(greedy) == job["new_tokens"]:
        break
out["greedy"] = greedy
print(json.dumps(out))
"""


def make_model(vocab_size: int, seed: int = 0):
    import torch

    from gptkit.model import GPT, GPTConfig

    torch.manual_seed(seed)
    model = GPT(GPTConfig(block_size=128, vocab_size=vocab_size, n_layer=2, n_head=4, n_embd=64))
    with torch.no_grad():  # larger than GPT-2's init, so greedy decoding is not a coin toss among ties
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3)
    return model


def vocabularies(work: Path, skip_gpt2: bool):
    """(label, tokenizer or None) for every vocabulary gptkit writes to GGUF."""
    from gptkit.tokenizer import get_tokenizer

    if not skip_gpt2:
        yield "gpt2", get_tokenizer("gpt2")
    yield "bytes", get_tokenizer("bytes")
    chars = sorted(set("".join(STRINGS[:2]) + PROMPT + "\n"))
    meta = work / "chars" / "meta.pkl"
    meta.parent.mkdir(parents=True)
    meta.write_bytes(pickle.dumps({"vocab_size": len(chars), "itos": dict(enumerate(chars)), "stoi": {}}))
    yield f"chars-{len(chars)}", get_tokenizer(meta)
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator([" ".join(STRINGS) * 30, PROMPT * 10], trainer)
    (work / "bpe").mkdir()
    tk.save(str(work / "bpe" / "tokenizer.json"))
    yield "user BPE", get_tokenizer(work / "bpe" / "tokenizer.json")
    yield "no tokenizer", None


def check(label: str, tok, work: Path, llama_python: str) -> list[str]:
    """Lines of this vocabulary's report; a line starting with FAIL counts as a failure."""
    import torch

    from gptkit.checkpoint import save_checkpoint
    from gptkit.errors import GptkitError
    from gptkit.formats.convert import convert

    vocab = tok.vocab_size if tok is not None else 300
    model = make_model(vocab)
    ck = save_checkpoint(work / label / "ck", model, config=model.config, tokenizer=tok if tok is not None else "")
    gguf = work / label / "m.gguf"
    try:
        convert(ck, gguf)
    except GptkitError as e:
        return [f"{label}: convert refuses before writing: {e}" + (" (file written!)" if gguf.exists() else "")]
    usable = [s for s in STRINGS if tok is None or _encodable(tok, s)]
    ids = [tok.encode(s) for s in usable] if tok is not None else []
    prompt = tok.encode(PROMPT) if tok is not None else [5, 17, 42, 7]
    job = {"gguf": str(gguf), "n_ctx": 128, "strings": usable if tok is not None else [], "prompt_ids": prompt}
    job["new_tokens"] = NEW_TOKENS
    r = subprocess.run([llama_python, "-c", LLAMA_SIDE], input=json.dumps(job), capture_output=True, text=True)
    if r.returncode != 0 or not r.stdout.strip():
        return [f"FAIL {label}: the llama.cpp side crashed: {r.stderr.strip()[-500:]}"]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    if "load_error" in got:
        return [f"FAIL {label}: llama.cpp refuses the GGUF: {got['load_error']}"]
    lines = []
    if tok is not None:
        same = [a == b for a, b in zip(ids, got["tokens"], strict=True)]
        n = sum(len(x) for x in ids)
        head = "" if all(same) else "FAIL "
        lines.append(f"{head}{label}: tokenization of {len(usable)} strings ({n} ids): {sum(same)}/{len(same)} same")
        for s, a, b in zip(usable, ids, got["tokens"], strict=True):
            if a != b:
                lines.append(f"    {s!r}: gptkit {a[:12]}… llama.cpp {b[:12]}…")
    m = model.eval()
    with torch.no_grad():
        logits = m(torch.tensor([prompt]))[0][0, :, :vocab].double()
        want = logits.tolist()
        idx = list(prompt)
        greedy = []
        for _ in range(NEW_TOKENS):
            nxt = int(m(torch.tensor([idx[-128:]]))[0][0, -1, :vocab].argmax())
            greedy.append(nxt)
            idx.append(nxt)
    theirs = torch.tensor(got["logits"], dtype=torch.float64)[:, :vocab]
    diff = (theirs - torch.tensor(want)).abs().max().item()
    tol = 2e-3 * max(1.0, logits.abs().max().item())
    lines.append(
        f"{'' if diff <= tol else 'FAIL '}{label}: logits at {len(prompt)} prompt positions: max |diff| {diff:.2e} "
        f"(tolerance {tol:.2e}, largest logit {logits.abs().max().item():.1f})"
    )
    same = sum(a == b for a, b in zip(greedy, got["greedy"], strict=False))
    text = f" ({tok.decode(greedy)!r})" if tok is not None else ""
    head = "" if greedy == got["greedy"] else "FAIL "
    lines.append(f"{head}{label}: greedy {NEW_TOKENS} tokens: {same}/{NEW_TOKENS} the same{text}")
    if greedy != got["greedy"]:
        lines.append(f"    gptkit {greedy}\n    llama.cpp {got['greedy']}")
    return [f"llama-cpp-python {got['version']}"] + lines


def _encodable(tok, s: str) -> bool:
    from gptkit.errors import GptkitError

    try:
        tok.encode(s)
    except GptkitError:
        return False
    return True


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llama-python", required=True, help="an interpreter with llama-cpp-python installed")
    ap.add_argument("--skip-gpt2", action="store_true", help="leave out the GPT-2 vocabulary")
    args = ap.parse_args()
    failed = False
    seen_version = False
    with tempfile.TemporaryDirectory() as d:
        for label, tok in vocabularies(Path(d), args.skip_gpt2):
            for line in check(label, tok, Path(d), args.llama_python):
                if line.startswith("llama-cpp-python"):
                    if not seen_version:
                        print(line)
                    seen_version = True
                    continue
                failed |= line.startswith("FAIL")
                print(line, flush=True)
    print("all checks agree" if not failed else "some checks differ")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
