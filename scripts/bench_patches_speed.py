#!/usr/bin/env python
"""CROWN's time on conv nets with patches, the code of a git revision ("before") against this
checkout ("after"), side by side in one run, with the bounds compared.

Each (model, code) cell runs in a fresh process with one thread: it puts its tree first on the
path, loads the model, and times `methods.crown.crown` on the first instance's first input box
with the instance's first output polytope as the spec `C` (what the verification pipeline's
Bound stage asks; `--all-outputs`: CROWN without a spec, every output a row), split into the
intermediate bounds (`intermediate_bounds`, timed per pre-activation node) and the rest. The
before tree is `git archive REV` in a temporary folder. The parent prints a table, writes CSV,
the JSON lines and a markdown table, and compares each model's bounds (after vs before).

    scripts/bench_patches_speed.py --before 9a60094 --models yolo_2023:TinyYOLO,cgan_2023:cGAN_imgSz32_nCh_1 \
        --max-rows 1024 --out docs/memory/patches_speed_cpu
    scripts/bench_patches_speed.py --before 9a60094 --models cgan_2023:cGAN_imgSz32_nCh_1 --order after,before
    # a GPU (no git there: stage the before code in an untracked folder and carry it)
    git archive 9a60094 | (mkdir -p .before_tree && tar -x -C .before_tree)
    scripts/bench_patches_speed.py --before-tree .before_tree --device cuda --models yolo_2023:TinyYOLO --out $OUT/ps

`--max-rows` (CrownOptions.max_rows, both codes): without it a CPU bounds every row of a node in
one sweep (TinyYOLO's 64 x 13 x 13 node then held more than 5 GiB); on a GPU the sweep's rows are
sized to the free memory (`alpha_budget.crown_max_rows`). `--rss-limit-mib` stops a cell whose
memory passes it (an error row).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT.parent / "shared" / "benchmarks"
CSV_KEYS = ["model", "code", "rev", "device", "time_s", "intermediate_s", "rest_s", "n_rows_spec", "max_rows", "threads",
            "torch", "lower_mean", "max_abs_diff", "max_rel_diff", "speedup", "slowest_nodes", "error"]


def _instance(model: str):
    """(onnx path, vnnlib path) of the first instance of `folder:net` in the folder's instances.csv."""
    folder, net = model.split(":")
    for row in csv.reader(open(BENCH / folder / "instances.csv")):
        if Path(row[0]).name.replace(".onnx", "") == net:
            onnx, vnnlib = (BENCH / folder / (r.strip() + ".gz") for r in row[:2])
            return onnx, vnnlib
    raise SystemExit(f"{model}: not in {BENCH / folder / 'instances.csv'}")


def _case(model: str, all_outputs: bool, path: Path) -> int:
    """Save the first box and spec of `model` (read by this checkout) to `path`; rows of C."""
    import torch

    import dtensor_verify as dv
    from dtensor_verify.specs import read_vnnlib

    onnx, vnnlib = _instance(model)
    m = dv.load(onnx)
    prop = read_vnnlib(vnnlib)
    region = prop.regions[0]
    shape = (1, *m.input_shape)
    xl = torch.as_tensor(region.lower, dtype=torch.float32).reshape(shape)
    xu = torch.as_tensor(region.upper, dtype=torch.float32).reshape(shape)
    C = None if all_outputs else torch.as_tensor(region.disjuncts[0].C, dtype=torch.float32).unsqueeze(0)
    torch.save({"onnx": str(onnx), "xl": xl, "xu": xu, "C": C}, path)
    return 0 if C is None else C.shape[1]


