"""`verify_instance`: an ordered list of stages over one instance record."""
from __future__ import annotations

import traceback

from ..errors import InputSpecError, TimeLimitReached, VerifierError
from .instance import Clock, check_dimensions, open_instance
from .result import AttackOptions, Decision, VerifyResult
from .stages import Attack, AttackBeforeBab, Bound, BranchAndBound, FinalAttack


def build_stages(methods, attack: bool, bab: bool, bound_batching: str, alpha_options, max_batch: int,
                 bab_options, progress: bool) -> list:
    """attack -> bounds (method after method) -> [attack, branch and bound] -> final attack."""
    stages = [Attack()] if attack else []
    stages += [Bound(m, bound_batching, alpha_options, max_batch, guide=attack) for m in methods]
    if bab:
        stages += ([AttackBeforeBab()] if attack else []) + [BranchAndBound(bab_options, progress)]
    if attack:
        stages.append(FinalAttack())
    return stages


def _checked_methods(methods, bound_batching: str) -> tuple:
    from ..methods.dispatch import normalize_method

    if bound_batching not in ("region", "pair"):
        raise InputSpecError(f"bound_batching must be 'region' or 'pair', not '{bound_batching}'")
    return tuple(normalize_method(m) for m in methods)


def _run(model, prop, onnx_path, clock, say, res, opts: dict) -> Decision:
    methods = _checked_methods(opts["methods"], opts["bound_batching"])
    check_dimensions(model, prop)
    if not prop.regions:
        # Every term of the formula is a false constant: nothing can violate it.
        return Decision("unsat", "spec")
    inst = open_instance(model, prop, onnx_path, clock, say, opts["attack_options"] or AttackOptions(), res)
    from ..bab.input_bab import alpha_before       # fewer alpha-CROWN steps when BaB will split inputs
    alpha_options = alpha_before(model, inst.pair_lo, inst.pair_hi, opts["bab"], opts["bab_options"],
                                 opts["alpha_options"])
    for stage in build_stages(methods, opts["attack"], opts["bab"], opts["bound_batching"], alpha_options,
                              opts["max_batch"], opts["bab_options"], opts["progress"]):
        decision = stage.run(inst)
        if decision is not None:
            return decision
    stopped = res.bounds.get("bab", {}).get("reason")
    return Decision("unknown", message=f"branch and bound stopped: {stopped}" if stopped else None)


def verify_instance(model, prop, onnx_path: str | None, timeout: float,
                    methods=("crown", "alpha-crown"), attack: bool = True, log=None,
                    attack_options: AttackOptions | None = None, alpha_options=None,
                    bound_batching: str = "region", max_batch: int = 64, bab: bool = True,
                    bab_options=None) -> VerifyResult:
    """Decide one instance (see the package docstring). `log`: a callable taking a str, or None.
    `bab`: run branch and bound (beta-CROWN) on what the bounds leave open, with the time left
    (`bab_options`: a `bab.BabOptions`).

    `onnx_path` is the original ONNX file (plain or gzipped) that confirms counterexamples with
    onnxruntime; None means the file the model was loaded from, or, for a model built from an
    nn.Module, that module as given (then `confirmed_by` is 'torch').
    """
    clock = Clock(timeout, model.layout)
    say = log if log is not None else (lambda msg: None)
    res = VerifyResult("unknown", None, 0.0)
    opts = dict(methods=methods, attack=attack, attack_options=attack_options, alpha_options=alpha_options,
                bound_batching=bound_batching, max_batch=max_batch, bab=bab, bab_options=bab_options,
                progress=log is not None)
    try:
        decision = _run(model, prop, onnx_path, clock, say, res, opts)
    except TimeLimitReached:
        decision = Decision("timeout", message=f"time limit of {timeout:g} s reached")
    except VerifierError as exc:
        decision = Decision("error", message=str(exc))
    except Exception as exc:  # a bug: report it as 'error' (never unsat), keep the traceback
        decision = Decision("error", message=f"internal error: {type(exc).__name__}: {exc}")
        res.traceback = traceback.format_exc()
    return _finish(res, decision, clock, say)


def _finish(res: VerifyResult, decision: Decision, clock: Clock, say) -> VerifyResult:
    res.verdict = decision.verdict
    if decision.decided_by is not None:
        res.decided_by = decision.decided_by
    if decision.message is not None:
        res.message = decision.message
    res.seconds = clock.elapsed()
    say(f"verdict: {res.verdict} ({res.seconds:.2f} s)" + (f": {res.message}" if res.message else ""))
    return res
