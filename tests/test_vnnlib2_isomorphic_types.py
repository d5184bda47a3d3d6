"""Element types of isomorphic networks (docs/VNNLIB2.md, network_isomorphic01): the standard lets
an `isomorphic-to` declaration differ in element type, but the ONNX model mapped to it must have
the declared types (error condition 2), so a float16 declaration against a float32 file is an
error line, never a verdict."""
from __future__ import annotations

import pytest
from test_vnnlib2 import one_error, query, relu_net, verify

pytestmark = pytest.mark.usefixtures("one_thread")

BODY = ("(assert (>= X[0] 0.0)) (assert (<= X[0] 1.0)) (assert (>= X[1] 0.0)) (assert (<= X[1] 1.0))\n"
        "(assert (>= X2[0] 2.0)) (assert (<= X2[0] 3.0)) (assert (>= X2[1] 2.0)) (assert (<= X2[1] 3.0))\n"
        "(assert (<= Y[0] 0.5)) (assert (<= Y2[0] 0.5))\n")


def test_isomorphic_float16_against_float32_file_is_an_error(tmp_path, capsys):
    net = relu_net(tmp_path)
    text = query(tmp_path, BODY, nets=(("N1", "", "X", "Y"), ("N2", "(isomorphic-to N1) ", "X2", "Y2")))
    with open(text) as fh:
        src = fh.read()
    # N2 float16, N1 float32 (the suite's case, with [2] tensors)
    head, _, rest = src.partition("(declare-network N2")
    with open(text, "w") as fh:
        fh.write(head + "(declare-network N2" + rest.replace("float32", "float16"))
    one_error(*verify(capsys, text, "--network", f"N1={net}", "--network", f"N2={net}"), "q.vnnlib")


def test_float16_declaration_against_float32_file_is_condition_2(tmp_path, capsys):
    net = relu_net(tmp_path)
    q = query(tmp_path, BODY.split("(assert (>= X2")[0] + "(assert (<= Y[0] 0.5))", t="float16")
    one_error(*verify(capsys, q, "--network", f"N={net}"), "q.vnnlib", "declared float16", "float32")