def run_cell(tree: str, case: str, max_rows: int | None, bounds_out: str, device: str = "cpu") -> dict:
    """One cell, in this process: the code of `tree`, timed (on `device`: cpu or cuda[:N])."""
    sys.path.insert(0, tree)
    import torch

    torch.set_num_threads(1)
    import importlib

    import dtensor_verify as dv
    crown_mod = importlib.import_module("dtensor_verify.methods.crown")
    assert Path(crown_mod.__file__).resolve().is_relative_to(Path(tree).resolve()), crown_mod.__file__
    c = torch.load(case)
    m = dv.load(c["onnx"], device=device)
    box = (c["xl"].to(device), c["xu"].to(device))
    C = None if c["C"] is None else c["C"].to(device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    nodes, phases = {}, {}
    real_rows, real_inter = crown_mod.node_bound_rows, crown_mod.intermediate_bounds

    def timed_rows(graph, name, rows, *a, **k):
        t = time.perf_counter()
        out = real_rows(graph, name, rows, *a, **k)
        nodes[name] = nodes.get(name, 0.0) + time.perf_counter() - t
        return out

    def timed_inter(*a, **k):
        t = time.perf_counter()
        out = real_inter(*a, **k)
        phases["intermediate"] = time.perf_counter() - t
        return out
    crown_mod.node_bound_rows, crown_mod.intermediate_bounds = timed_rows, timed_inter
    sync()
    t0 = time.perf_counter()
    with torch.no_grad():
        lo, up, _ = crown_mod.crown(m.graph, box, C, m.layout, crown_mod.CrownOptions(max_rows=max_rows))
    sync()
    elapsed = time.perf_counter() - t0
    torch.save({"lower": lo.cpu(), "upper": up.cpu()}, bounds_out)
    inter = phases.get("intermediate", 0.0)
    slow = sorted(nodes.items(), key=lambda kv: -kv[1])[:4]
    return {"time_s": elapsed, "intermediate_s": inter, "rest_s": elapsed - inter,
            "slowest_nodes": "; ".join(f"{k} {v:.1f}s" for k, v in slow), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "max_rows": max_rows, "lower_mean": float(lo.mean()), "device": device}


def _watchdog(limit_mib: float) -> None:
    import threading

    def watch():
        while True:
            rss = int(next(ln for ln in open("/proc/self/status") if ln.startswith("VmRSS")).split()[1]) / 1024
            if rss > limit_mib:
                print(f"RSS {rss:.0f} MiB passed the limit of {limit_mib:.0f} MiB: stopped", file=sys.stderr,
                      flush=True)
                os._exit(3)
            time.sleep(0.1)
    threading.Thread(target=watch, daemon=True).start()


def _spawn(tree: Path, case: Path, bounds: Path, args) -> dict:
    cmd = [sys.executable, __file__, "cell", "--tree", str(tree), "--case", str(case), "--bounds-out", str(bounds),
           "--device", args.device]
    cmd += ["--max-rows", str(args.max_rows)] if args.max_rows else []
    cmd += ["--rss-limit-mib", str(args.rss_limit_mib)] if args.rss_limit_mib else []
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(tree))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout ({args.timeout:.0f} s)"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode or not lines:
        said = [ln for ln in proc.stderr.strip().splitlines() if "warn" not in ln.lower()] or ["?"]
        return {"error": f"exit {proc.returncode}: {said[-1][:200]}"}
    return json.loads(lines[-1])


def _compare(rows: list[dict], files: dict) -> None:
    """After's bounds against before's: largest absolute and relative difference; the speedup."""
    import torch

    by = {r["code"]: r for r in rows if "error" not in r}
    if "before" not in by or "after" not in by:
        return
    a, b = torch.load(files["after"]), torch.load(files["before"])
    diffs = [(a[k] - b[k]).abs() for k in ("lower", "upper")]
    scale = [b[k].abs().clamp(min=1e-3) for k in ("lower", "upper")]
    by["after"]["max_abs_diff"] = max(float(d.max()) for d in diffs)
    by["after"]["max_rel_diff"] = max(float((d / s).max()) for d, s in zip(diffs, scale))
    by["after"]["speedup"] = by["before"]["time_s"] / by["after"]["time_s"]


