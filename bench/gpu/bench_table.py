#!/usr/bin/env python3
"""Markdown tables from `dtensor-verify benchmark` CSVs, one per (suite, device), side by side.

    python bench/gpu/bench_table.py OUT_DIR/*.csv [--bench BENCH_DIR] [--out table.md] [--title TEXT]

Each CSV's name says what it is: `<suite>_<device>.csv` (e.g. `mnist_fc_cuda.csv`,
`oval21_cpu.csv`), as bench/gpu/gpu_check.sh writes them. `--bench` (the folder holding
`<suite>/instances.csv`) adds how many instances each suite has, so unfinished runs show as such.

Table 1: verdict counts and times per suite and device. Table 2, per suite with two devices: the
instances both finished, how many verdicts agree, which differ (a sat / unsat disagreement is a
CONTRADICTION: one of them is unsound), and the time ratio on those instances.
"""
from __future__ import annotations

import argparse
import csv
import statistics
import sys
from pathlib import Path

VERDICTS = ("sat", "unsat", "unknown", "timeout", "error")


def read_run(path: Path) -> dict:
    """{(onnx, vnnlib): row} of one benchmark CSV (a later row for the same instance wins)."""
    with open(path, newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("verdict")]
    return {(r["onnx"], r["vnnlib"]): r for r in rows}


def suite_and_device(path: Path) -> tuple[str, str]:
    stem = path.name[:-4] if path.name.endswith(".csv") else path.name
    suite, _, device = stem.rpartition("_")
    if not suite:
        raise SystemExit(f"{path}: expected a name <suite>_<device>.csv")
    return suite, device


def count_instances(bench: Path | None, suite: str) -> int | None:
    if bench is None or not (bench / suite / "instances.csv").exists():
        return None
    with open(bench / suite / "instances.csv", newline="") as fh:
        return sum(1 for row in csv.reader(fh) if row and row[0].strip() and not row[0].startswith("#"))


def _seconds(rows) -> list[float]:
    out = []
    for r in rows:
        try:
            out.append(float(r["seconds"]))
        except (KeyError, TypeError, ValueError):
            pass
    return out


def verdict_table(runs: dict, bench: Path | None) -> list[str]:
    lines = ["| suite | device | done / instances | sat | unsat | unknown | timeout | error | contradictions "
             "with expected | median s | total s |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for (suite, device), rows in sorted(runs.items()):
        total = count_instances(bench, suite)
        counts = {v: sum(r["verdict"] == v for r in rows.values()) for v in VERDICTS}
        contra = sum(r.get("agreement") == "CONTRADICTION" for r in rows.values())
        secs = _seconds(rows.values()) or [0.0]
        lines.append(f"| {suite} | {device} | {len(rows)} / {total if total is not None else '?'} | "
                     + " | ".join(str(counts[v]) for v in VERDICTS)
                     + f" | {contra} | {statistics.median(secs):.2f} | {sum(secs):.1f} |")
    return lines


def comparison_table(runs: dict) -> list[str]:
    lines = []
    suites = sorted({s for s, _ in runs})
    for suite in suites:
        devices = sorted(d for s, d in runs if s == suite)
        if len(devices) < 2:
            continue
        a_dev, b_dev = ("cuda", "cpu") if set(devices) >= {"cuda", "cpu"} else devices[:2]
        a, b = runs[(suite, a_dev)], runs[(suite, b_dev)]
        both = sorted(set(a) & set(b))
        same = [k for k in both if a[k]["verdict"] == b[k]["verdict"]]
        differ = [k for k in both if a[k]["verdict"] != b[k]["verdict"]]
        contra = [k for k in differ if {a[k]["verdict"], b[k]["verdict"]} == {"sat", "unsat"}]
        ta, tb = sum(_seconds(a[k] for k in both)), sum(_seconds(b[k] for k in both))
        ratio = f"{tb / ta:.2f}" if ta > 0 else "-"
        if not lines:
            lines += ["| suite | devices A / B | finished on both | same verdict | different | sat/unsat "
                      "contradictions | total s A / B | B / A time |",
                      "| --- | --- | ---: | ---: | ---: | ---: | --- | ---: |"]
        lines.append(f"| {suite} | {a_dev} / {b_dev} | {len(both)} | {len(same)} | {len(differ)} | "
                     f"{len(contra)}{' **CONTRADICTION**' if contra else ''} | {ta:.1f} / {tb:.1f} | {ratio} |")
        for k in differ:
            lines.append(f"|   | {k[0]} {k[1]} | | | {a[k]['verdict']} / {b[k]['verdict']} | "
                         f"{'CONTRADICTION' if k in contra else ''} | {a[k]['seconds']} / {b[k]['seconds']} | |")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("csvs", nargs="+", type=Path)
    p.add_argument("--bench", type=Path, default=None, help="folder with <suite>/instances.csv")
    p.add_argument("--out", type=Path, default=None, help="write the Markdown here too")
    p.add_argument("--title", default="dtensor-verify benchmark, device side by side")
    args = p.parse_args(argv)
    runs = {}
    for path in args.csvs:
        if not path.exists() or path.stat().st_size == 0:
            print(f"bench_table: {path}: missing or empty, left out", file=sys.stderr)
            continue
        runs[suite_and_device(path)] = read_run(path)
    if not runs:
        print("bench_table: no results to tabulate", file=sys.stderr)
        return 1
    lines = [f"## {args.title}", "", *verdict_table(runs, args.bench)]
    comparison = comparison_table(runs)
    if comparison:
        lines += ["", *comparison]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.out:
        args.out.write_text(text)
    contradictions = any("CONTRADICTION" in ln for ln in comparison)
    return 1 if contradictions else 0


if __name__ == "__main__":
    sys.exit(main())
