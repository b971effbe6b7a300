"""`gptkit eval --tasks` (lm-evaluation-harness over gptkit's own model) against `lm_eval --model hf` on
the same checkpoint's HF export: lm-eval's own task definitions, tiny copies of their datasets in the
real repo layouts served by gptkit's mirror, one run per backend and vocabulary (GPT-2's and bytes).
Every request's log-likelihood agrees to 1e-4 (lm-eval's logged samples), every generated text and
greedy flag exactly, every metric exactly (perplexities, exp of a mean of those log-likelihoods, to
1e-6 relative)."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch
from conftest import assert_one_line_error, run_cli
from hubfixtures import make_lm_eval_repos, running_mirror

TASKS = "hellaswag,arc_easy,piqa,lambada_openai,wikitext,gsm8k"  # loglikelihood x4, rolling, generate_until
LIMIT = "4"
BLOCK = 256
# Few-shot on (one example from each task's few-shot split), generation short: gsm8k's 256 tokens
# would be most of the test's time.
OPTIONS = ("--limit", LIMIT, "--num-fewshot", "1", "--gen-kwargs", "max_gen_toks=24")
EXACT_TOL = 1e-4


def tiny_checkpoint(folder, vocab):
    from gptkit.checkpoint import save_checkpoint
    from gptkit.model import GPT, GPTConfig

    V, padded = (50257, 50304) if vocab == "gpt2" else (256, 256)
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=BLOCK, vocab_size=V, padded_vocab_size=padded, n_layer=2, n_head=2, n_embd=32))
    with torch.no_grad():  # a model with opinions, so greedy flags and argmaxes are not all ties
        model.transformer.wte.weight.mul_(8)
    return save_checkpoint(folder, model, config=model.config, tokenizer=vocab)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from gptkit.formats.convert import convert

    root = tmp_path_factory.mktemp("harness")
    make_lm_eval_repos(root / "hub")
    models = {}
    for vocab in ("gpt2", "bytes"):
        ck = tiny_checkpoint(root / "runs" / f"r_{vocab}" / "step_000010", vocab)
        convert(ck, root / f"hf_{vocab}", to="hf")
        models[vocab] = ck
    with running_mirror(root / "hub") as server:
        yield root, models, server


def samples_by_request(lines):
    """{(task, doc_id): filtered responses} from lm-eval's sample records."""
    return {(s["task"], s["doc_id"]): s for s in lines}


