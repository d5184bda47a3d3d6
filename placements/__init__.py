"""Placement policies and the graph pass that applies a per-layer plan on a DeviceMesh."""
from .apply import PlacementReport, apply_plan, apply_plan_from_cli
from .mesh import MESH_DIM, init_mesh, mesh_from_process_group
from .plan import Plan, Rule, parse_plan
from .policies import POLICIES, Policy, get_policy

__all__ = ["POLICIES", "Policy", "get_policy", "Plan", "Rule", "parse_plan", "apply_plan",
           "apply_plan_from_cli", "PlacementReport", "init_mesh", "mesh_from_process_group", "MESH_DIM"]
