"""Conversion: transformers is the ground truth for HF, gguf's own reader for GGUF; nanoGPT and
build-nanogpt checkpoints built here with the dict structure those projects save; bad input."""

import dataclasses
import json
import os
import pickle
import sys

import pytest
import torch
from conftest import assert_one_line_error, run_cli

from gptkit.checkpoint import load_checkpoint, save_checkpoint
from gptkit.errors import GptkitError
from gptkit.formats import registry
from gptkit.formats.convert import convert, detect_format, load
from gptkit.generate import SampleConfig, generate
from gptkit.model import GPT, GPTConfig
from gptkit.models import load_for_sampling
from gptkit.tokenizer import get_tokenizer

GPT2_V = 50257


def random_model(vocab=GPT2_V, padded=50304, seed=0, **kw) -> GPT:
    cfg = dict(block_size=32, vocab_size=vocab, padded_vocab_size=padded, n_layer=2, n_head=4, n_embd=32)
    cfg.update(kw)
    torch.manual_seed(seed)
    model = GPT(GPTConfig(**cfg)).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # non-trivial weights everywhere, biases and LayerNorms included
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def logits(model, idx):
    with torch.inference_mode():
        return model(idx)[0][..., : model.config.vocab_size]


def prompt(vocab=GPT2_V, T=12):
    return torch.randint(0, vocab, (2, T), generator=torch.Generator().manual_seed(5))


@pytest.fixture(scope="module")
def gpt2_ck(tmp_path_factory):
    """A tiny model with GPT-2's vocabulary; its padded rows are zero, as HF's cropped export restores them."""
    model = random_model()
    with torch.no_grad():
        model.transformer.wte.weight[GPT2_V:] = 0
    path = save_checkpoint(tmp_path_factory.mktemp("ck") / "step_000100", model, config=model.config, tokenizer="gpt2")
    return model, path


# --- Hugging Face ------------------------------------------------------------------------------


def test_an_hf_model_resized_to_a_padded_vocabulary_loads_with_its_tokenizer(gpt2_ck, tmp_path):
    """transformers' resize_token_embeddings(50304), nanoGPT's size: the 47 rows past GPT-2's tokenizer
    are padding (said in a note), not a mismatch; logits over the real vocabulary are transformers'."""
    from transformers import GPT2LMHeadModel

    _, ck = gpt2_ck
    convert(ck, tmp_path / "hf", to="hf")
    hf = GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    hf.resize_token_embeddings(50304, mean_resizing=False)
    hf.save_pretrained(tmp_path / "hf")
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["vocab_size"] == 50304
    loaded = load(tmp_path / "hf")
    assert loaded.config.vocab_size == GPT2_V and loaded.config.padded_vocab_size == 50304
    assert loaded.tokenizer.name == "gpt2" and any("pad it to a multiple of 64" in n for n in loaded.notes)
    model = load_for_sampling(tmp_path / "hf", torch.device("cpu"), dtype=torch.float32)[0]
    idx = prompt()
    with torch.no_grad():
        theirs = hf(idx).logits[..., :GPT2_V]
    assert (logits(model, idx) - theirs).abs().max().item() <= 1e-5


