"""One DP run on several processes (``torchrun``): which process this is, and the collectives the DP loop needs.

Every rank draws the same Poisson batch (rank 0's secret sampling seed is broadcast once at the start)
and the same diffusion draws (a seeded stream), takes its shard
of the batch (positions rank, rank + W, ...), computes and clips its examples' gradients; the clipped
sums and the quantile rule's clipped count are then summed over ranks in one all-reduce of one
flattened buffer. The DP noise is added once, on rank 0 before the all-reduce
(dpbench/engine/trainer.py), so the released sum carries N(0, σ²C²) whatever the number of
processes; the accountant and the EMA live on rank 0, which alone writes files.

Backends: NCCL on CUDA (rank r uses ``cuda:LOCAL_RANK``), gloo on CPU. The process group's timeout
is long because rank 0 pretrains, samples and evaluates alone while the other ranks wait for the
next collective.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Optional

import torch
import torch.distributed as dist

TIMEOUT = timedelta(hours=6)


def launched_with_several_processes() -> bool:
    """True under ``torchrun --nproc-per-node N`` (N > 1): torchrun sets WORLD_SIZE."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_root_process() -> bool:
    """False on the ranks other than 0 of a torchrun group (rank 0 reports and writes for the group)."""
    return int(os.environ.get("RANK", "0")) == 0


class Distributed:
    """This process's place in a torchrun group: ``rank``, ``world_size``, ``device``."""

    def __init__(self, rank: int, world_size: int, device: torch.device):
        self.rank, self.world_size, self.device = rank, world_size, device

    @classmethod
    def from_env(cls, device_type: str) -> Optional["Distributed"]:
        """Join the group torchrun describes in RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT;
        None when this is the only process."""
        if not launched_with_several_processes():
            return None
        rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        if device_type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
            backend = "nccl"
        else:
            device, backend = torch.device("cpu"), "gloo"
        if not dist.is_initialized():
            dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=TIMEOUT)
        return cls(rank, world_size, device)

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def all_reduce(self, summed: list[torch.Tensor], count: Optional[torch.Tensor]):
        """Sum the per-parameter sums (and the clipped count, if any) over ranks, in one collective.

        The count travels in the sums' dtype: an integer count is exact in float32 up to 2^24 examples,
        and its noise is already on it (rank 0)."""
        parts = [t.reshape(-1) for t in summed]
        if count is not None:
            parts.append(count.to(device=parts[0].device, dtype=parts[0].dtype))
        buffer = torch.cat(parts)
        dist.all_reduce(buffer)
        out, offset = [], 0
        for t in summed:
            out.append(buffer[offset:offset + t.numel()].view_as(t))
            offset += t.numel()
        reduced = buffer[offset:].to(device="cpu", dtype=torch.float64) if count is not None else None
        return out, reduced

    def broadcast_(self, tensors: list[torch.Tensor]) -> None:
        """Overwrite ``tensors`` on every rank with rank 0's values (one collective)."""
        buffer = torch.cat([t.detach().reshape(-1) for t in tensors])
        dist.broadcast(buffer, src=0)
        offset = 0
        with torch.no_grad():
            for t in tensors:
                t.copy_(buffer[offset:offset + t.numel()].view_as(t))
                offset += t.numel()

    def broadcast_seed(self, seed: int) -> int:
        """Rank 0's value of ``seed`` on every rank (the secret sampling seed: all ranks draw the same
        Poisson batches, and the seed never leaves the process group)."""
        buffer = torch.tensor([seed], dtype=torch.int64, device=self.device)
        dist.broadcast(buffer, src=0)
        return int(buffer.item())

    def barrier(self) -> None:
        dist.barrier()

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()
