"""What the pipeline reports: the verdict of one instance and the status of each disjunct."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

VERDICTS = ("sat", "unsat", "unknown", "timeout", "error")


@dataclass
class AttackOptions:
    restarts: int = 20          # random starts per (region, disjunct) pair, first round
    steps: int = 100            # PGD steps per round
    extra_rounds: int = 4       # rounds after the bounds failed (restarts doubled each time)
    extra_budget: float = 0.25  # ... using at most this fraction of the time left
    max_samples: int = 4096     # pairs x restarts per PGD batch (memory cap; pairs are chunked)
    defer_above: int = 256      # more pairs than this: the first attack waits for the first bound
    deferred_samples: int = 65536  # ... and then takes at most this many pairs x restarts
    seed: int = 0


@dataclass
class DisjunctStatus:
    region: int
    disjunct: int
    n_rows: int
    status: str = "open"                 # 'open' | 'proved' (infeasible) | 'violated'
    proved_by: str | None = None
    lower: list | None = None            # best lower bounds of the rows of C y - d
    attack_margin: float | None = None   # best max_rows(C y - d) the attack reached (torch)

    def as_dict(self):
        return dict(self.__dict__)


@dataclass
class VerifyResult:
    verdict: str
    counterexample: tuple | None          # (x [n_in], y [n_out]) float64, y from onnxruntime
    seconds: float
    details: list = field(default_factory=list)     # DisjunctStatus per (region, disjunct)
    bounds: dict = field(default_factory=dict)      # method -> {seconds, proved, open, ...}
    phases: dict = field(default_factory=dict)      # phase -> seconds
    decided_by: str | None = None                   # 'attack' | method name | 'spec' | 'bab' | 'output-constraints'
    message: str | None = None                      # for 'error' / 'timeout'
    traceback: str | None = None                    # for unexpected (non-user) errors
    confirmed_by: str | None = None                 # 'onnxruntime' (or 'torch' without ONNX)
    cpu_seconds: float | None = None                # this process's CPU seconds over `seconds` (a loaded
                                                    # machine: the work done, without waiting for cores)
    stage: str | None = None                        # the stage running when the run ended (a
                                                    # timeout's: where its time went)

    def as_dict(self):
        out = {k: v for k, v in self.__dict__.items() if k not in ("counterexample", "details")}
        out["details"] = [d.as_dict() for d in self.details]
        if self.counterexample is not None:
            out["counterexample"] = {"x": self.counterexample[0].tolist(), "y": self.counterexample[1].tolist()}
        return out


@dataclass(frozen=True)
class Counterexample:
    """A confirmed violation: the input (float64 of a float32 point in the box), the output of
    the original model there, who ran it, and the (region, disjunct) pair it violates."""
    x: np.ndarray                # [n_in] float64
    y: np.ndarray                # [n_out] float64
    confirmed_by: str            # 'onnxruntime' | 'torch'
    pair: int


@dataclass(frozen=True)
class Decision:
    """What ends the pipeline: a stage's verdict (the record fills in the rest)."""
    verdict: str                 # 'sat' | 'unsat' | 'unknown'
    decided_by: str | None = None
    message: str | None = None
