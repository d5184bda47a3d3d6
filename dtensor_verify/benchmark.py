"""`dtensor-verify benchmark DIR --csv OUT`: every instance of a VNN-COMP benchmark folder.

Results survive an interrupted run: each instance's CSV row is appended, flushed and synced as
soon as the instance ends, and `--resume` skips the instances that already have a row (keeping
those rows). Under torchrun, `--shard-instances` splits the instances over the ranks (rank r of
P takes instances r, r+P, ...), each rank on its own device, all appending to the one CSV under
a file lock; rank 0 prints the summary of every rank's rows. Without it `benchmark` refuses to
run under torchrun: every rank would run every instance and write the same file.

An instance stuck past its limit (a step that never reaches a clock check) gets a `timeout` row
from a watchdog, and the runner re-executes itself to go on with the next instances
(bench_watch.py): every instance gets its row.
"""
from __future__ import annotations

import csv
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .benchmark_csv import (FIELDS, REQUIRED, append_row, norm_key as _norm_key, output_constraints_cell,  # noqa: F401
                            prepare_csv, read_rows)
from .cli_common import (EXIT_CONTRADICTION, EXIT_OK, PROG, CliError, bab_options, err, load_model, one_line,
                         user_errors)


@dataclass(frozen=True)
class Instance:
    onnx: str          # as written in instances.csv (relative to the folder)
    vnnlib: str
    timeout: float

    @property
    def key(self) -> tuple[str, str]:
        return (_norm_key(self.onnx), _norm_key(self.vnnlib))

    @property
    def label(self) -> str:
        """How log lines and the progress bar name the instance."""
        return f"{_short(self.onnx)} {_short(self.vnnlib)}"


def _short(path: str) -> str:
    name = Path(path).name
    for suffix in (".gz", ".onnx", ".vnnlib"):
        name = name[:-len(suffix)] if name.endswith(suffix) else name
    return name


def _resolve(base: Path, rel: str) -> Path:
    p = Path(rel)
    if not p.is_absolute():
        p = base / p
    if not p.exists() and Path(str(p) + ".gz").exists():
        p = Path(str(p) + ".gz")
    return p


# ------------------------------------------------------------------------------------------ input files

def read_instances(path: Path) -> list[Instance]:
    rows = []
    with open(path, newline="") as fh:
        for lineno, row in enumerate(csv.reader(fh), 1):
            row = [c.strip() for c in row]
            if not row or not any(row) or row[0].startswith("#"):
                continue
            if len(row) < 3:
                raise CliError(f"{path}:{lineno}: expected 'onnx, vnnlib, timeout'")
            try:
                timeout = float(row[2])
            except ValueError:
                if lineno == 1:   # a header line
                    continue
                raise CliError(f"{path}:{lineno}: timeout '{row[2]}' is not a number") from None
            rows.append(Instance(row[0], row[1], timeout))
    return rows


def read_expected(path: Path) -> dict:
    out = {}
    with open(path, newline="") as fh:
        header = None
        for lineno, row in enumerate(csv.reader(fh), 1):
            row = [c.strip() for c in row]
            if not row or not any(row):
                continue
            if header is None and lineno == 1 and "verdict" in [c.lower() for c in row]:
                header = [c.lower() for c in row]
                continue
            if header:
                rec = dict(zip(header, row))
                onnx_p, vnn_p, verdict = rec.get("onnx"), rec.get("vnnlib"), rec.get("verdict")
            else:
                onnx_p, vnn_p, verdict = (row + ["", "", ""])[:3]
            if not onnx_p or not vnn_p or not verdict:
                raise CliError(f"{path}:{lineno}: expected 'onnx, vnnlib, verdict'")
            verdict = {"violated": "sat", "holds": "unsat"}.get(verdict.lower(), verdict.lower())
            out[(_norm_key(onnx_p), _norm_key(vnn_p))] = verdict
    return out


def agreement(verdict: str, expected: str | None) -> str:
    if not expected:
        return ""
    if verdict == expected:
        return "agree"
    if {verdict, expected} == {"sat", "unsat"}:
        return "CONTRADICTION"
    return "unsolved"


