"""Graph rewrites that express an op by ops with bound rules (run on the fx graph before the
bound graph is built; the load-time self-check then compares the result with the original).

* Softmax over dim d:  softmax(x)_i = 1 / sum_j exp(x_j - x_i): a pairwise difference (exact
  linear map), Exp, ReduceSum, Reciprocal. The differences keep Exp's inputs small and bounded.
  Then `softmax_sum_one` (ops/softmax_sum.py): the identity, whose box rule uses sum y = 1.
  (LogSoftmax: the Log of that sum, negated.)
* LayerNorm: (x - mean) * rsqrt(mean((x - mean)^2) + eps) * w + b, the normalised value marked
  by `layernorm_unit` (ops/layernorm.py: its entries sum to 0 and lie in [-sqrt(N-1), sqrt(N-1)]);
  the pattern exporters write below opset 17 (ReduceMean, Sub, Pow 2, ReduceMean, Add eps, Sqrt,
  Div) is rewritten into the same form (`layernorm.rewrite_layernorm_chain`).
* Div of two activations: x * reciprocal(y).  Max / Min of two: y + relu(x - y) / x - relu(x - y).
* MaxPool (padding replicated, which keeps the max): a chain of pairwise maxima of strided slices.
"""
from __future__ import annotations

import operator

import torch
from torch import nn

from .layernorm import layernorm_unit, rewrite_layernorm_chain
from .layernorm_product import product_node
from .linear_map import LinearMapOp
from .lookup_table import rewrite_lookup
from .registry import register
from .softmax_sum import softmax_sum_one

# Softmax over n > 2 entries ends in `softmax_sum_one` (ops/softmax_sum.py: its box uses y in
# [0, 1] and sum y = 1). False: the plain decomposition (kept to compare; scripts/bench_softmax.py).
SOFTMAX_SUM_ONE = True
# LayerNorm's normalised value ends in `layernorm_unit` and the decomposed ONNX pattern is rewritten
# (ops/layernorm.py). False: the plain decomposition (kept to compare; scripts/bench_layernorm.py).
LAYERNORM_UNIT = True


def pairwise_diff(x, dim: int):
    """D[.., i, j, ..] = x_j - x_i over dim `dim` (i at `dim`, j at `dim + 1`)."""
    return x.unsqueeze(dim) - x.unsqueeze(dim + 1)


def flip_diff(x, dim: int):
    """x_i - x_(1-i) over a dim of size 2 (softmax of two: y_0 = sigmoid(x_0 - x_1))."""
    return x - x.flip(dim)


def flip_abs(x, dim: int):
    return x + x.flip(dim)


def first_and_negated(x, dim: int):
    """[x_0, -x_0] over a dim of size 2 (with + [0, 1]: y_1 = 1 - y_0, so y_0 + y_1 == 1 exactly)."""
    first = x.narrow(dim, 0, 1)
    return torch.cat([first, -first], dim)


def first_twice(x, dim: int):
    first = x.narrow(dim, 0, 1)
    return torch.cat([first, first], dim)


def pairwise_sum(x, dim: int):
    """|W| x for W = pairwise_diff's map: x_j + x_i off the diagonal, 0 on it (x_i - x_i == 0
    exactly, so the softmax's own term exp(0) = 1 keeps IBP's sum >= 1)."""
    n = x.shape[dim]
    off = 1.0 - torch.eye(n, dtype=x.dtype, device=x.device)
    off = off.reshape((n, n) + (1,) * (x.dim() - 1 - dim))
    return (x.unsqueeze(dim) + x.unsqueeze(dim + 1)) * off


def window_slice(x, di: int, dj: int, stride: tuple, out_hw: tuple, dilation: tuple):
    """x[:, :, di + s0 * a, dj + s1 * b] for the output positions (a, b) of a 2-D pooling window."""
    h0, w0 = di * dilation[0], dj * dilation[1]
    return x[:, :, h0:h0 + stride[0] * (out_hw[0] - 1) + 1:stride[0], w0:w0 + stride[1] * (out_hw[1] - 1) + 1:stride[1]]


def _rank(node):
    return len(node.meta["tensor_meta"].shape)


