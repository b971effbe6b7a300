"""`gptkit tokenize`: sources, shard format and manifest, determinism, kill -9 resume, verify, conversions, bad input."""

import gzip
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_one_line_error, run_cli
from hubfixtures import make_dataset_repo

from gptkit import paths
from gptkit.data import shards
from gptkit.data import tokenize as tz
from gptkit.errors import GptkitError
from gptkit.tokenizer import Tokenizer, get_tokenizer

GPT2 = get_tokenizer("gpt2")


def corpus(n=120, seed=0):
    """Documents of varied length cut from Python's own docs, plus some non-ASCII text."""
    import pydoc_data.topics

    rng = random.Random(seed)
    topics = [pydoc_data.topics.topics[k] for k in sorted(pydoc_data.topics.topics)]
    docs = []
    for i in range(n):
        t = rng.choice(topics)
        a = rng.randrange(len(t))
        docs.append(t[a : a + rng.randrange(50, 2500)] + (" naïve café 東京 🙂" if i % 7 == 0 else ""))
    return docs


def expected_stream(docs, tok=GPT2):
    """build-nanogpt's fineweb.py: every document is [EOT] + its tokens (an empty one a lone EOT)."""
    return np.array([x for d in docs for x in [tok.eot_token, *tok.encode(d)]], dtype=np.uint16)


def all_tokens(d):
    val, train, m = shards.find_shards(d)
    v, t = (np.concatenate([np.asarray(shards.open_shard(p)) for p in ps]) for ps in (val, train))
    return shards.source_order(v, t, m.get("validation")), m  # the source's order, validation put back


def tree_hashes(d: Path) -> dict:
    return {
        str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*")) if p.is_file()
    }


def write_parquet(path, docs, row_group_size):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({"id": list(range(len(docs))), "text": docs, "score": [len(d) / 7 for d in docs]})
    pq.write_table(table, path, row_group_size=row_group_size)


def test_default_source_is_the_builtin_corpus(gptkit_home):
    """No SRC, no download: the pydoc corpus, into shards_dir('pydoc'), split 1:9, readable by find_shards."""
    import pydoc_data.topics

    r = run_cli("tokenize", check=True)
    assert "pydoc" in r.stderr and "--data pydoc" in r.stdout
    val, train, m = shards.find_shards("pydoc")
    assert val == [paths.shards_dir("pydoc") / "val_000000.bin"]
    assert [p.name for p in train] == ["train_000001.bin"]
    docs = [pydoc_data.topics.topics[k] for k in sorted(pydoc_data.topics.topics)]
    toks, _ = all_tokens("pydoc")
    assert np.array_equal(toks, expected_stream(docs))
    assert m["totals"]["val_tokens"] == len(toks) // 10 and m["totals"]["documents"] == len(docs)
    assert m["source"]["type"] == "builtin" and m["tokenizer"] == {
        "name": "gpt2",
        "kind": "builtin",
        "vocab_size": 50257,
        "eot": 50256,
        "vocab_hash": GPT2.vocab_hash,
    }
    assert [s["documents"] for s in m["shards"]] == [
        int((np.asarray(shards.open_shard(p)) == 50256).sum()) for p in val + train
    ]
    # Running it again is a no-op, and find_shards(None) finds the newest dataset.
    assert tz.tokenize("pydoc").status == "up to date"
    assert shards.find_shards(None)[2]["fingerprint"] == m["fingerprint"]


def test_the_python_docs_corpus_is_the_stdlib_docstrings_and_topics_as_bytes(gptkit_home):
    """The quickstart's corpus: several times pydoc's size, English prose, read without importing the stdlib."""
    import ast

    from gptkit.data import corpora

    docs = corpora.texts("python-docs")
    topics = corpora.texts("pydoc")
    assert docs[: len(topics)] == topics
    modules = docs[len(topics) :]
    assert sum(map(len, modules)) > 2 * sum(map(len, topics)) and len(modules) > 100
    # One document per module with docstrings: json's own module docstring opens its document.
    json_doc = ast.get_docstring(ast.parse(Path(json.__file__).read_text()))
    assert sum(d.startswith(json_doc) for d in modules) == 1
    assert not any("site-packages" in str(f) or "/test/" in str(f) for f in corpora.stdlib_files())

    r = run_cli("tokenize", "python-docs", "--tokenizer", "bytes", "--json", check=True)
    assert json.loads(r.stdout)["documents"] == len(docs)
    toks, m = all_tokens("python-docs")
    assert m["source"]["spec"] == "python-docs" and m["source"]["sha256"] == corpora.info("python-docs")["sha256"]
    assert len(toks) == sum(len(d.encode()) + 1 for d in docs)  # every byte, and an end-of-text per document


