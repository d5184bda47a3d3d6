"""bench/gpu/vs_published_all.py: published rows and benchmark files read out of git mirrors (file by
file, a missing blob skipped), our rows merged, instances paired on identical files only."""
import csv
import gzip
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench" / "gpu"))


def _repo(path: Path, files: dict[str, bytes]):
    path.mkdir(parents=True)
    for name, data in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_bytes(data)
    env = ["-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", str(path)], check=True)
    subprocess.run(["git", "-C", str(path), "add", "."], check=True)
    subprocess.run(["git", "-C", str(path), *env, "commit", "-qm", "x"], check=True)


def test_pairs_identical_files_from_mirrors(tmp_path, monkeypatch):
    import vs_published_all as m

    rows = ("b,vnncomp2024_benchmarks/benchmarks/b/./onnx/n.onnx,vnncomp2024_benchmarks/benchmarks/b/./vnnlib/p1.vnnlib,"
            "1,unsat,9\nb,vnncomp2024_benchmarks/benchmarks/b/onnx/n.onnx,vnncomp2024_benchmarks/benchmarks/b/vnnlib/"
            "p2.vnnlib,1,sat,9\n")
    _repo(tmp_path / "m" / "ChristopherBrix+vnncomp2024_results" / "repo",
          {"alpha_beta_crown/2024_b/results.csv": rows.encode()})
    _repo(tmp_path / "m" / "ChristopherBrix+vnncomp2024_benchmarks" / "repo",
          {"benchmarks/b/onnx/n.onnx.gz": gzip.compress(b"net"), "benchmarks/b/vnnlib/p1.vnnlib": b"one",
           "benchmarks/b/vnnlib/p2.vnnlib": b"two as published"})
    ours_bench = tmp_path / "ours" / "b"
    (ours_bench / "onnx").mkdir(parents=True)
    (ours_bench / "vnnlib").mkdir()
    (ours_bench / "onnx" / "n.onnx").write_bytes(b"net")
    (ours_bench / "vnnlib" / "p1.vnnlib").write_bytes(b"one")
    (ours_bench / "vnnlib" / "p2.vnnlib").write_bytes(b"two drawn again")
    ours_csv = tmp_path / "c1.csv"
    with open(ours_csv, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["onnx", "vnnlib", "verdict", "seconds", "message"])
        w.writerow(["onnx/n.onnx", "vnnlib/p1.vnnlib", "unsat", "2", ""])
        w.writerow(["onnx/n.onnx", "vnnlib/p2.vnnlib", "unsat", "2", ""])     # another property: not a clash
    monkeypatch.setattr(m, "PLAN", [(2024, "b", "b", [str(ours_csv)], "here")])
    out = tmp_path / "out"
    assert m.main(["--mirrors", str(tmp_path / "m"), "--out", str(out), "--benchmarks", str(tmp_path / "ours")]) == 0
    summary = list(csv.DictReader(open(out / "summary.csv")))
    assert summary[0]["identical instances"] == "1" and summary[0]["contradictions"] == "0", summary
    assert summary[0]["published unsat/sat/undecided"] == "1 / 0 / 0"
