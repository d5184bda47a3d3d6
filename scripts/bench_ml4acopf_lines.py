#!/usr/bin/env python
"""The lookup table's lines (ops/lookup_table.py), three ways, side by side in one process (issue 21):

* `table`: session 5's rule: f as the table's own K ReLUs, all K + 2 candidates in one call
  ([..., K + 2, K] temporaries; the alpha step that was OOM-killed on the 300-bus model);
* `one`: f per segment, one candidate at a time (SCAN_ELEMENTS = 1);
* `blocks`: f per segment, candidates in blocks of at most SCAN_ELEMENTS values (the default).

For each instance: CROWN's bound (seconds, the margin) and `--alpha-steps` alpha-CROWN steps
(seconds per step, its CROWN start included, and the margin); `table`'s alpha steps only where `--table-alpha` names the
instance (its memory: 24 GB on the 300-bus prop2). Prints a table, writes CSV.

    PYTHONPATH=. nice -n 10 python scripts/bench_ml4acopf_lines.py --csv out.csv \\
        --instances 118_ieee_ml4acopf-linear-nonresidual:118_ieee_prop2 300_ieee_ml4acopf-linear-nonresidual:300_ieee_prop2
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BENCH = ROOT.parent / "shared" / "benchmarks" / "ml4acopf_2024"


def _old_table():
    """Session 5's LookupTable (f by the table's ReLUs, all candidates at once, no touch_points)."""
    import torch

    from dtensor_verify.ops import lookup_table as lt

    class Table(lt.LookupTable):
        def __getattribute__(self, name):
            if name == "touch_points":
                raise AttributeError(name)
            return super().__getattribute__(name)

        def f(self, x):
            return torch.matmul(torch.relu(x.unsqueeze(-1) - self.o.to(x)), self.w.to(x))

        def df(self, x):
            return torch.matmul((x.unsqueeze(-1) > self.o.to(x)).to(x), self.w.to(x))

        def intercepts(self, k, l, u):
            l, u = torch.broadcast_tensors(l, u)
            o = self.o.to(l)
            pts = torch.cat([l.unsqueeze(-1), u.unsqueeze(-1),
                             torch.minimum(torch.maximum(o, l.unsqueeze(-1)), u.unsqueeze(-1))], -1)
            vals = self.f(pts) - (k.unsqueeze(-1) if torch.is_tensor(k) else k) * pts
            ok = torch.isfinite(l) & torch.isfinite(u)
            return torch.where(ok, vals.min(-1).values, -torch.inf), torch.where(ok, vals.max(-1).values, torch.inf)
    return Table


def _use(model, how: str, original: dict):
    """Switch the model's lookup tables to `how` (see the module docstring)."""
    from dtensor_verify.ops import lookup_table as lt

    table = _old_table()
    lt.SCAN_ELEMENTS = 1 if how == "one" else (1 << 21)
    for node in model.graph.nodes:
        fn = getattr(node.op, "fn", None)
        if isinstance(fn, lt.LookupTable):
            base = original.setdefault(node.name, fn)
            if how == "table":
                new = table.__new__(table)
                new.__dict__.update(base.__dict__)
                node.op.fn = new
            else:
                node.op.fn = base


def _measure(model, box, C, d, steps: int) -> dict:
    """Under a deadline far away, as in the verdict pipeline (CPU sweeps in row chunks: without
    one, the 300-bus model's whole sweeps took 24 GB here)."""
    from dtensor_verify import deadline

    with deadline.checking(lambda: None, lambda: 1e9, model.layout):
        return _measure_now(model, box, C, d, steps)


def _measure_now(model, box, C, d, steps: int) -> dict:
    from dtensor_verify.methods.alpha_crown import AlphaOptions, alpha_crown
    from dtensor_verify.methods.dispatch import run_method

    t0 = time.perf_counter()
    res = run_method("crown", model.graph, box, C, model.layout, want_upper=False)
    out = {"crown_s": time.perf_counter() - t0, "crown_margin": float((res.lower - d).min())}
    if steps:
        t0 = time.perf_counter()
        a = alpha_crown(model.graph, box, C, model.layout, AlphaOptions(iterations=steps, patience=10 ** 6),
                        want_upper=False)
        out.update(alpha_s_per_step=(time.perf_counter() - t0) / max(a.iterations, 1),
                   alpha_margin=float((a.lower - d).min()), alpha_steps=a.iterations)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--instances", nargs="+", required=True, help="ONNX_STEM:VNNLIB_STEM (ml4acopf_2024)")
    ap.add_argument("--alpha-steps", type=int, default=3)
    ap.add_argument("--table-alpha", nargs="*", default=[], help="instances (ONNX_STEM:VNNLIB_STEM) where "
                    "`table` runs alpha-CROWN too")
    ap.add_argument("--csv", required=True, type=Path)
    args = ap.parse_args(argv)
    import torch

    from bench_ml4acopf_alpha import _problem

    torch.set_num_threads(1)
    rows = []
    for spec in args.instances:
        onnx, vnn = spec.split(":")
        model, box, C, d = _problem(str(BENCH / "onnx" / f"{onnx}.onnx.gz"), str(BENCH / "vnnlib" / f"{vnn}.vnnlib.gz"))
        original: dict = {}
        _measure(model, box, C, d, 0)                  # warm-up (the first call's start-up), not counted
        for how in ("table", "one", "blocks"):
            _use(model, how, original)
            steps = args.alpha_steps if how != "table" or spec in args.table_alpha else 0
            rows.append({"instance": spec, "lines": how, **_measure(model, box, C, d, steps)})
        _use(model, "blocks", original)
    fields = ["instance", "lines", "crown_s", "crown_margin", "alpha_steps", "alpha_s_per_step", "alpha_margin"]
    with open(args.csv, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    print(f"torch {torch.__version__}, threads 1, device cpu, load average {os.getloadavg()[0]:.2f}")
    print(f"{'instance':60} {'lines':>6} {'crown s':>8} {'margin':>10} {'alpha s/step':>12} {'margin':>10}")
    for r in rows:
        a = f"{r['alpha_s_per_step']:>12.2f} {r['alpha_margin']:>10.3f}" if "alpha_margin" in r else f"{'-':>12} {'-':>10}"
        print(f"{r['instance']:60} {r['lines']:>6} {r['crown_s']:>8.2f} {r['crown_margin']:>10.3f} {a}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
