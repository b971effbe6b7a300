"""The loggers behind Reporter (gptkit/train/loggers.py), against the real TensorBoard and wandb:
what they hold is read back with TensorBoard's own EventAccumulator and from wandb's own run log."""

from __future__ import annotations

import contextlib
import json
import re
import struct
import time

import numpy as np
import pytest

from gptkit.errors import GptkitError
from gptkit.train import loggers
from gptkit.train.metrics import Reporter, check_backends, read_metrics, truncate_metrics

STEPS = 4


def session(run_dir, start_step, *, max_steps=STEPS, **backends):
    """One training session as Trainer.fit reports it: evaluation at each step, then a training step."""
    truncate_metrics(run_dir, start_step)
    rep = Reporter(run_dir, enabled=True, max_steps=max_steps, start_step=start_step, **backends)
    try:
        for step in range(start_step, max_steps + 1):
            rep.event(step, val_loss=3.0 - 0.1 * step)
            if step == 2:
                rep.event(step, hellaswag=0.25, hellaswag_acc=0.24, hellaswag_n=10)
                rep.event(step, sample="once upon a time")
                rep.event(step, mfu_note="peak re-measured")
            if step < max_steps:
                rep.train_step(
                    step + 1,
                    loss=1 / (step + 3),  # not exact in float32: the comparison must round
                    lr=6e-4 * (step + 1) / max_steps,
                    grad_norm=0.1 + step,
                    tokens=1024 * (step + 1),
                    tok_per_s=12345.678,
                    mfu=None if step == 0 else 0.0123,
                    dt=0.05,
                    eta_s=1.0,
                )
    finally:
        rep.close()


def expected_scalars(run_dir) -> dict[tuple[str, int], float]:
    """(tag, step) -> value of every number in metrics.jsonl but the Unix times."""
    out = {}
    for r in read_metrics(run_dir):
        for k, v in r.items():
            if k not in ("step", "time", "start") and isinstance(v, (int, float)):
                out[(k, r["step"])] = v
    return out


def tensorboard_scalars(run_dir) -> dict[tuple[str, int], list[float]]:
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={SCALARS: 0})  # 0: keep every point
    acc.Reload()
    out: dict[tuple[str, int], list[float]] = {}
    for tag in acc.Tags()["scalars"]:
        for e in acc.Scalars(tag):
            out.setdefault((tag, e.step), []).append(e.value)
    return out


def test_tensorboard_holds_what_metrics_jsonl_holds_across_a_resume(tmp_path):
    session(tmp_path, 0, tensorboard=True)
    assert {k for k in tensorboard_scalars(tmp_path) if k[1] > 2}  # logged after the step-2 checkpoint
    # A resume from step 2 after an interrupted session: what that session logged after its checkpoint
    # is hidden, as truncate_metrics drops it from metrics.jsonl; the second session logs it again.
    session(tmp_path, 2, tensorboard=True)

    want = expected_scalars(tmp_path)
    got = tensorboard_scalars(tmp_path)
    assert {k for k in got if k[0] != "elapsed"} == set(want)
    # Once per step, except the evaluations at the resume step: logged by both sessions, same value.
    twice = {(k, 2) for k in ("val_loss", "hellaswag", "hellaswag_acc", "hellaswag_n")}
    for key, values in got.items():
        if key[0] != "elapsed":
            assert len(values) == (2 if key in twice else 1), key
            assert values == [np.float32(want[key])] * len(values), key
    elapsed = sorted((s, v[-1]) for (t, s), v in got.items() if t == "elapsed")
    assert [s for s, _ in elapsed] == list(range(1, STEPS + 1))  # one per training step
    assert all(0 <= e < 120 for _, e in elapsed), elapsed  # seconds of this test, not a Unix time
    assert [e for _, e in elapsed] == sorted(e for _, e in elapsed)  # the second session continues the first
    assert "time" not in {t for t, _ in got} and max(abs(v) for vs in got.values() for v in vs) < 1e6
    assert not list(tmp_path.glob("*.tfevents*"))  # all of it under RUN/tensorboard


