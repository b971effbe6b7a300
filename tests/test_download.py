"""gptkit download: the real huggingface_hub client against the gptkit mirror over loopback."""

import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import huggingface_hub  # imported before any HF_ENDPOINT is set: gptkit must not depend on import order
import huggingface_hub.constants
import pytest
from conftest import ROOT, assert_one_line_error, run_cli
from hubfixtures import RequestLog, finish_repo, running_mirror

from gptkit import paths
from gptkit.errors import GptkitError
from gptkit.hub import download as gk_hub
from gptkit.hub import plan as hub_plan
from gptkit.hub.plan import human
from gptkit.hub.presets import PRESETS

pytestmark = pytest.mark.usefixtures("hf_state")  # each test leaves HF_ENDPOINT & co. as it found them


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def resolve_gets(requests, path_part: str) -> list[dict]:
    return [r for r in requests if r["method"] == "GET" and "/resolve/" in r["path"] and path_part in r["path"]]


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """sha256 and mtime of every file under folder, to show nothing was touched."""
    return {
        p.relative_to(folder).as_posix(): (sha256(p), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and ".gptkit" not in p.parts
    }


def test_preset_with_shards_through_hf_endpoint_set_after_import(hub, gptkit_home, monkeypatch):
    assert huggingface_hub.constants.ENDPOINT != hub.url  # huggingface_hub has already read HF_ENDPOINT
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    hub.requests.clear()
    events, notes = [], []
    result = gk_hub.download("fineweb-edu", shards=2, progress=events.append, log=notes.append)

    repo = hub.repos["fineweb-edu"]
    want = ["README.md", "sample/10BT/000_00000.parquet", "sample/10BT/001_00000.parquet"]
    assert result.local_dir == paths.data_dir("fineweb-edu")
    assert sorted(result.fetched) == want and result.commit == repo.commit
    for rel in want:
        assert sha256(result.local_dir / rel) == repo.sha256(rel)
    assert not (result.local_dir / "sample/10BT/002_00000.parquet").exists()
    assert not (result.local_dir / "sample/100BT").exists()
    # Everything came from the mirror, and Xet is off for the whole process.
    assert {r["path"].split("/resolve/")[1].split("/", 1)[1] for r in resolve_gets(hub.requests, "")} == set(want)
    assert result.xet_disabled and huggingface_hub.constants.HF_HUB_DISABLE_XET is True
    assert any("Xet transfers off" in n for n in notes)
    # The library draws nothing: progress comes as events, every file finishing once, the total reached.
    assert sorted(e.file for e in events if e.finished) == want
    total = sum((repo.path / rel).stat().st_size for rel in want)
    assert {e.total for e in events} == {total} and max(e.done for e in events) == total
    assert all(0 <= e.file_done <= e.file_size for e in events)
    # The manifest tokenize relies on.
    m = json.loads((result.local_dir / ".gptkit-download.json").read_text())
    assert (m["repo_id"], m["repo_type"], m["commit"], m["complete"]) == (repo.repo_id, "dataset", repo.commit, True)
    assert {e["path"]: e["sha256"] for e in m["files"]} == {p: repo.sha256(p) for p in want}


def test_cli_with_endpoint_flag_and_default_location(hub, gptkit_home):
    env = {"HF_ENDPOINT": "http://127.0.0.1:9", "GPTKIT_HOME": str(gptkit_home)}  # --endpoint wins over the env
    r = run_cli("download", "gpt2", "--endpoint", hub.url, "--no-progress", env=env)
    assert r.returncode == 0, r.stderr
    assert "Xet transfers off" in r.stdout and "6 files downloaded" in r.stdout
    folder = gptkit_home / "data" / "gpt2"
    repo = hub.repos["gpt2"]
    for name in PRESETS["gpt2"].files:
        assert sha256(folder / name) == repo.sha256(name)
    assert not (folder / "README.md").exists()  # not part of the preset
    # The folder is one the tokenizer resolves GPT-2 vocab from (vocab.json + merges.txt).
    from gptkit.tokenizer import ranks_from_hf_dir

    assert len(ranks_from_hf_dir(folder)) == json.loads((folder / "config.json").read_text())["vocab_size"] - 1


def test_rerun_skips_complete_files_and_finishes_an_interrupted_one(tmp_path, gptkit_home, monkeypatch):
    # A repo whose small file completes first, then a big one that we kill -9 midway.
    src = tmp_path / "hub" / "big"
    src.mkdir(parents=True)
    (src / "a_small.txt").write_text("small file\n" * 100)
    # huggingface_hub writes in 10 MB chunks (DOWNLOAD_CHUNK_SIZE): big enough to be killed after one.
    size = 24_000_000
    (src / "b_big.bin").write_bytes(os.urandom(size))
    repo = finish_repo(src, "org/big", "model", "download")
    dest = tmp_path / "out"
    monkeypatch.setenv("GPTKIT_FAULTS", "mirror.rate_limit=6000000")  # bytes/s: slow enough to kill midway
    log = RequestLog()
    with running_mirror(tmp_path / "hub", on_request=log) as server:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gptkit",
                "download",
                "org/big",
                "--endpoint",
                server.url,
                "--local-dir",
                dest,
                "--workers",
                "1",
                "--no-progress",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=ROOT,
            env={**os.environ, "GPTKIT_HOME": str(gptkit_home)},
        )
        partial = dest / ".gptkit" / "partial"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            parts = list(partial.glob("b_big.bin.*.part")) if partial.exists() else []
            if parts and parts[0].stat().st_size > 0:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL
        have = parts[0].stat().st_size
        assert 0 < have < size and not (dest / "b_big.bin").exists()
        assert sha256(dest / "a_small.txt") == repo.sha256("a_small.txt")

        monkeypatch.delenv("GPTKIT_FAULTS")
        log.clear()
        result = gk_hub.download("org/big", endpoint=server.url, local_dir=dest)
        assert result.skipped == ["a_small.txt"] and result.fetched == ["b_big.bin"]
        assert sha256(dest / "b_big.bin") == repo.sha256("b_big.bin")
        assert not resolve_gets(log, "a_small.txt")  # the complete file was not fetched again
        # (the killed run's own request may be logged late, as "client gone")
        ranges = [r["range"] for r in resolve_gets(log, "b_big.bin") if r["note"] != "client gone"]
        assert ranges and ranges[0] == f"bytes={have}-"  # the big one resumed where the killed run stopped
        assert not list(partial.glob("*.part"))


