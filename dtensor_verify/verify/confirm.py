"""Counterexample confirmation: a candidate becomes `sat` only when the original model (onnxruntime
on the ONNX file, or the nn.Module as given) puts an input of the box outside the property.

The written input is a point of the box as parsed (float64, strict sides kept); the model is run on
its nearest float32 values, as a checker that reads the witness and feeds the float32 model does.
Where the box holds float32 values the two are the same point. A coordinate whose range holds
none (VNN-LIB 1.0 declares inputs `Real`: `X_0 = 0.1`, or collins_rul_cnn's pinned sensor values)
is written as the real value in the box and run as its nearest float32; the bounds cover that,
since the bounded box is the float32 rounding of the parsed one (`region_boxes`).

Nothing here changes the pipeline's state: `Confirmer.first` returns the confirmed counterexample
(or None), and the caller records it.
"""
from __future__ import annotations

import numpy as np

from .result import Counterexample


def inside_box_f32(x: np.ndarray, lo: np.ndarray, hi: np.ndarray, lo_strict=None, hi_strict=None,
                   per_coordinate: bool = False) -> np.ndarray | None:
    """A float32 point inside the float64 box [lo, hi] (open on the sides marked strict), as close
    to x as float32 allows; None when some coordinate's range holds no float32 value (a point box
    X = 0.1, say). With `per_coordinate`, float64 values instead, NaN where a coordinate's range
    holds no float32."""
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
    if per_coordinate:
        return np.where(inside, x32.astype(np.float64), np.nan)
    return x32 if bool(inside.all()) else None


def witness_point(x: np.ndarray, lo: np.ndarray, hi: np.ndarray, lo_strict=None, hi_strict=None
                  ) -> tuple[np.ndarray, np.ndarray] | None:
    """(written float64 point of the box, the float32 input the model runs on), as close to x as
    the box allows; None when some coordinate's range is empty even in the reals."""
    lo = np.asarray(lo, dtype=np.float64).ravel()
    hi = np.asarray(hi, dtype=np.float64).ravel()
    ls = np.zeros(lo.shape, bool) if lo_strict is None else np.asarray(lo_strict, bool).ravel()
    hs = np.zeros(hi.shape, bool) if hi_strict is None else np.asarray(hi_strict, bool).ravel()
    v = inside_box_f32(x, lo, hi, ls, hs, per_coordinate=True)
    free = ~np.isnan(v)                     # coordinates where a float32 lies in the range
    if bool(free.all()):
        return v, v.astype(np.float32)
    x64 = np.asarray(x, dtype=np.float64).ravel()
    with np.errstate(over="ignore", invalid="ignore"):
        real = np.clip(x64, lo, hi)
        on_open = (ls & (real <= lo)) | (hs & (real >= hi))
        real = np.where(on_open, lo + (hi - lo) / 2, real)
        ok = np.where(ls, real > lo, real >= lo) & np.where(hs, real < hi, real <= hi)
    if not bool((free | ok).all()):
        return None
    written = np.where(free, v, real)
    return written, written.astype(np.float32)


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
        point = witness_point(x.double().cpu().numpy(), region.lower, region.upper, region.lower_strict,
                              region.upper_strict)
        if point is None:
            self.say(f"candidate for region {r} disjunct {j} dropped: the box there is empty")
            return None
        written, x32 = point
        try:
            y = self.runner()(x32)
        except Exception as exc:      # cannot run the original model: never sat
            self.say(f"could not confirm the counterexample with {self.kind}: {type(exc).__name__}: {exc}")
            return "stop"
        x = written
        if violates(self.prop, x, y):          # as written: strict stays strict, no tolerance
            self.say(f"counterexample for region {r} disjunct {j} (margin {m:.3g}), confirmed by {self.kind}")
            return Counterexample(x, y, self.kind, pair)
        self.say(f"candidate for region {r} disjunct {j} (margin {m:.3g}) rejected by {self.kind}")
        return None
