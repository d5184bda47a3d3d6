"""bench/gpu/merge_calls.py: one row per instance over several device calls; a decided verdict
stays, an undecided one is replaced by a later call's, and sat vs unsat is a CONTRADICTION."""
import csv
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _csv(path, rows):
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["onnx", "vnnlib", "verdict", "seconds", "message"])
        w.writerows(rows)


def _run(*args):
    return subprocess.run([sys.executable, str(ROOT / "bench/gpu/merge_calls.py"), *map(str, args)],
                          capture_output=True, text=True)


def test_decided_rows_stay_and_undecided_ones_are_replaced(tmp_path):
    a, b, out = tmp_path / "c1.csv", tmp_path / "c2.csv", tmp_path / "m.csv"
    _csv(a, [["n.onnx", "p1", "unsat", "3", ""], ["n.onnx", "p2", "error", "7", "CUDA out of memory, x"],
             ["n.onnx", "p3", "timeout", "300", ""]])
    _csv(b, [["n.onnx", "p2", "unsat", "5", ""], ["n.onnx", "p1", "timeout", "300", ""]])
    proc = _run(a, b, "--of", 4, "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert "| 3 of 4 | 2 | 1 |" in proc.stdout, proc.stdout
    rows = {r["vnnlib"]: r for r in csv.DictReader(open(out))}
    assert rows["p1"]["verdict"] == "unsat" and rows["p1"]["call"] == "c1"
    assert rows["p2"]["verdict"] == "unsat" and rows["p2"]["call"] == "c2"
    assert rows["p3"]["verdict"] == "timeout"


def test_sat_against_unsat_is_a_contradiction(tmp_path):
    a, b = tmp_path / "c1.csv", tmp_path / "c2.csv"
    _csv(a, [["n.onnx", "p1", "unsat", "3", ""]])
    _csv(b, [["n.onnx", "p1", "sat", "4", ""]])
    proc = _run(a, b)
    assert proc.returncode == 1 and "CONTRADICTION: p1" in proc.stdout, proc.stdout
