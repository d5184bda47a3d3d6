"""Mesh set-up from the torchrun environment.

`gloo` on CPU, `nccl` on CUDA; a 1-D mesh whose dim is named "shard" (branch-and-bound will add
a "dp" dim in front: `init_device_mesh(..., (dp, shard), mesh_dim_names=("dp", "shard"))`).
World size 1 never initialises torch.distributed.
"""
from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

MESH_DIM = "shard"


def world_size_from_env() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_mesh(backend: str | None = None, timeout_s: float = 300.0) -> DeviceMesh | None:
    """The 1-D mesh over all ranks started by torchrun, or None for one process."""
    if not dist.is_initialized():
        if world_size_from_env() <= 1:
            return None
        use_cuda = torch.cuda.is_available() and backend in (None, "nccl")
        backend = backend or ("nccl" if use_cuda else "gloo")
        if use_cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    return mesh_from_process_group()


def mesh_from_process_group() -> DeviceMesh | None:
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return None
    backend = dist.get_backend()
    device_type = "cuda" if backend == "nccl" else "cpu"
    return init_device_mesh(device_type, (dist.get_world_size(),), mesh_dim_names=(MESH_DIM,))


def mesh_device(mesh: DeviceMesh | None) -> torch.device:
    if mesh is None or mesh.device_type == "cpu":
        return torch.device("cpu")
    return torch.device("cuda", torch.cuda.current_device())



def exit_now_if_distributed(code: int) -> None:
    """End a torchrun worker right away once its work is done and its output flushed.

    With gloo, the process group's native threads can abort the interpreter during exit-time
    clean-up ('terminate called without an active exception', roughly one run in ten here),
    which torchrun reports as a failed run although every result was written. Skipping the
    clean-up avoids that; there is nothing left to release that the OS does not reclaim.
    """
    if dist.is_initialized():
        import sys
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
