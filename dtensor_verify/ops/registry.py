"""The op registry: which graph nodes each bound op handles.

Every op module registers its rules here at import (`register`). A rule names the ONNX op types
it covers (for `supported_onnx_ops`, which `supports --onnx-operators` prints), a `match`
predicate on the fx node and a `build` function that returns the bound op (or raises
`ctx.unsupported(...)`). Rules are tried in registration order; the first whose `match` holds
builds the op. A node no rule matches is refused in one line naming it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..errors import UnsupportedOpError


@dataclass
class OpContext:
    """What a rule sees of one fx node."""

    gm: torch.fx.GraphModule
    node: torch.fx.Node
    perturbed: list                     # the node's arguments that depend on the input (fx Nodes)
    constants: dict                     # argument position -> constant value
    what: str                           # a readable name of the target (module class / function)
    value_of: Callable | None = None    # constant fx Node -> its value (graph builder's)

    @property
    def module(self):
        return self.gm.get_submodule(self.node.target) if self.node.op == "call_module" else None

    @property
    def module_type(self) -> str:
        m = self.module
        return type(m).__name__ if m is not None else ""

    @property
    def n_pert(self) -> int:
        return len(self.perturbed)

    def unsupported(self, why: str = "") -> UnsupportedOpError:
        return UnsupportedOpError(
            f"node '{self.node.name}' ({self.what}): no bound rule for this operation"
            f"{': ' + why if why else ''}. Supported ONNX operators: {', '.join(supported_onnx_ops())}")

    def is_function(self, *targets) -> bool:
        return self.node.op == "call_function" and self.node.target in targets

    def is_method(self, *names) -> bool:
        return self.node.op == "call_method" and self.node.target in names

    def is_module(self, *types) -> bool:
        m = self.module
        if m is None:
            return False
        return any(isinstance(m, t) if isinstance(t, type) else type(m).__name__ == t for t in types)

    def function(self, **extra):
        """The node's operation as a function of its perturbed inputs (constants bound now)."""
        from .callables import node_function

        return node_function(self, **extra)


@dataclass
class Rule:
    name: str
    onnx: tuple[str, ...]
    match: Callable[[OpContext], bool]
    build: Callable[[OpContext], object]
    # Declared capabilities of the ops it builds (see BoundOp): informational here.
    notes: str = ""
    priority: int = 100


RULES: list[Rule] = []


def register(name: str, onnx, match, build, notes: str = "", priority: int = 100) -> Rule:
    """Add a rule. Rules are tried by `priority` (lower first), then in registration order."""
    rule = Rule(name, tuple(onnx), match, build, notes, priority=priority)
    RULES.append(rule)
    RULES.sort(key=lambda r: r.priority)       # stable: registration order within a priority
    return rule


def supported_onnx_ops() -> list[str]:
    """The ONNX operator types some registered rule handles (sorted, unique)."""
    from . import _load_rules

    _load_rules()
    return sorted({op for rule in RULES for op in rule.onnx})


def build_op(ctx: OpContext):
    from . import _load_rules

    _load_rules()
    for rule in RULES:
        if rule.match(ctx):
            op = rule.build(ctx)
            if op is not None:
                return op
    raise ctx.unsupported()
