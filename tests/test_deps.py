import importlib.metadata
import os
import re
import tomllib

import pytest
from conftest import ROOT, assert_one_line_error, run_cli

from gptkit import deps
from gptkit.errors import GptkitError


def test_installed_versions_pass():
    deps.check_dependencies()


def test_minimum_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    floors = {}
    for req in project["dependencies"]:
        m = re.match(r"([A-Za-z0-9_.-]+)\s*>=\s*([0-9.]+)", req)
        assert m, f"dependency without a floor: {req}"
        floors[m.group(1)] = m.group(2)
    assert floors == deps.MINIMUM


@pytest.mark.parametrize(
    ("found", "floor", "ok"),
    [
        ("2.13.0+cpu", "2.13", True),
        ("2.12.1", "2.13", False),
        ("2.4", "2.4", True),
        ("2.4.0", "2.4", True),
        ("0.24.0rc1", "0.24", True),  # a pre-release counts as its release
        ("0.11.1", "0.12", False),
        ("1.26.4", "1.24", True),
        ("0.9", "0.10", False),  # numeric, not string, order
    ],
)
def test_release_order(found, floor, ok):
    assert (deps.release(found) >= deps.release(floor)) is ok


def _fake_versions(monkeypatch, **versions):
    real = importlib.metadata.version

    def version(name):
        if name in versions:
            if versions[name] is None:
                raise importlib.metadata.PackageNotFoundError(name)
            return versions[name]
        return real(name)

    monkeypatch.setattr(importlib.metadata, "version", version)


def test_too_old(monkeypatch):
    _fake_versions(monkeypatch, typer="0.27.3")
    with pytest.raises(GptkitError) as e:
        deps.check_dependencies()
    floor = deps.MINIMUM["typer"]
    assert str(e.value) == f"gptkit needs typer>={floor} (found 0.27.3): pip install -U 'typer>={floor}'"


def test_missing(monkeypatch):
    _fake_versions(monkeypatch, safetensors=None)
    with pytest.raises(GptkitError, match=r"safetensors>=0\.8 \(not installed\)"):
        deps.check_dependencies()


def test_unreadable_version_is_not_judged(monkeypatch):
    _fake_versions(monkeypatch, numpy="unknown")
    deps.check_dependencies()


def test_cli_refuses_an_old_dependency(tmp_path):
    # A dist-info ahead of site-packages on the path is what importlib.metadata finds first.
    info = tmp_path / "huggingface_hub-1.33.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: huggingface_hub\nVersion: 1.33.0\n")
    path = os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH")) if p)
    line = assert_one_line_error(run_cli("--version", env={"PYTHONPATH": path}))
    assert line == (
        "gptkit: error: gptkit needs huggingface_hub>=2.0 (found 1.33.0): pip install -U 'huggingface_hub>=2.0'"
    )
