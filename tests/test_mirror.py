"""gptkit mirror: the real huggingface_hub and datasets clients against it over loopback."""

import hashlib
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from urllib.parse import unquote

import pytest
from conftest import ROOT, assert_one_line_error, free_port, run_cli
from hubfixtures import RequestLog, make_dataset_repo, make_model_repo, running_mirror
from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_download, hf_hub_url, snapshot_download
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

from gptkit.hub import download as gk_hub
from gptkit.hub.endpoint import use_endpoint
from gptkit.hub.mirror import api as mirror_api
from gptkit.hub.mirror import server as mirror_server

pytestmark = pytest.mark.usefixtures("hf_state")


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def raw(url: str, method: str, path: str, headers: dict | None = None, body: bytes | None = None):
    """One HTTP request with the path sent exactly as given (no client-side normalisation);
    returns (status, headers, body)."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        headers = dict(headers or {})
        if body is not None:
            headers.setdefault("Content-Length", str(len(body)))
        for k, v in headers.items():
            conn.putheader(k, v)
        conn.endheaders(body)
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        conn.close()


def test_hf_cache_layout_is_served(hub, tmp_path):
    # A head node that used plain huggingface_hub: its HF_HOME/hub cache is what we serve.
    cache = tmp_path / "hf_home" / "hub"
    snapshot_download("openai-community/gpt2", endpoint=hub.url, cache_dir=cache)
    snapshot_download(
        "HuggingFaceFW/fineweb-edu",
        repo_type="dataset",
        endpoint=hub.url,
        cache_dir=cache,
        allow_patterns=["sample/10BT/*", "README.md"],
    )
    with running_mirror(tmp_path / "hf_home") as server:
        api = HfApi(endpoint=server.url)
        assert api.model_info("openai-community/gpt2").sha == hub.repos["gpt2"].commit  # from refs/main
        result = gk_hub.download("gpt2", endpoint=server.url, local_dir=tmp_path / "g")
        assert result.commit == hub.repos["gpt2"].commit
        for rel in result.fetched:
            assert sha256(tmp_path / "g" / rel) == hub.repos["gpt2"].sha256(rel)
        # The snapshot holds only what was downloaded into the cache.
        files = {f.path for f in api.list_repo_tree("HuggingFaceFW/fineweb-edu", repo_type="dataset", recursive=True)}
        assert "sample/10BT/000_00000.parquet" in files and not any("100BT" in f for f in files)
        # ... and huggingface_hub downloads from it into a fresh cache, by commit too.
        p = hf_hub_download(
            "HuggingFaceFW/fineweb-edu",
            "sample/10BT/002_00000.parquet",
            repo_type="dataset",
            revision=hub.repos["fineweb-edu"].commit,
            endpoint=server.url,
            cache_dir=tmp_path / "cache2",
        )
        assert sha256(p) == hub.repos["fineweb-edu"].sha256("sample/10BT/002_00000.parquet")


def test_plain_folder_layout_pagination_and_paths_info(hub, tmp_path):
    repo = make_dataset_repo(tmp_path / "root" / "datasets" / "org" / "plain", "org/plain", {"data": 5}, layout="plain")
    make_model_repo(tmp_path / "root" / "org" / "tiny", "org/tiny", layout="plain")
    # A folder from huggingface_hub's local_dir download: served at the commit it recorded.
    snapshot_download(
        "openai-community/gpt2", endpoint=hub.url, local_dir=tmp_path / "root" / "openai-community" / "gpt2"
    )
    log = RequestLog()
    with running_mirror(tmp_path / "root", page_size=2, on_request=log) as server:
        assert HfApi(endpoint=server.url).model_info("openai-community/gpt2").sha == hub.repos["gpt2"].commit
        api = HfApi(endpoint=server.url)
        listed = {f.path: f for f in api.list_repo_tree("org/plain", repo_type="dataset", recursive=True)}
        server_pages = [r for r in log if "/tree/" in r["path"]]
        assert len(server_pages) > 3  # 7 entries, 2 per page: followed the Link headers
        assert set(p for p, f in listed.items() if hasattr(f, "size") and f.size) == set(repo.files)
        for p, sha in repo.files.items():
            f = listed[p]
            if f.lfs:  # parquet: LFS-style, its sha256 is the etag
                assert f.lfs.sha256 == sha
        info = api.get_paths_info("org/plain", ["README.md", "data", "missing.txt"], repo_type="dataset")
        assert sorted(type(i).__name__ for i in info) == ["RepoFile", "RepoFolder"]
        # Metadata headers the client relies on: commit, etag (sha256 for LFS), size.
        commit = api.dataset_info("org/plain").sha
        meta = get_hf_file_metadata(
            hf_hub_url("org/plain", "data/000_00000.parquet", repo_type="dataset", endpoint=server.url)
        )
        assert meta.commit_hash == commit and meta.etag == repo.files["data/000_00000.parquet"]
        assert meta.size == (repo.path / "data/000_00000.parquet").stat().st_size
        path = snapshot_download("org/tiny", endpoint=server.url, cache_dir=tmp_path / "c")
        assert sha256(Path(path) / "model.safetensors") == sha256(tmp_path / "root/org/tiny/model.safetensors")


def test_ranges_and_hub_error_codes(hub):
    repo = hub.repos["gpt2"]
    data = (repo.path / "model.safetensors").read_bytes()
    path = "/openai-community/gpt2/resolve/main/model.safetensors"
    status, headers, body = raw(hub.url, "GET", path, {"Range": "bytes=100-199"})
    assert status == 206 and body == data[100:200] and headers["Content-Range"] == f"bytes 100-199/{len(data)}"
    assert headers["X-Repo-Commit"] == repo.commit and headers["ETag"].strip('"') == repo.sha256("model.safetensors")
    status, _, body = raw(hub.url, "GET", path, {"Range": "bytes=-10"})
    assert status == 206 and body == data[-10:]
    status, headers, _ = raw(hub.url, "GET", path, {"Range": f"bytes={len(data)}-"})
    assert status == 416 and headers["Content-Range"] == f"bytes */{len(data)}"
    status, headers, body = raw(hub.url, "HEAD", path)
    assert status == 200 and headers["Content-Length"] == str(len(data)) and body == b""

    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("org/missing", "config.json", endpoint=hub.url, cache_dir=hub.root.parent / "c")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(
            "openai-community/gpt2", "config.json", revision="v9", endpoint=hub.url, cache_dir=hub.root.parent / "c"
        )
    with pytest.raises(EntryNotFoundError):
        hf_hub_download("openai-community/gpt2", "missing.bin", endpoint=hub.url, cache_dir=hub.root.parent / "c")


def test_read_only_and_no_path_outside_root(tmp_path):
    root = tmp_path / "root"
    make_model_repo(root / "org" / "m", "org/m", layout="plain")
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-CONTENT")
    (root / "org" / "m" / "link.txt").symlink_to(secret)  # a symlink out of ROOT is never followed
    (root / "org" / "m" / "linkdir").symlink_to(tmp_path, target_is_directory=True)
    attempts = [
        "/org/m/resolve/main/../../../secret.txt",
        "/org/m/resolve/main/%2e%2e/%2e%2e/%2e%2e/%2e%2e/secret.txt",
        "/org/m/resolve/main/..%2f..%2f..%2f..%2fsecret.txt",
        "/org/m/resolve/main/link.txt",
        "/org/m/resolve/main/linkdir/secret.txt",
        "/org/m/resolve/main/%2Fetc%2Fpasswd",
        "/org/m/resolve/..%2f..%2f/secret.txt",
        "/..%2f..%2f/secret.txt/resolve/main/x",
        "/datasets/..%2F..%2F/secret.txt/resolve/main/secret.txt",
        "/api/models/..%2F..%2F/secret.txt/tree/main",
        "/api/models/org/m/tree/main/..%2F..%2F..",
        "/api/models/org/m/tree/main/linkdir",
        "/../../secret.txt",
    ]
    with running_mirror(root) as server:
        for path in attempts:
            status, _, body = raw(server.url, "GET", path)
            assert status >= 400 and b"TOP-SECRET" not in body, path
        tree = raw(server.url, "GET", "/api/models/org/m/tree/main?recursive=true")[2]
        assert b"link" not in tree and b"config.json" in tree
        for method in ("PUT", "DELETE", "PATCH"):
            assert raw(server.url, method, "/org/m/resolve/main/config.json")[0] == 405
        assert raw(server.url, "POST", "/org/m/resolve/main/config.json")[0] == 405
    assert sorted(p.name for p in (root / "org" / "m").iterdir()) == sorted(
        [
            "README.md",
            "config.json",
            "generation_config.json",
            "linkdir",
            "link.txt",
            "merges.txt",
            "model.safetensors",
            "tokenizer.json",
            "vocab.json",
        ]
    )


def test_malformed_requests_get_a_4xx_with_a_json_error(hub):
    api = "/api/models/openai-community/gpt2"
    as_json = {"Content-Type": "application/json"}
    cases = [
        ("GET", f"{api}/tree/main?cursor=abc", {}, None),
        ("GET", f"{api}/tree/main?cursor=-5", {}, None),
        ("POST", f"{api}/paths-info/main", as_json, b"[]"),
        ("POST", f"{api}/paths-info/main", as_json, b'{"paths": 123}'),
        ("POST", f"{api}/paths-info/main", as_json, b'{"paths": ["config.json", 7]}'),
        ("POST", f"{api}/paths-info/main", as_json, b"{not json"),
        ("POST", f"{api}/paths-info/main", {**as_json, "Content-Length": "lots"}, b'{"paths": []}'),
        ("POST", f"{api}/paths-info/main", {**as_json, "Content-Length": str(1 << 30)}, b"{}"),
        ("GET", f"{api}/tree/main/..%2F..%2F..", {}, None),
        ("GET", f"{api}/tree/main?cursor={'9' * 5000}", {}, None),  # more digits than int() takes
        ("GET", f"{api}/tree/main?limit=abc", {}, None),
        ("GET", f"{api}/tree/main?limit=0", {}, None),
        ("GET", f"{api}/tree/main?limit=-1", {}, None),
        ("GET", f"{api}/tree/main?recursive=maybe", {}, None),
        ("GET", f"{api}/tree/main?expand=2", {}, None),
        ("GET", f"{api}/revision/main?blobs=yes", {}, None),
        ("GET", f"{api}/tree/main/%ff", {}, None),  # not UTF-8 once percent-decoded
        ("BREW", "/", {}, None),  # an unknown method: the base server's own error page, as JSON too
    ]
    for method, path, headers, body in cases:
        status, got, text = raw(hub.url, method, path, headers, body)
        assert 400 <= status < 500 or (method == "BREW" and status == 501), (path, body, status)
        assert got["Content-Type"] == "application/json" and json.loads(text)["error"], (path, body, text)
    # ... and the server is fine afterwards.
    status, _, text = raw(hub.url, "POST", f"{api}/paths-info/main", as_json, b'{"paths": ["config.json"]}')
    assert status == 200 and [e["path"] for e in json.loads(text)] == ["config.json"]
    # Well-formed values still work: huggingface_hub's True/False, and limit pages the listing.
    status, got, text = raw(hub.url, "GET", f"{api}/tree/main?recursive=True&expand=False&limit=2")
    assert status == 200 and len(json.loads(text)) == 2 and "limit=2" in got["Link"] and "cursor=2" in got["Link"]
    status, _, text = raw(hub.url, "GET", f"{api}/revision/main?blobs=1")
    assert status == 200 and all("size" in s for s in json.loads(text)["siblings"])


def raw_bytes(url: str, request_line: bytes) -> tuple[int, dict, bytes]:
    """A GET whose request line is sent byte for byte (raw non-ASCII bytes included); (status, headers, body)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request_line + b"\r\nHost: mirror\r\nConnection: close\r\n\r\n")
        r = http.client.HTTPResponse(sock)
        r.begin()
        return r.status, dict(r.getheaders()), r.read()


