"""HellaSwag scoring against a brute-force reference: one forward pass per predicted token."""

import contextlib
import json

import pytest
import torch

from gptkit.model import GPT, get_preset
from gptkit.tokenizer import get_tokenizer
from gptkit.train import hellaswag

EXAMPLES = [
    {
        "ctx": "A man is sitting on a roof. he",
        "endings": [
            "is using wrap to wrap a pair of skis.",
            "is ripping level tiles off.",
            "is holding a rubik's cube.",
            "starts pulling up roofing on a roof.",
        ],
        "label": "3",
    },
    {
        "ctx": "The cat",
        "endings": ["sat.", "ran away from the big dog in the yard.", "is", "jumps onto the table and eats the fish"],
        "label": 1,
    },
    {
        "ctx": "She opens the oven and",
        "endings": ["takes out a tray of cookies.", "x", "sings loudly", "the oven is opened by her hand quickly"],
        "label": "0",
    },
    {
        "ctx": "Two kids play",
        "endings": ["chess.", "in the park with a red ball", "quietly", "and then they go home to sleep"],
        "label": 2,
    },
    {
        "ctx": "He lifts the",
        "endings": ["weights", "box over his head and smiles", "car", "heavy bag of sand onto the truck"],
        "label": 0,
    },
]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny ops on a busy 2-core machine run far faster on one thread than two spinning ones."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def model():
    torch.manual_seed(0)
    m = GPT(get_preset("tiny").with_vocab(256))
    # A model with opinions: sharpen the random init so the four endings score differently.
    with torch.no_grad():
        m.transformer.wte.weight.mul_(20)
    return m.eval()


def brute_force_losses(model, tok, ex, keep=None):
    """Summed negative log-likelihood of each ending's tokens and their count, one full forward per
    token; keep: each row is the last `keep` tokens of context + ending, so a prefix starts where
    that window does (the truncation rule)."""
    ctx = tok.encode(ex.ctx)
    out = []
    for ending in ex.endings:
        end = tok.encode(" " + ending)
        nll = 0.0
        start = max(0, len(ctx) + len(end) - keep) if keep else 0
        for j, t in enumerate(end):
            prefix = (ctx + end[:j])[start:]
            with torch.no_grad():
                logits, _ = model(torch.tensor([prefix]))
            nll -= torch.log_softmax(logits[0, -1].double(), dim=-1)[t].item()
        out.append((nll, len(end)))
    return out


def argmin(xs):
    return min(range(len(xs)), key=xs.__getitem__)


def test_scores_match_brute_force(model, tmp_path):
    f = tmp_path / "hellaswag" / "validation.jsonl"
    f.parent.mkdir()
    f.write_text("".join(json.dumps(e) + "\n" for e in EXAMPLES))
    examples = hellaswag.load_examples(hellaswag.find_hellaswag(tmp_path / "hellaswag"))
    assert [e.label for e in examples] == [3, 1, 0, 2, 0]
    tok = get_tokenizer("bytes")
    correct = {"token": 0, "sum": 0, "char": 0}
    preds = set()
    differ = 0
    for ex in examples:
        rows, masks, cut = hellaswag.encode_example(ex, tok, model.config.block_size)
        chars = [len(e) for e in ex.endings]
        pred, pred_sum, pred_char, means = hellaswag.score_example(
            model, rows, masks, "cpu", contextlib.nullcontext, chars
        )
        ref = brute_force_losses(model, tok, ex)
        assert not cut
        assert means == pytest.approx([nll / n for nll, n in ref], rel=1e-4)
        # per token (build-nanogpt, llm.c), summed, per character of the ending (lm-eval's acc_norm)
        ref_token = argmin([nll / n for nll, n in ref])
        ref_sum = argmin([nll for nll, _ in ref])
        ref_char = argmin([nll / c for (nll, _), c in zip(ref, chars, strict=True)])
        assert (pred, pred_sum, pred_char) == (ref_token, ref_sum, ref_char)
        correct["token"] += ref_token == ex.label
        correct["sum"] += ref_sum == ex.label
        correct["char"] += ref_char == ex.label
        differ += ref_token != ref_char
        preds.add(pred)
    assert len(preds) > 1  # the check above is not vacuous: predictions vary
    assert differ  # and the two normalisations disagree on some example, so each is tested
    r = hellaswag.evaluate(model, examples, tok, device="cpu", autocast=contextlib.nullcontext)
    assert r["n"] == 5 and r["truncated"] == 0
    assert r["acc_norm_token"] == correct["token"] / 5
    assert r["acc_norm_char"] == correct["char"] / 5
    assert r["acc"] == correct["sum"] / 5


def test_an_example_longer_than_the_context_is_cut_from_the_left_and_counted(model):
    """The stated rule: the last block_size tokens; the context loses its start, the ending is whole."""
    block = model.config.block_size
    long_ctx = "The river ran past the old mill and on to the sea. " * (block // 40)
    examples = [
        hellaswag.Example(long_ctx, EXAMPLES[0]["endings"], 3),
        hellaswag.Example(**{**EXAMPLES[1], "label": 1}),
    ]
    tok = get_tokenizer("bytes")
    assert len(tok.encode(long_ctx)) > block
    rows, masks, cut = hellaswag.encode_example(examples[0], tok, block)
    assert cut and all(len(r) == block for r in rows)
    ref = brute_force_losses(model, tok, examples[0], keep=block)
    _, _, _, means = hellaswag.score_example(model, rows, masks, "cpu", contextlib.nullcontext)
    assert means == pytest.approx([nll / n for nll, n in ref], rel=1e-4)  # every ending token scored
    r = hellaswag.evaluate(model, examples, tok, device="cpu", autocast=contextlib.nullcontext)
    assert r["n"] == 2 and r["truncated"] == 1


def test_reads_parquet_with_string_labels_and_rejects_bad_rows(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    d = tmp_path / "hellaswag" / "data"
    d.mkdir(parents=True)
    pq.write_table(
        pa.Table.from_pylist([{"ctx": e["ctx"], "endings": e["endings"], "label": str(e["label"])} for e in EXAMPLES]),
        d / "validation-00000-of-00001.parquet",
    )
    pq.write_table(pa.Table.from_pylist([{"ctx": "x", "endings": ["a"] * 4, "label": "1"}]), d / "train-00000.parquet")
    files = hellaswag.find_hellaswag(tmp_path / "hellaswag")
    assert [f.name for f in files] == ["validation-00000-of-00001.parquet"]  # the validation split only
    ex = hellaswag.load_examples(files, limit=3)
    assert len(ex) == 3 and ex[0].label == 3 and len(ex[0].endings) == 4
    bad = tmp_path / "bad" / "val.jsonl"
    bad.parent.mkdir()
    bad.write_text(json.dumps({"ctx": "x", "endings": ["a", "b"], "label": 0}) + "\n")
    from gptkit.errors import GptkitError

    with pytest.raises(GptkitError, match="4 endings"):
        hellaswag.load_examples([bad])