# ------------------------------------------------------------------------------------------ ranks

@dataclass
class Share:
    """This process's part of the instances: all of them, or every P-th under torchrun."""
    rank: int = 0
    world: int = 1

    def take(self, instances: list) -> list:
        return instances[self.rank::self.world]

    def tag(self) -> str:
        return f"[rank {self.rank}/{self.world}] " if self.world > 1 else ""


def _share(args, instances) -> Share:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Share()
    if not args.shard_instances:
        raise CliError(f"benchmark under torchrun ({world} ranks) would run every instance on every rank and "
                       "write the same CSV: add --shard-instances (rank r runs instances r, r+P, ...; all "
                       "ranks append to the one --csv), or run it as one process")
    return Share(int(os.environ.get("RANK", "0")), world)


def _process_group(share: Share, instances: list[Instance], scale: float):
    """A gloo group only to keep the ranks in step around the CSV: rank 0 starts the file before
    anyone appends, and prints the summary after everyone is done. Its timeout covers the longest
    a rank can take (every instance at its full time limit) plus ten minutes of loading."""
    import datetime

    import torch.distributed as dist

    if not dist.is_initialized():
        budget = sum(i.timeout for i in instances) * scale + 600.0
        dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=budget))
    return dist


# ------------------------------------------------------------------------------------------ run

def _select(args) -> tuple[Path, list[Instance]]:
    base = Path(args.dir)
    if not base.is_dir():
        raise CliError(f"{args.dir}: not a directory")
    inst_path = Path(args.instances) if args.instances else base / "instances.csv"
    if not inst_path.exists():
        raise CliError(f"{inst_path}: no such file")
    instances = read_instances(inst_path)
    if args.filter:
        instances = [i for i in instances if args.filter in i.onnx or args.filter in i.vnnlib]
    if args.limit is not None:
        instances = instances[:args.limit]
    if not instances:
        raise CliError(f"{inst_path}: no instances to run" + (f" (filter '{args.filter}')" if args.filter else ""))
    return inst_path, instances


def cmd_benchmark(args) -> int:
    inst_path, instances = _select(args)
    from .run_guard import refuse_overlaps

    refuse_overlaps({"--csv": args.csv}, [("--instances", inst_path), ("--expected", args.expected)]
                    + [("an instance", Path(args.dir) / f) for i in instances for f in (i.onnx, i.vnnlib)])
    expected = read_expected(Path(args.expected)) if args.expected else {}
    if not args.timeout_scale > 0:
        raise CliError("--timeout-scale must be > 0")
    share = _share(args, instances)
    from .device import resolve_device, use_device

    device = resolve_device(args.device, what=f"--device {args.device}")
    use_device(device)
    out = Path(args.csv)
    from .bench_watch import restarted

    # A runner re-executed after a stuck instance keeps the rows and joins no process group.
    resume = args.resume or restarted()
    dist = _process_group(share, instances, args.timeout_scale) if share.world > 1 and not restarted() else None
    if share.rank == 0 and not restarted():
        prepare_csv(out, args.resume)
    if dist is not None:
        dist.barrier()
    done = read_rows(out) if resume else {}
    todo = [i for i in share.take(instances) if i.key not in done]
    skipped = len(share.take(instances)) - len(todo)
    if skipped:
        print(f"{share.tag()}resuming {out}: {skipped} instance(s) already there, {len(todo)} to run",
              file=sys.stderr)

    _run_instances(args, Path(args.dir), todo, expected, device, out, share)

    if share.world > 1:
        if share.rank != 0:
            return EXIT_OK
        _wait_for_ranks(out, instances, args.timeout_scale)
    rows = read_rows(out)
    return _summary(inst_path, [rows[i.key] for i in instances if i.key in rows], expected, out)


