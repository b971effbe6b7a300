"""MFU: the GPU peak table, the CPU peak measured in the training precision and cached per machine,
re-measured when a reading passes 100%, never reported above 100%; and a real training run whose
reported MFU matches 6 N tokens/s over the peak."""

import json

import pytest
import torch
from test_train_data import make_dataset

from gptkit.device import cpu_has_native_bf16, resolve_precision
from gptkit.model import GPT, get_preset
from gptkit.train import mfu
from gptkit.train.config import LaunchOverrides, TrainOverrides
from gptkit.train.launch import write_run_config
from gptkit.train.metrics import read_metrics
from gptkit.train.resolve import prepare
from gptkit.train.trainer import run as run_worker


def test_gpu_peak_table():
    assert mfu.gpu_peak_flops("NVIDIA H100 80GB HBM3", "bf16") == pytest.approx(989.4e12)
    assert mfu.gpu_peak_flops("NVIDIA H100 PCIe", "bf16") == pytest.approx(756e12)
    assert mfu.gpu_peak_flops("NVIDIA H200", "bf16") == pytest.approx(989.4e12)
    assert mfu.gpu_peak_flops("NVIDIA A100-SXM4-40GB", "tf32") == pytest.approx(156e12)
    assert mfu.gpu_peak_flops("NVIDIA A10G", "bf16") == pytest.approx(70e12)
    assert mfu.gpu_peak_flops("NVIDIA L40S", "bf16") == pytest.approx(362.1e12)
    assert mfu.gpu_peak_flops("NVIDIA L4", "bf16") == pytest.approx(121e12)
    assert mfu.gpu_peak_flops("Tesla V100-SXM2-16GB", "bf16") is None  # no bf16 on Volta
    assert mfu.gpu_peak_flops("Some Future GPU", "bf16") is None


# Real torch.cuda.get_device_name() strings -> the row each must read its peak from.
DEVICE_NAMES = {
    "NVIDIA H100 80GB HBM3": "H100",
    "NVIDIA H100 PCIe": "H100 PCIe",
    "NVIDIA H100 NVL": "H100 NVL",
    "NVIDIA H200": "H200",
    "NVIDIA H200 NVL": "H200 NVL",
    "NVIDIA GH200 480GB": "GH200",
    "NVIDIA GH200 144G HBM3e": "GH200",
    "NVIDIA B200": "B200",
    "NVIDIA GB200": "GB200",
    "NVIDIA H800": "H800",
    "NVIDIA H800 PCIe": "H800 PCIe",
    "NVIDIA A100-SXM4-80GB": "A100",
    "NVIDIA A10G": "A10G",
    "NVIDIA A10": "A10",
    "NVIDIA A40": "A40",
    "NVIDIA RTX A6000": "RTX A6000",
    "NVIDIA L40S": "L40S",
    "NVIDIA L40": "L40",
    "NVIDIA L4": "L4",
    "NVIDIA GeForce RTX 5090": "RTX 5090",
    "NVIDIA GeForce RTX 4090": "RTX 4090",
    "Tesla V100-SXM2-16GB": "V100",
    "Tesla T4": "T4",
}


@pytest.mark.parametrize("name, row", DEVICE_NAMES.items(), ids=list(DEVICE_NAMES))
def test_each_device_name_reads_its_own_row(name, row):
    found = mfu.gpu_peak_row(name)
    assert found is not None and found[0] == row, (name, found)


def test_new_rows_have_their_data_sheet_peaks():
    assert mfu.gpu_peak_flops("NVIDIA H200 NVL", "bf16") == pytest.approx(835.5e12)  # not the SXM's 989.4
    assert mfu.gpu_peak_flops("NVIDIA GH200 480GB", "bf16") == pytest.approx(989.4e12)
    assert mfu.gpu_peak_flops("NVIDIA B200", "bf16") == pytest.approx(2250e12)
    assert mfu.gpu_peak_flops("NVIDIA H800 PCIe", "tf32") == pytest.approx(378e12)
    assert mfu.gpu_peak_flops("NVIDIA A40", "fp32") == pytest.approx(37.4e12)
    assert mfu.gpu_peak_flops("NVIDIA RTX A6000", "bf16") == pytest.approx(154.8e12)
    assert mfu.gpu_peak_flops("NVIDIA GeForce RTX 5090", "bf16") == pytest.approx(209.5e12)
    # Names the table lacks match no row rather than a neighbour's.
    for name in ("NVIDIA RTX A4000", "NVIDIA H20", "NVIDIA RTX A40000"):
        assert mfu.gpu_peak_row(name) is None, name


def fake_measure(monkeypatch, rates: dict[str, list[float]]):
    """Replace the timing loop: each call for a precision returns its next figure."""
    calls: list[str] = []

    def measure(precision, threads, n, seconds):
        calls.append(precision)
        return rates[precision].pop(0), 1024

    monkeypatch.setattr(mfu, "_measure", measure)
    return calls


def test_cpu_peak_is_measured_once_per_precision_and_cached(gptkit_home, monkeypatch):
    calls = fake_measure(monkeypatch, {"fp32": [1.5e11], "bf16": [6e11]})
    assert mfu.cpu_peak_flops("fp32") == 1.5e11 and mfu.cpu_peak_flops("fp32") == 1.5e11
    assert mfu.cpu_peak_flops("bf16") == 6e11 and mfu.cpu_peak_flops("bf16") == 6e11
    assert calls == ["fp32", "bf16"]
    entries = json.loads((gptkit_home / "cpu_peak.json").read_text())["entries"]
    assert sorted(e["precision"] for e in entries.values()) == ["bf16", "fp32"]
    key = mfu.cache_key("bf16")
    assert entries[key]["flops"] == 6e11 and entries[key]["n"] == 1024
    # The key is the machine's features and software, not the CPU's marketing name.
    for part in ("bf16|flags ", "|cores ", "|threads ", "|torch "):
        assert part in key


