"""The placement pass: walk the bound graph once, give every layer its policy, shard in place.

Read top to bottom:
  1. resolve each parameter-owning layer's policy from the plan (first matching rule wins);
  2. validate (unknown names, tp on a layer it cannot shard);
  3. work out per node whether A-matrices are sharded on its neuron dim (tp zones) and which
     policy decides the row split of a bound started at it (spec);
  4. shard the modules at rest: each layer's style does it (`style.shard`);
  5. install a PlacedLayout on the model and report what went where.
"""
from __future__ import annotations

import copy
import glob
import sys
from dataclasses import dataclass, field

from dtensor_verify.errors import PlanError
from dtensor_verify.layout import Layout

from .layout import PlacedLayout
from .plan import Plan, Rule, parse_plan
from .styles import PlacementStyle as Policy
from .styles import get_style as get_policy
from .topology import as_topology


@dataclass
class PlacementReport:
    plan: str
    world_size: int
    lines: list[str] = field(default_factory=list)
    policies: dict[str, str] = field(default_factory=dict)

    def __str__(self):
        return "\n".join([f"placement plan '{self.plan}' on {self.world_size} rank(s):", *self.lines])


def resolve_policies(graph, plan: Plan, shard_size: int = 1) -> dict[str, Policy]:
    """Policy of each node that owns parameters, validated against the graph and the number of
    ranks a layer is sharded over."""
    chosen = {node.name: plan.policy_for(node.layer, node.layer_type) for node in graph.layers()}
    refused = [(node, why) for node in graph.layers() if (why := chosen[node.name].refuse(node, shard_size))]
    if refused:
        node, why = refused[0]
        fix = suggest_plan(graph, plan, [n for n, _ in refused], shard_size=shard_size)
        more = f" (and {len(refused) - 1} more layer(s))" if len(refused) > 1 else ""
        raise PlanError(f"layer '{node.layer}' ({node.layer_type}){more}: {why}; "
                        f"use 'fsdp' or 'spec' there, e.g. --plan \"{fix}\"")
    unused = [r for r in plan.rules if not r.used and "*" not in r.patterns]
    if unused:
        names = ", ".join(f"{n.layer} ({n.layer_type})" for n in graph.layers())
        raise PlanError(f"plan rule '{unused[0]}' matches no layer of the model; layers are: {names}")
    return chosen


def suggest_plan(graph, plan: Plan, refused, fallback: str = "fsdp", shard_size: int = 1) -> str:
    """A plan for this model that keeps `plan` but gives the `refused` layers `fallback`.

    Built from the model's own layer types (when every layer of a type is refused) or names,
    put in front of the user's rules; rules left matching nothing are dropped. The result is
    checked with resolve_policies; if it still fails, an explicit one-rule-per-layer plan is
    returned instead, which always resolves.
    """
    layers = graph.layers()
    refused_names = {n.layer for n in refused}
    patterns = []
    for node in refused:
        same_type = [n for n in layers if n.layer_type == node.layer_type]
        if node.layer_type and all(n.layer in refused_names for n in same_type):
            pattern = node.layer_type
        else:
            pattern = glob.escape(node.layer)
        if pattern not in patterns:
            patterns.append(pattern)
    rules = [Rule(tuple(patterns), get_policy(fallback))] + [Rule(r.patterns, r.policy) for r in plan.rules]
    text = str(Plan(_without_redundant_rules(rules, layers)))
    if _resolves(graph, text, shard_size):
        return text
    explicit = [f"{glob.escape(n.layer)}={fallback if n.layer in refused_names else plan.policy_for(n.layer, n.layer_type).name}"
                for n in layers]
    return ";".join(explicit)


def _without_redundant_rules(rules: list[Rule], layers) -> list[Rule]:
    """Drop the rules (but a '*' default) whose removal gives every layer the same policy."""
    def policies(rs):
        return [Plan(rs).policy_for(n.layer, n.layer_type).name for n in layers]

    want = policies(rules)
    kept, changed = list(rules), True
    while changed:              # dropping one rule can make an earlier one redundant
        changed = False
        for rule in [r for r in kept if "*" not in r.patterns]:
            trial = [r for r in kept if r is not rule]
            if policies(trial) == want:
                kept, changed = trial, True
    return kept


def _resolves(graph, text: str, shard_size: int) -> bool:
    try:
        resolve_policies(graph, parse_plan(text), shard_size)
    except PlanError:
        return False
    return True


def zone_styles(graph, styles: dict[str, Policy]) -> dict[str, Policy]:
    """The style that lays out A-matrices, bounds and slopes at each node: a neuron-sharding
    layer's own style, passed on through elementwise ops fed only by such nodes (asked of the op:
    `caps.elementwise`); the network input joins a zone that is all that reads it. Nodes not
    listed get the replicated layout."""
    zone = {}
    for node in graph.nodes:
        if node.name in styles and styles[node.name].shards_neurons:
            zone[node.name] = styles[node.name]
        elif node.op is not None and node.name not in styles and node.op.caps.elementwise and node.inputs:
            feeding = {zone.get(i) for i in node.inputs}
            if len(feeding) == 1 and None not in feeding:
                zone[node.name] = feeding.pop()
    # A w.r.t. the input then stays sharded (a reduce-scatter instead of a full Partial
    # all-reduced on every rank) and the box is sharded to match, so concretisation only
    # reduces the [B, K] result.
    readers = [styles.get(r) for r in graph.consumers.get(graph.input_name, [])]
    if len(graph[graph.input_name].shape) == 1 and readers and len(set(readers)) == 1 \
            and readers[0] is not None and readers[0].shards_neurons:
        zone[graph.input_name] = readers[0]
    return zone


