"""The bound graph: the network as a topologically ordered list of bound ops.

Built from a canonical `torch.fx.GraphModule` (see model_loading). Constant sub-expressions
are folded into the ops that use them; every remaining node depends on the network input.
Parameters stay in the original `nn.Module`s (`node.layer` names them) so that the
placement pass can shard them in place.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.fx.node import map_aggregate
from torch.fx.passes.shape_prop import TensorMetadata

from .errors import ModelLoadError, UnsupportedOpError
from .model_loading import LoadedModel
from .ops import BoundOp, make_op
from .ops.elementwise_affine import ElementwiseAffineOp


@dataclass
class BoundNode:
    name: str
    op: BoundOp | None                 # None for the input node
    inputs: list[str]                  # perturbed inputs (names of earlier nodes)
    shape: tuple[int, ...]             # per-sample output shape
    layer: str | None = None           # qualified name of the nn.Module holding its parameters
    layer_type: str | None = None      # its class name (plans match on both)

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def has_params(self) -> bool:
        return self.op is not None and self.op.module is not None and \
            any(True for _ in self.op.module.parameters(recurse=False))


@dataclass
class BoundGraph:
    nodes: list[BoundNode]
    input_name: str
    output_name: str
    module: torch.fx.GraphModule
    input_shape: tuple[int, ...]
    by_name: dict[str, BoundNode] = field(default_factory=dict)

    def __post_init__(self):
        self.by_name = {n.name: n for n in self.nodes}
        self.consumers: dict[str, list[str]] = {n.name: [] for n in self.nodes}
        for n in self.nodes:
            for i in n.inputs:
                self.consumers[i].append(n.name)

    def __getitem__(self, name: str) -> BoundNode:
        return self.by_name[name]

    @property
    def output(self) -> BoundNode:
        return self.by_name[self.output_name]

    def layers(self) -> list[BoundNode]:
        """Nodes that own parameters (the units a placement plan talks about)."""
        return [n for n in self.nodes if n.has_params]

    def preactivation_nodes(self) -> list[str]:
        """Nodes whose bounds a nonlinear op needs (ReLU inputs), in topological order."""
        needed = {i for n in self.nodes if n.op is not None and n.op.needs_input_bounds for i in n.inputs}
        return [n.name for n in self.nodes if n.name in needed]

    def ancestors(self, name: str) -> set[str]:
        seen, stack = set(), [name]
        while stack:
            cur = stack.pop()
            if cur in seen:
                continue
            seen.add(cur)
            stack.extend(self.by_name[cur].inputs)
        return seen

    def affine_from_input(self, name: str) -> bool:
        """True when every op between the input and `name` is affine (IBP is then exact per neuron...
        only for a single affine op; used to skip needless backward passes)."""
        node = self.by_name[name]
        return len(node.inputs) == 1 and node.inputs[0] == self.input_name and node.op.is_affine


class _ShapeProp(torch.fx.Interpreter):
    """torch.fx's ShapeProp (records `meta["tensor_meta"]` per node), minus its memory-format
    probe and its import of symbolic_shapes / sympy: those cost 0.3-0.5 s of every process's
    start-up, and only the shapes are read here."""

    def run_node(self, n):
        result = super().run_node(n)
        found = False

        def extract(obj):
            nonlocal found
            if isinstance(obj, torch.Tensor):
                found = True
                return TensorMetadata(obj.shape, obj.dtype, obj.requires_grad, tuple(obj.stride()), None,
                                      obj.is_quantized, {})
            return obj

        meta = map_aggregate(result, extract)
        if found:
            n.meta["tensor_meta"] = meta
        n.meta["type"] = type(result)
        return result


def build_graph(loaded: LoadedModel) -> BoundGraph:
    gm = loaded.module
    # The example input lives where the weights do (a module may come already on a GPU).
    first = next(iter(gm.parameters()), None)
    example = torch.zeros(1, *loaded.input_shape, device=first.device if first is not None else "cpu")
    try:
        _ShapeProp(gm).run(example)
    except Exception as exc:
        raise ModelLoadError(
            f"{loaded.source}: running the model on an input of shape {list(example.shape)} failed: "
            f"{type(exc).__name__}: {exc}") from None

    nodes: list[BoundNode] = []
    perturbed: set[str] = set()
    constants: dict[str, object] = {}
    input_name = output_name = None
    modules = dict(gm.named_modules())

    def value_of(arg):
        if isinstance(arg, torch.fx.Node):
            return constants[arg.name]
        return arg

    for fx_node in gm.graph.nodes:
        if fx_node.op == "placeholder":
            if input_name is not None:
                raise ModelLoadError(f"{loaded.source}: the model has more than one input")
            input_name = fx_node.name
            perturbed.add(fx_node.name)
            nodes.append(BoundNode(fx_node.name, None, [], tuple(fx_node.meta["tensor_meta"].shape[1:])))
            continue
        if fx_node.op == "get_attr":
            obj = gm
            for part in fx_node.target.split("."):
                obj = getattr(obj, part)
            constants[fx_node.name] = obj.detach() if isinstance(obj, torch.Tensor) else obj
            continue
        if fx_node.op == "output":
            args = fx_node.args[0]
            if isinstance(args, (tuple, list)):
                if len(args) != 1:
                    raise UnsupportedOpError(f"{loaded.source}: models with {len(args)} outputs are not supported")
                args = args[0]
            output_name = args.name
            continue
        flat_args = [a for a in fx_node.args]
        pert_args = [a for a in flat_args if isinstance(a, torch.fx.Node) and a.name in perturbed]
        if not pert_args:
            # Constant sub-expression (e.g. a shape computation): evaluate it once.
            constants[fx_node.name] = _evaluate_constant(gm, fx_node, value_of)
            continue
        const_args = {i: value_of(a) for i, a in enumerate(flat_args)
                      if not (isinstance(a, torch.fx.Node) and a.name in perturbed)
                      and (isinstance(a, torch.fx.Node) or isinstance(a, (int, float)))}
        if fx_node.op == "call_method" and fx_node.target in ("view", "reshape", "flatten"):
            const_args = {}
        if fx_node.op == "call_function" and fx_node.target in (torch.flatten, torch.reshape):
            const_args = {}
        op = make_op(gm, fx_node, pert_args, const_args)
        meta = fx_node.meta.get("tensor_meta")
        op.out_shape = tuple(meta.shape[1:])
        op.in_shapes = [nodes_by_name_shape(nodes, a.name) for a in pert_args]
        if isinstance(op, ElementwiseAffineOp):
            if op.kind == "batchnorm":
                extra = len(op.out_shape) - 1
                op.scale = op.scale.reshape(-1, *([1] * extra))
                op.shift = op.shift.reshape(-1, *([1] * extra))
            op.finalize()
        if op.kind in ("add", "sub") and any(s != op.out_shape for s in op.in_shapes):
            raise UnsupportedOpError(f"node '{fx_node.name}': {op.kind} of perturbed tensors with "
                                     f"broadcasting ({op.in_shapes} -> {op.out_shape}) is not supported")
        layer = fx_node.target if fx_node.op == "call_module" else None
        layer_type = type(modules[layer]).__name__ if layer else None
        nodes.append(BoundNode(fx_node.name, op, [a.name for a in pert_args], op.out_shape, layer, layer_type))
        perturbed.add(fx_node.name)

    if output_name is None or output_name not in perturbed:
        raise ModelLoadError(f"{loaded.source}: the output does not depend on the input")
    return BoundGraph(nodes, input_name, output_name, gm, loaded.input_shape)


def nodes_by_name_shape(nodes: list[BoundNode], name: str) -> tuple[int, ...]:
    for n in nodes:
        if n.name == name:
            return n.shape
    raise KeyError(name)


def _evaluate_constant(gm, fx_node, value_of):
    args = [value_of(a) if isinstance(a, torch.fx.Node) else a for a in fx_node.args]
    kwargs = {k: value_of(v) if isinstance(v, torch.fx.Node) else v for k, v in fx_node.kwargs.items()}
    if fx_node.op == "call_module":
        return gm.get_submodule(fx_node.target)(*args, **kwargs)
    if fx_node.op == "call_function":
        return fx_node.target(*args, **kwargs)
    if fx_node.op == "call_method":
        return getattr(args[0], fx_node.target)(*args[1:], **kwargs)
    raise ModelLoadError(f"cannot evaluate constant node {fx_node.name}")
