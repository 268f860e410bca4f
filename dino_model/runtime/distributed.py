"""Process-group set-up for torchrun or a single process: NCCL on CUDA, gloo on CPU.

torchrun (and the Kubeflow Training Operator through it) sets RANK, WORLD_SIZE and LOCAL_RANK;
without them the run is a single process and every collective here is a no-op. `launch` starts
torchrun with N processes on this node, the path that pipeline components and the CLI use.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the torchrun process group if there is one; pick the device for this process."""
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        from dino_model.errors import ConfigError

        raise ConfigError("train.device=cuda but no CUDA device is visible; use train.device=cpu")
    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if use_cuda else "gloo"
        dist.init_process_group(backend=backend, device_id=dev if use_cuda else None)
        logger.info("joined process group: rank %d of %d, backend %s", rank, world, backend)
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=dev)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum across processes in place (identity in a single process)."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def torchrun_command(nproc: int, module_args: Sequence[str]) -> list[str]:
    """The command line that runs `python -m <module_args>` under torchrun on this node."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nnodes=1",
        f"--nproc-per-node={nproc}",
        "-m",
        *module_args,
    ]


def launch(nproc: int, module_args: Sequence[str], env: dict[str, str] | None = None) -> None:
    """Run a module with `nproc` processes (torchrun) or in a child process when nproc <= 1."""
    cmd = torchrun_command(nproc, module_args) if nproc > 1 else [sys.executable, "-m", *module_args]
    logger.info("launching: %s", " ".join(cmd))
    completed = subprocess.run(cmd, env={**os.environ, **(env or {})}, check=False)
    if completed.returncode != 0:
        from dino_model.errors import DinoError

        raise DinoError(f"training processes exited with code {completed.returncode}: {' '.join(cmd)}")