def row_styles(graph, styles: dict[str, Policy], default: Policy) -> dict[str, Policy]:
    """The style that decides how a bound started at each node is split by rows: the node's own
    layer's, else the nearest upstream layer's, else the plan's default."""
    owner = {}
    for node in graph.nodes:
        if node.name in styles:
            owner[node.name] = styles[node.name]
        elif node.inputs and node.inputs[0] in owner:
            owner[node.name] = owner[node.inputs[0]]
        else:
            owner[node.name] = default
    return owner


def _shard_modules(graph, styles: dict[str, Policy], mesh, report: PlacementReport):
    """Set-up: each layer's style lays its module out at rest (the only writes to a module)."""
    for node in graph.layers():
        style = styles[node.name]
        shapes = "x".join(str(s) for s in node.op.module.weight.shape)
        how = style.shard(node.op.module, mesh)
        report.lines.append(f"  {node.layer:<24} {node.layer_type or '':<8} {shapes:<12} -> {style.name:<9} {how}")
        report.policies[node.layer] = style.name


def apply_plan(model, plan=None, mesh=None, log: bool = False) -> PlacementReport:
    """Place `model` (a dtensor_verify.BoundedModel) following `plan` on `mesh` (a Topology, a
    DeviceMesh "shard" or "dp" x "shard", or None for one process)."""
    plan = parse_plan(plan)
    graph = model.graph
    topology = as_topology(mesh)
    shard = topology.shard if topology is not None else 1
    styles = resolve_policies(graph, plan, shard)
    report = PlacementReport(str(plan), shard)
    if shard == 1:
        for node in graph.layers():
            report.policies[node.layer] = styles[node.name].name
        report.lines.append("  one process per shard group: every policy runs as 'replicate' (nothing to shard)")
        if topology is not None:
            model.to(topology.device)
            model.layout = Layout()
            model.layout.topology, model.layout.device = topology, topology.device
    else:
        if getattr(model.loaded, "reference", None) is not None:
            # The traced graph shares its layers with the nn.Module given to dv.load, and
            # sharding is in place: keep an unsharded CPU copy as the reference that self-checks
            # and counterexample confirmation run (ONNX models use onnxruntime instead).
            model.loaded.reference = copy.deepcopy(model.loaded.reference).cpu()
        model.to(topology.device)
        _shard_modules(graph, styles, topology.shard_mesh, report)
        model.layout = PlacedLayout(graph, topology, styles, zone_styles(graph, styles),
                                    row_styles(graph, styles, plan.default))
    if topology is not None and topology.dp > 1:
        # Branch and bound spreads domains over the dp groups; bounding itself is per group.
        report.lines.append(f"  {topology.describe()}: the plan applies within each of the {topology.dp} dp groups")
    model.plan_report = report.lines
    model.plan = str(plan)
    if log and (topology is None or topology.is_leader):
        print(report, file=sys.stderr)
    return report


def apply_plan_from_cli(model, plan_text: str | None, log: bool = True, timeout_s: float | None = None,
                        mesh_shape: str | None = None, bab: bool = False) -> PlacementReport:
    """CLI entry: set up the mesh from the torchrun environment (`mesh_shape` "DPxSHARD"), then
    apply the plan.

    The plan and the mesh shape are checked first, before the process group exists: under
    torchrun every rank then refuses a bad plan on its own, at once, with nothing to tear down.
    `timeout_s` is the process group's timeout (how long a collective may wait for a peer). The
    ranks talk over the device the model is on (--device): NCCL for GPUs, gloo for CPUs.
    `bab`: the run may branch and bound (then `tp` on small CPU layers is refused: bab_check).
    """
    from .bab_check import check_tp_for_bab
    from .mesh import init_mesh
    from .topology import parse_degrees, world_size_from_env

    plan_text = plan_text or "replicate"
    _, shard_size = parse_degrees(mesh_shape, world_size_from_env())
    styles = resolve_policies(model.graph, parse_plan(plan_text), shard_size)
    device = getattr(model, "device", None)
    if bab:
        check_tp_for_bab(model.graph, styles, None if device is None else device.type, shard_size,
                         world_size_from_env())
    backend = None if device is None else ("nccl" if device.type == "cuda" else "gloo")
    kwargs = {"shape": mesh_shape, "backend": backend}
    if timeout_s is not None:
        kwargs["timeout_s"] = timeout_s
    return apply_plan(model, plan_text, init_mesh(**kwargs), log=log)
