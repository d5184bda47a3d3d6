"""Rules of the exact-linear ops (`LinearMapOp`): shape moves, selections, sums and averages,
padding, resizing, sums / differences of activations with broadcasting, transposed and 1-D/3-D
convolutions (weights captured at build time), and the like."""
from __future__ import annotations

import copy
import operator

import torch
from torch import nn

from .linear_map import LinearMapOp
from .registry import register
from .window_maps import window_map_of

# Modules that are one fixed linear map with coefficients >= 0 of their perturbed inputs (the
# other inputs, checked below where it matters, are constants: indices, shapes, axes, pads).
_SELECTIONS = {
    "OnnxTranspose": "Transpose", "OnnxSlice": "Slice", "OnnxSliceV9": "Slice", "OnnxConcat": "Concat",
    "OnnxGather": "Gather", "OnnxGatherElements": "GatherElements", "OnnxSqueezeStaticAxes": "Squeeze",
    "OnnxSqueezeDynamicAxes": "Squeeze", "OnnxUnsqueezeStaticAxes": "Unsqueeze",
    "OnnxUnsqueezeDynamicAxes": "Unsqueeze", "OnnxExpand": "Expand", "OnnxTile": "Tile",
    "OnnxDepthToSpace": "DepthToSpace", "OnnxGlobalAveragePool": "GlobalAveragePool",
    "OnnxGlobalAveragePoolWithKnownInputShape": "GlobalAveragePool", "OnnxReduceSumStaticAxes": "ReduceSum",
    "OnnxReduceSumDynamicAxes": "ReduceSum", "OnnxSum": "Sum", "OnnxMean": "Mean",
    "OnnxCopyIdentity": "Identity", "OnnxReshape": "Reshape", "OnnxFlatten": "Flatten",
}
_POOLS = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
          nn.AdaptiveAvgPool3d, nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d, nn.ConstantPad1d, nn.ConstantPad2d,
          nn.ConstantPad3d, nn.Upsample, nn.PixelShuffle, nn.PixelUnshuffle, nn.Flatten, nn.Unflatten)
_WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_TORCH_SELECTIONS = (torch.cat, torch.concat, torch.stack, torch.transpose, torch.permute, torch.squeeze,
                     torch.unsqueeze, torch.narrow, torch.sum, torch.mean, torch.flatten, torch.reshape,
                     operator.getitem, torch.nn.functional.pad, torch.nn.functional.avg_pool1d,
                     torch.nn.functional.avg_pool2d, torch.nn.functional.avg_pool3d,
                     torch.nn.functional.adaptive_avg_pool2d, torch.nn.functional.interpolate)
_METHOD_SELECTIONS = ("transpose", "permute", "squeeze", "unsqueeze", "expand", "expand_as", "repeat", "sum",
                      "mean", "narrow", "contiguous", "flatten", "reshape", "view", "__getitem__", "clone")


def _linear_map(ctx, kind, nonnegative=True, abs_fn=None, elementwise=False):
    op = LinearMapOp(ctx.node.name, ctx.function(), nonnegative, abs_fn, kind=kind, elementwise=elementwise)
    op.window_map = window_map_of(ctx.module)       # padding / pooling: a patches rule (ops/window_maps.py)
    return op


_MULTI_INPUT = ("OnnxConcat", "OnnxSum", "OnnxMean")


def _perturbed_positions(ctx):
    names = {p.name for p in ctx.perturbed}
    return [i for i, a in enumerate(ctx.node.args) if isinstance(a, torch.fx.Node) and a.name in names]


def _build_selection(ctx):
    m = ctx.module
    t = ctx.module_type
    pos = _perturbed_positions(ctx)
    if t == "OnnxWhere":
        if 0 in pos:
            raise ctx.unsupported("Where with a condition that depends on the input")
    elif m is not None and t not in _MULTI_INPUT and (pos != [0] or ctx.n_pert != 1):
        raise ctx.unsupported("only its data input may depend on the network input (indices, shapes and "
                              "axes must be constants)")
    if t == "OnnxPadStatic" or t == "OnnxPadDynamic":
        if m.mode != "constant":
            raise ctx.unsupported(f"Pad mode '{m.mode}' (only constant padding is linear)")
        return _linear_map(ctx, "pad")
    if t in ("OnnxResize", "OnnxResizeV10"):
        mode = getattr(m, "onnx_mode", getattr(m, "mode", "nearest"))
        if mode not in ("nearest", "linear", "bilinear", "trilinear"):
            raise ctx.unsupported(f"Resize mode '{mode}' (only nearest and linear: their weights are >= 0)")
        return _linear_map(ctx, "resize")
    if t == "OnnxCast":
        if m.torch_dtype not in _FLOATS:
            raise ctx.unsupported(f"Cast to {m.torch_dtype} (integer or boolean: not a float function)")
        return _linear_map(ctx, "cast", elementwise=_same_shape(ctx))
    if t == "OnnxWhere":
        return _linear_map(ctx, "where")
    if t == "OnnxReduceStaticAxes":
        if getattr(m, "operation_type", None) not in ("ReduceMean", "ReduceSum"):
            return None
        return _linear_map(ctx, m.operation_type.lower())
    mode = ctx.node.kwargs.get("mode") if ctx.is_function(torch.nn.functional.interpolate) else \
        getattr(m, "mode", None) if isinstance(m, nn.Upsample) else None
    if mode is not None and mode not in ("nearest", "nearest-exact", "linear", "bilinear", "trilinear", "area"):
        raise ctx.unsupported(f"interpolation mode '{mode}' (only modes with weights >= 0)")
    if m is None:
        return _linear_map(ctx, str(getattr(ctx.node.target, "__name__", ctx.node.target)).strip("_"))
    return _linear_map(ctx, _SELECTIONS.get(t, t).lower())


