"""Integer tensors of a perturbed float tensor as exact floats (an ONNX-level rewrite, 2.0 path).

`Cast` of a float tensor to a signed integer type truncates toward zero (onnxruntime; the
standard's integer semantics for an integer output). Where the integer tensor is used only by
ops this module can express in floats (`Cast` back to a float type, `Add` / `Sub` / `Mul` with
integer constants or with each other, `Neg`, `Identity`, and `Pow` by a constant integer
exponent 1..4, the form the ONNX rewrites give `Mul(x, x)`) and by graph outputs, it becomes the
float it stands for, built from ops with bound rules, exactly:

    trunc(x) = Floor(Relu(x)) - Floor(Relu(-x))

Integer constants become float constants; an integer graph output becomes a float output (its
declared integer type is checked against the file by the loader, and onnxruntime on the file
gives the integer values for the assignment). `Shape` of a tensor with a static shape is its
constant. The equation is exact while every integer value stays within `EXACT` (float32 holds
every integer up to 2^24 exactly, so each float op on such integers whose exact result is such an
integer returns it; and no int32 / int64 op wraps there): `guard_ok` checks that with interval
bounds over the query's boxes (the inputs of the `Floor` nodes within [0, 2^20]; a product or
power, and every other rewritten op, within 2^24: a sum of sums doubles at each step), and the
solver answers `unknown` where it fails.
Anything else is left alone (refused as before).
"""
from __future__ import annotations

import numpy as np

from .onnx_facts import elem_types, perturbed_names

SIGNED = {6: "int32", 7: "int64"}     # neither wraps within EXACT
GUARD = float(2 ** 20)                 # |cast input| and |integer constant| at most this
MAX_OPS = 15                           # integer ops rewritten at most
EXACT = float(2 ** 24)                 # every rewritten integer tensor within this (`guard_ok`)
_ARITH = ("Add", "Sub", "Neg", "Identity", "Mul", "Pow")
MARK = "__intx"                         # node-name prefix of the rewritten ops `guard_ok` checks


