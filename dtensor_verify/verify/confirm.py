"""Counterexample confirmation: a candidate becomes `sat` only when the original model (onnxruntime
on the ONNX file, or the nn.Module as given) puts a float32 input of the box outside the property.

Nothing here changes the pipeline's state: `Confirmer.first` returns the confirmed counterexample
(or None), and the caller records it.
"""
from __future__ import annotations

import numpy as np

from .result import Counterexample


def inside_box_f32(x: np.ndarray, lo: np.ndarray, hi: np.ndarray, lo_strict=None, hi_strict=None
                   ) -> np.ndarray | None:
    """A float32 point inside the float64 box [lo, hi] (open on the sides marked strict), as close
    to x as float32 allows; None when some coordinate's range holds no float32 value (a point box
    X = 0.1, say): then no float32 input is a counterexample, and none is claimed."""
    lo = np.asarray(lo, dtype=np.float64).ravel()
    hi = np.asarray(hi, dtype=np.float64).ravel()
    lo_strict = np.zeros(lo.shape, bool) if lo_strict is None else np.asarray(lo_strict, bool).ravel()
    hi_strict = np.zeros(hi.shape, bool) if hi_strict is None else np.asarray(hi_strict, bool).ravel()
    with np.errstate(over="ignore", invalid="ignore"):
        x32 = np.clip(np.asarray(x, dtype=np.float64).ravel(), lo, hi).astype(np.float32)
        # Rounding to float32 may leave the box by one step: step back towards it (twice covers
        # an open side that the first step lands on exactly).
        for _ in range(2):
            v = x32.astype(np.float64)
            below = (v < lo) | (lo_strict & (v == lo))
            x32[below] = np.nextafter(x32[below], np.float32(np.inf))
            v = x32.astype(np.float64)
            above = (v > hi) | (hi_strict & (v == hi))
            x32[above] = np.nextafter(x32[above], np.float32(-np.inf))
        v = x32.astype(np.float64)
        inside = np.where(lo_strict, v > lo, v >= lo) & np.where(hi_strict, v < hi, v <= hi)
    return x32 if bool(inside.all()) else None


class Confirmer:
    """Runs candidates through the original model: onnxruntime on the ONNX file (or, for models
    that never were ONNX, the nn.Module as given to `dv.load`)."""

    def __init__(self, model, prop, onnx_path, say):
        self.model = model
        self.prop = prop
        self.onnx_path = onnx_path
        self.say = say
        self.kind = "onnxruntime" if onnx_path else "torch"
        self.what = None
        self._run = None

    def runner(self):
        from ..selfcheck import module_runner, reference_of

        if self._run is None:
            self._run, self.what = reference_of(self.model, self.onnx_path)
            if self._run is None:        # a LoadedModel built by hand: only its own module
                self._run, self.what = module_runner(self.model.module, self.model.input_shape), "the module"
        return self._run

    def first(self, x_best, margins, idx, index) -> Counterexample | None:
        """The first confirmed counterexample among the candidates with margin <= 0, best first.
        x_best [m, *S], margins [m] (CPU), idx: the pair of each, index: pair -> (region, disjunct)."""
        order = sorted(range(len(idx)), key=lambda i: float(margins[i]))
        for i in order:
            m = float(margins[i])
            if not m <= 0:
                continue
            verdict = self._check(x_best[i], idx[i], index[idx[i]], m)
            if verdict == "stop":
                return None
            if verdict is not None:
                return verdict
        return None

    def _check(self, x, pair: int, where, m: float):
        """A Counterexample, None (rejected: try the next) or 'stop' (cannot run the model)."""
        from ..specs import violates

        r, j = where
        region = self.prop.regions[r]
        x32 = inside_box_f32(x.double().cpu().numpy(), region.lower, region.upper, region.lower_strict,
                             region.upper_strict)
        if x32 is None:
            self.say(f"candidate for region {r} disjunct {j} dropped: no float32 input lies in the box there")
            return None
        try:
            y = self.runner()(x32)
        except Exception as exc:      # cannot run the original model: never sat
            self.say(f"could not confirm the counterexample with {self.kind}: {type(exc).__name__}: {exc}")
            return "stop"
        x = x32.astype(np.float64)
        if violates(self.prop, x, y):          # as written: strict stays strict, no tolerance
            self.say(f"counterexample for region {r} disjunct {j} (margin {m:.3g}), confirmed by {self.kind}")
            return Counterexample(x, y, self.kind, pair)
        self.say(f"candidate for region {r} disjunct {j} (margin {m:.3g}) rejected by {self.kind}")
        return None
