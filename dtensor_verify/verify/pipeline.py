"""`verify_instance`: an ordered list of stages over one instance record."""
from __future__ import annotations

import dataclasses
import traceback
from dataclasses import dataclass

from ..bab import BabOptions
from ..errors import InputSpecError, TimeLimitReached, VerifierError
from .instance import Clock, check_dimensions, open_instance
from .many_boxes import skip_above
from ..methods import AlphaOptions
from .result import AttackOptions, Decision, VerifyResult
from .shallow_stage import ShallowSearch
from .stages import Attack, AttackBeforeBab, Bound, BranchAndBound, DeferredAttack, FinalAttack, ManyPairsIbp


@dataclass(frozen=True)
class PipelineOptions:
    """How `verify_instance` was asked to decide (its keyword arguments)."""
    methods: tuple = ("crown", "alpha-crown")
    attack: bool = True
    bab: bool = True
    bound_batching: str = "region"
    max_batch: int = 64
    attack_options: AttackOptions | None = None
    alpha_options: AlphaOptions | None = None
    bab_options: BabOptions | None = None
    progress: bool = False                  # a progress bar for branch and bound (rank 0)
    input_split: bool = False               # branch and bound will split input boxes (many_boxes.py)


def build_stages(opts: PipelineOptions) -> list:
    """attack -> bounds (method after method) -> [attack, one-hidden-layer search, branch and bound]
    -> final attack; with
    many pairs, IBP comes first and the first attack after the first bound, on the pairs left open."""
    stages = [Attack()] if opts.attack else []
    if opts.methods and opts.methods[0] != "ibp":
        stages.append(ManyPairsIbp())            # a no-op unless the property has many pairs
    for k, m in enumerate(opts.methods):
        last = k == len(opts.methods) - 1
        stages.append(Bound(m, opts.bound_batching, opts.alpha_options, opts.max_batch, guide=opts.attack,
                            side_attack=opts.attack and opts.bab and last,
                            skip_above=skip_above(opts.input_split, m, k)))
        if k == 0 and opts.attack:
            stages.append(DeferredAttack(input_split=opts.input_split))  # a no-op unless Attack deferred itself
    if opts.bab:
        stages += ([AttackBeforeBab(skip_above=skip_above(opts.input_split, "attack-extra", 1))] if opts.attack else []) + [ShallowSearch(opts.bab_options),
                                                                  BranchAndBound(opts.bab_options, opts.progress)]
    if opts.attack:
        stages.append(FinalAttack())
    return stages


def _checked(opts: PipelineOptions) -> PipelineOptions:
    from ..methods.dispatch import normalize_method

    if opts.bound_batching not in ("region", "pair"):
        raise InputSpecError(f"bound_batching must be 'region' or 'pair', not '{opts.bound_batching}'")
    return dataclasses.replace(opts, methods=tuple(normalize_method(m) for m in opts.methods))


def _run(model, prop, onnx_path, clock, say, res, opts: PipelineOptions) -> Decision:
    opts = _checked(opts)
    check_dimensions(model, prop)
    if not prop.regions:
        # Every term of the formula is false (a false constant, an empty box): nothing can violate it.
        note = getattr(prop, "note", None)
        return Decision("unsat", "spec", note or "every term of the property is a false constant: it cannot be violated")
    inst = open_instance(model, prop, onnx_path, clock, say, opts.attack_options or AttackOptions(), res)
    from ..bab.input_bab import alpha_before, splits_inputs  # fewer alpha-CROWN steps when BaB will split inputs
    bab_options = opts.bab_options or BabOptions()
    opts = dataclasses.replace(opts, alpha_options=alpha_before(model, inst.pair_lo, inst.pair_hi, opts.bab,
                                                                bab_options, opts.alpha_options),
                               input_split=splits_inputs(model, inst.pair_lo, inst.pair_hi, opts.bab, bab_options))
    opts = dataclasses.replace(opts, alpha_options=alpha_time_share(opts, bab_options, clock.timeout))
    for stage in build_stages(opts):
        res.stage = getattr(stage, "name", None) or getattr(stage, "method", None) or type(stage).__name__
        decision = stage.run(inst)
        if decision is not None:
            return decision
    return Decision("unknown", message=_unknown_reason(res, opts.bab))


def alpha_time_share(opts: PipelineOptions, bab_options: BabOptions, timeout: float) -> AlphaOptions | None:
    """alpha-CROWN's options with a time cap when branch and bound (ReLU or general splits) follows
    it: `bab_options.alpha_time_fraction` of the limit (None or >= 1: none), so that a large model's
    slow steps (vit pgd_2_3_16: 22-63 s of its 100 s on a shared H100) leave branch and bound its
    time. Its best bounds so far are kept, all sound. Unchanged: no BaB, input splitting (a few
    steps already, `alpha_before`), a cap the caller set."""
    from ..methods.alpha_crown import verdict_options

    frac = bab_options.alpha_time_fraction
    if not opts.bab or opts.input_split or frac is None or frac >= 1 or "alpha-crown" not in opts.methods:
        return opts.alpha_options
    base = opts.alpha_options or verdict_options()
    if base.max_seconds is not None:
        return base
    return dataclasses.replace(base, max_seconds=max(0.0, frac) * timeout)


def _unknown_reason(res, bab: bool) -> str:
    """Why a run ends `unknown` (said in the results message and the JSON)."""
    n_open = sum(d.status == "open" for d in res.details) if res.details else None
    left = f"{n_open} disjunct(s)" if n_open is not None else "disjuncts"
    stopped = res.bounds.get("bab", {}).get("reason")
    if stopped:
        return f"branch and bound stopped: {stopped}"
    if not bab:
        return f"branch and bound is off: the bounds and attacks left {left} open"
    return f"{left} left open by the bounds, attacks and branch and bound"


def verify_instance(model, prop, onnx_path: str | None, timeout: float,
                    methods=("crown", "alpha-crown"), attack: bool = True, log=None,
                    attack_options: AttackOptions | None = None, alpha_options: AlphaOptions | None = None,
                    bound_batching: str = "region", max_batch: int = 64, bab: bool = True,
                    bab_options: BabOptions | None = None) -> VerifyResult:
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
    opts = PipelineOptions(tuple(methods), attack, bab, bound_batching, max_batch, attack_options, alpha_options,
                           bab_options, progress=log is not None)
    try:
        decision = _run(model, prop, onnx_path, clock, say, res, opts)
    except TimeLimitReached:
        where = f" (in {res.stage})" if res.stage else ""
        decision = Decision("timeout", message=f"time limit of {timeout:g} s reached{where}")
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
    res.cpu_seconds = clock.cpu_elapsed()
    say(f"verdict: {res.verdict} ({res.seconds:.2f} s)" + (f": {res.message}" if res.message else ""))
    return res
