"""`Pow` forms without a direct bound rule, rewritten at the ONNX level into ones with rules.

The bound rule of Pow (`ops/scalar_functions.Pow`) takes a perturbed base and one constant
exponent. The other forms, exactly:

* a constant exponent of one value in every entry: that scalar (0 gives `x * 0 + 1`, the 1 that
  `x ** 0` is for every finite x; 1 gives x);
* a constant exponent of several values E (integers >= 0, so every power is defined for any x):
  `sum_e (E == e) * x ** e`, each mask a constant;
* a constant base C > 0 and a perturbed exponent y: `exp(y * ln C)`;
* a perturbed base x and a perturbed exponent y: `exp(y * log x)`, defined for x > 0 only (Log's
  rule refuses a box that reaches x <= 0).

And `x * x` (one perturbed tensor times itself) becomes `x ** 2`: a square, whose rule is convex
and tight (x ** 2 >= 0), where McCormick's planes for a product of two independent factors go
below 0.

A constant base with an entry <= 0 and a perturbed exponent is left alone: the bound graph refuses
it in one line. The load-time self-check compares every rewrite with onnxruntime.
"""
from __future__ import annotations

import numpy as np

from .onnx_facts import constant_values, inferred_dims


class _Emit:
    def __init__(self, proto, node, dtype):
        self.proto, self.node, self.dtype, self.nodes = proto, node, dtype, []
        self.base = (node.name or node.output[0]).replace("/", "_")
        self._k = 0

    def name(self, hint):
        self._k += 1
        return f"{self.base}__pow{self._k}_{hint}"

    def const(self, value, hint="c"):
        from onnx import numpy_helper

        n = self.name(hint)
        self.proto.graph.initializer.append(numpy_helper.from_array(np.asarray(value, self.dtype), n))
        return n

    def op(self, op_type, inputs, out=None):
        from onnx import helper

        out = out or self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=self.name(op_type)))
        return out


def _power(e: _Emit, x, p: float, out=None):
    if p == 0.0:
        return e.op("Add", [e.op("Mul", [x, e.const(0.0, "zero")]), e.const(1.0, "one")], out)
    if p == 1.0:
        return e.op("Identity", [x], out)
    return e.op("Pow", [x, e.const(p, "p")], out)


def _constant_exponent(e: _Emit, x, E: np.ndarray, out, x_shape):
    values = np.unique(E)
    grows = x_shape is None or np.broadcast_shapes(tuple(x_shape), E.shape) != tuple(x_shape)
    if len(values) == 1 and not grows:
        return _power(e, x, float(values[0]), out)
    if len(values) == 1 or not all(v == round(v) and v >= 0 for v in values):
        return None
    terms = [e.op("Mul", [_power(e, x, float(v)), e.const((E == v).astype(np.float64), "mask")]) for v in values]
    acc = terms[0]
    for k, t in enumerate(terms[1:]):
        acc = e.op("Add", [acc, t], out if k == len(terms) - 2 else None)
    return acc


def _rewrite_one(e: _Emit, consts, perturbed, shapes) -> bool:
    node = e.node
    x, y = node.input[:2]
    out = node.output[0]
    if x in perturbed and y not in perturbed and y in consts:
        E = np.asarray(consts[y], np.float64)
        if E.size == 1 and float(E.reshape(-1)[0]) not in (0.0, 1.0):
            return False                          # the Pow rule's own form
        return _constant_exponent(e, x, E, out, shapes.get(x)) is not None
    if y in perturbed and x not in perturbed and x in consts:
        C = np.asarray(consts[x], np.float64)
        if not np.all(C > 0):
            return False
        e.op("Exp", [e.op("Mul", [y, e.const(np.log(C), "lnc")])], out)
        return True
    if x in perturbed and y in perturbed:
        e.op("Exp", [e.op("Mul", [y, e.op("Log", [x])])], out)
        return True
    return False


def _square(e: _Emit, node):
    from onnx import helper

    return helper.make_node("Pow", [node.input[0], e.const(2.0, "two")], list(node.output), name=node.name)


def rewrite_pow(proto):
    """See the module docstring; the proto is edited in place."""
    if not any(n.op_type == "Pow" or (n.op_type == "Mul" and n.input[0] == n.input[-1]) for n in proto.graph.node):
        return proto
    consts, shapes = constant_values(proto), inferred_dims(proto)
    inits = {i.name for i in proto.graph.initializer}
    perturbed = {i.name for i in proto.graph.input if i.name not in inits}
    elem = next((i.type.tensor_type.elem_type for i in proto.graph.input if i.name not in inits), 1)
    dtype = np.float64 if elem == 11 else np.float32
    new, changed = [], False
    for node in proto.graph.node:
        if any(i in perturbed for i in node.input):
            perturbed.update(o for o in node.output if o)
        if node.op_type == "Mul" and len(node.input) == 2 and node.input[0] == node.input[1] and \
                node.input[0] in perturbed:
            e = _Emit(proto, node, dtype)           # x * x: a square (convex), not a product of two
            new.append(_square(e, node))
            changed = True
            continue
        if node.op_type != "Pow" or not any(i in perturbed for i in node.input[:2]):
            new.append(node)
            continue
        e = _Emit(proto, node, dtype)
        if _rewrite_one(e, consts, perturbed, shapes):
            new.extend(e.nodes)
            changed = True
        else:
            new.append(node)
    if changed:
        del proto.graph.node[:]
        proto.graph.node.extend(new)
    return proto
