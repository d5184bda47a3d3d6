"""Running alpha,beta-CROWN in its csv batch mode: one process a config group (restarted after a
crash or a hang on the next instance), or --parts chains of them side by side."""
from __future__ import annotations

import os
import queue
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .abcrown_output import Opened, Result, Visited, abcrown_verdict, parse_line
from .configs import abcrown_groups
from .instances import stage_gunzipped, write_instances_csv
from .records import HANG_FACTOR, PIDS_FILE, PROG, ROOT, ConfigGroup, Instance, Options, Outcome, ToolRun, quote


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


def abcrown_env(auto_lirpa: Path, onnx2pytorch: Path | None, env: dict) -> dict:
    """auto_LiRPA (and onnx2pytorch) from source first, so that no installed auto_LiRPA (the
    test reference 0.3) shadows it; this repository left out (abcrown has modules of its own)."""
    paths = [str(auto_lirpa)] + ([str(onnx2pytorch)] if onnx2pytorch else [])
    inherited = [p for p in env.get("PYTHONPATH", "").split(os.pathsep)
                 if p and Path(p).resolve() != ROOT]
    out = dict(env)
    out["PYTHONPATH"] = os.pathsep.join(paths + inherited)
    out["PYTHONUNBUFFERED"] = "1"
    return out


@dataclass
class Context:
    """What every abcrown process of one run shares."""
    opts: Options
    data_dir: Path              # the gunzipped instance files and the csvs abcrown reads
    env: dict                   # abcrown_env's
    work: Path
    deadline: float | None      # time.perf_counter() value, or None
    run: ToolRun                # its outcomes are filled in as results come

    def record(self, inst: Instance, out: Outcome) -> None:
        self.run.outcomes[inst.index] = out

    def fail(self, insts, verdict: str, message: str) -> None:
        for inst in insts:
            self.record(inst, Outcome(verdict, None, "", message))


@dataclass
class Segment:
    """How one abcrown process ended."""
    reason: str             # done | hang | crash | deadline | exit (ended outside an instance)
    next_row: int           # first row of the group's csv it gave no result for
    current: int | None     # the row it was working on when it stopped, if any
    message: str = ""


def abcrown_command(ctx: Context, group: ConfigGroup, csv_name: str, start: int) -> list[str]:
    opts = ctx.opts
    return [opts.python, str(opts.abcrown / "complete_verifier" / "abcrown.py"),
            "--config", str(group.config), "--root_path", str(ctx.data_dir), "--csv_name", csv_name,
            "--results_file", str(ctx.work / f"results_{Path(csv_name).stem}_from{start}.pkl"),
            "--timeout_scale", repr(opts.timeout_scale), "--device", opts.device,
            "--start", str(start), "--end", str(len(group.instances))]


def run_abcrown_group(ctx: Context, group: ConfigGroup, csv_name: str, log) -> None:
    """All instances of one config group in one abcrown process; after a crash or a hang (the
    instance is recorded as error / timeout) it starts again on the next instance."""
    members = group.instances
    start = 0
    while start < len(members):
        if ctx.deadline is not None and time.perf_counter() > ctx.deadline:
            ctx.fail(members[start:], "error", "not finished before --deadline")
            return
        cmd = abcrown_command(ctx, group, csv_name, start)
        ctx.run.commands.append(quote(cmd))
        log.write(f"\n===== {PROG}: {quote(cmd)}\n")
        log.flush()
        seg = _watch_abcrown(ctx, cmd, log, members, start)
        if seg.reason == "deadline":
            first = seg.current if seg.current is not None else seg.next_row
            ctx.fail(members[first:], "error", "not finished before --deadline")
            return
        if seg.reason in ("hang", "crash"):
            start = seg.current + 1
        elif seg.next_row >= len(members):
            return
        elif seg.next_row == start or seg.reason == "done":
            # no progress (e.g. it cannot start at all): do not loop
            ctx.fail(members[seg.next_row:], "error", seg.message or "abcrown gave no result")
            return
        else:
            start = seg.next_row     # it died between two instances: go on where it stopped


