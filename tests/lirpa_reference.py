"""Test-only reference harness: auto_LiRPA 0.3 running on torch 2.14 / numpy 2.

auto_LiRPA 0.3 predates current PyTorch and NumPy.  ``patch_auto_lirpa()`` applies the small
compatibility patches listed in DESIGN.md ("Testing on CPU"), plus one more found by running it
((d): BoundedModule._named_members signature, needed for residual Add nodes), before auto_LiRPA
is imported.  ``lirpa_bounds()`` then computes IBP / CROWN / CROWN-IBP reference
bounds of ``C @ model(x)`` over an L-inf box.

Parity notes (auto_LiRPA 0.3 defaults, kept unchanged here unless ``bound_opts`` is given):
- ReLU lower slope is 'adaptive': 1 if u > -l else 0 (``upper_d > 0.5``); the upper line uses
  ``u_r = max(u.clamp(min=0), l.clamp(max=0) + 1e-8)``.
- The first Linear/Conv whose input is the BoundInput itself gets its bounds by IBP (equal to
  CROWN in exact math); behind a Flatten/Reshape it is bounded by CROWN.
- ``sparse_intermediate_bounds`` (default True, with IBP references): for a pre-ReLU node, a
  one-step IBP bound is computed first from the already-computed (CROWN) bounds of the previous
  layers; when IBP-unstable neurons are <= 90 % of the layer, CROWN is run only
  for those, and IBP-stable neurons keep their IBP bounds.  Otherwise CROWN runs for all neurons
  and the IBP bounds are discarded.  Unstable neurons' CROWN bounds are *not* intersected with
  IBP.  Since CROWN can be looser than that IBP step on some neurons, the default can be
  slightly tighter than pure CROWN (seen: ~2e-3 on random_cnn('strided_pad'), ~4e-4 on
  cifar_base_kw; 0 on the MLPs and mnist_256x2).  For exact
  parity with a pure-CROWN implementation pass
  ``bound_opts={'sparse_intermediate_bounds': False}``.
- The final node's CROWN bound is never intersected with IBP (method 'CROWN').
- conv_mode: auto_LiRPA's default 'patches', but 'matrix' for models with grouped or dilated
  Conv2d (0.3's patches mode crashes on them); both give the same bounds up to rounding.
- Batches are bounded one sample at a time (see lirpa_bounds).
"""
from __future__ import annotations

import sys
import types

import numpy as np
import torch

_PATCHED = False


def patch_auto_lirpa() -> None:
    """Make auto_LiRPA 0.3 importable/runnable on torch 2.14 + numpy 2 (idempotent)."""
    global _PATCHED
    if _PATCHED:
        return

    # (a) numpy 2 removed numpy.lib.arraysetops; auto_LiRPA/operators/base.py imports `isin` from it.
    if "numpy.lib.arraysetops" not in sys.modules:
        try:
            import numpy.lib.arraysetops  # noqa: F401  (numpy < 2)
        except ImportError:
            alias = types.ModuleType("numpy.lib.arraysetops")
            for name in ("isin", "in1d", "unique", "intersect1d", "union1d", "setdiff1d",
                         "setxor1d", "ediff1d"):
                if hasattr(np, name):
                    setattr(alias, name, getattr(np, name))
            sys.modules["numpy.lib.arraysetops"] = alias
            np.lib.arraysetops = alias

    # (b) torch removed torch.onnx.symbolic_helper._set_opset_version; auto_LiRPA's parse_graph
    # imports it and calls it before torch.onnx.utils._optimize_graph (TorchScript exporter).
    import torch.onnx.symbolic_helper as _sh
    if not hasattr(_sh, "_set_opset_version"):
        from torch.onnx._internal.torchscript_exporter._globals import GLOBALS

        def _set_opset_version(opset_version: int) -> None:
            GLOBALS.export_onnx_opset_version = opset_version

        _sh._set_opset_version = _set_opset_version

    # (c) torch._C.Node lost __getitem__; parse_graph reads attributes as node[attr_name].
    # kindOf(name) names the typed accessor ('f', 'i', 's', 't', 'is', 'fs', 'ss', 'ts', ...).
    if not hasattr(torch._C.Node, "__getitem__"):
        torch._C.Node.__getitem__ = lambda self, k: getattr(self, self.kindOf(k))(k)

    # (d) torch >= 2.0 calls Module._named_members(..., remove_duplicate=...), but BoundedModule
    # overrides it with the old 3-argument signature (breaks self.parameters(), e.g. on Add nodes).
    import auto_LiRPA.bound_general as _bg
    _orig = _bg.BoundedModule._named_members
    if not getattr(_orig, "_lirpa_ref_patched", False):
        def _named_members(self, get_members_fn, prefix="", recurse=True,
                           remove_duplicate=True):
            return _orig(self, get_members_fn, prefix=prefix, recurse=recurse)
        _named_members._lirpa_ref_patched = True
        _bg.BoundedModule._named_members = _named_members

    _PATCHED = True


