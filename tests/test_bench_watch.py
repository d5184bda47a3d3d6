"""`benchmark` survives a stuck instance (issue 21, bench_watch.py): an instance still running
past its limit plus the grace gets a `timeout` row from the watchdog and the runner re-executes
itself to go on with the next instances; before, the process (or the `timeout` around it) ended
and every later row was lost."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import model_zoo
from dtensor_verify import bench_watch

REPO = Path(__file__).resolve().parents[1]
TEST = model_zoo.benchmarks_dir() / "test"

# The runner, with the 2nd instance's verification stuck (a sleep that never reaches a clock
# check); re-executed by the watchdog, it runs this script again with the same arguments.
WRAPPER = """
import sys, time
import dtensor_verify.verify as verify_module
real = verify_module.verify_instance
def stuck(model, prop, onnx_path, *args, **kwargs):
    if onnx_path.endswith("test_tiny.onnx"):
        time.sleep(600)
    return real(model, prop, onnx_path, *args, **kwargs)
verify_module.verify_instance = stuck
from dtensor_verify.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", bench_watch.RESUME_ENV,
                bench_watch.RESTARTS_ENV):
        env.pop(var, None)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def test_a_stuck_instance_gets_a_timeout_row_and_the_run_goes_on(tmp_path):
    """3 instances of a 1.2 s limit (60 s x 0.02), the 2nd stuck for 600 s: 3 rows, the 2nd
    `timeout` by the watchdog, the others not `error`, in about the limits' sum (plus the
    grace, 3 s: a loaded CPU's model load must not look stuck, and one restart of the runner)."""
    script = tmp_path / "stuck_runner.py"
    script.write_text(WRAPPER)
    out = tmp_path / "results.csv"
    cmd = [sys.executable, str(script), "--threads", "1", "benchmark", str(TEST), "--csv", str(out), "--limit", "3",
           "--timeout-scale", "0.02", "--stuck-grace", "3", "--device", "cpu", "--quiet"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=240)
    took = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["onnx"] for r in rows] == ["test_nano.onnx", "test_tiny.onnx", "test_small.onnx"], rows
    assert rows[1]["verdict"] == "timeout" and "watchdog" in rows[1]["message"], rows[1]
    assert 1.2 + 3 <= float(rows[1]["seconds"]) < 1.2 + 3 + 5.0, rows[1]
    for r in (rows[0], rows[2]):         # verdicts or `timeout` (a 1.2 s limit), never `error`
        assert r["verdict"] != "error", r
    assert "3 instance(s)" in proc.stdout and "resuming" in proc.stderr
    # Two start-ups of the runner (torch imports: seconds each on a loaded CPU) and the limits.
    assert took < 3 * 1.2 + 3 + 60, took


class _Inst:
    key = ("a", "b")


def test_the_runner_writes_the_row_when_it_ends_in_time():
    """An instance that ends before limit + grace: the runner claims its row, the watchdog
    writes nothing and restarts nothing."""
    written, restarted = [], []
    with bench_watch.InstanceWatch(lambda *a: written.append(a), restart=lambda: restarted.append(1),
                                   grace_s=0.2) as watch:
        watch.arm(_Inst(), 0.1)
        time.sleep(0.05)
        assert watch.claim()
        time.sleep(0.5)
    assert not written and not restarted


def test_the_watchdog_writes_once_and_restarts():
    """Past limit + grace the watchdog writes the row (once) and restarts; a runner that ends
    after that never writes its own (claim blocks until the exec; here: a thread left waiting)."""
    written, restarted = [], threading.Event()
    watch = bench_watch.InstanceWatch(lambda inst, s, msg: written.append((inst, s, msg)),
                                      restart=restarted.set, grace_s=0.1)
    with watch:
        watch.arm(_Inst(), 0.1)
        assert restarted.wait(5.0)
        late = threading.Thread(target=watch.claim, daemon=True)
        late.start()
        late.join(0.3)
        assert late.is_alive()                       # the runner's row is not written
    assert len(written) == 1 and 0.2 <= written[0][1] < 2.0 and "watchdog" in written[0][2]


def test_restart_command_is_this_command_line(monkeypatch):
    monkeypatch.setattr(sys, "orig_argv", ["python3", "-X", "utf8", "-m", "dtensor_verify", "benchmark", "D"])
    assert bench_watch.restart_command() == [sys.executable, "-X", "utf8", "-m", "dtensor_verify", "benchmark", "D"]


@pytest.mark.parametrize("limit,grace", [(0.0, 5.0), (600.0, 65.0)])
def test_default_grace(limit, grace):
    assert bench_watch.default_grace(limit) == pytest.approx(grace)


@pytest.mark.slow      # ~20 s on 2 cores; the one-process stuck instance runs by default
def test_a_stuck_instance_under_torchrun_shards(tmp_path):
    """`--shard-instances` on 2 ranks, rank 1's first instance stuck: rank 1 is re-executed
    (outside the process group), rank 0 waits for its rows through the CSV; every instance has
    one row and rank 0's summary counts them all."""
    script = tmp_path / "stuck_runner.py"
    script.write_text(WRAPPER)
    out = tmp_path / "results.csv"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script),
           "--threads", "1", "benchmark", str(TEST), "--csv", str(out), "--limit", "4", "--shard-instances",
           "--timeout-scale", "0.02", "--stuck-grace", "3", "--device", "cpu", "--quiet"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out, newline="") as fh:
        rows = {r["onnx"]: r for r in csv.DictReader(fh)}
    assert len(rows) == 4 and out.read_text().count("onnx,vnnlib,verdict") == 1, rows
    assert rows["test_tiny.onnx"]["verdict"] == "timeout" and "watchdog" in rows["test_tiny.onnx"]["message"]
    # The others: verdicts or `timeout` (a 1.2 s limit; on a loaded CPU a first instance's
    # imports may even outlast the grace: then the watchdog's), never `error`.
    assert all(r["verdict"] != "error" for k, r in rows.items() if k != "test_tiny.onnx"), rows
    assert proc.stdout.count("4 instance(s)") == 1, proc.stdout
