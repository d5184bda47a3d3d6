"""Booleans of a perturbed tensor as float indicators (an ONNX-level rewrite before conversion).

A comparison of a perturbed float tensor (`Greater`, `Less`, `GreaterOrEqual`, `LessOrEqual`,
`Equal`) or a `Cast` of one to BOOL gives a boolean that the bound graph has no type for. Where
every consumer of that boolean is one this module can express in floats (`Cast` back to a float
type, the condition of `Where`, `Not`, `And`, `Or`), the boolean becomes the float 0 / 1 it
stands for, built from ops that have bound rules (Sign, Relu, Abs, Sub, Mul, Add), exactly:

    x > c   = Relu(Sign(x - c))           x < c   = Relu(Sign(c - x))
    x >= c  = 1 - Relu(Sign(c - x))       x <= c  = 1 - Relu(Sign(x - c))
    x == c  = 1 - Abs(Sign(x - c))        bool(x) = Abs(Sign(x))        (x != 0)
    Where(b, p, q) = q + b * (p - q)      Not b = 1 - b    a And b = a b    a Or b = a + b - a b

(IEEE subtraction of two different finite floats is never 0, so Sign(x - c) has the sign of
x - c, and 0 exactly when x == c.) The step functions are then bounded by Sign's rule: over an
interval that straddles the threshold the indicator is bounded by [0, 1], never guessed. A
boolean with another consumer (a graph output, an op not listed) is left alone, and the model is
refused as before. The load-time self-check compares the result with onnxruntime.
"""
from __future__ import annotations

import numpy as np

from .onnx_facts import elem_types, perturbed_names

COMPARISONS = ("Greater", "Less", "GreaterOrEqual", "LessOrEqual", "Equal")
CONSUMERS = ("Cast", "Where", "Not", "And", "Or")
_FLOATS = (1, 11)       # TensorProto.FLOAT, DOUBLE


class _Builder:
    def __init__(self, proto, dtype):
        self.proto, self.dtype, self.nodes, self._k = proto, dtype, [], 0

    def fresh(self, hint):
        self._k += 1
        return f"__bool{self._k}_{hint}"

    def op(self, op_type, inputs, out=None):
        from onnx import helper

        out = out or self.fresh(op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=self.fresh(op_type)))
        return out

    def one(self):
        from onnx import numpy_helper

        name = self.fresh("one")
        self.proto.graph.initializer.append(numpy_helper.from_array(np.asarray(1.0, self.dtype), name))
        return name


def _indicator(b: _Builder, node, out):
    """Emit the float indicator of a comparison / Cast-to-BOOL node into tensor `out`."""
    op = node.op_type
    if op == "Cast":
        return b.op("Abs", [b.op("Sign", [node.input[0]])], out)
    x, c = node.input[:2]
    if op in ("Greater", "LessOrEqual"):
        step = b.op("Relu", [b.op("Sign", [b.op("Sub", [x, c])])])
        return b.op("Identity", [step], out) if op == "Greater" else b.op("Sub", [b.one(), step], out)
    if op in ("Less", "GreaterOrEqual"):
        step = b.op("Relu", [b.op("Sign", [b.op("Sub", [c, x])])])
        return b.op("Identity", [step], out) if op == "Less" else b.op("Sub", [b.one(), step], out)
    return b.op("Sub", [b.one(), b.op("Abs", [b.op("Sign", [b.op("Sub", [x, c])])])], out)


def _consumer(b: _Builder, node, booleans):
    """Emit the float form of a consumer of indicator tensors (all its boolean inputs are)."""
    op = node.op_type
    out = node.output[0]
    if op == "Cast":
        return b.op("Identity", [node.input[0]], out)
    if op == "Not":
        return b.op("Sub", [b.one(), node.input[0]], out)
    if op == "And":
        return b.op("Mul", node.input[:2], out)
    if op == "Or":
        p, q = node.input[:2]
        return b.op("Sub", [b.op("Add", [p, q]), b.op("Mul", [p, q])], out)
    cond, p, q = node.input[:3]
    return b.op("Add", [q, b.op("Mul", [cond, b.op("Sub", [p, q])])], out)


def _sources(proto, types, perturbed) -> set:
    """Boolean tensors that come from a comparison / Cast-to-BOOL of a perturbed float tensor."""
    out = set()
    for node in proto.graph.node:
        if node.op_type in COMPARISONS and any(i in perturbed for i in node.input[:2]) and \
                all(types.get(i) in _FLOATS for i in node.input[:2]):
            out.add(node.output[0])
        if node.op_type == "Cast" and node.input[0] in perturbed and types.get(node.input[0]) in _FLOATS and \
                next((a.i for a in node.attribute if a.name == "to"), None) == 9:
            out.add(node.output[0])
    return out


def _grows(node) -> bool:
    return node.op_type in ("Not", "And", "Or") or (node.op_type == "Cast" and _to(node) == 9)


def _accepts(node, booleans, types) -> bool:
    """Whether `node`, a consumer of boolean tensors, has a float form here."""
    if node.op_type == "Cast" and _to(node) in _FLOATS:
        return True
    if _grows(node):
        return node.output[0] in booleans and all(i in booleans for i in node.input)
    return node.op_type == "Where" and node.input[0] in booleans and node.input[1] not in booleans \
        and node.input[2] not in booleans and types.get(node.input[1]) in _FLOATS


def _closed(proto, sources, types) -> set:
    """The boolean tensors (the sources, grown through Not / And / Or / Cast-to-BOOL of them) whose
    every consumer has a float form. A tensor with another use (a graph output, any other op) is
    poisoned, and so are the inputs of a boolean op that stays boolean; poison only grows."""
    poison = {o.name for o in proto.graph.output}
    while True:
        booleans = set(sources) - poison
        for node in proto.graph.node:
            if _grows(node) and node.output[0] not in poison and \
                    all(i in booleans for i in node.input):
                booleans.add(node.output[0])
        before = len(poison)
        for node in proto.graph.node:
            ins = {i for i in node.input if i in booleans}
            if ins and not _accepts(node, booleans, types):
                poison |= ins
        if len(poison) == before:
            return booleans


def _to(node):
    return next((a.i for a in node.attribute if a.name == "to"), None)


def rewrite_comparisons(proto):
    """See the module docstring; returns the proto (edited in place) unchanged if nothing applies."""
    if not any(n.op_type in COMPARISONS or n.op_type == "Cast" for n in proto.graph.node):
        return proto
    types = elem_types(proto)
    inits, perturbed = perturbed_names(proto)
    booleans = _closed(proto, _sources(proto, types, perturbed), types)
    if not booleans:
        return proto
    elem = next((types.get(i.name) for i in proto.graph.input if i.name not in inits), 1)
    b = _Builder(proto, np.float64 if elem == 11 else np.float32)
    keep_info = [v for v in proto.graph.value_info if v.name not in booleans]
    del proto.graph.value_info[:]
    proto.graph.value_info.extend(keep_info)
    for node in proto.graph.node:
        if node.output and node.output[0] in booleans and (node.op_type in COMPARISONS or
                                                           (node.op_type == "Cast" and node.input[0] not in booleans)):
            _indicator(b, node, node.output[0])
        elif any(i in booleans for i in node.input):
            _consumer(b, node, booleans)
        else:
            b.nodes.append(node)
    del proto.graph.node[:]
    proto.graph.node.extend(b.nodes)
    return proto
