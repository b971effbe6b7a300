"""Faults of the file system and of the input: a full or read-only disk, leftovers of killed runs,
corrupt input files, malformed endpoints, and reproducible bytes (issue 10, items 3-5).

The real-disk tests fill a 2 MB tmpfs (mounted as root, as in CI); where mounting is not allowed
they skip and say why. Every writer's mapping is also tested without a full disk, through the
`fs.enospc` fault (gptkit.faults), which fails its write as a full disk would.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, assert_one_line_error, run_cli, tiny_training

from gptkit import fsutil
from gptkit.checkpoint import list_checkpoints, save_checkpoint
from gptkit.errors import GptkitError
from gptkit.model import GPT, GPTConfig, get_preset

GOLDEN_SHARDS = ROOT / "tests" / "golden" / "v0.1.0" / "shards"


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def dead_pid() -> int:
    """The id of a process that has just exited (not reused this soon)."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def leftovers(folder: Path) -> list[str]:
    """Temporary or partial files anywhere under `folder`."""
    return sorted(
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if ".tmp" in p.name or ".old-" in p.name or p.name.endswith(".part")
    )


def small_model(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(get_preset("tiny").with_vocab(256))


def big_model() -> GPT:
    """About 13 MB of fp32 weights: more than the 2 MB tmpfs holds."""
    torch.manual_seed(0)
    return GPT(GPTConfig(n_layer=4, n_head=4, n_embd=256, block_size=64).with_vocab(512))


def save(model: GPT, path: Path, **kw) -> Path:
    return save_checkpoint(path, model, config=model.config, tokenizer="bytes", **kw)


# --------------------------------------------------------------------------- a real full disk


def mounted_tmpfs(d: Path, mb: int):
    """A tmpfs of `mb` MB at d, unmounted afterwards; skips (with the reason) where mount is not allowed."""
    d.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mb}m", "tmpfs", str(d)], capture_output=True, text=True)
    if r.returncode != 0:
        reason = f"cannot mount a {mb} MB tmpfs (needs root): {r.stderr.strip() or r.returncode}"
        print(f"SKIP: {reason}", file=sys.stderr)
        pytest.skip(reason)
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)], check=False)


@pytest.fixture
def tiny_disk(tmp_path):
    yield from mounted_tmpfs(tmp_path / "disk", 2)


@pytest.fixture
def small_disk(tmp_path):
    yield from mounted_tmpfs(tmp_path / "disk", 30)


def test_disk_filling_up_during_a_download(small_disk, tmp_path, gptkit_home, monkeypatch):
    """Another writer fills the disk while a file downloads (the free-space check before it passed):
    one line with what is left to fetch, the partial file kept, and the re-run resumes from it."""
    from hubfixtures import finish_repo, preserved_hf_state, running_mirror

    src = tmp_path / "hub" / "big"
    src.mkdir(parents=True)
    size = 24_000_000  # huggingface_hub writes 10 MB chunks: the disk fills during the second or third
    (src / "b_big.bin").write_bytes(os.urandom(size))
    repo = finish_repo(src, "org/big", "model", "download")
    dest, filler = small_disk / "out", small_disk / "filler"
    monkeypatch.setenv("GPTKIT_FAULTS", "mirror.rate_limit=6000000")  # bytes/s, so the disk fills mid-transfer
    with running_mirror(tmp_path / "hub") as server, preserved_hf_state():
        args = ["download", "org/big", "--endpoint", server.url, "--local-dir", dest, "--workers", "1", "--no-progress"]
        cmd = [sys.executable, "-m", "gptkit", *map(str, args)]
        env = {**os.environ, "GPTKIT_HOME": str(gptkit_home)}
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
        partial = dest / ".gptkit" / "partial"
        while proc.poll() is None and not any(p.stat().st_size for p in partial.glob("*.part")):
            time.sleep(0.02)
        with open(filler, "wb") as f:  # 15 of the 30 MB: the 24 MB file no longer fits
            f.write(os.urandom(15_000_000))
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 1, err
        line = err.strip()
        assert "\n" not in line and "Traceback" not in line, err
        (part,) = partial.glob("b_big.bin.*.part")
        have = part.stat().st_size
        assert 10_000_000 <= have < size and not (dest / "b_big.bin").exists()
        m = re.fullmatch(
            rf"gptkit: error: no space left on {re.escape(str(dest))} \((\S+) MB free; needs ≈(\S+) MB\); "
            r"free some space, then re-run the same command to resume",
            line,
        )
        assert m, line
        assert float(m[2]) == pytest.approx((size - have) / 1e6, abs=0.051)  # not the chunk it counted but never wrote
        filler.unlink()
        monkeypatch.delenv("GPTKIT_FAULTS")
        r = run_cli(*args, env={"GPTKIT_HOME": str(gptkit_home)}, check=True)
        assert sha256(dest / "b_big.bin") == repo.sha256("b_big.bin") and not list(partial.glob("*.part")), r.stderr