def test_errors_naming_non_latin1_text_get_their_4xx(hub, tmp_path):
    """A revision, repo or path outside latin-1 in an error message: the JSON body carries the text, the
    X-Error-Message header its percent-encoding, and the client its usual exception (was: no reply at all)."""
    cache = tmp_path / "c"
    with pytest.raises(RevisionNotFoundError):  # a HEAD: the headers are all the client gets
        hf_hub_download("openai-community/gpt2", "config.json", revision="v€", endpoint=hub.url, cache_dir=cache)
    with pytest.raises(RevisionNotFoundError) as e:
        HfApi(endpoint=hub.url).dataset_info("HuggingFaceFW/fineweb", revision="v€")
    assert "v€" in str(e.value)
    with pytest.raises(EntryNotFoundError):
        hf_hub_download("openai-community/gpt2", "données/€.json", endpoint=hub.url, cache_dir=cache)

    ds = "/api/datasets/HuggingFaceFW/fineweb"
    cases = [  # (method, path, status, X-Error-Code, text the message holds)
        ("GET", f"{ds}/revision/%E2%82%AC", 404, "RevisionNotFound", "€"),
        ("GET", "/api/datasets/HuggingFaceFW/%E2%82%AC", 404, "RepoNotFound", "€"),
        ("GET", "/api/models/%E6%97%A5%E6%9C%AC/gpt2", 404, "RepoNotFound", "日本"),
        ("GET", f"{ds}/tree/%E2%82%AC", 404, "RevisionNotFound", "€"),
        ("GET", f"{ds}/tree/main/%E2%82%AC", 404, "EntryNotFound", "€"),
        ("POST", f"{ds}/paths-info/%E2%82%AC", 404, "RevisionNotFound", "€"),
        ("GET", "/datasets/HuggingFaceFW/fineweb/resolve/main/%E2%82%AC.txt", 404, "EntryNotFound", "€.txt"),
        ("HEAD", "/datasets/HuggingFaceFW/fineweb/resolve/v%E2%82%AC/README.md", 404, "RevisionNotFound", "v€"),
        ("GET", "/datasets/HuggingFaceFW/fineweb/resolve/main/%ff", 400, None, "UTF-8"),
        ("HEAD", "/openai-community/gpt2/resolve/main/%ff%fe", 400, None, "UTF-8"),
        # A CR/LF in a message never splits the answer into extra headers.
        ("GET", f"{ds}/revision/%0D%0AX-Injected:%201", 404, "RevisionNotFound", "\r\nX-Injected: 1"),
    ]
    for method, path, status, code, text in cases:
        got_status, headers, body = raw(hub.url, method, path, {"Content-Type": "application/json"}, b"{}")
        assert got_status == status and headers.get("X-Error-Code") == code, (path, got_status, headers)
        assert headers["Content-Type"] == "application/json" and "X-Injected" not in headers, (path, headers)
        message = unquote(headers["X-Error-Message"])
        assert headers["X-Error-Message"].isascii() and text in message, (path, headers)
        if method == "GET":
            assert json.loads(body)["error"] == message, (path, body)
    # Raw UTF-8 bytes in the request line read as their percent-encoding would.
    status, headers, body = raw_bytes(hub.url, b"GET /api/datasets/HuggingFaceFW/\xe2\x82\xac HTTP/1.1")
    assert status == 404 and headers["X-Error-Code"] == "RepoNotFound" and "€" in json.loads(body)["error"]
    status, _, body = raw_bytes(hub.url, b"GET /datasets/HuggingFaceFW/fineweb/resolve/main/\xff HTTP/1.1")
    assert status == 400 and json.loads(body)["error"]
    # ... and the server goes on answering.
    assert HfApi(endpoint=hub.url).dataset_info("HuggingFaceFW/fineweb").sha == hub.repos["fineweb"].commit