def test_hf_export_matches_transformers(gpt2_ck, tmp_path):
    from safetensors import safe_open
    from transformers import AutoTokenizer, GPT2LMHeadModel

    model, ck = gpt2_ck
    out = tmp_path / "hf"
    convert(ck, out, to="hf")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["GPT2LMHeadModel"] and cfg["activation_function"] == "gelu_new"
    assert cfg["n_positions"] == 32 and cfg["vocab_size"] == GPT2_V
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == GPT2_V - 1
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert "lm_head.weight" not in f.keys()  # tied
        assert f.get_slice("transformer.wte.weight").get_shape() == [GPT2_V, 32]  # cropped from 50304
        assert f.get_slice("transformer.h.0.attn.c_attn.weight").get_shape() == [32, 96]  # Conv1D (in, out)

    hf = GPT2LMHeadModel.from_pretrained(out).eval()
    idx = prompt()
    with torch.no_grad():
        theirs = hf(idx).logits
    assert (logits(model, idx) - theirs).abs().max().item() <= 1e-5

    ours = torch.stack(
        list(
            generate(
                model,
                idx[0].tolist(),
                SampleConfig(max_new_tokens=15, temperature=0),
                vocab_size=GPT2_V,
                eot_token=GPT2_V - 1,
            )
        ),
        dim=1,
    )[0].tolist()
    with torch.no_grad():
        hf_out = hf.generate(idx[:1], max_new_tokens=15, do_sample=False, pad_token_id=GPT2_V - 1)
    assert hf_out[0, idx.size(1) :].tolist() == ours

    from tokenizers import Tokenizer

    text = "Hello world, 你好 — GPT-2's tokenizer!\n\n  It's   spaced."
    ids = get_tokenizer("gpt2").encode(text)
    tok = AutoTokenizer.from_pretrained(out)
    assert tok(text)["input_ids"] == ids
    assert tok.decode(ids) == text
    assert tok.eos_token_id == GPT2_V - 1
    fast = Tokenizer.from_file(str(out / "tokenizer.json"))  # tokenizer.json on its own
    assert fast.encode(text).ids == ids and fast.decode(ids) == text
    for f in ("vocab.json", "merges.txt"):  # and the slow files on their own
        (tmp_path / "slow").mkdir(exist_ok=True)
        (tmp_path / "slow" / f).write_bytes((out / f).read_bytes())
    from transformers import GPT2Tokenizer

    assert (
        GPT2Tokenizer(str(tmp_path / "slow" / "vocab.json"), str(tmp_path / "slow" / "merges.txt"))(text)["input_ids"]
        == ids
    )


def test_hf_export_files_are_all_0644(gpt2_ck, tmp_path):
    """safetensors creates its file 0600; the weights go through fsutil's writer, so a shared
    model folder is readable like every file beside it."""
    import stat

    old = os.umask(0o022)
    try:
        convert(gpt2_ck[1], tmp_path / "hf", to="hf")
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "hf").iterdir() if p.is_file()}
    assert "model.safetensors" in modes and set(modes.values()) == {0o644}, modes


def test_reads_what_transformers_writes(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=GPT2_V, n_positions=32, n_embd=32, n_layer=2, n_head=4)).eval()
    hf.save_pretrained(tmp_path / "hf")
    idx = prompt()
    with torch.no_grad():
        ref = hf(idx).logits
    m = load(tmp_path / "hf")
    assert m.format == "hf" and m.tokenizer is None and m.config.padded_vocab_size == 50304  # no tokenizer files
    assert (logits(m.build_model(), idx) - ref).abs().max().item() <= 1e-5

    # The older pytorch_model.bin layout, read with weights_only
    (tmp_path / "hf" / "model.safetensors").unlink()
    torch.save(hf.state_dict(), tmp_path / "hf" / "pytorch_model.bin")
    convert(tmp_path / "hf", tmp_path / "ck", to="gptkit")
    back = load_checkpoint(tmp_path / "ck").build_model()
    assert (logits(back, idx) - ref).abs().max().item() <= 1e-5


# --- round trip --------------------------------------------------------------------------------


