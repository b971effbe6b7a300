"""What counts as starting a training, seen from inside every Python process a test starts.

tests/conftest.py marks a test `slow` when it requests the `trains` fixture; this module checks at
run time that nothing else trains. conftest installs it in the pytest process and, through a
sitecustomize.py on PYTHONPATH, in every Python process started under it (gptkit, torchrun and its
workers, the scripts, whatever environment their launcher gives them), where it reports

- torchrun started: `python -m torch.distributed.run ...` or a `torchrun` executable, and
- a training loop made: a gptkit.train.trainer.Trainer (the torchrun workers; a test or a benchmark
  script training in its own process),

each as one line of GUARD/starts.log naming the test running at the time (GUARD/current, which
conftest keeps up to date). A multi-process tokenize pool, a sampler, a converter are not trainings
and report nothing. Standard library only: it runs at the start of every interpreter.
"""

from __future__ import annotations

import functools
import os
import sys

TRAINER_MODULE = "gptkit.train.trainer"
CURRENT = "current"  # "NODEID<TAB>FIXTURE" of the test (and fixture) being run; written by conftest
STARTS = "starts.log"  # "NODEID<TAB>FIXTURE<TAB>KIND<TAB>WHAT" per start
_guard: str | None = None


def install(guard: str) -> None:
    """Report this process's trainings and torchrun starts to the folder GUARD; a later call (a
    pytest session inside a process a session started) sends them to its own GUARD instead."""
    global _guard
    installed, _guard = _guard is not None, guard
    if installed:
        return
    sys.addaudithook(_audit)
    module = sys.modules.get(TRAINER_MODULE)
    if module is not None:
        _patch(module)
    else:
        sys.meta_path.insert(0, _TrainerFinder())


def report(kind: str, what: str) -> None:
    """One line for conftest: KIND is "torchrun", "training" or "warning" (the guard cannot see)."""
    if _guard is None:
        return
    try:
        with open(os.path.join(_guard, CURRENT)) as f:
            origin = f.read().rstrip("\n")
    except OSError:
        return  # the session is over: nobody to tell
    line = f"{origin}\t{kind}\t{' '.join(what.split())[:300]}\n"
    fd = os.open(os.path.join(_guard, STARTS), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())  # one short O_APPEND write: lines of concurrent processes stay whole
    finally:
        os.close(fd)


def _audit(event: str, args: tuple) -> None:
    if event != "subprocess.Popen":
        return
    argv = args[1]
    words = [argv] if isinstance(argv, (str, bytes, os.PathLike)) else list(argv or ())
    tokens = [
        t for w in words for t in (os.fsdecode(w) if isinstance(w, (str, bytes, os.PathLike)) else str(w)).split()
    ]
    if "torch.distributed.run" in tokens or any(os.path.basename(t) == "torchrun" for t in tokens):
        report("torchrun", " ".join(tokens))


def _patch(module) -> None:
    """Make Trainer report each training it starts, in this process."""
    cls = getattr(module, "Trainer", None)
    if cls is None:
        report("warning", f"{TRAINER_MODULE} has no Trainer class: tests/startguard.py no longer sees trainings")
        return
    if getattr(cls, "_startguard", False):
        return
    init = cls.__init__

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        report("training", f"{TRAINER_MODULE}.Trainer in PID {os.getpid()}: {' '.join(sys.argv)}")
        init(self, *args, **kwargs)

    cls.__init__ = __init__
    cls._startguard = True


class _TrainerFinder:
    """Finds gptkit.train.trainer as the other finders do, then patches it once it has run, however
    it is imported (`from gptkit.train.trainer import run` at a module's top, inside a function)."""

    def find_spec(self, name, path=None, target=None):
        if name != TRAINER_MODULE:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _PatchingLoader(spec.loader)
        return spec


class _PatchingLoader:
    """The module's own loader (everything else is delegated to it), patching after it has run."""

    def __init__(self, inner) -> None:
        self._inner = inner

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def create_module(self, spec):
        return self._inner.create_module(spec)

    def exec_module(self, module) -> None:
        self._inner.exec_module(module)
        _patch(module)
