"""Without onnx2torch installed, loading a model ends in one line naming it, exit 2, no traceback."""
from __future__ import annotations

import subprocess
import sys

from onnx import helper

from onnx_factory import build, const

HIDE = ("import importlib.util as u, sys; f = u.find_spec; "
        "u.find_spec = lambda n, *a: None if n == 'onnx2torch' else f(n, *a); "
        "from dtensor_verify.cli import main; sys.exit(main(sys.argv[1:]))")


def test_missing_onnx2torch_is_one_line(tmp_path):
    path = build(tmp_path, "ident", [helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")],
                 [const("W", [[1.0]])], [1, 1])
    spec = tmp_path / "p.vnnlib"
    spec.write_text("(declare-const X_0 Real) (declare-const Y_0 Real) (assert (>= X_0 0)) (assert (<= X_0 1)) "
                    "(assert (>= Y_0 5))")
    out = subprocess.run([sys.executable, "-c", HIDE, "run", "--onnx", str(path), "--vnnlib", str(spec),
                          "--results", str(tmp_path / "r.txt"), "--timeout", "20", "--quiet"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "Traceback" not in out.stderr, out.stderr
    assert "onnx2torch is not installed" in out.stderr
    assert (tmp_path / "r.txt").read_text().split()[0] == "error"
