#!/usr/bin/env python3
"""Ours next to a published VNN-COMP run, instance by instance, on the instances both have.

    python bench/gpu/vs_published.py PUBLISHED.csv OURS.csv [OURS2.csv ...] [--out both.csv]
        [--published-files DIR --our-files DIR]

PUBLISHED.csv is a tool's `results.csv` from a VNN-COMP results repository, e.g. alpha,beta-CROWN's
VNN-COMP 2024 yolo run:

    git -C <mirror of ChristopherBrix/vnncomp2024_results> show HEAD:alpha_beta_crown/2024_yolo_2023/results.csv

(rows `benchmark,onnx,vnnlib,prepare_seconds,result,run_seconds`, no header). OURS.csv are
`dtensor-verify benchmark --csv` files (several calls are merged as bench/gpu/merge_calls.py does:
the first decided verdict of an instance is kept). Instances are matched on the ONNX and VNN-LIB
paths inside the benchmark folder. A path is not a property: some generators draw new properties
under old names (collins_rul_cnn's `monotonicity_CI_shift10_w20` differs between VNN-COMP 2023 and
2024). With --published-files (the published run's benchmark folder, e.g. out of
ChristopherBrix/vnncomp2024_benchmarks) and --our-files (ours, e.g. ../shared/benchmarks/yolo_2023),
only instances whose ONNX and VNN-LIB files have the same contents (gzip or not) are compared; the
others are counted as having different files. Prints the pairs table (published verdict x ours)
and one row per instance; writes those rows to --out. A sat / unsat clash is a CONTRADICTION
(exit 1). `compare` / `report` / `write_rows` are also bench/gpu/vs_published_all.py's.
"""
from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import posixpath
import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from merge_calls import DECIDED, merge  # noqa: E402

# The words results.csv uses for a verdict, as ours writes them.
PUBLISHED_WORDS = {"unsat": "unsat", "holds": "unsat", "sat": "sat", "violated": "sat",
                   "timeout": "timeout", "unknown": "unknown"}


def _rel(path: str) -> str:
    """A file's path inside its benchmark folder (`onnx/medical/perturbations_0.onnx`), `.gz` off:
    results.csv names `vnncomp2024_benchmarks/benchmarks/safenlp/onnx/...`, ours `onnx/...`. Not the
    file name alone: safenlp's two models have vnnlib files of the same names in two folders."""
    path = posixpath.normpath(path.strip().replace("\\", "/"))        # (`dist_shift_2023/./onnx/...`)
    m = re.search(r"(?:^|/)benchmarks/[^/]+/(.+)$", path)
    rel = m.group(1) if m else path
    return rel[:-3] if rel.endswith(".gz") else rel


def _key(onnx: str, vnnlib: str) -> tuple[str, str]:
    return _rel(onnx), _rel(vnnlib)


def read_published(path: Path) -> dict[tuple[str, str], tuple[str, str]]:
    """(onnx path, vnnlib path) inside the benchmark folder -> (verdict, seconds) of a VNN-COMP results.csv."""
    out = {}
    with open(path, newline="") as fh:
        for n, row in enumerate(csv.reader(fh), 1):
            if not row or row[0] == "benchmark":
                continue
            if len(row) < 6:
                raise SystemExit(f"{path}:{n}: expected benchmark,onnx,vnnlib,prepare,result,seconds; got {row}")
            verdict = PUBLISHED_WORDS.get(row[4].strip().lower(), "error")
            out[_key(row[1], row[2])] = (verdict, row[5].strip())
    return out