def _wait_for_ranks(out: Path, instances: list[Instance], scale: float) -> None:
    """Rank 0, at the end under torchrun: until every rank's instances have their rows (the ranks
    meet through the CSV, not a barrier: a rank re-executed after a stuck instance is in no
    process group), at most their limits with the watchdog's grace plus ten minutes."""
    from .bench_watch import default_grace, wait_for_rows

    budget = sum(i.timeout * scale + default_grace(i.timeout * scale) for i in instances) + 600.0
    if not wait_for_rows(lambda: read_rows(out).keys(), [i.key for i in instances], budget):
        err(f"{out}: some ranks' instances have no row after {budget:.0f} s; the summary has the rows there are")


def _watch(args, expected: dict, out: Path, share: Share):
    """The watchdog of the instances (bench_watch.py): a stuck one gets a `timeout` row."""
    from .bench_watch import InstanceWatch

    def write_row(inst, seconds, message):
        exp = expected.get(inst.key)
        append_row(out, {"onnx": inst.onnx, "vnnlib": inst.vnnlib, "verdict": "timeout",
                         "seconds": f"{seconds:.3f}", "expected": exp or "", "agreement": agreement("timeout", exp),
                         "decided_by": "", "message": message})

    return InstanceWatch(write_row, grace_s=getattr(args, "stuck_grace", None),
                         say=lambda inst, msg: _instance_log(share.tag() + inst.label)(msg))


def _run_instances(args, base: Path, todo: list[Instance], expected: dict, device, out: Path, share: Share):
    with _watch(args, expected, out, share) as watch:
        _run_watched(args, base, todo, expected, device, out, share, watch)


def _run_watched(args, base: Path, todo: list[Instance], expected: dict, device, out: Path, share: Share, watch):
    from tqdm import tqdm

    from .specs import read_vnnlib
    from .verify import verify_instance

    models: dict[str, object] = {}
    counts: dict[str, int] = {}
    # One bar per process; under torchrun only rank 0's (the others' would overwrite it).
    bar = tqdm(todo, desc=f"{share.tag()}instances", unit="inst", file=sys.stderr,
               disable=args.quiet or share.rank != 0, dynamic_ncols=True)
    for inst in bar:
        t0 = time.perf_counter()
        watch.arm(inst, inst.timeout * args.timeout_scale, t0)
        say = _instance_log(share.tag() + inst.label)
        onnx_path, vnn_path = _resolve(base, inst.onnx), _resolve(base, inst.vnnlib)
        decided_by, message, bab = "", "", {}
        try:
            model = _cached_model(models, str(onnx_path), device)
            prop = read_vnnlib(str(vnn_path), n_inputs=model.n_inputs, n_outputs=model.n_outputs)
            limit = inst.timeout * args.timeout_scale - (time.perf_counter() - t0)
            res = verify_instance(model, prop, str(onnx_path), max(limit, 0.0), methods=tuple(args.methods),
                                  log=say if args.verbose else None, bab=not args.no_bab,
                                  bab_options=bab_options(args))
            verdict, decided_by, message = res.verdict, res.decided_by or "", res.message or ""
            bab = _bab_columns(res.bounds.get("bab"))
            bab["output_constraints"] = output_constraints_cell(res.bounds.get("output_constraints"))
            bab["phases"] = _phase_column(res.phases)
        except user_errors() as exc:
            verdict, message = "error", one_line(exc)
        exp = expected.get(inst.key)
        agree = agreement(verdict, exp)
        watch.claim()                   # (blocks for good if the watchdog wrote this row instead)
        append_row(out, {"onnx": inst.onnx, "vnnlib": inst.vnnlib, "verdict": verdict,
                         "seconds": f"{time.perf_counter() - t0:.3f}", "expected": exp or "",
                         "agreement": agree, "decided_by": decided_by, "message": message, **bab})
        counts[verdict] = counts.get(verdict, 0) + 1
        tally = " ".join(f"{k}={v}" for k, v in sorted(counts.items()))
        bar.set_postfix_str(f"last: {inst.label} {verdict} | {tally}")
        if agree == "CONTRADICTION" or (verdict == "error" and not args.quiet):
            say(f"{verdict}" + (f" (expected {exp})" if exp else "") + (f": {message}" if message else ""))
    bar.close()