def test_round_trip_gptkit_pt_safetensors_hf_gptkit_is_bitwise_exact(gpt2_ck, tmp_path):
    model, ck = gpt2_ck
    chain = [
        (tmp_path / "a.pt", "pt"),
        (tmp_path / "b.safetensors", "safetensors"),
        (tmp_path / "c", "hf"),
        (tmp_path / "d", "gptkit"),
    ]
    src = ck
    for dst, fmt in chain:
        r = convert(src, dst, to=fmt)
        assert r.verification.max_abs_diff == 0.0
        assert detect_format(dst) == fmt
        src = dst
    back = load_checkpoint(tmp_path / "d")
    assert back.config == model.config and back.tokenizer == "gpt2"
    assert json.loads((tmp_path / "d" / "tokenizer" / "gptkit-tokenizer.json").read_text())["name"] == "gpt2"
    original = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}
    assert back.state_dict.keys() == original.keys()
    for k, v in original.items():
        assert back.state_dict[k].dtype == v.dtype and torch.equal(back.state_dict[k], v), k
    assert back.meta["converted_from"]["format"] == "hf"


def test_pt_output_is_nanogpt_shaped(gpt2_ck, tmp_path):
    _, ck = gpt2_ck
    convert(ck, tmp_path / "ckpt.pt")
    obj = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    # the real vocabulary's rows only (nanoGPT's sample.py draws from every row); gptkit pads on reading
    assert obj["model_args"] == dict(
        n_layer=2, n_head=4, n_embd=32, block_size=32, bias=True, vocab_size=50257, dropout=0.0
    )
    assert torch.equal(obj["model"]["lm_head.weight"], obj["model"]["transformer.wte.weight"])
    assert obj["model"]["lm_head.weight"].shape == (50257, 32)
    assert load(tmp_path / "ckpt.pt").config.padded_vocab_size == 50304
    assert obj["iter_num"] == 100  # the step of the checkpoint it came from


# --- GGUF --------------------------------------------------------------------------------------


def gguf_value(reader, key, index=0):
    import gguf

    f = reader.fields[key]
    part = f.parts[f.data[index]]
    return bytes(part).decode() if f.types[-1] == gguf.GGUFValueType.STRING else part.tolist()[0]


def test_gguf_names_shapes_and_metadata(gpt2_ck, tmp_path):
    import gguf
    import numpy as np

    model, ck = gpt2_ck
    # Reading 50,257 token strings back is slow with gguf's reader; verification of GGUF output is
    # covered by the bytes-vocabulary tests below, so this one reads the file only once.
    convert(ck, tmp_path / "m.gguf", verify_output=False)
    r = gguf.GGUFReader(str(tmp_path / "m.gguf"))
    assert gguf_value(r, "general.architecture") == "gpt2"
    for key, want in [
        ("gpt2.block_count", 2),
        ("gpt2.context_length", 32),
        ("gpt2.embedding_length", 32),
        ("gpt2.feed_forward_length", 128),
        ("gpt2.attention.head_count", 4),
        ("tokenizer.ggml.bos_token_id", GPT2_V - 1),
        ("tokenizer.ggml.eos_token_id", GPT2_V - 1),
        ("tokenizer.ggml.model", "gpt2"),
        ("tokenizer.ggml.pre", "gpt-2"),
    ]:
        assert gguf_value(r, key) == want, key
    assert abs(gguf_value(r, "gpt2.attention.layer_norm_epsilon") - 1e-5) < 1e-12
    tokens = r.fields["tokenizer.ggml.tokens"]
    assert len(tokens.data) == GPT2_V
    assert gguf_value(r, "tokenizer.ggml.tokens", GPT2_V - 1) == "<|endoftext|>"
    assert gguf_value(r, "tokenizer.ggml.tokens", 0) == "!"  # byte-level BPE strings, as in vocab.json
    assert gguf_value(r, "tokenizer.ggml.token_type", GPT2_V - 1) == gguf.TokenType.CONTROL
    assert gguf_value(r, "tokenizer.ggml.token_type", 100) == gguf.TokenType.NORMAL
    assert len(r.fields["tokenizer.ggml.merges"].data) == 50000
    assert gguf_value(r, "tokenizer.ggml.merges", 0) == "Ġ t"

    tensors = {t.name: t for t in r.tensors}
    expected = {"token_embd.weight", "position_embd.weight", "output_norm.weight", "output_norm.bias"}
    for i in range(2):
        expected |= {
            f"blk.{i}.{n}.{s}"
            for n in ("attn_norm", "attn_qkv", "attn_output", "ffn_norm", "ffn_up", "ffn_down")
            for s in ("weight", "bias")
        }
    assert set(tensors) == expected
    # GGUF lists dimensions innermost first: (n_embd, n_vocab) is a (n_vocab, n_embd) matrix
    assert list(tensors["token_embd.weight"].shape) == [32, GPT2_V]
    assert list(tensors["position_embd.weight"].shape) == [32, 32]
    assert list(tensors["blk.0.attn_qkv.weight"].shape) == [32, 96]
    assert list(tensors["blk.0.ffn_up.weight"].shape) == [32, 128]
    assert list(tensors["blk.0.ffn_down.weight"].shape) == [128, 32]
    sd = model.state_dict()
    assert np.array_equal(tensors["token_embd.weight"].data, sd["transformer.wte.weight"][:GPT2_V].numpy())
    assert np.array_equal(tensors["blk.1.ffn_down.weight"].data, sd["transformer.h.1.mlp.c_proj.weight"].numpy())
    assert np.array_equal(tensors["blk.1.attn_qkv.bias"].data, sd["transformer.h.1.attn.c_attn.bias"].numpy())


