"""The plan checker's branch-and-bound rule: no `tp` for branch and bound on CPU with small layers.

Measured (scripts/bench_tp_bab.py, docs/TRUST.md): under `tp` every beta-CROWN step of a
branch-and-bound round issues ~60 DTensor redistributions and all-reduces on rank 0 (the
A-matrix reduce-scatters of each layer of the backward sweep, the slopes' and bounds' shards,
the gradients' all-gathers, the early-stop votes). Over gloo on CPU each costs about a
millisecond of latency however small the tensors, while a small layer's own matmuls take
microseconds: a 9-input, 3 x 26-ReLU net took 8x one process's time per round at P = 2, and
8.5x with 256-neuron layers (scripts/bench_tp_bab.py, a loaded machine). Splitting domains between ranks instead (`replicate` on a DPx1 mesh)
needs one sync per round and ran at 0.6x one process's time per round.

So the CLI's `run` refuses `tp` for branch and bound on a CPU when every layer it would shard
has fewer than TP_BAB_MIN_NEURONS_CPU output neurons, in one line that says why and names the
plan that works. `DTENSOR_VERIFY_TP_BAB=allow` lifts the rule (the hostile sweep checks `tp`'s
verdicts, not its speed); `--no-bab` runs (bounds only) are not concerned.
"""
from __future__ import annotations

import os

from dtensor_verify.errors import PlanError

# Largest tp layer (output neurons) below which tp branch and bound on CPU is refused. Measured
# 8x (26 neurons) and 8.5x (256) one process's time per round (docs/TRUST.md); not measured
# above. GPUs (NCCL) are not concerned.
TP_BAB_MIN_NEURONS_CPU = 1024
ALLOW_ENV = "DTENSOR_VERIFY_TP_BAB"


def tp_bab_refusal(graph, styles: dict, device_type: str | None, shard_size: int, world_size: int) -> str | None:
    """Why `tp` branch and bound is refused here, or None (see the module doc)."""
    if shard_size <= 1 or (device_type or "cpu") != "cpu" or os.environ.get(ALLOW_ENV) == "allow":
        return None
    tp = [node for node in graph.layers() if styles[node.name].name == "tp"]
    if not tp:
        return None
    widest = max(tp, key=lambda n: n.shape[0] if n.shape else 0)
    neurons = widest.shape[0] if widest.shape else 0
    if neurons >= TP_BAB_MIN_NEURONS_CPU:
        return None
    return (f"'tp' for branch and bound on CPU: its widest sharded layer '{widest.layer}' has {neurons} output "
            f"neurons (under {TP_BAB_MIN_NEURONS_CPU}), so each beta-CROWN step waits on ~60 gloo collectives "
            f"that cost more than the layers' work (8x one process's time per round and more, docs/TRUST.md); use "
            f"--plan replicate --mesh {world_size}x1 (the ranks split the domains) or one process, or --no-bab "
            f"({ALLOW_ENV}=allow runs it anyway)")


def check_tp_for_bab(graph, styles: dict, device_type: str | None, shard_size: int, world_size: int) -> None:
    why = tp_bab_refusal(graph, styles, device_type, shard_size, world_size)
    if why is not None:
        raise PlanError(why)