def lm_eval_hf(root, vocab, server):
    out = root / f"lm_eval_{vocab}"
    env = {
        **os.environ,
        "HF_ENDPOINT": server.url,
        "HF_HUB_CACHE": str(root / "hf_cache"),
        "HF_DATASETS_CACHE": str(root / "ds_cache"),
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_OFFLINE": "0",
    }
    args = [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args"]
    args += [f"pretrained={root / f'hf_{vocab}'},dtype=float32", "--tasks", TASKS, "--device", "cpu"]
    args += ["--batch_size", "1", "--log_samples", "--output_path", str(out), "--limit", LIMIT]
    args += ["--num_fewshot", "1", "--gen_kwargs", "max_gen_toks=24"]
    r = subprocess.run(args, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    (results,) = out.rglob("results_*.json")
    samples = []
    for f in out.rglob("samples_*.jsonl"):
        task = f.name.removeprefix("samples_").rsplit("_", 1)[0]
        samples += [{"task": task, **json.loads(line)} for line in f.read_text().splitlines() if line.strip()]
    return json.loads(results.read_text()), samples


def gptkit_eval(root, vocab, server, *extra, endpoint=None):
    env = {"GPTKIT_HOME": str(root / "home"), "HF_ENDPOINT": endpoint or server.url}
    r = run_cli(
        "eval", root / "runs" / f"r_{vocab}" / "step_000010", "--device", "cpu", "--precision", "fp32", *extra, env=env
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def as_float(x):
    return float(x) if not isinstance(x, list) else [as_float(v) for v in x]


@pytest.mark.parametrize("vocab", ["gpt2", "bytes"])
def test_tasks_equal_lm_eval_hf_on_the_export(world, vocab, tmp_path):
    root, models, server = world
    hf_results, hf_samples = lm_eval_hf(root, vocab, server)
    r = gptkit_eval(root, vocab, server, "--tasks", TASKS, *OPTIONS, "--batch-size", "3", "--log-samples", "--json")
    ours = json.loads(r.stdout)["lm_eval"]
    saved = json.loads(open(ours["saved"]).read())
    # Saved beside the checkpoint, named with every task's version and lm-eval's.
    assert ours["saved"].startswith(str(models[vocab].parent / "evals" / "step_000010__arc_easy-v1.0_gsm8k-v3.0"))
    assert ours["saved"].endswith(f"__lm-eval-{ours['lm_eval']}.json") and "wikitext-v2.0" in ours["saved"]
    assert saved["versions"] == hf_results["versions"] and saved["n-shot"] == hf_results["n-shot"]

    mine = samples_by_request(json.loads(line) for line in open(ours["samples"]))
    theirs = samples_by_request(hf_samples)
    assert mine.keys() == theirs.keys() and len(mine) == 6 * int(LIMIT)
    kinds = set()
    for key, s in theirs.items():
        a, b = mine[key]["resps"], s["resps"]
        # the same prompts, few-shot examples included (lm-eval's file spells each request's args out)
        assert mine[key]["arguments"] == [list(g.values()) for g in s["arguments"].values()], key
        for x, y in zip(a, b, strict=True):
            (x,), (y,) = x, y
            if isinstance(y, list):  # loglikelihood: [logprob, is_greedy]
                kinds.add("loglikelihood")
                assert abs(float(x[0]) - float(y[0])) < EXACT_TOL, (key, x, y)
                assert str(x[1]) == str(y[1]), (key, x, y)
            elif key[0] == "wikitext":
                kinds.add("rolling")
                assert abs(float(x) - float(y)) < EXACT_TOL, (key, x, y)
            else:
                kinds.add("generate_until")
                assert x == y, key
    assert kinds == {"loglikelihood", "rolling", "generate_until"}

    for task, metrics in hf_results["results"].items():
        for k, v in metrics.items():
            if "stderr" in k or not isinstance(v, int | float):
                continue
            got = saved["results"][task][k]
            if "perplexity" in k or "bits_per_byte" in k:
                assert got == pytest.approx(v, rel=1e-6), (task, k)
            else:
                assert got == v, (task, k)


def test_second_run_works_offline_and_text_files_score_as_lm_eval_defines(world, tmp_path):
    """After one run (the test above), lm-eval's datasets come from $GPTKIT_HOME with the endpoint
    unreachable; --text: total log-likelihood, nats/token and bits/byte of lm-eval's rolling windows."""
    root, models, server = world
    dead = "http://127.0.0.1:9"
    first = gptkit_eval(root, "bytes", server, "--tasks", "piqa,wikitext", "--limit", "2", "--json")
    again = gptkit_eval(root, "bytes", server, "--tasks", "piqa,wikitext", "--limit", "2", "--json", endpoint=dead)
    assert json.loads(again.stdout)["lm_eval"]["rows"] == json.loads(first.stdout)["lm_eval"]["rows"]
    # the endpoint gives no answer: the run is offline, the cache used at once (no request retried)
    assert "offline mode" in again.stderr
    assert (root / "home" / "lm-eval" / "datasets").is_dir()
    # a dataset never fetched, endpoint unreachable: one line
    line = assert_one_line_error(
        run_cli(
            "eval",
            models["bytes"],
            "--tasks",
            "arc_easy",
            "--limit",
            "1",
            "--device",
            "cpu",
            "--json",
            env={"GPTKIT_HOME": str(tmp_path / "fresh"), "HF_ENDPOINT": dead},
        )
    )
    assert "cannot be fetched from http://127.0.0.1:9" in line
    # a metric lm-eval scores through `evaluate` (fetched from the hub) that cannot be had: one line
    # before the model loads or a dataset is fetched, not a run scored without it (polemo2: a tag)
    offline = {"GPTKIT_HOME": str(tmp_path / "fresh"), "HF_ENDPOINT": dead, "HF_HUB_OFFLINE": "1"}
    line = assert_one_line_error(
        run_cli("eval", models["bytes"], "--tasks", "hellaswag,polemo2", "--limit", "1", cwd=tmp_path, env=offline)
    )
    assert "tasks polemo2_in, polemo2_out score with the metric 'f1'" in line and "Hugging Face Hub" in line

    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
    from transformers import AutoModelForCausalLM

    from gptkit.tokenizer import get_tokenizer

    text = "The river ran past the old mill, and on to the sea; héllo 世界. " * 12  # > 2 windows of 256 bytes
    f = tmp_path / "a.txt"
    f.write_text(text, encoding="utf-8")
    r = gptkit_eval(root, "bytes", server, "--text", f, "--json")
    got = json.loads(r.stdout)["text"]["files"][0]
    hf = AutoModelForCausalLM.from_pretrained(root / "hf_bytes", dtype=torch.float32).eval()
    ids = get_tokenizer("bytes").encode(text)
    total = 0.0
    for ctx, cont in map(make_disjoint_window, get_rolling_token_windows(ids, 0, BLOCK, 1)):
        x = torch.tensor([(ctx + cont)[:-1]])
        with torch.no_grad():
            logp = torch.log_softmax(hf(x).logits[0].float(), -1)[-len(cont) :]
        total += float(logp.gather(-1, torch.tensor(cont).unsqueeze(-1)).sum())
    assert len(ids) > 2 * BLOCK and got["tokens"] == len(ids) and got["bytes"] == len(text.encode())
    assert got["loglikelihood"] == pytest.approx(total, abs=1e-3)
    assert got["nats_per_token"] == pytest.approx(-total / len(ids), rel=1e-5)
    assert got["bits_per_byte"] == pytest.approx(-total / len(text.encode()) / math.log(2), rel=1e-5)
    table = gptkit_eval(root, "bytes", server, "--text", f).stdout
    assert "bits/byte" in table and f"{got['bits_per_byte']:.4f}" in table


def test_without_lm_eval_tasks_is_one_line_naming_the_install(world, tmp_path):
    """An environment without lm-eval: `--tasks` fails in one line, before loading or downloading."""
    root, models, _ = world
    hide = tmp_path / "hide"
    (hide / "lm_eval").mkdir(parents=True)
    (hide / "lm_eval" / "__init__.py").write_text("raise ImportError('No module named lm_eval')\n")
    env = {"PYTHONPATH": str(hide), "GPTKIT_HOME": str(root / "home")}
    line = assert_one_line_error(run_cli("eval", models["gpt2"], "--tasks", "hellaswag", env=env))
    assert "pip install 'gptkit[eval]'" in line


def test_rolling_windows_are_lm_evals():
    """gptkit.harness.rolling_windows (also --text's, which needs no lm-eval) against lm-eval's own."""
    import random

    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    from gptkit.harness import rolling_windows

    rng = random.Random(0)
    for n in (0, 1, 5, 255, 256, 257, 300, 512, 513, 1000):
        for block in (1, 4, 7, 256):
            toks = [rng.randrange(100) for _ in range(n)]
            theirs = [make_disjoint_window(w) for w in get_rolling_token_windows(toks, 999, block, 1)]
            assert [tuple(w) for w in rolling_windows(toks, 999, block)] == [tuple(w) for w in theirs], (n, block)
