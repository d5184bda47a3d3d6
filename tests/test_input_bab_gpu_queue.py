"""bench/gpu/input_bab_gpu.sh's QUEUE=1 on the CPU: every instance of the list runs exactly once
over the processes that take them from the shared queue, in the list's order, and the merged
table counts them; bench/gpu/not_run.py then names none as left over."""
import csv
import os
import subprocess
import sys
from pathlib import Path

import model_zoo

ROOT = Path(__file__).resolve().parents[1]


def test_queue_runs_every_instance_once(tmp_path):
    shared = model_zoo.benchmarks_dir()
    lines = (shared / "acasxu_2023" / "instances.csv").read_text().splitlines()[:5]
    queue = tmp_path / "queue.csv"
    queue.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    env = dict(os.environ, QUEUE="1", SKIP_WHEELS="1", PY=sys.executable, DEVICE="cpu", THREADS="1",
               INSTANCES=str(queue), BENCH_DATA=str(shared), DTENSOR_VERIFY_SHARE_DEVICE="1")
    proc = subprocess.run(["bash", str(ROOT / "bench/gpu/input_bab_gpu.sh"), "acasxu_2023", str(out), "2",
                           "0.05", "200"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = list(csv.DictReader(open(out / "all_results.csv")))
    ran = sorted((r["onnx"], r["vnnlib"]) for r in rows)
    assert ran == sorted(tuple(line.split(",")[:2]) for line in lines)      # each once
    assert all(r["verdict"] in ("sat", "unsat", "unknown", "timeout") for r in rows), rows
    assert (out / "parts" / "next").read_text().strip() in ("6", "7")      # both processes hit the end
    assert "| 5 | 5 |" in proc.stdout, proc.stdout
    left = subprocess.run([sys.executable, str(ROOT / "bench/gpu/not_run.py"), str(out / "all_results.csv"),
                           str(queue)], capture_output=True, text=True, check=True).stdout
    assert left == ""
    # an instance the results lack is named, in the queue's order
    kept = [r for r in rows if r["vnnlib"] != lines[3].split(",")[1] or r["onnx"] != lines[3].split(",")[0]]
    partial = tmp_path / "partial.csv"
    with open(partial, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0])); w.writeheader(); w.writerows(kept)
    left = subprocess.run([sys.executable, str(ROOT / "bench/gpu/not_run.py"), str(partial), str(queue)],
                          capture_output=True, text=True, check=True).stdout
    assert left.splitlines() == [",".join(lines[3].split(","))]