def test_formats_agree_shards_are_exact_and_workers_do_not_matter(tmp_path):
    docs = corpus()
    docs[5] = ""  # an empty document is a lone EOT (build-nanogpt's fineweb.py)
    src = tmp_path / "src"
    write_parquet(src / "pq" / "a.parquet", docs[:70], row_group_size=16)
    write_parquet(src / "pq" / "b.parquet", docs[70:], row_group_size=1000)
    (src / "j").mkdir()
    (src / "j" / "all.jsonl").write_text("".join(json.dumps({"text": d, "n": i}) + "\n\n" for i, d in enumerate(docs)))
    with gzip.open(src / "j.jsonl.gz", "wt", encoding="utf-8") as f:
        f.writelines(json.dumps({"body": d}) + "\n" for d in docs)
    s = tz.Settings(shard_tokens=9000, val_tokens=4000)
    want = expected_stream(docs)

    ref = tz.tokenize(str(src / "pq"), tmp_path / "o1", s, workers=1, unit_bytes=30_000)
    toks, m = all_tokens(tmp_path / "o1")
    assert np.array_equal(toks, want)
    sizes = [x["tokens"] for x in m["shards"]]
    assert sizes[0] == 4000 and all(n == 9000 for n in sizes[1:-1]) and 0 < sizes[-1] <= 9000
    assert [x["split"] for x in m["shards"]] == ["val"] + ["train"] * (len(sizes) - 1)
    assert m["totals"]["documents"] == len(docs) == sum(x["documents"] for x in m["shards"])
    for x in m["shards"]:  # llm.c header and the recorded hash
        raw = (tmp_path / "o1" / x["filename"]).read_bytes()
        assert np.frombuffer(raw[:12], "<i4").tolist() == [20240520, 1, x["tokens"]]
        assert len(raw) == 1024 + 2 * x["tokens"] and hashlib.sha256(raw).hexdigest() == x["sha256"]
    assert [f["path"] for f in m["source"]["files"]] == ["a.parquet", "b.parquet"]

    # Two workers and other unit sizes: byte-identical shards.
    tz.tokenize(str(src / "pq"), tmp_path / "o2", s, workers=2, unit_bytes=7_000)
    assert tree_hashes(tmp_path / "o2") == {
        k: v for k, v in tree_hashes(tmp_path / "o1").items() if k != "manifest.json"
    } | {"manifest.json": tree_hashes(tmp_path / "o2")["manifest.json"]}
    assert shards.read_manifest(tmp_path / "o2")["shards"] == ref.manifest["shards"]
    # jsonl (with blank lines) and jsonl.gz with another column name give the same stream.
    tz.tokenize(str(src / "j"), tmp_path / "o3", s, workers=2, unit_bytes=20_000)
    assert shards.read_manifest(tmp_path / "o3")["shards"] == ref.manifest["shards"]
    tz.tokenize(
        str(src / "j.jsonl.gz"),
        tmp_path / "o4",
        tz.Settings(text_column="body", shard_tokens=9000, val_tokens=4000),
        workers=1,
        unit_bytes=20_000,
    )
    assert shards.read_manifest(tmp_path / "o4")["shards"] == ref.manifest["shards"]
    # The bytes tokenizer and --max-tokens.
    tz.tokenize(
        str(src / "pq"),
        tmp_path / "o5",
        tz.Settings(tokenizer="bytes", shard_tokens=50_000, val_tokens=1000, max_tokens=30_000),
        workers=1,
    )
    toks, m = all_tokens(tmp_path / "o5")
    assert np.array_equal(toks, expected_stream(docs, get_tokenizer("bytes"))[:30_000])
    assert m["tokenizer"]["vocab_size"] == 256 and m["totals"]["tokens"] == 30_000


def test_plain_text_is_cut_only_where_tokens_do_not_change(tmp_path):
    """A .txt file is one document; encoded in many pieces by two workers it matches encoding it whole."""
    text = "\n\n".join(corpus(60, seed=3)).replace("\n", "\r\n", 40) + "\n"
    f = tmp_path / "book.txt"
    f.write_text(text, encoding="utf-8", newline="")
    tz.tokenize(str(f), tmp_path / "out", tz.Settings(shard_tokens=5000, val_tokens=2000), workers=2, unit_bytes=3000)
    toks, m = all_tokens(tmp_path / "out")
    assert np.array_equal(toks, expected_stream([text]))
    assert m["totals"]["documents"] == 1 and m["source"]["files"] == [{"path": "book.txt", "bytes": f.stat().st_size}]


