"""Any model shape, any vocabulary (issue 13): models made by other projects, in those projects' own
layouts, keep their tokenizer and their shape through `gptkit convert` and `gptkit sample`.

- nanoGPT: a shakespeare_char-style ckpt.pt (character vocabulary in data/shakespeare_char/meta.pkl,
  exact GELU, bias=False) against a reference GPT written here in nanoGPT's layout.
- Hugging Face: a GPT2LMHeadModel with its own 1,000-token byte-level BPE, against transformers
  (the model, AutoTokenizer and generate) as ground truth, through every format and back.
"""

from __future__ import annotations

import json
import math
import pickle
import random

import pytest
import torch
import torch.nn as nn
from conftest import assert_one_line_error, run_cli

from gptkit.errors import GptkitError
from gptkit.formats.convert import FIXED_STRINGS, convert, load
from gptkit.models import load_for_sampling
from gptkit.tokenizer import get_tokenizer

# nanoGPT's data/shakespeare_char/prepare.py: the 65 characters of tinyshakespeare, sorted
SHAKESPEARE_CHARS = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


# --- a reference GPT in nanoGPT's layout (model.py), plain PyTorch --------------------------------


class RefAttention(nn.Module):
    def __init__(self, n_embd, n_head, bias):
        super().__init__()
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=bias)
        self.c_proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.n_head = n_head

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(k.size(-1))
        att = att.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf")).softmax(dim=-1)
        return self.c_proj((att @ v).transpose(1, 2).reshape(B, T, C))


class RefMLP(nn.Module):
    def __init__(self, n_embd, bias):
        super().__init__()
        self.c_fc = nn.Linear(n_embd, 4 * n_embd, bias=bias)
        self.gelu = nn.GELU()  # exact, as nanoGPT's
        self.c_proj = nn.Linear(4 * n_embd, n_embd, bias=bias)

    def forward(self, x):
        return self.c_proj(self.gelu(self.c_fc(x)))


class RefBlock(nn.Module):
    def __init__(self, n_embd, n_head, bias):
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd, bias=bias)
        self.attn = RefAttention(n_embd, n_head, bias)
        self.ln_2 = nn.LayerNorm(n_embd, bias=bias)
        self.mlp = RefMLP(n_embd, bias)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class RefGPT(nn.Module):
    def __init__(self, n_layer, n_head, n_embd, block_size, bias, vocab_size, dropout=0.0):
        super().__init__()
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(vocab_size, n_embd),
                wpe=nn.Embedding(block_size, n_embd),
                drop=nn.Dropout(dropout),
                h=nn.ModuleList([RefBlock(n_embd, n_head, bias) for _ in range(n_layer)]),
                ln_f=nn.LayerNorm(n_embd, bias=bias),
            )
        )
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # nanoGPT ties them this way round

    def forward(self, idx):
        pos = torch.arange(idx.size(1))
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x)
        return self.lm_head(self.transformer.ln_f(x))

    @torch.no_grad()
    def greedy(self, ids, n):
        idx = torch.tensor([ids])
        for _ in range(n):
            idx = torch.cat([idx, self(idx)[:, -1].argmax(-1, keepdim=True)], dim=1)
        return idx[0, len(ids) :].tolist()


def nanogpt_checkpoint(root, bias, seed=0):
    """out/ckpt.pt as nanoGPT's train.py saves it after torch.compile, and data/shakespeare_char/meta.pkl
    as its prepare.py writes it. Returns (ckpt path, reference model)."""
    args = dict(n_layer=2, n_head=2, n_embd=32, block_size=64, bias=bias, vocab_size=65, dropout=0.0)
    torch.manual_seed(seed)
    ref = RefGPT(**args).eval()
    with torch.no_grad():  # weights large enough that greedy choices are well separated
        for p in ref.parameters():
            p.normal_(0.0, 0.3)
    opt = torch.optim.AdamW(ref.parameters(), lr=1e-3)
    ckpt = {
        "model": {"_orig_mod." + k: v for k, v in ref.state_dict().items()},
        "optimizer": opt.state_dict(),
        "model_args": args,
        "iter_num": 5000,
        "best_val_loss": torch.tensor(1.4697),
        "config": {"out_dir": "out-shakespeare-char", "dataset": "shakespeare_char", "batch_size": 64, "bias": bias},
    }
    (root / "out-shakespeare-char").mkdir(parents=True)
    torch.save(ckpt, root / "out-shakespeare-char" / "ckpt.pt")
    data = root / "data" / "shakespeare_char"
    data.mkdir(parents=True)
    chars = list(SHAKESPEARE_CHARS)
    meta = {"vocab_size": 65, "itos": dict(enumerate(chars)), "stoi": {c: i for i, c in enumerate(chars)}}
    (data / "meta.pkl").write_bytes(pickle.dumps(meta))
    return root / "out-shakespeare-char" / "ckpt.pt", ref