def test_a_bug_in_the_mirror_still_gets_a_500_with_a_json_error(hub, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    with running_mirror(hub.root) as server:
        api = "/api/models/openai-community/gpt2"
        monkeypatch.setattr(mirror_api, "repo_info", broken)
        status, headers, body = raw(server.url, "GET", api)
        assert status == 500 and headers["Content-Type"] == "application/json" and json.loads(body)["error"]
        monkeypatch.undo()
        # A bug while answering an error (here in writing its headers): a 500 still, no half-written headers.
        monkeypatch.setattr(mirror_server, "header_value", broken)
        status, headers, body = raw(server.url, "GET", f"{api}/revision/v9")
        assert status == 500 and "X-Error-Code" not in headers and json.loads(body)["error"]
        monkeypatch.undo()
        assert HfApi(endpoint=server.url).model_info("openai-community/gpt2").sha == hub.repos["gpt2"].commit


def test_every_write_is_refused_as_read_only(hub):
    repo = "openai-community/gpt2"
    writes = [
        ("POST", f"/api/models/{repo}/preupload/main"),
        ("POST", f"/api/models/{repo}/commit/main"),
        ("POST", "/api/models/org/missing/commit/main"),  # read-only comes first, whatever the repo
        ("POST", "/api/repos/create"),
        ("DELETE", "/api/repos/delete"),
        ("PUT", f"/api/models/{repo}/settings"),
        ("POST", f"/api/models/{repo}/branch/dev"),
        ("DELETE", f"/api/models/{repo}/tag/v1"),
        ("POST", f"/{repo}.git/info/lfs/objects/batch"),
        ("PUT", f"/{repo}/resolve/main/config.json"),
        ("PATCH", f"/{repo}/resolve/main/config.json"),
        ("POST", f"/datasets/{repo}/resolve/main/README.md"),
    ]
    for method, path in writes:
        status, headers, body = raw(hub.url, method, path, {"Content-Type": "application/json"}, b'{"x": 1}')
        assert status == 405 and headers["X-Error-Code"] == "ReadOnly", (method, path, status, headers)
        assert "read-only" in json.loads(body)["error"]
    # The real client says so, instead of "repository not found".
    api = HfApi(endpoint=hub.url, token="hf_gptkitTestTokenNotReal")
    with pytest.raises(HfHubHTTPError) as e:
        api.upload_file(path_or_fileobj=b"hello", path_in_repo="hello.txt", repo_id=repo)
    assert "read-only" in str(e.value) and not isinstance(e.value, RepositoryNotFoundError)
    assert e.value.response is not None and e.value.response.status_code == 405


def test_many_clients_at_once(hub, tmp_path, monkeypatch):
    # Slow responses (100 kB/s) so the clients overlap; a server handling one at a time would show 1.
    monkeypatch.setenv("GPTKIT_FAULTS", "mirror.rate_limit=100000")
    log = RequestLog()
    with running_mirror(hub.root, on_request=log) as server:
        results, errors = {}, []

        def client(i):
            try:
                d = snapshot_download(
                    "openai-community/gpt2",
                    endpoint=server.url,
                    cache_dir=tmp_path / f"c{i}",
                    allow_patterns=["model.safetensors"],
                )
                results[i] = sha256(Path(d) / "model.safetensors")
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors and len(results) == 6
        assert set(results.values()) == {hub.repos["gpt2"].sha256("model.safetensors")}
        assert log.max_in_flight() >= 3


def test_datasets_streams_parquet_through_the_mirror(hub, gptkit_home):
    import datasets  # imported before the endpoint is configured, on purpose

    repo = hub.repos["fineweb-edu"]
    import pyarrow.parquet as pq

    want = [
        t for i in range(3) for t in pq.read_table(repo.path / f"sample/10BT/{i:03d}_00000.parquet")["text"].to_pylist()
    ]
    with use_endpoint(hub.url):
        ds = datasets.load_dataset(repo.repo_id, name="sample-10BT", split="train", streaming=True)
        assert [ex["text"] for ex in ds] == want

    # The cluster case: the head node downloads 2 shards, serves its data folder, a worker streams them.
    gk_hub.download("fineweb-edu", endpoint=hub.url, shards=2)
    log = RequestLog()
    with running_mirror(gptkit_home / "data", on_request=log) as head:
        with use_endpoint(head.url):
            ds = datasets.load_dataset(repo.repo_id, name="sample-10BT", split="train", streaming=True)
            texts = [ex["text"] for ex in ds]
        assert texts == want[: len(texts)] and len(texts) == 2 * len(want) // 3
        assert any("/resolve/" in r["path"] and r["status"] == 206 for r in log)  # parquet read by ranges


def test_cli_serve_and_its_bad_input(hub, tmp_path):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gptkit", "mirror", "serve", str(hub.root), "--port", str(port), "-q"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "GPTKIT_FAULTS": "mirror.error_rate=0.2"},  # a fault drill: the download still completes
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(url + "/", timeout=2).read()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise AssertionError(
                        proc.stderr.read() if proc.poll() is not None else "mirror did not start"
                    ) from None
                time.sleep(0.1)
        result = gk_hub.download("hellaswag", endpoint=url, local_dir=tmp_path / "h", backoff=0.05)
        rel = "data/validation-00000-of-00001.parquet"
        assert result.fetched == ["README.md", rel] or sorted(result.fetched) == sorted(["README.md", rel])
        assert sha256(tmp_path / "h" / rel) == hub.repos["hellaswag"].sha256(rel)

        # The port is taken now: a second server says so in one line.
        r = run_cli("mirror", "serve", str(hub.root), "--port", str(port), timeout=60)
        assert "already in use" in assert_one_line_error(r)
    finally:
        proc.terminate()
        proc.wait(10)
    r = run_cli("mirror", "serve", str(tmp_path / "nope"), "--port", "0", timeout=60)
    assert "does not exist" in assert_one_line_error(r)
    r = run_cli("mirror", "serve", str(hub.root), "--port", "0", env={"GPTKIT_FAULTS": "mirror.error_rate=lots"})
    assert "needs a number" in assert_one_line_error(r)


# --- branches: refs/convert/parquet beside main ---------------------------------------------------


def test_a_convert_branch_is_served_beside_main(tmp_path):
    """Two download folders of one repo, main (a loading script) and refs/convert/parquet: huggingface_hub
    asks for the branch percent-encoded and gets the branch's commit, listing and files."""
    from hubfixtures import make_hellaswag_repo, make_script_repo

    main = make_script_repo(tmp_path / "hub" / "hellaswag")
    conv = make_hellaswag_repo(tmp_path / "hub" / "hellaswag-parquet", layout_of="convert")
    branch, rel = "refs/convert/parquet", "default/validation/0000.parquet"
    log = RequestLog()
    with running_mirror(tmp_path / "hub", on_request=log) as server:
        api = HfApi(endpoint=server.url)
        assert api.dataset_info("Rowan/hellaswag").sha == main.commit
        assert api.dataset_info("Rowan/hellaswag", revision=branch).sha == conv.commit
        assert api.dataset_info("Rowan/hellaswag", revision=conv.commit[:10]).sha == conv.commit
        assert sorted(api.list_repo_files("Rowan/hellaswag", repo_type="dataset")) == ["README.md", "hellaswag.py"]
        assert rel in api.list_repo_files("Rowan/hellaswag", repo_type="dataset", revision=branch)
        cache = tmp_path / "cache"
        p = hf_hub_download(
            "Rowan/hellaswag", rel, repo_type="dataset", revision=branch, endpoint=server.url, cache_dir=cache
        )
        assert sha256(p) == conv.sha256(rel)
        with pytest.raises(EntryNotFoundError):  # main does not have the branch's files
            hf_hub_download("Rowan/hellaswag", rel, repo_type="dataset", endpoint=server.url, cache_dir=tmp_path / "c2")
        with pytest.raises(RevisionNotFoundError):
            api.dataset_info("Rowan/hellaswag", revision="refs/pr/7")
    assert any(f"/resolve/{branch.replace('/', '%2F')}/" in r["path"] for r in log)
    # The HF cache the client just wrote keeps the branch as refs/refs/convert/parquet; serving that
    # cache, the mirror answers the branch from it.
    storage = cache / "datasets--Rowan--hellaswag"
    assert (storage / "refs" / "refs" / "convert" / "parquet").read_text() == conv.commit
    with running_mirror(cache) as again:
        api = HfApi(endpoint=again.url)
        assert api.dataset_info("Rowan/hellaswag", revision=branch).sha == conv.commit
        q = hf_hub_download(
            "Rowan/hellaswag", rel, repo_type="dataset", revision=branch, endpoint=again.url, cache_dir=tmp_path / "c3"
        )
        assert sha256(q) == conv.sha256(rel)
        with pytest.raises(RevisionNotFoundError):  # the cache holds no main
            api.dataset_info("Rowan/hellaswag")
