"""Standard benchmarks through lm-evaluation-harness, and plain text files scored the way it scores them.

    run_tasks(model_path, ["hellaswag", "arc_easy"], limit=100)   -> TasksResult   (needs gptkit[eval])
    score_texts(model_path, [Path("a.txt")])                      -> TextResult    (no extra needed)

lm-eval is used as a library: its own task definitions (YAML), datasets, prompts and metrics, with
gptkit's model and tokenizer behind lm-eval's model interface (gptkit/lm_adapter.py); no export and
no transformers. What the adapter computes is what `lm_eval --model hf` computes on the model's HF
export (tests/test_harness.py holds the two to 1e-4 per request and to equality on every metric):

    loglikelihood          context + continuation, the continuation's summed log-probability and
                           whether greedy decoding would produce it; a pair longer than the context
                           keeps its last block_size + 1 tokens (lm-eval's rule: the context is cut
                           from the left); the trailing spaces of a context belong to the continuation
    loglikelihood_rolling  the text in disjoint windows of block_size tokens, the first conditioned
                           on the end-of-text token, each later one on the token before it (a
                           shorter last one on as many before it as fill the context)
    generate_until         gptkit.generate, greedy unless the task samples, from the context's last
                           block_size - max_gen_toks tokens, cut at the first stop string

Datasets come through the endpoint every command uses (--endpoint, --mirror, HF_ENDPOINT) and are
cached under $GPTKIT_HOME/lm-eval/ (the hub files and `datasets`' prepared copies), so a second run
needs no network: `datasets` falls back to its cache when the endpoint cannot be reached.

Results are saved beside the checkpoint they score (a run's step_NNNNNN/ gets RUN/evals/), anything
else under $GPTKIT_HOME/evals/, in a file named after the model, the tasks with their versions and
the lm-eval version, so results of different task or harness versions never overwrite each other.

Text files: each file is one document scored as loglikelihood_rolling scores one; the totals are
lm-eval's rolling perplexity quantities: the log-likelihood, nats per token (-loglik / tokens) and
bits per byte (-loglik / UTF-8 bytes / ln 2, lm-eval's bits_per_byte).
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from gptkit.errors import GptkitError

INSTALL = "pip install 'gptkit[eval]'"
Log = Callable[[str], None]


# --- scoring: the one place log-likelihoods are computed for lm-eval and --text -------------------


def rolling_windows(tokens: list[int], prefix: int, block: int) -> Iterator[tuple[list[int], list[int]]]:
    """(context, predicted) pairs covering `tokens` once each, lm-eval's loglikelihood_rolling (its
    context_len of 1): windows of `block` predicted tokens, the first conditioned on `prefix`
    (end-of-text), each later full one on the single token before it, and a shorter last one on as
    many tokens before it as fill the context."""
    for start in range(0, len(tokens), block):
        end = min(start + block, len(tokens))
        context = [prefix] if start == 0 else tokens[end - block - 1 : start]
        yield context, tokens[start:end]


@torch.no_grad()
def score_pairs(
    model, pairs: list[tuple[list[int], list[int]]], *, vocab_size: int, batch_size: int, autocast=None
) -> list[tuple[float, bool]]:
    """(summed log-probability of each continuation given its context, is it the greedy choice), for
    (context ids, continuation ids) pairs. Batched: the pairs sorted longest first, right-padded (a
    causal model never sees the padding of a shorter row). Each row is the last block_size + 1
    tokens of context + continuation, less the last (it is only predicted)."""
    block = model.config.block_size
    device = model.get_parameter("transformer.wte.weight").device
    ctx = autocast if autocast is not None else contextlib.nullcontext
    out: list[tuple[float, bool] | None] = [None] * len(pairs)
    order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
    for b in range(0, len(order), batch_size):
        chunk = order[b : b + batch_size]
        rows = []
        for i in chunk:
            context, cont = pairs[i]
            if not cont or len(cont) > block:
                raise GptkitError(f"a continuation of {len(cont)} tokens cannot be scored in a context of {block}")
            rows.append((context + cont)[-(block + 1) :][:-1])
        width = max(len(r) for r in rows)
        idx = torch.zeros(len(rows), width, dtype=torch.long)
        for j, r in enumerate(rows):
            idx[j, : len(r)] = torch.tensor(r)
        with ctx():
            logits, _ = model(idx.to(device))
        for j, i in enumerate(chunk):
            cont = pairs[i][1]
            n = len(rows[j])
            # position t predicts token t + 1: the continuation's tokens are the row's last len(cont)
            # targets; the padded vocabulary rows are no tokens, so they are left out of the softmax
            logp = torch.log_softmax(logits[j, n - len(cont) : n, :vocab_size].float(), dim=-1)
            target = torch.tensor(cont, device=logp.device)
            ll = float(logp.gather(-1, target.unsqueeze(-1)).sum())
            out[i] = (ll, bool((logp.argmax(dim=-1) == target).all()))
    return [r for r in out if r is not None]


def score_rolling(model, tokenizer, token_lists: list[list[int]], *, batch_size: int, autocast=None) -> list[float]:
    """The total log-likelihood of each token list, scored in rolling windows (rolling_windows)."""
    if tokenizer.eot_token is None:
        raise GptkitError(f"the {tokenizer.name} vocabulary has no end-of-text token to start a document with")
    block = model.config.block_size
    owner, pairs = [], []
    for k, toks in enumerate(token_lists):
        for pair in rolling_windows(toks, tokenizer.eot_token, block):
            owner.append(k)
            pairs.append(pair)
    scores = score_pairs(model, pairs, vocab_size=tokenizer.vocab_size, batch_size=batch_size, autocast=autocast)
    totals = [0.0] * len(token_lists)
    for k, (ll, _) in zip(owner, scores, strict=True):
        totals[k] += ll
    return totals


# --- loading a model, once for both paths ---------------------------------------------------------


def load(model_path: Path, device: str, precision: str, tokenizer: str | Path | None, log: Log | None):
    """(model in eval mode, tokenizer, description, device, precision) as every eval path loads it."""
    from gptkit.device import pick_device, resolve_precision
    from gptkit.models import load_for_sampling

    dev = pick_device(device)
    prec = resolve_precision(precision, dev)
    note = (lambda msg: log(f"note: {msg}")) if log else None
    model, tok, described = load_for_sampling(model_path, dev, tokenizer, log=note)
    model.eval()
    return model, tok, described, dev, prec


# --- --text ----------------------------------------------------------------------------------------


@dataclass
class TextScore:
    file: str
    loglikelihood: float
    tokens: int
    bytes: int
    nats_per_token: float
    bits_per_byte: float


@dataclass
class TextResult:
    model: str
    tokenizer: str
    device: str
    precision: str
    context: int
    files: list[TextScore]
    total: TextScore  # over all files together: sums, then the ratios

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _text_score(name: str, ll: float, tokens: int, nbytes: int) -> TextScore:
    return TextScore(name, ll, tokens, nbytes, -ll / max(tokens, 1), -ll / max(nbytes, 1) / math.log(2))


def score_texts(
    model_path: Path,
    files: list[Path],
    *,
    batch_size: int = 8,
    device: str = "auto",
    precision: str = "auto",
    tokenizer: str | Path | None = None,
    log: Log | None = None,
) -> TextResult:
    """Each UTF-8 text file scored as one document (module docstring). Raises GptkitError."""
    texts = []
    for f in files:
        try:
            texts.append(f.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise GptkitError(f"{f}: no such file") from None
        except IsADirectoryError:
            raise GptkitError(f"{f}: a directory; give text files") from None
        except UnicodeDecodeError as e:
            raise GptkitError(f"{f}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if batch_size < 1:
        raise GptkitError("--batch-size must be at least 1")
    model, tok, described, dev, prec = load(model_path, device, precision, tokenizer, log)
    token_lists = [tok.encode(t) for t in texts]
    lls = score_rolling(model, tok, token_lists, batch_size=batch_size, autocast=prec.autocast)
    scores = [
        _text_score(str(f), ll, len(ids), len(t.encode("utf-8")))
        for f, ll, ids, t in zip(files, lls, token_lists, texts, strict=True)
    ]
    total = _text_score(
        "total", sum(s.loglikelihood for s in scores), sum(s.tokens for s in scores), sum(s.bytes for s in scores)
    )
    return TextResult(described, tok.name, str(dev), prec.name, model.config.block_size, scores, total)


# --- lm-eval tasks ------------------------------------------------------------------------------------


def lm_eval_version() -> str:
    """The installed lm-eval's version; one line naming the install when it is missing."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        import lm_eval  # noqa: F401

        return version("lm_eval")
    except (ImportError, PackageNotFoundError):
        raise GptkitError(f"--tasks runs lm-evaluation-harness, which is not installed: {INSTALL}") from None