def _int_constants(proto) -> dict:
    from onnx import numpy_helper

    out = {}
    for t in proto.graph.initializer:
        if t.data_type in SIGNED:
            out[t.name] = numpy_helper.to_array(t)
    for node in proto.graph.node:
        if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value" \
                and node.attribute[0].t.data_type in SIGNED:
            out[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return out


def _pow_exponents(proto) -> dict:
    """Constant exponents a Pow of an integer tensor may take here: name -> the integer 1..4."""
    from onnx import numpy_helper

    out = {}
    for t in proto.graph.initializer:
        a = numpy_helper.to_array(t)
        if a.size == 1 and float(a.reshape(-1)[0]) in (1.0, 2.0, 3.0, 4.0):
            out[t.name] = int(a.reshape(-1)[0])
    return out


def _operand_ok(node, i, region, consts, exps) -> bool:
    if i in region:
        return not (node.op_type == "Pow" and i == node.input[1])
    if node.op_type == "Pow":
        return i == node.input[1] and i in exps
    return i in consts and bool(np.all(np.abs(consts[i]) <= GUARD))


def _region(proto, types, perturbed, consts):
    """The integer tensors to rewrite (seeds: Cast float -> signed int of a perturbed tensor,
    grown through integer arithmetic), or an empty set where some use has no float form."""
    to = {n.output[0]: next((a.i for a in n.attribute if a.name == "to"), None) for n in proto.graph.node
          if n.op_type == "Cast"}
    region, exps = set(), _pow_exponents(proto)
    for node in proto.graph.node:
        if node.op_type == "Cast" and node.input[0] in perturbed and types.get(node.input[0]) == 1 \
                and to[node.output[0]] in SIGNED:
            region.add(node.output[0])
    changed = True
    while changed:
        changed = False
        for node in proto.graph.node:
            if node.op_type in _ARITH and node.output[0] not in region and any(i in region for i in node.input) \
                    and all(_operand_ok(node, i, region, consts, exps) for i in node.input):
                region.add(node.output[0])
                changed = True
    if not _float_uses_only(proto, region, to) or len(region) > MAX_OPS:
        return set()                                # a use with no float form: leave it all alone
    return region


def _float_uses_only(proto, tensors, to) -> bool:
    """Every use of `tensors` is in `tensors` (integer arithmetic), a Cast to float, or an output."""
    for node in proto.graph.node:
        if any(i in tensors for i in node.input) and node.output[0] not in tensors and \
                not (node.op_type == "Cast" and to.get(node.output[0]) == 1):
            return False
    return True


def _shapes(proto):
    """Shape nodes of a tensor with a static shape: output name -> the shape."""
    from .onnx_facts import inferred_dims

    dims = inferred_dims(proto)
    out = {}
    for node in proto.graph.node:
        if node.op_type != "Shape" or node.attribute:
            continue
        d = dims.get(node.input[0])
        if d is not None and all(isinstance(x, int) and x > 0 for x in d):
            out[node.output[0]] = np.asarray(d, np.float32)
    return out


def _to(node):
    return next((a.i for a in node.attribute if a.name == "to"), None)


def rewrite_int_casts(proto):
    """See the module docstring; returns (proto edited in place, whether a cast was rewritten,
    the outputs that are constants: output index -> float array). A constant output leaves the
    graph (the product places it in V as it is)."""
    from onnx import TensorProto

    if not any(n.op_type in ("Cast", "Shape") for n in proto.graph.node):
        return proto, False, {}
    types = elem_types(proto)
    _, perturbed = perturbed_names(proto)
    consts = _int_constants(proto)
    to = {n.output[0]: _to(n) for n in proto.graph.node if n.op_type == "Cast"}
    region = _region(proto, types, perturbed, consts)
    shapes = {k: v for k, v in _shapes(proto).items() if _float_uses_only(proto, {k} | region, to)}
    if not region and not shapes:
        return proto, False, {}
    outputs = [o.name for o in proto.graph.output]
    consts = {**consts, **{k: v.astype(np.int64) for k, v in shapes.items()}}
    nodes = _emit(proto, region, shapes, consts)
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    floats = region | set(shapes)
    keep = [v for v in proto.graph.value_info if v.name not in floats]
    del proto.graph.value_info[:]
    proto.graph.value_info.extend(keep)
    for o in proto.graph.output:
        if o.name in floats:
            o.type.tensor_type.elem_type = TensorProto.FLOAT
    constant = {i: np.asarray(shapes[name], np.float32) for i, name in enumerate(outputs) if name in shapes}
    keep = [o for o in proto.graph.output if o.name not in shapes]
    del proto.graph.output[:]
    proto.graph.output.extend(keep)
    return proto, bool(region), constant


def _emit(proto, region, shapes, consts) -> list:
    """The graph's nodes with the integer region as floats (new constants go to the initializers)."""
    from onnx import helper, numpy_helper

    used = {i for n in proto.graph.node for i in n.input}
    nodes, k = [], [0]

    def fresh(hint):
        k[0] += 1
        return f"__int{k[0]}_{hint}"

    def op(op_type, inputs, out=None, mark=""):
        out = out or fresh(op_type.lower())
        nodes.append(helper.make_node(op_type, list(inputs), [out], name=mark + fresh(op_type)))
        return out

    def constant(value):
        name = fresh("const")
        proto.graph.initializer.append(numpy_helper.from_array(np.asarray(value, np.float32), name))
        return name

    for node in proto.graph.node:
        out = node.output[0] if node.output else None
        if node.op_type == "Cast" and out in region:                  # trunc(x), exactly
            x = node.input[0]
            op("Sub", [op("Floor", [op("Relu", [x])]), op("Floor", [op("Relu", [op("Neg", [x])])])], out)
        elif out in region:                                            # (a Pow's exponent is a float)
            op(node.op_type, [i if i in region or i not in consts else constant(consts[i]) for i in node.input],
               out, MARK)
        elif out in shapes and out not in used:
            continue                                                   # only an output: a constant
        elif out in shapes:
            op("Identity", [constant(shapes[out])], out)
        elif node.op_type == "Cast" and node.input and (node.input[0] in region or node.input[0] in shapes):
            op("Identity", [node.input[0]], out)
        else:
            nodes.append(node)
    return nodes


def guard_ok(model, boxes) -> bool:
    """Every `Floor` input of the bound graph within [0, GUARD] and every rewritten integer op's
    output (a node named with `MARK`) within [-EXACT, EXACT] over the boxes (IBP; the rewrite's
    floors take `Relu(+-x)` of each cast input)."""
    import torch

    from .methods.ibp import ibp

    floors = [n for n in model.graph.nodes if n.op is not None and "floor" in _kind(n)]
    if not floors:
        return False
    ints = [n for n in model.graph.nodes if n.op is not None and MARK.lower() in n.name.lower()]
    for lo, hi in boxes:
        if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
            return False
        box = tuple(torch.tensor(np.asarray(a, np.float32)[None], device=getattr(model, "device", "cpu"))
                    for a in (lo, hi))
        with torch.no_grad():
            b = ibp(model.graph, box, model.layout)
        checks = [(b[i], 0.0, GUARD) for n in floors for i in n.inputs] + [(b[n.name], -EXACT, EXACT) for n in ints]
        for (blo, bhi), low, high in checks:
            if not (bool(torch.all(blo >= low)) and bool(torch.all(bhi <= high))):
                return False
    return True


def _kind(node) -> str:
    op = node.op
    return " ".join(str(x).lower() for x in (type(op).__name__, getattr(op, "kind", ""), getattr(op, "name", ""),
                                              getattr(getattr(op, "fn", None), "name", "")))