def test_a_meta_pkl_of_another_vocabulary_is_refused(tmp_path):
    """nanoGPT writes meta.pkl's vocab_size into model_args: a meta.pkl that differs is not this model's
    (its characters would decode the wrong ids), never read as a smaller vocabulary plus padding."""
    ckpt, _ = nanogpt_checkpoint(tmp_path, bias=False)
    chars = list(SHAKESPEARE_CHARS[:60])
    meta = {"vocab_size": 60, "itos": dict(enumerate(chars)), "stoi": {c: i for i, c in enumerate(chars)}}
    (tmp_path / "data" / "shakespeare_char" / "meta.pkl").write_bytes(pickle.dumps(meta))
    with pytest.raises(GptkitError, match="vocab_size is 65 but .*meta.pkl has 60 characters"):
        load(ckpt)


def test_a_shape_the_source_does_not_record_is_said(tmp_path):
    """A bare state dict records neither its head count nor its activation: both guesses are notes
    (convert prints them; sample prints them as `gptkit: note:` lines)."""
    ckpt, _ = nanogpt_checkpoint(tmp_path, bias=True)
    sd = {k.removeprefix("_orig_mod."): v for k, v in torch.load(ckpt, weights_only=True)["model"].items()}
    torch.save(sd, tmp_path / "bare.pt")
    m = load(tmp_path / "bare.pt", tokenizer=tmp_path / "data" / "shakespeare_char" / "meta.pkl")
    assert m.config.n_head == 1 and any("number of heads: assuming 1" in n for n in m.notes)
    assert any("activation" in n for n in m.notes)
    r = run_cli(
        "sample", "RO", "--model", tmp_path / "bare.pt", "--tokenizer", tmp_path / "data" / "shakespeare_char" / "meta.pkl",
        "-n", "3", "--device", "cpu", check=True,
    )  # fmt: skip
    assert "gptkit: note: the source does not record its number of heads" in r.stderr


def test_a_prompt_the_vocabulary_cannot_spell_fails_before_any_output(tmp_path):
    ckpt, _ = nanogpt_checkpoint(tmp_path, bias=False)
    r = run_cli("sample", "ROMEO€", "--model", ckpt, "-n", "3", "--device", "cpu", cwd=tmp_path)
    line = assert_one_line_error(r)
    assert r.stdout == "" and "€" in line


def char_prompts(n=2, T=20):
    return torch.randint(0, 65, (n, T), generator=torch.Generator().manual_seed(3))


def gptkit_logits(model, idx):
    with torch.inference_mode():
        return model(idx)[0][..., : model.config.vocab_size]


@pytest.mark.parametrize("bias", [False, True])
def test_nanogpt_shakespeare_char_loads_exactly_and_converts(tmp_path, bias):
    ckpt, ref = nanogpt_checkpoint(tmp_path, bias)
    idx = char_prompts()
    with torch.no_grad():
        want = ref(idx)
    m = load(ckpt)  # from the test's cwd: meta.pkl is found under an ancestor of the checkpoint
    assert m.config.activation == "gelu" and m.config.bias is bias and m.config.vocab_size == 65
    assert m.tokenizer.kind == "chars" and m.tokenizer.chars == list(SHAKESPEARE_CHARS) and not m.notes
    assert (gptkit_logits(m.build_model(), idx) - want).abs().max().item() <= 1e-5
    net, tok, _ = load_for_sampling(ckpt, torch.device("cpu"))  # the decoding layout as well
    assert tok.vocab_hash == m.tokenizer.vocab_hash
    assert (gptkit_logits(net, idx) - want).abs().max().item() <= 1e-5

    for name, fmt in (("m.safetensors", "safetensors"), ("ck", "gptkit"), ("m.pt", "pt")):
        r = convert(ckpt, tmp_path / name, to=fmt)
        assert r.verification.tokenizer.status == "same ids" and r.verification.tokenizer.same_vocab_hash
        back = load(tmp_path / name)
        assert back.config == m.config and back.tokenizer.vocab_hash == m.tokenizer.vocab_hash
        assert (gptkit_logits(back.build_model(), idx) - want).abs().max().item() <= 1e-5, fmt
    # nanoGPT's sample.py on the written .pt: GPT(GPTConfig(**model_args)), a strict load_state_dict
    # and a draw over every row; so exactly the 65 real rows, or it could draw an id meta.pkl lacks
    obj = torch.load(tmp_path / "m.pt", weights_only=True)
    assert obj["model_args"]["vocab_size"] == 65 and obj["model"]["lm_head.weight"].shape[0] == 65
    theirs = RefGPT(**obj["model_args"]).eval()
    theirs.load_state_dict(obj["model"])
    with torch.no_grad():
        assert (theirs(idx) - want).abs().max().item() <= 1e-5
    if bias:  # HF's GPT-2 has an exact-GELU setting: transformers computes the same logits
        from transformers import GPT2LMHeadModel

        r = convert(ckpt, tmp_path / "hf", to="hf")
        assert any("no Hugging Face equivalent" in n for n in r.notes)
        assert json.loads((tmp_path / "hf" / "config.json").read_text())["activation_function"] == "gelu"
        with torch.no_grad():
            theirs = GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()(idx).logits
        assert (theirs - want).abs().max().item() <= 1e-5
        assert load(tmp_path / "hf").tokenizer.vocab_hash == m.tokenizer.vocab_hash  # from its tokenizer/ folder
    else:
        with pytest.raises(GptkitError, match="no bias=False"):
            convert(ckpt, tmp_path / "hf", to="hf")
    with pytest.raises(GptkitError, match="tanh GELU with biases"):
        convert(ckpt, tmp_path / "m.gguf")
    assert not (tmp_path / "hf").exists() or bias
    assert not (tmp_path / "m.gguf").exists()


