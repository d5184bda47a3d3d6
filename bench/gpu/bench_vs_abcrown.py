#!/usr/bin/env python
"""dtensor-verify and alpha,beta-CROWN side by side on the same VNN-COMP instances.

    bench/gpu/bench_vs_abcrown.py BENCH_DIR --abcrown DIR --auto-lirpa DIR --out OUT
        [--filter SUBSTRING ...] [--limit N] [--instances CSV] [--timeout-scale F]
        [--device cpu|cuda] [--expected CSV] [--onnx2pytorch DIR] [--abcrown-config YAML]
        [--threads N] [--tools ours,abcrown] [--deadline SECONDS] [--work DIR] [--parts K]
        [--ours-csv CSV] [--abcrown-csv CSV]

Both tools get the same instances (BENCH_DIR/instances.csv, or --instances, then --filter and
--limit), the same per-instance time limits (the csv's timeout x --timeout-scale) and the same
device, and each runs ALL of them in one process:

* ours: `python -m dtensor_verify benchmark BENCH_DIR --instances SEL --csv OUT/ours.csv
  --timeout-scale F [--device D]` (alpha-CROWN, then beta-CROWN branch and bound);
* alpha,beta-CROWN: its csv batch mode, `abcrown.py --config C --root_path R --csv_name
  instances.csv --timeout_scale F --device D`, on gunzipped copies of the instance files (it reads
  neither .onnx.gz paths named without .gz nor gzipped VNN-LIB). If it crashes or hangs on an
  instance, that instance is recorded as `error` / `timeout` and it is restarted (--start) on
  the next one.

--parts K runs alpha,beta-CROWN as K processes side by side (sharing the device), the instances
dealt round-robin, as bench/gpu/input_bab_gpu.sh deals ours. --ours-csv / --abcrown-csv take a
tool's verdicts from an earlier run instead of running it (both: a comparison only, e.g. here,
after two device calls); every run of abcrown also writes OUT/abcrown.csv (onnx, vnnlib,
verdict, seconds, status, message).

alpha,beta-CROWN's configs are its released VNN-COMP 2022 ones (ABCROWN_CONFIGS below), turned
into plain branch and bound by `plain_bab` (no MIP, no Gurobi / CPLEX cuts); every change is
listed in the table's header. --abcrown-config YAML uses that file instead (same changes).

Writes OUT/results.csv (one row per instance: verdict and seconds of each tool), OUT/table.md
(header with device, versions, commits and exact commands; counts per model; agreement with
--expected; contradictions; per-instance table), OUT/ours.csv, OUT/ours.log, OUT/abcrown.log,
and prints the summary. A sat-vs-unsat clash between the tools, or of either tool with an
expected verdict, is printed as CONTRADICTION and makes the exit status 1. Usage errors: one
line `bench_vs_abcrown: error: ...`, exit status 2.

Counting: abcrown's `unsafe-*` is sat, `safe*` unsat, `unknown` is timeout when it used its time
(else unknown). As in VNN-COMP, a sat / unsat reached more than LATE_SLACK past its limit counts
as timeout, for both tools (the raw verdict stays in results.csv).
"""
from __future__ import annotations

import argparse
import csv
import gzip
import os
import platform
import queue
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from dtensor_verify.benchmark import _norm_key, _resolve, read_instances  # noqa: E402
from dtensor_verify.benchmark import read_expected as _read_expected  # noqa: E402
from dtensor_verify.cli_common import CliError  # noqa: E402


def _read_instances(path):
    """(onnx, vnnlib, timeout) rows of an instances.csv, as `dtensor-verify benchmark` reads it."""
    return [(i.onnx, i.vnnlib, i.timeout) for i in read_instances(path)]

PROG = "bench_vs_abcrown"
EXIT_OK, EXIT_CONTRADICTION, EXIT_ERROR = 0, 1, 2

# Released alpha,beta-CROWN configs per benchmark folder: (ONNX name substring or None for the
# rest, path under complete_verifier/exp_configs). VNN-COMP 2022 ran mnist-net_256x2 with
# mnistfc_small (MIP) and the 256x4 / 256x6 nets with mnistfc (bab-refine).
# acasxu: the release has no vnncomp23 acasxu config; vnncomp21/acasxu.yaml (input split, the same
# 186 instances) is the one its VNN-COMP 2022 / 2023 runs named. vit: vnncomp23/vit.yaml.
ABCROWN_CONFIGS = {
    "mnist_fc": [("mnist-net_256x2", "vnncomp22/mnistfc_small.yaml"), (None, "vnncomp22/mnistfc.yaml")],
    "oval21": [(None, "vnncomp22/oval22.yaml")],
    "acasxu": [(None, "vnncomp21/acasxu.yaml")],
    "acasxu_2023": [(None, "vnncomp21/acasxu.yaml")],
    "vit": [(None, "vnncomp23/vit.yaml")],
    "vit_2023": [(None, "vnncomp23/vit.yaml")],
}
LATE_SLACK = (1.10, 0.5)      # a verdict after limit * 1.10 + 0.5 s counts as timeout
HANG_FACTOR = 2.0             # abcrown is killed on an instance after limit * 2 + --hang-grace
OURS_SHARE = 0.6              # with --deadline: ours is killed after this share of it
VERDICTS = ("sat", "unsat", "unknown", "timeout", "error")
PIDS_FILE = "abcrown_pids.txt"   # in --work: every abcrown process started (its own session)


