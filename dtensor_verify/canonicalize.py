"""The canonicaliser: products by constant matrices become `nn.Linear` modules.

`MatMul` by a constant matrix and onnx2torch's generic `Gemm` are rewritten into `nn.Linear`,
so that every weight of the network is held by an `nn.Linear` / `nn.Conv2d` module: the
placement pass shards modules in place, never loose graph constants. A rewrite fires only when
the shapes seen on an example input prove that it keeps the function (operand order, ranks,
broadcasting); otherwise the general op stays. The load-time self-check (`selfcheck.py`)
compares the result with the original model.
"""
from __future__ import annotations

import operator
from typing import Any

import torch
from torch import nn

from .errors import ModelLoadError, UnsupportedOpError
from .fx_nodes import binary_kind as _binary_kind
from .fx_nodes import describe_node
from .fx_nodes import is_matmul as _is_matmul
from .fx_nodes import is_module as _is_module

# Largest weight (elements) the `W @ x` rewrite may build for a matrix-valued x (see _left_product).
MAX_REWRITE_WEIGHT = 1 << 24


def _one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())


class _Canonicalizer:
    """Walks the graph in order, running it on an example input as it goes, and rewrites nodes
    with the shapes of their actual operands in hand. A rewritten node's value is computed from
    the rewrite, so later decisions see the graph as it now is."""

    def __init__(self, gm: torch.fx.GraphModule, input_shape: tuple[int, ...], source: str,
                 dtype: torch.dtype = torch.float32):
        self.gm, self.graph, self.source = gm, gm.graph, source
        gen = torch.Generator().manual_seed(0)
        first = next(iter(gm.parameters()), None)        # a module may come already on a GPU
        self.example = torch.randn((1, *input_shape), generator=gen).to(
            device=first.device if first is not None else "cpu", dtype=dtype)
        self.value: dict[torch.fx.Node, Any] = {}
        self.constant: set[torch.fx.Node] = set()     # nodes that do not depend on the input
        self.fresh: set[torch.fx.Node] = set()        # bias-free Linear nodes made here

    # -- helpers -------------------------------------------------------------------------
    def is_constant(self, arg) -> bool:
        return not isinstance(arg, torch.fx.Node) or arg in self.constant

    def const_tensor(self, arg) -> torch.Tensor | None:
        if isinstance(arg, torch.fx.Node) and arg in self.constant and isinstance(self.value[arg], torch.Tensor):
            return self.value[arg]
        return None

    def evaluate(self, node):
        args = torch.fx.node.map_arg(node.args, lambda n: self.value[n])
        kwargs = torch.fx.node.map_arg(node.kwargs, lambda n: self.value[n])
        try:
            with torch.no_grad():
                if node.op == "call_module":
                    return self.gm.get_submodule(node.target)(*args, **kwargs)
                if node.op == "call_function":
                    return node.target(*args, **kwargs)
                if node.op == "call_method":
                    return getattr(args[0], node.target)(*args[1:], **kwargs)
        except Exception as exc:
            raise ModelLoadError(
                f"{self.source}: node '{node.name}' ({describe_node(self.gm, node)}) fails on an input of "
                f"shape {list(self.example.shape)}: {_one_line(exc)}") from None
        raise ModelLoadError(f"{self.source}: node '{node.name}': unexpected fx op '{node.op}'")

    def add_linear(self, after, x, weight, bias=None, name_hint="linear"):
        """Insert `Linear(x)` after node `after`; returns the new node (its value computed)."""
        # The weight keeps the model's precision (float64 models stay float64).
        dtype = self.example.dtype
        linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, dtype=dtype)
        with torch.no_grad():
            linear.weight.copy_(weight.detach().to(dtype))
            if bias is not None:
                linear.bias.copy_(bias.detach().to(dtype))
        name, k = f"linear_{name_hint}", 0
        while hasattr(self.gm, name):
            k += 1
            name = f"linear_{name_hint}_{k}"
        self.gm.add_module(name, linear)
        with self.graph.inserting_after(after):
            new = self.graph.call_module(name, (x,))
        self.value[new] = self.evaluate(new)
        if bias is None:
            self.fresh.add(new)
        return new

    def replace(self, node, new) -> None:
        node.replace_all_uses_with(new)
        self.graph.erase_node(node)

    # -- the walk ------------------------------------------------------------------------
    def run(self) -> torch.fx.GraphModule:
        inputs = 0
        for node in list(self.graph.nodes):
            if node.op == "placeholder":
                inputs += 1
                if inputs > 1:
                    raise ModelLoadError(f"{self.source}: the model has more than one input")
                self.value[node] = self.example
            elif node.op == "get_attr":
                self.value[node] = _fetch_attr(self.gm, node.target)
                self.constant.add(node)
            elif node.op == "output":
                continue
            elif all(self.is_constant(a) for a in node.all_input_nodes):
                self.value[node] = self.evaluate(node)
                self.constant.add(node)
            elif not (self.rewrite_matmul(node) or self.rewrite_gemm(node) or self.fold_bias(node)
                      or self.expand_scalar_bias(node)):
                self.value[node] = self.evaluate(node)
        self.graph.eliminate_dead_code()
        self.gm.delete_all_unused_submodules()
        self.gm.recompile()
        return self.gm

    # -- MatMul by a constant matrix -----------------------------------------------------
    def rewrite_matmul(self, node) -> bool:
        if not _is_matmul(self.gm, node) or len(node.args) != 2 or node.kwargs:
            return False
        a, b = node.args
        wa, wb = self.const_tensor(a), self.const_tensor(b)
        if wb is not None and wa is None and not self.is_constant(a) and wb.dim() == 2:
            x = a
            if self.value[x].dim() < 2 or self.value[x].shape[-1] != wb.shape[0]:
                return False            # not a valid product: evaluating the node reports it
            new = self.add_linear(node, x, wb.t(), name_hint=node.name)    # x @ W == Linear(W^T)
        elif wa is not None and wb is None and not self.is_constant(b) and wa.dim() == 2:
            new = self.left_product(node, wa, b)
            if new is None:
                return False
        else:
            return False
        self.replace(node, new)
        return True

    def left_product(self, node, w: torch.Tensor, x):
        """`W @ x` (constant W [n, k] on the left), exactly, by the per-sample rank of x.

        * x per sample a vector [k] (an ONNX input without batch dim): each sample is W x, a
          Linear with weight W.
        * x per sample [..., k, m]: W multiplies dim -2, independently for each of the m columns
          and each leading index; on the flattened sample that is one Linear whose weight is
          I_lead (x) W (x) I_m (Kronecker products), followed by a reshape to [..., n, m].
        """
        xv = self.value[x]
        per_sample = tuple(xv.shape[1:])
        n, k = w.shape
        if len(per_sample) == 1:
            return self.add_linear(node, x, w, name_hint=node.name) if per_sample[0] == k else None
        if per_sample[-2] != k:
            return None                     # not a valid product: evaluating the node reports it
        lead = 1
        for s in per_sample[:-2]:
            lead *= s
        m = per_sample[-1]
        rows, cols = lead * n * m, lead * k * m
        if rows * cols > MAX_REWRITE_WEIGHT:
            raise UnsupportedOpError(
                f"{self.source}: node '{node.name}' (MatMul with the constant on the left, W {list(w.shape)} @ "
                f"x {list(per_sample)}): its exact rewrite needs a {rows}x{cols} weight, more than "
                f"{MAX_REWRITE_WEIGHT} elements; not supported")
        weight = torch.kron(torch.eye(lead, dtype=w.dtype), torch.kron(w.detach(), torch.eye(m, dtype=w.dtype)))
        with self.graph.inserting_after(node):
            flat = self.graph.call_method("flatten", (x, 1))
        self.value[flat] = self.evaluate(flat)
        linear = self.add_linear(flat, flat, weight, name_hint=node.name)
        self.fresh.discard(linear)          # a following Add is not a per-row bias of this Linear
        with self.graph.inserting_after(linear):
            out = self.graph.call_method("reshape", (linear, (-1, *per_sample[:-2], n, m)))
        self.value[out] = self.evaluate(out)
        return out

    # -- onnx2torch's generic Gemm ---------------------------------------------------------
    def rewrite_gemm(self, node) -> bool:
        """`alpha * A @ op(B) + beta * C` with constant B and C (onnx2torch makes an nn.Linear
        itself only for a 1-D C): a Linear, then an Add of the constant that `fold_bias` turns
        into the bias when that keeps the function."""
        if not _is_module(self.gm, node, "OnnxGemm") or node.kwargs:
            return False
        mod = self.gm.get_submodule(node.target)
        a, b, *rest = node.args
        c = rest[0] if rest else None
        wb = self.const_tensor(b)
        if self.is_constant(a) or wb is None or wb.dim() != 2 or (c is not None and self.const_tensor(c) is None):
            return False
        if mod.trans_a:
            raise UnsupportedOpError(
                f"{self.source}: node '{node.name}' (Gemm): transA=1 on a tensor that depends on the network "
                f"input is not supported (it transposes the batch dimension)")
        mat = wb.t() if mod.trans_b else wb                  # [k, n]
        new = self.add_linear(node, a, mat.t() * mod.alpha, name_hint=node.name)
        if c is not None:
            name = self._register_constant(f"{node.name}_c", self.value[c] * mod.beta)
            with self.graph.inserting_after(new):
                const = self.graph.get_attr(name)
                add = self.graph.call_function(operator.add, (new, const))
            self.value[const] = _fetch_attr(self.gm, name)
            self.constant.add(const)
            self.replace(node, add)
            if not self.fold_bias(add):
                self.value[add] = self.evaluate(add)
        else:
            self.replace(node, new)
        return True

    def _register_constant(self, hint: str, value: torch.Tensor) -> str:
        name, k = f"_const_{hint}", 0
        while hasattr(self.gm, name):
            k += 1
            name = f"_const_{hint}_{k}"
        self.gm.register_buffer(name, value.detach().clone())
        return name

    # -- Add of a constant after a fresh Linear --------------------------------------------
    def fold_bias(self, node) -> bool:
        """`Linear(x) + c` becomes the Linear's bias only when c is one value per output
        feature, broadcast along every other dim, and the sum keeps the Linear's output shape.
        A column [n, 1], a matrix [m, n], or a constant that broadcasts the output up stay a
        separate (exact) Add."""
        if _binary_kind(self.gm, node) != "add" or len(node.args) != 2 or node.kwargs:
            return False
        lin = next((a for a in node.args if a in self.fresh), None)
        if lin is None or len(lin.users) != 1:
            return False
        other = node.args[1] if node.args[0] is lin else node.args[0]
        if isinstance(other, (int, float)):
            c = torch.tensor(float(other))
        else:
            c = self.const_tensor(other)
            if c is None:
                return False
        out = self.evaluate(node)
        lin_out = self.value[lin]
        n = lin_out.shape[-1]
        per_feature = c.dim() == 0 or (all(s == 1 for s in c.shape[:-1]) and c.shape[-1] in (1, n))
        if tuple(out.shape) != tuple(lin_out.shape) or not per_feature:
            return False
        module = self.gm.get_submodule(lin.target)
        biased = nn.Linear(module.in_features, module.out_features, bias=True, dtype=module.weight.dtype)
        with torch.no_grad():
            biased.weight.copy_(module.weight)
            biased.bias.copy_(c.detach().to(module.weight.dtype).reshape(-1).expand(n))
        _set_submodule(self.gm, lin.target, biased)
        self.fresh.discard(lin)
        self.replace(node, lin)
        self.value[lin] = self.evaluate(lin)
        return True

    # -- nn.Linear with a broadcast scalar bias (onnx2torch: Gemm with C of shape [1]) -----
    def expand_scalar_bias(self, node) -> bool:
        if node.op != "call_module":
            return False
        mod = self.gm.get_submodule(node.target)
        if not isinstance(mod, nn.Linear) or mod.bias is None or mod.bias.numel() == mod.out_features:
            return False
        if mod.bias.numel() != 1:
            raise ModelLoadError(f"{self.source}: node '{node.name}' (Linear): bias of {mod.bias.numel()} "
                                 f"values for {mod.out_features} outputs")
        fixed = nn.Linear(mod.in_features, mod.out_features, bias=True, dtype=mod.weight.dtype)
        with torch.no_grad():
            fixed.weight.copy_(mod.weight)
            fixed.bias.copy_(mod.bias.detach().reshape(()).expand(mod.out_features))
        _set_submodule(self.gm, node.target, fixed)
        self.value[node] = self.evaluate(node)
        return True


def _fetch_attr(gm, target: str):
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _set_submodule(gm, target: str, module: nn.Module) -> None:
    """Put `module` at `target` in gm. GraphModule builds its own containers along the path,
    so this never edits a module the caller passed in."""
    parent, _, leaf = target.rpartition(".")
    setattr(gm.get_submodule(parent) if parent else gm, leaf, module)


def canonicalize(gm: torch.fx.GraphModule, input_shape: tuple[int, ...], source: str = "model",
                 dtype: torch.dtype = torch.float32) -> torch.fx.GraphModule:
    """Rewrite products by constant matrices into nn.Linear (see _Canonicalizer)."""
    return _Canonicalizer(gm, tuple(input_shape), source, dtype).run()
