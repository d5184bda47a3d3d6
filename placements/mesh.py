"""Mesh set-up from the torchrun environment (thin entry points over `topology.Topology`).

`gloo` on CPU, `nccl` on CUDA. By default a 1-D mesh whose dim is named "shard" (the layer plan
applies on it); `--mesh DPxSHARD` gives a 2-D mesh `("dp", "shard")` (torchtitan's idiom): the
plan applies on `mesh["shard"]` and branch and bound spreads domains over `mesh["dp"]`.
World size 1 never initialises torch.distributed.
"""
from __future__ import annotations

import os

import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh

from .topology import SHARD as MESH_DIM
from .topology import Topology, init_process_group, parse_degrees, world_size_from_env

parse_mesh_shape = parse_degrees


def init_mesh(backend: str | None = None, timeout_s: float = 300.0, shape: str | None = None) -> DeviceMesh | None:
    """The named mesh over all ranks started by torchrun (`shape`: "DPxSHARD", default 1-D), or
    None for one process. `apply_plan` turns it into the run's one `Topology`."""
    init_process_group(backend, timeout_s)
    return mesh_from_process_group(shape)


def mesh_from_process_group(shape: str | None = None) -> DeviceMesh | None:
    """The named DeviceMesh over the running process group, or None for one process."""
    topology = Topology.build(shape)
    return None if topology is None else topology.mesh


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


__all__ = ["MESH_DIM", "init_mesh", "mesh_from_process_group", "parse_mesh_shape", "world_size_from_env",
           "exit_now_if_distributed"]
