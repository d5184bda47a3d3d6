#!/usr/bin/env python
"""Time to verdict of branch and bound, one process vs `--mesh 2x1` (CPU gloo), side by side in one run.

    scripts/bench_bab_scaling.py --out OUT [--timeout 30] [--repeats 1] [--jobs 1] [--pin]
                                 [--bench-root DIR] [--variant NAME=ARGS ...] [INSTANCE ...]

The target instances of issue 21 by default (`DEFAULT`): the two mnist-net_256x4 properties that need
ReLU branch and bound (prop_8_0.03, prop_3_0.05), one oval21 instance with seconds of ReLU branch and
bound, and acasxu_2023 instances whose one-process input branch and bound takes seconds. An INSTANCE
is `FAMILY/ONNX,VNNLIB,SPLIT` (paths relative to the family's folder under --bench-root; SPLIT: relu |
input | auto).

Every instance runs `dtensor-verify run --json` once on one process and once under torchrun on 2
processes (`--mesh 2x1`), one thread per rank (`--threads 1`, OMP_NUM_THREADS=1), the two one after
the other (the order alternates between repeats). `--jobs N` runs N instances at once (each job
takes at most 3 cores: keep 3 x N below the idle cores). Columns per run: verdict; time to verdict
(the JSON's `seconds`, the pipeline's clock from the attack to the verdict) and the process wall
time (start-up and model loading included); seconds in branch and bound and before it; alpha-CROWN's
seconds; domains (ReLU) or sub-boxes (input) bounded by all workers and their rate in branch and
bound. Ratios are 2x1 / one process (medians over repeats). The targets of issue 21: time to verdict
at 2x1 <= 0.65x where the one-process run spends >= 5 s in branch and bound; sub-boxes per second
>= 1.7x for input splitting.

`--pin`: `taskset` each run to its own cores (job j: one process on core 2j, the dp run on cores
2j and 2j+1). CPU seconds (`cpu_seconds` of the JSON: rank 0's process time over the pipeline's clock
and over branch and bound) are reported next to the wall clock: on a loaded machine, where ranks wait
for cores, their ratio is the work a rank did, an estimate of the quiet machine's time ratio.

Writes OUT/bab_scaling_runs.csv (every run), OUT/bab_scaling.csv (per instance, medians),
OUT/bab_scaling.md (the tables and the conditions: cores, load, torch, commit) and prints the tables.

`--variant NAME=ARGS` (repeatable): every instance also runs with these extra `dtensor-verify run`
arguments (e.g. `w1=--bab-split-width 1`, `w3=--bab-split-width 3`), the variants one after the
other inside each repeat (their order alternates too), so their one-process and 2x1 runs are side
by side in one run; rows are named `INSTANCE [NAME]`. The JSON's split widths (rounds per width)
are in the runs CSV.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import csv
import json
import os
import platform
import queue
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ACAS = "acasxu_2023/onnx/ACASXU_run2a_{}_batch_2000.onnx.gz,vnnlib/prop_{}.vnnlib.gz,input"
OVAL = "oval21/onnx/cifar_base_kw.onnx.gz,vnnlib/cifar_base_kw-img{}.vnnlib.gz,relu"
DEFAULT = ["mnist_fc/onnx/mnist-net_256x4.onnx.gz,vnnlib/prop_8_0.03.vnnlib.gz,relu",
           "mnist_fc/onnx/mnist-net_256x4.onnx.gz,vnnlib/prop_3_0.05.vnnlib.gz,relu",
           # with wide rounds (bab/wide.py) the two above and img8194 spend < 5 s in one-process BaB on
           # this CPU; prop_11_0.05 (~14 s), img6767 (~5.5 s) and img2578 (~6 s) still spend more
           "mnist_fc/onnx/mnist-net_256x4.onnx.gz,vnnlib/prop_11_0.05.vnnlib.gz,relu",
           # oval21 (CIFAR conv net, 3172 ReLUs)
           OVAL.format("8194-eps0.018300653594771243"), OVAL.format("6767-eps0.020000000000000004"),
           OVAL.format("2578-eps0.021176470588235297"),
           # one-process input BaB on acasxu: ~16 k, 16 k, 5 k, 4 k sub-boxes (the H100 run's counts)
           ACAS.format("1_1", 3), ACAS.format("3_3", 9), ACAS.format("1_1", 5), ACAS.format("4_7", 1)]
TARGET_TIME, TARGET_RATE, MIN_BAB_SECONDS = 0.65, 1.7, 5.0


def default_bench_root() -> Path:
    for cand in (ROOT.parent.parent / "shared" / "benchmarks", ROOT / ".bench_data", Path("/work/shared/benchmarks")):
        if (cand / "mnist_fc").is_dir():
            return cand
    return ROOT / ".bench_data"


def parse_instance(text: str):
    """(family, onnx, vnnlib, split) of `FAMILY/ONNX,VNNLIB[,SPLIT]`."""
    parts = text.split(",")
    if len(parts) not in (2, 3) or "/" not in parts[0]:
        raise SystemExit(f"bench_bab_scaling: bad instance {text!r} (FAMILY/ONNX,VNNLIB[,SPLIT])")
    family, onnx = parts[0].split("/", 1)
    return family, onnx, parts[1], parts[2] if len(parts) == 3 else "auto"


def _stem(path: str) -> str:
    name = Path(path).name
    for suffix in (".gz", ".onnx", ".vnnlib"):
        name = name.removesuffix(suffix)
    return name


def instance_name(inst) -> str:
    family, onnx, vnnlib, split = inst
    return f"{_stem(onnx)} {_stem(vnnlib)} ({split})"


def run_one(root: Path, inst, procs: int, timeout: float, out: Path, tag: str, device: str = "cpu",
            cores: list[int] | None = None, extra: list[str] = ()) -> dict:
    """One `dtensor-verify run` of the instance on `procs` processes; its numbers from the JSON."""
    family, onnx, vnnlib, split = inst
    res, js = out / f"{tag}.txt", out / f"{tag}.json"
    js.unlink(missing_ok=True)
    res.unlink(missing_ok=True)
    args = ["run", "--onnx", str(root / family / onnx), "--vnnlib", str(root / family / vnnlib),
            "--results", str(res), "--timeout", str(timeout), "--json", str(js), "--bab-split", split, "--quiet",
            "--device", device, *extra]
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)   # keep the caller's
    env = dict(os.environ, PYTHONPATH=path, OMP_NUM_THREADS="1")
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""        # a GPU host: CPU ranks, gloo, no CUDA start-up
    if procs == 1:
        cmd = [sys.executable, "-m", "dtensor_verify", "--threads", "1", *args]
    else:
        cmd = [sys.executable, "-m", "dtensor_verify.launch", "--standalone", "--nproc-per-node", str(procs),
               "-m", "dtensor_verify", "--threads", "1", *args, "--mesh", f"{procs}x1"]
    if cores:
        cmd = ["taskset", "-c", ",".join(str(c) for c in cores[:procs]), *cmd]
    t = time.perf_counter()
    with open(out / f"{tag}.log", "w") as log:
        subprocess.run(cmd, env=env, cwd=str(ROOT), stdout=log, stderr=subprocess.STDOUT, timeout=3 * timeout + 120)
    wall = time.perf_counter() - t
    data = json.loads(js.read_text()) if js.exists() else {}
    note = ""
    if not data:
        # No JSON: the watchdog ended the run at its limit (results file `timeout`) or it failed
        # (then the last line of its log says why).
        verdict = (res.read_text().split() or ["error"])[0] if res.exists() else "error"
        data = {"verdict": verdict, "seconds": timeout if verdict == "timeout" else float("nan")}
        lines = (out / f"{tag}.log").read_text(errors="replace").strip().splitlines()
        note = lines[-1][:300] if lines else "no output"
    bounds = data.get("bounds", {})
    bab = bounds.get("bab", {})
    n = bab.get("domains_visited_all_workers", bab.get("domains_visited", 0)) or 0
    bab_s = bab.get("seconds") or 0.0
    secs = data.get("seconds", float("nan"))
    return {"verdict": data.get("verdict", "error"), "seconds": secs, "wall": wall, "bab_seconds": bab_s,
            "pre_bab_seconds": secs - bab_s, "alpha_seconds": bounds.get("alpha-crown", {}).get("seconds", 0.0),
            "domains": n, "rate": n / bab_s if bab_s else 0.0, "rounds": bab.get("rounds", 0),
            "sync_seconds": bab.get("phases", {}).get("sync", 0.0), "note": note,
            "cpu_seconds": data.get("cpu_seconds") or float("nan"), "bab_cpu_seconds": bab.get("cpu_seconds", 0.0),
            "workers": bab.get("workers", ""), "split_widths": json.dumps(bab.get("split_widths", {}))}


def core_of(cpu: int) -> tuple[int, int]:
    """(package, core) of logical CPU `cpu` from sysfs; (cpu, 0) when the kernel does not say. Two
    logical CPUs with the same key are SMT siblings (one physical core)."""
    top = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
    try:
        return int((top / "physical_package_id").read_text()), int((top / "core_id").read_text())
    except (OSError, ValueError):
        return cpu, 0


def physical_first(cpus: list[int]) -> list[int]:
    """`cpus` with one logical CPU of every physical core first, then the siblings: pinned ranks of
    one run never share a physical core while there are enough (issue 21: cores 2j, 2j+1 may be SMT
    siblings, and a 2x1 run on one physical core does each rank's work slower than one process)."""
    seen: dict[tuple[int, int], int] = {}
    tiers: list[tuple[int, int]] = []
    for cpu in sorted(cpus):
        key = core_of(cpu)
        tiers.append((seen.get(key, 0), cpu))
        seen[key] = seen.get(key, 0) + 1
    return [cpu for _, cpu in sorted(tiers)]


def smt_note(cpus: list[int]) -> str:
    """'N logical CPUs on M physical cores' of the CPUs this run may use (the conditions line)."""
    return f"{len(cpus)} logical CPUs on {len({core_of(c) for c in cpus})} physical cores"


def pinned_cores(job: int, procs: int) -> list[int]:
    """The cores of job `job` (of those this process may use): `procs` of them, job 0 first, one
    logical CPU per physical core before any SMT sibling (`physical_first`)."""
    usable = physical_first(sorted(os.sched_getaffinity(0)))
    start = (job * procs) % max(1, len(usable))
    return [usable[(start + k) % len(usable)] for k in range(procs)]


def parse_variants(texts: list[str]) -> list[tuple[str, list[str]]]:
    """(name, extra args) of each `NAME=ARGS`; one unnamed variant without extra args by default."""
    out = []
    for text in texts:
        name, sep, extra = text.partition("=")
        if not sep or not name.strip():
            raise SystemExit(f"bench_bab_scaling: bad variant {text!r} (NAME=ARGS)")
        out.append((name.strip(), shlex.split(extra)))
    return out or [("", [])]


def variant_name(inst, variant: str) -> str:
    return f"{instance_name(inst)} [{variant}]" if variant else instance_name(inst)


def core_slots(args) -> "queue.Queue[int]":
    """One slot per concurrent job: a run takes a free slot (its cores) and gives it back, so two
    runs at once never share a core (an instance's index modulo --jobs did: a short instance's
    successor landed on the cores of a long one still running, and both ran at half speed)."""
    slots: queue.Queue[int] = queue.Queue()
    for j in range(max(1, args.jobs)):
        slots.put(j)
    return slots


def run_instance(root: Path, inst, i: int, args, slots: "queue.Queue[int]") -> list[dict]:
    slot = slots.get()
    try:
        return _run_instance(root, inst, i, args, pinned_cores(slot, args.procs) if args.pin else None)
    finally:
        slots.put(slot)


def _run_instance(root: Path, inst, i: int, args, cores: list[int] | None) -> list[dict]:
    rows = []
    variants = parse_variants(args.variant)
    for rep in range(args.repeats):
        order = (1, args.procs) if rep % 2 == 0 else (args.procs, 1)
        for v, (vname, extra) in enumerate(variants if rep % 2 == 0 else variants[::-1]):
            for procs in order:
                tag = f"i{i}_r{rep}_p{procs}" + (f"_{vname}" if vname else "")
                r = run_one(root, inst, procs, args.timeout, args.out, tag, args.device, cores, extra)
                name = variant_name(inst, vname)
                rows.append({"instance": name, "repeat": rep, "procs": procs, **r})
                print(f"  {name} repeat {rep} procs {procs}: {r['verdict']} {r['seconds']:.2f} s "
                      f"(BaB {r['bab_seconds']:.2f} s, {r['domains']} domains, {r['rounds']} rounds)"
                      + (f" [{r['note']}]" if r["note"] else ""), flush=True)
    return rows


def median_of(runs: list[dict], key: str) -> float:
    vals = [r[key] for r in runs if isinstance(r[key], (int, float))]
    return statistics.median(vals) if vals else float("nan")


def summarise(name: str, runs: list[dict], procs: int) -> dict:
    one = [r for r in runs if r["procs"] == 1]
    two = [r for r in runs if r["procs"] == procs]
    row = {"instance": name}
    for tag, side in (("p1", one), (f"p{procs}", two)):
        row[f"{tag}_verdicts"] = "/".join(r["verdict"] for r in side)
        for key in ("seconds", "wall", "bab_seconds", "pre_bab_seconds", "alpha_seconds", "domains", "rate",
                    "rounds", "sync_seconds", "cpu_seconds", "bab_cpu_seconds"):
            row[f"{tag}_{key}"] = median_of(side, key)

    def ratio(key):
        a, b = row[f"p1_{key}"], row[f"p{procs}_{key}"]
        return b / a if a else float("nan")

    row.update(time_ratio=ratio("seconds"), wall_ratio=ratio("wall"), pre_bab_ratio=ratio("pre_bab_seconds"),
               bab_ratio=ratio("bab_seconds"), rate_ratio=ratio("rate"), cpu_ratio=ratio("cpu_seconds"),
               bab_cpu_ratio=ratio("bab_cpu_seconds"))
    return row


def conditions(args, load_before, load_after, wall) -> list[str]:
    import torch

    # DTENSOR_VERIFY_COMMIT: the caller's commit where the checkout's git metadata is stale (a device copy)
    commit = os.environ.get("DTENSOR_VERIFY_COMMIT") or subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip() or "unknown"
    return [f"- command: `{' '.join(sys.argv)}`",
            f"- machine: {os.cpu_count()} cores, {len(os.sched_getaffinity(0))} usable by this run "
            f"({platform.processor() or platform.machine()}; {smt_note(sorted(os.sched_getaffinity(0)))}), "
            f"load average before {load_before}, after {load_after}",
            f"- torch {torch.__version__}, Python {platform.python_version()}, commit {commit}; one thread per "
            f"rank, --device {args.device}; limit {args.timeout:g} s; {args.repeats} repeat(s), {args.jobs} instance(s) at once",
            f"- whole run: {wall:.0f} s"]


def tables(rows: list[dict], procs: int) -> list[str]:
    p = f"p{procs}"
    lines = [f"| instance | 1 proc: verdict, s to verdict (BaB s) | {procs}x1: verdict, s (BaB s) | time {procs}x1/1 "
             f"| wall s 1 / {procs}x1 | before BaB s 1 / {procs}x1 | alpha-CROWN s 1 / {procs}x1 | BaB s ratio "
             f"| domains/s 1 / {procs}x1 | rate ratio | rounds 1 / {procs}x1 | BaB sync s {procs}x1 |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['instance']} | {r['p1_verdicts']}, {r['p1_seconds']:.2f} ({r['p1_bab_seconds']:.2f}) | "
            f"{r[p + '_verdicts']}, {r[p + '_seconds']:.2f} ({r[p + '_bab_seconds']:.2f}) | **{r['time_ratio']:.2f}** | "
            f"{r['p1_wall']:.1f} / {r[p + '_wall']:.1f} | {r['p1_pre_bab_seconds']:.2f} / {r[p + '_pre_bab_seconds']:.2f} | "
            f"{r['p1_alpha_seconds']:.2f} / {r[p + '_alpha_seconds']:.2f} | {r['bab_ratio']:.2f} | "
            f"{r['p1_rate']:.0f} / {r[p + '_rate']:.0f} | {r['rate_ratio']:.2f} | "
            f"{r['p1_rounds']:.0f} / {r[p + '_rounds']:.0f} | {r[p + '_sync_seconds']:.2f} |")
    lines += ["", f"CPU seconds of rank 0 (process time; the work done, without waiting for cores):", "",
              f"| instance | to verdict 1 / {procs}x1 | ratio | in BaB 1 / {procs}x1 | ratio | domains 1 / {procs}x1 |",
              "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['instance']} | {r['p1_cpu_seconds']:.2f} / {r[p + '_cpu_seconds']:.2f} | "
                     f"{r['cpu_ratio']:.2f} | {r['p1_bab_cpu_seconds']:.2f} / {r[p + '_bab_cpu_seconds']:.2f} | "
                     f"{r['bab_cpu_ratio']:.2f} | {r['p1_domains']:.0f} / {r[p + '_domains']:.0f} |")
    lines.append("")
    for r in rows:
        if r["p1_bab_seconds"] < MIN_BAB_SECONDS:
            lines.append(f"- {r['instance']}: one process spent {r['p1_bab_seconds']:.1f} s < {MIN_BAB_SECONDS:g} s "
                         "in branch and bound (outside the time target)")
            continue
        ok = "meets" if r["time_ratio"] <= TARGET_TIME else "MISSES"
        line = f"- {r['instance']}: time {r['time_ratio']:.2f}x ({ok} <= {TARGET_TIME})"
        if "(input)" in r["instance"]:
            ok = "meets" if r["rate_ratio"] >= TARGET_RATE else "MISSES"
            line += f"; sub-boxes/s {r['rate_ratio']:.2f}x ({ok} >= {TARGET_RATE})"
        lines.append(line)
    return lines


def write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--bench-root", type=Path, default=None, help="folder holding mnist_fc/, acasxu_2023/")
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--jobs", type=int, default=1, help="instances run at once (each takes up to 3 cores)")
    p.add_argument("--procs", type=int, default=2, help="ranks of the dp run (--mesh PROCSx1)")
    p.add_argument("--device", default="cpu", help="dtensor-verify's --device (default cpu: CPU gloo, also on a GPU host)")
    p.add_argument("--pin", action="store_true", help="taskset each run: 1 core for one process, PROCS for the dp run")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=ARGS",
                   help="also run every instance with these extra dtensor-verify run arguments (repeatable)")
    p.add_argument("instances", nargs="*", default=DEFAULT)
    args = p.parse_args()
    root = args.bench_root or default_bench_root()
    insts = [parse_instance(t) for t in args.instances]
    for fam, onnx, vnnlib, _ in insts:
        for f in (root / fam / onnx, root / fam / vnnlib):
            if not f.exists():
                raise SystemExit(f"bench_bab_scaling: {f}: no such file (--bench-root)")
    args.out.mkdir(parents=True, exist_ok=True)
    load_before, t0 = os.getloadavg(), time.perf_counter()
    with cf.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        slots = core_slots(args)
        futures = [pool.submit(run_instance, root, inst, i, args, slots) for i, inst in enumerate(insts)]
        runs = [f.result() for f in futures]
    wall = time.perf_counter() - t0
    load_after = os.getloadavg()
    write_csv(args.out / "bab_scaling_runs.csv", [r for rs in runs for r in rs])
    names = [variant_name(inst, v) for inst in insts for v, _ in parse_variants(args.variant)]
    flat = [r for rs in runs for r in rs]
    rows = [summarise(name, [r for r in flat if r["instance"] == name], args.procs) for name in names]
    write_csv(args.out / "bab_scaling.csv", rows)
    fmt = lambda la: "/".join(f"{x:.1f}" for x in la)  # noqa: E731
    text = "\n".join(tables(rows, args.procs) + [""] + conditions(args, fmt(load_before), fmt(load_after), wall))
    (args.out / "bab_scaling.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
