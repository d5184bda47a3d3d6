"""The Python API: load a network, bound it, optionally under a placement plan.

    import dtensor_verify as dv
    model = dv.load("net.onnx.gz", device="auto")        # or dv.load(module, input_shape=(784,))
    res = model.compute_bounds(x_lower, x_upper, method="alpha-crown")
    res.lower, res.upper                                 # [B, n_out] tensors
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from .errors import InputSpecError
from .graph import BoundGraph, build_graph
from .layout import DEFAULT_LAYOUT, Layout
from .methods import AlphaOptions, CrownOptions
from .methods.dispatch import METHODS, normalize_method, run_method
from .model_loading import LoadedModel, load_onnx, trace_module
from .selfcheck import check_loaded_model

@dataclass
class BoundResult:
    lower: torch.Tensor          # [B, K]
    upper: torch.Tensor          # [B, K]
    method: str
    seconds: float
    info: dict = field(default_factory=dict)


class BoundedModel:
    """A network ready for bounding: its bound graph plus the layout its tensors live in."""

    def __init__(self, loaded: LoadedModel):
        self.loaded = loaded
        self.graph: BoundGraph = build_graph(loaded)
        self.layout: Layout = DEFAULT_LAYOUT
        self.plan_report: list[str] = []
        # Where the weights, and every tensor the bound methods and the verdict pipeline create, live.
        self.device = next((p.device for p in loaded.module.parameters()), torch.device("cpu"))
        # The bound graph must compute the model as given (onnxruntime / the nn.Module): a
        # loading rewrite that changed the function is an error here, never a verdict later.
        self.self_check_deviation = check_loaded_model(self)

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def from_onnx(cls, path: str | os.PathLike) -> "BoundedModel":
        return cls(load_onnx(path))

    @classmethod
    def from_module(cls, module: nn.Module, input_shape) -> "BoundedModel":
        return cls(trace_module(module.eval(), tuple(input_shape)))

    @property
    def dtype(self) -> torch.dtype:
        """The precision the model computes in (float32, or float64 for float64 models)."""
        return getattr(self.loaded, "dtype", torch.float32)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.graph.input_shape

    @property
    def n_inputs(self) -> int:
        return math.prod(self.input_shape)

    @property
    def n_outputs(self) -> int:
        return self.graph.output.numel

    @property
    def module(self) -> nn.Module:
        return self.graph.module

    def to(self, device) -> "BoundedModel":
        """Move the model to `device` ('auto', 'cpu', 'cuda', 'cuda:N' or a torch.device).
        Inputs given later (boxes, C) are moved to it; results come back on it."""
        from .device import exact_float32, resolve_device

        device = resolve_device(device, what=f"device={device!r}")
        if device.type == "cuda":
            exact_float32()          # no TF32: bounds must hold for the float32 network
        self.graph.module.to(device)
        for node in self.graph.nodes:
            if node.op is not None and hasattr(node.op, "to") and callable(getattr(node.op, "to")):
                node.op.to(device)
        self.device = device
        if type(self.layout) is Layout:
            # One process: the layout answers `device` for the memory meter (a distributed layout
            # gets its device from the mesh).
            self.layout = Layout()
            self.layout.device = device
        return self

    # -- evaluation -----------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the network through its bound ops (works under any placement). x: [B, *input_shape]."""
        x = self._as_batch(x, "x")
        values = {self.graph.input_name: x}
        for node in self.graph.nodes:
            if node.op is None:
                continue
            with self.layout.weights(node) as weights:
                values[node.name] = self.layout.local(weights.forward([values[i] for i in node.inputs]))
        out = values[self.graph.output_name]
        # [B, n_out], also for a scalar output per sample and for an empty batch (lockstep ranks
        # with no domain this round still take the step)
        return out.reshape(out.shape[0], self.n_outputs)

    __call__ = forward

    def _as_batch(self, t, what: str) -> torch.Tensor:
        """[B, *input_shape] from one sample (input shape or flat) or a batch (same, with a
        leading batch dim). Anything else is refused rather than silently re-chunked."""
        t = torch.as_tensor(t, dtype=self.dtype, device=self.device)
        shape, n = tuple(self.input_shape), self.n_inputs
        if tuple(t.shape) == shape or (t.dim() == 1 and t.numel() == n):
            return t.reshape(1, *shape)
        if t.dim() >= 1 and (tuple(t.shape[1:]) == shape or (t.dim() == 2 and t.shape[1] == n)):
            return t.reshape(t.shape[0], *shape)
        raise InputSpecError(f"{what} has shape {list(t.shape)}; the model's input is {list(shape)} "
                             f"({n} values): give one sample of that shape (or flat), or a batch [B, ...] of them")

    def check_box(self, x_lower, x_upper):
        lo, hi = self._as_batch(x_lower, "lower bound"), self._as_batch(x_upper, "upper bound")
        if lo.shape != hi.shape:
            raise InputSpecError(f"lower bound shape {list(lo.shape)} != upper bound shape {list(hi.shape)}")
        if torch.isnan(lo).any() or torch.isnan(hi).any():
            raise InputSpecError("input box contains NaN")
        if torch.isinf(lo).any() or torch.isinf(hi).any():
            raise InputSpecError("input box is unbounded (inf); bound propagation needs a finite box")
        bad = (lo > hi).flatten(1)
        if bad.any():
            b, i = bad.nonzero()[0].tolist()
            raise InputSpecError(f"input box has lower > upper at X_{i} (box {b}): "
                                 f"{lo.flatten(1)[b, i].item()} > {hi.flatten(1)[b, i].item()}")
        return lo, hi

    # -- bounding -------------------------------------------------------------------------
    def compute_bounds(self, x_lower, x_upper, method: str = "crown", C: torch.Tensor | None = None,
                       crown_options: CrownOptions | None = None, alpha_options: AlphaOptions | None = None,
                       want_lower: bool = True, want_upper: bool = True) -> BoundResult:
        """Bounds of `C f(x)` for x in [x_lower, x_upper]. C: [B, K, n_out] (None = identity)."""
        method = normalize_method(method)
        box = self.check_box(x_lower, x_upper)
        batch = box[0].shape[0]
        if C is not None:
            C = torch.as_tensor(C, dtype=box[0].dtype, device=box[0].device)
            if C.dim() == 2:
                C = C.unsqueeze(0).expand(batch, -1, -1)
            if C.shape[0] != batch or C.shape[-1] != self.n_outputs:
                raise InputSpecError(f"spec matrix C has shape {list(C.shape)}; expected [{batch}, K, {self.n_outputs}]")
        t0 = time.perf_counter()
        res = run_method(method, self.graph, box, C, self.layout, crown_options=crown_options,
                         alpha_options=alpha_options, want_lower=want_lower, want_upper=want_upper)
        lower, upper = res.lower, res.upper
        info = {}
        if res.iterations is not None:
            info = {"iterations": res.iterations, "crown_lower": res.crown_lower, "crown_upper": res.crown_upper}
        return BoundResult(lower, upper, method, time.perf_counter() - t0, info)


def load(model, input_shape=None, device=None) -> BoundedModel:
    """Load an ONNX path (`.onnx` / `.onnx.gz`) or wrap an `nn.Module` (needs `input_shape`).

    `device`: 'auto' (the GPU when there is one), 'cpu', 'cuda', 'cuda:N' or a torch.device.
    None keeps the weights where they are (the CPU for ONNX files); the command line's default
    is 'auto'. An ONNX model is converted on the CPU, then moved."""
    if device is not None:
        from .device import resolve_device

        device = resolve_device(device, what=f"device={device!r}")     # refuse before loading
    if isinstance(model, (str, os.PathLike)):
        bounded = BoundedModel.from_onnx(model)
    elif isinstance(model, nn.Module):
        if input_shape is None:
            raise InputSpecError("an nn.Module needs input_shape (per sample, without the batch dim)")
        bounded = BoundedModel.from_module(model, input_shape)
    else:
        raise InputSpecError(f"cannot load a model from {type(model).__name__}")
    return bounded.to(device) if device is not None else bounded