def test_nanogpt_sample_cli_equals_the_reference_greedy_decode(tmp_path):
    ckpt, ref = nanogpt_checkpoint(tmp_path, bias=False)
    prompt = "ROMEO:\nO, "
    stoi = {c: i for i, c in enumerate(SHAKESPEARE_CHARS)}
    want = "".join(SHAKESPEARE_CHARS[i] for i in ref.greedy([stoi[c] for c in prompt], 40))
    args = ["sample", prompt, "--model", ckpt, "--temperature", "0", "--precision", "fp32", "--device", "cpu"]
    # nanoGPT's sample.py runs from the repository root: data/shakespeare_char/meta.pkl under the cwd
    out = json.loads(run_cli(*args, "-n", "40", "--json", cwd=tmp_path, check=True).stdout)
    assert out["samples"][0]["text"] == want and out["samples"][0]["tokens"] == 40

    # without its meta.pkl the model has no tokenizer: sampling asks for one, convert says so
    (tmp_path / "data" / "shakespeare_char" / "meta.pkl").rename(tmp_path / "meta.pkl")
    line = assert_one_line_error(run_cli(*args, "-n", "5", cwd=tmp_path))
    assert "--tokenizer" in line
    r = convert(ckpt, tmp_path / "bare.safetensors")
    assert r.tokenizer is None and any("will need --tokenizer" in n for n in r.notes)
    r = run_cli(*args, "-n", "40", "--json", "--tokenizer", tmp_path / "meta.pkl", cwd=tmp_path, check=True)
    assert json.loads(r.stdout)["samples"][0]["text"] == want
    line = assert_one_line_error(run_cli(*args, "-n", "5", "--tokenizer", "gpt2", cwd=tmp_path))
    assert "50257" in line and "65" in line  # checked against the model: never a wrong tokenizer


# --- a Hugging Face GPT-2 with its own vocabulary ----------------------------------------------------


def corpus(n_words=4000, seed=0):
    """Text varied enough for a 1,000-token BPE: made-up words, accents, CJK, digits, whitespace."""
    rng = random.Random(seed)
    syllables = "ka to ri men sa lu ve dor an is qu ell th ing é ñ ü 你 好 世 界 ar on".split()
    words = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(600)]
    text = " ".join(rng.choice(words) + rng.choice(["", "", ",", ".", "\n", "  "]) for _ in range(n_words))
    return [text, *FIXED_STRINGS, "The quick brown fox jumps over the lazy dog. " * 20]


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1000,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator(corpus(), trainer)
    assert tk.get_vocab_size() == 1000
    eot = tk.token_to_id("<|endoftext|>")
    d = tmp_path_factory.mktemp("hf") / "tiny-bpe-gpt2"
    PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>"
    ).save_pretrained(d)
    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=1000, n_positions=64, n_embd=32, n_layer=2, n_head=4, bos_token_id=eot, eos_token_id=eot
    )
    hf = GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0.0, 0.15)
    hf.save_pretrained(d)
    return d, hf


def hf_encodings(d):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(d)
    return [tok(s, add_special_tokens=False)["input_ids"] for s in FIXED_STRINGS]