@pytest.mark.parametrize("dtype, qtype, ftype", [("fp16", "F16", "MOSTLY_F16"), ("bf16", "BF16", "MOSTLY_BF16")])
def test_gguf_half_precision_types(tmp_path, dtype, qtype, ftype):
    import gguf

    model = random_model(vocab=256, padded=256)
    ck = save_checkpoint(tmp_path / "ck", model, config=model.config, tokenizer="bytes")
    res = convert(ck, tmp_path / "m.gguf", dtype=dtype)
    assert res.verification.max_abs_diff == 0.0 and res.verification.drift > 0
    r = gguf.GGUFReader(str(tmp_path / "m.gguf"))
    assert gguf_value(r, "general.file_type") == getattr(gguf.LlamaFileType, ftype)
    types = {t.name: t.tensor_type.name for t in r.tensors}
    assert types["blk.0.attn_qkv.weight"] == qtype and types["token_embd.weight"] == qtype
    assert types["position_embd.weight"] == "F32" and types["blk.0.attn_norm.weight"] == "F32"
    assert types["blk.0.ffn_up.bias"] == "F32"
    assert len(r.fields["tokenizer.ggml.tokens"].data) == 256
    assert load(tmp_path / "m.gguf").tokenizer.name == "bytes"


def test_bf16_safetensors(gpt2_ck, tmp_path):
    from safetensors import safe_open

    _, ck = gpt2_ck
    res = convert(ck, tmp_path / "m.safetensors", dtype="bf16")
    assert res.verification.max_abs_diff == 0.0 and res.verification.drift > 0
    with safe_open(str(tmp_path / "m.safetensors"), "pt") as f:
        assert f.get_tensor("transformer.h.0.mlp.c_fc.weight").dtype == torch.bfloat16


# --- nanoGPT and build-nanogpt ------------------------------------------------------------------


def compiled_state_dict(model):
    """What torch.compile'd models save: every key behind `_orig_mod.`, lm_head tied to wte."""
    return {"_orig_mod." + k: v for k, v in model.state_dict().items()}


