"""Mesh set-up from the torchrun environment.

`gloo` on CPU, `nccl` on CUDA. By default a 1-D mesh whose dim is named "shard" (the layer plan
applies on it); `--mesh DPxSHARD` gives a 2-D mesh `("dp", "shard")` (torchtitan's idiom): the
plan applies on `mesh["shard"]` and branch and bound spreads domains over `mesh["dp"]`.
World size 1 never initialises torch.distributed.
"""
from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

MESH_DIM = "shard"
DP_DIM = "dp"


def parse_mesh_shape(text: str | None, world: int) -> tuple[int, int]:
    """`"DPxSHARD"` (e.g. "2x2") -> (dp, shard), checked against the world size; None -> (1, world)."""
    from dtensor_verify.errors import PlanError

    if text is None:
        return 1, world
    parts = text.lower().replace("*", "x").split("x")
    try:
        dp, shard = (int(p) for p in parts)
    except ValueError:
        raise PlanError(f"--mesh '{text}': expected DPxSHARD, e.g. 2x2") from None
    if dp < 1 or shard < 1 or dp * shard != world:
        raise PlanError(f"--mesh '{text}': {dp} x {shard} = {dp * shard} ranks, but {world} were started "
                        f"(torchrun --nproc-per-node)")
    return dp, shard


def split_mesh(mesh: DeviceMesh | None) -> tuple[DeviceMesh | None, DeviceMesh | None]:
    """(the mesh the layer plan uses, the `dp` mesh of branch and bound or None)."""
    if mesh is None:
        return None, None
    names = mesh.mesh_dim_names or ()
    if DP_DIM in names:
        return mesh[MESH_DIM], mesh[DP_DIM]
    return mesh, None


def world_size_from_env() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_mesh(backend: str | None = None, timeout_s: float = 300.0, shape: str | None = None) -> DeviceMesh | None:
    """The mesh over all ranks started by torchrun (`shape`: "DPxSHARD", default 1-D), or None
    for one process."""
    if not dist.is_initialized():
        if world_size_from_env() <= 1:
            return None
        use_cuda = torch.cuda.is_available() and backend in (None, "nccl")
        backend = backend or ("nccl" if use_cuda else "gloo")
        if use_cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    return mesh_from_process_group(shape)


def mesh_from_process_group(shape: str | None = None) -> DeviceMesh | None:
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return None
    backend = dist.get_backend()
    device_type = "cuda" if backend == "nccl" else "cpu"
    dp, shard = parse_mesh_shape(shape, dist.get_world_size())
    if dp == 1:
        return init_device_mesh(device_type, (shard,), mesh_dim_names=(MESH_DIM,))
    return init_device_mesh(device_type, (dp, shard), mesh_dim_names=(DP_DIM, MESH_DIM))


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
