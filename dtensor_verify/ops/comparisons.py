"""Claims for ops that never reach the bound graph as themselves.

* Greater / Less / GreaterOrEqual / LessOrEqual / Equal of a perturbed float tensor, and Not / And /
  Or / Where on their results: rewritten at load into exact float indicators built from Sign,
  Relu, Abs and affine ops (`onnx_booleans.py`), whose rules bound them (a step's indicator over
  an interval that straddles its threshold is bounded by [0, 1]). Comparisons of constants fold.
* Constant / ConstantOfShape: constants, folded by the loader (a ConstantOfShape of the Shape of a
  perturbed tensor too: that shape is fixed).

The rules below match no fx node: they declare the ONNX op types so that `supports
--onnx-operators` lists them (`tests/test_vnnlib2.py` loads a model of each claimed op).
"""
from __future__ import annotations

from .registry import register

register("comparison_indicators", ("Greater", "Less", "GreaterOrEqual", "LessOrEqual", "Equal", "Not", "And", "Or"),
         lambda ctx: False, lambda ctx: None,
         notes="rewritten at load into Sign / Relu / Abs indicators (onnx_booleans.py)")
register("folded_constants", ("Constant", "ConstantOfShape"), lambda ctx: False, lambda ctx: None,
         notes="constants folded by the loader")
