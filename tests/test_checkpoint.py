"""Checkpoint directories: bitwise round trip, atomic save, safe loading."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

from gptkit.checkpoint import (
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
    step_dirname,
    write_checksums,
)
from gptkit.errors import GptkitError
from gptkit.model import GPT, get_preset


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return GPT(get_preset("tiny").with_vocab(256))


def test_round_trip_is_bitwise_exact(tmp_path):
    model = tiny_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.zeros(1, 8, dtype=torch.long), torch.zeros(1, 8, dtype=torch.long))[1].backward()
    opt.step()
    path = save_checkpoint(
        tmp_path / step_dirname(7),
        model,
        config=model.config,
        tokenizer="bytes",
        train_config={"lr": 1e-3},
        optimizer_state=opt.state_dict(),
        trainer_state={"step": 7, "tokens": 123},
    )
    ck = load_checkpoint(path)
    assert ck.tokenizer == "bytes" and ck.step == 7 and ck.train_config == {"lr": 1e-3}
    assert ck.config == model.config
    loaded = ck.build_model()
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b), k
    assert loaded.lm_head.weight is loaded.transformer.wte.weight
    osd = ck.optimizer_state()
    assert torch.equal(osd["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    assert ck.trainer_state() == {"step": 7, "tokens": 123}


def test_tied_weight_stored_once_without_prefixes(tmp_path):
    from safetensors import safe_open

    model = tiny_model()
    compiled_like = torch.nn.Module()
    compiled_like._orig_mod = model  # what torch.compile's wrapper looks like to state_dict()
    path = save_checkpoint(tmp_path / "ck", compiled_like, config=model.config, tokenizer="bytes")
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert "lm_head.weight" not in keys and "transformer.wte.weight" in keys
    assert not any(k.startswith(("_orig_mod.", "module.")) for k in keys)
    meta = json.loads((path / "config.json").read_text())
    assert meta["model"]["n_layer"] == 2 and meta["tokenizer"] == "bytes"


def test_latest_ignores_incomplete_and_prunes(tmp_path):
    model = tiny_model()
    for s in (10, 20, 30):
        save_checkpoint(tmp_path / step_dirname(s), model, config=model.config, tokenizer="bytes")
    (tmp_path / ".step_000040.tmp-123").mkdir()  # a save that crashed
    (tmp_path / "step_000050").mkdir()  # not a checkpoint (no files)
    assert latest_checkpoint(tmp_path).name == "step_000030"
    prune_checkpoints(tmp_path, keep=2)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [20, 30]
    assert load_checkpoint(tmp_path).path.name == "step_000030"  # a run dir loads its latest


def test_crash_during_save_keeps_previous_latest(tmp_path):
    model = tiny_model()
    save_checkpoint(tmp_path / step_dirname(1), model, config=model.config, tokenizer="bytes")
    before = (tmp_path / step_dirname(1) / "model.safetensors").read_bytes()
    # A child process starts saving step 2 and is killed (os._exit) halfway through writing.
    script = textwrap.dedent(f"""
        import os, torch, safetensors.torch as st
        from gptkit.checkpoint import save_checkpoint
        from gptkit.model import GPT, get_preset
        real = st.save_file
        def dying(sd, path, metadata=None):
            with open(path, "wb") as f:
                f.write(b"partial")
            os._exit(9)
        st.save_file = dying
        m = GPT(get_preset("tiny").with_vocab(256))
        save_checkpoint({str(tmp_path / step_dirname(2))!r}, m, config=m.config, tokenizer="bytes")
    """)
    r = subprocess.run([sys.executable, "-c", script])
    assert r.returncode == 9
    assert latest_checkpoint(tmp_path).name == step_dirname(1)
    assert (tmp_path / step_dirname(1) / "model.safetensors").read_bytes() == before
    assert torch.equal(load_checkpoint(tmp_path).state_dict["transformer.wte.weight"], model.transformer.wte.weight)
    # A later save of the same step replaces the debris cleanly.
    save_checkpoint(tmp_path / step_dirname(2), model, config=model.config, tokenizer="bytes")
    assert latest_checkpoint(tmp_path).name == step_dirname(2)


def test_resave_same_step_replaces_atomically(tmp_path):
    a, b = tiny_model(0), tiny_model(1)
    p = save_checkpoint(tmp_path / "step_000005", a, config=a.config, tokenizer="bytes")
    save_checkpoint(p, b, config=b.config, tokenizer="bytes")
    assert torch.equal(load_checkpoint(p).state_dict["transformer.wte.weight"], b.transformer.wte.weight)
    assert [x.name for x in tmp_path.iterdir()] == ["step_000005"]


def test_corrupt_weights_give_clear_error(tmp_path):
    model = tiny_model()
    p = save_checkpoint(tmp_path / "ck", model, config=model.config, tokenizer="bytes")
    w = p / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    with pytest.raises(GptkitError, match="corrupt or truncated"):
        load_checkpoint(p)


def test_mismatched_config_is_refused(tmp_path):
    model = tiny_model()
    p = save_checkpoint(tmp_path / "ck", model, config=model.config, tokenizer="bytes")
    meta = json.loads((p / "config.json").read_text())
    meta["model"]["n_embd"] = 128
    (p / "config.json").write_text(json.dumps(meta))
    write_checksums(p)  # written so, not damaged later
    with pytest.raises(GptkitError, match="shape"):
        load_checkpoint(p).build_model()


def test_optimizer_state_never_unpickles_objects(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    model = tiny_model()
    p = save_checkpoint(tmp_path / "ck", model, config=model.config, tokenizer="bytes", optimizer_state={"x": 1})
    torch.save({"evil": Evil()}, p / "optimizer.pt")
    with pytest.raises(GptkitError, match="corrupt"):
        load_checkpoint(p).optimizer_state()


def test_missing_path(tmp_path):
    with pytest.raises(GptkitError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "nope")
    with pytest.raises(GptkitError, match="not a gptkit checkpoint"):
        load_checkpoint(tmp_path)


def test_checkpoint_carries_its_tokenizer(tmp_path):
    """A Tokenizer (or its saved folder) goes into tokenizer/, its info into config.json; old
    checkpoints, which name a built-in only, still give their tokenizer."""
    from test_vocab_files import TEXT, write_meta

    from gptkit.checkpoint import checkpoint_tokenizer
    from gptkit.tokenizer import get_tokenizer

    tok = get_tokenizer(write_meta(tmp_path / "sc", sorted(set(TEXT))))
    torch.manual_seed(0)
    model = GPT(get_preset("tiny").with_vocab(tok.vocab_size))
    p = save_checkpoint(tmp_path / "ck", model, config=model.config, tokenizer=tok)
    meta = json.loads((p / "config.json").read_text())
    assert meta["tokenizer"] == tok.name and meta["tokenizer_info"] == tok.info()
    assert (p / "tokenizer" / "chars.json").is_file()
    back = load_checkpoint(p).load_tokenizer()
    assert back.vocab_hash == tok.vocab_hash and back.decode(back.encode(TEXT)) == TEXT
    # from the saved folder: copied as it is
    p2 = save_checkpoint(tmp_path / "ck2", model, config=model.config, tokenizer=p / "tokenizer")
    assert checkpoint_tokenizer(p2).vocab_hash == tok.vocab_hash
    # files that do not match the recorded vocabulary are refused, never used
    chars = json.loads((p2 / "tokenizer" / "chars.json").read_text())
    chars["chars"][0], chars["chars"][1] = chars["chars"][1], chars["chars"][0]
    (p2 / "tokenizer" / "chars.json").write_text(json.dumps(chars))
    with pytest.raises(GptkitError, match="do not match"):
        checkpoint_tokenizer(p2)
    # an old checkpoint: a name, no folder
    old = save_checkpoint(tmp_path / "old", tiny_model(), config=tiny_model().config, tokenizer="bytes")
    assert not (old / "tokenizer").exists() and "tokenizer_info" not in json.loads((old / "config.json").read_text())
    assert load_checkpoint(old).load_tokenizer().name == "bytes"
    # a character vocabulary whose files are gone: an error, not a built-in in its place
    shutil.rmtree(p / "tokenizer")
    with pytest.raises(GptkitError, match=r"tokenizer/chars\.json: missing \(listed in checksums\.json\)"):
        load_checkpoint(p)
    write_checksums(p)  # even with no checksum to miss it
    with pytest.raises(GptkitError, match="files are missing"):
        load_checkpoint(p).load_tokenizer()


def test_weights_are_readable_like_every_other_file(tmp_path):
    """safetensors creates its file 0600; checkpoints and converted weights follow the umask as the
    JSON beside them does (a team sharing a run directory reads them)."""
    import stat

    old = os.umask(0o022)
    try:
        ck = save_checkpoint(
            tmp_path / "step_000001",
            GPT(get_preset("tiny").with_vocab(256)),
            config=get_preset("tiny").with_vocab(256),
            tokenizer="bytes",
        )
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in ck.iterdir() if p.is_file()}
    assert modes["model.safetensors"] == 0o644 and modes["model.safetensors"] == modes["config.json"], modes


def moved_scaler() -> torch.amp.GradScaler:
    """A real GradScaler whose state is no longer the initial one: one step skipped on an inf
    gradient (the scale halved), then two good steps (growth tracker 2)."""
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16, growth_interval=1000)
    w = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([w], lr=0.1)
    for bad in (True, False, False):
        opt.zero_grad()
        scaler.scale((w * 2).sum()).backward()
        if bad:
            w.grad.fill_(float("inf"))
        scaler.step(opt)
        scaler.update()
    assert scaler.get_scale() == 2.0**15 and scaler.state_dict()["_growth_tracker"] == 2
    return scaler


def test_grad_scaler_state_round_trips_through_a_checkpoint(tmp_path):
    from gptkit.train.trainer import SCALER_STATE, restore_scaler

    scaler = moved_scaler()
    model = tiny_model()
    state = {"step": 3, "data_pos": 0, SCALER_STATE: scaler.state_dict()}
    p = save_checkpoint(tmp_path / "ck", model, config=model.config, tokenizer="bytes", trainer_state=state)
    assert json.loads((p / "trainer.json").read_text())[SCALER_STATE]["scale"] == 2.0**15  # JSON, never a pickle
    fresh = torch.amp.GradScaler("cpu", init_scale=2.0**16, growth_interval=1000)
    restore_scaler(fresh, load_checkpoint(p).trainer_state(), p)
    assert fresh.state_dict() == scaler.state_dict()
    assert fresh.scale(torch.tensor(1.0)).item() == 2.0**15  # the next step's loss scale


def test_checkpoint_without_scaler_state_resumes_with_a_fresh_scaler(tmp_path):
    from gptkit.train.dist import TrainingError
    from gptkit.train.trainer import SCALER_STATE, restore_scaler

    fresh = torch.amp.GradScaler("cpu")
    restore_scaler(fresh, {"step": 3, "data_pos": 0}, tmp_path)  # written before the scaler was saved
    assert fresh.get_scale() == 2.0**16
    restore_scaler(None, {SCALER_STATE: moved_scaler().state_dict()}, tmp_path)  # a run without fp16
    with pytest.raises(TrainingError, match="grad_scaler state is not a GradScaler's"):
        restore_scaler(fresh, {SCALER_STATE: {"scale": "big"}}, tmp_path)