@contextmanager
def dataset_caches(root: Path) -> Iterator[None]:
    """Point huggingface_hub's and datasets' caches at ROOT for a block, whichever was imported first,
    then restore them (both read their cache locations once, at import)."""
    import os

    hub_dir, ds_dir = root / "hub", root / "datasets"
    env = {"HF_HUB_CACHE": str(hub_dir), "HF_DATASETS_CACHE": str(ds_dir)}
    saved_env = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    patched: list[tuple[Any, str, Any]] = []

    def patch(module: Any, name: str, value: Any) -> None:
        patched.append((module, name, getattr(module, name)))
        setattr(module, name, value)

    try:
        import huggingface_hub.constants as hc

        patch(hc, "HF_HUB_CACHE", str(hub_dir))
        ds_config: Any = sys.modules.get("datasets.config")
        if ds_config is not None:
            patch(ds_config, "HF_DATASETS_CACHE", ds_dir)
            patch(ds_config, "DOWNLOADED_DATASETS_PATH", ds_dir / ds_config.DOWNLOADED_DATASETS_DIR)
            patch(
                ds_config,
                "EXTRACTED_DATASETS_PATH",
                ds_dir / ds_config.DOWNLOADED_DATASETS_DIR / ds_config.EXTRACTED_DATASETS_DIR,
            )
        yield
    finally:
        for module, name, value in reversed(patched):
            setattr(module, name, value)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@dataclass
