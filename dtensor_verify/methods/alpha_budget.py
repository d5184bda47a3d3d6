"""alpha-CROWN's working set sized to this process's part of the device (`device_share`).

With autograd, every sweep of an optimisation step keeps its A-matrices until the step's
backward pass, and every intermediate start node has its own slopes per (row, neuron) with their
gradient and Adam's two moments. On a ViT the softmax's intermediate nodes (pairwise differences
of the attention scores: 3 x 17^3 = 14,739 neurons on vit_2023's ibp_3_3_8) make one start node's
slopes alone 3.5 GB and its sweep tens of GB: 8 processes on one 80 GB GPU ran out of memory.

`fit_starts` estimates the bytes each start node's optimisation holds and, when their sum is
more than `FRACTION` of the memory this process may use, leaves the costliest intermediate start
nodes out of the optimisation (their bounds stay CROWN's: sound, possibly looser) until the rest
fits. The output's sweep is always optimised. Rows per sweep chunk of CROWN's intermediate bounds
(no autograd) are sized the same way (`crown_max_rows`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from ..device_share import free_memory_bytes, sharing

# The part of this process's free memory that alpha-CROWN's working set may take (the rest: the
# model, CROWN's start, fragmentation, what the pipeline holds).
FRACTION = 0.5
# Per (row, element) float32-sized values held until a step's backward pass, calibrated on
# vit_2023 pgd_2_3_16 (CPU, 2 steps with every start node: +2.08 GB peak RSS over CROWN's; this
# estimate 2.1 GB): ~6 A-matrix-sized tensors per node of a sweep (A, its positive / negative
# parts, the relaxed A, temporaries), and ~30 per slope (the slope, its gradient, Adam's two
# moments, and the float64 line coefficients and intercepts of the activation ops' relaxation).
SAVED_PER_NODE = 6
SLOPE_COPIES = 30


@dataclass(frozen=True)
class StartCost:
    name: str
    rows: int
    bytes: int              # slopes per (row, neuron)
    shared_bytes: int = 0   # one slope set shared by the node's rows (its sweep still has every row)
    slopes: int = 0         # slopes per row upstream (0: nothing to optimise, its bounds cannot move)


@dataclass(frozen=True)
class StartPlan:
    """Which intermediate start nodes alpha-CROWN optimises, and how (`plan_starts`)."""
    names: tuple[str, ...]      # optimised, in graph order
    shared: tuple[str, ...]     # of those, the ones whose rows share one slope set
    bytes: int                  # estimated working set, the output's included
    budget: int


def start_costs(graph, rows: dict, n_out_rows: int, batch: int, itemsize: int = 4) -> list[StartCost]:
    """Estimated bytes held by optimising each start node (the output first), in graph order."""
    alpha_ops = [n for n in graph.nodes if n.op is not None and getattr(n.op, "has_alpha", False)]
    costs = []
    for name, k in [(graph.output_name, n_out_rows)] + [(n, len(r)) for n, r in rows.items()]:
        ancestors = graph.ancestors(name)
        sweep = sum(graph[a].numel for a in ancestors)
        slopes = sum(getattr(a.op, "n_alpha", 2) * a.numel for a in alpha_ops
                     if a.name in ancestors and a.name != name)
        per_row = SAVED_PER_NODE * sweep + SLOPE_COPIES * slopes
        shared = SAVED_PER_NODE * sweep * k + SLOPE_COPIES * slopes
        costs.append(StartCost(name, k, itemsize * batch * k * per_row, itemsize * batch * shared, slopes))
    return costs


def fit_starts(graph, rows: dict, n_out_rows: int, batch: int, device, itemsize: int = 4,
               free_bytes=free_memory_bytes) -> tuple[tuple[str, ...], int, int]:
    """(intermediate start nodes to optimise, in graph order, their estimated bytes with the
    output's, the budget): every one when all fit in the budget, else as many as fit, cheapest
    first."""
    budget = int(free_bytes(device) * FRACTION)
    costs = start_costs(graph, rows, n_out_rows, batch, itemsize)
    total = costs[0].bytes
    if total + sum(c.bytes for c in costs[1:]) <= budget:
        return tuple(c.name for c in costs[1:]), total + sum(c.bytes for c in costs[1:]), budget
    kept = set()
    for c in sorted(costs[1:], key=lambda c: c.bytes):
        if total + c.bytes > budget:
            break
        kept.add(c.name)
        total += c.bytes
    return tuple(c.name for c in costs[1:] if c.name in kept), total, budget


def plan_starts(graph, rows: dict, n_out_rows: int, batch: int, device, itemsize: int = 4,
                free_bytes=free_memory_bytes, share: bool | None = None) -> StartPlan:
    """The intermediate start nodes to optimise within the budget. Every one with its own slopes
    per row when all fit (or `share` is False: then `fit_starts`' choice). Otherwise (or `share`
    True) as alpha,beta-CROWN's `share_alphas` does: the rows of a start node share one slope set
    (auto_LiRPA's spec size 1 for intermediate nodes; the output's rows keep their own), which
    leaves its sweep's A-matrices as the cost: as many nodes as fit, cheapest first (nodes with no
    slope upstream skipped), and then, in the room left, per-row slopes again for the nodes
    cheapest to give them (`share` None)."""
    budget = int(free_bytes(device) * FRACTION)
    costs = start_costs(graph, rows, n_out_rows, batch, itemsize)
    # A node with no slope upstream (e.g. the first attention's q / k / v) keeps its bounds whatever
    # the steps do: no room spent on it once the rest does not fit.
    inter, total = [c for c in costs[1:] if c.slopes > 0], costs[0].bytes
    if share is False or (share is None and total + sum(c.bytes for c in costs[1:]) <= budget):
        kept, total, budget = fit_starts(graph, rows, n_out_rows, batch, device, itemsize, free_bytes)
        return StartPlan(kept, (), total, budget)
    chosen = set()
    for c in sorted(inter, key=lambda c: c.shared_bytes):
        if total + c.shared_bytes > budget:
            break
        chosen.add(c.name)
        total += c.shared_bytes
    own = set()
    if share is None:
        for c in sorted((c for c in inter if c.name in chosen), key=lambda c: c.bytes - c.shared_bytes):
            if total + c.bytes - c.shared_bytes > budget:
                break
            own.add(c.name)
            total += c.bytes - c.shared_bytes
    names = tuple(c.name for c in inter if c.name in chosen)
    return StartPlan(names, tuple(n for n in names if n not in own), total, budget)


# A-matrices of the widest node alive at once per row of a backward sweep without autograd:
# measured peak live bytes / (rows x batch x widest x 4) of one sweep per carried node, CPU
# (alloc_cap.AllocationCap's count): up to 5.33 on vit_2023 ibp_3_3_8 (softmax difference nodes,
# 14,739 neurons), 4.07 on pgd_2_3_16 (scripts/bench_alpha_bab_memory.py --per-node).
CROWN_COPIES = 6


def crown_max_rows(graph, batch: int, device, itemsize: int = 4, free_bytes=free_memory_bytes) -> int | None:
    """Rows per backward sweep (no autograd) that fit the budget: `CROWN_COPIES` A-matrices of the
    widest node alive at once per row. None (no limit) on a CPU whose memory is not shared or
    faked (DTENSOR_VERIFY_SHARE_DEVICE / DTENSOR_VERIFY_DEVICE_BYTES): the host's free memory
    moves with other jobs, and a run's bounds should not."""
    if device.type == "cpu" and sharing() == 1 and "DTENSOR_VERIFY_DEVICE_BYTES" not in os.environ:
        return None
    widest = max((n.numel for n in graph.nodes), default=1)
    per_row = CROWN_COPIES * itemsize * batch * widest
    return max(1, int(free_bytes(device) * FRACTION) // per_row)