def _softmax_parts(gm, node):
    """(input node, dim, flatten_from, log) of a softmax node, or None."""
    if node.op == "call_module":
        m = gm.get_submodule(node.target)
        if isinstance(m, (nn.Softmax, nn.LogSoftmax)):
            return node.args[0], m.dim, None, isinstance(m, nn.LogSoftmax)
        if type(m).__name__ == "OnnxSoftmaxV1V11":
            return node.args[0], -1, m.axis, m.is_log
        return None
    if node.op == "call_function" and node.target in (torch.softmax, nn.functional.softmax, torch.log_softmax,
                                                       nn.functional.log_softmax):
        dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
        return node.args[0], dim, None, node.target in (torch.log_softmax, nn.functional.log_softmax)
    return None


def _rewrite_softmax(gm, node, perturbed):
    parts = _softmax_parts(gm, node)
    if parts is None or not isinstance(parts[0], torch.fx.Node) or parts[0].name not in perturbed:
        return False
    x, dim, flat_from, log = parts
    g = gm.graph
    rank = _rank(x)
    shape = tuple(x.meta["tensor_meta"].shape)
    with g.inserting_before(node):
        if flat_from is not None:
            flat_from = flat_from % rank
            if flat_from != rank - 1:
                x = g.call_method("flatten", (x, flat_from))
                rank = flat_from + 1
        if dim is None:
            return False
        dim = dim % rank
        if shape_of(x, shape, flat_from)[dim] == 2 and not log:
            out = _two_class(gm, x, dim, rank)
            if flat_from is not None and len(shape) != rank:
                out = g.call_method("reshape", (out, shape))
            node.replace_all_uses_with(out)
            g.erase_node(node)
            return True
        d = g.call_function(pairwise_diff, (x, dim))
        e = g.call_function(torch.exp, (d,))
        s = g.call_function(torch.sum, (e, dim + 1))
        out = g.call_function(torch.log, (s,)) if log else g.call_function(torch.reciprocal, (s,))
        if log:
            out = g.call_function(operator.neg, (out,))
        elif SOFTMAX_SUM_ONE:
            out = g.call_function(softmax_sum_one, (out, dim))
        if flat_from is not None and len(shape) != rank:
            out = g.call_method("reshape", (out, shape))
    node.replace_all_uses_with(out)
    g.erase_node(node)
    return True


def shape_of(x, shape, flat_from):
    """The (possibly flattened) softmax input's shape."""
    if flat_from is None or flat_from == len(shape) - 1:
        return shape
    tail = 1
    for d in shape[flat_from:]:
        tail *= d
    return (*shape[:flat_from], tail)


def _two_class(gm, x, dim, rank):
    """Softmax over two entries: [sigmoid(x_0 - x_1), 1 - sigmoid(x_0 - x_1)] (exact; the sum of
    the two is 1 in every bound, and no exp of a large difference overflows)."""
    g = gm.graph
    z = g.call_function(flip_diff, (x, dim))
    s = g.call_function(torch.sigmoid, (z,))
    t = g.call_function(first_and_negated, (s, dim))
    shift = torch.zeros((2,) + (1,) * (rank - 1 - dim))
    shift[1] = 1.0
    return g.call_function(operator.add, (t, _const_attr(gm, "softmax2_shift", shift)))


def _const_attr(gm, hint, value):
    name, k = f"_dec_{hint}", 0
    while hasattr(gm, name):
        k += 1
        name = f"_dec_{hint}_{k}"
    gm.register_buffer(name, value.detach().clone())
    return gm.graph.get_attr(name)


def _layernorm_parts(gm, node):
    if node.op == "call_module":
        m = gm.get_submodule(node.target)
        if isinstance(m, nn.LayerNorm):
            return node.args[0], len(m.normalized_shape), m.eps, m.weight, m.bias
        if type(m).__name__ == "OnnxLayerNorm":
            w = node.args[1] if len(node.args) > 1 else None
            b = node.args[2] if len(node.args) > 2 else None
            return node.args[0], ("axis", m.axis), m.epsilon, w, b
    return None


