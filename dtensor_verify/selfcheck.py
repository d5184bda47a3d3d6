"""Self-check: the bound graph computes the function of the model as given.

Loading rewrites the network (onnx2torch conversion, MatMul/Gemm into nn.Linear, folded biases,
constants broadcast into elementwise ops). Each rewrite is meant to keep the function; this module
checks that it did, on every model, before anything is bounded:

* at load time (`check_loaded_model`, called by `BoundedModel`: `dv.load`, and so `bounds`, `run`,
  `benchmark` and `verify_instance`) on a few fixed pseudo-random points;
* in `verify_instance`, before bounding, on each region's box centre and a few random points of
  the box (`check_on_box`).

The bound graph's forward (what IBP / CROWN bound and the attack runs), on the whole batch of
points at once, is compared with the reference: onnxruntime running the original ONNX file, or the
`nn.Module` as passed in, one point at a time. A mismatch is a `ModelLoadError` that names the
file and the largest deviation: an `error` verdict, never a verdict about a different function.

Tolerance, relative to the output scale (float32 rounding differs between the engine and
onnxruntime, e.g. `x * (1/c)` for `x / c`, other summation orders): over all outputs and points,
`max |y - y_ref| <= RTOL * max(max |y_ref|, SCALE_FLOOR)`, RTOL = 1e-4, SCALE_FLOOR = 1e-2 (so
never below 1e-6). The benchmark models deviate by at most 5e-7 of their output scale. Output
counts must agree exactly; NaN / inf must appear at the same outputs.
"""
from __future__ import annotations

import os

import numpy as np
import torch

from .errors import ModelLoadError

RTOL = 1e-4
SCALE_FLOOR = 1e-2
LOAD_POINTS = 4               # points of the load-time check
BOX_REGIONS = 4               # regions of a property checked before bounding ...
BOX_POINTS_PER_REGION = 3     # ... at their centre and 2 random points each

_ORT_CACHE: dict = {}


def ort_session(path: str):
    """An onnxruntime session on the original file (plain or gzipped), cached by path and mtime."""
    import onnxruntime as ort

    from .model_loading import read_bytes

    st = os.stat(path)
    key = (os.path.abspath(path), st.st_mtime_ns, st.st_size)
    sess = _ORT_CACHE.get(key)
    if sess is None:
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.intra_op_num_threads = 1
        sess = ort.InferenceSession(read_bytes(path), sess_options=opts, providers=["CPUExecutionProvider"])
        if len(_ORT_CACHE) > 8:
            _ORT_CACHE.clear()
        _ORT_CACHE[key] = sess
    return sess


def onnxruntime_runner(path: str, onnx_input_shape):
    """x (float32, any shape holding one sample) -> the ONNX model's first output, flat float64."""
    sess = ort_session(path)
    inp = sess.get_inputs()[0]

    def run(x: np.ndarray) -> np.ndarray:
        dtype = np.float64 if inp.type == "tensor(double)" else np.float32
        out = sess.run(None, {inp.name: np.asarray(x).astype(dtype).reshape(onnx_input_shape)})[0]
        return np.asarray(out, dtype=np.float64).ravel()

    return run


