"""dtensor_verify: neural-network verification (IBP, CROWN, alpha-CROWN) on PyTorch DTensors.

The public names are imported on first use (PEP 562): `python -m dtensor_verify` runs this file
first, and the command line must be able to parse its arguments (and refuse bad ones) before
paying for torch.
"""
from .errors import InputSpecError, ModelLoadError, PlanError, UnsupportedOpError, VerifierError

__all__ = ["load", "BoundedModel", "BoundResult", "METHODS", "AlphaOptions", "CrownOptions",
           "VerifierError", "ModelLoadError", "UnsupportedOpError", "InputSpecError", "PlanError"]
__version__ = "0.1.0"

_LAZY = {"load": "api", "BoundedModel": "api", "BoundResult": "api", "METHODS": "api",
         "AlphaOptions": "methods", "CrownOptions": "methods"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
