"""HF_HUB_OFFLINE has one reading in gptkit (tokenizer.hub_offline), huggingface_hub's own, and every
place that asks (the GPT-2 vocabulary, doctor's endpoint probe) gets it."""

import json
import subprocess
import sys

import pytest

from gptkit import tokenizer as tk
from gptkit.errors import GptkitError

# (HF_HUB_OFFLINE, TRANSFORMERS_OFFLINE); None = unset
SPELLINGS = [
    ("1", None),
    ("true", None),
    ("TRUE", None),
    ("yes", None),
    ("On", None),
    ("0", None),
    ("false", None),
    ("no", None),
    ("", None),
    ("2", None),
    (None, "1"),
    (None, "true"),
    ("0", "1"),  # HF_HUB_OFFLINE set wins, even to "off"
    (None, None),
]

AGREE = r"""
import importlib, json, os, sys
import huggingface_hub.constants as hc
from gptkit.tokenizer import hub_offline
out = []
for hub, tf in json.loads(sys.argv[1]):
    for k, v in (("HF_HUB_OFFLINE", hub), ("TRANSFORMERS_OFFLINE", tf)):
        os.environ.pop(k, None)
        if v is not None:
            os.environ[k] = v
    importlib.reload(hc)  # huggingface_hub reads the variables when its constants module runs
    out.append([hc.HF_HUB_OFFLINE, hub_offline()])
print(json.dumps(out))
"""


def test_gptkit_reads_hf_hub_offline_as_huggingface_hub_does():
    r = subprocess.run([sys.executable, "-c", AGREE, json.dumps(SPELLINGS)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    for spelling, (theirs, ours) in zip(SPELLINGS, got, strict=True):
        assert ours == theirs, (
            f"HF_HUB_OFFLINE, TRANSFORMERS_OFFLINE = {spelling}: huggingface_hub {theirs}, gptkit {ours}"
        )
    assert [ours for _, ours in got[:5]] == [True] * 5 and not any(ours for _, ours in got[5:10])


@pytest.fixture
def no_vocab(tmp_path, monkeypatch):
    """No GPT-2 vocabulary anywhere gptkit looks, and a forgotten cached one."""
    empty = tmp_path / "empty"
    empty.mkdir()
    for k in ("TIKTOKEN_CACHE_DIR", "GPTKIT_HOME"):
        monkeypatch.setenv(k, str(empty))
    for k in ("GPTKIT_FAULTS", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(k, raising=False)
    tk._gpt2.cache_clear()
    yield
    tk._gpt2.cache_clear()


@pytest.mark.parametrize("value", ["1", "true", "YES"])
def test_offline_gpt2_vocabulary_is_refused_without_a_download_attempt(value, no_vocab, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", value)

    def no_network(*args, **kwargs):
        raise AssertionError("offline, yet the GPT-2 vocabulary was downloaded")

    import tiktoken.load

    monkeypatch.setattr(tiktoken.load, "load_tiktoken_bpe", no_network)
    with pytest.raises(GptkitError, match=r"^the GPT-2 vocabulary is not available offline; run "):
        tk.get_tokenizer("gpt2")


@pytest.mark.parametrize("value", ["1", "true", "on"])
def test_doctor_does_not_contact_the_endpoint_offline(value, tmp_path, monkeypatch):
    from gptkit.doctor import report

    probes = []
    monkeypatch.setattr(report, "EndpointProbe", lambda *a, **k: probes.append(a))
    monkeypatch.setenv("HF_HUB_OFFLINE", value)
    checks = {c.name: c for c in report.run_checks("http://127.0.0.1:9", "test", tmp_path)}
    assert probes == [] and checks["HF endpoint"].data["offline"] is True
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    report.run_checks("http://127.0.0.1:9", "test", tmp_path)
    assert len(probes) == 1  # "0" is online: the probe starts
