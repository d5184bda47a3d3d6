"""scripts/bench_bab_domain_bytes.py: the batch rule's bytes per child next to a measured beta-CROWN
call's (a smoke test on mnist-net_256x2: the table, the CSV, a positive slope)."""
from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import model_zoo

REPO = Path(__file__).resolve().parents[1]


def test_the_script_measures_bytes_per_child_and_writes_its_csv(tmp_path):
    mnist = model_zoo.benchmarks_dir() / "mnist_fc"
    onnx = next(p for p in (mnist / "onnx").iterdir() if p.name.startswith("mnist-net_256x2.onnx"))
    vnnlib = next(p for p in (mnist / "vnnlib").iterdir() if p.name.startswith("prop_0_0.03.vnnlib"))
    out = tmp_path / "bytes.csv"
    run = subprocess.run([sys.executable, str(REPO / "scripts/bench_bab_domain_bytes.py"), "--onnx", str(onnx),
                          "--vnnlib", str(vnnlib), "--batches", "1", "8", "--csv", str(out)],
                         capture_output=True, text=True, timeout=300, cwd=str(REPO))
    assert run.returncode == 0, run.stderr[-2000:]
    assert "measured per child (slope)" in run.stdout and "| children |" in run.stdout
    rows = list(csv.DictReader(open(out)))
    assert [int(r["children"]) for r in rows] == [1, 8]
    assert int(rows[1]["peak_bytes"]) > int(rows[0]["peak_bytes"]) > 0
    assert int(rows[0]["measured_per_child"]) > 0 and int(rows[0]["estimate_per_child"]) > 0