def test_elapsed_leaves_out_the_time_between_sessions(tmp_path):
    # An earlier session, as metrics.jsonl recorded it, that ended an hour ago after 20 s of training.
    t0 = time.time() - 3600
    earlier = [
        {"step": 0, "start": t0},
        {"step": 1, "loss": 2.0, "time": t0 + 10},
        {"step": 2, "loss": 1.5, "time": t0 + 20},
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in earlier))
    session(tmp_path, 2, tensorboard=True)
    got = tensorboard_scalars(tmp_path)
    assert 20 <= got[("elapsed", 3)][0] < 20 + 60  # the hour between the sessions is not in it
    assert [r for r in read_metrics(tmp_path) if "start" in r][0] == earlier[0]  # metrics.jsonl as it was


# --- wandb -----------------------------------------------------------------------------------------
@pytest.fixture
def fresh_wandb():
    """wandb reads its environment once per process (wandb.setup): start each test from scratch."""
    import wandb

    wandb.teardown()
    yield
    wandb.teardown()


@pytest.fixture
def wandb_offline(tmp_path, monkeypatch, fresh_wandb):
    """wandb offline, its caches in tmp_path, and a working directory that must stay empty."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    for var in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home" / var.lower()))
    for var in ("WANDB_DIR", "WANDB_RUN_ID", "WANDB_RESUME", "WANDB_PROJECT"):
        monkeypatch.delenv(var, raising=False)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    yield run_dir
    assert list(cwd.iterdir()) == []  # nothing of wandb's in the working directory


def wandb_log_records(path):
    """The records of a .wandb run log. wandb (0.31) has no Python reader of it any more (its
    DataStore went with the move to wandb-core); the file is LevelDB's log format with a 7-byte
    header (":W&B", 0xBEE1, version 0): 32 KiB blocks of chunks, each with a crc32, a length and a
    type (1 whole, 2 first, 3 middle, 4 last), holding wandb's own protobuf Records."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert len(data) < 7 or data[:7] == b":W&B" + struct.pack("<HB", 0xBEE1, 0)
    block, pos, part, out = 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        _, n, kind = struct.unpack_from("<IHB", data, pos)
        if kind == 0:  # zero padding to the block's end
            pos += block - pos % block
            continue
        chunk, pos = data[pos + 7 : pos + 7 + n], pos + 7 + n
        part = chunk if kind in (1, 2) else part + chunk
        if kind in (1, 4):
            r = pb.Record()
            r.ParseFromString(part)
            out.append(r)
    return out


def wandb_history(path) -> dict[int, dict[str, float]]:
    """step -> the values logged at it (wandb's own "_step", "_runtime", "_timestamp" left out)."""
    # wandb-core writes the log in its own process, and finish() can return before it has: wait for
    # the run's closing record.
    deadline = time.monotonic() + 30
    while not any(r.WhichOneof("record_type") == "exit" for r in wandb_log_records(path)):
        assert time.monotonic() < deadline, f"{path} never got its exit record"
        time.sleep(0.05)
    out: dict[int, dict[str, float]] = {}
    for r in wandb_log_records(path):
        if r.WhichOneof("record_type") == "history":
            items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
            out.setdefault(r.history.step.num, {}).update({k: v for k, v in items.items() if not k.startswith("_")})
    return out


def offline_runs(run_dir):
    return sorted((run_dir / "wandb").glob("offline-run-*"))


