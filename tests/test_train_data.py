"""The training data stream: deterministic, shuffled across shards and documents, sliced per rank.

Also holds `make_dataset`, the small tokenized data set the other train tests use.
"""

import json

import numpy as np
import pytest

WORDS = (
    "the cat sat on a mat and the dog ran to the park while birds sang in tall green trees "
    "under a bright sun so every one was happy"
).split()


def make_dataset(root, *, docs=240, seed=0, shard_tokens=8000, val_tokens=3000):
    """A byte-level data set made by `gptkit tokenize` itself from generated JSONL documents."""
    from gptkit.data.tokenize import Settings, tokenize

    rng = np.random.default_rng(seed)
    src = root.parent / f".{root.name}-src"
    src.mkdir(parents=True, exist_ok=True)
    with open(src / "docs.jsonl", "w") as f:
        for _ in range(docs):
            f.write(json.dumps({"text": " ".join(rng.choice(WORDS, size=int(rng.integers(5, 40))))}) + "\n")
    tokenize(str(src), root, Settings(tokenizer="bytes", shard_tokens=shard_tokens, val_tokens=val_tokens), workers=1)
    return root


def docs_of(tokens, eot=0):
    """Documents as tuples, split before each end-of-text token."""
    out, cur = [], []
    for t in tokens:
        if t == eot and cur:
            out.append(tuple(cur))
            cur = []
        cur.append(int(t))
    if cur:
        out.append(tuple(cur))
    return out


@pytest.fixture
def toy(tmp_path):
    from gptkit.data.shards import find_shards

    d = make_dataset(tmp_path / "toy", docs=120, shard_tokens=2000)
    val, train, manifest = find_shards(d)
    return val, train, manifest


def test_an_epoch_is_every_document_once_in_a_shuffled_order(toy):
    from gptkit.data.shards import open_shard
    from gptkit.train.data import TokenStream

    _, train, _ = toy
    shards = [np.asarray(open_shard(p)) for p in train]
    original = np.concatenate(shards)
    # Documents wholly inside one shard (tokenize cuts the last one of a shard at the boundary).
    whole = [d for sh in shards for d in docs_of(sh)[:-1] if d[0] == 0]
    s = TokenStream(train, eot=0, seed=1)
    epoch = np.empty(s.total, dtype=np.int64)
    s.read(0, epoch)

    def intact(stream_docs):
        # a whole document appears as one piece (perhaps followed by the cut-off head of another shard's first one)
        return all(any(d[: len(f)] == f for d in stream_docs) for f in whole)

    assert np.array_equal(np.sort(epoch), np.sort(original))  # every token once
    assert intact(docs_of(epoch))
    assert docs_of(epoch) != docs_of(original)  # ... in another order
    # The next epoch reshuffles; reading across the boundary continues seamlessly.
    nxt = np.empty(s.total, dtype=np.int64)
    s.read(s.total, nxt)
    assert np.array_equal(np.sort(nxt), np.sort(original)) and intact(docs_of(nxt))
    assert not np.array_equal(nxt, epoch)
    span = np.empty(100, dtype=np.int64)
    s.read(s.total - 50, span)
    assert np.array_equal(span, np.concatenate([epoch[-50:], nxt[:50]]))


def test_order_is_a_function_of_the_seed_and_mixes_shards(toy):
    from gptkit.data.shards import open_shard
    from gptkit.train.data import TokenStream

    _, train, _ = toy
    owner = {}
    for i, p in enumerate(train):
        for d in docs_of(open_shard(p)):
            owner[d] = i
    firsts = set()
    for seed in range(6):
        a, b = (TokenStream(train, eot=0, seed=seed) for _ in range(2))
        x, y = np.empty(3000, dtype=np.int64), np.empty(3000, dtype=np.int64)
        a.read(123, x)
        b.read(123, y)
        assert np.array_equal(x, y)
        e = np.empty(a.total, dtype=np.int64)
        a.read(0, e)
        firsts.add(owner[docs_of(e)[0]])
    assert len(firsts) > 1  # which shard an epoch starts with depends on the seed


def test_ranks_split_each_step_the_same_way_for_any_world_size(toy):
    from gptkit.train.data import TokenStream, TrainBatches

    _, train, _ = toy
    stream = TokenStream(train, eot=0, seed=3)
    T, pos = 16, 5000

    def global_rows(world, micro_batch, accum):
        per = {}
        for r in range(world):
            tb = TrainBatches(stream, T, micro_batch, r, world)
            for m in range(accum):
                per[(m, r)] = tb.get(pos, m)
        return np.concatenate([per[(m, r)] for m in range(accum) for r in range(world)])

    one = global_rows(1, 4, 2)
    assert np.array_equal(one, global_rows(2, 4, 1))
    assert np.array_equal(one, global_rows(2, 2, 2))
    assert np.array_equal(one, global_rows(4, 2, 1))
    # The rows are shuffled windows, not a run of consecutive ones (which share documents).
    assert not np.array_equal(one[1:, 0], one[:-1, -1])


