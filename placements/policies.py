"""Placement policies as data.

A policy says, for one layer: how its weights are kept at rest, whether they are gathered
(FSDP `unshard()`) for the layer's bound step, and which dimension of the A-matrices that flow
through it is sharded over the mesh. The graph pass (`apply.py`) reads these records; the
distributed layout (`layout.py`) acts on them. Nothing else in the code base branches on a
policy's name.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Policy:
    name: str
    # "full": every rank holds the whole weight. "fsdp": Shard(0) via fully_shard.
    # "tp": Shard(0) DTensor rows (the layer's output neurons), used sharded in the bound step.
    weights_at_rest: str
    # Gather the full weight (FSDP unshard/reshard) around each step that uses it.
    gather_for_step: bool
    # Which dim of the A-matrices is sharded while bounding: None, "neuron" (the layer's output
    # dim: tensor parallel) or "spec" (rows of the bound: each rank bounds a slice).
    a_matrix_sharding: str | None
    summary: str
    supports_conv: bool = True
    # fsdp-style layers: start the next layer's all-gather (`unshard(async_op=True)`) while this
    # layer's bound step runs; costs one more gathered layer at a time, hides the gather's latency.
    prefetch_next: bool = False
    # fsdp-style Linear / Conv layers without autograd (IBP and CROWN steps): fetch the weight one
    # rank's Shard(0) rows at a time (CROWN: sum the partial products; IBP: fill that output
    # slice), so a whole layer is never gathered on a rank.
    stream_shards: bool = False


POLICIES: dict[str, Policy] = {
    p.name: p for p in (
        Policy("replicate", "full", False, None, "weights and A-matrices full on every rank (reference)"),
        Policy("fsdp", "fsdp", True, None,
               "weights Shard(0) at rest via fully_shard, unshard()/reshard() around each bound step; "
               "bitwise identical to one process at the same thread count (a one-process run with more "
               "threads than each rank sums in another order)"),
        Policy("fsdp-prefetch", "fsdp", True, None,
               "as fsdp, and each step starts the next layer's all-gather (unshard(async_op=True)) so "
               "it overlaps this step's compute; one more gathered layer per rank", prefetch_next=True),
        Policy("tp", "tp", False, "neuron",
               "weights Shard(0) on the neuron dim; A-matrices Shard on the neuron dim; matmul gives "
               "Partial, reduce-scattered by DTensor; intermediate bounds are real CROWN bounds",
               supports_conv=False),
        Policy("spec", "fsdp", True, "spec",
               "weights as fsdp; each rank bounds a slice of the rows (neurons / outputs) of the bound, "
               "alphas sharded the same way; no A-matrix communication; IBP and CROWN steps stream the "
               "weight one rank's shard at a time", stream_shards=True),
    )
}


def get_policy(name: str) -> Policy:
    from dtensor_verify.errors import PlanError

    try:
        return POLICIES[name.strip().lower()]
    except KeyError:
        raise PlanError(f"unknown placement policy '{name}'; known: {', '.join(POLICIES)}") from None