def test_full_disk_tokenize(tiny_disk, tmp_path, gptkit_home):
    small, big = tmp_path / "small.txt", tmp_path / "big.txt"
    small.write_text("a few words of text, tokenized first\n" * 200)
    big.write_text("".join(f"line {i}: the quick brown fox jumps over the lazy dog\n" for i in range(60_000)))
    args = ("--tokenizer", "bytes", "--val-tokens", "1K", "-j", "1")
    run_cli("tokenize", small, "--out", tiny_disk / "done", *args, check=True)
    before = {p.name: sha256(p) for p in (tiny_disk / "done").rglob("*") if p.is_file()}

    r = run_cli("tokenize", big, "--out", tiny_disk / "big", *args, "--shard-tokens", "200K")
    line = assert_one_line_error(r)
    assert r.returncode == 1
    assert line.startswith(f"gptkit: error: no space left on {tiny_disk / 'big'} ("), line
    assert re.search(r"\(\d+\.\d+ [MG]B free", line), line
    assert not (tiny_disk / "big" / "manifest.json").exists()
    assert not list((tiny_disk / "big").glob("*.bin")), "no shard outside .partial looks finished"
    assert leftovers(tiny_disk) == []  # the shard being written is gone; finished ones wait in .partial to resume
    partial = tiny_disk / "big" / ".partial"
    assert not partial.exists() or (partial / "state.json").is_file()
    assert {p.name: sha256(p) for p in (tiny_disk / "done").rglob("*") if p.is_file()} == before
    run_cli("tokenize", "--verify", tiny_disk / "done", check=True)


def test_full_disk_convert(tiny_disk, tmp_path, gptkit_home):
    save(small_model(), tmp_path / "small")
    save(big_model(), tmp_path / "big")
    out = tiny_disk / "model.safetensors"
    run_cli("convert", tmp_path / "small", out, check=True)
    before = sha256(out)

    r = run_cli("convert", tmp_path / "big", out, "--force")
    line = assert_one_line_error(r)
    assert r.returncode == 1
    assert line.startswith(f"gptkit: error: no space left on {out} ("), line
    assert re.search(r"needs ≈1\d\.\d MB\)$", line), line  # the weights in fp32 (about 10 MB)
    assert sha256(out) == before, "the earlier complete output is untouched"
    assert leftovers(tiny_disk) == []

    for fmt in ("gguf", "pt", "hf"):  # gguf's writer (numpy's tofile) says it without an errno
        dst = tiny_disk / f"m-{fmt}"
        r = run_cli("convert", tmp_path / "big", dst, "--to", fmt)
        line = assert_one_line_error(r)
        assert line.startswith(f"gptkit: error: no space left on {dst} ("), (fmt, r.stderr)
        # the free space once the partial output is gone, not while it still fills the disk
        assert "(0.0 MB free" not in line, line
        assert not dst.exists() and leftovers(tiny_disk) == []

    r = run_cli("convert", tmp_path / "big", tiny_disk / "ck", "--to", "gptkit")  # a checkpoint directory
    assert assert_one_line_error(r).startswith(f"gptkit: error: no space left on {tiny_disk / 'ck'} (")
    assert not (tiny_disk / "ck").exists() and leftovers(tiny_disk) == []


def test_full_disk_checkpoint_save(tiny_disk):
    run = tiny_disk / "run"
    save(small_model(), run / "step_000001")
    with pytest.raises(
        GptkitError, match=r"^no space left on .*step_000002 \(\d+\.\d+ [MG]B free; needs ≈1\d\.\d MB\)$"
    ):
        save(big_model(), run / "step_000002")
    assert [s for s, _ in list_checkpoints(run)] == [1]
    assert sorted(p.name for p in run.iterdir()) == ["step_000001"]  # no hidden .step_000002.tmp-PID


