"""bench/gpu/gpu_check.sh and bench/gpu/bench_table.py, dry-run on this CPU-only machine.

The GPU run itself happens on a lent machine; here the script must get through its whole flow:
the cuda runs end in the one-line `--device cuda` error (noted, not fatal to the cpu runs), the
cpu runs write their CSVs, a second call resumes instead of starting over, and the table is
written. bench_table.py must flag a sat/unsat disagreement between devices.
"""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import model_zoo
import pytest

REPO = Path(__file__).resolve().parents[1]


def _gpu_check(out: Path, work_env: dict) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", DV_PYTHON=sys.executable, GPU_CHECK_SUITES="test",
               GPU_CHECK_SCALE="0.5", BENCH=str(model_zoo.benchmarks_dir()),
               WHEELS=str(out.parent / "no_wheels"), **work_env)   # not the GPU image's .whl/
    return subprocess.run(["bash", str(REPO / "bench" / "gpu" / "gpu_check.sh"), str(out)], env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow      # ~25 s on 2 cores; the GPU scripts' smoke in the default run: test_bench_vs_abcrown.py
def test_gpu_check_dry_run_on_cpu(tmp_path):
    out = tmp_path / "out"
    work = {"GPU_CHECK_WORK": str(tmp_path / "work")}
    proc = _gpu_check(out, work)
    assert proc.returncode == 2, proc.stdout + proc.stderr            # the cuda run failed: said so
    assert "test on cuda: exit 2: dtensor-verify: error: --device cuda" in proc.stdout
    rows = list(csv.DictReader((out / "test_cpu.csv").open()))
    assert len(rows) == 5 and {r["verdict"] for r in rows} <= {"sat", "unsat", "unknown"}
    table = (out / "table.md").read_text()
    assert "| test | cpu | 5 / 5 |" in table

    again = _gpu_check(out, dict(work, GPU_CHECK_DEVICES="cpu"))      # resumes: nothing left to run
    assert again.returncode == 0, again.stdout + again.stderr
    assert "5 instance(s) already there, 0 to run" in (out / "test_cpu.log").read_text()


def test_bench_table_flags_device_contradictions(tmp_path):
    fields = ["onnx", "vnnlib", "verdict", "seconds"]
    for device, verdicts in (("cuda", ["sat", "unsat", "unknown"]), ("cpu", ["sat", "sat", "timeout"])):
        with open(tmp_path / f"suite_{device}.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(fields)
            for i, v in enumerate(verdicts):
                w.writerow([f"n{i}.onnx", f"p{i}.vnnlib", v, "1.0" if device == "cuda" else "3.0"])
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "gpu" / "bench_table.py"),
                           str(tmp_path / "suite_cuda.csv"), str(tmp_path / "suite_cpu.csv"),
                           "--out", str(tmp_path / "t.md")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1                                        # a contradiction fails it
    text = (tmp_path / "t.md").read_text()
    assert "| suite | cuda / cpu | 3 | 1 | 2 | 1 **CONTRADICTION** | 3.0 / 9.0 | 3.00 |" in text
    assert "| suite | cpu | 3 / ? | 1 | 1 | 0 | 1 | 0 |" not in text     # (cpu has 2 sat, 0 unsat)
    assert "| suite | cpu | 3 / ? | 2 | 0 | 0 | 1 | 0 |" in text
