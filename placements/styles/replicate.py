"""`replicate`: every rank holds the whole layer; nothing is sharded (the reference)."""
from __future__ import annotations

from .base import PlacementStyle


class ReplicateStyle(PlacementStyle):
    name = "replicate"
    summary = "weights and A-matrices full on every rank (reference)"