class TasksResult:
    model: str
    tokenizer: str
    device: str
    precision: str
    lm_eval: str  # the lm-eval version
    tasks: list[str]
    limit: int | None
    num_fewshot: int | None
    rows: list[
        dict[str, Any]
    ]  # one per (task, filter, metric): task, version, filter, n_shot, metric, value, stderr, n
    results: dict[str, Any] = field(repr=False)  # lm-eval's own results dict (results, versions, n-shot, configs, ...)
    saved: str = ""  # the results file
    samples: str | None = None  # the per-request log (--log-samples), JSON lines
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("results")
        return out


def results_path(model_path: Path, versions: dict[str, Any], lm_version: str) -> Path:
    """Where a run's results go (module docstring): the name carries every task with its version and
    the lm-eval version."""
    from gptkit import paths
    from gptkit.checkpoint import is_checkpoint

    tasks = "_".join(f"{t}-v{v}" for t, v in sorted(versions.items()))
    if len(tasks) > 120:  # many tasks: keep the name short, the versions are in the file
        import hashlib

        tasks = f"{len(versions)}tasks-{hashlib.sha256(tasks.encode()).hexdigest()[:12]}"
    if is_checkpoint(model_path):
        folder, model_name = model_path.parent / "evals", model_path.name
    else:
        folder, model_name = paths.home() / "evals", paths.safe_name(model_path.name or "model")
    return folder / f"{model_name}__{tasks}__lm-eval-{lm_version}.json"


