"""Weights on 2 MB pages for decoding on a CPU (Linux transparent huge pages).

Decoding reads every weight once per token, streaming ~250 MB (gpt2 in bf16) from memory. On 4 kB
pages that stream walks ~60,000 page-table entries per token and misses the TLB on each new page;
on 2 MB pages, ~120. Most Linux systems ship THP in `madvise` mode, where only memory that asked for
it gets huge pages, and torch's allocator never asks. `pack_on_huge_pages` copies a model's tensors
into one buffer that asked, before its pages were first touched: decoding gpt2 in bf16 went from 81
to 86 tokens/s (median of 8 interleaved rounds, the AVX512-BF16 EPYC of the README).

Elsewhere (not Linux, THP off, a small model, another device) it leaves the model as it is: the
result is always the same numbers in the same tensors, only their memory may differ.
"""

from __future__ import annotations

import ctypes
import mmap
import re
import sys
from pathlib import Path

import torch
import torch.nn as nn

HUGE_PAGE = 2 << 20
MADV_HUGEPAGE: int | None = getattr(mmap, "MADV_HUGEPAGE", None)  # the platform's own number; Linux only
THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")
MIN_BYTES = 32 << 20  # below this the gain is small, and malloc may reuse 4 kB pages already faulted
ALIGN = 64  # bytes: every tensor starts on a cache line, as torch's own allocations do


def thp_available() -> bool:
    """Linux with transparent huge pages in `always` or `madvise` mode (`never`: the advice is taken
    and ignored, so the copy would buy nothing)."""
    if not sys.platform.startswith("linux") or MADV_HUGEPAGE is None:
        return False
    try:
        mode = re.search(r"\[(\w+)\]", THP_MODE.read_text())
    except OSError:
        return False
    return mode is not None and mode.group(1) in ("always", "madvise")


def _madvise_huge(addr: int, length: int) -> bool:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return libc.madvise(addr, length, MADV_HUGEPAGE) == 0


def huge_page_empty(nbytes: int) -> torch.Tensor | None:
    """An uninitialised uint8 CPU tensor of `nbytes` on memory advised for huge pages, or None where
    there are none to be had (not Linux, THP off) or the kernel refuses the advice."""
    if not thp_available():
        return None
    length = (nbytes + HUGE_PAGE - 1) // HUGE_PAGE * HUGE_PAGE  # whole huge pages
    # Above 32 MB (glibc's highest mmap threshold) malloc maps fresh, untouched memory, which the
    # advice then covers from the first fault; a smaller block may reuse 4 kB pages already faulted.
    raw = torch.empty(length + HUGE_PAGE, dtype=torch.uint8)
    offset = -raw.data_ptr() % HUGE_PAGE
    if not _madvise_huge(raw.data_ptr() + offset, length):
        return None
    return raw[offset : offset + nbytes]  # a view: keeps `raw`, and so the whole mapping, alive


def pack_on_huge_pages(model: nn.Module) -> bool:
    """Move every parameter and buffer of a CPU model into one huge-page buffer, in place (each keeps
    its shape, strides' order, dtype and values; a tensor reached under two names, like a tied
    weight, stays one). True if it did.

    Only plain layouts are moved: if two different tensors share memory (a view of another, whose
    writes would stop showing through) or one repeats elements (stride 0, expanded), the model is
    left as it is."""
    tensors: dict[int, torch.Tensor] = {}
    for t in [*model.parameters(), *model.buffers()]:
        tensors.setdefault(id(t), t)
    if any(t.device.type != "cpu" for t in tensors.values()):
        return False
    storages = {t.untyped_storage().data_ptr() for t in tensors.values() if t.numel()}
    if len(storages) < sum(1 for t in tensors.values() if t.numel()):
        return False  # two tensors over one storage: copying them apart would untie them
    if any(st == 0 and n > 1 for t in tensors.values() for st, n in zip(t.stride(), t.shape, strict=True)):
        return False  # expanded: copying would write every repeat out
    sizes = {i: (t.numel() * t.element_size() + ALIGN - 1) // ALIGN * ALIGN for i, t in tensors.items()}
    total = sum(sizes.values())
    if total < MIN_BYTES:
        return False
    buf = huge_page_empty(total)
    if buf is None:
        return False
    at = 0
    for i, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        dense = buf[at : at + nbytes].view(t.dtype)
        # the original's layout (a transposed weight stays transposed), over dense memory
        packed = torch.as_strided(dense, t.shape, _dense_strides(t))
        packed.copy_(t)
        t.data = packed
        at += sizes[i]
    return True


def _dense_strides(t: torch.Tensor) -> tuple[int, ...]:
    """Strides of a dense tensor with t's shape whose dimensions are laid out in t's stride order."""
    order = sorted(range(t.dim()), key=lambda d: t.stride(d))  # innermost first
    strides = [0] * t.dim()
    step = 1
    for d in order:
        strides[d] = step
        step *= t.size(d)
    return tuple(strides)
