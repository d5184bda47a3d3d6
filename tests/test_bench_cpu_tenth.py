"""scripts/bench_cpu_tenth.py: verdicts and where the time went per benchmark (a smoke test on the
`test` benchmark, and the rule that charges a timeout's unfinished stage the rest of its limit)."""
from __future__ import annotations

import csv
import importlib.util
import subprocess
import sys
from pathlib import Path

import model_zoo

REPO = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("bench_cpu_tenth", REPO / "scripts/bench_cpu_tenth.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_a_timeout_charges_its_unfinished_stage_the_rest_of_its_limit():
    m = _script()
    row = {"verdict": "timeout", "phases": "attack=1.00;crown=2.00",
           "message": "time limit of 9.5 s reached (in alpha-crown)"}
    assert m.stage_seconds(row, 10.0) == {"attack": 1.0, "crown": 2.0, "alpha-crown": 7.0}
    done = {"verdict": "unsat", "phases": "attack=1.00;crown=2.00", "message": ""}
    assert m.stage_seconds(done, 10.0) == {"attack": 1.0, "crown": 2.0}


def test_the_script_runs_a_benchmark_and_writes_its_table(tmp_path):
    run = subprocess.run([sys.executable, str(REPO / "scripts/bench_cpu_tenth.py"), "--out", str(tmp_path),
                          "--bench-root", str(model_zoo.benchmarks_dir()), "--per-bench", "3", "--jobs", "1",
                          "--scale", "1.0", "test"], capture_output=True, text=True, timeout=600, cwd=str(REPO))
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    (row,) = list(csv.DictReader(open(tmp_path / "cpu_tenth.csv")))
    assert row["benchmark"] == "test" and row["chosen"] == row["run"] == "3", row
    assert int(row["unsat"]) + int(row["sat"]) + int(row["timeout"]) + int(row["other"]) == 3
    assert "attack" in row["where_the_time_went"], row
    assert "| test | 3 of 3 |" in (tmp_path / "cpu_tenth.md").read_text()
