"""bench/gpu/vs_published.py: ours next to a published VNN-COMP results.csv on the instances both
have (matched by path inside the benchmark folder), the pairs table, and sat vs unsat as a CONTRADICTION."""
import csv
import subprocess
import sys
from pathlib import Path

from test_merge_calls import _csv as _ours      # (our benchmark CSV's columns)

ROOT = Path(__file__).resolve().parents[1]


def _published(path, rows):
    with open(path, "w", newline="") as fh:
        csv.writer(fh).writerows(["b", f"vnncomp/benchmarks/b/onnx/{o}", f"vnncomp/benchmarks/b/vnnlib/{v}", "1.0", res, s]
                                 for o, v, res, s in rows)


def _run(*args):
    return subprocess.run([sys.executable, str(ROOT / "bench/gpu/vs_published.py"), *map(str, args)],
                          capture_output=True, text=True)


def test_pairs_on_shared_instances_only(tmp_path):
    pub, ours, out = tmp_path / "results.csv", tmp_path / "c1.csv", tmp_path / "both.csv"
    _published(pub, [("n.onnx", "p1.vnnlib", "unsat", "9.1"), ("n.onnx", "p2.vnnlib", "timeout", "300"),
                     ("n.onnx", "p9.vnnlib", "unsat", "8")])
    _ours(ours, [["onnx/n.onnx", "vnnlib/p1.vnnlib", "unsat", "3", ""],
                 ["onnx/n.onnx", "vnnlib/p2.vnnlib", "unsat", "40", ""],
                 ["onnx/n.onnx", "vnnlib/p3.vnnlib", "timeout", "300", ""]])
    proc = _run(pub, ours, "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert "2 instances in both, same file names (3 published, 3 ours)" in proc.stdout, proc.stdout
    assert "| unsat | 1 | 1 |" in proc.stdout and "| timeout | 1 | 1 |" in proc.stdout, proc.stdout
    rows = {r["vnnlib"]: r for r in csv.DictReader(open(out))}
    assert set(rows) == {"vnnlib/p1.vnnlib", "vnnlib/p2.vnnlib"}
    assert rows["vnnlib/p2.vnnlib"]["published"] == "timeout" and rows["vnnlib/p2.vnnlib"]["ours"] == "unsat"


def test_sat_against_published_unsat_is_a_contradiction(tmp_path):
    pub, ours = tmp_path / "results.csv", tmp_path / "c1.csv"
    _published(pub, [("n.onnx", "p1.vnnlib", "unsat", "9.1")])
    _ours(ours, [["onnx/n.onnx", "vnnlib/p1.vnnlib", "sat", "3", ""]])
    proc = _run(pub, ours)
    assert proc.returncode == 1 and "CONTRADICTION: vnnlib/p1.vnnlib" in proc.stdout, proc.stdout


def test_with_both_folders_only_identical_files_are_compared(tmp_path):
    """A name is not a property (collins_rul_cnn's generator draws new ones under old names): with
    the two benchmark folders, instances whose files differ are not compared (gzip read through)."""
    import gzip

    theirs, mine = tmp_path / "theirs", tmp_path / "mine"
    for folder in (theirs, mine):
        (folder / "onnx").mkdir(parents=True)
        (folder / "vnnlib").mkdir()
        (folder / "onnx" / "n.onnx").write_bytes(b"net")
    (theirs / "vnnlib" / "p1.vnnlib").write_bytes(b"same")
    (mine / "vnnlib" / "p1.vnnlib.gz").write_bytes(gzip.compress(b"same"))
    (theirs / "vnnlib" / "p2.vnnlib").write_bytes(b"drawn once")
    (mine / "vnnlib" / "p2.vnnlib").write_bytes(b"drawn again")
    pub, ours = tmp_path / "results.csv", tmp_path / "c1.csv"
    _published(pub, [("n.onnx", "p1.vnnlib", "unsat", "9"), ("n.onnx", "p2.vnnlib", "sat", "9")])
    _ours(ours, [["onnx/n.onnx", "vnnlib/p1.vnnlib", "unsat", "3", ""],
                 ["onnx/n.onnx", "vnnlib/p2.vnnlib", "unsat", "4", ""]])
    assert _run(pub, ours).returncode == 1                       # by name: a clash
    proc = _run(pub, ours, "--published-files", theirs, "--our-files", mine)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 instances in both, same file contents" in proc.stdout and "1 of the same names have different files" \
        in proc.stdout, proc.stdout


def test_same_file_names_in_two_folders_are_two_instances(tmp_path):
    """safenlp: vnnlib/medical/hyperrectangle_1101 and vnnlib/ruarobot/hyperrectangle_1101 are two
    properties of two models (one sat, one unsat in the published run): never paired crosswise."""
    pub, ours = tmp_path / "results.csv", tmp_path / "c1.csv"
    _published(pub, [("medical/p.onnx", "medical/h_1.vnnlib", "unsat", "8"),
                     ("robot/p.onnx", "robot/h_1.vnnlib", "sat", "8")])
    _ours(ours, [["./onnx/robot/p.onnx", "./vnnlib/robot/h_1.vnnlib", "sat", "1", ""],
                 ["onnx/medical/p.onnx", "vnnlib/medical/h_1.vnnlib", "unsat", "1", ""]])
    proc = _run(pub, ours)
    assert proc.returncode == 0 and "| sat | 1 | 0 |" in proc.stdout and "| unsat | 0 | 1 |" in proc.stdout, proc.stdout