# ---------------------------------------------------------------------------------------------
_CACHE: dict = {}


def _has_patches_unsupported_conv(model: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.Conv2d) and (m.groups != 1 or tuple(m.dilation) != (1, 1))
               for m in model.modules())


def _bounded_module(model: torch.nn.Module, input_shape: tuple, bound_opts: dict):
    from auto_LiRPA import BoundedModule

    key = (id(model), tuple(input_shape), repr(sorted(bound_opts.items())))
    hit = _CACHE.get(key)
    if hit is not None and hit[0] is model:
        return hit[1]
    dummy = torch.zeros(input_shape, dtype=torch.float32)
    bm = BoundedModule(model, dummy, bound_opts=dict(bound_opts), device="cpu")
    _CACHE[key] = (model, bm)  # keeps the model alive, so its id() is not reused
    return bm


def lirpa_conv_mode(model: torch.nn.Module, bound_opts: dict | None = None) -> str:
    """The conv_mode lirpa_bounds uses for ``model``: auto_LiRPA's default 'patches', except
    'matrix' for grouped or dilated Conv2d (auto_LiRPA 0.3's patches mode fails on those with a
    shape error in clampmult.py) or when bound_opts says otherwise."""
    if bound_opts and "conv_mode" in bound_opts:
        return bound_opts["conv_mode"]
    return "matrix" if _has_patches_unsupported_conv(model) else "patches"


def lirpa_bounds(model: torch.nn.Module, x_lower: torch.Tensor, x_upper: torch.Tensor,
                 method: str, C: torch.Tensor | None = None,
                 bound_opts: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """auto_LiRPA reference bounds of ``C @ model(x)`` for ``x in [x_lower, x_upper]``.

    x_lower/x_upper: ``[batch, *input_shape]``; C: ``[batch, n_spec, n_out]`` or None (identity
    over the flattened output).  method: 'IBP', 'CROWN' or 'CROWN-IBP'.  Returns detached
    ``(lower, upper)`` of shape ``[batch, n_spec]``.
    bound_opts: extra BoundedModule options on top of auto_LiRPA's defaults; conv_mode is
    chosen by ``lirpa_conv_mode`` unless given.  Pass ``{'sparse_intermediate_bounds': False}``
    for pure-CROWN intermediate bounds (see module docstring).
    """
    patch_auto_lirpa()
    from auto_LiRPA import BoundedTensor
    from auto_LiRPA.perturbations import PerturbationLpNorm

    if method.upper() not in ("IBP", "CROWN", "CROWN-IBP"):
        raise ValueError(f"unsupported method {method!r}")
    opts = dict(bound_opts or {})
    opts["conv_mode"] = lirpa_conv_mode(model, bound_opts)
    model = model.eval()
    x_lower = x_lower.detach().to(torch.float32)
    x_upper = x_upper.detach().to(torch.float32)
    if x_lower.shape != x_upper.shape:
        raise ValueError(f"box shapes differ: {x_lower.shape} vs {x_upper.shape}")
    batch = x_lower.shape[0]
    if C is not None:
        C = C.detach().to(torch.float32)
        if C.shape[0] != batch:
            raise ValueError(f"C batch {C.shape[0]} != box batch {batch}")
    # One sample at a time: auto_LiRPA 0.3 mis-shapes the A-matrices of unbatched constant
    # operands (e.g. the mean/std buffers of normalized_mlp) when batch > 1, and its sparse
    # intermediate-bound choice merges unstable neurons over the batch; per-sample calls make
    # every row independent of the others.
    bm = _bounded_module(model, (1, *x_lower.shape[1:]), opts)
    lows, ups = [], []
    for b in range(batch):
        xl, xu = x_lower[b:b + 1], x_upper[b:b + 1]
        bx = BoundedTensor((xl + xu) / 2, PerturbationLpNorm(norm=np.inf, x_L=xl, x_U=xu))
        with torch.no_grad():
            lb, ub = bm.compute_bounds(x=(bx,), C=None if C is None else C[b:b + 1],
                                       method=method.upper())
        lows.append(lb.detach().reshape(1, -1))
        ups.append(ub.detach().reshape(1, -1))
    return torch.cat(lows).clone(), torch.cat(ups).clone()
