#!/usr/bin/env python
"""Before / after a refactor, side by side in one run: per-rank peak memory and CPU time of
`scripts/bench_bounds.py` and of `scripts/bench_bab.py` (bench_bab.sh's memory pair), each run
from its own checkout (its own scripts, its own package).

    .venv/bin/python scripts/bench_house.py --before /tmp/base --after . [--rounds 2] [--out out/bench_house]

A *round* runs every measurement once for `before`, then once for `after` (alternating, so a
change in the machine's load hits both). CPU time is the user + system time of the measured
processes (torchrun's workers included), from `resource.getrusage(RUSAGE_CHILDREN)`; per-rank
peaks come from the memory meter (`--meter`) and are the same in every round. Writes
OUT/house.csv and OUT/house.md and prints the table.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _run(tree: Path, cmd: list[str]) -> float:
    env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS="1")
    before = _cpu()
    subprocess.run(cmd, cwd=tree, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return _cpu() - before


def bounds_job(tree: Path, out: Path, args) -> dict:
    csv_path = out / f"bounds-{tree.name}.csv"
    cpu = _run(tree, [sys.executable, "scripts/bench_bounds.py", "--models", args.bounds_models,
                      "--repeats", str(args.repeats), "--csv", str(csv_path)])
    rows = list(csv.DictReader(open(csv_path)))
    return {"cpu_s": cpu, "ours_s": {f"{r['model']} {r['method']}": float(r["ours_s"]) for r in rows}}


def bab_job(tree: Path, out: Path, args, world: int) -> dict:
    res = out / f"bab-{tree.name}-{world}"
    res.mkdir(parents=True, exist_ok=True)
    (res / "results.jsonl").unlink(missing_ok=True)
    common = ["scripts/bench_bab.py", "run", "--out", str(res), "--batch", "512", "--rounds", str(args.bab_rounds),
              "--meter", "--timeout", "600"]
    if world == 1:
        cmd = [sys.executable, *common, "--label", "one process"]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(world),
               *common, "--label", "spec", "--mesh", f"1x{world}", "--plan", "spec"]
    cpu = _run(tree, cmd)
    row = json.loads((res / "results.jsonl").read_text().splitlines()[-1])
    return {"cpu_s": cpu, "peak": max(row["peak_bytes_per_rank"]), "domains": row["domains_visited"]}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", required=True)
    p.add_argument("--after", default=str(ROOT))
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3, help="bench_bounds.py --repeats")
    p.add_argument("--bounds-models", default="mnist_256x6")
    p.add_argument("--bab-rounds", type=int, default=6)
    p.add_argument("--out", default=str(ROOT / "out" / "bench_house"))
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    trees = {"before": Path(args.before).resolve(), "after": Path(args.after).resolve()}
    got = {(side, what): [] for side in trees for what in ("bounds", "bab1", "bab2")}
    for _ in range(args.rounds):
        for side, tree in trees.items():
            got[(side, "bounds")].append(bounds_job(tree, out, args))
            got[(side, "bab1")].append(bab_job(tree, out, args, 1))
            got[(side, "bab2")].append(bab_job(tree, out, args, 2))
    rows = []
    for what, label in (("bounds", f"bench_bounds.py --models {args.bounds_models}"),
                        ("bab1", "bench_bab.py one process, batch 512, metered"),
                        ("bab2", "bench_bab.py --mesh 1x2 --plan spec, batch 512, metered")):
        row = {"measure": label}
        for side in trees:
            runs = got[(side, what)]
            row[f"{side}_cpu_s"] = statistics.median(r["cpu_s"] for r in runs)
            if what == "bounds":
                for key in runs[0]["ours_s"]:
                    row.setdefault("detail", {})[f"{side} {key} s"] = statistics.median(r["ours_s"][key] for r in runs)
            else:
                row[f"{side}_peak_MiB"] = runs[0]["peak"] / 2**20
                row[f"{side}_domains"] = runs[0]["domains"]
        rows.append(row)
    _write(rows, out, args)


def _write(rows, out: Path, args):
    cols = ["measure", "before_cpu_s", "after_cpu_s", "before_peak_MiB", "after_peak_MiB", "before_domains",
            "after_domains"]
    with open(out / "house.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols + ["detail"])
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.3f}" if isinstance(v, float) else json.dumps(v) if isinstance(v, dict) else v)
                        for k, v in r.items()})
    lines = [f"median of {args.rounds} alternating rounds; CPU = user + system seconds of the measured processes",
             "", "| measure | CPU before (s) | CPU after (s) | peak/rank before (MiB) | peak/rank after (MiB) | "
             "domains before | domains after |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        cells = [r["measure"]] + [("" if r.get(c) is None else f"{r[c]:.2f}" if isinstance(r[c], float) else str(r[c]))
                                  for c in cols[1:]]
        lines.append("| " + " | ".join(cells) + " |")
    details = [f"- {k} (wall, median of the medians): {v:.4f}" for r in rows for k, v in r.get("detail", {}).items()]
    text = "\n".join(lines + ([""] + details if details else [])) + "\n"
    (out / "house.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
