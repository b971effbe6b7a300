"""The training data: memory-mapped token shards read as one deterministic, shuffled stream.

The stream of a split is an endless sequence of epochs. Each epoch visits the shards in an order
drawn from (seed, epoch), and within a shard the documents (split at the end-of-text token) in an
order drawn from (seed, epoch, shard). So a position in the stream, one integer, says exactly which
tokens come next: that integer is the whole data state a checkpoint needs, and it means the same
thing for any number of processes. A vocabulary without an end-of-text token (nanoGPT's character
vocabularies) has no document boundaries: each shard is then one document.

Training reads the stream in windows of seq_len + 1 tokens. Each epoch is cut into windows at
multiples of seq_len, and the windows are visited in an order shuffled within chunks of about
WINDOW_CHUNK_TOKENS (so a batch holds windows from many documents, as nanoGPT's random windows do,
while reads stay within a few shards). Row j of the step at data_pos is window data_pos // seq_len + j
of that order; micro-step m of rank r takes rows (m * world + r) * micro_batch ... + micro_batch - 1.
Each rank copies only its own rows out of the memory map, straight into the batch array.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from gptkit.data.shards import FOREIGN_FORMAT, check_token_ids, find_shards, open_shard, read_header, resolve_shards_dir
from gptkit.errors import GptkitError
from gptkit.tokenizer import Tokenizer

SCAN_CHUNK = 1 << 24  # tokens per chunk when looking for document boundaries (bounded memory)
# Windows are shuffled within chunks of this many tokens. Consecutive windows in a batch share a
# document, and with small batches that costs quality: on nanoGPT's char-level shape (batch 12 x 64)
# reading windows in order left the validation loss 0.4 nats above random windows
# (scripts/bench_charlevel.py). A chunk spans a few shards at most, so reads stay local.
WINDOW_CHUNK_TOKENS = 1 << 24


# --- finding the shards ------------------------------------------------------------------------
def check_data(data: str | Path | None) -> tuple[Path, list[Path], list[Path], dict]:
    """(directory, val shards, train shards, manifest) of --data (a directory, a name under shards/,
    or None for the newest tokenized data set; or a directory of llm.c shards, whose manifest is
    built in memory with its assumptions in manifest["notes"]), with the checks training needs."""
    data_dir = resolve_shards_dir(data).resolve()
    val, train, manifest = find_shards(data_dir)
    if not val:
        if manifest.get("format") == FOREIGN_FORMAT:  # read in place: there is no tokenize run to repeat
            raise GptkitError(
                f"{data_dir}: no validation shard; llm.c names it *_val_*.bin (e.g. fineweb_val_000000.bin)"
            )
        raise GptkitError(f"{data_dir}: no validation shard; re-run `gptkit tokenize` with --val-tokens")
    if train and not any(read_header(p) for p in train):  # before any process starts, not in a worker
        raise GptkitError(f"{data_dir}: the training shards hold no tokens")
    tokenizer_info(manifest, data_dir)
    return data_dir, val, train, manifest


def tokenizer_info(manifest: dict, where: Path | str = "manifest") -> tuple[str, int, int | None]:
    """(tokenizer name, vocabulary size, end-of-text id or None) from a shard manifest."""
    tok: Any = manifest.get("tokenizer")
    try:
        eot = tok["eot"]
        return str(tok["name"]), int(tok["vocab_size"]), None if eot is None else int(eot)
    except (TypeError, KeyError, ValueError):
        raise GptkitError(f"{where}: the manifest does not name its tokenizer; re-run `gptkit tokenize`") from None


def data_tokenizer(manifest: dict, data_dir: Path) -> Tokenizer:
    """The tokenizer the shards were made with: their saved tokenizer/ folder, or the built-in the
    manifest names (old manifests, llm.c shards), checked against the recorded vocabulary."""
    from gptkit.tokenizer import tokenizer_for

    tokenizer_info(manifest, data_dir)
    tok = tokenizer_for(manifest["tokenizer"], data_dir, str(data_dir))
    if tok.vocab_size != int(manifest["tokenizer"]["vocab_size"]) or tok.eot_token != manifest["tokenizer"]["eot"]:
        raise GptkitError(
            f"{data_dir}: the manifest records a vocabulary of {manifest['tokenizer']['vocab_size']} "
            f"(end-of-text {manifest['tokenizer']['eot']}) but its tokenizer has {tok.vocab_size} ({tok.eot_token})"
        )
    return tok


# --- the stream ----------------------------------------------------------------------------------
def _cached(cache: OrderedDict, key: Any, make: Callable[[], Any], size: int) -> Any:
    """cache[key], made on first use; the least recently used entry goes beyond `size` entries."""
    if key not in cache:
        cache[key] = make()
        if len(cache) > size:
            cache.popitem(last=False)
    cache.move_to_end(key)
    return cache[key]


class _Shard:
    """One memory-mapped shard and where its documents start (computed once, kept small).

    `vocab` (name, size): every token id is checked against it in the same pass, so shards read in
    place (llm.c's) or changed after `gptkit tokenize` fail in one line, not inside the embedding."""

    def __init__(self, path: Path, eot: int | None, vocab: tuple[str, int] | None = None):
        self.tokens = open_shard(path)
        n = len(self.tokens)
        found = []
        for i in range(0, n, SCAN_CHUNK):
            chunk = self.tokens[i : i + SCAN_CHUNK]
            if vocab is not None:
                check_token_ids(path, chunk, vocab)
            if eot is not None:  # without an end-of-text token the shard is one document
                found.append(np.flatnonzero(chunk == eot) + i)
        starts = np.concatenate(found) if found else np.zeros(0, dtype=np.int64)
        if len(starts) == 0 or starts[0] != 0:
            starts = np.concatenate([[0], starts])  # a leading piece before the first end-of-text
        self.starts = starts.astype(np.int64)
        self.lengths = np.diff(np.append(self.starts, n))


class TokenStream:
    """An endless, deterministic token stream over shards; see the module docstring."""

    def __init__(
        self,
        shard_paths: list[Path],
        eot: int | None,
        seed: int,
        shuffle: bool = True,
        cache: int = 16,
        vocab: tuple[str, int] | None = None,
    ):
        self.paths, self.vocab = list(shard_paths), vocab
        self.sizes = np.array([read_header(p) for p in self.paths], dtype=np.int64)
        self.total = int(self.sizes.sum())
        if self.total == 0:
            raise GptkitError(f"{self.paths[0].parent}: the shards hold no tokens")
        self.eot, self.seed, self.shuffle = eot, seed, shuffle
        self._shards: OrderedDict[int, _Shard] = OrderedDict()
        self._orders: OrderedDict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._cache = cache

    def _rng(self, *key: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, *key])

    def _shard_order(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        order = self._rng(epoch).permutation(len(self.paths)) if self.shuffle else np.arange(len(self.paths))
        return order, np.concatenate([[0], np.cumsum(self.sizes[order])])

    def _shard(self, i: int) -> _Shard:
        return _cached(self._shards, i, lambda: _Shard(self.paths[i], self.eot, self.vocab), self._cache)

    def _doc_order(self, epoch: int, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Document starts in this epoch's order and their cumulative lengths, for shard i."""

        def make() -> tuple[np.ndarray, np.ndarray]:
            sh = self._shard(i)
            perm = self._rng(epoch, i).permutation(len(sh.starts)) if self.shuffle else np.arange(len(sh.starts))
            return sh.starts[perm], np.concatenate([[0], np.cumsum(sh.lengths[perm])])

        return _cached(self._orders, (epoch, i), make, self._cache)

    def read(self, pos: int, out: np.ndarray) -> None:
        """Fill `out` (1-D) with the stream's tokens at positions pos, pos + 1, ..."""
        filled, n = 0, len(out)
        while filled < n:
            epoch, q = divmod(pos + filled, self.total)
            order, shard_cum = self._shard_order(epoch)
            k = int(np.searchsorted(shard_cum, q, side="right")) - 1
            i = int(order[k])
            local = q - int(shard_cum[k])
            starts, doc_cum = self._doc_order(epoch, i)
            d = int(np.searchsorted(doc_cum, local, side="right")) - 1
            tokens = self._shard(i).tokens
            while filled < n and d < len(starts):  # copy whole document pieces until the row is full
                off = local - int(doc_cum[d])
                take = min(n - filled, int(doc_cum[d + 1]) - local)
                a = int(starts[d]) + off
                out[filled : filled + take] = tokens[a : a + take]
                filled += take
                local += take
                d += 1


class TrainBatches:
    """This rank's micro-batches of one optimizer step."""

    def __init__(self, stream: TokenStream, seq_len: int, micro_batch: int, rank: int, world_size: int):
        self.stream, self.seq_len, self.micro_batch = stream, seq_len, micro_batch
        self.rank, self.world_size = rank, world_size
        self.windows = stream.total // seq_len  # window starts per epoch
        self.chunk = max(1, WINDOW_CHUNK_TOKENS // seq_len)  # windows per shuffled chunk
        self._perms: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()

    def rows_per_step(self, grad_accum: int) -> int:
        return grad_accum * self.world_size * self.micro_batch

    def window_start(self, window: int) -> int:
        """Stream position of the window-th window in the shuffled order (see the module docstring)."""
        if self.windows == 0:  # less than one window per epoch: read straight on
            return window * self.seq_len
        epoch, i = divmod(window, self.windows)
        c, j = divmod(i, self.chunk)

        def make() -> np.ndarray:
            n = min(self.chunk, self.windows - c * self.chunk)
            # A tag keeps these draws apart from the stream's own (seed, epoch[, shard]) orders.
            return np.random.default_rng([self.stream.seed, 0x57494E44, epoch, c]).permutation(n)

        perm = _cached(self._perms, (epoch, c), make, 4)
        return epoch * self.stream.total + (c * self.chunk + int(perm[j])) * self.seq_len

    def get(self, data_pos: int, micro_step: int, out: np.ndarray | None = None) -> np.ndarray:
        """(micro_batch, seq_len + 1) int64: inputs are [:, :-1], targets [:, 1:]. `out`: fill that
        array (BatchCopier's host buffer) instead of a new one."""
        T, B = self.seq_len, self.micro_batch
        first = data_pos // T + (micro_step * self.world_size + self.rank) * B
        buf = np.empty((B, T + 1), dtype=np.int64) if out is None else out
        for b in range(B):
            self.stream.read(self.window_start(first + b) + data_pos % T, buf[b])
        return buf


class BatchCopier:
    """Micro-batches from the host to the training device, as (inputs, targets).

    On CUDA the rows are read straight into page-locked (pinned) host buffers and copied with
    non_blocking=True: a copy from pageable memory is staged through a driver buffer and makes the
    host wait for the GPU every micro-step, while a pinned one is a DMA the host queues and moves on
    from. The buffer is reused only once the copy out of it has finished (a CUDA event per buffer; two
    buffers, so the next micro-step's rows are read while the last copy runs). On the CPU nothing is
    pinned (there is no device copy; pinning needs CUDA) and the same path runs, the "copy" to the CPU
    being the tensor itself; the inputs and targets are contiguous copies either way, so a buffer can
    be refilled at once.
    """

    def __init__(self, batches: TrainBatches, device: Any, slots: int = 2):
        import torch

        self.batches, self.device = batches, device
        self.cuda = device.type == "cuda"
        shape = (batches.micro_batch, batches.seq_len + 1)
        self.host = [torch.empty(shape, dtype=torch.int64, pin_memory=self.cuda) for _ in range(slots)]
        self.done: list[Any] = [None] * slots  # CUDA only: the event after the last copy out of each buffer
        self.next = 0

    def get(self, data_pos: int, micro_step: int) -> tuple[Any, Any]:
        import torch

        i = self.next
        self.next = (i + 1) % len(self.host)
        if self.done[i] is not None:
            self.done[i].synchronize()  # that buffer's last copy has left it
        host = self.host[i]
        self.batches.get(data_pos, micro_step, out=host.numpy())
        t = host.to(self.device, non_blocking=self.cuda)
        if self.cuda:
            self.done[i] = torch.cuda.Event()
            self.done[i].record()
        return t[:, :-1].contiguous(), t[:, 1:].contiguous()


def val_rows(stream: TokenStream, seq_len: int, budget_tokens: int, rank: int, world_size: int, micro_batch: int):
    """The fixed validation set, in batches: rank r takes rows r, r + world, ... of the first budget."""
    available = (stream.total - 1) // seq_len  # never wrap around: each row is read once
    total = min(budget_tokens // seq_len, available) // world_size * world_size
    if total == 0:
        raise GptkitError(
            f"the validation budget ({budget_tokens} tokens, {stream.total} in the val shards) gives no full "
            f"sequence of {seq_len} tokens to each of {world_size} processes; raise --eval-tokens or set it to 0"
        )
    mine = list(range(rank, total, world_size))
    for i in range(0, len(mine), micro_batch):
        chunk = mine[i : i + micro_batch]
        buf = np.empty((len(chunk), seq_len + 1), dtype=np.int64)
        for b, row in enumerate(chunk):
            stream.read(row * seq_len, buf[b])
        yield buf
