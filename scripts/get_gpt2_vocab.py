#!/usr/bin/env python3
"""Install the exact GPT-2 BPE ranks (r50k_base.tiktoken) offline, from PyPI alone.

Machines that reach PyPI but not OpenAI's blob host can still get the real GPT-2 vocabulary:
the sdist of openai-whisper 20250625 ships it as whisper/assets/gpt2.tiktoken, byte-identical to
r50k_base.tiktoken. This script downloads that sdist with pip, verifies the sha256, and places
the file where tiktoken (and gptkit) find it:

    $TIKTOKEN_CACHE_DIR/<sha1 of the r50k URL>      if TIKTOKEN_CACHE_DIR is set
    $GPTKIT_HOME/tiktoken/r50k_base.tiktoken         always (default ~/.cache/gptkit)

Run with the Python of the environment that has pip. Exits non-zero if the hash does not match.
On a machine without PyPI, copy the sdist over and pass it: --sdist openai_whisper-20250625.tar.gz
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

R50K_URL = "https://openaipublic.blob.core.windows.net/encodings/r50k_base.tiktoken"
R50K_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
SDIST = "openai-whisper==20250625"
MEMBER = "whisper/assets/gpt2.tiktoken"


def targets() -> list[Path]:
    home = Path(os.environ.get("GPTKIT_HOME") or Path.home() / ".cache" / "gptkit").expanduser()
    out = [home / "tiktoken" / "r50k_base.tiktoken"]
    if os.environ.get("TIKTOKEN_CACHE_DIR"):
        out.append(Path(os.environ["TIKTOKEN_CACHE_DIR"]) / hashlib.sha1(R50K_URL.encode()).hexdigest())
    return out


def place(data: bytes, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + f".tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, dest)


def main() -> int:
    ap = argparse.ArgumentParser(
        description="Install GPT-2's r50k_base.tiktoken offline, from the openai-whisper sdist."
    )
    ap.add_argument(
        "--sdist", type=Path, help="use this openai-whisper 20250625 .tar.gz instead of fetching it from PyPI"
    )
    args = ap.parse_args()
    dests = targets()
    if all(d.is_file() and hashlib.sha256(d.read_bytes()).hexdigest() == R50K_SHA256 for d in dests):
        print(f"GPT-2 vocabulary already installed: {dests[0]}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        if args.sdist is not None:
            if not args.sdist.is_file():
                print(f"error: {args.sdist}: no such file", file=sys.stderr)
                return 1
            sdists = [args.sdist]
        else:
            cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:", SDIST, "-d", tmp]
            r = subprocess.run(cmd, capture_output=True, text=True)
            sdists = list(Path(tmp).glob("openai_whisper-*.tar.gz")) + list(Path(tmp).glob("openai-whisper-*.tar.gz"))
            if r.returncode != 0 or not sdists:
                print(
                    f"error: could not download the {SDIST} sdist from PyPI:\n{r.stderr.strip()[-500:]}",
                    file=sys.stderr,
                )
                return 1
        try:
            tar = tarfile.open(sdists[0])
        except (tarfile.TarError, OSError) as e:
            print(f"error: {sdists[0]}: not a readable .tar.gz ({e.__class__.__name__})", file=sys.stderr)
            return 1
        with tar:
            member = next((m for m in tar.getmembers() if m.name.endswith(MEMBER)), None)
            if member is None:
                print(f"error: {sdists[0].name} has no {MEMBER}", file=sys.stderr)
                return 1
            f = tar.extractfile(member)
            if f is None:  # a link or a folder of that name, not a file
                print(f"error: {sdists[0].name}: {MEMBER} is not a regular file", file=sys.stderr)
                return 1
            data = f.read()
    digest = hashlib.sha256(data).hexdigest()
    if digest != R50K_SHA256:
        print(f"error: sha256 mismatch for {MEMBER}: {digest} != {R50K_SHA256}", file=sys.stderr)
        return 1
    for d in dests:
        place(data, d)
        print(f"installed GPT-2 vocabulary (sha256 verified): {d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
