#!/usr/bin/env python
"""Per-category counts of a vnnlib-satisfactory run (its own runner, `vnnlib-satisfactory run`),
from the report it writes (`.vnnlib-satisfactory/report.json`): a markdown table on stdout and
one CSV row per case (outcome, verdict, expected, the last line of stderr).

    python scripts/vnnlib2/suite_report.py RUN_DIR/.vnnlib-satisfactory/report.json --csv cases.csv
"""
from __future__ import annotations

import argparse
import collections
import csv
import json

OUTCOMES = ("pass", "fail", "suspect", "error", "skip")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("report")
    ap.add_argument("--csv", default="suite_cases.csv")
    args = ap.parse_args()
    with open(args.report) as fh:
        rep = json.load(fh)
    rows = [{"category": r["category"], "case": r["test_id"].split("/")[-1], "outcome": r["outcome"],
             "actual": r["actual"], "expected": r["expected"], "returncode": r["returncode"],
             "stderr_tail": (r.get("stderr") or "").strip().splitlines()[-1:][0][:200] if (r.get("stderr") or "").strip()
             else ""} for r in rep["results"]]
    rows += [{"category": s["category"], "case": s["test_id"].split("/")[-1], "outcome": "skip", "actual": "",
              "expected": "", "returncode": "", "stderr_tail": f"missing: {s['missing_op']}"} for s in rep["skipped"]]
    per = collections.defaultdict(collections.Counter)
    for r in rows:
        per[r["category"]][r["outcome"]] += 1
    print("| category | " + " | ".join(OUTCOMES) + " |")
    print("| --- |" + " --- |" * len(OUTCOMES))
    for cat in sorted(per):
        print(f"| {cat} | " + " | ".join(str(per[cat].get(o, 0)) for o in OUTCOMES) + " |")
    total = collections.Counter(r["outcome"] for r in rows)
    print("| **total** | " + " | ".join(f"**{total.get(o, 0)}**" for o in OUTCOMES) + " |")
    print(f"summary (the suite's own): {rep['summary']}")
    with open(args.csv, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"CSV: {args.csv}")


if __name__ == "__main__":
    main()