class UsageError(Exception):
    """Bad arguments or missing files: one line, exit status 2."""


@dataclass
class Instance:
    index: int
    onnx: str           # as written in instances.csv
    vnnlib: str
    timeout: float      # instances.csv's, unscaled
    limit: float        # timeout x --timeout-scale

    @property
    def model(self) -> str:
        return _strip_ext(Path(self.onnx).name)

    @property
    def prop(self) -> str:
        return _strip_ext(Path(self.vnnlib).name)

    @property
    def key(self) -> tuple[str, str]:
        return _norm_key(self.onnx), _norm_key(self.vnnlib)


@dataclass
class Outcome:
    """One tool's answer on one instance, as the tool gave it."""
    verdict: str = "error"      # sat / unsat / unknown / timeout / error
    seconds: float | None = None
    detail: str = ""            # abcrown's status string, or ours' decided_by
    message: str = ""


@dataclass
class ToolRun:
    name: str
    outcomes: list[Outcome]
    commands: list[str] = field(default_factory=list)
    wall: float = 0.0
    note: str = ""


def _strip_ext(name: str) -> str:
    for ext in (".gz", ".onnx", ".vnnlib"):
        if name.endswith(ext):
            name = name[: -len(ext)]
    return name


def _quote(cmd) -> str:
    return " ".join(shlex.quote(str(c)) for c in cmd)


# ------------------------------------------------------------------------------ instances

def select_instances(bench: Path, instances_csv: Path | None, substrings: list[str] | None,
                     limit: int | None, scale: float) -> list[Instance]:
    path = instances_csv or bench / "instances.csv"
    if not path.exists():
        raise UsageError(f"{path}: no such file")
    rows = _read_instances(path)
    if substrings:
        rows = [r for r in rows if any(s in r[0] or s in r[1] for s in substrings)]
    if limit is not None:
        rows = rows[:limit]
    if not rows:
        raise UsageError(f"{path}: no instances selected" + (f" (filter {substrings})" if substrings else ""))
    out = []
    for i, (onnx, vnnlib, timeout) in enumerate(rows):
        for rel in (onnx, vnnlib):
            if Path(rel).is_absolute() or ".." in Path(rel).parts:   # copies are staged at these paths
                raise UsageError(f"{path}: instance {i}: {rel}: expected a path inside {bench}")
            if not _resolve(bench, rel).exists():
                raise UsageError(f"{path}: instance {i}: {bench / rel} (or .gz): no such file")
        out.append(Instance(i, onnx, vnnlib, timeout, timeout * scale))
    return out


def write_instances_csv(path: Path, instances: list[Instance], gunzipped: bool = False) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        for inst in instances:
            if gunzipped:
                w.writerow([_norm_key(inst.onnx), _norm_key(inst.vnnlib), inst.timeout])
            else:
                w.writerow([inst.onnx, inst.vnnlib, inst.timeout])


def stage_gunzipped(bench: Path, instances: list[Instance], dest: Path) -> None:
    """Plain copies of the instance files under dest, at the csv's paths without .gz."""
    for inst in instances:
        for rel in (inst.onnx, inst.vnnlib):
            src, dst = _resolve(bench, rel), dest / _norm_key(rel)
            if dst.exists():
                continue
            dst.parent.mkdir(parents=True, exist_ok=True)
            opener = gzip.open if src.suffix == ".gz" else open
            with opener(src, "rb") as fin, open(dst, "wb") as fout:
                shutil.copyfileobj(fin, fout)


# ------------------------------------------------------------------------------ abcrown configs

def plain_bab(config: dict) -> tuple[dict, list[str]]:
    """A released abcrown config turned into plain beta-CROWN branch and bound: MIP-based
    verifiers (`mip`, `bab-refine`, both need Gurobi) become `bab`, GCP-CROWN cuts (CPLEX) go
    off, and with them conv_mode `matrix` (abcrown needs it only for cuts; its own 'auto' mode and
    its plain beta-CROWN baseline config for oval22 use the default `patches`). The instance
    selection keys (root_path, csv_name, data.start / end) are dropped: the runner passes its own.
    Returns the new config and one line per change."""
    cfg = yaml.safe_load(yaml.safe_dump(config)) or {}
    changes = []

    def setv(section: dict, key: str, new, why: str, path: str):
        old = section.get(key, "<default>")
        if old != new:
            section[key] = new
            changes.append(f"{path}: {old} -> {new} ({why})")

    general = cfg.setdefault("general", {})
    if general.get("complete_verifier") in ("mip", "bab-refine"):
        setv(general, "complete_verifier", "bab", "MIP needs Gurobi", "general.complete_verifier")
    cut = cfg.get("bab", {}).get("cut", {})
    cuts_were_on = bool(cut.get("enabled"))
    if cut.get("enabled"):
        setv(cut, "enabled", False, "GCP-CROWN cuts come from CPLEX", "bab.cut.enabled")
    if cut.get("cplex_cuts"):
        setv(cut, "cplex_cuts", False, "CPLEX", "bab.cut.cplex_cuts")
    if cuts_were_on and general.get("conv_mode") == "matrix":
        setv(general, "conv_mode", "patches", "matrix mode is for cuts; abcrown's default",
             "general.conv_mode")
    for key in ("root_path", "csv_name"):
        if key in general:
            changes.append(f"general.{key}: {general.pop(key)} -> (runner's)")
    data = cfg.get("data", {})
    for key in ("start", "end"):
        if key in data:
            changes.append(f"data.{key}: {data.pop(key)} -> (runner's)")
    if "data" in cfg and not cfg["data"]:
        del cfg["data"]
    return cfg, changes


