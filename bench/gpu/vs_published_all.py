#!/usr/bin/env python3
"""Every benchmark's rows of ours next to alpha,beta-CROWN's published VNN-COMP 2022 / 2023 / 2024
runs, instance by instance on byte-identical ONNX and VNN-LIB files (`vs_published.py` each).

    python bench/gpu/vs_published_all.py --mirrors DIR [--out OUT] [--ours-root docs/benchmarks]
        [--benchmarks ../shared/benchmarks]

DIR holds `fetch` mirrors (git directories, no work tree) of ChristopherBrix/vnncomp{2022,2023,2024}_results
and ..._benchmarks, as `ChristopherBrix+vnncomp2023_results/repo` etc. For each (year, benchmark)
in PLAN: the published `results.csv` and benchmark folder are read out of the mirrors (`git show`,
`git archive`), our CSVs (the runs listed, oldest first) are merged as `merge_calls.py` does, and
only instances whose files are identical are paired. Prints one summary table (identical instances,
the published verdicts on them, ours on them, how many verdicts differ in a decided/undecided way,
contradictions) and writes OUT/<year>_<benchmark>.md / .csv and OUT/summary.csv. Exit status 1 on
any contradiction (sat against unsat).
"""
from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import vs_published  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
B = "docs/benchmarks"
S4, S5, S6, S7 = (f"{B}/gpu_h100_2026-12-06{x}" for x in ("_s4", "_s5", "_s6", "_s7"))
S3, S10, S11, S12 = f"{B}/gpu_h100_2026-12-06", f"{B}/gpu_h100_s10", f"{B}/gpu_h100_s11", f"{B}/gpu_h100_s12"
S13 = f"{B}/gpu_h100_s13"
VIT = [f"{B}/input_bab_h100/vit_2023_every12_main11f3ac4.csv", f"{S3}/vit_2023_every24_30345b1.csv",
       f"{S4}/vit_2023_every24_d13c5fc.csv", f"{S7}/vit_2023_every5_off2_498f777.csv",
       f"{S11}/vit_published_overlap_78884a8.csv", f"{S12}/vit_no_rows_c2_77d4b23.csv",
       f"{S13}/vit_no_rows_c3_a81c72f.csv", f"{S13}/vit_side_by_side_a_ours.csv", f"{S13}/vit_side_by_side_b_ours.csv"]
YOLO = [f"{S10}/yolo_c{i}.csv" for i in range(1, 6)] + [f"{S11}/yolo_undecided6_78884a8.csv"] + [
    f"{S12}/yolo_abcrown_only_oc_77d4b23.csv", f"{S12}/yolo_prop024_oc_3fd7133.csv",
    f"{S12}/yolo_undecided12_oc_908c431.csv"]      # session 12: --output-constraints last
# (year, published benchmark folder, our folder under --benchmarks, our CSVs, how ours ran)
PLAN = [
    (2023, "acasxu", "acasxu_2023", [f"{S4}/acasxu_2023_d13c5fc_alone.csv"], "H100, VNN-COMP limits"),
    (2022, "rl_benchmarks", "rl_benchmarks", [f"{S3}/rl_benchmarks.csv"], "H100, VNN-COMP limits"),
    (2023, "collins_rul_cnn", "collins_rul_cnn_2023", [f"{S3}/collins_rul_cnn_2023_30345b1.csv"], "H100"),
    (2024, "collins_rul_cnn_2023", "collins_rul_cnn_2023", [f"{S3}/collins_rul_cnn_2023_30345b1.csv"], "H100"),
    (2022, "reach_prob_density", "reach_prob_density", [f"{B}/input_bab_cpu/reach_results.csv"],
     "this CPU, a subset"),
    (2023, "tllverifybench", "tllverifybench_2023", [f"{B}/input_bab_cpu/tll_results.csv"], "this CPU, a subset"),
    (2024, "linearizenn", "linearizenn", [f"{B}/input_bab_cpu/linearizenn_results.csv"], "this CPU, a subset"),
    (2023, "dist_shift", "dist_shift_2023", [f"{S3}/dist_shift_2023_scale0.2.csv"], "H100, 0.2 x limits"),
    (2024, "dist_shift_2023", "dist_shift_2023", [f"{S3}/dist_shift_2023_scale0.2.csv"], "H100, 0.2 x limits"),
    (2024, "safenlp", "safenlp", [f"{S4}/safenlp_eb19d8b.csv", f"{S5}/safenlp_not_run_s4_9a60094.csv",
                                  f"{B}/safenlp_cpu/timeouts54_s11_a9b47b1.csv"],
     "H100, VNN-COMP limits; the 54 left, this CPU"),
    (2023, "nn4sys", "nn4sys_2023", [f"{S6}/nn4sys_2023_3739f6b.csv", f"{S7}/nn4sys_mscn_128d_h200_2procs.csv"],
     "H100 / H200"),
    (2024, "nn4sys_2023", "nn4sys_2023", [f"{S6}/nn4sys_2023_3739f6b.csv", f"{S7}/nn4sys_mscn_128d_h200_2procs.csv"],
     "H100 / H200"),
    (2024, "ml4acopf_2024", "ml4acopf_2024", [f"{S4}/ml4acopf_2024_eb19d8b.csv", f"{S5}/ml4acopf_undecided_s4_9a60094.csv",
                                              f"{S6}/ml4acopf_left_s6_3739f6b.csv"], "H100"),
    (2023, "cgan", "cgan_2023", [f"{S4}/cgan_2023_eb19d8b.csv", f"{S5}/cgan_2023_9a60094.csv"], "H100"),
    (2024, "cgan_2023", "cgan_2023", [f"{S4}/cgan_2023_eb19d8b.csv", f"{S5}/cgan_2023_9a60094.csv"], "H100"),
    (2024, "acasxu_2023", "acasxu_2023", [f"{S4}/acasxu_2023_d13c5fc_alone.csv"], "H100, VNN-COMP limits"),
    (2024, "tllverifybench_2023", "tllverifybench_2023", [f"{B}/input_bab_cpu/tll_results.csv"], "this CPU, a subset"),
    (2023, "vit", "vit_2023", VIT, "H100, a sample"),
    (2024, "vit_2023", "vit_2023", VIT, "H100, VNN-COMP limits"),
    (2023, "yolo", "yolo_2023", YOLO, "H100"),
    (2024, "yolo_2023", "yolo_2023", YOLO, "H100"),
    (2022, "mnist_fc", "mnist_fc", [f"{B}/h100_vs_abcrown/mnist_256x{w}/ours.csv" for w in (2, 4, 6)],
     "H100; 256x4 / 256x6 at 0.05 x limits"),
]