def test_an_epoch_of_steps_reads_every_window_once_shuffled_within_chunks(toy, monkeypatch):
    from gptkit.train import data
    from gptkit.train.data import TokenStream, TrainBatches

    _, train, _ = toy
    T = 16
    monkeypatch.setattr(data, "WINDOW_CHUNK_TOKENS", 40 * T)  # chunks of 40 windows
    stream = TokenStream(train, eot=0, seed=5)
    epoch = np.empty(stream.total + 1, dtype=np.int64)
    stream.read(0, epoch)
    tb = TrainBatches(stream, T, 4, 0, 1)
    n = stream.total // T
    starts = [tb.window_start(w) for w in range(n)]
    assert sorted(starts) == [k * T for k in range(n)]  # every window of the epoch once
    assert starts != sorted(starts)  # in a shuffled order ...
    assert all(
        c * 40 * T <= s < (c + 1) * 40 * T for k, s in enumerate(starts) for c in [k // 40]
    )  # ... within its chunk
    rows = np.concatenate([tb.get(step * 4 * T, 0) for step in range(n // 4)])
    assert all(np.array_equal(r, epoch[s : s + T + 1]) for r, s in zip(rows, starts[: len(rows)], strict=True))
    # The next epoch is shuffled anew, from the next epoch of the stream.
    later = [tb.window_start(n + w) - stream.total for w in range(n)]
    assert sorted(later) == sorted(starts) and later != starts
    # The order is a function of the seed alone: a fresh reader (a resumed run) reads the same rows.
    again = TrainBatches(TokenStream(train, eot=0, seed=5), T, 4, 0, 1)
    assert np.array_equal(again.get(7 * 4 * T, 0), tb.get(7 * 4 * T, 0))


def test_the_batch_copier_gives_the_rows_through_reused_buffers_unpinned_on_the_cpu(toy):
    """The copy path the trainer runs (on CUDA: pinned buffers, non-blocking copies), here on the CPU
    with pinning skipped: the same inputs and targets as the rows, two host buffers reused in turn,
    and a refilled buffer never changes a batch already handed out."""
    import torch

    from gptkit.train.data import BatchCopier, TokenStream, TrainBatches

    _, train, _ = toy
    T = 16
    tb = TrainBatches(TokenStream(train, eot=0, seed=3), T, 4, 0, 1)
    copier = BatchCopier(tb, torch.device("cpu"))
    assert len(copier.host) == 2 and not any(h.is_pinned() for h in copier.host)
    storages = {h.data_ptr() for h in copier.host}
    got = [copier.get(pos, m) for pos in (0, 4 * T, 8 * T) for m in (0, 1)]  # 6 batches through 2 buffers
    want = [tb.get(pos, m) for pos in (0, 4 * T, 8 * T) for m in (0, 1)]
    for (x, y), rows in zip(got, want, strict=True):
        assert x.dtype == y.dtype == torch.int64 and x.is_contiguous() and y.is_contiguous()
        assert np.array_equal(x.numpy(), rows[:, :-1]) and np.array_equal(y.numpy(), rows[:, 1:])
        assert x.data_ptr() not in storages and y.data_ptr() not in storages  # copies, not views
    assert {h.data_ptr() for h in copier.host} == storages and copier.done == [None, None]


def test_validation_rows_are_split_across_ranks_without_overlap(toy):
    from gptkit.train.data import TokenStream, val_rows

    val, _, _ = toy
    s = TokenStream(val, eot=0, seed=0, shuffle=False)
    whole = np.concatenate(list(val_rows(s, 16, 512, 0, 1, 8)))
    parts = [np.concatenate(list(val_rows(s, 16, 512, r, 2, 3))) for r in range(2)]
    assert len(whole) == 32 and sum(len(p) for p in parts) == 32
    assert np.array_equal(whole[0::2], parts[0]) and np.array_equal(whole[1::2], parts[1])


def test_a_vocabulary_without_end_of_text_makes_each_shard_one_document(tmp_path):
    """nanoGPT's character data: no end-of-text token, so shards are shuffled but never cut up."""
    from gptkit.data.shards import make_header
    from gptkit.train.data import TokenStream

    paths = []
    for i, n in enumerate([300, 500, 200]):
        p = tmp_path / f"train_{i:06d}.bin"
        p.write_bytes(make_header(n) + (np.arange(n) % 7 + 10 * i).astype("<u2").tobytes())
        paths.append(p)
    s = TokenStream(paths, eot=None, seed=4)
    pieces = [np.asarray(np.fromfile(p, "<u2", offset=1024)) for p in paths]
    seen = set()
    for epoch in range(4):
        e = np.empty(s.total, dtype=np.int64)
        s.read(epoch * s.total, e)
        pos, order = 0, []
        while pos < len(e):  # each shard appears whole, in this epoch's order
            i = next(i for i, p in enumerate(pieces) if np.array_equal(e[pos : pos + len(p)], p))
            order.append(i)
            pos += len(pieces[i])
        assert sorted(order) == [0, 1, 2]
        seen.add(tuple(order))
    assert len(seen) > 1
