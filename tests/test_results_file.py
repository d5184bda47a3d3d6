"""The results file of `dtensor-verify run` cannot lie, and the one-process watchdog holds.

* Paths that must not be written (a symlink, a FIFO or device, a directory, a missing
  directory) are refused with one line and exit 2 before any work, and left untouched.
* An earlier run's verdict is gone as soon as a run starts: a run killed mid-way leaves no file
  (never the old `unsat`); a failed run leaves `error`.
* The file is replaced by rename (a reader never sees a partial or truncated file); ranks other
  than 0 only create it where it is absent.
* An unwritable `--json` is a warning: a found `sat` stays `sat`, with exit status 0.
* A step that never returns is ended by the watchdog shortly after the time limit: `timeout`
  in the results file, exit status 124.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from dtensor_verify.cli import main
from dtensor_verify.errors import OutputFileError
from dtensor_verify.specs import read_result_file, remove_result_file, write_result_file

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO.parent / "shared" / "benchmarks"


def bench(rel: str) -> Path:
    p = BENCH / rel
    if not p.exists():
        pytest.fail(f"benchmark file {p} is missing (expected the shared benchmarks at {BENCH})")
    return p


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["OMP_NUM_THREADS"] = "1"
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID"):
        env.pop(var, None)
    return env


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("dtensor-verify: error: "), err
    return lines[0]


def _run_args(results, onnx=None, extra=(), timeout=30):
    onnx = onnx or str(bench("test/test_sat.onnx"))
    return ["run", "--onnx", onnx, "--vnnlib", str(bench("test/test_prop.vnnlib")),
            "--results", str(results), "--timeout", str(timeout), "--quiet", *extra]


# ------------------------------------------------------------------------------ refused paths

def _special_path(kind, tmp_path):
    target = tmp_path / "target.txt"
    target.write_text("unsat\n")
    if kind == "symlink":
        path = tmp_path / "link.txt"
        path.symlink_to(target)
    elif kind == "fifo":                       # stands in for a device node (both are not regular)
        path = tmp_path / "fifo"
        os.mkfifo(path)
    elif kind == "directory":
        path = tmp_path / "dir"
        path.mkdir()
    else:
        path = tmp_path / "no-such-dir" / "result.txt"
    return path, target


@pytest.mark.parametrize("kind", ["symlink", "fifo", "directory", "missing-dir"])
def test_results_path_that_must_not_be_written_is_refused_before_any_work(kind, tmp_path, capsys):
    path, target = _special_path(kind, tmp_path)
    # The model does not exist either: the results path must be checked first.
    rc = main(_run_args(path, onnx=str(tmp_path / "missing.onnx")))
    line = _one_error_line(capsys.readouterr().err)
    assert rc == 2
    assert str(path) in line and "missing.onnx" not in line, line
    assert target.read_text() == "unsat\n"
    if kind == "symlink":
        assert path.is_symlink() and os.readlink(path) == str(target)
    elif kind == "fifo":
        assert not path.is_file() and path.exists()
    elif kind == "directory":
        assert path.is_dir() and list(path.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")) == []


def test_write_result_file_refuses_links_and_writes_only_if_absent(tmp_path):
    target = tmp_path / "target.txt"
    target.write_text("unsat\n")
    link = tmp_path / "link.txt"
    link.symlink_to(target)
    with pytest.raises(OutputFileError, match="symbolic link"):
        write_result_file(link, "error")
    with pytest.raises(OutputFileError, match="symbolic link"):
        remove_result_file(link)
    assert link.is_symlink() and target.read_text() == "unsat\n"

    res = tmp_path / "r.txt"
    assert write_result_file(res, "timeout", only_if_absent=True) is True
    assert write_result_file(res, "error", only_if_absent=True) is False      # never over a file
    assert read_result_file(res)[0] == "timeout"
    assert write_result_file(res, "unknown") is True                            # rank 0 replaces
    assert read_result_file(res)[0] == "unknown"
    remove_result_file(res)
    remove_result_file(res)                                                     # absent: fine
    assert not res.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_result_file_is_replaced_by_rename_not_rewritten(tmp_path):
    res = tmp_path / "r.txt"
    res.write_text("unsat\n")
    with open(res) as old:                      # a reader that opened the earlier file
        write_result_file(res, "error")
        assert old.read() == "unsat\n"          # still sees a whole file: the old one
    assert res.read_text() == "error\n"


# ------------------------------------------------------------------------------ stale verdicts

def test_failed_run_replaces_an_earlier_verdict_with_error(tmp_path, capsys):
    res = tmp_path / "r.txt"
    res.write_text("unsat\n")
    rc = main(_run_args(res, onnx=str(tmp_path / "missing.onnx")))
    assert rc == 2
    assert res.read_text() == "error\n"


def _start_run(results, timeout="60", extra=()):
    """`python -m dtensor_verify run` on an mnist_fc instance (attack, then CROWN: unsat), with its
    stderr read by a thread; returns (process, lines, event set when verification started)."""
    cmd = [sys.executable, "-m", "dtensor_verify", "--threads", "1", "run",
           "--onnx", str(bench("mnist_fc/onnx/mnist-net_256x2.onnx.gz")),
           "--vnnlib", str(bench("mnist_fc/vnnlib/prop_0_0.03.vnnlib.gz")),
           "--results", str(results), "--timeout", timeout, *extra]
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines, started = [], threading.Event()

    def read():
        for line in proc.stderr:
            lines.append(line)
            if "region(s)" in line:
                started.set()
        started.set()

    threading.Thread(target=read, daemon=True).start()
    return proc, lines, started


def test_killed_run_leaves_no_earlier_verdict(tmp_path):
    res = tmp_path / "r.txt"
    res.write_text("unsat\n")                   # an earlier run's verdict
    proc, lines, started = _start_run(res)
    try:
        assert started.wait(120) and proc.poll() is None, "".join(lines)
        assert not res.exists(), "a running verification still shows an earlier verdict"
        proc.kill()
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not res.exists(), res.read_text()
    assert [p.name for p in tmp_path.iterdir()] == []


# ------------------------------------------------------------------------------ JSON

def test_unwritable_json_is_a_warning_and_sat_stays_sat(tmp_path, capsys):
    res = tmp_path / "r.txt"
    rc = main(_run_args(res, extra=["--json", str(tmp_path / "no-such-dir" / "details.json")]))
    err = capsys.readouterr().err
    assert rc == 0, err
    assert read_result_file(res)[0] == "sat"
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("dtensor-verify: warning: ") and "--json" in lines[0], err
    assert "'sat' stands" in lines[0]


# ------------------------------------------------------------------------------ watchdog

HANG = """
import sys, time
from dtensor_verify.verify import Clock
Clock.check = lambda self: time.sleep(3600)     # a step that never returns
from dtensor_verify.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_watchdog_ends_a_stuck_one_process_run(tmp_path):
    res = tmp_path / "r.txt"
    res.write_text("unsat\n")
    limit = 3.0
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", HANG, *_run_args(res, timeout=limit)],
                          cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
    wall = time.monotonic() - t0
    assert proc.returncode == 124, (proc.returncode, proc.stderr)
    assert res.read_text() == "timeout\n"
    line = _one_error_line(proc.stderr)
    assert "time limit of 3 s" in line and "watchdog" in line, line
    # Imports (a few seconds on a busy 2-core machine) + the limit + 2 s of grace.
    assert wall < 30, wall


def test_sigterm_without_torchrun_keeps_the_default_and_leaves_no_verdict(tmp_path):
    """One process: SIGTERM ends the run at once (no handler), and the reset file stays absent."""
    res = tmp_path / "r.txt"
    res.write_text("sat\n(\n(X_0 0.0)\n)\n")
    proc, lines, started = _start_run(res)
    try:
        assert started.wait(120) and proc.poll() is None, "".join(lines)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == -signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not res.exists()