def test_nanogpt_ckpt_converts_and_samples(tmp_path):
    # nanoGPT: vocab_size 50304, the padded rows trained like the rest; its MLP is the exact GELU
    model = random_model(activation="gelu")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ckpt = {
        "model": compiled_state_dict(model),
        "optimizer": opt.state_dict(),
        "model_args": dict(n_layer=2, n_head=4, n_embd=32, block_size=32, bias=True, vocab_size=50304, dropout=0.0),
        "iter_num": 250,
        "best_val_loss": torch.tensor(3.25),
        "config": {"batch_size": 12, "learning_rate": 6e-4, "dataset": "openwebtext", "compile": True},
    }
    torch.save(ckpt, tmp_path / "ckpt.pt")
    r = convert(tmp_path / "ckpt.pt", tmp_path / "ck", to="gptkit")
    assert any("assuming GPT-2" in n for n in r.notes)  # no meta.pkl for openwebtext: nanoGPT's default, said
    back = load_checkpoint(tmp_path / "ck")
    assert back.config == model.config and back.tokenizer == "gpt2"
    assert back.meta["converted_from"]["step"] == 250
    for k, v in model.state_dict().items():
        if k != "lm_head.weight":
            assert torch.equal(back.state_dict[k], v), k
    net, tok, _ = load_for_sampling(tmp_path / "ckpt.pt", torch.device("cpu"))  # sample reads the .pt directly
    assert tok.name == "gpt2" and torch.equal(logits(net, prompt()), logits(model, prompt()))


def test_nanogpt_without_biases(tmp_path):
    model = random_model(bias=False, activation="gelu")
    sd = compiled_state_dict(model)
    assert not any(k.endswith(".bias") for k in sd)
    args = dict(n_layer=2, n_head=4, n_embd=32, block_size=32, bias=False, vocab_size=50304, dropout=0.0)
    torch.save({"model": sd, "model_args": args, "iter_num": 1}, tmp_path / "ckpt.pt")
    m = load(tmp_path / "ckpt.pt")
    assert m.config.bias is False and m.config.activation == "gelu"
    assert torch.equal(logits(m.build_model(), prompt()), logits(model, prompt()))
    # shapes a target cannot express are refused in one line, and nothing is written
    for dst in ("hf", "m.gguf"):
        line = assert_one_line_error(
            run_cli("convert", tmp_path / "ckpt.pt", tmp_path / dst, "--to", dst.split(".")[-1])
        )
        assert "bias" in line and not (tmp_path / dst).exists()


def test_build_nanogpt_checkpoint_with_pickled_config(tmp_path, monkeypatch):
    @dataclasses.dataclass
    class GPTConfig:  # build-nanogpt's, defined in train_gpt2.py and pickled from __main__
        block_size: int = 1024
        vocab_size: int = 50257
        n_layer: int = 12
        n_head: int = 12
        n_embd: int = 768

    GPTConfig.__module__, GPTConfig.__qualname__ = "__main__", "GPTConfig"
    monkeypatch.setattr(sys.modules["__main__"], "GPTConfig", GPTConfig, raising=False)
    model = random_model(n_head=8)  # not n_embd / 64: the head count must come from the pickled config
    path = tmp_path / "model_05000.pt"
    torch.save(
        {"model": compiled_state_dict(model), "config": GPTConfig(32, 50304, 2, 8, 32), "step": 5000, "val_loss": 3.31},
        path,
    )
    monkeypatch.delattr(sys.modules["__main__"], "GPTConfig")
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)  # plain weights_only refuses the dataclass
    m = load(path)
    assert m.config.n_head == 8 and m.meta["step"] == 5000 and m.tokenizer.name == "gpt2"
    assert torch.equal(logits(m.build_model(), prompt()), logits(model, prompt()))

    # `gptkit eval` on it, over an llm.c-layout validation shard (no manifest): the same loss as the model's
    from gptkit.data.shards import make_header
    from gptkit.evaluate import evaluate

    ids = torch.randint(0, GPT2_V, (4 * 32 + 1,), generator=torch.Generator().manual_seed(1))
    (tmp_path / "llmc").mkdir()
    for name in ("fineweb_val_000000.bin", "fineweb_train_000001.bin"):
        (tmp_path / "llmc" / name).write_bytes(make_header(len(ids)) + ids.numpy().astype("<u2").tobytes())
    res = evaluate(path, data=tmp_path / "llmc", tokens=4 * 32, batch_size=2, device="cpu", precision="fp32")
    x = ids[:-1].view(4, 32)
    want = torch.nn.functional.cross_entropy(logits(model, x).reshape(-1, GPT2_V), ids[1:].view(4, 32).reshape(-1))
    assert res.val_tokens == 4 * 32 and abs(res.val_loss - want.item()) < 1e-4