def test_download_survives_5xx_and_cut_connections(hub, tmp_path, monkeypatch):
    monkeypatch.setenv("GPTKIT_FAULTS", "mirror.error_rate=0.25,mirror.cut_rate=0.4")
    log = RequestLog()
    with running_mirror(hub.root, on_request=log) as server:
        for name, extra in (("fineweb-edu", {"subset": "sample-100BT"}), ("gpt2", {})):
            result = gk_hub.download(
                name,
                endpoint=server.url,
                local_dir=tmp_path / name,
                backoff=0.05,
                **extra,
            )
            repo = hub.repos[name]
            assert result.fetched
            for rel in result.fetched:
                assert sha256(tmp_path / name / rel) == repo.sha256(rel)
            # no empty folders left where the partial files of sample/10BT/... were
            assert not (tmp_path / name / ".gptkit" / "partial").exists()
        assert server.injected["5xx"] >= 3 and server.injected["cut"] >= 3
        assert any(r["note"] == "cut" for r in resolve_gets(log, ""))  # bodies really were cut


def test_dry_run_lists_files_and_checks_free_disk(hub, gptkit_home, monkeypatch):
    repo = hub.repos["fineweb-edu"]
    sizes = {rel: (repo.path / rel).stat().st_size for rel in repo.files}
    r = run_cli("download", "fineweb-edu", "--shards", "2", "--dry-run", "--endpoint", hub.url)
    assert r.returncode == 0, r.stderr
    for rel in ("sample/10BT/000_00000.parquet", "sample/10BT/001_00000.parquet", "README.md"):
        assert rel in r.stdout
    assert "002_00000" not in r.stdout
    total = sizes["README.md"] + sizes["sample/10BT/000_00000.parquet"] + sizes["sample/10BT/001_00000.parquet"]
    assert f"3 files, {human(total)}" in r.stdout and "free in" in r.stdout
    assert not paths.data_dir("fineweb-edu").exists()  # nothing written

    # After one shard, a dry run of two reports the difference.
    gk_hub.download("fineweb-edu", endpoint=hub.url, shards=1)
    plan = gk_hub.download("fineweb-edu", endpoint=hub.url, shards=2, dry_run=True)
    assert plan.fetched == ["sample/10BT/001_00000.parquet"]
    assert plan.fetch_bytes == sizes["sample/10BT/001_00000.parquet"]

    # Not enough disk: refused before anything is written, in a dry run and a real run alike.
    before = snapshot(paths.data_dir("fineweb-edu"))
    monkeypatch.setattr(hub_plan, "free_bytes", lambda path: 1000)
    for dry in (True, False):
        with pytest.raises(GptkitError, match="not enough free disk space"):
            gk_hub.download("fineweb-edu", endpoint=hub.url, shards=3, dry_run=dry)
    assert snapshot(paths.data_dir("fineweb-edu")) == before


