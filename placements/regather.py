"""Saved-tensor hooks that let autograd keep an FSDP layer's weight without keeping it gathered."""
from __future__ import annotations

import torch
from torch.distributed.tensor import DTensor

from dtensor_verify.memory import tag

from .hold import count


class RegatherSavedWeights(torch.autograd.graph.saved_tensors_hooks):
    """Let autograd save an FSDP layer's weight without keeping it unsharded.

    alpha-CROWN backpropagates through every bound step; autograd would keep the gathered weights
    alive (or read freed storage after `reshard()`). Instead a saved weight is stored as a
    reference to its module and re-gathered with `unshard()` when the backward pass needs it,
    which is what FSDP itself does around a layer's backward.
    """

    def __init__(self, module, is_held=lambda: False):
        params = {name: p for name, p in module.named_parameters(recurse=False)}
        ptrs = {}
        for name, p in params.items():
            if not isinstance(p, DTensor):
                ptrs[p.untyped_storage().data_ptr()] = (name, p.storage_offset())

        def pack(t):
            if isinstance(t, DTensor) or t.device.type == "meta":
                return t
            try:
                key = t.untyped_storage().data_ptr()
            except RuntimeError:
                return t
            if key not in ptrs:
                return t
            name, base = ptrs[key]
            return (module, name, tuple(t.shape), tuple(t.stride()), t.storage_offset() - base)

        def unpack(packed):
            if isinstance(packed, torch.Tensor):
                return packed
            mod, name, shape, stride, offset = packed
            if is_held():              # gathered for a whole search now (placements/hold.py): as is
                return getattr(mod, name).detach().clone().as_strided(shape, stride, offset)
            with tag("weights"):
                mod.unshard()
            count("regather")
            try:
                with tag("weights"):
                    full = getattr(mod, name).detach().clone()
            finally:
                mod.reshard()
            return full.as_strided(shape, stride, offset)

        super().__init__(pack, unpack)
