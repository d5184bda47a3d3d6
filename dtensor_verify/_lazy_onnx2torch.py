"""Import onnx2torch without paying for torchvision up front.

onnx2torch registers all of its converters when imported, and two of them (NonMaxSuppression,
RoiAlign) import torchvision at module level, which in turn imports torch._dynamo: about 1.2 s
of a 2 s start-up on a small CPU, for two ops no verifiable network uses. Under VNN-COMP each
instance is a new process, so it is paid every time.

`import_onnx2torch()` imports onnx2torch while `torchvision` and `torchvision.ops` are stand-ins
whose attributes resolve to the real torchvision on first *use* (a call or an attribute of the
attribute). Those converters only touch torchvision when a graph holding NMS / RoiAlign runs,
so every other model never imports it. The stand-ins leave `sys.modules` as soon as onnx2torch
is imported: a later `import torchvision` anywhere gets the real package. If the deferred import
fails for any reason, onnx2torch is imported the ordinary way.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
import types

_DEFERRED = ("torchvision", "torchvision.ops")


class _Deferred:
    """`module.attr1.attr2...` of a module not imported yet; imported when called or dug into."""

    def __init__(self, module: str, attrs: tuple[str, ...] = ()):
        self._module, self._attrs = module, attrs

    def _resolve(self):
        obj = importlib.import_module(self._module)
        for name in self._attrs:
            obj = getattr(obj, name)
        return obj

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self._resolve(), name)

    def __call__(self, *args, **kwargs):
        return self._resolve()(*args, **kwargs)

    def __repr__(self):
        return f"<deferred {'.'.join((self._module, *self._attrs))}>"


class _DeferredModule(types.ModuleType):
    """Stand-in for a module during onnx2torch's import: `from m import f` binds a _Deferred."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Deferred(self.__name__, (name,))


def import_onnx2torch():
    """The onnx2torch module, imported with torchvision deferred (see the module docstring)."""
    if "onnx2torch" in sys.modules:
        return sys.modules["onnx2torch"]
    if importlib.util.find_spec("onnx2torch") is None:
        from .errors import ModelLoadError

        raise ModelLoadError("onnx2torch is not installed (it converts ONNX models; "
                             "requirements-pinned.txt pins it): install it, or run scripts/test.sh once")
    if any(name in sys.modules for name in _DEFERRED):      # torchvision is there already: no gain
        return importlib.import_module("onnx2torch")
    stand_ins = {name: _DeferredModule(name) for name in _DEFERRED}
    sys.modules.update(stand_ins)
    try:
        return importlib.import_module("onnx2torch")
    except Exception:
        # Anything unexpected (a new onnx2torch that uses torchvision at import time): start
        # again the ordinary way, so the stand-ins can never change what gets converted.
        for name in [n for n in sys.modules if n == "onnx2torch" or n.startswith("onnx2torch.")]:
            del sys.modules[name]
        _remove(stand_ins)
        return importlib.import_module("onnx2torch")
    finally:
        _remove(stand_ins)


def _remove(stand_ins: dict) -> None:
    for name, module in stand_ins.items():
        if sys.modules.get(name) is module:
            del sys.modules[name]
