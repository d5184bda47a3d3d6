"""The verdict pipeline for one instance (network + VNN-LIB property).

    result = verify_instance(model, prop, onnx_path, timeout=120)
    result.verdict            # 'sat' | 'unsat' | 'unknown' | 'timeout' | 'error'
    result.counterexample     # (x, y) float64 arrays for 'sat' (y as computed by onnxruntime)

An ordered list of stages (`stages.py`) over one instance record (`instance.py`: the open
(region, disjunct) pairs, the clock, the counterexample checker, the result so far):

1. Attack: PGD with random restarts, one batch element per (region, disjunct) pair, each
   minimising its own margin `max_rows(C y - d)` (a disjunct is reached when that is <= 0).
2. A candidate becomes `sat` only after onnxruntime, running the *original* ONNX file, confirms
   that the (float32) input lies in the box and its output violates the property
   (`confirm.py`). If onnxruntime disagrees, the candidate is dropped and the pipeline goes on.
3. Incomplete verification, method after method (default CROWN, then alpha-CROWN), on the pairs
   still open (`bounds.py`). A disjunct is infeasible when some row's lower bound of `C y - d`
   is > 0; `unsat` needs every disjunct of every region proved. After each method, the box
   vertex that minimises each open row's *linear* lower bound is tried as a counterexample
   (bound-guided attack: it finds violations where PGD from random starts stalls).
4. Branch and bound (beta-CROWN, `bab_stage.py`) on what is still open, after one more attack
   round; then more PGD rounds (other seeds, doubling restarts, also started from the
   bound-guided vertices), using at most `extra_budget` of the time left.

Soundness: `unsat` only from bounds; `sat` only with an onnxruntime-confirmed counterexample;
timeouts and exceptions give `timeout` / `error`, never `unsat`. The clock is checked between
stages, between attack rounds, inside PGD (through the network function) and after each
alpha-CROWN step, so the call returns shortly after `timeout` seconds.
"""
from __future__ import annotations

from .confirm import inside_box_f32, witness_point
from .instance import Clock
from .pipeline import PipelineOptions, build_stages, verify_instance
from .result import VERDICTS, AttackOptions, Counterexample, DisjunctStatus, VerifyResult

__all__ = ["verify_instance", "VerifyResult", "DisjunctStatus", "AttackOptions", "VERDICTS", "Counterexample",
           "Clock", "PipelineOptions", "build_stages", "inside_box_f32", "witness_point"]