# --- bad input ---------------------------------------------------------------------------------


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_malicious_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"model": {"transformer.wte.weight": torch.zeros(4, 4)}, "x": Payload(marker)}, tmp_path / "evil.pt")
    line = assert_one_line_error(run_cli("convert", tmp_path / "evil.pt", tmp_path / "out.safetensors"))
    assert "refusing to unpickle" in line and "mkdir" in line
    assert not marker.exists() and not (tmp_path / "out.safetensors").exists()
    with pytest.raises(GptkitError, match="refusing"):
        load_for_sampling(tmp_path / "evil.pt", torch.device("cpu"))
    assert not marker.exists()


def test_a_plain_pickle_is_named_as_such_in_one_line(tmp_path):
    """pickle.dump's file (protocol 4 or 5, FRAME opcodes): no torch warnings first, and nothing runs."""
    import pickle

    marker = tmp_path / "pwned"
    for name, obj in (("plain.pt", {"model": {"a": torch.zeros(2)}}), ("evil.pt", {"x": Payload(marker)})):
        with open(tmp_path / name, "wb") as f:
            pickle.dump(obj, f, protocol=4)
        line = assert_one_line_error(run_cli("sample", "x", "--model", tmp_path / name, "--device", "cpu"))
        assert "refusing to unpickle a plain pickle, not a torch.save file" in line, line
    assert not marker.exists()


