"""The processes of a run: rank, world and device from torchrun's environment, the process group
(gloo on CPU, NCCL on CUDA), the collectives the trainer uses, and the per-step seed."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

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
            dist.init_process_group(backend=backend, timeout=timeout)
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