def test_include_exclude_subset_and_revision(hub, tmp_path):
    repo = hub.repos["fineweb-edu"]
    r = gk_hub.download(
        repo.repo_id,
        repo_type="dataset",
        endpoint=hub.url,
        local_dir=tmp_path / "a",
        include=["sample/100BT/*", "README.md"],
        exclude=["*/001_*"],
    )
    assert sorted(r.fetched) == ["README.md", "sample/100BT/000_00000.parquet"]
    r = gk_hub.download(
        "fineweb-edu",
        subset="100BT",
        shards=1,
        revision=repo.commit,
        endpoint=hub.url,
        local_dir=tmp_path / "b",
    )
    assert sorted(r.fetched) == ["README.md", "sample/100BT/000_00000.parquet"]
    assert json.loads((tmp_path / "b" / ".gptkit-download.json").read_text())["revision"] == repo.commit
    with pytest.raises(GptkitError, match="no file in"):
        gk_hub.download("fineweb-edu", subset="sample-350BT", endpoint=hub.url, local_dir=tmp_path / "c", log=print)
    with pytest.raises(GptkitError, match="unknown subset"):
        gk_hub.download("fineweb-edu", subset="sample-1BT", endpoint=hub.url, log=print)
    assert not (tmp_path / "c").exists()


def test_xet_is_off_for_mirrors_even_when_the_mirror_advertises_it(hub, tmp_path):
    # hf-mirror.com passes the Hub's Xet headers through; a Xet client would then leave the mirror.
    log = RequestLog()
    with running_mirror(hub.root, xet_headers=True, on_request=log) as server:
        result = gk_hub.download("gpt2", endpoint=server.url, local_dir=tmp_path / "g")
        assert len(result.fetched) == 6
        # Other huggingface_hub users in the process go through the mirror as well.
        p = huggingface_hub.hf_hub_download(
            "openai-community/gpt2", "model.safetensors", endpoint=server.url, cache_dir=tmp_path / "cache"
        )
        assert sha256(p) == hub.repos["gpt2"].sha256("model.safetensors")
        assert not [r for r in log if "xet" in r["path"]]