def test_wandb_offline_run_lives_in_the_run_and_a_resume_continues_it(wandb_offline, capsys):
    run_dir = wandb_offline
    session(run_dir, 0, wandb="gptkit-test")
    saved = json.loads((run_dir / loggers.WANDB_RUN).read_text())
    assert saved["project"] == "gptkit-test"
    [first] = offline_runs(run_dir)
    assert first.name.endswith("-" + saved["id"])
    out = capsys.readouterr().out
    # wandb says nothing itself (its stderr is RUN/error-0.log in a worker); gptkit's one line does.
    sync = f"wandb sync {run_dir / 'wandb'}/offline-run-*-{saved['id']}*"
    assert f"wandb: offline run saved in {first}; upload it with `{sync}`" in out
    history = wandb_history(first / f"run-{saved['id']}.wandb")
    want = expected_scalars(run_dir)
    assert {(k, s) for s, vals in history.items() for k in vals if k != "elapsed"} == set(want)
    assert all(vals[k] == want[(k, s)] for s, vals in history.items() for k in vals if k != "elapsed")
    assert all(0 <= history[s]["elapsed"] < 120 for s in range(1, STEPS + 1))
    assert "time" not in {k for vals in history.values() for k in vals}

    session(run_dir, 2, wandb="gptkit-test")  # a resume
    assert json.loads((run_dir / loggers.WANDB_RUN).read_text()) == saved  # the same wandb run
    runs = offline_runs(run_dir)
    # A second session in the same second as the first is "-ID-1" (wandb's own de-duplication).
    assert len(runs) == 2 and all(
        re.fullmatch(rf"offline-run-\d{{8}}_\d{{6}}-{saved['id']}(-\d+)?", r.name) for r in runs
    )
    assert runs == sorted((run_dir / "wandb").glob(f"offline-run-*-{saved['id']}*"))  # what the printed line uploads
    [second] = [r for r in runs if r != first]
    assert sorted(wandb_history(second / f"run-{saved['id']}.wandb")) == [2, 3, 4]


def test_a_fresh_start_is_a_new_wandb_run(wandb_offline):
    session(wandb_offline, 0, max_steps=1, wandb="p")
    before = json.loads((wandb_offline / loggers.WANDB_RUN).read_text())["id"]
    session(wandb_offline, 0, max_steps=1, wandb="p")  # a failed attempt's folder, started again
    assert json.loads((wandb_offline / loggers.WANDB_RUN).read_text())["id"] != before


def test_wandb_not_logged_in_is_one_line(tmp_path, monkeypatch, fresh_wandb):
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc with a key
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    for var in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    with pytest.raises(GptkitError) as e:
        Reporter(tmp_path, enabled=True, max_steps=1, start_step=0, wandb="p")
    assert "\n" not in str(e.value) and str(e.value).startswith("--wandb p: ")
    assert "WANDB_MODE=offline" in str(e.value)
    assert not (tmp_path / loggers.WANDB_RUN).exists()


# --- the registry ----------------------------------------------------------------------------------
def test_unknown_or_missing_backend_is_one_line(monkeypatch):
    with pytest.raises(GptkitError, match=r"^unknown logger 'nope'; known: jsonl, tensorboard, wandb$"):
        loggers.check({"nope": True})

    class Missing(loggers.Logger):
        requires, flag = "gptkit_no_such_package", "--missing"

    monkeypatch.setitem(loggers.LOGGERS, "missing", Missing)
    with pytest.raises(GptkitError) as e:
        loggers.check({"missing": True})
    assert str(e.value) == "--missing needs the gptkit_no_such_package package: pip install gptkit_no_such_package"
    loggers.check({"missing": False})  # not asked for: no need to have it
    check_backends(True, "proj")  # both installed here (the test extra)


def test_a_registered_logger_gets_every_record(tmp_path, monkeypatch):
    got = []

    class Memory(loggers.Logger):
        def log(self, values, step):
            got.append((step, loggers.scalars(values, self.ctx.origin)))

    monkeypatch.setitem(loggers.LOGGERS, "memory", Memory)
    ctx = loggers.LogContext(tmp_path, 0, started=1000.0, origin=990.0)
    with contextlib.ExitStack() as stack:
        [lg] = loggers.open_loggers({"memory": True, "tensorboard": False}, ctx, stack)
        lg.log({"loss": 2.5, "mfu": None, "sample": "text", "time": 1012.5}, 3)
    assert got == [(3, {"loss": 2.5, "elapsed": 22.5})]