def released_config_for(family: str, model: str) -> str | None:
    for substring, rel in ABCROWN_CONFIGS.get(family, []):
        if substring is None or substring in model:
            return rel
    return None


@dataclass
class ConfigGroup:
    source: Path                       # the released (or --abcrown-config) file
    config: Path                       # the plain-bab file written for this run
    changes: list[str]
    instances: list[Instance]


def abcrown_groups(family: str, instances: list[Instance], abcrown: Path, override: Path | None,
                   work: Path) -> list[ConfigGroup]:
    """Instances grouped by the abcrown config they run under, in first-appearance order."""
    groups: dict[Path, list[Instance]] = {}
    for inst in instances:
        if override is not None:
            src = override
        else:
            rel = released_config_for(family, inst.model)
            if rel is None:
                raise UsageError(f"no released alpha,beta-CROWN config known for benchmark '{family}' "
                                 f"(model {inst.model}): pass --abcrown-config YAML")
            src = abcrown / "complete_verifier" / "exp_configs" / rel
        groups.setdefault(src, []).append(inst)
    out = []
    for n, (src, members) in enumerate(groups.items()):
        if not src.exists():
            raise UsageError(f"{src}: no such file (alpha,beta-CROWN config)")
        with open(src) as fh:
            released = yaml.safe_load(fh) or {}
        cfg, changes = plain_bab(released)
        dst = work / f"abcrown_config_{n}_{src.stem}.yaml"
        with open(dst, "w") as fh:
            fh.write(f"# generated by {PROG} from {src}\n")
            yaml.safe_dump(cfg, fh, sort_keys=False)
        out.append(ConfigGroup(src, dst, changes, members))
    return out


# ------------------------------------------------------------------------------ verdicts

def abcrown_verdict(status: str, seconds: float, limit: float) -> str:
    """abcrown's per-instance status (its Logger's strings) as a VNN-COMP verdict."""
    words = status.lower().split()
    word = words[0] if words else ""
    if word.startswith("unsafe") or word == "sat":          # unsafe-pgd, unsafe-bab, unsafe-mip
        return "sat"
    if word.startswith("safe") or word == "unsat":          # safe, safe-incomplete(-refine), safe-mip
        return "unsat"
    if word.startswith("unknown") or word in ("timeout", "timed"):
        return "timeout" if seconds >= 0.95 * limit else "unknown"
    return "error"


def is_late(seconds: float | None, limit: float) -> bool:
    factor, extra = LATE_SLACK
    return seconds is not None and seconds > limit * factor + extra


def counted(out: Outcome, limit: float) -> str:
    """The verdict a table counts: a decided verdict that came too late is a timeout."""
    if out.verdict in ("sat", "unsat") and (is_late(out.seconds, limit) or "timed out" in out.detail):
        return "timeout"
    return out.verdict


def clash(a: str, b: str | None) -> bool:
    return b is not None and {a, b} == {"sat", "unsat"}


def agreement(verdict: str, expected: str | None) -> str:
    if not expected:
        return ""
    if verdict == expected:
        return "agree"
    return "CONTRADICTION" if clash(verdict, expected) else "unsolved"


# ------------------------------------------------------------------------------ running ours

def ours_supports_device(python: str, env: dict) -> bool:
    res = subprocess.run([python, "-m", "dtensor_verify", "benchmark", "--help"], env=env,
                         capture_output=True, text=True, timeout=300)
    return "--device" in res.stdout


def run_ours(args, instances: list[Instance], env: dict, work: Path, limit_s: float | None) -> ToolRun:
    sel = work / "instances_selected.csv"
    write_instances_csv(sel, instances)
    out_csv = args.out / "ours.csv"
    cmd = [args.python, "-m", "dtensor_verify"]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    cmd += ["benchmark", str(args.bench), "--instances", str(sel), "--csv", str(out_csv),
            "--timeout-scale", repr(args.timeout_scale)]
    if args.expected:
        cmd += ["--expected", str(args.expected)]
    if args.ours_device:
        cmd += ["--device", args.device]
    run = ToolRun("ours", [Outcome(message="no result") for _ in instances], [_quote(cmd)])
    if out_csv.exists():
        out_csv.unlink()
    t0 = time.perf_counter()
    with open(args.out / "ours.log", "w") as log:
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
        run.note = f"exit status {rc}: {_last_line(args.out / 'ours.log')}"
        for o in run.outcomes:
            o.message = run.note
        return run
    run.outcomes = read_ours_csv(out_csv, instances)
    return run


def read_ours_csv(path: Path, instances: list[Instance]) -> list[Outcome]:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if len(rows) != len(instances):
        raise RuntimeError(f"{path}: {len(rows)} rows for {len(instances)} instances")
    out = []
    for inst, row in zip(instances, rows):
        if (_norm_key(row["onnx"]), _norm_key(row["vnnlib"])) != inst.key:
            raise RuntimeError(f"{path}: row {inst.index} is {row['onnx']} {row['vnnlib']}, "
                               f"expected {inst.onnx} {inst.vnnlib}")
        out.append(Outcome(row["verdict"], float(row["seconds"]), row.get("decided_by", ""),
                           row.get("message", "")))
    return out


