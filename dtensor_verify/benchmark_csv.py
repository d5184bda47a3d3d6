"""The results CSV of `dtensor-verify benchmark` (benchmark.py): one row per instance, appended,
flushed and synced as the instance ends, under a file lock (ranks under torchrun, the watchdog of
bench_watch.py) so that rows survive an interrupted run and `--resume` can keep them."""
from __future__ import annotations

import csv
import fcntl
import os
from contextlib import contextmanager
from pathlib import Path

from .cli_common import CliError

FIELDS = ["onnx", "vnnlib", "verdict", "seconds", "expected", "agreement", "decided_by", "message",
          # branch and bound, where it ran: domains bounded, deepest split, parents per round per
          # worker at the end and at the start (bab/batch_growth.py raises it), rows bounded of the
          # property's (bab/focus_rows.py, `2/5`), the worst open domain's margin at the end (how
          # far an undecided search was from a proof; empty when none was open), seconds in the stage
          "bab_domains", "bab_depth", "bab_batch", "bab_first_batch", "bab_rows", "bab_worst", "bab_seconds",
          # --output-constraints: made stable / tightened, summed width before -> after, pairs proved
          "output_constraints",
          # the pipeline's stages that ended, with their seconds (where a timeout's time went)
          "phases"]
REQUIRED = ("onnx", "vnnlib", "verdict")


def output_constraints_cell(report: dict | None) -> str:
    """`--output-constraints`: neurons made stable of those tightened, their summed width before ->
    after, pairs proved there (verify/output_constraints_stage.py); empty where it did not run."""
    if not report or not report.get("neurons"):
        return ""
    return (f"{report['stabilised']}/{report['neurons']} stable; width {report['width_before']:.4g}"
            f"->{report['width_after']:.4g}; {report['proved_pairs']} proved")


def norm_key(path: str) -> str:
    s = path.strip().replace("\\", "/")
    while s.startswith("./"):
        s = s[2:]
    return s[:-3] if s.endswith(".gz") else s


# ------------------------------------------------------------------------------------------ results CSV

@contextmanager
def _locked(path: Path):
    """An exclusive lock on `path` (created if missing), held by one writer (rank) at a time."""
    with open(path, "a+", newline="") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield fh
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def prepare_csv(path: Path, resume: bool) -> None:
    """Start the results file: a fresh header, or (resume) the rows already there, minus a last
    row cut short by a kill (it would otherwise glue itself to the next row)."""
    try:
        with _locked(path) as fh:
            fh.seek(0)
            text = fh.read()
            if resume and text.strip():
                header = next(csv.reader([text.splitlines()[0]]), [])
                missing = [f for f in REQUIRED if f not in header]
                if missing:
                    raise CliError(f"{path}: cannot resume: not a benchmark results file "
                                   f"(no {', '.join(missing)} column in its header)")
                if not text.endswith("\n"):
                    fh.truncate(text.rfind("\n") + 1)
                return
            fh.truncate(0)
            fh.write(",".join(FIELDS) + "\n")
            fh.flush()
    except IsADirectoryError:
        raise CliError(f"{path}: is a directory, not a CSV file") from None


def read_rows(path: Path) -> dict:
    """The rows already in the results file, by instance key (a later row wins)."""
    with _locked(path) as fh:
        fh.seek(0)
        rows = list(csv.DictReader(fh))
    return {(norm_key(r.get("onnx") or ""), norm_key(r.get("vnnlib") or "")): r for r in rows
            if r.get("verdict")}


def append_row(path: Path, row: dict) -> None:
    """One finished instance, on disk before the next one starts (flush + fsync). The columns are
    the file's own header's, so resuming a file written by an older version stays aligned."""
    with _locked(path) as fh:
        fh.seek(0)
        header = next(csv.reader([fh.readline()]), None) or FIELDS
        fh.seek(0, os.SEEK_END)
        csv.DictWriter(fh, fieldnames=header, extrasaction="ignore").writerow(row)
        fh.flush()
        os.fsync(fh.fileno())