def test_token_is_sent_but_never_printed(hub, gptkit_home):
    token = "hf_gptkitTestTokenDoNotPrint0123456789"
    env = {"HF_TOKEN": token}
    hub.requests.clear()
    ok = run_cli("download", "hellaswag", "--endpoint", hub.url, env=env)
    bad = run_cli("download", "org/missing", "--endpoint", hub.url, env=env)
    assert ok.returncode == 0 and bad.returncode == 1
    for r in (ok, bad):
        assert token not in r.stdout + r.stderr
    # Every request for the repo carries the token (huggingface_hub's own housekeeping calls, such
    # as its daily /api/agent-harnesses fetch, are not the download's and may go without it).
    repo_requests = [r for r in hub.requests if "hellaswag" in r["path"] or "org/missing" in r["path"]]
    assert repo_requests and all(r["auth"] for r in repo_requests), [r for r in repo_requests if not r["auth"]]
    log = (gptkit_home / "data" / "hellaswag" / ".gptkit-download.json").read_text()
    assert token not in log and "data/validation-00000-of-00001.parquet" in log


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_bad_input_is_one_line_and_loses_nothing(hub, gptkit_home):
    r = run_cli("download", "gpt2", "--endpoint", hub.url)
    assert r.returncode == 0, r.stderr
    folder = gptkit_home / "data" / "gpt2"
    before = snapshot(folder)
    cases = [
        (("org/does-not-exist", "--endpoint", hub.url), "repository model org/does-not-exist not found"),
        (("gpt2", "--revision", "no-such-branch", "--endpoint", hub.url), "has no revision 'no-such-branch'"),
        (("gpt2", "--endpoint", f"http://127.0.0.1:{_closed_port()}"), "cannot be reached"),
        (("gpt2", "--endpoint", "not a url"), "invalid Hugging Face endpoint"),
        (("no-such-preset",), "unknown preset"),
    ]
    for args, message in cases:
        r = run_cli("download", *args, timeout=60)  # bounded retries: an unreachable endpoint fails in seconds
        line = assert_one_line_error(r)
        assert message in line, (args, line)
    # The same checks in-process (the CLI prints any GptkitError as the one line above).
    for kwargs, message in (
        (dict(name_or_repo="gpt2", mirror=True, endpoint=hub.url), "either --endpoint or --mirror"),
        (dict(name_or_repo="gpt2", repo_type="dataset"), "drop --repo-type"),
        (dict(name_or_repo="org/name", repo_type="space"), "invalid --repo-type"),
        (dict(name_or_repo="org/name", subset="sample-10BT"), "--subset applies to"),
        (dict(name_or_repo="gpt2", shards=0, endpoint=hub.url), "--shards must be at least 1"),
    ):
        with pytest.raises(GptkitError, match=re.escape(message)):
            gk_hub.download(**kwargs)
    assert snapshot(folder) == before


def test_endpoint_patching_tolerates_a_huggingface_hub_without_hf_url_hosts(monkeypatch):
    # huggingface_hub 0.26 has no constants.HF_URL_HOSTS (nor HF_HUB_DISABLE_XET before Xet existed).
    from gptkit.hub.endpoint import configure_endpoint, preserved_endpoint_state

    hc = huggingface_hub.constants
    for name in ("HF_URL_HOSTS", "HF_HUB_DISABLE_XET"):
        monkeypatch.delattr(hc, name)
    with preserved_endpoint_state():
        assert configure_endpoint("http://127.0.0.1:9") is True
        assert hc.ENDPOINT == "http://127.0.0.1:9" and not hasattr(hc, "HF_URL_HOSTS")
    assert hc.ENDPOINT != "http://127.0.0.1:9" and not hasattr(hc, "HF_HUB_DISABLE_XET")


# --- where a preset's files are: main, or the refs/convert/parquet branch ----------------------


def hellaswag_hub(root: Path, layout: str) -> None:
    from hubfixtures import make_hellaswag_repo, make_script_repo

    if layout == "parquet-main":
        make_hellaswag_repo(root / "hellaswag")
    if layout in ("script-main+convert", "neither"):
        make_script_repo(root / "hellaswag")
    if layout in ("script-main+convert", "convert-only"):
        make_hellaswag_repo(root / "hellaswag-parquet", layout_of="convert")


