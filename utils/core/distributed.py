"""Process-group set-up for torchrun, and a sampler whose order depends only on (seed, epoch).

The sampler makes runs reproducible and resumable mid-epoch: a resumed run skips exactly the
batches the interrupted one had already taken.
"""
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

# Every collective waits at most this long for the other ranks. Long enough for rank 0's checkpoint writing and
# for a slow rank's share of an evaluation on a large validation set, short enough that a lost rank ends the run.
PROCESS_GROUP_TIMEOUT = timedelta(minutes=60)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(*, requested: bool, device_type: str) -> DistInfo:
    """Joins the process group torchrun describes in the environment (nccl on CUDA, gloo on CPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if requested and "RANK" not in os.environ:
        raise RuntimeError("distributed=True needs the environment torchrun sets: start with "
                           "`torchrun --nproc_per_node=N train.py ...`")
    if world_size <= 1:
        return DistInfo()
    info = DistInfo(rank=int(os.environ["RANK"]), local_rank=int(os.environ.get("LOCAL_RANK", "0")),
                    world_size=world_size)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo", timeout=PROCESS_GROUP_TIMEOUT)
    return info


def cleanup_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo, *, timeout: timedelta = PROCESS_GROUP_TIMEOUT) -> None:
    """Waits for every rank. On gloo a monitored barrier, whose timeout error names the ranks that never came."""
    if not info.enabled:
        return
    if dist.get_backend() == "gloo":
        dist.monitored_barrier(timeout=timeout)
    else:
        dist.barrier()  # nccl: bounded by the process-group timeout


def all_gather_objects(obj, info: DistInfo) -> list:
    """Every rank's ``obj`` (picklable), in rank order, on every rank; ``[obj]`` without DDP."""
    if not info.enabled:
        return [obj]
    gathered = [None] * info.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def all_reduce_mean(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        value = value.clone()
        dist.all_reduce(value)
        value /= info.world_size
    return value


class EpochSampler(Sampler[int]):
    """Shuffles with a generator seeded by (seed, epoch); shards by rank; can skip a prefix.

    Every rank sees ``len(dataset) // world_size`` samples (the tail that does not divide is dropped
    in that epoch, a different tail each epoch).
    """

    def __init__(self, dataset_len: int, *, shuffle: bool, seed: int, rank: int = 0, world_size: int = 1):
        self.dataset_len, self.shuffle, self.seed = dataset_len, shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, *, skip: int = 0) -> None:
        """``skip``: samples of this rank's share already consumed (resume in the middle of an epoch)."""
        self.epoch, self.skip = epoch, skip

    def _indices(self) -> list[int]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
            order = torch.randperm(self.dataset_len, generator=generator).tolist()
        else:
            order = list(range(self.dataset_len))
        per_rank = self.dataset_len // self.world_size
        return order[self.rank:per_rank * self.world_size:self.world_size][self.skip:]

    def __iter__(self):
        return iter(self._indices())

    def __len__(self) -> int:
        return max(self.dataset_len // self.world_size - self.skip, 0)


def sync_buffers(module: torch.nn.Module, info: DistInfo) -> None:
    """Copies rank 0's buffers (BatchNorm running statistics) to every rank.

    DDP syncs gradients, not the running statistics each rank updates in its own last forward; syncing them
    after each epoch makes validation and checkpoints identical on every rank.
    """
    if info.enabled:
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)
