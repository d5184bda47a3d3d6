"""Model preparation and bound comparison for `scripts/bench_memory_patches.py`.

- `model_file`: a benchmark model, or a documented prefix of it: `folder:net@tensor` keeps the
  ONNX graph from the input up to `tensor` and flattens it, as the full model ends (TinyYOLO's
  last node is a Flatten of a conv map), so both tools see the same graph and the same kind of
  output; written to a temporary folder, never into the repository.
- `without_zero_pads` / `pad_swap_error`: onnx2torch's all-zero Pad modules replaced by
  nn.Identity for auto_LiRPA 0.3 (which cannot parse them), and the largest output difference of
  the swap on sampled points of the box (the swap must keep the function: 0 expected).
- `compare_bounds`: how two tools' bounds relate, per output.
"""
from __future__ import annotations

import copy
import gzip
import hashlib
import os
import tempfile
from pathlib import Path

TOL = 1e-5          # "at least as tight" slack (float32 rounding of two different summation orders)


def split_model(model: str) -> tuple[str, str, str | None, str | None]:
    """`folder:net[@[start..]end]` -> (folder, net, end tensor or None, start tensor or None)."""
    folder, _, rest = model.partition(":")
    net, _, cut = rest.partition("@")
    start, _, end = cut.rpartition("..")
    return folder, net, (end or None), (start or None)


def model_file(onnx_path: Path, tensor: str | None, folder: Path | None = None, start: str | None = None) -> Path:
    """`onnx_path` itself, or its part from the input (or from tensor `start`) up to `tensor`,
    followed by a Flatten: a file in `folder` (default: the temporary folder), the same for the
    same cut, so that every process of a run reads one file."""
    if tensor is None:
        return onnx_path
    import onnx
    from onnx import helper, utils

    key = hashlib.sha1(f"{onnx_path}@{start}..{tensor}".encode()).hexdigest()[:12]
    out = Path(folder or tempfile.gettempdir()) / f"dv_part_{key}.onnx"
    if out.exists():
        return out
    data = gzip.open(onnx_path).read() if onnx_path.suffix == ".gz" else onnx_path.read_bytes()
    model = onnx.shape_inference.infer_shapes(onnx.load_model_from_string(data))
    inputs = [start] if start else [i.name for i in model.graph.input
                                    if i.name not in {t.name for t in model.graph.initializer}]
    part = utils.Extractor(model).extract_model(inputs, [tensor])
    flat = helper.make_node("Flatten", [tensor], [tensor + "_flat"], axis=1)
    part.graph.node.append(flat)
    del part.graph.output[:]
    part.graph.output.append(helper.make_tensor_value_info(tensor + "_flat", onnx.TensorProto.FLOAT, None))
    part = onnx.shape_inference.infer_shapes(part)
    onnx.checker.check_model(part)
    tmp = out.with_suffix(f".{os.getpid()}.tmp")
    onnx.save(part, tmp)
    tmp.replace(out)
    return out


def sub_network_box(onnx_path: Path, start: str, xl, xu, eps: float, shape):
    """The input box of a sub-network that starts at tensor `start`: the value of `start` at the
    centre of the model's box (onnxruntime on the prefix up to `start`), +- eps, shaped
    [1, *shape]."""
    import numpy as np
    import onnxruntime as ort
    import torch

    sess = ort.InferenceSession(str(model_file(onnx_path, start)), providers=["CPUExecutionProvider"])
    centre = ((xl + xu) / 2).cpu().numpy().astype(np.float32)
    value = torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: centre})[0]).reshape(1, *shape)
    return value - eps, value + eps


def without_zero_pads(net):
    """onnx2torch's Pad modules whose pads are all 0 (TinyYOLO has two) replaced by nn.Identity:
    the same function, and auto_LiRPA 0.3 cannot parse them ("BoundPad.forward() missing 1
    required positional argument: 'pad'"). Any other Pad is left as it is. Returns (net, count)."""
    import torch.nn as nn

    count = 0
    for name, module in list(net.named_modules()):
        pads = getattr(module, "pads", None)
        if type(module).__name__ == "OnnxPadStatic" and pads is not None and not any(int(p) for p in pads):
            parent = net.get_submodule(name.rpartition(".")[0]) if "." in name else net
            setattr(parent, name.rpartition(".")[2], nn.Identity())
            count += 1
    return net, count


def pad_swap_error(net, xl, xu, samples: int = 32, seed: int = 0):
    """(swapped net, number of Pads swapped, largest |original - swapped| output difference over
    the box's centre, corners-ish extremes and `samples` uniform points)."""
    import torch

    original = copy.deepcopy(net).eval()
    swapped, count = without_zero_pads(net)
    g = torch.Generator().manual_seed(seed)
    u = torch.rand((samples, *xl.shape[1:]), generator=g).to(xl.device)
    points = torch.cat([(xl + xu) / 2, xl, xu, xl + u * (xu - xl)])
    with torch.no_grad():
        err = float((original(points) - swapped.eval()(points)).abs().max())
    return swapped, count, err


def compare_bounds(ours, other) -> dict:
    """`ours` and `other` are (lower, upper) of the same outputs. Returns the largest absolute
    difference, how many outputs `ours` is looser on by more than TOL (lower below, or upper
    above), by how much at most, and the mean gain (positive: ours tighter)."""
    import torch

    (lo, up), (olo, oup) = ours, other
    lo, up, olo, oup = (t.detach().double().cpu().flatten() for t in (lo, up, olo, oup))
    looser = torch.cat([olo - lo, up - oup])            # > 0 where ours is looser
    return {"max_abs_diff": float(torch.cat([lo - olo, up - oup]).abs().max()),
            "n_looser": int((looser > TOL).sum()), "max_looser": float(looser.max()),
            "mean_gain": float(-looser.mean()), "n_bounds": int(looser.numel())}
