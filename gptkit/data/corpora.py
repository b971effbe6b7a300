"""The built-in corpora: English text every Python installation carries, for offline first runs.

  pydoc        the documentation topics (pydoc_data.topics), one document per topic, ~0.5 MB
  python-docs  those topics and the docstrings of every standard-library module, read from the
               sources with `ast` (nothing is imported), one document per module, ~2 MB

Both are fixed for a given Python; the manifest records the version and a hash of the text.
"""

from __future__ import annotations

import ast
import hashlib
import sys
import sysconfig
from functools import cache
from pathlib import Path

CORPORA = {
    "pydoc": "Python's own documentation topics (pydoc_data.topics), one document per topic",
    "python-docs": "Python's documentation topics and the docstrings of its standard library, one document per module",
}
# Not documentation prose, or not part of the library proper.
_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "idlelib", "lib2to3", "turtledemo"}
MIN_DOCSTRING = 40  # characters; shorter ones are mostly "Return self." and the like


def _topics() -> list[str]:
    import pydoc_data.topics

    return [pydoc_data.topics.topics[k] for k in sorted(pydoc_data.topics.topics)]


def _module_docstrings(path: Path) -> str:
    """A module's docstrings (its own, then each class's and function's), in source order."""
    try:
        tree = ast.parse(path.read_bytes())
    except (SyntaxError, ValueError):  # a file for another Python version, or a template
        return ""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            doc = ast.get_docstring(node)
            if doc and len(doc) >= MIN_DOCSTRING:
                found.append(doc)
    return "\n\n".join(dict.fromkeys(found))  # a docstring repeated on overloads counts once


def stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    return [
        f
        for f in sorted(root.rglob("*.py"))
        if not _SKIP_DIRS.intersection(f.relative_to(root).parts[:-1])
        and not f.relative_to(root).parts[0].startswith("config-")
    ]


@cache
def texts(name: str) -> tuple[str, ...]:
    """The documents of a built-in corpus, in a fixed order."""
    if name == "pydoc":
        return tuple(_topics())
    if name == "python-docs":
        modules = [d for d in map(_module_docstrings, stdlib_files()) if d]
        return (*_topics(), *modules)
    raise KeyError(name)


def info(name: str) -> dict:
    """The manifest's record of a built-in corpus: what it is, from which Python, and its text's hash."""
    if name == "pydoc":  # as earlier releases recorded it, so their outputs still match
        import json
        import pydoc_data.topics

        digest = hashlib.sha256(json.dumps(pydoc_data.topics.topics, sort_keys=True).encode()).hexdigest()
    else:
        h = hashlib.sha256()
        for d in texts(name):
            h.update(d.encode() + b"\0")
        digest = h.hexdigest()
    return {
        "type": "builtin",
        "spec": name,
        "description": CORPORA[name],
        "revision": f"python {sys.version.split()[0]}",
        "sha256": digest,
    }


def total_bytes(name: str) -> int:
    return sum(len(d.encode()) for d in texts(name))