def _match_selection(ctx):
    if ctx.n_pert < 1:
        return False
    t = ctx.module_type
    if t in _SELECTIONS or t in ("OnnxPadStatic", "OnnxPadDynamic", "OnnxResize", "OnnxResizeV10", "OnnxCast",
                                 "OnnxWhere", "OnnxReduceStaticAxes"):
        return True
    if ctx.is_module(*_POOLS):
        return True
    if ctx.is_function(*_TORCH_SELECTIONS) or ctx.is_method(*_METHOD_SELECTIONS):
        return True
    return False


def abs_module(m: nn.Module) -> nn.Module:
    """A copy of a linear module with |weights|, no bias and zero padding: x -> |J| x."""
    a = copy.deepcopy(m)
    with torch.no_grad():
        for sub in a.modules():
            for pname, p in list(sub.named_parameters(recurse=False)):
                if pname == "bias":
                    p.zero_()
                else:
                    p.abs_()
            for attr in ("value", "constant_value"):       # nn.ConstantPad*d, onnx2torch's Pad
                if isinstance(getattr(sub, attr, None), (int, float)):
                    setattr(sub, attr, 0.0)
    return a


def _same_shape(ctx):
    return tuple(ctx.node.meta["tensor_meta"].shape) == tuple(ctx.perturbed[0].meta["tensor_meta"].shape)


def _weighted_parts(m):
    if isinstance(m, _WEIGHTED):
        return True
    if isinstance(m, nn.Sequential):
        return all(isinstance(s, _WEIGHTED + _POOLS) or type(s).__name__ in ("OnnxPadStatic",) for s in m)
    return False


def _build_weighted(ctx):
    m = ctx.module
    for sub in m.modules():
        if getattr(sub, "padding_mode", "zeros") != "zeros" or getattr(sub, "mode", "constant") != "constant":
            raise ctx.unsupported("only zero / constant padding is linear")
    fn = ctx.function()
    absm = abs_module(m)
    kind = "conv_transpose" if any(isinstance(s, nn.modules.conv._ConvTransposeNd) for s in m.modules()) else "conv"
    op = LinearMapOp(ctx.node.name, fn, nonnegative=False, abs_fn=lambda x: absm(x), kind=kind, owned=[absm])
    if isinstance(m, nn.ConvTranspose2d):
        op.transposed_conv = m          # a patches rule (ops/conv_transpose_patches.py)
    return op


def _binary_kind(ctx):
    from ..fx_nodes import binary_kind as kind_of
    return kind_of(ctx.gm, ctx.node)


def _build_sum(ctx):
    """x + y / x - y of activations with broadcasting (or with a constant that broadcasts x up)."""
    kind = _binary_kind(ctx)
    if kind not in ("add", "sub"):
        return None
    fn = ctx.function()
    if kind == "add" and ctx.n_pert == 2:
        return LinearMapOp(ctx.node.name, fn, nonnegative=True, kind="add_broadcast")
    if ctx.n_pert == 2:
        return LinearMapOp(ctx.node.name, fn, nonnegative=False, abs_fn=lambda x, y: x + y, kind="sub_broadcast")
    return None


def _build_neg(ctx):
    fn = ctx.function()
    return LinearMapOp(ctx.node.name, fn, nonnegative=False, abs_fn=lambda x: x, kind="neg")


register("selection", ("Transpose", "Slice", "Concat", "Gather", "GatherElements", "Squeeze", "Unsqueeze",
                       "Expand", "Tile", "DepthToSpace", "GlobalAveragePool", "AveragePool", "ReduceSum",
                       "ReduceMean", "Sum", "Mean", "Pad", "Resize", "Upsample", "Cast", "Where", "Identity",
                       "Reshape", "Flatten"),
         _match_selection, _build_selection)
register("weighted_linear", ("ConvTranspose", "Conv"), lambda c: c.n_pert == 1 and _weighted_parts(c.module)
         if c.module is not None else False, _build_weighted)
register("sum_broadcast", ("Add", "Sub"), lambda c: _binary_kind(c) in ("add", "sub") and c.n_pert == 2,
         _build_sum)
register("neg", ("Neg",), lambda c: c.n_pert == 1 and (c.module_type == "OnnxNeg" or c.is_function(
    torch.neg, operator.neg) or c.is_method("neg")), _build_neg)


_TUPLE_LINEAR = ("OnnxSplit", "OnnxSplit13")
_TUPLE_FUNCS = (torch.split, torch.chunk, torch.unbind, torch.tensor_split)


def make_item_op(gm, producer, perturbed, index, value_of, name):
    """One element of a tuple-valued linear node (Split): `producer(x)[index]` as a linear map."""
    from . import describe_target
    from .registry import OpContext

    ctx = OpContext(gm, producer, list(perturbed), {}, describe_target(gm, producer), value_of)
    ok = ctx.module_type in _TUPLE_LINEAR or ctx.is_function(*_TUPLE_FUNCS) or \
        ctx.is_method("split", "chunk", "unbind", "tensor_split")
    if not ok or ctx.n_pert != 1:
        raise ctx.unsupported("a node with several outputs (only Split is supported)")
    return LinearMapOp(name, ctx.function(pick=lambda out: out[index]), nonnegative=True, kind="split")


# Listed only: Split is built by `make_item_op` (graph.py reads its outputs by index) and the shape
# of an activation is a constant that graph.py evaluates.
register("split", ("Split", "Shape"), lambda c: False, lambda c: None)
