"""`dtensor-verify benchmark`: results that survive, --resume, log lines, torchrun (issue 13 / 11).

The benchmark used to write its CSV only at the end (a run stopped by a time limit lost every
verdict), its `--verbose` lines did not say which instance they were about, and under torchrun
every rank ran every instance and wrote the same file.
"""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import dtensor_verify.verify as verify_module
import model_zoo
from dtensor_verify.cli import main

REPO = Path(__file__).resolve().parents[1]
TEST = model_zoo.benchmarks_dir() / "test"          # 5 instances: nano, tiny, small, sat, unsat


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _one_process(monkeypatch):
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


class _CountingVerify:
    """verify_instance that counts its calls and can stop the run (a kill) at call `stop_at`."""

    def __init__(self, csv_path: Path, stop_at: int | None = None):
        self.real, self.csv_path, self.stop_at = verify_module.verify_instance, csv_path, stop_at
        self.calls, self.rows_seen = [], []

    def __call__(self, model, prop, onnx_path, *args, **kwargs):
        self.calls.append(Path(onnx_path).name)
        self.rows_seen.append(len(_rows(self.csv_path)))          # rows on disk when this one starts
        if self.stop_at is not None and len(self.calls) == self.stop_at:
            raise KeyboardInterrupt
        return self.real(model, prop, onnx_path, *args, **kwargs)


def test_rows_are_on_disk_as_instances_end_and_resume_finishes(tmp_path, monkeypatch, capsys):
    out = tmp_path / "results.csv"
    stopper = _CountingVerify(out, stop_at=3)
    monkeypatch.setattr(verify_module, "verify_instance", stopper)
    rc = main(["benchmark", str(TEST), "--csv", str(out), "--quiet", "--device", "cpu"])
    assert rc == 130                                    # stopped during the third instance
    assert stopper.rows_seen == [0, 1, 2]               # each row was written before the next began
    first = out.read_text().splitlines()
    assert len(first) == 3 and first[0].startswith("onnx,vnnlib,verdict,seconds")

    again = _CountingVerify(out)
    monkeypatch.setattr(verify_module, "verify_instance", again)
    rc = main(["benchmark", str(TEST), "--csv", str(out), "--quiet", "--resume", "--device", "cpu"])
    assert rc == 0
    assert len(again.calls) == 3                        # only the three without a row
    lines = out.read_text().splitlines()
    assert lines[:3] == first                           # the earlier rows kept as they were
    rows = _rows(out)
    assert len(rows) == 5 and len({(r["onnx"], r["vnnlib"]) for r in rows}) == 5
    assert {r["verdict"] for r in rows} <= {"sat", "unsat", "unknown"}
    captured = capsys.readouterr()
    assert "5 instance(s)" in captured.out and "resuming" in captured.err


def test_without_resume_the_csv_starts_afresh(tmp_path, capsys):
    out = tmp_path / "results.csv"
    out.write_text("onnx,vnnlib,verdict\nold.onnx,old.vnnlib,sat\n")
    assert main(["benchmark", str(TEST), "--csv", str(out), "--quiet", "--filter", "test_nano"]) == 0
    assert [r["onnx"] for r in _rows(out)] == ["test_nano.onnx"]
    capsys.readouterr()


def test_resume_drops_a_row_cut_short_by_a_kill(tmp_path, capsys):
    out = tmp_path / "results.csv"
    assert main(["benchmark", str(TEST), "--csv", str(out), "--quiet", "--limit", "1"]) == 0
    with open(out, "a") as fh:
        fh.write("test_tiny.onnx,test_tiny.vnn")           # killed mid-write: no newline
    assert main(["benchmark", str(TEST), "--csv", str(out), "--quiet", "--resume", "--limit", "2"]) == 0
    rows = _rows(out)
    assert [r["onnx"] for r in rows] == ["test_nano.onnx", "test_tiny.onnx"]
    assert rows[1]["vnnlib"] == "test_tiny.vnnlib" and rows[1]["verdict"] in ("sat", "unsat", "unknown")
    capsys.readouterr()