def test_truncated_pt_and_unknown_format_are_one_line(gpt2_ck, tmp_path):
    _, ck = gpt2_ck
    convert(ck, tmp_path / "m.pt")
    data = (tmp_path / "m.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    line = assert_one_line_error(run_cli("convert", tmp_path / "cut.pt", tmp_path / "o.safetensors"))
    assert "corrupt or truncated" in line
    (tmp_path / "notes.txt").write_text("just some text\n")
    line = assert_one_line_error(run_cli("convert", tmp_path / "notes.txt", tmp_path / "o.safetensors"))
    assert "unknown model format" in line
    assert not (tmp_path / "o.safetensors").exists()


def test_a_byte_level_model_exports_a_tokenizer_transformers_loads(tmp_path):
    """The `bytes` vocabulary as a byte-level BPE with no merges: AutoTokenizer gives gptkit's ids
    (every byte value, "Ā" as two bytes, NUL dropped), and reading the export back gives `bytes`."""
    from transformers import AutoTokenizer

    from gptkit.tokenizer import get_tokenizer

    model = random_model(vocab=256, padded=256, seed=3)
    save_checkpoint(tmp_path / "ck", model, config=model.config, tokenizer="bytes")
    r = convert(tmp_path / "ck", tmp_path / "hf", to="hf")
    assert r.verification.tokenizer.status == "same ids" and not r.notes
    theirs, ours = AutoTokenizer.from_pretrained(tmp_path / "hf"), get_tokenizer("bytes")
    text = "".join(map(chr, range(1, 256))) + " Ā\x00 héllo 世界 \n"
    assert theirs(text)["input_ids"] == ours.encode(text)
    assert theirs.decode(ours.encode("héllo 世界")) == "héllo 世界"
    # End-of-text (byte 0) is named, as lm-eval needs (BOS/EOS), and as in GPT-2's files: id 0
    # is "<|endoftext|>", which decoding skips; the text "Ā" stays two bytes.
    assert theirs.eos_token_id == theirs.bos_token_id == ours.eot_token == 0
    assert theirs("Ā<|endoftext|>")["input_ids"] == [196, 128, 0]
    assert theirs.decode([104, 0, 105], skip_special_tokens=True) == ours.decode([104, 0, 105]) == "hi"
    back = load(tmp_path / "hf")
    assert back.tokenizer.kind == "builtin" and back.tokenizer.name == "bytes"
    # Files that do not encode as `bytes` (two ids swapped) are refused, not trusted.
    spec = json.loads((tmp_path / "hf" / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    a, b = [k for k, v in vocab.items() if v in (97, 98)]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (tmp_path / "hf" / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(GptkitError, match="do not encode as the bytes vocabulary"):
        load(tmp_path / "hf")


def test_a_run_name_converts_its_latest_checkpoint(gptkit_home, tmp_path):
    """`gptkit convert NAME DST` from any directory, as `sample --model NAME` and `plot NAME` take it."""
    from gptkit import paths

    old, new = random_model(vocab=256, padded=256, seed=1), random_model(vocab=256, padded=256, seed=2)
    save_checkpoint(paths.runs_dir("myrun") / "step_000010", old, config=old.config, tokenizer="bytes")
    latest = save_checkpoint(paths.runs_dir("myrun") / "step_000020", new, config=new.config, tokenizer="bytes")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    r = run_cli("convert", "myrun", tmp_path / "m.safetensors", "--json", cwd=elsewhere, check=True)
    assert json.loads(r.stdout)["src"] == str(latest)
    back = load(tmp_path / "m.safetensors").state_dict
    assert all(torch.equal(back[k], v) for k, v in new.state_dict().items() if k in back)
    line = assert_one_line_error(run_cli("convert", "norun", tmp_path / "n.safetensors", cwd=elsewhere))
    assert "norun" in line and str(paths.runs_dir()) in line
    line = assert_one_line_error(run_cli("convert", "./norun", tmp_path / "n.safetensors", cwd=elsewhere))
    assert line.endswith("norun: no such file or directory")


def test_truncated_safetensors_and_gguf(tmp_path):
    model = random_model(vocab=256, padded=256)
    ck = save_checkpoint(tmp_path / "ck", model, config=model.config, tokenizer="bytes")
    for name in ("m.safetensors", "m.gguf"):
        convert(ck, tmp_path / name)
        data = (tmp_path / name).read_bytes()
        cut = tmp_path / ("cut-" + name)
        cut.write_bytes(data[: len(data) - 1000])
        with pytest.raises(GptkitError, match="corrupt or truncated"):
            load(cut)
    with pytest.raises(GptkitError, match="unknown output format"):
        convert(ck, tmp_path / "x", to="onnx")
    with pytest.raises(GptkitError, match="pass --to"):
        convert(ck, tmp_path / "x")


def test_existing_output_is_refused_and_left_unchanged(tmp_path):
    model = random_model(vocab=256, padded=256)
    ck = save_checkpoint(tmp_path / "ck", model, config=model.config, tokenizer="bytes")
    dst = tmp_path / "out.safetensors"
    dst.write_bytes(b"precious")
    line = assert_one_line_error(run_cli("convert", ck, dst))
    assert "--force" in line and dst.read_bytes() == b"precious"
    convert(ck, dst, force=True)
    assert load(dst).config == model.config


def test_force_never_replaces_the_source_or_a_file_inside_it(tmp_path):
    model = random_model(vocab=256, padded=256)
    ck = save_checkpoint(tmp_path / "ck", model, config=model.config, tokenizer="bytes")
    before = {p.name: p.read_bytes() for p in ck.iterdir() if p.is_file()}
    for dst, says in ((ck, "would replace its own source"), (ck / "model.safetensors", "a file inside its source")):
        with pytest.raises(GptkitError, match=says):
            convert(ck, dst, to="safetensors" if dst.suffix else "hf", force=True)
    assert {p.name: p.read_bytes() for p in ck.iterdir() if p.is_file()} == before
    convert(ck, ck / "model.gguf", force=True)  # a new file beside the source's replaces nothing


def test_fp16_overflow_is_named_and_a_failed_convert_leaves_no_new_folders(tmp_path, monkeypatch):
    model = random_model(vocab=256, padded=256)
    with torch.no_grad():
        model.transformer.h[1].mlp.c_fc.weight[3, 5] = 1e5  # past fp16's 65504: it would be written as inf
    ck = save_checkpoint(tmp_path / "ck", model, config=model.config, tokenizer="bytes")
    with pytest.raises(GptkitError, match=r"^transformer.h.1.mlp.c_fc.weight holds values up to 1e\+05, past fp16's"):
        convert(ck, tmp_path / "new" / "sub" / "m.safetensors", dtype="fp16")
    convert(ck, tmp_path / "new" / "sub" / "m.safetensors", dtype="bf16")  # bf16 holds it
    monkeypatch.setenv("GPTKIT_FAULTS", "fs.enospc=convert")
    with pytest.raises(GptkitError, match="no space left"):
        convert(ck, tmp_path / "other" / "deeper" / "m.safetensors")
    assert not (tmp_path / "other").exists()  # the folders made for it are gone with it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck", "new"]


def test_failed_verification_leaves_the_old_output_alone(tmp_path, monkeypatch):
    model = random_model(vocab=256, padded=256)
    ck = save_checkpoint(tmp_path / "ck", model, config=model.config, tokenizer="bytes")
    dst = tmp_path / "out.safetensors"
    dst.write_bytes(b"previous version")
    real = registry.FORMATS["safetensors"]

    def faulty(m, out, dtype):  # a writer bug: one bias written wrong
        sd = dict(m.state_dict)
        sd["transformer.ln_f.bias"] = sd["transformer.ln_f.bias"] + 0.5
        return real.write(dataclasses.replace(m, state_dict=sd), out, dtype)

    monkeypatch.setitem(registry.FORMATS, "safetensors", dataclasses.replace(real, write=faulty))
    with pytest.raises(GptkitError, match="verification failed"):
        convert(ck, dst, force=True)
    assert dst.read_bytes() == b"previous version"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck", "out.safetensors"]  # no temporary left behind


def test_a_safetensors_file_whose_first_byte_looks_like_a_pickle_is_read_as_safetensors(tmp_path):
    """The header length's low byte can be 0x80, a pickle's PROTO opcode (1 file in 256): the content
    check must still say safetensors, or the config and tokenizer in its metadata would be lost."""
    from safetensors.torch import save_file

    path = tmp_path / "m.safetensors"
    for n in range(2000):
        save_file({"x": torch.zeros(2)}, str(path), metadata={"pad": "a" * n})
        head = path.read_bytes()[:2]
        if head == b"\x80\x02":  # 0x80 then a valid pickle protocol: the worst case
            break
    else:
        raise AssertionError("no padding gave a header length of 0x0280")
    assert detect_format(path) == "safetensors"
    legacy = tmp_path / "legacy.pt"  # torch.save's pickle (non-zip) layout still reads as pt
    torch.save({"model": {}}, legacy, _use_new_zipfile_serialization=False)
    assert legacy.read_bytes()[:1] == b"\x80" and detect_format(legacy) == "pt"


def test_an_output_path_through_a_file_is_one_line(tmp_path):
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=16, n_layer=1, n_head=1, n_embd=16, vocab_size=256))
    src = save_checkpoint(tmp_path / "ck", model, config=model.config, tokenizer="bytes")
    (tmp_path / "afile").write_text("x")
    for to in ("pt", "hf", "gptkit"):
        line = assert_one_line_error(run_cli("convert", src, tmp_path / "afile" / "out", "--to", to))
        assert "afile" in line and "in the way" in line
    assert (tmp_path / "afile").read_text() == "x"