def test_invalid_utf8_is_replaced_and_counted_or_refused(tmp_path):
    f = tmp_path / "mixed.txt"
    f.write_bytes(b"caf\xe9 au lait\n" * 3 + b"ok \xef\xbf\xbd stays\n" + b"tail \xff\xfe end\n")
    r = tz.tokenize(str(f), tmp_path / "out", workers=1)
    assert r.manifest["replaced_invalid_utf8"] == 5  # three \xe9, then \xff and \xfe; the real U+FFFD is not counted
    toks, _ = all_tokens(tmp_path / "out")
    assert np.array_equal(toks, expected_stream([f.read_bytes().decode("utf-8", errors="replace")]))
    with pytest.raises(GptkitError, match=r"invalid UTF-8 at byte 3\b"):
        tz.tokenize(str(f), tmp_path / "strict", tz.Settings(strict=True), workers=1)
    assert not (tmp_path / "strict").exists()  # a failed run that finished no shard leaves nothing behind


def _children(pid):
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _run_until(args, env, done, timeout=60):
    """Start `gptkit tokenize ARGS`, SIGKILL it as soon as done() holds; return False if it finished first."""
    p = subprocess.Popen(
        [sys.executable, "-m", "gptkit", "tokenize", *map(str, args)],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    kids = []
    deadline = time.monotonic() + timeout
    try:
        while p.poll() is None and time.monotonic() < deadline:
            kids = _children(p.pid) or kids
            if done():
                os.kill(p.pid, signal.SIGKILL)
                p.wait()
                return True
            time.sleep(0.01)
        p.communicate(timeout=5)
        assert p.returncode == 0, p.stderr
        return False
    finally:
        if p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
            p.wait()
        for k in kids:  # orphaned workers notice the lost parent and exit; make sure none is left
            for _ in range(100):
                if not Path(f"/proc/{k}").exists() or "Z" in Path(f"/proc/{k}/stat").read_text().split()[2]:
                    break
                time.sleep(0.05)
            else:
                os.kill(k, signal.SIGKILL)


def test_kill9_at_any_point_then_resume_is_byte_identical(tmp_path):
    docs = corpus(150, seed=1)
    write_parquet(tmp_path / "src" / "data.parquet", docs, row_group_size=8)
    src, out = tmp_path / "src", tmp_path / "out"
    args = [src, "-o", out, "-j", "2", "--shard-tokens", "2500", "--val-tokens", "1500"]
    env = {"GPTKIT_FAULTS": "tokenize.unit_bytes=6000,tokenize.unit_delay=0.04"}
    partial = out / ".partial"

    def committed():
        return len(list(partial.glob("*_*.bin"))) if partial.is_dir() else 0

    # Killed during start-up / the first shard, right after the first shard, and a few shards later.
    killed = [
        _run_until(args, env, lambda: partial.is_dir()),
        _run_until(args, env, lambda: committed() >= 1),
        _run_until(args, env, lambda: committed() >= 4),
    ]
    assert killed[1] and killed[2], "the run finished before it could be killed"
    assert committed() >= 4 and not (out / "manifest.json").exists()
    with pytest.raises(GptkitError, match="interrupted"):
        shards.find_shards(out)
    r = run_cli("tokenize", *args, env={"GPTKIT_FAULTS": "tokenize.unit_bytes=6000"}, check=True)
    assert "resuming" in r.stderr and r.stdout.startswith("resumed")
    assert not partial.exists()
    # The reference: one uninterrupted run, in-process, one worker, default unit size.
    tz.tokenize(str(src), tmp_path / "ref", tz.Settings(shard_tokens=2500, val_tokens=1500), workers=1)
    got, want = tree_hashes(out), tree_hashes(tmp_path / "ref")
    assert {k: v for k, v in got.items() if k != "manifest.json"} == {
        k: v for k, v in want.items() if k != "manifest.json"
    }
    assert shards.read_manifest(out)["shards"] == shards.read_manifest(tmp_path / "ref")["shards"]
    assert len(want) > 8
    shards.verify(out)


def test_a_killed_worker_is_one_line_and_the_run_resumes(tmp_path):
    """The OOM killer takes a worker: the run stops at once with one line (no hang), keeps its shards,
    and the same command resumes to the same output as an uninterrupted run."""
    write_parquet(tmp_path / "src" / "data.parquet", corpus(150, seed=2), row_group_size=8)
    src, out = tmp_path / "src", tmp_path / "out"
    args = [src, "-o", out, "-j", "2", "--shard-tokens", "2500", "--val-tokens", "1500"]
    p = subprocess.Popen(
        [sys.executable, "-m", "gptkit", "tokenize", *map(str, args)],
        env={**os.environ, "GPTKIT_FAULTS": "tokenize.unit_bytes=6000,tokenize.unit_delay=0.1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not list((out / ".partial").glob("*_*.bin")) and time.monotonic() < deadline:
            time.sleep(0.02)
        workers = [k for k in _children(p.pid) if b"spawn" in Path(f"/proc/{k}/cmdline").read_bytes()]
        assert workers and p.poll() is None, "no worker to kill"
        os.kill(workers[0], signal.SIGKILL)
        stdout, stderr = p.communicate(timeout=30)  # before: a hang, the unit waited for forever
    finally:
        if p.poll() is None:
            p.kill()
    line = assert_one_line_error(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    assert "worker process died" in line and "run the same command again to resume" in line, line
    assert list((out / ".partial").glob("*_*.bin")) and not (out / "manifest.json").exists()
    r = run_cli("tokenize", *args, env={"GPTKIT_FAULTS": "tokenize.unit_bytes=6000"}, check=True)
    assert "resuming" in r.stderr
    tz.tokenize(str(src), tmp_path / "ref", tz.Settings(shard_tokens=2500, val_tokens=1500), workers=1)
    got, want = tree_hashes(out), tree_hashes(tmp_path / "ref")
    assert {k: v for k, v in got.items() if k != "manifest.json"} == {
        k: v for k, v in want.items() if k != "manifest.json"
    }


def _mp_children(pid):
    """The multiprocessing children (spawn workers, resource tracker) of process PID, from any of its threads."""
    kids = []
    for f in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            kids += [int(k) for k in f.read_text().split() if _alive(int(k))]
        except OSError:
            pass
    return kids


def _alive(pid, what=b"multiprocessing"):
    """PID is still a running multiprocessing process (not gone, not a zombie, not a reused PID);
    what=b"spawn_main": a worker."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z" and what in Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, IndexError):
        return False


def _start_slow_tokenize(tmp_path, **popen):
    """`gptkit tokenize` with two workers and slow units; stderr to a file (orphans would hold a pipe open)."""
    write_parquet(tmp_path / "src" / "data.parquet", corpus(150, seed=3), row_group_size=8)
    args = [tmp_path / "src", "-o", tmp_path / "out", "-j", "2", "--shard-tokens", "2500", "--val-tokens", "1500"]
    with open(tmp_path / "stderr", "w") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "gptkit", "tokenize", *map(str, args)],
            env={**os.environ, "GPTKIT_FAULTS": "tokenize.unit_bytes=6000,tokenize.unit_delay=0.5"},
            stdout=subprocess.DEVNULL,
            stderr=err,
            **popen,
        )


def _wait_for_workers(p, timeout=60):
    """The multiprocessing children of P, as soon as a spawn worker among them has started."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and p.poll() is None:
        kids = _mp_children(p.pid)
        if any(_alive(k, b"spawn_main") for k in kids):
            return kids
        time.sleep(0.002)
    raise AssertionError(f"no tokenize worker started (exit {p.poll()})")


def _left_over(kids, within):
    deadline = time.monotonic() + within
    while any(_alive(k) for k in kids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return [k for k in kids if _alive(k)]


def _stop(p, kids):
    """Leave nothing running: the main process, its workers, then its resource tracker, which removes
    the pool's semaphores once the workers are gone (SIGKILLed, it would leave them in /dev/shm)."""
    if p.poll() is None:
        p.kill()
        p.wait()
    for k in kids:
        if _alive(k, b"spawn_main"):
            os.kill(k, signal.SIGKILL)
    for k in _left_over(kids, within=5):
        os.kill(k, signal.SIGKILL)


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_workers_do_not_outlive_a_main_process_killed_as_they_start(tmp_path, sig):
    """Killed while its workers are still starting (kill -9, or SIGTERM, which Python does not catch), the
    main process cannot stop them: they must notice on their own, not run on for good under init
    (before: a worker that finished starting after its parent died took init for its parent)."""
    p = _start_slow_tokenize(tmp_path)
    kids = []
    try:
        kids = _wait_for_workers(p)
        time.sleep(0.05)  # the worker has what to run and is importing it: it starts after its parent died
        kids = sorted({*kids, *_mp_children(p.pid)})  # and the second worker, started meanwhile
        os.kill(p.pid, sig)
        p.wait(timeout=10)
        left = _left_over(kids, within=10)
        assert not left, f"still running after the main process died: {left}"
        # (A worker killed before it read what to run may print multiprocessing's own EOFError: not checked.)
        assert "leaked semaphore" not in (tmp_path / "stderr").read_text()
    finally:
        _stop(p, kids)


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_ctrl_c_is_one_line_that_says_the_run_resumes(tmp_path):
    """Ctrl-C reaches every process in the terminal's group, workers still starting too: one line, exit 130."""
    p = _start_slow_tokenize(
        tmp_path, start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)
    )
    kids = []
    try:
        kids = _wait_for_workers(p)
        time.sleep(0.05)  # a worker is importing: before, a KeyboardInterrupt traceback of its own
        kids = sorted({*kids, *_mp_children(p.pid)})
        os.killpg(p.pid, signal.SIGINT)
        assert p.wait(timeout=30) == 130
        assert not _left_over(kids, within=10)
    finally:
        _stop(p, kids)
    err = (tmp_path / "stderr").read_text()
    line = assert_one_line_error(subprocess.CompletedProcess(p.args, p.returncode, "", err))
    assert line == "gptkit: interrupted; the shards written so far are kept: run the same command again to resume"


def test_verify_catches_corruption(tmp_path):
    write_parquet(tmp_path / "d.parquet", corpus(40), row_group_size=10)
    out = tmp_path / "out"
    tz.tokenize(str(tmp_path / "d.parquet"), out, tz.Settings(shard_tokens=4000, val_tokens=2000), workers=1)
    r = run_cli("tokenize", "--verify", out, check=True)
    assert r.stdout.startswith("ok:")
    shard = out / "train_000002.bin"
    good = shard.read_bytes()

    shard.write_bytes(good[:2000] + bytes([good[2000] ^ 1]) + good[2001:])  # one flipped bit
    assert "sha256" in assert_one_line_error(run_cli("tokenize", "--verify", out))
    shard.write_bytes(good[:-2])  # truncated
    with pytest.raises(GptkitError, match="file has"):
        shards.verify(out)
    # A token outside the vocabulary, with the hash updated so only the range check can catch it.
    bad = bytearray(good)
    bad[1024:1026] = (60000).to_bytes(2, "little")
    shard.write_bytes(bytes(bad))
    m = json.loads((out / "manifest.json").read_text())
    next(x for x in m["shards"] if x["filename"] == shard.name)["sha256"] = hashlib.sha256(bytes(bad)).hexdigest()
    (out / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(GptkitError, match="outside the vocabulary"):
        shards.verify(out)
    with pytest.raises(GptkitError, match="x: no such file or directory"):
        shards.verify(tmp_path / "nope" / "x")
    with pytest.raises(GptkitError, match=rf"is a file; give the folder that holds it: --data {out}$"):
        shards.verify(shard)  # a shard named where its folder belongs (as --data, too)


def test_converts_build_nanogpt_npy_and_nanogpt_bin(tmp_path):
    rng = np.random.default_rng(0)
    npy = tmp_path / "edu_fineweb10B"
    npy.mkdir()
    arrays = {}
    for name, n in [
        ("edufineweb_val_000000", 3000),
        ("edufineweb_train_000001", 5000),
        ("edufineweb_train_000002", 4100),
    ]:
        a = rng.integers(0, 50257, n).astype(np.uint16)
        a[::97] = 50256
        arrays[name] = a
        np.save(npy / f"{name}.npy", a)
    tz.tokenize(str(npy), tmp_path / "o1", tz.Settings(shard_tokens=4000))
    val, train, m = shards.find_shards(tmp_path / "o1")
    assert [x["tokens"] for x in m["shards"]] == [3000, 4000, 4000, 1100]
    assert [x["split"] for x in m["shards"]] == ["val", "train", "train", "train"]
    toks, _ = all_tokens(tmp_path / "o1")
    assert np.array_equal(toks, np.concatenate(list(arrays.values())))
    assert m["totals"]["documents"] == sum(int((a == 50256).sum()) for a in arrays.values())
    assert m["source"]["type"] == "tokens"

    # nanoGPT: raw uint16 train.bin / val.bin, no header; pointing at train.bin takes val.bin too.
    nano = tmp_path / "openwebtext"
    nano.mkdir()
    rng.integers(0, 50257, 6000).astype(np.uint16).tofile(nano / "train.bin")
    rng.integers(0, 50257, 700).astype(np.uint16).tofile(nano / "val.bin")
    tz.tokenize(str(nano / "train.bin"), tmp_path / "o2")
    toks, m = all_tokens(tmp_path / "o2")
    assert [x["split"] for x in m["shards"]] == ["val", "train"]
    assert np.array_equal(
        toks, np.concatenate([np.fromfile(nano / "val.bin", "<u2"), np.fromfile(nano / "train.bin", "<u2")])
    )
    # llm.c shards (already our format) are imported as they are.
    tz.tokenize(str(tmp_path / "o2"), tmp_path / "o3")
    assert np.array_equal(all_tokens(tmp_path / "o3")[0], toks)
    # Ids beyond the chosen tokenizer's vocabulary are refused.
    line = assert_one_line_error(run_cli("tokenize", nano, "--tokenizer", "bytes", "-o", tmp_path / "o4"))
    assert "outside the bytes vocabulary" in line and not (tmp_path / "o4").exists()


def test_refuses_a_vocabulary_that_does_not_fit_uint16(tmp_path):
    class Big(Tokenizer):
        name, vocab_size, eot_token, vocab_hash = "cl100k", 100277, 100257, "x"

    with pytest.raises(GptkitError, match="more than uint16"):
        tz.tokenize("pydoc", tmp_path / "o", tz.Settings(tokenizer=Big()))
    assert not (tmp_path / "o").exists()


def test_download_preset_folder_is_found_by_name(gptkit_home):
    """After `gptkit download fineweb-edu` (same layout: parquet under sample/10BT + manifest), tokenize finds it."""
    repo = make_dataset_repo(
        paths.data_dir("fineweb-edu"), "HuggingFaceFW/fineweb-edu", {"sample/10BT": 2, "sample/100BT": 1}
    )
    (paths.data_dir("fineweb-edu") / ".gptkit" / "partial").mkdir(parents=True)
    (paths.data_dir("fineweb-edu") / ".gptkit" / "partial" / "x.parquet").write_bytes(b"half a file")
    r = run_cli("tokenize", "--val-tokens", "2000", check=True)  # no SRC: the downloaded preset wins over pydoc
    assert "fineweb-edu" in r.stderr
    toks, m = all_tokens("fineweb-edu")
    assert [f["path"] for f in m["source"]["files"]] == [
        "sample/100BT/000_00000.parquet",
        "sample/10BT/000_00000.parquet",
        "sample/10BT/001_00000.parquet",
    ]
    assert m["source"]["commit"] == repo.commit and m["source"]["repo_id"] == "HuggingFaceFW/fineweb-edu"
    import pyarrow.parquet as pq

    docs = [t for f in m["source"]["files"] for t in pq.read_table(repo.path / f["path"]).column("text").to_pylist()]
    assert np.array_equal(toks, expected_stream(docs))


def test_bad_input_is_one_line_and_leaves_existing_shards_alone(tmp_path):
    out = tmp_path / "out"
    write_parquet(tmp_path / "good.parquet", corpus(30), row_group_size=10)
    run_cli("tokenize", tmp_path / "good.parquet", "-o", out, "--val-tokens", "1000", check=True)
    before = tree_hashes(out)

    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"content": ["a", "b"]}), tmp_path / "nocol.parquet")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty.jsonl").write_text("\n\n")
    (tmp_path / "notjson.jsonl").write_text('{"text": "fine"}\n{oops\n')
    cases = {
        "no such file": [tmp_path / "missing.parquet"],
        "no column 'text'": [tmp_path / "nocol.parquet"],
        "empty source": [tmp_path / "empty"],
        "empty source:": [tmp_path / "empty.jsonl"],
        "not valid JSON": [tmp_path / "notjson.jsonl"],
        "cannot be reached": ["someorg/somedata", "--endpoint", "http://127.0.0.1:9"],
        "not downloaded yet": ["fineweb"],
        "another source": [tmp_path / "nocol.parquet", "--text-column", "content"],
        "expected a token count": [tmp_path / "good.parquet", "--shard-tokens", "lots"],
    }
    for expect, args in cases.items():
        # --force too (except where the refusal to replace is the point): bad input must not cost the old shards.
        force = [] if expect == "another source" else ["--force"]
        line = assert_one_line_error(run_cli("tokenize", *args, "-o", out, *force))
        assert expect in line, (args, line)
        assert tree_hashes(out) == before, args
    shards.verify(out)
    # --force replaces it, with the old shards gone and the new verified.
    run_cli("tokenize", tmp_path / "nocol.parquet", "--text-column", "content", "-o", out, "--force", check=True)
    assert shards.read_manifest(out)["totals"]["documents"] == 2 and set(tree_hashes(out)) == {
        "manifest.json",
        "val_000000.bin",
        "train_000001.bin",
        "tokenizer/gptkit-tokenizer.json",
    }


def test_huggingface_dataset_streams_through_the_given_endpoint(hub, tmp_path):  # noqa: F811
    """Streaming via `datasets` from our mirror, with a wrong HF_ENDPOINT in the environment that must not win."""
    out = tmp_path / "hf"
    env = {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_DISABLE_XET": ""}
    args = [
        "tokenize",
        "HuggingFaceFW/fineweb-edu",
        "--subset",
        "sample-10BT",
        "--endpoint",
        hub.url,
        "--val-tokens",
        "1500",
        "-o",
        out,
    ]
    run_cli(*args, env=env, check=True)
    toks, m = all_tokens(out)
    assert m["source"]["revision"] == hub.repos["fineweb-edu"].commit and m["source"]["endpoint"] == hub.url
    tz.tokenize(
        str(hub.repos["fineweb-edu"].path / "sample" / "10BT"),
        tmp_path / "local",
        tz.Settings(val_tokens=1500),
        workers=1,
    )
    assert np.array_equal(toks, all_tokens(tmp_path / "local")[0])
    before = tree_hashes(out)
    line = assert_one_line_error(run_cli(*args, "--revision", "v9", "--force", env=env))
    assert "has no revision 'v9'" in line
    with pytest.raises(GptkitError, match="dataset nobody/nothing not found"):
        tz.tokenize("nobody/nothing", tmp_path / "x", endpoint=hub.url)
    assert tree_hashes(out) == before


def test_killed_while_installing_the_finished_shards(tmp_path):
    """The last step moves shards from .partial into place and writes manifest.json last; a re-run finishes it."""
    write_parquet(tmp_path / "d.parquet", corpus(40, seed=2), row_group_size=10)
    out, s = tmp_path / "out", tz.Settings(shard_tokens=5000, val_tokens=2000)
    tz.tokenize(str(tmp_path / "d.parquet"), out, s, workers=1)
    want = tree_hashes(out)
    # Killed half-way: the manifest and one shard still in .partial, the other shards already moved.
    partial = out / shards.PARTIAL_DIR
    partial.mkdir()
    os.replace(out / "manifest.json", partial / "manifest.json")
    os.replace(out / "val_000000.bin", partial / "val_000000.bin")
    with pytest.raises(GptkitError, match="interrupted"):
        shards.find_shards(out)
    assert tz.tokenize(str(tmp_path / "d.parquet"), out, s, workers=1).status == "resumed"
    assert tree_hashes(out) == want
    # Killed after manifest.json was in place but before .partial was removed.
    partial.mkdir()
    (partial / "previous-manifest.json").write_text("{}")
    assert tz.tokenize(str(tmp_path / "d.parquet"), out, s, workers=1).status == "up to date"
    assert tree_hashes(out) == want and not partial.exists()


# --- download presets: one table (gptkit.hub.presets), read by tokenize ------------------------


def _downloaded_text_preset(name, column, docs):
    """A preset's download folder as `gptkit download` leaves it: parquet whose `column` holds the text,
    beside a decoy column, and the manifest."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from hubfixtures import finish_repo

    from gptkit.hub.presets import PRESETS

    folder = paths.data_dir(name)
    (folder / "data").mkdir(parents=True)
    decoys = [f"decoy {i}" for i in range(len(docs))]
    pq.write_table(pa.table({"id": list(range(len(docs))), column: docs, "decoy": decoys}), folder / "data/0.parquet")
    return finish_repo(folder, PRESETS[name].repo_id, "dataset", "download")


def test_every_text_preset_is_tokenized_by_name_from_its_column(gptkit_home):
    from gptkit.hub.presets import PRESETS, text_presets

    presets = text_presets()
    assert presets and set(presets) <= set(PRESETS)  # every download preset that holds text, none hand-listed
    for i, (name, column) in enumerate(presets.items()):
        docs = [d + f" ({name})" for d in corpus(12, seed=i)]
        _downloaded_text_preset(name, column, docs)
        r = tz.tokenize(name, settings=tz.Settings(tokenizer="bytes", val_tokens=500))
        toks, m = all_tokens(r.out)
        assert r.out == paths.shards_dir(name) and m["source"]["text_column"] == column
        assert np.array_equal(toks, expected_stream(docs, get_tokenizer("bytes"))), name


def test_a_preset_added_to_the_download_table_is_known_to_tokenize_with_its_column(gptkit_home, monkeypatch):
    from dataclasses import replace

    from gptkit.data.sources import default_source, resolve_source
    from gptkit.hub import presets as hub_presets

    new = replace(hub_presets.PRESETS["fineweb"], name="tiny-web", repo_id="org/tiny-web", text_column="body")
    monkeypatch.setitem(hub_presets.PRESETS, "tiny-web", new)
    with pytest.raises(GptkitError, match=r"tiny-web is not downloaded yet .*run `gptkit download tiny-web` first"):
        resolve_source("tiny-web", unit_bytes=1 << 20)
    _downloaded_text_preset("tiny-web", "body", corpus(5))
    assert default_source() == "tiny-web"  # the only text preset downloaded: tokenize's default
    source = resolve_source("tiny-web", unit_bytes=1 << 20)
    assert source.kind == "files" and source.name == "tiny-web" and source.info["text_column"] == "body"
    assert resolve_source("tiny-web", "decoy", unit_bytes=1 << 20).info["text_column"] == "decoy"  # the user's wins


@pytest.mark.parametrize("name", ["gpt2", "hellaswag"])
def test_a_preset_without_text_is_named_as_such(name, gptkit_home, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    line = assert_one_line_error(run_cli("tokenize", name, cwd=tmp_path))
    assert line.startswith(f"gptkit: error: {name} is a download preset without text to tokenize ("), line
    assert "fineweb-edu" in line and "no such file" not in line


def test_a_small_source_validates_on_pieces_drawn_across_it_the_same_for_any_worker_count(tmp_path):
    """One long text file whose two halves differ (lower case, then upper): its first tenth was all
    lower case; the drawn pieces come from both halves, are a tenth exactly, and the shards are
    the same bytes with 1 or 2 workers. The output says how validation was drawn."""
    f = tmp_path / "book.txt"
    f.write_text("the quick brown fox jumps over the lazy dog\n" * 2500 + "THE QUICK BROWN FOX\n" * 5500)
    outs = {}
    for workers in (1, 2):
        outs[workers] = tmp_path / f"out{workers}"
        tz.tokenize(str(f), outs[workers], tz.Settings(tokenizer="bytes"), workers=workers, unit_bytes=20_000)
    toks, m = all_tokens(outs[1])
    assert toks.tolist() == [0, *f.read_bytes()]  # the document: every byte, in the source's order
    val = np.concatenate([np.asarray(shards.open_shard(p)) for p in shards.find_shards(outs[1])[0]])
    assert len(val) == len(toks) // 10
    upper = np.isin(val, np.frombuffer(b"QWERTYUIOPASDFGHJKLZXCVBNM", np.uint8)).mean()
    assert 0.2 < upper < 0.8, upper  # from both halves (the upper half is 1/2 of the bytes)
    v = m["validation"]
    assert v["rule"] == "seeded pieces" and v["ranges"][-1][1] > len(toks) // 2 and v["pieces"] >= 10
    for name in ("manifest.json", *[s["filename"] for s in m["shards"]]):
        if name != "manifest.json":
            assert (outs[1] / name).read_bytes() == (outs[2] / name).read_bytes(), name
    r = run_cli("tokenize", f, "-o", tmp_path / "cli", "--tokenizer", "bytes", check=True)
    assert "validation: 10% of the tokens, " in r.stdout and "drawn across the source with seed 0" in r.stdout
    big = run_cli("tokenize", f, "-o", tmp_path / "big", "--tokenizer", "bytes", "--val-tokens", "1000", check=True)
    assert "validation: the first 1,000 tokens (--val-tokens; the source is larger)" in big.stdout, big.stdout