def _kill_group(proc) -> None:
    """abcrown in its own session: kill it with whatever it started (e.g. worker processes)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@dataclass
class _Watch:
    """Where one abcrown process is in its csv, as its output tells."""
    ctx: Context
    members: list[Instance]
    next_row: int
    current: int | None = None
    started: float = 0.0
    last_text: str = ""
    visited: int | None = None      # the open instance's branch-and-bound domains so far

    def feed(self, text: str) -> None:
        event = parse_line(text)
        if isinstance(event, Opened):
            self.current, self.started, self.visited = event.row, time.perf_counter(), None
        elif isinstance(event, Visited):
            self.visited = event.domains
        elif isinstance(event, Result) and self.current is not None:
            inst = self.members[self.current]
            verdict = abcrown_verdict(event.status, event.seconds, inst.limit)
            self.ctx.record(inst, Outcome(verdict, event.seconds, event.status, domains=self.visited))
            self.next_row, self.current = self.current + 1, None
        elif text:
            self.last_text = text

    def stop_reason(self, hang_grace: float) -> str:
        now = time.perf_counter()
        if self.ctx.deadline is not None and now > self.ctx.deadline:
            return "deadline"
        if self.current is not None and \
                now - self.started > self.members[self.current].limit * HANG_FACTOR + hang_grace:
            return "hang"
        return ""


def _watch_abcrown(ctx: Context, cmd, log, members: list[Instance], start: int) -> Segment:
    """Run one abcrown process, following its output: `idx: i, vnnlib ID: row` opens an
    instance, `Result: status in t seconds` closes it. Kills it on a hang or at the deadline."""
    proc = subprocess.Popen(cmd, env=ctx.env, cwd=ctx.work, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, bufsize=1, errors="replace",
                            start_new_session=True)
    with open(ctx.work / PIDS_FILE, "a") as fh:      # for a caller that must end them if this runner is killed
        fh.write(f"{proc.pid}\n")
    lines, watch, stop = _Lines(proc), _Watch(ctx, members, start), ""
    while True:
        line = lines.get(timeout=1.0)
        if line is None:
            break
        if line:
            log.write(line)
            watch.feed(line.strip())
        stop = watch.stop_reason(ctx.opts.hang_grace)
        if stop:
            _kill_group(proc)
            break
    rc = proc.wait()
    log.flush()
    return _segment(ctx, watch, stop, rc)


def _segment(ctx: Context, watch: _Watch, stop: str, rc: int) -> Segment:
    """How the process ended; a hang or a crash inside an instance is recorded for it."""
    current, next_row = watch.current, watch.next_row
    if stop == "hang":
        inst, ran = watch.members[current], time.perf_counter() - watch.started
        ctx.record(inst, Outcome("timeout", ran, "killed",
                                 f"no result {ran:.0f} s into its {inst.limit:g} s limit: killed"))
        return Segment("hang", next_row, current)
    if stop == "deadline":
        return Segment("deadline", next_row, current)
    if current is not None:
        ctx.record(watch.members[current], Outcome("error", None, "crashed",
                                                   f"abcrown exit status {rc}: {watch.last_text[:300]}"))
        return Segment("crash", next_row, current)
    if rc != 0:
        return Segment("exit", next_row, None, f"abcrown exit status {rc}: {watch.last_text[:300]}")
    return Segment("done", next_row, None, "abcrown ended without a result for this instance")


def _chain(ctx: Context, groups: list[ConfigGroup], k: int, parts: int, log_path: Path) -> None:
    """Part k of parts: every group's k-th, (k + parts)-th, ... instances, group after group."""
    with open(log_path, "w") as log:
        for n, group in enumerate(groups):
            members = group.instances[k::parts]
            if not members:
                continue
            sub = ConfigGroup(group.source, group.config, group.changes, members)
            csv_name = f"instances_{n}.csv" if parts == 1 else f"instances_{n}_part{k}.csv"
            write_instances_csv(ctx.data_dir / csv_name, members, gunzipped=True)
            run_abcrown_group(ctx, sub, csv_name, log)


def run_abcrown(opts: Options, family: str, instances: list[Instance], env: dict, work: Path,
                deadline: float | None) -> tuple[ToolRun, list[ConfigGroup]]:
    """Every config group's instances dealt round-robin to --parts abcrown process chains run
    side by side (sharing the device); each chain goes through the groups in turn."""
    run = ToolRun("abcrown", [Outcome(message="no result") for _ in instances])
    groups = abcrown_groups(family, instances, opts.abcrown, opts.abcrown_config, work)
    ctx = Context(opts, work / "abcrown_data", abcrown_env(opts.auto_lirpa, opts.onnx2pytorch, env),
                  work, deadline, run)
    stage_gunzipped(opts.bench, instances, ctx.data_dir)
    parts = max(1, min(opts.parts, len(instances)))
    logs = [opts.out / "abcrown.log"] if parts == 1 else [work / f"abcrown_part{k}.log" for k in range(parts)]
    t0 = time.perf_counter()
    threads = [threading.Thread(target=_chain, args=(ctx, groups, k, parts, logs[k]), daemon=True)
               for k in range(parts)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    run.wall = time.perf_counter() - t0
    if parts > 1:
        run.note = f"{parts} processes side by side (instances dealt round-robin)"
        with open(opts.out / "abcrown.log", "w") as out:
            for k, path in enumerate(logs):
                out.write(f"\n===== {PROG}: part {k} of {parts}\n")
                out.write(path.read_text(errors="replace") if path.exists() else "(no log)\n")
    return run, groups
