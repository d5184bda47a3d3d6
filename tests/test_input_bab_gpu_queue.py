"""bench/gpu/input_bab_gpu.sh's QUEUE=1 on the CPU: every instance of the list runs exactly once
over the processes that take them from the shared queue, in the list's order, and the merged
table counts them; bench/gpu/not_run.py then names none as left over."""
import csv
import os
import subprocess
import sys
from pathlib import Path

import model_zoo
import pytest

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
                           "0.02", "200"], env=env, capture_output=True, text=True, timeout=300)
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


FAKE_PY = '''#!{python}
"""A PY for input_bab_gpu.sh: `-m dtensor_verify ... --instances F --csv O` writes one row for F's
instance, an out-of-memory error the first time it sees it and unsat after; all else is the real python."""
import os, sys
args = sys.argv[1:]
if args[:2] != ["-m", "dtensor_verify"]:
    os.execv({python!r}, [{python!r}] + args)
line = open(args[args.index("--instances") + 1]).read().strip()
onnx, vnnlib = line.split(",")[:2]
seen_file = {seen!r}
seen = open(seen_file).read().splitlines() if os.path.exists(seen_file) else []
with open(seen_file, "a") as fh:
    fh.write(line + "\\n")
if line in seen:
    verdict, message = "unsat", ""
else:
    verdict, message = "error", "internal error: OutOfMemoryError: CUDA out of memory"
with open(args[args.index("--csv") + 1], "w") as fh:
    fh.write("onnx,vnnlib,verdict,seconds,message\\n")
    fh.write(f'{{onnx}},{{vnnlib}},{{verdict}},0.1,"{{message}}, tried 1 GiB"\\n')
'''


@pytest.mark.parametrize("retry", [True, False])
def test_queue_retries_out_of_memory_once(tmp_path, retry):
    shared = model_zoo.benchmarks_dir()
    lines = (shared / "acasxu_2023" / "instances.csv").read_text().splitlines()[:3]
    queue = tmp_path / "queue.csv"
    queue.write_text("\n".join(lines) + "\n")
    fake = tmp_path / "fake_py"
    fake.write_text(FAKE_PY.format(python=sys.executable, seen=str(tmp_path / "seen.txt")))
    fake.chmod(0o755)
    out = tmp_path / "out"
    env = dict(os.environ, QUEUE="1", SKIP_WHEELS="1", PY=str(fake), DEVICE="cpu", THREADS="1",
               INSTANCES=str(queue), BENCH_DATA=str(shared), DTENSOR_VERIFY_SHARE_DEVICE="1")
    if not retry:
        env["OOM_RETRY"] = "0"
    proc = subprocess.run(["bash", str(ROOT / "bench/gpu/input_bab_gpu.sh"), "acasxu_2023", str(out), "2",
                           "0.05", "200"], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = list(csv.DictReader(open(out / "all_results.csv")))
    assert sorted((r["onnx"], r["vnnlib"]) for r in rows) == sorted(tuple(l.split(",")[:2]) for l in lines)
    first = sorted((out / "parts").glob("oom_first_try_*.csv"))
    if retry:
        assert all(r["verdict"] == "unsat" for r in rows), rows
        assert len(first) == 3
        assert all(list(csv.DictReader(open(f)))[0]["verdict"] == "error" for f in first)
        assert "oom retried: 3" in proc.stdout, proc.stdout
        assert sorted((out / "parts" / "retried.txt").read_text().splitlines()) == sorted(lines)
        assert "| 3 | 3 | 3 |" in proc.stdout, proc.stdout
    else:
        assert all(r["verdict"] == "error" for r in rows), rows
        assert "OutOfMemoryError" in rows[0]["message"]
        assert first == [] and not (out / "parts" / "retried.txt").exists()
        assert "oom retried" not in proc.stdout, proc.stdout