def _last_line(path: Path) -> str:
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


# ------------------------------------------------------------------------------ running abcrown

_IDX = re.compile(r"idx: (\d+), vnnlib ID: (\d+)")
_RESULT = re.compile(r"^Result: (.+) in ([0-9.eE+-]+) seconds")


class _Lines:
    """A child's merged stdout/stderr, line by line, with a timeout on each read."""

    def __init__(self, proc):
        self.q: queue.Queue = queue.Queue()
        self.t = threading.Thread(target=self._pump, args=(proc.stdout,), daemon=True)
        self.t.start()

    def _pump(self, stream):
        for line in stream:
            self.q.put(line)
        self.q.put(None)

    def get(self, timeout: float):
        try:
            return self.q.get(timeout=timeout)
        except queue.Empty:
            return ""


def abcrown_env(args, env: dict) -> dict:
    """auto_LiRPA (and onnx2pytorch) from source first, so that no installed auto_LiRPA (the
    test reference 0.3) shadows it; this repository left out (abcrown has modules of its own)."""
    paths = [str(args.auto_lirpa)] + ([str(args.onnx2pytorch)] if args.onnx2pytorch else [])
    inherited = [p for p in env.get("PYTHONPATH", "").split(os.pathsep)
                 if p and Path(p).resolve() != ROOT]
    out = dict(env)
    out["PYTHONPATH"] = os.pathsep.join(paths + inherited)
    out["PYTHONUNBUFFERED"] = "1"
    return out


@dataclass
class Segment:
    """How one abcrown process ended."""
    reason: str             # done | hang | crash | deadline | exit (ended outside an instance)
    next_row: int           # first row of the group's csv it gave no result for
    current: int | None     # the row it was working on when it stopped, if any
    message: str = ""


def run_abcrown_group(args, group: ConfigGroup, csv_name: str, data_dir: Path, env: dict,
                      log, deadline: float | None, run: ToolRun, work: Path) -> None:
    """All instances of one config group in one abcrown process; after a crash or a hang (the
    instance is recorded as error / timeout) it starts again on the next instance."""
    members = group.instances
    start = 0
    while start < len(members):
        if deadline is not None and time.perf_counter() > deadline:
            _fail_rows(run, members[start:], "error", "not finished before --deadline")
            return
        cmd = [args.python, str(args.abcrown / "complete_verifier" / "abcrown.py"),
               "--config", str(group.config), "--root_path", str(data_dir), "--csv_name", csv_name,
               "--results_file", str(work / f"results_{Path(csv_name).stem}_from{start}.pkl"),
               "--timeout_scale", repr(args.timeout_scale), "--device", args.device,
               "--start", str(start), "--end", str(len(members))]
        run.commands.append(_quote(cmd))
        log.write(f"\n===== {PROG}: {_quote(cmd)}\n")
        log.flush()
        seg = _watch_abcrown(cmd, env, work, log, members, start, deadline, args.hang_grace, run)
        if seg.reason == "deadline":
            first = seg.current if seg.current is not None else seg.next_row
            _fail_rows(run, members[first:], "error", "not finished before --deadline")
            return
        if seg.reason in ("hang", "crash"):
            start = seg.current + 1
        elif seg.next_row >= len(members):
            return
        elif seg.next_row == start or seg.reason == "done":
            # no progress (e.g. it cannot start at all): do not loop
            _fail_rows(run, members[seg.next_row:], "error", seg.message or "abcrown gave no result")
            return
        else:
            start = seg.next_row     # it died between two instances: go on where it stopped


def _fail_rows(run: ToolRun, insts, verdict: str, message: str) -> None:
    for inst in insts:
        _set_abcrown(run, inst, Outcome(verdict, None, "", message))


def _set_abcrown(run: ToolRun, inst: Instance, out: Outcome) -> None:
    run.outcomes[inst.index] = out


