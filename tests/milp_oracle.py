"""Random small ReLU networks with exact answers from a MILP (issue 18's hostile sweep).

`instance(seed, ...)` draws a fully connected ReLU network, an input box and one output row
`c . y <= d`, with `d` placed `gap` away from the exact minimum of `c . y` over the box (found by
`exact_min`: a big-M MILP, `scipy.optimize.milp`, with exact pre-activation bounds from interval
arithmetic), so the instance is `sat` (d above the minimum) or `unsat` (below) by a known margin.
`write(inst, folder)` writes the ONNX model and the VNN-LIB property.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np


@dataclass
class Instance:
    seed: int
    weights: list            # [(W [out, in], b [out])], float32 values (float64 arrays)
    lower: np.ndarray
    upper: np.ndarray
    c: np.ndarray            # [n_out]
    d: float
    expected: str            # 'sat' | 'unsat'
    exact_min: float         # min over the box of c . y (MILP)
    gap: float               # |d - exact_min|
    milp_seconds: float
    # More rows `c_j . y <= d_j` ANDed into the unsafe set, each true on the whole box (so the
    # answer is the first row's): a conjunction whose far rows branch and bound may drop
    # (bab/focus_rows.py). Empty: the property is the one row.
    extra: list = field(default_factory=list)


def random_net(rng, n_in: int, hidden: list[int], n_out: int, scales=None) -> list:
    dims = [n_in, *hidden, n_out]
    layers = []
    for k in range(len(dims) - 1):
        s = 1.0 if scales is None else scales[k]
        W = (rng.standard_normal((dims[k + 1], dims[k])) / np.sqrt(dims[k]) * s).astype(np.float32)
        b = (rng.standard_normal(dims[k + 1]) * 0.3 * s).astype(np.float32)
        layers.append((W.astype(np.float64), b.astype(np.float64)))
    return layers


def forward(layers, x: np.ndarray) -> np.ndarray:
    h = x
    for k, (W, b) in enumerate(layers):
        h = h @ W.T + b
        if k < len(layers) - 1:
            h = np.maximum(h, 0.0)
    return h


def interval_bounds(layers, lo, hi):
    """Pre-activation bounds of every hidden layer by interval arithmetic (sound, not tight)."""
    out = []
    l, u = lo, hi
    for W, b in layers[:-1]:
        mid, rad = (l + u) / 2, (u - l) / 2
        zl, zu = W @ mid + b - np.abs(W) @ rad, W @ mid + b + np.abs(W) @ rad
        out.append((zl, zu))
        l, u = np.maximum(zl, 0), np.maximum(zu, 0)
    return out


def exact_min(layers, lo, hi, c, time_limit: float = 30.0) -> tuple[float, np.ndarray | None, bool]:
    """min over x in [lo, hi] of c . f(x): (value, minimiser, solved to optimality)."""
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import lil_matrix

    pre = interval_bounds(layers, lo, hi)
    n_in = len(lo)
    # Variables: x, then per hidden layer z (pre), a (post), delta (binary).
    index, nvar = [], n_in
    for zl, _ in pre:
        m = len(zl)
        index.append((nvar, nvar + m, nvar + 2 * m))
        nvar += 3 * m
    lb, ub, integ = np.full(nvar, -np.inf), np.full(nvar, np.inf), np.zeros(nvar)
    lb[:n_in], ub[:n_in] = lo, hi
    rows, rl, ru = [], [], []

    def add(coefs: dict, low, high):
        rows.append(coefs)
        rl.append(low)
        ru.append(high)

    prev = list(range(n_in))
    for (W, b), (zl, zu), (iz, ia, idl) in zip(layers[:-1], pre, index):
        m = len(zl)
        lb[iz:iz + m], ub[iz:iz + m] = zl, zu
        lb[ia:ia + m], ub[ia:ia + m] = 0, np.maximum(zu, 0)
        lb[idl:idl + m], ub[idl:idl + m], integ[idl:idl + m] = 0, 1, 1
        for j in range(m):
            co = {iz + j: 1.0}
            for i, p in enumerate(prev):
                co[p] = co.get(p, 0.0) - W[j, i]
            add(co, b[j], b[j])                                   # z = W h + b
            if zl[j] >= 0:
                add({ia + j: 1.0, iz + j: -1.0}, 0, 0)
            elif zu[j] <= 0:
                add({ia + j: 1.0}, 0, 0)
            else:
                add({ia + j: 1.0, iz + j: -1.0}, 0, np.inf)        # a >= z
                add({ia + j: 1.0, iz + j: -1.0, idl + j: -zl[j]}, -np.inf, -zl[j])   # a <= z - l (1 - d)
                add({ia + j: 1.0, idl + j: -zu[j]}, -np.inf, 0)    # a <= u d
        prev = list(range(ia, ia + m))
    W, b = layers[-1]
    obj = np.zeros(nvar)
    cw = c @ W
    for i, p in enumerate(prev):
        obj[p] += cw[i]
    A = lil_matrix((len(rows), nvar))
    for r, co in enumerate(rows):
        for k, v in co.items():
            A[r, k] = v
    res = milp(obj, constraints=LinearConstraint(A.tocsr(), rl, ru), integrality=integ,
               bounds=Bounds(lb, ub), options={"time_limit": time_limit, "mip_rel_gap": 1e-9})
    if res.x is None:
        return float("nan"), None, False
    x = np.clip(res.x[:n_in], lo, hi)
    return float(obj @ res.x + c @ b), x, res.status == 0


def instance(seed: int, n_in: int = 3, hidden=(8, 8), n_out: int = 3, gap_range=(1e-4, 1e-2),
             scales=None, kind: str | None = None) -> Instance:
    """A random instance `gap` (relative to the output range) from the decision boundary."""
    rng = np.random.default_rng(seed)
    layers = random_net(rng, n_in, list(hidden), n_out, scales)
    centre = rng.uniform(-1, 1, n_in)
    radius = rng.uniform(0.05, 0.5, n_in)
    lo, hi = (centre - radius).astype(np.float32).astype(np.float64), (centre + radius).astype(np.float32).astype(np.float64)
    c = np.zeros(n_out)
    i, j = rng.choice(n_out, 2, replace=False)
    c[i], c[j] = 1.0, -1.0                                      # unsafe: y_i - y_j <= d
    t = time.perf_counter()
    m, _, ok = exact_min(layers, lo, hi, c)
    seconds = time.perf_counter() - t
    ys = forward(layers, rng.uniform(lo, hi, (256, n_in))) @ c
    spread = max(float(ys.max() - ys.min()), 1e-3)
    gap = float(np.exp(rng.uniform(np.log(gap_range[0]), np.log(gap_range[1])))) * spread
    kind = kind or ("sat" if rng.random() < 0.5 else "unsat")
    d = m + gap if kind == "sat" else m - gap
    d = float(np.float32(d))                                    # exactly representable in the file
    if not ok:
        kind = "undecided"
    return Instance(seed, layers, lo, hi, c, d, kind, m, abs(d - m), seconds)


def write(inst: Instance, folder) -> tuple[str, str]:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    folder = Path(folder)
    nodes, inits, cur = [], [], "x"
    for k, (W, b) in enumerate(inst.weights):
        inits += [numpy_helper.from_array(W.T.astype(np.float32), f"W{k}"),
                  numpy_helper.from_array(b.astype(np.float32), f"b{k}")]
        nodes += [helper.make_node("MatMul", [cur, f"W{k}"], [f"m{k}"], name=f"mm{k}"),
                  helper.make_node("Add", [f"m{k}", f"b{k}"], [f"z{k}"] if k < len(inst.weights) - 1 else ["y"],
                                   name=f"add{k}")]
        if k < len(inst.weights) - 1:
            nodes.append(helper.make_node("Relu", [f"z{k}"], [f"h{k}"], name=f"relu{k}"))
            cur = f"h{k}"
    n_in, n_out = inst.weights[0][0].shape[1], inst.weights[-1][0].shape[0]
    graph = helper.make_graph(nodes, "net", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, n_in])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n_out])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx_path = folder / f"net{inst.seed}.onnx"
    onnx.save(model, onnx_path)
    lines = [f"(declare-const X_{i} Real)" for i in range(n_in)] + \
            [f"(declare-const Y_{j} Real)" for j in range(n_out)]
    for i in range(n_in):
        lines += [f"(assert (>= X_{i} {float(inst.lower[i])!r}))", f"(assert (<= X_{i} {float(inst.upper[i])!r}))"]
    for c, d in [(inst.c, inst.d), *inst.extra]:
        terms = " ".join(f"(* {float(v)!r} Y_{j})" for j, v in enumerate(c) if v != 0)
        lines.append(f"(assert (<= (+ {terms}) {float(d)!r}))")
    spec_path = folder / f"prop{inst.seed}.vnnlib"
    spec_path.write_text("\n".join(lines) + "\n")
    return str(onnx_path), str(spec_path)


SCALE_LADDER = (1e-3, 1e-1, 1e1, 1e3)


def scaled_instance(seed: int, margin: float = 2.7e-4, n_in: int = 9, hidden=(26, 26, 26),
                    floor: float = 1e-5) -> Instance:
    """Issue 18's badly scaled case: 9 inputs, 3 x 26 ReLUs, the four layers scaled by 1e-3, 1e-1,
    1e1, 1e3 in a random order, `unsat` by `margin` (absolute, as in the issue), or by 1e-5 of
    the output's magnitude where that is larger: a smaller gap would be below float32 rounding,
    and onnxruntime (float32) may then confirm a counterexample the float64 MILP rules out."""
    rng = np.random.default_rng(10_000 + seed)
    scales = [float(s) for s in rng.permutation(SCALE_LADDER)]
    inst = instance(seed, n_in=n_in, hidden=hidden, n_out=3, gap_range=(1e-4, 1e-4), scales=scales,
                    kind="unsat")
    ys = forward(inst.weights, np.random.default_rng(seed).uniform(inst.lower, inst.upper, (256, n_in))) @ inst.c
    top = float(np.abs(ys).max())
    gap = max(margin, floor * max(abs(inst.exact_min) if np.isfinite(inst.exact_min) else 0.0, top))
    d = float(np.float32((inst.exact_min if np.isfinite(inst.exact_min) else float(ys.min())) - gap))
    expected = inst.expected if inst.expected == "undecided" else "unsat"
    return Instance(seed, inst.weights, inst.lower, inst.upper, inst.c, d, expected, inst.exact_min,
                    abs(inst.exact_min - d), inst.milp_seconds)


def output_upper(layers, lo, hi, c) -> float:
    """An upper bound of c . f(x) over the box by interval arithmetic (sound, not tight)."""
    pre = interval_bounds(layers, lo, hi)
    l, u = (lo, hi) if not pre else (np.maximum(pre[-1][0], 0), np.maximum(pre[-1][1], 0))
    W, b = layers[-1]
    cw = c @ W
    return float(np.maximum(cw, 0) @ u + np.minimum(cw, 0) @ l + c @ b)


def conjunction_instance(seed: int, n_extra: int = 2) -> Instance:
    """`instance`'s row ANDed with `n_extra` rows y_i - y_j <= d_j that hold on the whole box
    (d_j above an interval bound of the row, by a random 0.1-3 x the output's spread): the exact
    answer stays the first row's, while the extra rows' bounds sit far below it."""
    n_in, hidden = [(2, (8, 8)), (3, (10, 10)), (4, (12, 12, 12))][seed % 3]
    inst = instance(seed, n_in=n_in, hidden=hidden, gap_range=(1e-6, 1e-2))
    rng = np.random.default_rng(20_000 + seed)
    n_out = inst.weights[-1][0].shape[0]
    ys = forward(inst.weights, rng.uniform(inst.lower, inst.upper, (256, n_in)))
    extra = []
    for _ in range(n_extra):
        c = np.zeros(n_out)
        i, j = rng.choice(n_out, 2, replace=False)
        c[i], c[j] = 1.0, -1.0
        spread = max(float(np.ptp(ys @ c)), 1e-3)
        d = output_upper(inst.weights, inst.lower, inst.upper, c) + rng.uniform(0.1, 3.0) * spread
        extra.append((c, float(np.float32(d + 1e-6 * abs(d) + 1e-6))))
    return replace(inst, extra=extra)
