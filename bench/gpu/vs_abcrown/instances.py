"""The instances both tools run: selected from an instances.csv, written back, staged gunzipped."""
from __future__ import annotations

import csv
import gzip
import shutil
from pathlib import Path

from dtensor_verify.benchmark import _norm_key, _resolve, read_instances

from .records import Instance, UsageError


def select_instances(bench: Path, instances_csv: Path | None, substrings: list[str] | None,
                     limit: int | None, scale: float) -> list[Instance]:
    """BENCH/instances.csv (or instances_csv), then --filter and --limit; each instance's files
    must lie inside bench (their gunzipped copies are staged at the same relative paths)."""
    path = instances_csv or bench / "instances.csv"
    if not path.exists():
        raise UsageError(f"{path}: no such file")
    rows = read_instances(path)
    if substrings:
        rows = [r for r in rows if any(s in r.onnx or s in r.vnnlib for s in substrings)]
    if limit is not None:
        rows = rows[:limit]
    if not rows:
        raise UsageError(f"{path}: no instances selected" + (f" (filter {substrings})" if substrings else ""))
    out = []
    for i, row in enumerate(rows):
        for rel in (row.onnx, row.vnnlib):
            if Path(rel).is_absolute() or ".." in Path(rel).parts:   # copies are staged at these paths
                raise UsageError(f"{path}: instance {i}: {rel}: expected a path inside {bench}")
            if not _resolve(bench, rel).exists():
                raise UsageError(f"{path}: instance {i}: {bench / rel} (or .gz): no such file")
        out.append(Instance(i, row.onnx, row.vnnlib, row.timeout, row.timeout * scale))
    return out


def write_instances_csv(path: Path, instances: list[Instance], gunzipped: bool = False) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        for inst in instances:
            if gunzipped:
                w.writerow([_norm_key(inst.onnx), _norm_key(inst.vnnlib), inst.timeout])
            else:
                w.writerow([inst.onnx, inst.vnnlib, inst.timeout])


def stage_gunzipped(bench: Path, instances: list[Instance], dest: Path) -> None:
    """Plain copies of the instance files under dest, at the csv's paths without .gz."""
    for inst in instances:
        for rel in (inst.onnx, inst.vnnlib):
            src, dst = _resolve(bench, rel), dest / _norm_key(rel)
            if dst.exists():
                continue
            dst.parent.mkdir(parents=True, exist_ok=True)
            opener = gzip.open if src.suffix == ".gz" else open
            with opener(src, "rb") as fin, open(dst, "wb") as fout:
                shutil.copyfileobj(fin, fout)