def test_hf_bpe_model_round_trips_every_format_with_its_tokenizer(hf_model, tmp_path):
    from transformers import GPT2LMHeadModel

    src, hf = hf_model
    want_ids = hf_encodings(src)
    assert max(max(ids) for ids in want_ids) < 1000
    ours = get_tokenizer(src)
    assert ours.kind == "hf" and ours.vocab_size == 1000
    assert [ours.encode(s) for s in FIXED_STRINGS] == want_ids
    idx = torch.randint(0, 1000, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = hf(idx).logits
    m = load(src)
    assert m.tokenizer.vocab_hash == ours.vocab_hash and m.config.vocab_size == 1000 and not m.notes
    assert (gptkit_logits(m.build_model(), idx) - want).abs().max().item() <= 1e-5

    for name, fmt in (
        ("a", "hf"),
        ("b.gguf", "gguf"),
        ("c", "gptkit"),
        ("d.pt", "pt"),
        ("e.safetensors", "safetensors"),
    ):
        r = convert(src, tmp_path / name, to=fmt)
        assert r.verification.tokenizer.status == "same ids" and r.verification.tokenizer.same_vocab_hash, fmt
        assert load(tmp_path / name).config.vocab_size == 1000, fmt  # the real vocabulary, not the padded 1024
        back = tmp_path / f"back-{fmt}"
        r = convert(tmp_path / name, back, to="hf")
        assert r.verification.tokenizer.status == "same ids", fmt
        assert hf_encodings(back) == want_ids, fmt  # AutoTokenizer on the output encodes identically
        with torch.no_grad():
            got = GPT2LMHeadModel.from_pretrained(back).eval()(idx).logits
        assert (got - want).abs().max().item() <= 1e-5, fmt
    assert (tmp_path / "a" / "vocab.json").is_file() and (tmp_path / "a" / "merges.txt").is_file()

    import gguf

    reader = gguf.GGUFReader(str(tmp_path / "b.gguf"))
    f = reader.fields["tokenizer.ggml.tokens"]
    tokens = [bytes(f.parts[i]).decode() for i in f.data]
    assert len(tokens) == 1000 and tokens == [ours.tk.id_to_token(i) for i in range(1000)]
    assert bytes(reader.fields["tokenizer.ggml.model"].parts[-1]).decode() == "gpt2"
    assert len(reader.fields["tokenizer.ggml.merges"].data) == 1000 - 257
    assert "gptkit.tokenizer_json" not in reader.fields  # read back from llama.cpp's own fields


def test_hf_bpe_sample_cli_equals_transformers_greedy_generate(hf_model, tmp_path):
    src, hf = hf_model
    tok = get_tokenizer(src)
    prompt = "The quick brown fox, 你好"
    ids = tok.encode(prompt)
    with torch.no_grad():
        out = hf.generate(torch.tensor([ids]), max_new_tokens=20, do_sample=False, pad_token_id=tok.eot_token)
    new = out[0, len(ids) :].tolist()
    if tok.eot_token in new:  # both stop there; gptkit does not print the end-of-text token
        new = new[: new.index(tok.eot_token)]
    args = ["--temperature", "0", "--precision", "fp32", "--device", "cpu", "-n", "20", "--json"]
    convert(src, tmp_path / "m.gguf")
    for model in (src, tmp_path / "m.gguf"):  # the HF directory, and the GGUF's tokenizer.ggml vocabulary
        r = json.loads(run_cli("sample", prompt, "--model", model, *args, check=True).stdout)
        assert r["samples"][0]["text"] == tok.decode(new), model


def test_tokenizer_option_is_checked_never_a_silent_swap(hf_model, tmp_path):
    import shutil

    src, _ = hf_model
    bare = tmp_path / "bare"
    shutil.copytree(src, bare)
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (bare / f).unlink(missing_ok=True)
    m = load(bare)
    assert m.tokenizer is None and any("--tokenizer" in n for n in m.notes)
    line = assert_one_line_error(run_cli("sample", "hi", "--model", bare, "--device", "cpu"))
    assert "--tokenizer" in line
    r = convert(bare, tmp_path / "ck", to="gptkit", tokenizer=src / "tokenizer.json")
    assert r.verification.tokenizer.status == "same ids" and not any("--tokenizer" in n for n in r.notes)
    assert load(tmp_path / "ck").tokenizer.vocab_hash == get_tokenizer(src).vocab_hash
    line = assert_one_line_error(run_cli("convert", bare, tmp_path / "x.safetensors", "--tokenizer", "bytes"))
    assert "256 tokens" in line and "1000" in line
    # a model that carries its own tokenizer never has it replaced by another one
    with pytest.raises(GptkitError, match="carries its own tokenizer"):
        convert(src, tmp_path / "y.safetensors", tokenizer="gpt2")
    r = json.loads(run_cli("convert", src, tmp_path / "z.safetensors", "--json", check=True).stdout)
    assert r["checks"]["tokenizer"]["status"] == "same ids" and r["checks"]["logits"]["ok"]
    assert r["tokenizer_info"]["vocab_size"] == 1000 and r["config"]["vocab_size"] == 1000
