"""The CSVs: a tool's verdicts (ours' `benchmark --csv`, this runner's abcrown.csv) and results.csv."""
from __future__ import annotations

import csv
from pathlib import Path

from dtensor_verify.benchmark import _norm_key

from .records import TOOLS, VERDICTS, Instance, Outcome, ToolRun, UsageError
from .verdicts import Row

RESULTS_FIELDS = ["index", "model", "onnx", "vnnlib", "limit_s", "expected",
                  "ours_verdict", "ours_seconds", "ours_raw", "ours_decided_by", "ours_message", "ours_domains",
                  "abcrown_verdict", "abcrown_seconds", "abcrown_raw", "abcrown_status", "abcrown_message",
                  "abcrown_domains",
                  "flags"]
DETAIL_COLUMN = {"ours": "decided_by", "abcrown": "status"}


def _seconds(out: Outcome) -> str:
    return "" if out.seconds is None else f"{out.seconds:.3f}"


def _domains(row: dict) -> int | None:
    """A CSV row's branch-and-bound domains (ours: bab_domains; abcrown.csv: domains), if any."""
    raw = (row.get("bab_domains") or row.get("domains") or "").strip()
    return int(raw) if raw.isdigit() else None


def _domains_cell(out: Outcome) -> str:
    return "" if out.domains is None else str(out.domains)


def read_ours_csv(path: Path, instances: list[Instance]) -> list[Outcome]:
    """`dtensor-verify benchmark --csv` of the run just made: one row per instance, in order."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if len(rows) != len(instances):
        raise RuntimeError(f"{path}: {len(rows)} rows for {len(instances)} instances")
    out = []
    for inst, row in zip(instances, rows):
        if (_norm_key(row["onnx"]), _norm_key(row["vnnlib"])) != inst.key:
            raise RuntimeError(f"{path}: row {inst.index} is {row['onnx']} {row['vnnlib']}, "
                               f"expected {inst.onnx} {inst.vnnlib}")
        out.append(Outcome(row["verdict"], float(row["seconds"]), row.get("decided_by", ""),
                           row.get("message", ""), _domains(row)))
    return out


def write_tool_csv(path: Path, instances: list[Instance], outcomes: list[Outcome]) -> None:
    """One tool's verdicts in the columns of `dtensor-verify benchmark --csv` it shares
    (onnx, vnnlib, verdict, seconds), plus its own status string and message."""
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["onnx", "vnnlib", "verdict", "seconds", "status", "message", "domains"])
        for inst, out in zip(instances, outcomes):
            w.writerow([inst.onnx, inst.vnnlib, out.verdict, _seconds(out), out.detail, out.message,
                        _domains_cell(out)])


def _outcome_of_row(path: Path, n: int, row: dict) -> Outcome:
    verdict = (row.get("verdict") or "").strip().lower()
    if verdict not in VERDICTS:
        raise UsageError(f"{path}: line {n}: verdict '{row.get('verdict')}' is not one of {', '.join(VERDICTS)}")
    try:
        secs = float(row["seconds"]) if (row.get("seconds") or "").strip() else None
    except ValueError:
        raise UsageError(f"{path}: line {n}: seconds '{row.get('seconds')}' is not a number") from None
    detail = row.get("decided_by") or row.get("status") or ""
    return Outcome(verdict, secs, detail, row.get("message") or "", _domains(row))


def read_tool_csv(path: Path, instances: list[Instance], name: str) -> ToolRun:
    """A tool's verdicts from an earlier run (ours: `benchmark --csv`, or the merged parts of
    input_bab_gpu.sh; abcrown: this script's abcrown.csv), matched to the instances by
    (onnx, vnnlib); an instance with no row is an error 'no row in CSV'."""
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as exc:
        raise UsageError(f"{path}: {exc.strerror or exc}") from None
    if rows and not {"onnx", "vnnlib", "verdict"} <= set(rows[0]):
        raise UsageError(f"{path}: expected the columns onnx, vnnlib, verdict (and seconds)")
    by_key = {}
    for n, row in enumerate(rows, 2):
        outcome = _outcome_of_row(path, n, row)
        by_key[(_norm_key(row["onnx"]), _norm_key(row["vnnlib"]))] = outcome
    missing = f"no row in {path.name}"
    outcomes = [by_key.get(inst.key, Outcome("error", None, "", missing)) for inst in instances]
    n_found = sum(inst.key in by_key for inst in instances)
    return ToolRun(name, outcomes, [f"(read from {path})"],
                   note=f"read from {path}: {n_found} of {len(instances)} instances have a row")


def _result_record(r: Row) -> dict:
    rec = {"index": r.inst.index, "model": r.inst.model, "onnx": r.inst.onnx,
           "vnnlib": r.inst.vnnlib, "limit_s": f"{r.inst.limit:g}", "expected": r.expected or "",
           "flags": "; ".join(r.flags())}
    for tool in TOOLS:
        out = r.outcome(tool)
        if out is None:
            continue
        rec.update({f"{tool}_verdict": r.verdict(tool), f"{tool}_raw": out.verdict,
                    f"{tool}_seconds": _seconds(out), f"{tool}_{DETAIL_COLUMN[tool]}": out.detail,
                    f"{tool}_message": out.message,
                    f"{tool}_domains": _domains_cell(out)})
    return rec


def write_results_csv(path: Path, rows: list[Row]) -> None:
    """One row per instance: each tool's counted and raw verdict, seconds, detail and message."""
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=RESULTS_FIELDS)
        w.writeheader()
        for r in rows:
            w.writerow(_result_record(r))