def _rewrite_layernorm(gm, node, perturbed):
    parts = _layernorm_parts(gm, node)
    if parts is None or parts[0].name not in perturbed:
        return False
    x, n, eps, w, b = parts
    if any(isinstance(t, torch.fx.Node) and t.name in perturbed for t in (w, b)):
        return False
    rank = _rank(x)
    n = rank - (n[1] % rank) if isinstance(n, tuple) else n
    dims = tuple(range(rank - n, rank))
    g = gm.graph
    with g.inserting_before(node):
        mu = g.call_function(torch.mean, (x, dims), {"keepdim": True})
        c = g.call_function(operator.sub, (x, mu))
        v = g.call_function(torch.mean, (g.call_function(torch.square, (c,)), dims), {"keepdim": True})
        r = g.call_function(torch.rsqrt, (g.call_function(operator.add, (v, float(eps))),))
        y = product_node(g, c, r, dims, eps) if LAYERNORM_UNIT else g.call_function(operator.mul, (c, r))
        if LAYERNORM_UNIT:
            y = g.call_function(layernorm_unit, (y, dims))
        if w is not None:
            y = g.call_function(operator.mul, (y, _const_attr(gm, "ln_w", w) if isinstance(w, torch.Tensor) else w))
        if b is not None:
            y = g.call_function(operator.add, (y, _const_attr(gm, "ln_b", b) if isinstance(b, torch.Tensor) else b))
    node.replace_all_uses_with(y)
    g.erase_node(node)
    return True


def _two_perturbed(node, perturbed):
    args = [a for a in node.args if isinstance(a, torch.fx.Node)]
    return len(node.args) == 2 and len(args) == 2 and all(a.name in perturbed for a in args) and not node.kwargs


def _rewrite_binary(gm, node, perturbed):
    """Div / Max / Min of two activations."""
    from ..fx_nodes import binary_kind as _binary_kind

    if not _two_perturbed(node, perturbed):
        return False
    kind = _binary_kind(gm, node)
    if kind is None and node.op == "call_module" and type(gm.get_submodule(node.target)).__name__ == "OnnxMinMax":
        kind = gm.get_submodule(node.target)._op_type.lower()
    if kind is None and node.op == "call_function" and node.target in (torch.maximum, torch.minimum, torch.max,
                                                                        torch.min):
        kind = "max" if node.target in (torch.maximum, torch.max) else "min"
    if kind not in ("div", "max", "min"):
        return False
    x, y = node.args
    g = gm.graph
    with g.inserting_before(node):
        if kind == "div":
            out = g.call_function(operator.mul, (x, g.call_function(torch.reciprocal, (y,))))
        else:
            r = g.call_function(torch.relu, (g.call_function(operator.sub, (x, y)),))
            out = g.call_function(operator.add, (y, r)) if kind == "max" else g.call_function(operator.sub, (x, r))
    node.replace_all_uses_with(out)
    g.erase_node(node)
    return True


def _maxpool_parts(gm, node):
    """(x, kernel, stride, dilation, pads [l, r, t, b]) of a 2-D max pooling, or None."""
    if node.op != "call_module":
        return None
    m = gm.get_submodule(node.target)
    pads = [0, 0, 0, 0]
    if isinstance(m, nn.Sequential) and len(m) == 2 and isinstance(m[1], nn.MaxPool2d):
        pad = m[0]
        value = getattr(pad, "constant_value", getattr(pad, "value", None))
        if value is None or not (value == float("-inf")) or len(getattr(pad, "pads", ())) != 4:
            return None
        pads, m = list(pad.pads), m[1]
    if not isinstance(m, nn.MaxPool2d) or m.return_indices:
        return None

    def pair(v):
        return (v, v) if isinstance(v, int) else tuple(v)

    k, s, p, d = pair(m.kernel_size), pair(m.stride or m.kernel_size), pair(m.padding), pair(m.dilation)
    pads = [pads[0] + p[1], pads[1] + p[1], pads[2] + p[0], pads[3] + p[0]]
    return node.args[0], k, s, d, pads