def test_fp16_and_fp32_training_use_the_fp32_peak(gptkit_home, monkeypatch):
    calls = fake_measure(monkeypatch, {"fp32": [2e11]})
    assert mfu.peak_flops("cpu", "fp32", False, world_size=2, nodes=3) == 6e11
    assert mfu.cpu_peak_flops("fp16") == 2e11  # refused on CPU by the policy; never a bf16 figure
    assert calls == ["fp32"]


def test_old_cache_layout_is_measured_again(gptkit_home, monkeypatch):
    (gptkit_home / "cpu_peak.json").write_text(json.dumps({"key": "AMD EPYC|2|torch 2", "flops": 1e9}))
    fake_measure(monkeypatch, {"fp32": [3e11]})
    assert mfu.cpu_peak_flops("fp32") == 3e11


def test_remeasure_keeps_the_better_figure(gptkit_home, monkeypatch):
    fake_measure(monkeypatch, {"bf16": [1e11, 4e11, 2e11]})
    assert mfu.cpu_peak_flops("bf16") == 1e11  # measured while the machine was busy
    assert mfu.cpu_peak_flops("bf16", remeasure=True) == 4e11
    assert mfu.cpu_peak_flops("bf16", remeasure=True) == 4e11  # a worse try does not lower it
    assert mfu.cpu_peak_flops("bf16") == 4e11


def test_cached_peak_reads_without_measuring(gptkit_home, monkeypatch):
    prec = "bf16" if cpu_has_native_bf16() else "fp32"
    calls = fake_measure(monkeypatch, {prec: [5e11]})
    info = mfu.cached_peak()
    assert info.precision == prec and info.flops is None and "not measured" in info.source
    mfu.cpu_peak_flops(prec)
    info = mfu.cached_peak()
    assert info.flops == 5e11 and info.source.startswith("measured") and calls == [prec]


def test_meter_remeasures_once_then_clamps_and_notes_it():
    peaks = iter([2e9])
    meter = mfu.MfuMeter(1e6, 1e9, remeasure=lambda: next(peaks))
    assert meter.reading(500.0) == pytest.approx(0.5)
    assert meter.take_notes() == []
    # 1.5x the cached peak: re-measured (2 GFLOP/s), so the reading becomes 75%, not clamped.
    assert meter.reading(1500.0) == pytest.approx(0.75)
    notes = meter.take_notes()
    assert len(notes) == 1 and "re-measured" in notes[0] and "1 -> 2 GFLOP/s" in notes[0]
    # Above even the new peak: reported as 1.0, noted once, never re-measured again.
    assert meter.reading(5000.0) == 1.0 and meter.reading(6000.0) == 1.0
    notes = meter.take_notes()
    assert len(notes) == 1 and "250%" in notes[0] and "even after re-measuring" in notes[0]
    assert meter.clamped == 2


def test_meter_without_remeasure_clamps_and_without_peak_reads_none():
    meter = mfu.MfuMeter(1e6, 1e9)  # a GPU: the data sheet peak cannot be re-measured
    assert meter.reading(2000.0) == 1.0 and "200%" in meter.take_notes()[0]
    assert mfu.MfuMeter(1e6, None).reading(1e9) is None


def test_real_cpu_peak_measurement_is_plausible():
    flops = mfu.measure_cpu_peak_flops(threads=1, n=256, seconds=0.2)
    assert 1e8 < flops < 1e13
    flops, n = mfu._measure("bf16" if cpu_has_native_bf16() else "fp32", None, None, 0.3)
    assert 1e8 < flops < 1e14 and 512 <= n <= mfu.MAX_N


def test_training_reports_6n_tokens_over_the_peak_and_never_above_one(gptkit_home, trains):
    """A real (in-process) training run: every reported MFU equals 6 N tok/s / peak within 15%,
    with N counted here and the peak the one this run measured, for the precision it trained in."""
    make_dataset(gptkit_home / "shards" / "toy")
    flags = TrainOverrides(
        preset="tiny",
        seq_len=32,  # attention adds 7% to 6N here (12 L C T per token); at 64 it would be 14%
        batch_tokens=32 * 16,
        micro_batch=16,
        max_steps=5,
        warmup_steps=1,
        eval_tokens=0,
        hellaswag_every=0,
        sample_tokens=0,
        checkpoint_every=1000,
        compile=False,
    )
    rr = prepare(flags, LaunchOverrides(gpus=0, nproc=1), name="mfu")
    write_run_config(rr)
    run_worker(rr.run_dir)

    precision = resolve_precision("auto", torch.device("cpu")).name
    entries = json.loads((gptkit_home / "cpu_peak.json").read_text())["entries"]
    entry = entries[mfu.cache_key(mfu.cpu_matmul_precision(precision))]
    assert entry["precision"] == ("bf16" if precision == "bf16" else "fp32")
    peak = entry["flops"]

    model = GPT(get_preset("tiny").with_vocab(256))  # the data set is byte-level
    n_params = sum(p.numel() for p in model.parameters()) - model.transformer.wpe.weight.numel()
    records = [r for r in read_metrics(rr.run_dir) if "loss" in r]
    assert len(records) == 5
    for r in records:
        assert 0 < r["mfu"] <= 1.0
        assert r["mfu"] == pytest.approx(6 * n_params * r["tok_per_s"] / peak, rel=0.15)
