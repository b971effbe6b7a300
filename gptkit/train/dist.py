"""The processes of a run: rank, world and device from torchrun's environment, the process group
(gloo on CPU, NCCL on CUDA), the collectives the trainer uses, and the per-step seed."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from gptkit.errors import GptkitError


class TrainingError(GptkitError):
    """A user-facing failure inside the workers. `collective`: every rank raises it at the same point
    (e.g. a NaN loss, which all ranks see after the all-reduce), so all can exit cleanly."""

    def __init__(self, message: str, collective: bool = True):
        super().__init__(message)
        self.collective = collective


def step_seed(seed: int, step: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1)[0])


def _attempt_store(world_size: int, rank: int) -> dict:
    """init_process_group's store for a restarted attempt (--max-restarts): torchrun 2.13 keeps one TCP
    store for all attempts and the workers' keys name no attempt, so a restarted rank could read the
    address the rank that died had published (measured: gloo's "Connection refused" at the next
    attempt's start, every few runs). Each attempt's keys under its own prefix."""
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    if attempt == "0" or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return {}
    import datetime

    import torch.distributed as dist

    store = dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        world_size,
        is_master=False,
        timeout=datetime.timedelta(minutes=30),
    )
    return {"store": dist.PrefixStore(f"gptkit/attempt-{attempt}", store), "rank": rank, "world_size": world_size}


class Dist:
    """rank / world / device, and the process group when torchrun started us."""

    def __init__(self, device_type: str, timeout_s: float | None = None):
        self.rank = int(os.environ.get("RANK", 0))
        self.world_size = int(os.environ.get("WORLD_SIZE", 1))
        self.local_rank = int(os.environ.get("LOCAL_RANK", 0))
        self.launched = "TORCHELASTIC_RUN_ID" in os.environ or "RANK" in os.environ
        if device_type == "cuda":
            # Only reachable with a GPU: one device per local rank, NCCL between them.
            torch.cuda.set_device(self.local_rank)
            self.device = torch.device("cuda", self.local_rank)
            backend = "nccl"
        else:
            self.device = torch.device(device_type)
            backend = "gloo"
        if self.launched and self.world_size > 1:
            import datetime

            import torch.distributed as dist

            # Above the watchdog's limits, so a hang is reported by the watchdog (with stacks) first.
            timeout = datetime.timedelta(seconds=timeout_s) if timeout_s else None
            dist.init_process_group(backend=backend, timeout=timeout, **_attempt_store(self.world_size, self.rank))
        self.master = self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.launched and self.world_size > 1

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        if self.distributed:
            import torch.distributed as dist

            dist.all_reduce(t)
        return t

    def broadcast_object(self, obj):
        if not self.distributed:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    @contextmanager
    def alone(self) -> Iterator[None]:
        """Work this rank does by itself (rank 0's checkpoint write, its sample): a GptkitError raised
        here is this rank's alone, so it exits non-zero (train/main.py) and torchrun stops the rest."""
        try:
            yield
        except GptkitError as e:
            e.collective = False  # type: ignore[attr-defined]  # read by train/main.py
            raise

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


NODES_DIR = ".nodes"


def check_shared_run_dir(d: Dist, run_dir: Path, nodes: int) -> None:
    """Several nodes must see one run directory: rank 0 writes the checkpoints every node's resume
    reads. Each node's first worker writes a marker there, and each looks for every node's; a node
    that misses one refuses the run on every rank (collective=False: each node's launcher reports it)."""
    import uuid

    node, first = int(os.environ.get("GROUP_RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)) == 0
    token = d.broadcast_object(uuid.uuid4().hex if d.master else None)
    marks = Path(run_dir) / NODES_DIR
    own = marks / f"{token}-{node}"
    if first:
        marks.mkdir(parents=True, exist_ok=True)
        own.write_text(f"{node}\n")
    d.barrier()
    blind = torch.zeros(nodes, dtype=torch.int32, device=d.device)
    if first and not all((marks / f"{token}-{n}").is_file() for n in range(nodes)):
        blind[node] = 1
    d.all_reduce(blind)
    d.barrier()  # every node has looked: the markers can go
    if first:
        own.unlink(missing_ok=True)
    lost = [n for n in range(nodes) if blind[n].item()]
    if lost:
        raise TrainingError(
            f"the nodes do not share the run directory {run_dir}: node(s) {', '.join(map(str, lost))} did not find "
            "every node's marker in it; put it on a filesystem every node sees (--out DIR): rank 0 writes the "
            "checkpoints every node resumes from",
            collective=False,
        )