def test_resume_refuses_a_file_that_is_not_a_results_csv(tmp_path, capsys):
    out = tmp_path / "notes.csv"
    out.write_text("name,value\na,1\n")
    assert main(["benchmark", str(TEST), "--csv", str(out), "--quiet", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    line, = [ln for ln in err.splitlines() if ln.startswith("dtensor-verify: error: ")]
    assert "notes.csv" in line and "resume" in line
    assert out.read_text() == "name,value\na,1\n"        # left alone


def test_every_log_line_names_its_instance_and_the_bar_shows_the_last_verdict(tmp_path, capsys):
    out = tmp_path / "results.csv"
    assert main(["benchmark", str(TEST), "--csv", str(out), "--verbose", "--filter", "test_prop"]) == 0
    err = capsys.readouterr().err
    logs = [ln for ln in err.splitlines() if ln.startswith("[dtensor-verify]")]
    assert logs, err
    for ln in logs:
        assert ln.startswith(("[dtensor-verify] test_sat test_prop: ", "[dtensor-verify] test_unsat test_prop: ")), ln
    assert any("verdict: sat" in ln for ln in logs) and any("verdict: unsat" in ln for ln in logs)
    assert "last: test_unsat test_prop unsat" in err      # tqdm's postfix (instances run in file order)


def test_under_torchrun_it_refuses_to_run_everything_on_every_rank(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    out = tmp_path / "results.csv"
    assert main(["benchmark", str(TEST), "--csv", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    line, = [ln for ln in err.splitlines() if ln.startswith("dtensor-verify: error: ")]
    assert "--shard-instances" in line and "Traceback" not in err
    assert not out.exists()


@pytest.mark.distributed
def test_shard_instances_under_torchrun_writes_one_csv_with_every_instance_once(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    expected = tmp_path / "expected.csv"
    expected.write_text("onnx,vnnlib,verdict\ntest_sat.onnx,test_prop.vnnlib,sat\n"
                        "test_unsat.onnx,test_prop.vnnlib,unsat\n")
    out = tmp_path / "results.csv"
    out.write_text("stale,rows,from,an,earlier,run\n")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "dtensor_verify", "--threads", "1", "benchmark", str(TEST), "--csv", str(out),
           "--shard-instances", "--expected", str(expected), "--device", "cpu", "--quiet"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = _rows(out)
    keys = [(r["onnx"], r["vnnlib"]) for r in rows]
    assert len(keys) == 5 and len(set(keys)) == 5, rows
    assert out.read_text().count("onnx,vnnlib,verdict") == 1
    assert proc.stdout.count("5 instance(s)") == 1          # rank 0's summary, of both ranks' rows
    assert "2 agree, 0 unsolved, 0 contradiction(s)" in proc.stdout


def test_resume_appends_rows_under_an_older_header(tmp_path, capsys):
    """A CSV written before the branch-and-bound columns existed: new rows follow its header."""
    out = tmp_path / "results.csv"
    out.write_text("onnx,vnnlib,verdict,seconds,expected,agreement,decided_by,message\n"
                   "test_nano.onnx,test_nano.vnnlib,unsat,0.100,,,crown,\n")
    assert main(["benchmark", str(TEST), "--csv", str(out), "--quiet", "--resume", "--limit", "2"]) == 0
    lines = out.read_text().splitlines()
    assert len(lines) == 3 and all(len(next(csv.reader([ln]))) == 8 for ln in lines)
    capsys.readouterr()


def test_branch_and_bound_columns(tmp_path, capsys):
    """An instance that needs branch and bound reports its domains, depth, batch and seconds;
    one decided before it leaves them empty."""
    mnist = model_zoo.benchmarks_dir() / "mnist_fc"
    chosen = tmp_path / "instances.csv"
    chosen.write_text("onnx/mnist-net_256x2.onnx,vnnlib/prop_11_0.05.vnnlib,120\n"
                      "onnx/mnist-net_256x2.onnx,vnnlib/prop_1_0.03.vnnlib,120\n")
    out = tmp_path / "results.csv"
    assert main(["benchmark", str(mnist), "--instances", str(chosen), "--csv", str(out), "--quiet",
                 "--device", "cpu"]) == 0
    bab, attack = _rows(out)
    assert bab["verdict"] == "unsat" and bab["decided_by"] == "bab", bab
    assert int(bab["bab_domains"]) >= 2 and int(bab["bab_depth"]) >= 1 and int(bab["bab_batch"]) >= 1
    assert 1 <= int(bab["bab_first_batch"]) <= int(bab["bab_batch"])   # a batch only grows
    assert bab["bab_rows"] == ""     # one row a disjunct: nothing to focus (bab/focus_rows.py)
    assert bab["bab_worst"] == ""    # proved: no open domain left
    assert 0 < float(bab["bab_seconds"]) < float(bab["seconds"])
    assert attack["verdict"] == "sat" and attack["bab_domains"] == attack["bab_seconds"] == ""
    # the stages that ended, in order, with their seconds
    stages = [part.split("=")[0] for part in bab["phases"].split(";")]
    assert stages[0] == "attack" and stages[-1] == "bab" and "alpha-crown" in stages, bab["phases"]
    assert abs(float(bab["phases"].split("bab=")[1]) - float(bab["bab_seconds"])) < 0.01
    assert attack["phases"].startswith("attack="), attack
    capsys.readouterr()


def test_a_timeout_names_the_stage_it_ended_in(tmp_path, capsys):
    """A run out of time says which stage was running (the phases column lists those that ended)."""
    mnist = model_zoo.benchmarks_dir() / "mnist_fc"
    chosen = tmp_path / "instances.csv"
    chosen.write_text("onnx/mnist-net_256x4.onnx,vnnlib/prop_8_0.03.vnnlib,1\n")
    out = tmp_path / "results.csv"
    main(["benchmark", str(mnist), "--instances", str(chosen), "--csv", str(out), "--quiet", "--device", "cpu"])
    (row,) = _rows(out)
    assert row["verdict"] == "timeout", row
    ended = [part.split("=")[0] for part in row["phases"].split(";") if part]
    stage = row["message"].split("(in ")[1].rstrip(")")
    assert stage and stage not in ended, row
    capsys.readouterr()


def test_worst_open_margin_column():
    """A search that ended undecided says how far its worst open domain was from a proof."""
    from dtensor_verify.benchmark import _bab_columns

    assert _bab_columns({"global_margin": -0.1875, "domains_visited": 9})["bab_worst"] == "-0.1875"
    assert _bab_columns({"global_margin": float("inf")})["bab_worst"] == ""
    assert _bab_columns({"global_margin": float("-inf")})["bab_worst"] == ""
