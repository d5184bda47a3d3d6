"""Placement styles and the graph pass that applies a per-layer plan on a DeviceMesh."""
from .apply import PlacementReport, apply_plan, apply_plan_from_cli
from .mesh import MESH_DIM, init_mesh, mesh_from_process_group
from .plan import Plan, Rule, parse_plan
from .styles import STYLES, PlacementStyle, get_style, register_style
from .topology import Topology

# The plan's vocabulary: a policy is a placement style (the names stay for plans and tests).
POLICIES = STYLES
Policy = PlacementStyle
get_policy = get_style

__all__ = ["STYLES", "PlacementStyle", "get_style", "register_style", "POLICIES", "Policy", "get_policy",
           "Plan", "Rule", "parse_plan", "apply_plan", "apply_plan_from_cli", "PlacementReport", "init_mesh",
           "mesh_from_process_group", "MESH_DIM", "Topology"]
