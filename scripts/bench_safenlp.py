"""safenlp before / after the one-hidden-layer search (verify/shallow_stage.py), in one process:
each instance is verified twice at its VNN-COMP limit (20 s of verification: the model is loaded
once, start-up is not counted), first with the stage switched off (`before`: the pipeline as it
was, attack -> CROWN -> alpha-CROWN -> beta-CROWN branch and bound), then on (`after`), one after
the other so both see the same load. Prints a table and writes CSV (verdict, seconds, decided_by,
the search's domains / depth, BaB domains, message) and a markdown note with the conditions.

    python scripts/bench_safenlp.py --out OUT_PREFIX [--rows CSV] [--n 10 | --all-timeouts]
        [--threads 1] [--device cpu] [--scale 1.0] [--sides before after]

The instances: the `timeout` rows of `--rows` (a benchmark CSV with onnx, vnnlib, verdict
columns; default the H100 run docs/benchmarks/gpu_h100_2026-12-06_s4/safenlp_eb19d8b.csv), the
first `--n` of them (`--decided-by bab`: the rows branch and bound decided instead). `--scale F` multiplies the limits (say so next to the numbers).
"""
from __future__ import annotations

import argparse
import csv
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BENCH = Path(os.environ.get("BENCH_DIR", ROOT.parent / "shared" / "benchmarks")).resolve() / "safenlp"
ROWS = ROOT / "docs" / "benchmarks" / "gpu_h100_2026-12-06_s4" / "safenlp_eb19d8b.csv"
FIELDS = ["instance", "side", "verdict", "seconds", "decided_by", "shallow_domains", "shallow_depth",
          "shallow_s", "bab_domains", "message"]


def timeouts(rows: Path, decided_by: str | None = None) -> list[tuple[str, str]]:
    """The `timeout` rows (or, with `decided_by`, the rows that stage decided)."""
    with open(rows) as fh:
        return [(r["onnx"], r["vnnlib"]) for r in csv.DictReader(fh)
                if (r["decided_by"] == decided_by if decided_by else r["verdict"] == "timeout")]


def run_one(model, onnx: Path, vnnlib: Path, limit: float, shallow: bool) -> dict:
    from dtensor_verify.specs import read_vnnlib
    from dtensor_verify.verify import shallow_stage, verify_instance

    prop = read_vnnlib(str(vnnlib), model.n_inputs, model.n_outputs)
    saved = shallow_stage.ShallowSearch.run
    if not shallow:
        shallow_stage.ShallowSearch.run = lambda self, inst: None
    try:
        t = time.perf_counter()
        res = verify_instance(model, prop, str(onnx), limit)
        wall = time.perf_counter() - t
    finally:
        shallow_stage.ShallowSearch.run = saved
    sh, bab = res.bounds.get("shallow_bab") or {}, res.bounds.get("bab") or {}
    return {"verdict": res.verdict, "seconds": round(wall, 3), "decided_by": res.decided_by or "",
            "shallow_domains": sh.get("domains", ""), "shallow_depth": sh.get("max_depth", ""),
            "shallow_s": round(sh["seconds"], 3) if "seconds" in sh else "",
            "bab_domains": bab.get("domains_visited", ""), "message": (res.message or "")[:120]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="OUT_PREFIX: writes OUT_PREFIX.csv and .md")
    ap.add_argument("--rows", type=Path, default=ROWS)
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--all-timeouts", action="store_true")
    ap.add_argument("--decided-by", help="instead of the timeouts: the rows this stage decided (e.g. bab)")
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--sides", nargs="+", default=["before", "after"], choices=["before", "after"])
    args = ap.parse_args()
    import torch

    import dtensor_verify as dv

    torch.set_num_threads(args.threads)
    todo = timeouts(args.rows, args.decided_by)
    todo = todo if args.all_timeouts else todo[:args.n]
    load0, models, rows = os.getloadavg(), {}, []
    for onnx, vnnlib in todo:
        path = BENCH / (onnx + ".gz")
        if onnx not in models:
            models[onnx] = dv.load(str(path), device=args.device)
        name = f"{Path(onnx).parent.name}/{Path(vnnlib).name.split('.')[0]}"
        for side in args.sides:
            r = {"instance": name, "side": side,
                 **run_one(models[onnx], path, BENCH / (vnnlib + ".gz"), 20.0 * args.scale, side == "after")}
            rows.append(r)
            print(f"{name:34s} {side:6s} {r['verdict']:8s} {r['seconds']:7.2f} s  {r['decided_by']:12s} "
                  f"shallow {r['shallow_domains']!s:>6s} dom  bab {r['bab_domains']!s:>7s} dom", flush=True)
    load1 = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out.with_suffix(".csv"), "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    _summary(rows, args, load0, load1, todo, torch.__version__)


def _summary(rows, args, load0, load1, todo, torch_version) -> None:
    lines = ["| side | instances | unsat | sat | timeout | other | median s | max s |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for side in args.sides:
        rs = [r for r in rows if r["side"] == side]
        secs = sorted(r["seconds"] for r in rs)
        count = {k: sum(r["verdict"] == k for r in rs) for k in ("unsat", "sat", "timeout")}
        other = len(rs) - sum(count.values())
        med = secs[len(secs) // 2] if secs else 0.0
        lines.append(f"| {side} | {len(rs)} | {count['unsat']} | {count['sat']} | {count['timeout']} | {other} | "
                     f"{med:.2f} | {max(secs, default=0.0):.2f} |")
    which = f"rows decided by `{args.decided_by}`" if args.decided_by else "`timeout` rows"
    cond = (f"{len(todo)} safenlp instances (the {which} of {args.rows.name}), limit {20.0 * args.scale:g} s "
            f"of verification each (model loaded once, start-up not counted), device {args.device}, "
            f"{args.threads} torch thread(s), before and after one after the other in one process; "
            f"{os.cpu_count()} CPUs ({platform.machine()}), torch {torch_version}, "
            f"load average at the start {load0[0]:.2f} / end {load1[0]:.2f}; command: `{' '.join(sys.argv)}`")
    text = "\n".join(lines)
    print(text)
    print(cond)
    args.out.with_suffix(".md").write_text(text + "\n\n" + cond + "\n")


if __name__ == "__main__":
    main()