def run_all(args) -> list[dict]:
    tmp = Path(tempfile.mkdtemp(prefix="dv_patches_speed_"))
    before = args.before_tree or tmp / "before"
    if args.before_tree is None:
        before.mkdir()
        subprocess.run(f"git -C {ROOT} archive {args.before} | tar -x -C {before}", shell=True, check=True)
    trees = {"before": before, "after": ROOT}
    rows = []
    for model in args.models.split(","):
        case = tmp / f"{model.replace(':', '_')}.pt"
        n_spec = _case(model, args.all_outputs, case)
        model_rows, files = [], {}
        for code in args.order.split(","):
            files[code] = tmp / f"{model.replace(':', '_')}_{code}_bounds.pt"
            row = {"model": model, "code": code, "rev": args.before if code == "before" else _head(),
                   "n_rows_spec": n_spec or "all outputs", **_spawn(trees[code], case, files[code], args)}
            model_rows.append(row)
            print(json.dumps(row), flush=True)
        _compare(model_rows, files)
        rows += model_rows
    return rows


def _head() -> str:
    if os.environ.get("DTENSOR_VERIFY_COMMIT"):     # the caller's commit (a device copy's git metadata is stale)
        return os.environ["DTENSOR_VERIFY_COMMIT"]
    out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return out.stdout.strip() + ("+dirty" if dirty else "")


def write(rows: list[dict], out: Path, load_start: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with open(out / "patches_speed.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_KEYS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    load_end = " ".join(open("/proc/loadavg").read().split()[:3])
    lines = [f"load average at start: {load_start}; at the end: {load_end}", "",
             "| model | code | rev | spec rows | CROWN s | intermediate s | output s | slowest nodes | "
             "speedup | bounds vs before (max abs / rel) |",
             "| --- | --- | --- | --- | ---: | ---: | ---: | --- | ---: | --- |"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['code']} | {r['rev']} | | error: {r['error']} | | | | | |")
            continue
        vs = f"{r['max_abs_diff']:.2g} / {r['max_rel_diff']:.2g}" if "max_abs_diff" in r else "-"
        sp = f"**{r['speedup']:.2f}x**" if "speedup" in r else "-"
        lines.append(f"| {r['model']} | {r['code']} | {r['rev']} | {r['n_rows_spec']} | {r['time_s']:.1f} | "
                     f"{r['intermediate_s']:.1f} | {r['rest_s']:.1f} | {r['slowest_nodes']} | {sp} | {vs} |")
    (out / "patches_speed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv=None) -> int:
    global BENCH
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("cmd", nargs="?", default="all", choices=("all", "cell"))
    p.add_argument("--before", default="9a60094", help="git revision of the 'before' code")
    p.add_argument("--before-tree", type=Path, default=None,
                   help="a folder holding the 'before' code already (`git archive REV | tar -x -C DIR`; where there is "
                        "no git, e.g. a device machine)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (the cells' CROWN; timed with synchronize)")
    p.add_argument("--models", default="yolo_2023:TinyYOLO,cgan_2023:cGAN_imgSz32_nCh_1")
    p.add_argument("--order", default="before,after", help="order of the cells of each model")
    p.add_argument("--all-outputs", action="store_true", help="CROWN without a spec (every output a row)")
    p.add_argument("--max-rows", type=int, default=None, help="CrownOptions.max_rows (both codes)")
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--rss-limit-mib", type=float, default=None)
    p.add_argument("--benchmarks", type=Path, default=BENCH)
    p.add_argument("--out", type=Path)
    p.add_argument("--tree"), p.add_argument("--case"), p.add_argument("--bounds-out")
    args = p.parse_args(argv)
    BENCH = args.benchmarks
    if args.cmd == "cell":
        if args.rss_limit_mib:
            _watchdog(args.rss_limit_mib)
        print(json.dumps(run_cell(args.tree, args.case, args.max_rows, args.bounds_out, args.device)))
        return 0
    load = " ".join(open("/proc/loadavg").read().split()[:3])
    rows = run_all(args)
    if args.out:
        write(rows, args.out, load)
    return 0


if __name__ == "__main__":
    sys.exit(main())
