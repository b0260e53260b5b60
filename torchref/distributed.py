"""DistributedDataParallel under torchrun: each rank its slice of the shared global batch plan.

Twin: `jaxtrain/distributed.py`. `torchrun --standalone --nproc-per-node N -m torchref
train <flags>` sets RANK/WORLD_SIZE/MASTER_ADDR; the process group is gloo on CPU,
nccl on CUDA. Rank r takes the r-th contiguous block of every global batch of
`jaxtrain.data.epoch_batches` (not DistributedSampler's own permutation), the blocks
of a last partial batch differing by at most one row. DDP averages gradients over
ranks, so each rank backpropagates its share of the *global* batch's loss times N:
with equal blocks that is the per-rank mean, with unequal ones it still sums to the
global mean. One process is the world of one, through the same code.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import torch
import torch.distributed as dist

from jaxtrain.errors import ConfigError


class DataParallel:
    """The ranks of a run; `DataParallel()` is the world of one."""

    def __init__(self, world_size: int = 1, rank: int = 0, local_rank: int = 0):
        self.world_size, self.rank, self.local_rank = world_size, rank, local_rank

    @classmethod
    def from_env(cls) -> "DataParallel":
        """The world torchrun describes in the environment (one process without it)."""
        parallel = cls(int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0")),
                       int(os.environ.get("LOCAL_RANK", "0")))
        if parallel.world_size > 1 and not dist.is_initialized():
            if torch.cuda.is_available():
                torch.cuda.set_device(parallel.local_rank)
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        return parallel

    @property
    def is_main(self) -> bool:
        """Rank 0 prints and writes metrics and checkpoints."""
        return self.rank == 0

    def check_batches(self, num_samples: int, batch_size: int, split: str) -> None:
        """Every rank needs at least one row of every batch (DataLoader cannot yield an empty one)."""
        last = num_samples % batch_size or batch_size
        if self.world_size > 1 and min(batch_size, last) < self.world_size:
            raise ConfigError(f"the {split} set's last batch has {last} sample(s), fewer than the {self.world_size} "
                              "ranks; change --batch-size or the --*-limit")

    def rank_rows(self, indices: np.ndarray) -> np.ndarray:
        """This rank's contiguous block of one global batch."""
        return np.array_split(indices, self.world_size)[self.rank]

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """DDP around the model; on CUDA its BatchNorm layers become SyncBatchNorm (statistics of the
        global batch, as one device and JAX's mesh compute them). SyncBatchNorm needs CUDA: on CPU
        each rank normalises by its own block's statistics, as plain DDP does."""
        if self.world_size == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        if torch.cuda.is_available():
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
            return DistributedDataParallel(model, device_ids=[self.local_rank])
        if self.is_main and any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
            print("torchref: note: on CPU each DDP rank normalises by its own block's statistics (SyncBatchNorm "
                  "needs CUDA), so this run will not follow the one-process trajectory", file=sys.stderr)
        return DistributedDataParallel(model)

    def loss_share(self, loss: torch.Tensor, loss_fn, rows: int, global_rows: int) -> torch.Tensor:
        """This rank's share of the global batch's loss (the shares of all ranks sum to it): a mean
        over `rows` weighted by rows / global_rows; a sum (reduction="sum") as it is."""
        return loss if getattr(loss_fn, "reduction", "mean") == "sum" else loss * (rows / global_rows)

    def backward(self, share: torch.Tensor) -> None:
        """DDP divides the summed gradients by N: N x the share gives the global loss's gradient."""
        (share * self.world_size).backward()  # x 1 on one process: exact

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Summed over ranks (the global batch's loss from the shares)."""
        if self.world_size == 1:
            return tensor
        on_device = tensor.to("cuda" if torch.cuda.is_available() else "cpu", copy=True)  # nccl: CUDA tensors
        dist.all_reduce(on_device)
        return on_device.to(tensor.device)

    def any_process(self, flag: bool) -> bool:
        """True on every rank when it is true on any (so all stop at the same epoch)."""
        if self.world_size == 1:
            return flag
        return bool(self.sum(torch.tensor([int(flag)])).item())

    def close(self) -> None:
        """Every rank reaches this point (all collectives done everywhere) before the group goes;
        a rank leaving on an error does not wait for peers that may never come."""
        if self.world_size == 1 or not dist.is_initialized():
            return
        if sys.exc_info()[0] is None:
            dist.barrier()
        dist.destroy_process_group()


def exit_process(code: int) -> None:
    """End the process with `code`. Under torchrun (several ranks) without the interpreter's
    teardown: torch 2.13's gloo group keeps its threads (gloo_tcp_loop, pt_gloo_runloop) alive
    after destroy_process_group, and destroying them during teardown sometimes aborts the rank
    ("terminate called without an active exception", SIGABRT: 1 run in 12 here under load, 1 in 6
    on AMD Zen 5), after which torchrun kills the others. Everything is written by then."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    raise SystemExit(code)


ONE_PROCESS = DataParallel()