def test_full_disk_optimizer_state(tiny_disk):
    """The weights fit, the optimizer state does not: torch.save's C++ stream error is named too."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=4, n_embd=96, block_size=64).with_vocab(512))  # ~1.3 MB
    params = [p.detach() for p in model.parameters()]
    opt = {"state": {i: {"exp_avg": p.clone(), "exp_avg_sq": p.clone()} for i, p in enumerate(params)}}
    with pytest.raises(GptkitError, match=r"^no space left on .*step_000001 \(.* [MG]B free; needs ≈"):
        save(model, tiny_disk / "run" / "step_000001", optimizer_state=opt)
    assert list((tiny_disk / "run").iterdir()) == []


# --------------------------------------------------------------------------- each writer, through the fault


def fault(monkeypatch, writer: str) -> dict:
    monkeypatch.setenv("GPTKIT_FAULTS", f"fs.enospc={writer}")
    return {"GPTKIT_FAULTS": f"fs.enospc={writer}"}


def test_fault_checkpoint(tmp_path, monkeypatch):
    save(small_model(), tmp_path / "run" / "step_000001")
    fault(monkeypatch, "checkpoint")
    with pytest.raises(GptkitError, match=r"^no space left on .*step_000002 \(.* [MG]B free; needs ≈"):
        save(small_model(), tmp_path / "run" / "step_000002")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["step_000001"]


def test_fault_convert(tmp_path, gptkit_home):
    save(small_model(), tmp_path / "ck")
    for out in (tmp_path / "m.safetensors", tmp_path / "hf", tmp_path / "m.pt"):
        to = ["--to", "hf"] if out.name == "hf" else []
        r = run_cli("convert", tmp_path / "ck", out, *to, env={"GPTKIT_FAULTS": "fs.enospc=convert"})
        assert assert_one_line_error(r).startswith(f"gptkit: error: no space left on {out} ("), r.stderr
        assert r.returncode == 1 and not out.exists()
    assert leftovers(tmp_path) == []


def test_fault_tokenize(tmp_path, gptkit_home):
    src = tmp_path / "a.txt"
    src.write_text("some text to tokenize\n" * 500)
    r = run_cli(
        "tokenize", src, "--out", tmp_path / "out", "--tokenizer", "bytes", env={"GPTKIT_FAULTS": "fs.enospc=tokenize"}
    )
    assert assert_one_line_error(r).startswith(f"gptkit: error: no space left on {tmp_path / 'out'} (")
    assert r.returncode == 1
    assert not (tmp_path / "out" / "manifest.json").exists() and leftovers(tmp_path) == []


def test_fault_metrics(tmp_path, monkeypatch):
    from gptkit.train.metrics import METRICS, Reporter

    rep = Reporter(tmp_path, enabled=True, max_steps=1, start_step=0)
    fault(monkeypatch, "metrics")
    with pytest.raises(GptkitError, match=rf"^no space left on {tmp_path / METRICS} \("):
        rep.event(1, val_loss=1.0)
    rep.close()


def test_fault_download(tmp_path, gptkit_home, monkeypatch):
    from hubfixtures import make_dataset_repo, preserved_hf_state, running_mirror

    from gptkit.hub import download as gk_hub

    root = tmp_path / "hub"
    make_dataset_repo(root / "fineweb-edu", "HuggingFaceFW/fineweb-edu", {"sample/10BT": 2}, seed=0)
    with running_mirror(root) as server, preserved_hf_state():
        fault(monkeypatch, "download")
        with pytest.raises(GptkitError, match=r"^no space left on .*fineweb-edu \(.* [MG]B free; needs ≈"):
            gk_hub.download("fineweb-edu", endpoint=server.url, shards=1, workers=1, retries=1)
        dest = gptkit_home / "data" / "fineweb-edu"
        assert not list(dest.rglob("*.parquet")), "no file in place that was not verified"
        manifest = json.loads((dest / ".gptkit-download.json").read_text())
        assert manifest["complete"] is False
        monkeypatch.delenv("GPTKIT_FAULTS")  # space freed: the re-run resumes and finishes
        result = gk_hub.download("fineweb-edu", endpoint=server.url, shards=1, workers=1)
        assert len(list(dest.rglob("*.parquet"))) == 1 and result.local_dir == dest


def test_disk_error_mapping(tmp_path):
    """The errors libraries raise on a full disk, as they phrase them."""
    full = fsutil.disk_error(OSError(errno.ENOSPC, "No space left on device"), tmp_path, need=3 * 10**9)
    assert full is not None and str(full).startswith(f"no space left on {tmp_path} (") and "needs ≈3.00 GB" in str(full)
    quota = fsutil.disk_error(OSError(errno.EDQUOT, "Disk quota exceeded"), tmp_path)
    assert quota is not None and "needs" not in str(quota)
    ro = fsutil.disk_error(OSError(errno.EROFS, "Read-only file system"), tmp_path)
    assert str(ro) == f"{tmp_path} is on a read-only filesystem; choose another output location"
    st = fsutil.disk_error(Exception("Error while serializing: IoError(Os { code: 28, ... os error 28 })"), tmp_path)
    assert st is not None and str(st).startswith("no space left")
    # torch's C++ stream does not say why: a disk with room left is not called full
    assert fsutil.disk_error(RuntimeError("basic_ios::clear: iostream error"), tmp_path) is None
    assert fsutil.disk_error(OSError(errno.EACCES, "Permission denied"), tmp_path) is None
    with pytest.raises(PermissionError), fsutil.disk_errors(tmp_path):
        raise PermissionError(errno.EACCES, "Permission denied")  # not a disk error: unchanged


def test_cli_last_resort_maps_escaped_enospc(tmp_path):
    code = textwrap.dedent(
        """
        import errno, sys
        import gptkit.cli as cli
        def boom(**kwargs):
            raise OSError(errno.ENOSPC, "No space left on device", sys.argv[1])
        cli.app = boom
        cli.main()
        """
    )
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "x")], capture_output=True, text=True)
    assert assert_one_line_error(r).startswith(f"gptkit: error: no space left on {tmp_path / 'x'} (")
    assert r.returncode == 1


# --------------------------------------------------------------------------- leftovers of killed runs


def test_stale_temps_of_dead_processes_are_removed(tmp_path, gptkit_home):
    save(small_model(), tmp_path / "ck")
    out = tmp_path / "m.safetensors"
    dead, alive = dead_pid(), os.getppid()
    (tmp_path / f".m.safetensors.tmp-{dead}").write_bytes(b"x" * 1000)  # a killed convert's copy
    (tmp_path / f".m.safetensors.tmp-{alive}").write_bytes(b"busy")  # a convert still running
    (tmp_path / f".other.tmp-{dead}").write_bytes(b"not ours to judge")  # another output's
    run_cli("convert", tmp_path / "ck", out, check=True)
    names = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("."))
    assert names == [f".m.safetensors.tmp-{alive}", f".other.tmp-{dead}"]

    run = tmp_path / "run"
    (run / f".step_000001.tmp-{dead}").mkdir(parents=True)
    (run / f".step_000001.tmp-{dead}" / "model.safetensors").write_bytes(b"half")
    (run / f".step_000003.tmp-{alive}").mkdir()
    save(small_model(), run / "step_000002")
    assert sorted(p.name for p in run.iterdir()) == [f".step_000003.tmp-{alive}", "step_000002"]


def test_stale_old_copy_is_put_back_when_the_output_is_missing(tmp_path):
    """Killed between the two renames of replace_atomically: `.NAME.old-PID` is the whole old output."""
    dead = dead_pid()
    (tmp_path / f".out.bin.old-{dead}").write_bytes(b"old complete")
    fsutil.remove_stale_temps(tmp_path, r"out\.bin")
    assert (tmp_path / "out.bin").read_bytes() == b"old complete"
    (tmp_path / f".out.bin.old-{dead}").write_bytes(b"older")
    fsutil.remove_stale_temps(tmp_path, r"out\.bin")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


# --------------------------------------------------------------------------- corrupt input


def test_truncated_jsonl_gz_is_named(tmp_path, gptkit_home):
    data = gzip.compress(b"".join(b'{"text": "document %d, some words"}\n' % i for i in range(20_000)))
    src = tmp_path / "cut.jsonl.gz"
    src.write_bytes(data[: len(data) // 2])
    r = run_cli("tokenize", src, "--out", tmp_path / "out", "--tokenizer", "bytes")
    line = assert_one_line_error(r)
    assert r.returncode == 1, "not 'interrupted' (130)"
    assert line.startswith(f"gptkit: error: {src}: truncated gzip data after ") and "bytes of text" in line, line
    assert not (tmp_path / "out").exists(), "no empty .partial left"

    src.write_bytes(data[:100] + bytes(b ^ 0x55 for b in data[100:400]) + data[400:])
    r = run_cli("tokenize", src, "--out", tmp_path / "out", "--tokenizer", "bytes")
    assert assert_one_line_error(r).startswith(f"gptkit: error: {src}: corrupt ")
    assert r.returncode == 1 and not (tmp_path / "out").exists()


def test_corrupt_parquet_is_named(tmp_path, gptkit_home):
    import pyarrow as pa
    import pyarrow.parquet as pq

    good = tmp_path / "good.parquet"
    pq.write_table(pa.table({"text": [f"document {i} " * 20 for i in range(3000)]}), good, row_group_size=500)
    raw = good.read_bytes()
    cut = tmp_path / "cut.parquet"
    cut.write_bytes(raw[: len(raw) // 2])
    r = run_cli("tokenize", cut, "--out", tmp_path / "out", "--tokenizer", "bytes")
    assert assert_one_line_error(r).startswith(f"gptkit: error: {cut}: not a readable parquet file")
    assert r.returncode == 1 and not (tmp_path / "out").exists()

    bad = tmp_path / "bad.parquet"  # footer intact, pages damaged
    bad.write_bytes(raw[:2000] + bytes(b ^ 0x5A for b in raw[2000:6000]) + raw[6000:])
    r = run_cli("tokenize", bad, "--out", tmp_path / "out", "--tokenizer", "bytes", "-j", "2")
    line = assert_one_line_error(r)
    assert line.startswith(f"gptkit: error: {bad}: corrupt parquet data in row group "), line
    assert r.returncode == 1 and not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- malformed endpoints

BAD_ENDPOINTS = {
    "http://[::1": "Invalid IPv6 URL",
    "ftp://x": "ftp:// is not supported",
    "hf-mirror.com": "no scheme; did you mean https://hf-mirror.com",
    "http://host:port": "Port could not be cast",
}


@pytest.mark.parametrize("url", BAD_ENDPOINTS)
def test_resolve_endpoint_refuses(url, monkeypatch):
    from gptkit.hub.endpoint import resolve_endpoint

    with pytest.raises(
        GptkitError, match=f"invalid Hugging Face endpoint --endpoint '.*': .*{BAD_ENDPOINTS[url][:12]}"
    ):
        resolve_endpoint(url)
    monkeypatch.setenv("HF_ENDPOINT", url)
    with pytest.raises(GptkitError, match="invalid Hugging Face endpoint HF_ENDPOINT"):
        resolve_endpoint()


COMMANDS = {
    "doctor": ["doctor"],
    "download": ["download", "gpt2", "--dry-run"],
    "tokenize": ["tokenize", "someorg/somedata"],
    "sample": ["sample", "hi", "--model", "gpt2", "--max-new-tokens", "2"],
}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("url", ["http://[::1", "hf-mirror.com"])
def test_malformed_endpoint_is_one_line(command, url, gptkit_home):
    for how, args, env in (
        ("HF_ENDPOINT", COMMANDS[command], {"HF_ENDPOINT": url}),
        ("--endpoint", [*COMMANDS[command], "--endpoint", url], {}),
    ):
        r = run_cli(*args, env=env, timeout=120)
        line = assert_one_line_error(r)
        assert r.returncode == 1
        assert line.startswith(f"gptkit: error: invalid Hugging Face endpoint {how} {url!r}: "), line


# --------------------------------------------------------------------------- reproducible bytes

SAVE_TWICE = textwrap.dedent(
    """
    import sys, torch
    from gptkit.checkpoint import save_checkpoint
    from gptkit.model import GPT, get_preset
    torch.manual_seed(0)
    m = GPT(get_preset("tiny").with_vocab(256))
    save_checkpoint(sys.argv[1], m, config=m.config, tokenizer="bytes", extra={"b": 1, "a": 2})
    """
)


def test_same_weights_give_the_same_safetensors_bytes(tmp_path, gptkit_home):
    # Separate processes: safetensors orders its metadata by a hash seeded per process.
    digests = set()
    for i in range(3):
        subprocess.run([sys.executable, "-c", SAVE_TWICE, str(tmp_path / f"ck{i}")], check=True)
        digests.add(sha256(tmp_path / f"ck{i}" / "model.safetensors"))
    assert len(digests) == 1
    for i in range(2):
        run_cli("convert", tmp_path / "ck0", tmp_path / f"m{i}.safetensors", check=True)
    assert sha256(tmp_path / "m0.safetensors") == sha256(tmp_path / "m1.safetensors")
    raw = (tmp_path / "m0.safetensors").read_bytes()
    meta = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])["__metadata__"]
    assert list(meta) == sorted(meta) and "gptkit.config" in meta  # as stored, not as a reader orders it


def test_two_identical_training_runs_give_the_same_weights(tmp_path, gptkit_home, trains):
    args = tiny_training(
        precision="fp32", batch_tokens=256, micro_batch=8, max_steps=3, eval_every=100, sample_every=100,
        hellaswag_every=100, checkpoint_every=3, seed=7,
    )  # fmt: skip
    for name in ("a", "b"):
        trains.cli("--data", GOLDEN_SHARDS, *args, "--out", tmp_path / name, check=True)
    a, b = (tmp_path / n / "step_000003" / "model.safetensors" for n in ("a", "b"))
    assert sha256(a) == sha256(b)