class Contents:
    """Digests of a benchmark folder's files by path inside it (`onnx/x.onnx`; `.gz` read through)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.paths = {}
        for p in folder.rglob("*"):
            if p.is_file() and (".onnx" in p.name or ".vnnlib" in p.name):
                rel = p.relative_to(folder).as_posix()
                self.paths.setdefault(rel[:-3] if rel.endswith(".gz") else rel, p)
        self._digests = {}

    def digest(self, name: str) -> str | None:
        if name not in self._digests:
            p = self.paths.get(name)
            if p is None:
                self._digests[name] = None
            else:
                data = gzip.decompress(p.read_bytes()) if p.name.endswith(".gz") else p.read_bytes()
                self._digests[name] = hashlib.sha256(data).hexdigest()
        return self._digests[name]


def same_files(key: tuple[str, str], theirs: Contents | None, ours: Contents | None) -> bool:
    """Whether both runs' ONNX and VNN-LIB files of `key` have the same contents (True when
    the folders are not given: names only)."""
    if theirs is None or ours is None:
        return True
    return all(theirs.digest(n) is not None and theirs.digest(n) == ours.digest(n) for n in key)


ROW_FIELDS = ["onnx", "vnnlib", "published", "published_seconds", "ours", "ours_seconds", "ours_call",
              "ours_message", "flag"]


def pair(published: dict, ours: dict, theirs_files: Contents | None = None, our_files: Contents | None = None
         ) -> tuple[list[dict], list[str], int]:
    rows, clashes, differ = [], [], 0
    for (onnx, vnnlib), r in sorted(ours.items(), key=lambda kv: _key(*kv[0])):
        key = _key(onnx, vnnlib)
        if key not in published:
            continue
        if not same_files(key, theirs_files, our_files):
            differ += 1
            continue
        pv, ps = published[key]
        flag = ""
        if pv in DECIDED and r["verdict"] in DECIDED and pv != r["verdict"]:
            flag = "CONTRADICTION"
            clashes.append(f"CONTRADICTION: {key[1]}: published {pv}, ours {r['verdict']} ({r['call']})")
        rows.append({"onnx": key[0], "vnnlib": key[1], "published": pv, "published_seconds": ps,
                     "ours": r["verdict"], "ours_seconds": r.get("seconds", ""), "ours_call": r["call"],
                     "ours_message": (r.get("message") or "")[:120], "flag": flag})
    return rows, clashes, differ


@dataclass
class Comparison:
    rows: list[dict]            # one per instance both have (identical files, where they were compared)
    clashes: list[str]          # CONTRADICTION lines (ours among themselves, and against the published run)
    differ: int                 # same paths, other files (not compared)
    published: int              # instances in the published results.csv
    ours: int                   # instances in our CSVs (merged)
    by_contents: bool           # files compared (else paths only)


def compare(published_csv: Path, our_csvs: list[Path], published_files: Path | None = None,
            our_files: Path | None = None) -> Comparison:
    theirs = Contents(published_files) if published_files else None
    mine = Contents(our_files) if our_files else None
    published = read_published(published_csv)
    ours, own_clashes = merge(our_csvs)
    rows, clashes, differ = pair(published, ours, theirs, mine)
    return Comparison(rows, own_clashes + clashes, differ, len(published), len(ours), theirs is not None)


def kinds(c: Comparison, side: str) -> Counter:
    """unsat / sat / undecided counts of one side ("published" or "ours") on the paired rows."""
    return Counter(r[side] if r[side] in DECIDED else "undecided" for r in c.rows)


def report(c: Comparison) -> str:
    how = "same file contents" if c.by_contents else "same file names"
    out = [f"{len(c.rows)} instances in both, {how} ({c.published} published, {c.ours} ours"
           + (f"; {c.differ} of the same names have different files, not compared)" if c.by_contents else ")")]
    if not c.rows:
        out.append("nothing to compare")
    else:
        counts = Counter((r["published"], r["ours"]) for r in c.rows)
        ours_kinds = sorted({o for _, o in counts}, key=lambda v: (v not in DECIDED, v))
        out.append("| published \\ ours | " + " | ".join(ours_kinds) + " | total |")
        out.append("|---|" + "---:|" * (len(ours_kinds) + 1))
        for pv in sorted({p for p, _ in counts}, key=lambda v: (v not in DECIDED, v)):
            cells = [str(counts[pv, o]) for o in ours_kinds]
            out.append(f"| {pv} | " + " | ".join(cells) + f" | {sum(counts[pv, o] for o in ours_kinds)} |")
        out += ["", "| instance | published | s | ours | s | call |", "|---|---|---:|---|---:|---|"]
        for r in c.rows:
            ps = f"{float(r['published_seconds']):.1f}" if r["published_seconds"] else ""
            os_ = f"{float(r['ours_seconds']):.1f}" if r["ours_seconds"] else ""
            out.append(f"| {r['vnnlib'].removesuffix('.vnnlib')} | {r['published']} | {ps} | {r['ours']} | {os_} | "
                       f"{r['ours_call']} |" + (" **CONTRADICTION**" if r["flag"] else ""))
    return "\n".join(out + c.clashes) + "\n"


def write_rows(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=ROW_FIELDS)
        w.writeheader()
        w.writerows(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("published", type=Path)
    ap.add_argument("ours", nargs="+", type=Path)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--published-files", type=Path, help="the published run's benchmark folder")
    ap.add_argument("--our-files", type=Path, help="our benchmark folder (both: compare contents, not names)")
    args = ap.parse_args(argv)
    if (args.published_files is None) != (args.our_files is None):
        ap.error("--published-files and --our-files go together")
    for folder in (args.published_files, args.our_files):
        if folder is not None and not folder.is_dir():
            ap.error(f"{folder}: not a folder")
    c = compare(args.published, args.ours, args.published_files, args.our_files)
    print(report(c), end="")
    if args.out:
        write_rows(args.out, c.rows)
    return 1 if c.clashes else 0


if __name__ == "__main__":
    sys.exit(main())
