"""The placement styles, by name: adding a policy is one module here and one line below.

A style is an instance (stateless, shared by every layer it places); plans name them (`--plan
"fc*=tp;*=fsdp"`). `register_style` adds one at run time (tests, extensions).
"""
from __future__ import annotations

from .base import PlacementStyle
from .fsdp import FsdpStyle
from .replicate import ReplicateStyle
from .spec import SpecStyle
from .tp import TpStyle

STYLES: dict[str, PlacementStyle] = {
    "replicate": ReplicateStyle(),
    "fsdp": FsdpStyle(),
    "fsdp-prefetch": FsdpStyle(prefetch=True, name="fsdp-prefetch", summary=(
        "as fsdp, and each step starts the next layer's all-gather (unshard(async_op=True)) so it "
        "overlaps this step's compute; one more gathered layer per rank")),
    "tp": TpStyle(),
    "spec": SpecStyle(),
}


def get_style(name: str) -> PlacementStyle:
    from dtensor_verify.errors import PlanError

    try:
        return STYLES[name.strip().lower()]
    except KeyError:
        raise PlanError(f"unknown placement policy '{name}'; known: {', '.join(STYLES)}") from None


def register_style(style: PlacementStyle) -> PlacementStyle:
    """Make `style` known by its name (replacing one of that name)."""
    STYLES[style.name.lower()] = style
    return style


__all__ = ["STYLES", "PlacementStyle", "get_style", "register_style", "ReplicateStyle", "FsdpStyle",
           "TpStyle", "SpecStyle"]
