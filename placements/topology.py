"""One topology: the `dp x shard` mesh, its groups and the roles of each rank (torchtitan's
`ParallelDims` idiom).

The degrees are validated once (`parse_degrees`, before any process group exists), the named
mesh is built once (1-D `("shard",)` when dp = 1, else 2-D `("dp", "shard")`), and everything
else asks this object: the placement styles take `shard_mesh` (the plan applies within one
shard group), branch and bound's collectives take `group` (the whole mesh) with `coords` /
`rank_at` (mesh coordinates read from the mesh itself, no rank arithmetic), the memory meter
takes `shard_group`. Multi-node runs are the same: torchrun's rendezvous gives every rank its
place, the mesh is built over all of them.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from dtensor_verify.layout import Topology as LocalTopology

SHARD = "shard"
DP = "dp"


def parse_degrees(text: str | None, world: int) -> tuple[int, int]:
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
                        f"(torchrun --nproc-per-node times --nnodes)")
    return dp, shard


def world_size_from_env() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_process_group(backend: str | None = None, timeout_s: float = 300.0) -> bool:
    """Join torchrun's process group (once); False for one process."""
    if dist.is_initialized():
        return True
    if world_size_from_env() <= 1:
        return False
    use_cuda = torch.cuda.is_available() and backend in (None, "nccl")
    backend = backend or ("nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    return True


@dataclass(eq=False)
class Topology(LocalTopology):
    """The `dp x shard` mesh of a distributed run (see the module docstring)."""
    mesh: DeviceMesh

    @classmethod
    def build(cls, shape: str | None = None) -> "Topology | None":
        """The mesh over every rank of the process group, or None for one process."""
        if not dist.is_initialized() or dist.get_world_size() == 1:
            return None
        device_type = "cuda" if dist.get_backend() == "nccl" else "cpu"
        dp, shard = parse_degrees(shape, dist.get_world_size())
        if dp == 1:
            return cls(init_device_mesh(device_type, (shard,), mesh_dim_names=(SHARD,)))
        return cls(init_device_mesh(device_type, (dp, shard), mesh_dim_names=(DP, SHARD)))

    def __post_init__(self):
        names = self.mesh.mesh_dim_names or ()
        two_d = DP in names
        self.shard_mesh = self.mesh[SHARD] if two_d else self.mesh
        self.dp_mesh = self.mesh[DP] if two_d else None
        self.grid = self.mesh.mesh.reshape(-1 if two_d else 1, self.shard_mesh.size())   # [dp, shard] ranks
        self.dp, self.shard = self.grid.shape
        self.world = self.dp * self.shard
        self.flat = self.grid.flatten().tolist()          # global ranks in mesh order
        # The group over the whole mesh (branch and bound's syncs); a 2-D mesh is flattened.
        self.group = self.mesh._flatten(f"{DP}_{SHARD}").get_group() if two_d else self.mesh.get_group()
        self.shard_group = self.shard_mesh.get_group()
        self.dp_group = self.dp_mesh.get_group() if two_d else None
        self.rank = dist.get_rank(self.group)
        self.dp_rank, self.shard_rank = self.coords(self.rank)
        self.is_leader = self.rank == 0
        self.device = _mesh_device(self.mesh)

    def coords(self, rank: int) -> tuple[int, int]:
        where = (self.grid == dist.get_global_rank(self.group, rank)).nonzero()[0]
        return int(where[0]), int(where[1])

    def rank_at(self, dp_index: int, shard_index: int) -> int:
        return dist.get_group_rank(self.group, int(self.grid[dp_index, shard_index]))

    def describe(self) -> str:
        return f"mesh dp x shard = {self.dp} x {self.shard}"


def _mesh_device(mesh: DeviceMesh | None) -> torch.device:
    if mesh is None or mesh.device_type == "cpu":
        return torch.device("cpu")
    return torch.device("cuda", torch.cuda.current_device())


def as_topology(mesh) -> Topology | None:
    """A Topology from a Topology, a DeviceMesh (1-D "shard" or 2-D "dp" x "shard") or None."""
    if mesh is None or isinstance(mesh, Topology):
        return mesh
    return Topology(mesh)
