#!/usr/bin/env python
"""Input branch and bound configurations side by side on acasxu instances (one process, in-process).

    scripts/bench_input_bab.py --out OUT [--timeout 12] [--configs a,b] [--bench DIR] NET:PROP ...

NET:PROP names an acasxu_2023 instance (`2_7:1` is ACASXU_run2a_2_7 with prop_1). Every instance
runs once per configuration (`verify_instance` with the pipeline's attack, CROWN / alpha-CROWN and
branch and bound; model loading not timed), one after the other in this process, after one warm-up
run (the first `torch.optim.Adam` imports torch._dynamo: seconds). Configurations (CONFIGS below):
`main033037c` is the default before this change (`input_fsb`: 4 trial splits per sub-box, 20
optimisation steps per round, no coefficient floor, PGD in sub-boxes every round); `sb_floor`:
`input_sb` with the coefficient floor, CROWN per round, PGD every 4 rounds; `sb_floor_clip` (the
default) adds domain clipping (open sub-boxes shrunk to where a counterexample can lie);
`sb_floor_fill` adds `input_fill` (a small frontier split along the chosen dimension into more parts). Prints a
Markdown table (verdict, seconds, sub-boxes, depth per instance and config; decided count and
decided per minute per config) and writes OUT/input_bab_configs.csv and .md.
"""
from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEFAULT_BENCH = ROOT.parent.parent / "shared" / "benchmarks" / "acasxu_2023"

# name -> (BabOptions fields, input_sb coefficient floor)
CONFIGS = {
    "main033037c": ({"input_branching": "input_fsb", "input_iterations": 20, "input_fill": False, "input_clip": False,
                     "input_attack_every": 1, "input_max_batch": 2048}, 0.0),
    "sb": ({"input_branching": "input_sb", "input_fill": False, "input_clip": False}, 0.0),
    "sb_floor": ({"input_branching": "input_sb", "input_fill": False, "input_clip": False}, 0.1),
    "sb_floor_clip": ({"input_branching": "input_sb", "input_fill": False, "input_clip": True}, 0.1),  # default
    "widest": ({"input_branching": "input_widest", "input_fill": False, "input_clip": False}, 0.1),
    "fsb_floor": ({"input_branching": "input_fsb", "input_fill": False, "input_clip": False}, 0.1),
    "sb_floor_fill": ({"input_branching": "input_sb", "input_fill": True, "input_clip": False}, 0.1),
}


def run(bench: Path, inst: str, config: str, timeout: float) -> dict:
    import dtensor_verify as dv
    from dtensor_verify.bab import BabOptions
    from dtensor_verify.specs import read_vnnlib
    from dtensor_verify.verify import verify_instance

    sb = sys.modules["dtensor_verify.bab.branching.input_sb"]
    net, prop = inst.split(":")
    model = dv.load(str(bench / "onnx" / f"ACASXU_run2a_{net}_batch_2000.onnx.gz"))
    spec = read_vnnlib(str(bench / "vnnlib" / f"prop_{prop}.vnnlib.gz"), n_inputs=5, n_outputs=5)
    fields, floor = CONFIGS[config]
    sb.SB_COEFF_FLOOR = floor
    t = time.perf_counter()
    res = verify_instance(model, spec, None, timeout, bab_options=BabOptions(**fields))
    secs = time.perf_counter() - t
    bab = res.bounds.get("bab", {})
    return {"instance": inst, "config": config, "verdict": res.verdict, "seconds": round(secs, 2),
            "bab_seconds": round(bab.get("seconds", 0.0), 2), "subboxes": bab.get("domains_visited", 0),
            "depth": bab.get("max_depth", 0), "bounding_s": round(bab.get("phases", {}).get("bounding", 0.0), 2),
            "branching_s": round(bab.get("phases", {}).get("branching", 0.0), 2),
            "attack_s": round(bab.get("phases", {}).get("attack", 0.0), 2)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--bench", type=Path, default=DEFAULT_BENCH)
    p.add_argument("--timeout", type=float, default=12.0)
    p.add_argument("--configs", default="main033037c,sb_floor")
    p.add_argument("instances", nargs="+")
    args = p.parse_args()
    import torch

    torch.set_num_threads(1)
    configs = args.configs.split(",")
    args.out.mkdir(parents=True, exist_ok=True)
    run(args.bench, "1_1:2", configs[0], 5.0)                     # warm-up (imports), not counted
    rows = []
    for inst in args.instances:
        for config in configs:
            rows.append(run(args.bench, inst, config, args.timeout))
            print(",".join(str(v) for v in rows[-1].values()), flush=True)
    with open(args.out / "input_bab_configs.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    lines = ["| instance | " + " | ".join(configs) + " |", "|---|" + "---|" * len(configs)]
    for inst in args.instances:
        cells = [next(r for r in rows if r["instance"] == inst and r["config"] == c) for c in configs]
        lines.append(f"| {inst} | " + " | ".join(f"{r['verdict']} {r['seconds']:.1f} s ({r['subboxes']} boxes, "
                                                   f"depth {r['depth']})" for r in cells) + " |")
    summary = []
    for c in configs:
        mine = [r for r in rows if r["config"] == c]
        decided = [r for r in mine if r["verdict"] in ("sat", "unsat")]
        total = sum(r["seconds"] for r in mine)
        summary.append(f"{len(decided)}/{len(mine)} decided, {60 * len(decided) / total:.1f} per minute")
    lines.append("| **decided** | " + " | ".join(summary) + " |")
    text = "\n".join(lines)
    print(text)
    (args.out / "input_bab_configs.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