def _bab_columns(stats: dict | None) -> dict:
    if not stats:
        return {}
    seconds = stats.get("seconds")
    rows = stats.get("rows_bounded")
    return {"bab_domains": stats.get("domains_visited_all_workers", stats.get("domains_visited", "")),
            "bab_depth": stats.get("max_depth", ""), "bab_batch": stats.get("batch_per_worker", ""),
            "bab_first_batch": stats.get("first_batch", ""),
            "bab_rows": f"{rows['kept']}/{rows['of']}" if rows else "",
            "bab_worst": _worst_cell(stats.get("global_margin")),
            "bab_seconds": "" if seconds is None else f"{seconds:.3f}"}


def _worst_cell(margin) -> str:
    """The worst open margin at the end (`BabStats.global_margin`), or "" where no domain was
    open (a proof) or none was bounded yet."""
    if margin is None or not math.isfinite(margin):
        return ""
    return f"{margin:.6g}"


def _phase_column(phases: dict | None) -> str:
    """The stages that ended, in order, with their seconds (`attack=1.20;crown=0.04`); a run that
    timed out spent the rest of its time in the next stage."""
    return ";".join(f"{name}={sec:.2f}" for name, sec in (phases or {}).items()
                    if isinstance(sec, (int, float)))


def _instance_log(label: str):
    """A logger whose every line names the instance (and the rank, under torchrun)."""
    from tqdm import tqdm

    def say(msg: str):
        tqdm.write(f"[{PROG}] {label}: {msg}", file=sys.stderr)
    return say


def _cached_model(models: dict, path: str, device):
    """Each network is loaded once per process; a file that fails to load fails every instance
    that uses it with the same message, without being read again."""
    if path not in models:
        try:
            models[path] = load_model(path, device)
        except user_errors() as exc:
            models[path] = exc
    model = models[path]
    if isinstance(model, BaseException):
        raise model
    return model


def _summary(inst_path: Path, rows: list[dict], expected: dict, out: Path) -> int:
    """The summary of every selected instance's row (this run's and resumed ones)."""
    for r in rows:          # resumed rows: agreement with today's --expected
        exp = expected.get((_norm_key(r["onnx"]), _norm_key(r["vnnlib"])))
        r["expected"], r["agreement"] = exp or "", agreement(r["verdict"], exp)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["verdict"]] = counts.get(r["verdict"], 0) + 1
    times = [float(r["seconds"]) for r in rows if _is_number(r.get("seconds"))] or [0.0]
    print(f"{len(rows)} instance(s) from {inst_path}")
    print("verdicts: " + ", ".join(f"{v} {counts.get(v, 0)}" for v in ("sat", "unsat", "unknown", "timeout", "error")))
    print(f"time: median {statistics.median(times):.2f} s, mean {statistics.mean(times):.2f} s, "
          f"max {max(times):.2f} s, total {sum(times):.1f} s")
    by: dict[str, int] = {}
    for r in rows:
        if r.get("decided_by"):
            by[r["decided_by"]] = by.get(r["decided_by"], 0) + 1
    if by:
        print("decided by: " + ", ".join(f"{k} {v}" for k, v in sorted(by.items())))
    contradictions = [r for r in rows if r["agreement"] == "CONTRADICTION"]
    if expected:
        n_agree = sum(r["agreement"] == "agree" for r in rows)
        n_unsolved = sum(r["agreement"] == "unsolved" for r in rows)
        n_missing = sum(r["agreement"] == "" for r in rows)
        print(f"expected verdicts: {n_agree} agree, {n_unsolved} unsolved, {len(contradictions)} contradiction(s)"
              + (f", {n_missing} without an expected verdict" if n_missing else ""))
        for r in rows:
            if r["agreement"] in ("agree", "unsolved", "CONTRADICTION"):
                print(f"  {r['agreement']:<13} {r['onnx']} {r['vnnlib']}: {r['verdict']} (expected {r['expected']})")
    print(f"results written to {out}")
    if contradictions:
        err(f"{len(contradictions)} verdict(s) contradict the expected ones")
        return EXIT_CONTRADICTION
    return EXIT_OK


def _is_number(text) -> bool:
    try:
        float(text)
        return True
    except (TypeError, ValueError):
        return False
