"""DecodeBatch: sequences of different lengths decoded together give each the tokens it gets alone."""

from functools import partial

import torch
from test_sample import random_model

from gptkit.generate import DecodeBatch, SampleConfig, generate, next_token


def alone(model, prompt, n):
    cfg = SampleConfig(max_new_tokens=n, temperature=0, stop_at_eot=False)
    return [int(t) for t in generate(model, prompt, cfg, vocab_size=256)]


def test_rows_joining_and_leaving_get_their_own_tokens():
    model = random_model(block_size=16)
    greedy = partial(next_token, vocab_size=256, temperature=0)
    prompts = {"a": [1, 2, 3], "b": list(range(5, 17)), "c": [9], "d": [4, 4, 4, 4, 4, 4, 4]}
    n = 30  # past the 16-token context: each row's window restarts at its own step
    got: dict[str, list[int]] = {k: [] for k in prompts}
    with torch.inference_mode():
        batch = DecodeBatch(model, capacity=3)
        first = batch.add([torch.tensor(prompts[k]) for k in "ab"], [greedy, greedy], keys=["a", "b"])
        for k, t in zip("ab", first.tolist(), strict=True):
            got[k].append(t)
        joined = False
        while len(batch):
            if len(got["a"]) == 7 and not joined:  # c joins mid-way; after a leaves, d takes its row
                joined = True
                got["c"].append(int(batch.add([torch.tensor(prompts["c"])], [greedy], keys=["c"])[0]))
                continue
            for k, t in zip(list(batch.keys), batch.step().tolist(), strict=True):
                got[k].append(t)
                if len(got[k]) == n:
                    batch.remove(k)
                    if k == "a":
                        got["d"].append(int(batch.add([torch.tensor(prompts["d"])], [greedy], keys=["d"])[0]))
        batch.close()
    for k, p in prompts.items():
        assert got[k] == alone(model, p, n), k
