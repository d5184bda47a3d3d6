"""What bounding again the layers behind a cut costs, and which cuts branch and bound can afford.

A general split (and, on networks with general ops, a ReLU split whose output reaches one) makes
its children's layers behind the cut bounded again (`general_refresh.refine_after`): a CROWN
sweep of every neuron of every carried node downstream of the cut. Each row of such a sweep walks
back through the node's ancestors, so its work is about

    rows x sweep width = numel(node) x sum of numel(a) over the node's ancestors a

(`sweep_cost`: the A-matrix elements one sweep holds, node by node), per child. Measured
(`scripts/bench_vit_branching.py --costs`): at most 8e4 behind a general cut of nn4sys
pensieve_big_parallel (2.8e6 behind a ReLU), 9e6 / 4.2e7 on ml4acopf 118 / 300-bus, 9e6..3.8e7 on
vit_2023 pgd_2_3_16, but 2.8e8..5.8e9 on vit_2023 ibp_3_3_8 (14,739 rows of one softmax difference
node alone): there strong branching's 48 trial children took the whole 100 s limit before the
first round (docs/ALPHA_SPEED.md).

A cut is *affordable* when its refresh costs at most `REFRESH_BUDGET` elements
(`DTENSOR_VERIFY_REFRESH_BUDGET` overrides it; `inf`: every cut, the behaviour before). Branching ranks only affordable general nodes
(`branching/general.py`); a ReLU whose refresh is not affordable is split as on a ReLU network, its
layers behind keeping their parent's intervals (alpha,beta-CROWN's vit configuration: ReLU
splits, no intermediate bounds recomputed). Sound either way: a parent's intervals hold on every
child's region (which lies inside the parent's), so skipping a refresh only leaves bounds looser.
"""
from __future__ import annotations

import os


def downstream(graph, names) -> set[str]:
    """The nodes reachable from `names` along consumers (not the nodes themselves, unless reached)."""
    seen, stack = set(), [c for n in names for c in graph.consumers[n]]
    while stack:
        cur = stack.pop()
        if cur not in seen:
            seen.add(cur)
            stack.extend(graph.consumers[cur])
    return seen


REFRESH_BUDGET = 1e8          # affordable refresh: at most this many A-matrix elements per child


def budget() -> float:
    """The budget in A-matrix elements (`DTENSOR_VERIFY_REFRESH_BUDGET` or `REFRESH_BUDGET`)."""
    raw = os.environ.get("DTENSOR_VERIFY_REFRESH_BUDGET", "")
    try:
        return float(raw) if raw else REFRESH_BUDGET
    except ValueError:
        return REFRESH_BUDGET


def sweep_cost(graph, name: str) -> int:
    """A-matrix elements of one CROWN sweep of every neuron of `name` back to the input."""
    return graph[name].numel * sum(graph[a].numel for a in graph.ancestors(name))


def refresh_cost(problem, cut) -> int:
    """The sweeps `refine_after` runs behind the `cut` nodes (carried nodes downstream, those
    not affine from the input), in A-matrix elements."""

    graph = problem.graph
    carried = set(graph.preactivation_nodes())
    behind = downstream(graph, list(cut))
    return sum(sweep_cost(graph, n) for n in behind if n in carried and not graph.affine_from_input(n))


def _costs(problem) -> dict:
    """node -> refresh cost behind a cut of it alone, over general nodes and ReLUs (cached)."""
    costs = getattr(problem, "_refresh_costs", None)
    if costs is None:
        costs = {name: refresh_cost(problem, [name]) for name in [*problem.general, *problem.relus]}
        problem._refresh_costs = costs
    return costs


def affordable(problem, name: str) -> bool:
    """True when a cut of `name` (a general node or a ReLU) may have its layers behind bounded
    again within the budget (`budget`)."""
    cost = _costs(problem).get(name)
    return cost is None or cost <= budget()


def affordable_general(problem) -> list[bool]:
    """Per node of `problem.general` (in order): whether branching may try splitting it."""
    return [affordable(problem, name) for name in problem.general]