def _rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """lm-eval's "metric,filter" keys as one row each, in task order."""
    rows = []
    for task, metrics in results.get("results", {}).items():
        for key, value in metrics.items():
            if "," not in key or "_stderr," in key or not isinstance(value, int | float):
                continue
            metric, filt = key.split(",", 1)
            stderr = metrics.get(f"{metric}_stderr,{filt}")
            rows.append(
                {
                    "task": task,
                    "version": results.get("versions", {}).get(task),
                    "filter": filt,
                    "n_shot": results.get("n-shot", {}).get(task),
                    "metric": metric,
                    "value": value,
                    "stderr": stderr if isinstance(stderr, int | float) else None,
                    "n": (results.get("n-samples", {}).get(task) or {}).get("effective"),
                }
            )
    return rows


def _jsonable(o: Any) -> Any:
    """What json cannot write as it is (numpy numbers, sets, functions in task configs) as plain values."""
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, set):
        return sorted(o)
    return str(o)


def run_tasks(
    model_path: Path,
    tasks: list[str],
    *,
    limit: int | None = None,
    num_fewshot: int | None = None,
    batch_size: int = 8,
    gen_kwargs: str | None = None,
    log_samples: bool = False,
    endpoint: str | None = None,
    device: str = "auto",
    precision: str = "auto",
    tokenizer: str | Path | None = None,
    log: Log | None = None,
) -> TasksResult:
    """lm-eval's tasks on any model gptkit loads (module docstring); raises GptkitError."""
    from gptkit import paths
    from gptkit.fsutil import atomic_output
    from gptkit.hub.endpoint import offline_hub, resolve_endpoint, use_endpoint
    from gptkit.tokenizer import hub_offline

    say = log or (lambda msg: None)
    lm_version = lm_eval_version()
    names = [t.strip() for t in tasks if t.strip()]
    if not names:
        raise GptkitError("--tasks needs at least one task name, e.g. --tasks hellaswag,arc_easy")
    if (limit is not None and limit < 1) or batch_size < 1 or (num_fewshot is not None and num_fewshot < 0):
        raise GptkitError("--limit and --batch-size must be at least 1, --num-fewshot at least 0")
    import lm_eval

    manager = task_manager(names, paths.home() / "lm-eval")
    unknown = [t for t in names if t not in manager.all_tasks]
    if unknown:
        raise GptkitError(
            f"lm-eval {lm_version} has no task {', '.join(map(repr, unknown))}; `lm_eval ls tasks` lists them"
        )
    url = resolve_endpoint(endpoint)
    with use_endpoint(url):  # before the model loads: a metric that cannot be had stops the run at once
        check_hub_metrics(hub_metrics(manager, names))
    model, tok, described, dev, prec = load(model_path, device, precision, tokenizer, log)
    if tok.eot_token is None:
        raise GptkitError(f"the {tok.name} vocabulary has no end-of-text token, which lm-eval's requests start from")
    from gptkit.lm_adapter import GptkitLM

    lm = GptkitLM(model, tok, batch_size=batch_size, autocast=prec.autocast)
    cache = paths.home() / "lm-eval"
    unreachable = None if hub_offline() else _unreachable(url)
    source = f"datasets from {url}" if unreachable is None else f"{url} unreachable ({unreachable}): datasets from"
    say(f"lm-eval {lm_version}: {', '.join(names)} on {described}; {source} the cache in {cache}")
    t0 = time.perf_counter()
    # lm-eval prints progress notes on stdout; that is the caller's (gptkit eval --json's) channel
    quiet = contextlib.redirect_stdout(sys.stderr)
    offline = offline_hub() if unreachable is not None else contextlib.nullcontext()
    with quiet, use_endpoint(url), offline, dataset_caches(cache), _harness_errors(url, unreachable):
        results = lm_eval.simple_evaluate(
            model=lm,
            tasks=names,
            num_fewshot=num_fewshot,
            limit=limit,
            gen_kwargs=gen_kwargs,
            log_samples=log_samples,
            task_manager=manager,
        )
    if results is None:  # only on ranks other than 0, which gptkit never runs
        raise GptkitError("lm-eval returned no results")
    samples = results.pop("samples", None)
    out = results_path(model_path, results.get("versions", {}), lm_version)
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "gptkit": {"model": described, "tokenizer": tok.name, "device": str(dev), "precision": prec.name},
        **results,
    }
    with atomic_output(out) as tmp:
        tmp.write_text(json.dumps(record, indent=1, default=_jsonable) + "\n")
    samples_file = None
    if log_samples and samples is not None:
        sp = out.with_name(out.name.removesuffix(".json") + ".samples.jsonl")
        lines = [json.dumps({"task": task, **s}, default=_jsonable) for task, rows in samples.items() for s in rows]
        with atomic_output(sp) as tmp:
            tmp.write_text("".join(line + "\n" for line in lines))
        samples_file = str(sp)
    return TasksResult(
        described,
        tok.name,
        str(dev),
        prec.name,
        lm_version,
        names,
        limit,
        num_fewshot,
        _rows(results),
        results,
        str(out),
        samples_file,
        round(time.perf_counter() - t0, 3),
    )


