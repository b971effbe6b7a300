"""The optimizers: which parameter goes to which group, and the builder (gptkit/train/optim.py)."""

import torch

from gptkit.model import GPT, GPTConfig
from gptkit.train.config import TrainConfig
from gptkit.train.optim import adamw_groups, build_optimizers, model_groups


def small_config() -> GPTConfig:
    return GPTConfig(block_size=64, vocab_size=300, padded_vocab_size=320, n_layer=3, n_head=4, n_embd=64)


def test_groups_cover_each_parameter_once():
    model = GPT(small_config())
    g = model_groups(model)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(names[id(p)].startswith("transformer.h.") and p.dim() == 2 for p in g["matrix"])
    assert sorted(names[id(p)] for p in g["embedding"]) == ["transformer.wpe.weight", "transformer.wte.weight"]
    assert all(p.dim() == 1 for p in g["gain"])
    assert model.lm_head.weight is model.transformer.wte.weight  # the tied head: decayed once, as wte
    n = sum(p.numel() for ps in g.values() for p in ps)
    assert n == model.num_params(non_embedding=False)


def test_adamw_groups_keep_the_checkpoint_order():
    """The decayed group is every >= 2-D parameter in the model's order (the order a checkpoint's
    optimizer state was written in before optim.py existed), the other group the 1-D ones."""
    model = GPT(small_config())
    decay, no_decay = adamw_groups(model, 0.1)
    assert [id(p) for p in decay["params"]] == [id(p) for p in model.parameters() if p.dim() >= 2]
    assert [id(p) for p in no_decay["params"]] == [id(p) for p in model.parameters() if p.dim() < 2]
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.1, 0.0)
    (opt,) = build_optimizers(TrainConfig(weight_decay=0.05), model, torch.device("cpu"))
    assert isinstance(opt, torch.optim.AdamW) and opt.param_groups[0]["weight_decay"] == 0.05