def _git(mirror: Path, *args) -> bytes:
    return subprocess.run(["git", "-C", str(mirror), *args], check=True, capture_output=True).stdout


def _published_rows(mirror: Path, year: int, bench: str) -> bytes | None:
    prefix = "" if year == 2022 else f"{year}_"
    try:
        return _git(mirror, "show", f"HEAD:alpha_beta_crown/{prefix}{bench}/results.csv")
    except subprocess.CalledProcessError:
        return None


def _published_files(mirror: Path, bench: str, into: Path) -> Path | None:
    """The published benchmark folder, read out of the mirror file by file (a snapshot may lack its
    largest files: those are left out, and their instances are not compared)."""
    try:
        names = _git(mirror, "ls-tree", "-r", "-z", "--name-only", "HEAD", f"benchmarks/{bench}").split(b"\0")
    except subprocess.CalledProcessError:
        return None
    names = [n.decode() for n in names if n]
    if not names:
        return None
    batch = subprocess.run(["git", "-C", str(mirror), "cat-file", "--batch"], check=True, capture_output=True,
                           input="".join(f"HEAD:{n}\n" for n in names).encode()).stdout
    pos = 0
    for name in names:
        end = batch.index(b"\n", pos)
        header = batch[pos:end].split()
        pos = end + 1
        if len(header) < 3 or header[1] != b"blob":          # "<name> missing"
            continue
        size = int(header[2])
        target = into / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(batch[pos:pos + size])
        pos += size + 1
    return into / "benchmarks" / bench


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mirrors", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "vs_published")
    ap.add_argument("--benchmarks", type=Path, default=ROOT.parent / "shared" / "benchmarks")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    summary, clashes = [], 0
    with tempfile.TemporaryDirectory() as tmp:
        for year, bench, ours_dir, csvs, how in PLAN:
            results = args.mirrors / f"ChristopherBrix+vnncomp{year}_results" / "repo"
            files = args.mirrors / f"ChristopherBrix+vnncomp{year}_benchmarks" / "repo"
            rows = _published_rows(results, year, bench)
            ours = [ROOT / c for c in csvs if (ROOT / c).exists()]
            folder = _published_files(files, bench, Path(tmp) / f"{year}") if rows is not None else None
            if rows is None or folder is None or not ours:
                print(f"# {year} {bench}: skipped (published rows / files / our CSVs missing)", file=sys.stderr)
                continue
            pub_csv = Path(tmp) / f"{year}_{bench}_results.csv"
            pub_csv.write_bytes(rows)
            name = f"{year}_{bench}"
            c = vs_published.compare(pub_csv, ours, folder, args.benchmarks / ours_dir)
            (args.out / f"{name}.md").write_text(vs_published.report(c))
            vs_published.write_rows(args.out / f"{name}.csv", c.rows)
            clashes += bool(c.clashes)
            pub, got = vs_published.kinds(c, "published"), vs_published.kinds(c, "ours")
            only_theirs = sum(_kind(r["published"]) != "undecided" and _kind(r["ours"]) == "undecided" for r in c.rows)
            only_ours = sum(_kind(r["published"]) == "undecided" and _kind(r["ours"]) != "undecided" for r in c.rows)
            summary.append({"year": year, "published benchmark": bench, "ours": how,
                            "identical instances": len(c.rows), "published unsat/sat/undecided": _uss(pub),
                            "ours unsat/sat/undecided": _uss(got), "decided by it only": only_theirs,
                            "decided by us only": only_ours, "contradictions": len(c.clashes)})
    keys = list(summary[0]) if summary else []
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in summary:
        print("| " + " | ".join(str(r[k]) for k in keys) + " |")
    if summary:
        with open(args.out / "summary.csv", "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=keys)
            w.writeheader()
            w.writerows(summary)
    return 1 if clashes else 0


def _kind(verdict: str) -> str:
    return verdict if verdict in vs_published.DECIDED else "undecided"


def _uss(c: Counter) -> str:
    return f"{c['unsat']} / {c['sat']} / {c['undecided']}"


if __name__ == "__main__":
    sys.exit(main())
