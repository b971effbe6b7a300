"""The training data stream: deterministic, shuffled across shards and documents, sliced per rank.

Also holds `make_dataset`, the small tokenized data set the other train tests use.
"""

import json

import numpy as np
import pytest

from gptkit.shards import write_shard

WORDS = ("the cat sat on a mat and the dog ran to the park while birds sang in tall green trees "
         "under a bright sun so every one was happy").split()


def make_dataset(root, *, docs_per_shard=60, train_shards=3, seed=0, vocab="bytes"):
    """Byte-level (or GPT-2 id) documents, each starting with the end-of-text token, as tokenize writes them."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    eot = 0 if vocab == "bytes" else 50256
    shards = []
    for i in range(train_shards + 1):
        split = "val" if i == 0 else "train"
        toks = []
        for _ in range(docs_per_shard):
            words = rng.choice(WORDS, size=int(rng.integers(5, 40)))
            if vocab == "bytes":
                toks += [eot] + list(" ".join(words).encode())
            else:
                toks += [eot] + list(rng.integers(0, 50256, size=len(words) * 2))
        name = f"{split}_{i:06d}.bin"
        write_shard(root / name, np.array(toks, dtype=np.uint16))
        shards.append({"filename": name, "split": split, "tokens": len(toks), "documents": docs_per_shard})
    manifest = {
        "format": "gptkit.shards", "version": 1, "tokenizer": "bytes" if vocab == "bytes" else "gpt2",
        "vocab_size": 256 if vocab == "bytes" else 50257, "eot": eot, "shards": shards,
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
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
    from gptkit.tokenize import find_shards

    d = make_dataset(tmp_path / "toy", docs_per_shard=30, train_shards=3)
    val, train, manifest = find_shards(d)
    return val, train, manifest


def test_an_epoch_is_every_document_once_in_a_shuffled_order(toy):
    from gptkit.shards import open_shard
    from gptkit.train.data import TokenStream

    _, train, _ = toy
    original = np.concatenate([np.asarray(open_shard(p)) for p in train])
    s = TokenStream(train, eot=0, seed=1)
    epoch = np.empty(s.total, dtype=np.int64)
    s.read(0, epoch)
    assert sorted(docs_of(epoch)) == sorted(docs_of(original))  # same documents, each intact
    assert docs_of(epoch) != docs_of(original)  # ... in another order
    # The next epoch reshuffles; reading across the boundary continues seamlessly.
    nxt = np.empty(s.total, dtype=np.int64)
    s.read(s.total, nxt)
    assert sorted(docs_of(nxt)) == sorted(docs_of(original)) and docs_of(nxt) != docs_of(epoch)
    span = np.empty(100, dtype=np.int64)
    s.read(s.total - 50, span)
    assert np.array_equal(span, np.concatenate([epoch[-50:], nxt[:50]]))


def test_order_is_a_function_of_the_seed_and_mixes_shards(toy):
    from gptkit.shards import open_shard
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
    # Consecutive rows are consecutive windows: the next row starts at this row's last target.
    assert np.array_equal(one[1:, 0], one[:-1, -1])


def test_validation_rows_are_split_across_ranks_without_overlap(toy):
    from gptkit.train.data import TokenStream, val_rows

    val, _, _ = toy
    s = TokenStream(val, eot=0, seed=0, shuffle=False)
    whole = np.concatenate(list(val_rows(s, 16, 512, 0, 1, 8)))
    parts = [np.concatenate(list(val_rows(s, 16, 512, r, 2, 3))) for r in range(2)]
    assert len(whole) == 32 and sum(len(p) for p in parts) == 32
    assert np.array_equal(whole[0::2], parts[0]) and np.array_equal(whole[1::2], parts[1])
