"""Running dtensor-verify's `benchmark` command on all instances in one process."""
from __future__ import annotations

import subprocess
import time
from pathlib import Path

from .instances import write_instances_csv
from .records import Instance, Options, Outcome, ToolRun, quote
from .tool_csv import read_ours_csv


def ours_supports_device(python: str, env: dict) -> bool:
    res = subprocess.run([python, "-m", "dtensor_verify", "benchmark", "--help"], env=env,
                         capture_output=True, text=True, timeout=300)
    return "--device" in res.stdout


def ours_command(opts: Options, selected: Path, out_csv: Path, pass_device: bool) -> list[str]:
    cmd = [opts.python, "-m", "dtensor_verify"]
    if opts.threads:
        cmd += ["--threads", str(opts.threads)]
    cmd += ["benchmark", str(opts.bench), "--instances", str(selected), "--csv", str(out_csv),
            "--timeout-scale", repr(opts.timeout_scale)]
    if opts.expected:
        cmd += ["--expected", str(opts.expected)]
    if pass_device:
        cmd += ["--device", opts.device]
    return cmd


def run_ours(opts: Options, instances: list[Instance], env: dict, work: Path, limit_s: float | None,
             pass_device: bool) -> ToolRun:
    """All instances in one `dtensor-verify benchmark` process (killed after limit_s, if given)."""
    sel = work / "instances_selected.csv"
    write_instances_csv(sel, instances)
    out_csv = opts.out / "ours.csv"
    cmd = ours_command(opts, sel, out_csv, pass_device)
    run = ToolRun("ours", [Outcome(message="no result") for _ in instances], [quote(cmd)])
    if out_csv.exists():
        out_csv.unlink()
    t0 = time.perf_counter()
    with open(opts.out / "ours.log", "w") as log:
        try:
            proc = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=work,
                                  timeout=limit_s)
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            rc = None
    run.wall = time.perf_counter() - t0
    if rc is None:
        run.note = f"killed after {limit_s:.0f} s (--deadline share): no results"
        for o in run.outcomes:
            o.message = "killed at the runner's --deadline"
        return run
    if rc not in (0, 1) or not out_csv.exists():    # 1: a verdict contradicted --expected
        run.note = f"exit status {rc}: {_last_line(opts.out / 'ours.log')}"
        for o in run.outcomes:
            o.message = run.note
        return run
    run.outcomes = read_ours_csv(out_csv, instances)
    return run


def _last_line(path: Path) -> str:
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""
