"""dtensor_verify: neural-network verification (IBP, CROWN, alpha-CROWN) on PyTorch DTensors."""
from .api import METHODS, BoundedModel, BoundResult, load
from .errors import (InputSpecError, ModelLoadError, PlanError, UnsupportedOpError, VerifierError)
from .methods import AlphaOptions, CrownOptions

__all__ = ["load", "BoundedModel", "BoundResult", "METHODS", "AlphaOptions", "CrownOptions",
           "VerifierError", "ModelLoadError", "UnsupportedOpError", "InputSpecError", "PlanError"]
__version__ = "0.1.0"
