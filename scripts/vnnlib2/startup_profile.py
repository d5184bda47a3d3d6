#!/usr/bin/env python
"""Where the start-up of one `dtensor-verify verify` process goes (the suite's runner starts one
per case): wall and CPU time of a tiny query (a 2x2 ReLU network, sat and unsat), of each
`supports` call, and the verify run's imports grouped by top-level package (`python -X
importtime`, cumulative microseconds of the first import of each package). Prints a table,
writes a CSV.

    PYTHONPATH=. python scripts/vnnlib2/startup_profile.py [--csv startup.csv] [--repeat 3]
"""
from __future__ import annotations

import argparse
import collections
import csv
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GROUPS = ("torch", "onnx", "onnx2torch", "onnxruntime", "scipy", "numpy", "ml_dtypes", "vnnlib", "dtensor_verify")
QUERY = """(vnnlib-version <2.0>)
(declare-network N (declare-input X float32 [2]) (declare-output Y float32 [2]))
(assert (>= X[0] -1.0)) (assert (<= X[0] 1.0)) (assert (>= X[1] -1.0)) (assert (<= X[1] 1.0))
(assert (>= Y[0] {c}))
"""


def _net(folder: Path) -> str:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.asarray([[1.0, -1.0], [0.5, 2.0]], np.float32), "W")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Relu", ["h"], ["y"])],
                          "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.save(m, folder / "net.onnx")
    return str(folder / "net.onnx")


def _run(argv: list[str], env) -> tuple[float, float, str]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    p = subprocess.run([sys.executable, *argv], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, p.stdout + "\n" + p.stderr


def _group(name: str) -> str:
    top = name.split(".")[0]
    return top if top in GROUPS else "other"


def _imports(text: str) -> dict[str, float]:
    """Seconds per package group, exclusive: an import's cumulative time counts for its package
    where the import enclosing it belongs to another package (and is taken off that one's)."""
    lines = []
    for line in text.splitlines():
        if line.startswith("import time:") and "self [us]" not in line:
            _, cum, name = line.split(":", 1)[1].split("|")
            lines.append(((len(name) - len(name.lstrip()) - 1) // 2, int(cum) / 1e6, name.strip()))
    out = collections.Counter()
    parent_at: dict[int, str] = {}
    for depth, cum, name in reversed(lines):          # a parent is printed after its children
        g = _group(name)
        parent = parent_at.get(depth - 1) if depth > 0 else None
        if parent != g:
            out[g] += cum
            if parent is not None:
                out[parent] -= cum
        parent_at[depth] = g
    return dict(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--csv", default="startup.csv")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        net = _net(folder)
        for verdict, c in (("sat", "0.5"), ("unsat", "100.0")):
            (folder / f"{verdict}.vnnlib").write_text(QUERY.format(c=c))
        cases = [(f"verify ({v})", ["-X", "importtime", "-m", "dtensor_verify", "--threads", "1", "verify",
                                    str(folder / f"{v}.vnnlib"), "--network", f"N={net}", "--device", "cpu",
                                    "--quiet"]) for v in ("sat", "unsat")]
        cases += [(f"supports --{c}", ["-m", "dtensor_verify", "supports", f"--{c}"])
                  for c in ("onnx-operators", "onnx-element-types", "multiple-network-theories")]
        cases.append(("python -c 'import torch'", ["-c", "import torch"]))
        for name, argv in cases:
            for r in range(args.repeat):
                wall, cpu, text = _run(argv, env)
                row = {"what": name, "repeat": r, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
                       "load1": round(os.getloadavg()[0], 1)}
                if "importtime" in argv:
                    imp = _imports(text)
                    row.update({f"import_{g}_s": round(imp.get(g, 0.0), 2) for g in (*GROUPS, "other")})
                rows.append(row)
    keys = sorted({k for r in rows for k in r}, key=lambda k: (k.startswith("import_"), k != "what", k))
    print(" | ".join(f"{k:>12s}" for k in keys))
    for r in rows:
        print(" | ".join(f"{str(r.get(k, '')):>12s}" for k in keys))
    with open(args.csv, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    print(f"CSV: {args.csv}  (torch {__import__('torch').__version__}, {os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
