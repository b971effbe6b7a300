"""gptkit.memory: a decoding model's tensors moved onto huge pages keep every value, shape, layout
and tie, and decoding gives the same tokens; small models, other devices and refusals are left alone."""

import copy
import re
import sys
from pathlib import Path

import pytest
import torch
from test_decode_speed_paths import greedy, seeded_model

import gptkit.memory as memory
from gptkit.models import prepare_for_decoding

THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def thp_mode() -> str:
    """'always' | 'madvise' | 'never' | '' (no THP, or not Linux)."""
    m = re.search(r"\[(\w+)\]", THP.read_text()) if THP.exists() else None
    return m.group(1) if m else ""


def vm_flags_at(addr: int) -> list[str]:
    """The VmFlags of the mapping holding `addr`, from /proc/self/smaps ("hg": advised for huge pages)."""
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            inside = lo <= addr < hi
        elif inside and line.startswith("VmFlags:"):
            return line.split()[1:]
    return []


NO_THP = pytest.mark.skipif(not memory.thp_available(), reason="no transparent huge pages on this machine")


@NO_THP
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_model_keeps_values_layout_and_ties_and_decodes_the_same(monkeypatch, dtype):
    plain = prepare_for_decoding(seeded_model(vocab=300, padded=320), dtype)  # too small: not packed
    model = copy.deepcopy(plain)
    monkeypatch.setattr(memory, "MIN_BYTES", 0)
    # pack what prepare_for_decoding made (WideLinear's transposed fp32 weights included)
    before = {k: (v.clone(), v.stride()) for k, v in model.state_dict(keep_vars=True).items()}
    assert memory.pack_on_huge_pages(model)
    after = model.state_dict(keep_vars=True)
    assert before.keys() == after.keys()
    for k, (value, stride) in before.items():
        assert torch.equal(after[k], value) and after[k].dtype == value.dtype, k
        assert after[k].stride() == stride, k  # a transposed weight stays transposed
        assert after[k].data_ptr() % memory.ALIGN == 0, k
    if dtype == torch.bfloat16:  # fp32 gives lm_head a transposed copy of its own (WideLinear)
        assert model.lm_head.weight is model.transformer.wte.weight
    # one buffer holds them all
    ptrs = sorted(t.data_ptr() for t in {id(t): t for t in after.values()}.values())
    assert ptrs[-1] - ptrs[0] < sum(t.numel() * t.element_size() + memory.ALIGN for t in after.values())
    assert greedy(model, [1, 2, 3], n=30) == greedy(plain, [1, 2, 3], n=30)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise(MADV_HUGEPAGE) is Linux's")
def test_the_buffer_is_advised_for_huge_pages():
    """The buffer starts on a 2 MB boundary and its mapping carries the advice (VmFlags "hg"): whether
    the kernel then hands out huge pages (THP mode, free memory) is its own business."""
    n = memory.MIN_BYTES + 3  # as large as a packed model: above glibc's mmap threshold, fresh pages
    buf = memory.huge_page_empty(n)
    if buf is None:  # no THP here, or THP off
        assert thp_mode() in ("", "never")
        return
    assert buf.numel() == n and buf.data_ptr() % memory.HUGE_PAGE == 0
    assert "hg" in vm_flags_at(buf.data_ptr()) and "hg" in vm_flags_at(buf.data_ptr() + n - 1)


def test_small_models_and_refusals_are_left_alone(monkeypatch):
    model = prepare_for_decoding(seeded_model(), torch.float32)  # ~0.1 MB: below MIN_BYTES
    ptr = model.transformer.wte.weight.data_ptr()
    assert memory.pack_on_huge_pages(model) is False and model.transformer.wte.weight.data_ptr() == ptr
    monkeypatch.setattr(memory, "MIN_BYTES", 0)
    monkeypatch.setattr(memory, "_madvise_huge", lambda addr, length: False)  # a kernel without THP
    assert memory.pack_on_huge_pages(model) is False and model.transformer.wte.weight.data_ptr() == ptr
    assert memory.pack_on_huge_pages(torch.nn.Linear(2, 2, device="meta")) is False  # not on the CPU


def packed(model) -> bool:
    """All tensors in one buffer that starts on a huge page: what pack_on_huge_pages leaves."""
    ts = {id(t): t for t in [*model.parameters(), *model.buffers()]}.values()
    ptrs = sorted(t.data_ptr() for t in ts)
    size = sum(t.numel() * t.element_size() + memory.ALIGN for t in ts)
    return ptrs[0] % memory.HUGE_PAGE == 0 and ptrs[-1] - ptrs[0] < size


@NO_THP
def test_huge_pages_only_for_a_long_enough_decoding(tmp_path, monkeypatch):
    """Their first touch costs up to 0.4 s on a VM: `gptkit sample`'s default 200 tokens stay on 4 kB
    pages, a long generation moves; the CLI says how many steps it will decode (-n: samples share
    each step's read of the weights, so --num-samples does not count)."""
    from typer.testing import CliRunner

    from gptkit.checkpoint import save_checkpoint
    from gptkit.cli import app
    from gptkit.models import HUGE_PAGES_FROM_STEPS, load_for_sampling

    monkeypatch.setattr(memory, "MIN_BYTES", 0)
    model = seeded_model(vocab=256, padded=256)
    ck = save_checkpoint(tmp_path / "ck", model, config=model.config, tokenizer="bytes")
    cpu = torch.device("cpu")
    assert not packed(load_for_sampling(ck, cpu, steps=200)[0])
    assert packed(load_for_sampling(ck, cpu, steps=HUGE_PAGES_FROM_STEPS)[0])

    seen = []
    real = memory.pack_on_huge_pages
    monkeypatch.setattr("gptkit.models.pack_on_huge_pages", lambda m: seen.append(real(m)) or seen[-1])
    for n, samples, want in ((200, 1, []), (HUGE_PAGES_FROM_STEPS // 2, 2, []), (HUGE_PAGES_FROM_STEPS, 1, [True])):
        seen.clear()
        args = ["sample", "hi", "--model", str(ck), "-n", str(n), "--num-samples", str(samples), "--temperature", "0"]
        r = CliRunner().invoke(app, args)
        assert r.exit_code == 0, r.output
        assert seen == want


def test_shared_storage_and_expanded_tensors_are_left_alone(monkeypatch):
    """Copying two tensors over one storage apart would untie them, and an expanded one would be
    written out whole: such a model is not moved."""
    monkeypatch.setattr(memory, "MIN_BYTES", 0)
    m = torch.nn.Module()
    m.register_buffer("big", torch.arange(8.0))
    m.register_buffer("alias", m.big[2:4])  # a view: writes to `big` show through it
    assert memory.pack_on_huge_pages(m) is False
    m.big[2] = 100.0
    assert m.alias[0] == 100.0
    e = torch.nn.Module()
    e.register_buffer("row", torch.arange(7.0).view(1, 7).expand(5, 7))
    assert memory.pack_on_huge_pages(e) is False and e.row.stride() == (0, 1)


def test_thp_mode_never_or_no_thp_means_no_buffer(monkeypatch, tmp_path):
    mode = tmp_path / "enabled"
    monkeypatch.setattr(memory, "THP_MODE", mode)
    mode.write_text("always madvise [never]\n")
    assert memory.huge_page_empty(memory.MIN_BYTES) is None  # the advice would be ignored
    mode.unlink()
    assert memory.huge_page_empty(memory.MIN_BYTES) is None  # a kernel without THP
    mode.write_text("always [madvise] never\n")
    assert (memory.huge_page_empty(memory.MIN_BYTES) is not None) == sys.platform.startswith("linux")
