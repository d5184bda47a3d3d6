"""scripts/bench_memory_onnx.py: the TinyYOLO prefix the memory bench runs on CPU, the Pad ->
Identity swap it hands auto_LiRPA (checked on samples), and the per-output bound comparison."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
from bench_memory_onnx import compare_bounds, model_file, pad_swap_error, split_model, sub_network_box  # noqa: E402

YOLO = REPO.parent / "shared" / "benchmarks" / "yolo_2023" / "onnx" / "TinyYOLO.onnx.gz"


def test_split_model():
    assert split_model("yolo_2023:TinyYOLO") == ("yolo_2023", "TinyYOLO", None, None)
    assert split_model("yolo_2023:TinyYOLO@input.52") == ("yolo_2023", "TinyYOLO", "input.52", None)
    assert split_model("yolo_2023:TinyYOLO@input.32..input.52") == ("yolo_2023", "TinyYOLO", "input.52", "input.32")


def test_compare_bounds_counts_where_ours_is_looser():
    lo, up = torch.zeros(4), torch.ones(4)
    same = compare_bounds((lo, up), (lo.clone(), up.clone()))
    assert same["n_looser"] == 0 and same["max_abs_diff"] == 0.0 and same["n_bounds"] == 8
    other_lo = torch.tensor([0.0, 0.1, -0.1, 0.0])           # tighter on one output, looser on one
    res = compare_bounds((lo, up), (other_lo, up))
    assert res["n_looser"] == 1 and res["max_looser"] == pytest.approx(0.1)
    assert compare_bounds((lo, up), (lo + 5e-6, up))["n_looser"] == 0     # within the 1e-5 slack


@pytest.mark.skipif(not YOLO.exists(), reason="shared benchmarks missing")
def test_yolo_prefix_and_pad_swap(tmp_path):
    import onnxruntime as ort
    from model_zoo import load_onnx_torch

    path = model_file(YOLO, "input.32", tmp_path)
    assert model_file(YOLO, "input.32", tmp_path) == path and model_file(YOLO, None) == YOLO
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert sess.get_outputs()[0].shape == [1, 16 * 26 * 26]           # flattened, as the full model ends
    net = load_onnx_torch(path)
    x = torch.rand(1, 3, 52, 52)
    with torch.no_grad():
        ref = net(x)
    assert torch.allclose(ref, torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]), atol=1e-5)
    swapped, count, err = pad_swap_error(net, x - 0.01, x + 0.01)
    assert count == 1 and err == 0.0                               # one zero Pad before the first pool
    assert not any(type(m).__name__ == "OnnxPadStatic" for m in swapped.modules())


@pytest.mark.skipif(not YOLO.exists(), reason="shared benchmarks missing")
def test_yolo_sub_network_and_its_box(tmp_path):
    """`start..end`: the part between two tensors; its box is start's value at the centre +- eps."""
    import onnxruntime as ort

    path = model_file(YOLO, "input.52", tmp_path, start="input.32")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].shape == [1, 16, 26, 26] and sess.get_outputs()[0].shape == [1, 16 * 13 * 13]
    xl, xu = torch.zeros(1, 3, 52, 52), torch.ones(1, 3, 52, 52)
    lo, hi = sub_network_box(YOLO, "input.32", xl, xu, 0.02, (16, 26, 26))
    prefix = ort.InferenceSession(str(model_file(YOLO, "input.32")), providers=["CPUExecutionProvider"])
    value = prefix.run(None, {prefix.get_inputs()[0].name: torch.full((1, 3, 52, 52), 0.5).numpy()})[0]
    assert torch.allclose((lo + hi) / 2, torch.from_numpy(value).reshape(1, 16, 26, 26), atol=1e-6)
    assert torch.allclose(hi - lo, torch.full_like(hi, 0.04), atol=1e-6)
