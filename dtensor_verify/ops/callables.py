"""A graph node's operation as a plain function of its perturbed inputs.

Constants are bound when the op is built. The function takes batched inputs `[B, *S]` and must
give the batched output: most onnx2torch modules do so as they are; a module that bakes the
batch size of one into its constants (Reshape to [1, ...], Expand to [1, ...]) is run under
`torch.vmap`, one sample at a time. Which of the two is checked on an example batch at build
time, so the function never silently mixes samples.
"""
from __future__ import annotations

import torch


def _target_call(ctx):
    node, gm = ctx.node, ctx.gm
    if node.op == "call_module":
        return gm.get_submodule(node.target)
    if node.op == "call_function":
        return node.target
    if node.op == "call_method":
        name = node.target
        return lambda obj, *a, **k: getattr(obj, name)(*a, **k)
    raise ctx.unsupported(f"fx op '{node.op}'")


def raw_function(ctx):
    """f(*xs) with xs[i] substituted for the i-th perturbed argument (by position for top-level
    arguments, by node for nested ones) and constants for everything else."""
    node = ctx.node
    pert_names = [a.name for a in ctx.perturbed]
    value_of = ctx.value_of
    target = _target_call(ctx)
    top = [i for i, a in enumerate(node.args) if isinstance(a, torch.fx.Node) and a.name in pert_names]
    on_device = {}            # (constant node, device) -> the constant there (built once per device)

    def constant(a, device):
        v = value_of(a)
        if not isinstance(v, torch.Tensor) or device is None or v.device == device:
            return v
        key = (a.name, device)
        if key not in on_device:            # the model moved (e.g. to a GPU) after the op was built
            on_device[key] = v.to(device)
        return on_device[key]

    def fn(*xs):
        by_name = {}
        for name, x in zip(pert_names, xs):
            by_name.setdefault(name, x)
        args = list(node.args)
        for j, i in enumerate(top):
            args[i] = xs[j]
        device = xs[0].device if xs else None

        def sub(a):
            if isinstance(a, torch.fx.Node):
                return by_name[a.name] if a.name in by_name else constant(a, device)
            return a

        args = [a if (i in top) else torch.fx.node.map_aggregate(a, sub) for i, a in enumerate(args)]
        kwargs = torch.fx.node.map_aggregate(dict(node.kwargs), sub)
        return target(*args, **kwargs)

    return fn


def _example_inputs(shapes, dtype, batch, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, *s, generator=gen, dtype=dtype) for s in shapes]


def batched(fn, in_shapes, dtype=torch.float32, pick=None):
    """`fn` as a batch-generic function: itself if running it on a batch of 3 equals running it
    on each sample, else `torch.vmap` of its one-sample form. `pick` post-processes the output
    (e.g. one element of a tuple). Returns None when neither form works."""
    def call(*xs):
        out = fn(*xs)
        return pick(out) if pick is not None else out

    xs = _example_inputs(in_shapes, dtype, 3)
    try:
        with torch.no_grad():
            whole = call(*xs)
            parts = [call(*[x[i:i + 1] for x in xs]) for i in range(3)]
        if isinstance(whole, torch.Tensor) and whole.shape[0] == 3 and all(p.shape[0] == 1 for p in parts) \
                and torch.allclose(whole, torch.cat(parts), rtol=1e-5, atol=1e-6):
            return call
    except Exception:
        pass

    def one(*x1):
        return call(*[x.unsqueeze(0) for x in x1]).squeeze(0)

    mapped = torch.vmap(one)
    try:
        with torch.no_grad():
            whole = mapped(*xs)
            parts = [call(*[x[i:i + 1] for x in xs]) for i in range(3)]
        if torch.allclose(whole, torch.cat(parts), rtol=1e-5, atol=1e-6):
            return mapped
    except Exception:
        pass
    return None


def node_function(ctx, pick=None, in_shapes=None):
    """The node's batched function of its perturbed inputs, or an `unsupported` error."""
    shapes = in_shapes or [tuple(a.meta["tensor_meta"].shape[1:]) for a in ctx.perturbed]
    dtype = ctx.perturbed[0].meta["tensor_meta"].dtype if ctx.perturbed else torch.float32
    f = batched(raw_function(ctx), shapes, dtype, pick)
    if f is None:
        raise ctx.unsupported("its function does not act on each sample of a batch separately (it moves or "
                              "mixes the batch dimension)")
    return f