def task_manager(names: list[str], cache: Path) -> Any:
    """lm-eval's TaskManager for NAMES. Indexing all of lm-eval's ~14,000 task files takes ~9 s on
    every run; the folders each task, group and tag is defined in are kept in CACHE after the first
    full index (per lm-eval version and install), and later runs index only the folders NAMES need.
    A name not in that map gets the full index (and the unknown-task error its list gives)."""
    import hashlib

    import lm_eval
    from lm_eval.tasks import TaskManager

    from gptkit.fsutil import write_json_atomic

    tasks_dir = Path(lm_eval.__file__).parent / "tasks"
    key = hashlib.sha256(f"{lm_eval_version()} {tasks_dir}".encode()).hexdigest()[:16]
    path = cache / f"task-folders-{key}.json"
    try:
        folders: dict[str, list[str]] = json.loads(path.read_text())
    except (OSError, ValueError):
        folders = {}
    if folders and all(n in folders for n in names):
        return TaskManager(include_defaults=False, include_path=sorted({f for n in names for f in folders[n]}))
    manager = TaskManager()
    index = manager.task_index
    memo: dict[str, set[str]] = {}

    def where(name: str) -> set[str]:  # the folders defining NAME and everything it includes
        if name in memo:
            return memo[name]
        memo[name] = set()  # a cycle ends here
        entry = index.get(name)
        if entry is None:
            return memo[name]
        kind = getattr(entry.kind, "name", str(entry.kind))
        own = {str(Path(entry.yaml_path).parent)} if entry.yaml_path else set()
        if kind == "TAG":
            members: list = sorted(entry.tags)
        elif kind == "GROUP":
            members = [t if isinstance(t, str) else t.get("task") for t in (entry.cfg or {}).get("task", [])]
        else:
            members = []
        memo[name] = own.union(*(where(m) for m in members if isinstance(m, str)))
        return memo[name]

    with contextlib.suppress(OSError):  # a read-only home only costs the next run the full index
        write_json_atomic(path, {n: sorted(where(n)) for n in index}, indent=0)
    return manager