def _device_of(module) -> torch.device:
    p = next(iter(module.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def module_runner(module, input_shape):
    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            t = torch.from_numpy(np.asarray(x, dtype=np.float32)).reshape(1, *input_shape)
            return module(t.to(_device_of(module))).detach().double().cpu().numpy().ravel()

    return run


def reference_of(model, onnx_path: str | None = None):
    """(runner, description) of the model as given: onnxruntime on `onnx_path` (default: the file
    the model was loaded from), else the nn.Module passed to `dv.load`."""
    loaded = model.loaded
    if onnx_path is None and loaded.onnx_input_name is not None:
        onnx_path = loaded.source
    if onnx_path is not None:
        shape = loaded.onnx_input_shape or (1, *model.input_shape)
        try:
            return onnxruntime_runner(str(onnx_path), shape), f"onnxruntime on {onnx_path}"
        except Exception as exc:
            raise ModelLoadError(f"{onnx_path}: onnxruntime cannot load it for the self-check: "
                                 f"{' '.join(f'{type(exc).__name__}: {exc}'.split())}") from None
    if loaded.reference is not None:
        return module_runner(loaded.reference, model.input_shape), f"the {loaded.source} module as given"
    return None, None


def compare(model, points: torch.Tensor, runner, what: str, where: str) -> float:
    """Check model.forward against `runner` on `points` [N, *input_shape]; returns the max
    deviation, raises ModelLoadError beyond the tolerance. Collective under a placement: every
    rank runs the forward and the ranks agree on the outcome."""
    layout = model.layout
    with torch.no_grad():
        ours = layout.local(model.forward(points.to(_device_of(model.module)))).detach().double().cpu().numpy()
    message = None
    dev = 0.0
    try:
        refs = np.stack([runner(p.detach().cpu().numpy()) for p in points])
    except Exception as exc:
        refs = None
        message = f"{what} fails on a check point: {' '.join(f'{type(exc).__name__}: {exc}'.split())}"
    if refs is not None:
        message, dev = _deviation(ours, refs, what)
    if not layout.all_true(message is None):
        raise ModelLoadError(f"{model.loaded.source}: self-check ({where}) failed: "
                             f"{message or 'another rank found a mismatch'}; refusing to verify a "
                             f"different function")
    return dev


def _deviation(ours: np.ndarray, refs: np.ndarray, what: str):
    if ours.shape != refs.shape:
        return (f"the loaded model gives {ours.shape[-1]} outputs, {what} gives {refs.shape[-1]}"), 0.0
    same_special = (np.isnan(ours) == np.isnan(refs)) & (np.isinf(ours) == np.isinf(refs))
    same_special &= ~np.isinf(refs) | (ours == refs)
    if not same_special.all():
        j = int(np.argwhere(~same_special)[0][1])
        return f"NaN/inf at Y_{j} differ from {what}", 0.0
    finite = np.isfinite(refs)
    if not finite.any():
        return None, 0.0
    diff = np.where(finite, np.abs(ours - refs), 0.0)
    dev = float(diff.max())
    tol = RTOL * max(SCALE_FLOOR, float(np.abs(refs[finite]).max()))
    if not dev <= tol:
        p, j = np.unravel_index(int(np.argmax(diff)), diff.shape)
        return (f"the loaded model differs from {what} by {dev:.6g} at Y_{j} (point {p}; tolerance {tol:.3g} "
                f"= {RTOL:g} x output scale)"), dev
    return None, dev


def load_points(model, n: int = LOAD_POINTS) -> torch.Tensor:
    """Fixed pseudo-random points: half standard normal, half uniform in [0, 1)."""
    gen = torch.Generator().manual_seed(1234)
    shape = (n, *model.input_shape)
    pts = torch.randn(shape, generator=gen)
    pts[n // 2:] = torch.rand((n - n // 2, *model.input_shape), generator=gen)
    return pts


def check_loaded_model(model) -> float | None:
    """The load-time self-check (see the module docstring). Returns the max deviation, or None
    when there is no reference (a GraphModule built by hand has no original to compare with)."""
    runner, what = reference_of(model)
    if runner is None:
        return None
    return compare(model, load_points(model), runner, what, "at load time, on random points")


def box_points(lo: torch.Tensor, hi: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Centre and random points of the first BOX_REGIONS boxes (lo, hi: [R, *S])."""
    gen = torch.Generator(device=lo.device).manual_seed(seed)
    lo, hi = lo[:BOX_REGIONS].double(), hi[:BOX_REGIONS].double()
    pts = [(lo + hi) / 2]
    for _ in range(BOX_POINTS_PER_REGION - 1):
        pts.append(lo + (hi - lo) * torch.rand(lo.shape, generator=gen, dtype=torch.float64, device=lo.device))
    return torch.cat(pts).float()


def check_on_box(model, lo: torch.Tensor, hi: torch.Tensor, runner, what: str) -> float:
    """The pre-bounding self-check on points of the property's boxes (lo, hi: [R, *S])."""
    return compare(model, box_points(lo, hi), runner, what, "on points of the property's box")