def _rewrite_maxpool(gm, node, perturbed):
    parts = _maxpool_parts(gm, node)
    if parts is None or parts[0].name not in perturbed:
        return False
    x, k, s, d, pads = parts
    # Replicated padding keeps every window's max when each pad is smaller than the window's reach.
    if pads[0] > d[1] * (k[1] - 1) or pads[1] > d[1] * (k[1] - 1) or pads[2] > d[0] * (k[0] - 1) \
            or pads[3] > d[0] * (k[0] - 1):
        return False
    out_hw = tuple(node.meta["tensor_meta"].shape[-2:])
    h, w = x.meta["tensor_meta"].shape[-2:]
    for end, size, begin, kk, ss, dd, o in ((3, h, pads[2], k[0], s[0], d[0], out_hw[0]),
                                             (1, w, pads[0], k[1], s[1], d[1], out_hw[1])):
        # ceil_mode: the last window runs past the input; with dilation 1 and its start inside,
        # it holds the edge element, so replicating the edge there keeps its max
        need = (o - 1) * ss + dd * (kk - 1) + 1 - (size + begin + pads[end])
        if need > 0 and dd == 1 and (o - 1) * ss - begin < size:
            pads[end] += need
        if (size + begin + pads[end] - dd * (kk - 1) - 1) // ss + 1 != o:
            return False          # ceil_mode windows that run past the input otherwise: not supported
    g = gm.graph
    with g.inserting_before(node):
        xp = x
        if any(pads):
            xp = g.call_function(nn.functional.pad, (x, tuple(pads)), {"mode": "replicate"})
        m = None
        for di in range(k[0]):
            for dj in range(k[1]):
                sl = g.call_function(window_slice, (xp, di, dj, s, out_hw, d))
                if m is None:
                    m = sl
                else:
                    r = g.call_function(torch.relu, (g.call_function(operator.sub, (sl, m)),))
                    m = g.call_function(operator.add, (m, r))
    node.replace_all_uses_with(m)
    g.erase_node(node)
    return True


def decompose(gm: torch.fx.GraphModule, reshape=None) -> bool:
    """Rewrite the ops above in place (nodes that depend on the input only); True if any was.
    `reshape()` re-runs shape propagation (later rewrites read the new nodes' shapes)."""
    changed = False
    while _decompose_one(gm):
        changed = True
        gm.graph.eliminate_dead_code()
        gm.recompile()
        if reshape is not None:
            reshape()
    return changed


def _decompose_one(gm) -> bool:
    """Rewrite the first decomposable node (its inputs' dependence on the input known)."""
    perturbed = set()
    for node in list(gm.graph.nodes):
        if node.op == "placeholder":
            perturbed.add(node.name)
            continue
        if not any(a.name in perturbed for a in node.all_input_nodes):
            continue
        for rewrite in (_rewrite_softmax, _rewrite_layernorm, _layernorm_chain, _rewrite_binary, _rewrite_maxpool,
                        rewrite_lookup):
            if rewrite(gm, node, perturbed):
                return True
        perturbed.add(node.name)
    return False


def _layernorm_chain(gm, node, perturbed):
    return LAYERNORM_UNIT and rewrite_layernorm_chain(gm, node, perturbed)


def _pairwise_rule(ctx):
    dim = ctx.node.args[1]
    fn = ctx.function()
    return LinearMapOp(ctx.node.name, fn, nonnegative=False, abs_fn=lambda x: pairwise_sum(x, dim),
                       kind="pairwise_diff")


register("pairwise_diff", ("Softmax", "LogSoftmax"), lambda c: c.is_function(pairwise_diff) and c.n_pert == 1,
         _pairwise_rule)
register("flip_diff", ("Softmax",), lambda c: c.is_function(flip_diff) and c.n_pert == 1,
         lambda c: LinearMapOp(c.node.name, c.function(), nonnegative=False,
                               abs_fn=lambda x, d=c.node.args[1]: flip_abs(x, d), kind="flip_diff"))
register("first_and_negated", ("Softmax",), lambda c: c.is_function(first_and_negated) and c.n_pert == 1,
         lambda c: LinearMapOp(c.node.name, c.function(), nonnegative=False,
                               abs_fn=lambda x, d=c.node.args[1]: first_twice(x, d), kind="first_and_negated"))
register("window_slice", ("MaxPool", "LayerNormalization"), lambda c: c.is_function(window_slice) and c.n_pert == 1,
         lambda c: LinearMapOp(c.node.name, c.function(), kind="window"))