def _kill_group(proc) -> None:
    """abcrown in its own session: kill it with whatever it started (e.g. worker processes)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _watch_abcrown(cmd, env, work, log, members, start, deadline, hang_grace, run) -> Segment:
    """Run one abcrown process, following its output: `idx: i, vnnlib ID: row` opens an
    instance, `Result: status in t seconds` closes it. Kills it on a hang or at the deadline."""
    proc = subprocess.Popen(cmd, env=env, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, bufsize=1, errors="replace", start_new_session=True)
    with open(work / PIDS_FILE, "a") as fh:      # for a caller that must end them if this runner is killed
        fh.write(f"{proc.pid}\n")
    lines = _Lines(proc)
    current, started, next_row, last_text = None, 0.0, start, ""
    stop = ""
    while True:
        line = lines.get(timeout=1.0)
        if line is None:
            break
        if line:
            log.write(line)
            text = line.strip()
            m_idx, m_res = _IDX.search(text), _RESULT.match(text)
            if m_idx:
                current, started = int(m_idx.group(2)), time.perf_counter()
            elif m_res and current is not None:
                inst, secs, status = members[current], float(m_res.group(2)), m_res.group(1).strip()
                _set_abcrown(run, inst, Outcome(abcrown_verdict(status, secs, inst.limit), secs, status))
                next_row, current = current + 1, None
            elif text:
                last_text = text
        now = time.perf_counter()
        if deadline is not None and now > deadline:
            stop = "deadline"
        elif current is not None and now - started > members[current].limit * HANG_FACTOR + hang_grace:
            stop = "hang"
        if stop:
            _kill_group(proc)
            break
    rc = proc.wait()
    log.flush()
    if stop == "hang":
        inst, ran = members[current], time.perf_counter() - started
        _set_abcrown(run, inst, Outcome("timeout", ran, "killed",
                                        f"no result {ran:.0f} s into its {inst.limit:g} s limit: killed"))
        return Segment("hang", next_row, current)
    if stop == "deadline":
        return Segment("deadline", next_row, current)
    if current is not None:
        _set_abcrown(run, members[current], Outcome("error", None, "crashed",
                                                    f"abcrown exit status {rc}: {last_text[:300]}"))
        return Segment("crash", next_row, current)
    if rc != 0:
        return Segment("exit", next_row, None, f"abcrown exit status {rc}: {last_text[:300]}")
    return Segment("done", next_row, None, "abcrown ended without a result for this instance")


def run_abcrown(args, family: str, instances: list[Instance], env: dict, work: Path,
                deadline: float | None) -> tuple[ToolRun, list[ConfigGroup]]:
    """Every config group's instances dealt round-robin to --parts abcrown process chains run
    side by side (sharing the device); each chain goes through the groups in turn."""
    run = ToolRun("abcrown", [Outcome(message="no result") for _ in instances])
    groups = abcrown_groups(family, instances, args.abcrown, args.abcrown_config, work)
    data_dir = work / "abcrown_data"
    stage_gunzipped(args.bench, instances, data_dir)
    benv = abcrown_env(args, env)
    parts = max(1, min(args.parts, len(instances)))
    logs = [args.out / "abcrown.log"] if parts == 1 else [work / f"abcrown_part{k}.log" for k in range(parts)]

    def chain(k: int) -> None:
        with open(logs[k], "w") as log:
            for n, group in enumerate(groups):
                members = group.instances[k::parts]
                if not members:
                    continue
                sub = ConfigGroup(group.source, group.config, group.changes, members)
                csv_name = f"instances_{n}.csv" if parts == 1 else f"instances_{n}_part{k}.csv"
                write_instances_csv(data_dir / csv_name, members, gunzipped=True)
                run_abcrown_group(args, sub, csv_name, data_dir, benv, log, deadline, run, work)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=chain, args=(k,), daemon=True) for k in range(parts)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    run.wall = time.perf_counter() - t0
    if parts > 1:
        run.note = f"{parts} processes side by side (instances dealt round-robin)"
        with open(args.out / "abcrown.log", "w") as out:
            for k, path in enumerate(logs):
                out.write(f"\n===== {PROG}: part {k} of {parts}\n")
                out.write(path.read_text(errors="replace") if path.exists() else "(no log)\n")
    return run, groups


def write_tool_csv(path: Path, instances: list[Instance], outcomes: list[Outcome]) -> None:
    """One tool's verdicts in the columns of `dtensor-verify benchmark --csv` it shares
    (onnx, vnnlib, verdict, seconds), plus its own status string and message."""
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["onnx", "vnnlib", "verdict", "seconds", "status", "message"])
        for inst, out in zip(instances, outcomes):
            w.writerow([inst.onnx, inst.vnnlib, out.verdict,
                        "" if out.seconds is None else f"{out.seconds:.3f}", out.detail, out.message])


def read_tool_csv(path: Path, instances: list[Instance], name: str) -> ToolRun:
    """A tool's verdicts from an earlier run (ours: `benchmark --csv`, or the merged parts of
    input_bab_gpu.sh; abcrown: this script's abcrown.csv), matched to the instances by
    (onnx, vnnlib); an instance with no row is an error 'no row in CSV'."""
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as exc:
        raise UsageError(f"{path}: {exc.strerror or exc}") from None
    if rows and not {"onnx", "vnnlib", "verdict"} <= set(rows[0]):
        raise UsageError(f"{path}: expected the columns onnx, vnnlib, verdict (and seconds)")
    by_key = {}
    for n, row in enumerate(rows, 2):
        verdict = (row.get("verdict") or "").strip().lower()
        if verdict not in VERDICTS:
            raise UsageError(f"{path}: line {n}: verdict '{row.get('verdict')}' is not one of {', '.join(VERDICTS)}")
        try:
            secs = float(row["seconds"]) if (row.get("seconds") or "").strip() else None
        except ValueError:
            raise UsageError(f"{path}: line {n}: seconds '{row.get('seconds')}' is not a number") from None
        detail = row.get("decided_by") or row.get("status") or ""
        by_key[(_norm_key(row["onnx"]), _norm_key(row["vnnlib"]))] = Outcome(verdict, secs, detail,
                                                                             row.get("message") or "")
    missing = f"no row in {path.name}"
    outcomes = [by_key.get(inst.key, Outcome("error", None, "", missing)) for inst in instances]
    n_found = sum(inst.key in by_key for inst in instances)
    return ToolRun(name, outcomes, [f"(read from {path})"],
                   note=f"read from {path}: {n_found} of {len(instances)} instances have a row")


# ------------------------------------------------------------------------------ merge + table

@dataclass
class Row:
    inst: Instance
    expected: str | None
    ours: Outcome | None
    abcrown: Outcome | None

    def verdict(self, tool: str) -> str | None:
        out = getattr(self, tool)
        return None if out is None else counted(out, self.inst.limit)

    def flags(self) -> list[str]:
        flags = []
        raw = {t: getattr(self, t).verdict for t in ("ours", "abcrown") if getattr(self, t) is not None}
        for tool, v in raw.items():
            if clash(v, self.expected):
                flags.append(f"CONTRADICTION: {tool} says {v}, expected {self.expected}")
        if len(raw) == 2 and clash(raw["ours"], raw["abcrown"]):
            flags.append(f"CONTRADICTION: ours says {raw['ours']}, abcrown says {raw['abcrown']}")
        return flags


def merge(instances, expected: dict, ours: ToolRun | None, abc: ToolRun | None) -> list[Row]:
    return [Row(inst, expected.get(inst.key), ours.outcomes[inst.index] if ours else None,
                abc.outcomes[inst.index] if abc else None) for inst in instances]


def write_results_csv(path: Path, rows: list[Row]) -> None:
    fields = ["index", "model", "onnx", "vnnlib", "limit_s", "expected",
              "ours_verdict", "ours_seconds", "ours_raw", "ours_decided_by", "ours_message",
              "abcrown_verdict", "abcrown_seconds", "abcrown_raw", "abcrown_status", "abcrown_message",
              "flags"]
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        for r in rows:
            rec = {"index": r.inst.index, "model": r.inst.model, "onnx": r.inst.onnx,
                   "vnnlib": r.inst.vnnlib, "limit_s": f"{r.inst.limit:g}", "expected": r.expected or "",
                   "flags": "; ".join(r.flags())}
            for tool, extra in (("ours", "decided_by"), ("abcrown", "status")):
                out = getattr(r, tool)
                if out is None:
                    continue
                rec.update({f"{tool}_verdict": r.verdict(tool), f"{tool}_raw": out.verdict,
                            f"{tool}_seconds": "" if out.seconds is None else f"{out.seconds:.3f}",
                            f"{tool}_{extra}": out.detail, f"{tool}_message": out.message})
            w.writerow(rec)


def summary_table(rows: list[Row], tools: list[str]) -> list[str]:
    lines = ["| model | tool | instances | sat | unsat | unknown | timeout | error | solved | "
             "seconds (sum over instances) |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    models = _models(rows)
    groups = [(m, [r for r in rows if r.inst.model == m]) for m in models]
    if len(models) > 1:
        groups.append(("**all**", rows))
    for model, mine in groups:
        for tool in tools:
            c = Counter(r.verdict(tool) for r in mine)
            secs = sum(getattr(r, tool).seconds or 0.0 for r in mine)
            lines.append(f"| {model} | {_tool_name(tool)} | {len(mine)} | "
                         + " | ".join(str(c.get(v, 0)) for v in VERDICTS)
                         + f" | {c.get('sat', 0) + c.get('unsat', 0)} | {secs:.1f} |")
    return lines


def expected_table(rows: list[Row], tools: list[str]) -> list[str]:
    lines = ["| model | tool | with expected verdict | agree | unsolved | contradictions |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    for model in _models(rows):
        mine = [r for r in rows if r.inst.model == model and r.expected]
        if not mine:
            continue
        for tool in tools:
            c = Counter(agreement(getattr(r, tool).verdict, r.expected) for r in mine)
            lines.append(f"| {model} | {_tool_name(tool)} | {len(mine)} | {c.get('agree', 0)} | "
                         f"{c.get('unsolved', 0)} | {c.get('CONTRADICTION', 0)} |")
    return lines if len(lines) > 2 else []


def instance_table(rows: list[Row], tools: list[str]) -> list[str]:
    head = "| # | model | property | limit s | expected | " + " | ".join(
        f"{_tool_name(t)} | s" for t in tools) + " | flags |"
    lines = [head, "| " + " | ".join(["---:", "---", "---", "---:", "---"] + ["---", "---:"] * len(tools)
                                     + ["---"]) + " |"]
    for r in rows:
        cells = [str(r.inst.index), r.inst.model, r.inst.prop, f"{r.inst.limit:g}", r.expected or "-"]
        for tool in tools:
            out = getattr(r, tool)
            shown = r.verdict(tool)
            if shown != out.verdict:
                shown += f" (late {out.verdict})"
            cells += [shown, "-" if out.seconds is None else f"{out.seconds:.2f}"]
        cells.append("; ".join(r.flags()) or "")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _models(rows):
    return list(dict.fromkeys(r.inst.model for r in rows))


def _tool_name(tool: str) -> str:
    return {"ours": "dtensor-verify", "abcrown": "alpha,beta-CROWN"}[tool]


def header_lines(args, facts: dict, instances, runs: list[ToolRun], groups: list[ConfigGroup]) -> list[str]:
    lines = [f"# dtensor-verify vs alpha,beta-CROWN: {args.bench.name}", "",
             f"- run: {facts['date']} on {facts['host_device']} (`--device {args.device}`)",
             f"- software: python {facts['python']}, torch {facts['torch']}",
             f"- dtensor_verify commit: {facts['ours_commit']}",
             f"- alpha-beta-CROWN commit: {facts['abcrown_commit']}; auto_LiRPA commit: "
             f"{facts['auto_lirpa_commit']}; onnx2pytorch commit: {facts['onnx2pytorch_commit']}",
             f"- instances: {len(instances)} of {args.instances or args.bench / 'instances.csv'}"
             + (f", filter {' or '.join(f'`{s}`' for s in args.filter)}" if args.filter else "")
             + (f", first {args.limit}" if args.limit is not None else "")
             + f"; time limit per instance = its instances.csv timeout x {args.timeout_scale:g}",
             f"- threads: {args.threads or 'torch default'}; each tool runs all instances in one process"
             + (f" (alpha,beta-CROWN: {args.parts} processes side by side, instances dealt round-robin)"
                if args.parts > 1 and not args.abcrown_csv else ""),
             f"- counting: a sat/unsat reached more than {LATE_SLACK[0] - 1:.0%} + {LATE_SLACK[1]} s "
             "after its limit counts as timeout (raw verdict in results.csv); abcrown `unknown` is "
             "timeout when it used its time",
             f"- runner: `{_quote([Path(sys.argv[0]).name] + sys.argv[1:])}`"]
    for g in groups:
        lines.append(f"- abcrown config for {', '.join(_models_of(g.instances))}: released `{g.source}`; "
                     "changes: " + ("; ".join(g.changes) or "none"))
    for run in runs:
        lines.append(f"- {_tool_name(run.name)}: process wall time {run.wall:.1f} s"
                     + (f"; {run.note}" if run.note else ""))
        for c in run.commands:
            lines.append(f"  - `{c}`")
    return lines


def _models_of(instances):
    return list(dict.fromkeys(i.model for i in instances))


def render(args, facts, instances, rows, runs, groups) -> tuple[str, str]:
    """(the whole table.md, the part that is printed)."""
    tools = [r.name for r in runs]
    summary = ["## Summary", ""] + summary_table(rows, tools)
    exp = expected_table(rows, tools)
    if exp:
        summary += ["", f"## Agreement with expected verdicts (`{args.expected}`)", ""] + exp
    flagged = [(r, f) for r in rows for f in r.flags()]
    summary += ["", "## Contradictions", ""]
    summary += [f"- **{f}** ({r.inst.model} {r.inst.prop})" for r, f in flagged] or ["none"]
    full = header_lines(args, facts, instances, runs, groups) + [""] + summary + \
        ["", "## Per instance", ""] + instance_table(rows, tools)
    return "\n".join(full) + "\n", "\n".join(summary) + "\n"


# ------------------------------------------------------------------------------ provenance

def gather_facts(args) -> dict:
    import torch

    from dtensor_verify.device import cpu_model
    if args.device == "cuda":
        host_device = f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})"
    else:
        host_device = f"CPU {cpu_model()}, {os.cpu_count()} cores"
    return {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "host_device": host_device, "python": platform.python_version(), "torch": torch.__version__,
            "ours_commit": args.ours_commit or _git_commit(ROOT),
            "abcrown_commit": _dir_commit(args.abcrown) if args.abcrown else "-",
            "auto_lirpa_commit": _dir_commit(args.auto_lirpa) if args.auto_lirpa else "-",
            "onnx2pytorch_commit": _dir_commit(args.onnx2pytorch) if args.onnx2pytorch else "-"}


def _git_commit(path: Path) -> str:
    try:
        head = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=30)
        if head.returncode != 0:
            return "unknown (no git checkout)"
        dirty = subprocess.run(["git", "-C", str(path), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=30).stdout.strip()
        return head.stdout.strip() + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        return "unknown (no git)"


def _dir_commit(path: Path) -> str:
    """A COMMIT file written when the folder was exported, else its git HEAD."""
    f = path / "COMMIT"
    if f.exists():
        return f.read_text().strip()
    return _git_commit(path)


# ------------------------------------------------------------------------------ main

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("bench", type=Path, metavar="BENCH_DIR", help="benchmark folder with instances.csv")
    p.add_argument("--abcrown", type=Path, default=None,
                   help="alpha-beta-CROWN checkout (needed unless --abcrown-csv)")
    p.add_argument("--auto-lirpa", type=Path, default=None,
                   help="auto_LiRPA checkout, imported from source (needed unless --abcrown-csv)")
    p.add_argument("--onnx2pytorch", type=Path, default=None,
                   help="onnx2pytorch checkout abcrown needs, if it is not installed")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--work", type=Path, default=None, help="scratch folder (default OUT/work)")
    p.add_argument("--instances", type=Path, default=None, help="instances file (default BENCH_DIR/instances.csv)")
    p.add_argument("--filter", action="append", default=None, metavar="SUBSTRING",
                   help="instances whose paths contain it (repeat: any of them)")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="first N selected instances")
    p.add_argument("--timeout-scale", type=float, default=1.0, metavar="F")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--expected", type=Path, default=None, help="known verdicts (onnx,vnnlib,verdict)")
    p.add_argument("--abcrown-config", type=Path, default=None,
                   help="abcrown YAML for all instances instead of the released one per benchmark")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for both tools (OMP_NUM_THREADS)")
    p.add_argument("--tools", default="ours,abcrown", help="ours,abcrown | ours | abcrown")
    p.add_argument("--deadline", type=float, default=None, metavar="SECONDS",
                   help=f"stop by then: ours is killed after {OURS_SHARE:.0%} of it, abcrown at it")
    p.add_argument("--hang-grace", type=float, default=120.0, metavar="SECONDS",
                   help=f"abcrown is killed on an instance after {HANG_FACTOR:g} x its limit + this")
    p.add_argument("--parts", type=int, default=1, metavar="K",
                   help="abcrown: K processes side by side, the instances dealt round-robin")
    p.add_argument("--ours-csv", type=Path, default=None, metavar="CSV",
                   help="ours: verdicts of an earlier run (`benchmark --csv`) instead of running it")
    p.add_argument("--abcrown-csv", type=Path, default=None, metavar="CSV",
                   help="abcrown: verdicts of an earlier run (this script's abcrown.csv) instead of running it")
    p.add_argument("--python", default=sys.executable, help="interpreter for both tools")
    p.add_argument("--ours-commit", default=None, help="commit to report for this repository")
    return p


def check_args(args) -> None:
    if not (args.bench / "instances.csv").exists() and args.instances is None:
        raise UsageError(f"{args.bench}: not a benchmark folder (no instances.csv)")
    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    if not tools or set(tools) - {"ours", "abcrown"}:
        raise UsageError(f"--tools {args.tools}: expected ours, abcrown or ours,abcrown")
    args.tool_list = [t for t in ("ours", "abcrown") if t in tools]
    if not args.timeout_scale > 0:
        raise UsageError("--timeout-scale must be > 0")
    if args.limit is not None and args.limit < 1:
        raise UsageError("--limit must be >= 1")
    if args.threads is not None and args.threads < 1:
        raise UsageError("--threads must be >= 1")
    if args.parts < 1:
        raise UsageError("--parts must be >= 1")
    for opt in ("ours_csv", "abcrown_csv"):
        if getattr(args, opt):
            _need(getattr(args, opt), "--" + opt.replace("_", "-"))
    if "abcrown" in args.tool_list and not args.abcrown_csv:
        for opt in ("abcrown", "auto_lirpa"):
            if getattr(args, opt) is None:
                raise UsageError(f"--{opt.replace('_', '-')} DIR is needed to run alpha,beta-CROWN "
                                 "(or --abcrown-csv CSV of an earlier run)")
        _need(args.abcrown / "complete_verifier" / "abcrown.py", "--abcrown")
        _need(args.auto_lirpa / "auto_LiRPA" / "__init__.py", "--auto-lirpa")
        if args.onnx2pytorch:
            _need(args.onnx2pytorch / "onnx2pytorch" / "__init__.py", "--onnx2pytorch")
        if args.abcrown_config:
            _need(args.abcrown_config, "--abcrown-config")
    if args.expected:
        _need(args.expected, "--expected")
    if args.device == "cuda":
        import torch
        if not torch.cuda.is_available():
            raise UsageError("--device cuda: torch sees no CUDA device here")


def _need(path: Path, option: str) -> None:
    if not path.exists():
        raise UsageError(f"{option}: {path}: no such file")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _main(args)
    except (UsageError, CliError) as exc:
        print(f"{PROG}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_ERROR


def _main(args) -> int:
    t_start = time.perf_counter()
    args.bench = args.bench.resolve()
    for name in ("abcrown", "auto_lirpa", "onnx2pytorch", "abcrown_config", "expected", "instances",
                 "ours_csv", "abcrown_csv"):
        if getattr(args, name) is not None:
            setattr(args, name, getattr(args, name).resolve())
    check_args(args)
    instances = select_instances(args.bench, args.instances, args.filter, args.limit, args.timeout_scale)
    expected = _read_expected(args.expected) if args.expected else {}
    args.out.mkdir(parents=True, exist_ok=True)
    args.out = args.out.resolve()
    work = (args.work or args.out / "work").resolve()
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    deadline = t_start + args.deadline if args.deadline else None

    runs, groups = [], []
    ours = abc = None
    if "ours" in args.tool_list and args.ours_csv:
        ours = read_tool_csv(args.ours_csv, instances, "ours")
        runs.append(ours)
    elif "ours" in args.tool_list:
        args.ours_device = ours_supports_device(args.python, env)
        if not args.ours_device and args.device != "cpu":
            raise UsageError(f"dtensor-verify benchmark has no --device option in {ROOT}: it would run "
                             f"on the CPU, not on {args.device}; use a checkout with --device, or --tools abcrown")
        share = None if deadline is None else max(args.deadline * OURS_SHARE - (time.perf_counter() - t_start), 1.0)
        print(f"[{PROG}] ours: {len(instances)} instance(s) ...", file=sys.stderr, flush=True)
        ours = run_ours(args, instances, env, work, share)
        runs.append(ours)
    if "abcrown" in args.tool_list and args.abcrown_csv:
        abc = read_tool_csv(args.abcrown_csv, instances, "abcrown")
        runs.append(abc)
    elif "abcrown" in args.tool_list:
        print(f"[{PROG}] alpha,beta-CROWN: {len(instances)} instance(s) ...", file=sys.stderr, flush=True)
        abc, groups = run_abcrown(args, args.bench.name, instances, env, work, deadline)
        write_tool_csv(args.out / "abcrown.csv", instances, abc.outcomes)
        runs.append(abc)

    rows = merge(instances, expected, ours, abc)
    write_results_csv(args.out / "results.csv", rows)
    table, printed = render(args, gather_facts(args), instances, rows, runs, groups)
    (args.out / "table.md").write_text(table)
    print(printed, end="")
    print(f"[{PROG}] wrote {args.out / 'results.csv'} and {args.out / 'table.md'}", file=sys.stderr)
    flagged = [f for r in rows for f in r.flags()]
    for f in flagged:
        print(f"[{PROG}] {f}", file=sys.stderr)
    return EXIT_CONTRADICTION if flagged else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
