"""Running on several processes with PyTorch's own distributed engine (``torchrun``).

``sst-fast train`` and ``sst-fast eval`` started by ``torchrun`` join the process group that torchrun
describes in the environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``PORT``):
``gloo`` for CPU tensors, ``nccl`` for CUDA ones. Inside a Python program that has initialised a
process group itself, :class:`~sst_fast.engine.Trainer` and :func:`~sst_fast.engine.score_episodes`
use that group.

The rules that make a run on W processes the same run as on one:

- a training step consumes one *global* batch of ``optim.batch_size`` episodes, the same episodes in
  the same order as a single process; each rank takes a contiguous share (:func:`split`) and weighs
  its loss by its share, so DistributedDataParallel's gradient average is the global batch's mean;
- evaluation cuts the episodes into the same batches as a single process and deals whole batches
  to the ranks (:func:`deal`); the per-batch meters are gathered and merged in batch order, so the
  metrics equal the single-process ones exactly (integer sums, and the episode-wise mean summed in
  the same order);
- rank 0 alone writes files; every rank takes part in each collective call, in the same order.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from contextlib import contextmanager

import torch
import torch.distributed as dist


@dataclasses.dataclass(frozen=True)
class World:
    """The processes of a run: this one's ``rank`` among ``size``, and its ``local_rank`` on its node."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the process that writes the run's files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def current() -> World:
    """The world of the initialised process group, or a single process when there is none."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    local_rank = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
    return World(dist.get_rank(), dist.get_world_size(), local_rank)


def launched() -> bool:
    """True when this process is one of several started by ``torchrun`` (``WORLD_SIZE`` > 1)."""
    value = os.environ.get("WORLD_SIZE", "1").strip() or "1"
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"the environment's WORLD_SIZE must be a positive integer, got {value!r}")
    return int(value) > 1


@contextmanager
def process_group():
    """Join the process group described by torchrun's environment for the duration of the block (and leave
    it after); a no-op for a single process or when a group is initialised already."""
    if not launched() or not dist.is_available() or dist.is_initialized():
        yield
        return
    for name in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        if name not in os.environ:
            raise ValueError(f"WORLD_SIZE is set but {name} is not: start several processes with torchrun")
    backend = "gloo"
    if torch.cuda.is_available() and dist.is_nccl_available():
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]) % torch.cuda.device_count())
        backend = "cpu:gloo,cuda:nccl"
    dist.init_process_group(backend)
    try:
        yield
    finally:
        dist.destroy_process_group()


def split(count: int, world: World) -> range:
    """This rank's contiguous share of ``count`` items: the first ``count % W`` ranks take one more."""
    base, extra = divmod(count, world.size)
    start = world.rank * base + min(world.rank, extra)
    return range(start, start + base + (world.rank < extra))


def deal(count: int, world: World) -> range:
    """The items ``rank, rank + W, rank + 2W, ...`` of ``count``: whole batches dealt round-robin."""
    return range(world.rank, count, world.size)


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s random stream (dropout) in a run seeded with ``seed``."""
    digest = hashlib.sha256(f"sst_fast/{seed}/rank/{rank}".encode()).digest()
    return int.from_bytes(digest[:7], "little")


def all_sum(values: torch.Tensor, world: World) -> torch.Tensor:
    """``values`` summed over the ranks (float64 on the CPU: exact for counts, order-fixed for the rest)."""
    if not world.distributed:
        return values
    total = values.detach().to("cpu", torch.float64).clone()
    dist.all_reduce(total, group=_cpu_group())
    return total


def all_gather(value, world: World) -> list:
    """Every rank's ``value`` (any picklable object), in rank order, on every rank."""
    if not world.distributed:
        return [value]
    values = [None] * world.size
    dist.all_gather_object(values, value, group=_cpu_group())
    return values


def broadcast(value, world: World):
    """Rank 0's ``value`` on every rank."""
    if not world.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0, group=_cpu_group())
    return box[0]


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier(group=_cpu_group())


_CPU_GROUP = None


def _cpu_group():
    """A gloo group over all ranks for the small CPU-side exchanges (the default group may be NCCL-only)."""
    global _CPU_GROUP
    backend = dist.get_backend()
    if backend == "gloo":
        return None
    if _CPU_GROUP is None or not _group_alive(_CPU_GROUP):
        _CPU_GROUP = dist.new_group(backend="gloo")
    return _CPU_GROUP


def _group_alive(group) -> bool:
    try:
        dist.get_world_size(group)
    except (RuntimeError, ValueError):
        return False
    return True
