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
