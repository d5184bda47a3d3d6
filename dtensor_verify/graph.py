"""The bound graph: the network as a topologically ordered list of bound ops.

Built from a canonical `torch.fx.GraphModule` (see model_loading). Constant sub-expressions
are folded into the ops that use them; every remaining node depends on the network input.
Parameters stay in the original `nn.Module`s (`node.layer` names them) so that the
placement pass can shard them in place.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
from torch import nn

from .errors import ModelLoadError, UnsupportedOpError
from .model_loading import LoadedModel, describe_node, propagate_shapes
from .ops import BoundOp, make_op
from .ops.structural import make_item_op
from .ops.elementwise_affine import ElementwiseAffineOp
from .ops.linear_map import LinearMapOp


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


def build_graph(loaded: LoadedModel) -> BoundGraph:
    """The bound graph of a canonical module; an unsupported node is one error line that names
    the file and the node."""
    try:
        return _build_graph(loaded)
    except UnsupportedOpError as exc:
        if str(exc).startswith(f"{loaded.source}:"):
            raise
        raise UnsupportedOpError(f"{loaded.source}: {exc}") from None


def _build_graph(loaded: LoadedModel) -> BoundGraph:
    gm = loaded.module
    # The example input lives where the weights do (a module may come already on a GPU).
    first = next(iter(gm.parameters()), None)
    example = torch.zeros(1, *loaded.input_shape, device=first.device if first is not None else "cpu",
                          dtype=getattr(loaded, "dtype", torch.float32))
    propagate_shapes(gm, example, loaded.source)
    from .ops.decompose import decompose

    # Softmax, LayerNorm, MaxPool, Div / Max / Min of two activations: by ops with bound rules.
    decompose(gm, lambda: propagate_shapes(gm, example, loaded.source))

    nodes: list[BoundNode] = []
    perturbed: set[str] = set()
    constants: dict[str, object] = {}
    tuple_nodes: dict[str, list] = {}     # tuple-valued perturbed nodes (Split) -> their perturbed inputs
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
        # Perturbed nodes nested in lists / kwargs (torch.cat([a, b])) come after the top-level ones.
        pert_args += [a for a in fx_node.all_input_nodes if a.name in perturbed and a not in pert_args]
        if pert_args and _is_shape_query(gm, fx_node):
            # The shape of an activation is a constant (its one-sample value; later reshapes that
            # use it run per sample).
            constants[fx_node.name] = _evaluate_shape(gm, fx_node, value_of)
            continue
        item = _tuple_item(fx_node, tuple_nodes)
        if item is not None:
            producer, index = item
            op = make_item_op(gm, producer, tuple_nodes[producer.name], index, value_of, fx_node.name)
            pert_args = tuple_nodes[producer.name]
        elif not pert_args:
            # Constant sub-expression (e.g. a shape computation): evaluate it once.
            constants[fx_node.name] = _evaluate_constant(gm, fx_node, value_of)
            continue
        const_args = {i: value_of(a) for i, a in enumerate(flat_args)
                      if not (isinstance(a, torch.fx.Node) and (a.name in perturbed or a.name in tuple_nodes))
                      and (isinstance(a, torch.fx.Node) or isinstance(a, (int, float)))}
        if fx_node.op == "call_method" and fx_node.target in ("view", "reshape", "flatten"):
            const_args = {}
        if fx_node.op == "call_function" and fx_node.target in (torch.flatten, torch.reshape):
            const_args = {}
        if fx_node.meta.get("tensor_meta") is None and item is None and _is_tuple_valued(fx_node):
            tuple_nodes[fx_node.name] = pert_args         # built by the getitem nodes that read it
            continue
        if item is None:
            op = make_op(gm, fx_node, pert_args, const_args, value_of=value_of)
        op.out_shape = _per_sample_shape(loaded.source, gm, fx_node)
        op.in_shapes = [nodes_by_name_shape(nodes, a.name) for a in pert_args]
        if isinstance(op, LinearMapOp):
            op.finalize(fx_node.meta["tensor_meta"].dtype, example.device)
        if isinstance(op, ElementwiseAffineOp):
            if op.kind == "batchnorm":
                extra = len(op.out_shape) - 1
                op.scale = op.scale.reshape(-1, *([1] * extra))
                op.shift = op.shift.reshape(-1, *([1] * extra))
            op.finalize(fx_node.meta["tensor_meta"].dtype)
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


def _is_shape_query(gm, fx_node) -> bool:
    if fx_node.op == "call_module":
        return type(gm.get_submodule(fx_node.target)).__name__ == "OnnxShape"
    if fx_node.op == "call_method":
        return fx_node.target in ("size", "dim")
    return fx_node.op == "call_function" and fx_node.target is getattr and fx_node.args[1:] == ("shape",)


def _evaluate_shape(gm, fx_node, value_of):
    """A shape query evaluated on zeros of its (perturbed) input's one-sample shape."""
    def val(a):
        if not isinstance(a, torch.fx.Node):
            return a
        try:
            return value_of(a)
        except KeyError:
            meta = a.meta["tensor_meta"]
            return torch.zeros(meta.shape, dtype=meta.dtype)
    args = [val(a) for a in fx_node.args]
    if fx_node.op == "call_module":
        return gm.get_submodule(fx_node.target)(*args)
    if fx_node.op == "call_method":
        return getattr(args[0], fx_node.target)(*args[1:])
    return getattr(args[0], "shape")


def _is_tuple_valued(fx_node) -> bool:
    users = list(fx_node.users)
    return bool(users) and all(u.op == "call_function" and u.target is operator.getitem for u in users)


def _tuple_item(fx_node, tuple_nodes):
    """(producer, index) when `fx_node` is `producer[index]` of a tuple-valued perturbed node."""
    if fx_node.op != "call_function" or fx_node.target is not operator.getitem:
        return None
    producer, index = fx_node.args
    if isinstance(producer, torch.fx.Node) and producer.name in tuple_nodes and isinstance(index, int):
        return producer, index
    return None


def _per_sample_shape(source: str, gm, fx_node) -> tuple[int, ...]:
    """The node's output shape without the batch dim. Shapes come from a run at batch size 1,
    and every bound op treats dim 0 as the batch: a node whose output there does not have dim 0
    of size 1 (a Reshape to [6, 1], a constant that broadcasts [1, 3] up to [4, 3]) has moved or
    grown the batch dim, and its per-sample function is not what the ops would compute."""
    meta = fx_node.meta.get("tensor_meta")
    if meta is None:
        raise UnsupportedOpError(f"{source}: node '{fx_node.name}' ({describe_node(gm, fx_node)}) does not "
                                 f"produce a tensor; not supported")
    shape = tuple(meta.shape)
    if len(shape) == 0 or shape[0] != 1:
        raise UnsupportedOpError(
            f"{source}: node '{fx_node.name}' ({describe_node(gm, fx_node)}) gives shape {list(shape)} on one "
            f"sample: it moves or broadcasts the batch dimension (dim 0 must stay of size 1); not supported")
    return shape[1:]


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