@pytest.mark.parametrize(
    "layout,revision,file",
    [
        ("parquet-main", "main", "data/validation-00000-of-00001.parquet"),
        ("script-main+convert", "refs/convert/parquet", "default/validation/0000.parquet"),
        ("convert-only", "refs/convert/parquet", "default/validation/0000.parquet"),  # e.g. a mirror of that download
    ],
)
def test_hellaswag_found_whichever_layout_the_hub_has(layout, revision, file, tmp_path, gptkit_home):
    from gptkit.train.hellaswag import find_hellaswag, load_examples

    hellaswag_hub(tmp_path / "hub", layout)
    log, notes = RequestLog(), []
    with running_mirror(tmp_path / "hub", on_request=log) as server:
        result = gk_hub.download("hellaswag", endpoint=server.url, log=notes.append)
    assert result.revision == revision and file in result.fetched
    assert not any("train" in f or "test" in f for f in result.fetched)  # only the validation split
    assert any(f"from {revision} ({file})" in n for n in notes), notes  # it says which it used
    m = json.loads((result.local_dir / ".gptkit-download.json").read_text())
    assert m["revision"] == revision and m["commit"] == result.commit and m["complete"]
    # The training-time reader finds it whichever layout it came from.
    assert find_hellaswag(result.local_dir) == [result.local_dir / file]
    assert len(load_examples(find_hellaswag(result.local_dir))) == 12
    if revision != "main":  # the branch travelled percent-encoded, as huggingface_hub sends it
        assert any("/revision/refs%2Fconvert%2Fparquet" in r["path"] for r in log)
        assert all(f"/resolve/{result.commit}/" in r["path"] for r in log if "/resolve/" in r["path"])


def test_hellaswag_in_neither_place_is_one_line(tmp_path, gptkit_home):
    hellaswag_hub(tmp_path / "hub", "neither")
    with running_mirror(tmp_path / "hub") as server:
        line = assert_one_line_error(run_cli("download", "hellaswag", "--endpoint", server.url))
    assert "Rowan/hellaswag has no HellaSwag validation split in parquet" in line
    assert "*validation*.parquet on main" in line
    assert "default/validation/*.parquet on refs/convert/parquet (no such revision)" in line
    assert not (gptkit_home / "data" / "hellaswag").exists()


# --- one download per folder: gptkit.lock's lock file, not flock ------------------------------


def test_a_second_download_into_the_same_folder_is_refused_and_a_killed_ones_lock_is_taken_over(
    tmp_path, gptkit_home, monkeypatch
):
    src = tmp_path / "hub" / "big"
    src.mkdir(parents=True)
    (src / "big.bin").write_bytes(os.urandom(12_000_000))
    repo = finish_repo(src, "org/big", "model", "download")
    dest = tmp_path / "out"
    lockfile = dest / ".gptkit" / ".lock"
    monkeypatch.setenv("GPTKIT_FAULTS", "mirror.rate_limit=1000000")  # bytes/s: the first run takes ~12 s
    with running_mirror(tmp_path / "hub") as server:
        args = ["download", "org/big", "--endpoint", server.url, "--local-dir", str(dest), "--no-progress"]
        first = subprocess.Popen(
            [sys.executable, "-m", "gptkit", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=ROOT,
            env={**os.environ, "GPTKIT_HOME": str(gptkit_home)},
        )
        try:
            deadline = time.monotonic() + 60
            while not lockfile.exists() and first.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert first.poll() is None and lockfile.exists(), first.stderr.read().decode() if first.stderr else ""
            holder = json.loads(lockfile.read_text())
            assert holder["pid"] == first.pid and holder["what"] == "gptkit download"
            # Refused while it runs, in this process and from the command line, naming the holder.
            with pytest.raises(
                GptkitError, match=rf"in use by PID {first.pid} on .*; wait for it, or use --local-dir$"
            ):
                gk_hub.download("org/big", endpoint=server.url, local_dir=dest)
            line = assert_one_line_error(run_cli(*args, timeout=60))
            assert line.startswith(f"gptkit: error: {dest} is in use by PID {first.pid} "), line
            assert "(gptkit download)" in line and line.endswith("; wait for it, or use --local-dir"), line
            assert first.poll() is None  # the refused ones left the running download alone
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait()
        # A download killed with -9 leaves its lock file behind; the next one on this host takes it over.
        assert lockfile.exists() and not (dest / "big.bin").exists()
        monkeypatch.delenv("GPTKIT_FAULTS")
        result = gk_hub.download("org/big", endpoint=server.url, local_dir=dest)
    assert result.fetched == ["big.bin"] and sha256(dest / "big.bin") == repo.sha256("big.bin")
    assert not lockfile.exists()  # released when the download ends
