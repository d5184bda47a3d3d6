#!/usr/bin/env python3
"""One row per instance from several device calls' benchmark CSVs of one benchmark (a call that
reran what an earlier one left undecided: out of memory next to other processes, not reached).

    python bench/gpu/merge_calls.py CALL1.csv CALL2.csv ... [--out merged.csv] [--of N]

In the order given, a decided verdict (sat / unsat) is kept once an instance has one; an undecided
row (timeout, unknown, error) is replaced by a later call's row. Both `sat` and `unsat` for one
instance is a CONTRADICTION (exit status 1: one of them is unsound). Prints the verdict counts
(and, with --of, the instances of the benchmark) and writes the merged rows with a `call` column
(the CSV's file name) to --out.
"""
from __future__ import annotations

import argparse
import csv
import sys
from collections import Counter
from pathlib import Path

DECIDED = ("sat", "unsat")


def merge(paths: list[Path]) -> tuple[dict, list[str]]:
    rows, clashes = {}, []
    for path in paths:
        with open(path, newline="") as fh:
            for r in csv.DictReader(fh):
                if not r.get("verdict"):
                    continue
                key = (r["onnx"], r["vnnlib"])
                r = dict(r, call=path.stem)
                old = rows.get(key)
                if old is not None and old["verdict"] in DECIDED and r["verdict"] in DECIDED \
                        and old["verdict"] != r["verdict"]:
                    clashes.append(f"CONTRADICTION: {key[1]}: {old['verdict']} ({old['call']}) vs "
                                   f"{r['verdict']} ({r['call']})")
                if old is None or old["verdict"] not in DECIDED:
                    rows[key] = r
    return rows, clashes


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("csvs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--of", type=int, help="instances of the benchmark (shown as 'of N')")
    args = ap.parse_args(argv)
    rows, clashes = merge(args.csvs)
    counts = Counter(r["verdict"] for r in rows.values())
    kinds = [k for k in ("unsat", "sat", "timeout", "unknown", "error") if counts[k]]
    print("| instances | " + " | ".join(kinds) + " |")
    print("|---:|" + "---:|" * len(kinds))
    of = f" of {args.of}" if args.of else ""
    print(f"| {len(rows)}{of} | " + " | ".join(str(counts[k]) for k in kinds) + " |")
    by_call = Counter((r["call"], r["verdict"]) for r in rows.values())
    for call in dict.fromkeys(r["call"] for r in rows.values()):
        print(f"  {call}: " + ", ".join(f"{v} {n}" for (c, v), n in sorted(by_call.items()) if c == call))
    for line in clashes:
        print(line)
    if args.out:
        fields = list(dict.fromkeys(k for r in rows.values() for k in r))
        with open(args.out, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=fields, restval="")
            w.writeheader()
            w.writerows(rows.values())
    return 1 if clashes else 0


if __name__ == "__main__":
    sys.exit(main())