def hub_metrics(manager: Any, names: list[str]) -> list[tuple[str, str]]:
    """(task, metric) for each metric the tasks NAMES (groups and tags expanded) score through the
    Hugging Face `evaluate` library, which fetches its metric modules from the hub on first use:
    lm-eval then logs an error and scores with nothing, or fails after the whole run."""
    from lm_eval.api import metrics as _builtin  # noqa: F401  (fills the registry)
    from lm_eval.api.registry import metric_registry

    index = manager.task_index
    found: list[tuple[str, str]] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        if name in seen or (entry := index.get(name)) is None:
            return
        seen.add(name)
        kind = getattr(entry.kind, "name", str(entry.kind))
        cfg = entry.cfg or {}
        if kind == "TAG":
            members: list = sorted(entry.tags)
        elif kind == "GROUP":
            members = [t for t in cfg.get("task", []) if isinstance(t, str)]
        else:
            members = []
            for m in cfg.get("metric_list") or []:
                metric = m.get("metric") if isinstance(m, dict) else None
                if isinstance(metric, str) and (m.get("hf_evaluate") is True or metric not in metric_registry):
                    found.append((name, metric))
        for t in members:
            visit(t)

    for n in names:
        visit(n)
    return found


def check_hub_metrics(pairs: list[tuple[str, str]]) -> None:
    """Load each metric module `evaluate` would fetch (from its cache, else the hub) before any work:
    one that cannot be had is one line, not a run scored without it."""
    if not pairs:
        return
    try:
        import evaluate
    except ImportError:
        task, metric = pairs[0]
        raise GptkitError(
            f"lm-eval's task {task} scores with {metric!r} from the `evaluate` library: {INSTALL}"
        ) from None
    for metric in dict.fromkeys(m for _, m in pairs):
        try:
            with contextlib.redirect_stdout(sys.stderr):
                evaluate.load(metric)
        except Exception as e:  # noqa: BLE001  (any failure to fetch or build the module is the same finding)
            tasks = ", ".join(sorted({t for t, m in pairs if m == metric}))
            raise GptkitError(
                f"lm-eval's task{'s' if ',' in tasks else ''} {tasks} score{'' if ',' in tasks else 's'} with the metric {metric!r}, which the `evaluate` library fetches "
                f"from the Hugging Face Hub and cannot load here (offline, and not cached): {_first_line(e)}"
            ) from None


def _unreachable(url: str) -> str | None:
    """Why the endpoint gives no answer within 3 s (None: it answers, whatever the status)."""
    from gptkit.doctor.probes import EndpointProbe

    p = EndpointProbe(url, 3.0).result()
    return p.error if p.status is None else None


@contextmanager
def _harness_errors(endpoint: str, unreachable: str | None = None) -> Iterator[None]:
    """A dataset that cannot be had (offline and never cached, missing on the endpoint) as one line;
    anything else keeps its traceback. `unreachable`: the endpoint gave no answer, so the run was
    offline and a dataset not found is one not cached yet."""
    not_found = ("DatasetNotFoundError", "DataFilesNotFoundError", "EmptyDatasetError", "LocalEntryNotFoundError")
    why = f" ({unreachable})" if unreachable else ""

    def uncached(e: BaseException) -> GptkitError:
        return GptkitError(
            f"lm-eval's dataset cannot be fetched from {endpoint}{why} and is not cached yet: {_first_line(e)}"
        )

    try:
        yield
    except ConnectionError as e:
        raise uncached(e) from None
    except FileNotFoundError as e:
        if unreachable is not None and type(e).__module__.startswith(("datasets", "huggingface_hub")):
            raise uncached(e) from None
        if type(e).__module__.startswith("datasets"):
            raise GptkitError(f"lm-eval's dataset: {_first_line(e)}") from None
        if "Hugging Face Hub" in str(e):  # `evaluate.load` inside a task's own code (squadv2, noticia)
            raise GptkitError(
                f"a metric module lm-eval's task loads from the Hugging Face Hub cannot be had here: {_first_line(e)}"
            ) from None
        raise
    except Exception as e:
        if type(e).__name__ in not_found:
            if unreachable is not None:
                raise uncached(e) from None
            raise GptkitError(f"lm-eval's dataset on {endpoint}: {_first_line(e)}") from None
        raise


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return re.sub(r"\s+", " ", text[0]) if text else type(e).__name__
