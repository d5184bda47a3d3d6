"""bench/gpu/bench_vs_abcrown.py (the package bench/gpu/vs_abcrown/): abcrown configs made plain BaB,
verdict counting, contradictions, reading abcrown's output lines and earlier CSVs, and its runner
surviving an alpha,beta-CROWN that crashes, hangs or cannot start (a stand-in abcrown.py that
speaks its batch mode: `idx: i, vnnlib ID: row` ... `Result: status in t seconds`).
Our side is the real `dtensor-verify benchmark` on the tiny test benchmark."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "gpu" / "bench_vs_abcrown.py"
TEST_BENCH = REPO.parent / "shared" / "benchmarks" / "test"


if str(REPO) not in sys.path:           # the entry point puts the checkout first the same way
    sys.path.insert(0, str(REPO))

from bench.gpu.vs_abcrown import abcrown_output, cli, configs, records, run_abcrown, tool_csv, verdicts  # noqa: E402


# ------------------------------------------------------------------------------ plain_bab

MNISTFC_SMALL = {   # abcrown's vnncomp22/mnistfc_small.yaml (Dec 2025 release), abridged
    "general": {"root_path": "../../vnncomp2022_benchmarks/benchmarks/mnist_fc",
                "csv_name": "instances.csv", "complete_verifier": "mip"},
    "model": {"input_shape": [-1, 1, 28, 28]},
    "data": {"start": 0, "end": 30},
    "solver": {"batch_size": 500, "mip": {"parallel_solvers": 8}},
}
OVAL22 = {          # vnncomp22/oval22.yaml
    "general": {"root_path": "x", "csv_name": "instances.csv", "conv_mode": "matrix"},
    "solver": {"batch_size": 2000},
    "bab": {"branching": {"candidates": 10},
            "cut": {"enabled": True, "cplex_cuts": True, "bab_cut": True, "lr_beta": 0.01}},
    "attack": {"pgd_order": "middle"},
}


def test_plain_bab_turns_mip_into_bab_and_keeps_the_rest():
    cfg, changes = configs.plain_bab(MNISTFC_SMALL)
    assert cfg["general"] == {"complete_verifier": "bab"}
    assert "data" not in cfg
    assert cfg["model"] == MNISTFC_SMALL["model"] and cfg["solver"] == MNISTFC_SMALL["solver"]
    assert any(c.startswith("general.complete_verifier: mip -> bab") for c in changes)
    assert MNISTFC_SMALL["general"]["complete_verifier"] == "mip"      # the input is not modified


def test_plain_bab_turns_bab_refine_into_bab():
    cfg, _ = configs.plain_bab({"general": {"complete_verifier": "bab-refine"}})
    assert cfg["general"]["complete_verifier"] == "bab"


def test_plain_bab_switches_cplex_cuts_and_their_matrix_mode_off():
    cfg, changes = configs.plain_bab(OVAL22)
    assert cfg["bab"]["cut"]["enabled"] is False and cfg["bab"]["cut"]["cplex_cuts"] is False
    assert cfg["general"]["conv_mode"] == "patches"
    assert cfg["bab"]["branching"] == {"candidates": 10} and cfg["attack"] == {"pgd_order": "middle"}
    assert len([c for c in changes if "(runner's)" not in c]) == 3, changes


def test_plain_bab_leaves_a_plain_config_alone():
    plain = {"general": {"complete_verifier": "bab", "conv_mode": "matrix"}, "solver": {"batch_size": 7}}
    cfg, changes = configs.plain_bab(plain)
    assert cfg == plain and changes == []


def test_released_configs_per_benchmark():
    assert configs.released_config_for("mnist_fc", "mnist-net_256x2") == "vnncomp22/mnistfc_small.yaml"
    assert configs.released_config_for("mnist_fc", "mnist-net_256x6") == "vnncomp22/mnistfc.yaml"
    assert configs.released_config_for("oval21", "cifar_deep_kw") == "vnncomp22/oval22.yaml"
    assert configs.released_config_for("sri_resnet_a", "resnet_3b2_bn_mixup_adv_4.0_bs128_lr-1") is None


# ------------------------------------------------------------------------------ counting

@pytest.mark.parametrize("status, seconds, verdict", [
    ("unsafe-pgd", 0.1, "sat"), ("unsafe-bab", 5.0, "sat"), ("safe-incomplete", 1.0, "unsat"),
    ("safe", 9.0, "unsat"), ("safe-incomplete-refine", 1.0, "unsat"), ("safe (timed out)", 12.0, "unsat"),
    ("unsafe-mip", 1.0, "sat"), ("sat", 1.0, "sat"), ("unsat", 1.0, "unsat"),
    ("unknown", 10.0, "timeout"), ("unknown", 2.0, "unknown"), ("unknown-mip", 2.0, "unknown"),
    ("timeout", 10.0, "timeout"), ("something new", 1.0, "error"), ("", 1.0, "error")])
def test_abcrown_status_to_verdict(status, seconds, verdict):
    assert abcrown_output.abcrown_verdict(status, seconds, limit=10.0) == verdict


@pytest.mark.parametrize("line, event", [
    (" %%%%% idx: 0, vnnlib ID: 3 %%%%%", abcrown_output.Opened(3)),
    ("%%%%%%%%%%%%%%%%%%%%%%% idx: 12, vnnlib ID: 40 %%%%%%%%%%%%%%%%%%%%%%%%%", abcrown_output.Opened(40)),
    ("Result: unsafe-pgd in 0.2500 seconds", abcrown_output.Result("unsafe-pgd", 0.25)),
    ("Result: safe (timed out) in 1.2e+01 seconds", abcrown_output.Result("safe (timed out)", 12.0)),
    ("Result: unknown in 1e seconds", None),                # not a number: an ordinary line
    ("  Result: safe in 1.0 seconds", None),                # only at the start of the (stripped) line
    ("Final verified acc: 100.0% (total 1 examples)", None),
    ("248 domains visited", abcrown_output.Visited(248)),    # after each branch-and-bound round
    ("Cumulative time: 3.2 (248 domains visited)", None),
    ("", None)])
def test_abcrown_output_lines(line, event):
    assert abcrown_output.parse_line(line) == event


def test_late_verdicts_count_as_timeouts_for_both_tools():
    on_time, late = records.Outcome("unsat", 10.9), records.Outcome("unsat", 11.6)
    assert verdicts.counted(on_time, 10.0) == "unsat" and verdicts.counted(late, 10.0) == "timeout"
    marked = records.Outcome("unsat", 3.0, "safe (timed out)")          # abcrown's own mark
    assert verdicts.counted(marked, 10.0) == "timeout"
    assert verdicts.counted(records.Outcome("unknown", 30.0), 10.0) == "unknown"


def test_sat_against_unsat_is_flagged_whoever_says_it():
    inst = records.Instance(0, "a.onnx", "p.vnnlib", 10.0, 10.0)
    row = verdicts.Row(inst, "unsat", records.Outcome("unsat", 1.0), records.Outcome("sat", 20.0))
    flags = row.flags()
    assert "CONTRADICTION: abcrown says sat, expected unsat" in flags
    assert "CONTRADICTION: ours says unsat, abcrown says sat" in flags
    assert verdicts.Row(inst, "unsat", records.Outcome("unsat", 1.0), records.Outcome("timeout", 10.0)).flags() == []


# ------------------------------------------------------------------------------ the runner

FAKE_ABCROWN = textwrap.dedent('''
    """Stand-in for alpha,beta-CROWN's abcrown.py in csv batch mode; what it does on each csv
    row comes from the config's `fake` section."""
    import argparse, csv, os, sys, time
    import yaml
    p = argparse.ArgumentParser()
    for opt in ("--config", "--root_path", "--csv_name", "--results_file", "--timeout_scale", "--device"):
        p.add_argument(opt, required=True)
    p.add_argument("--start", type=int, default=0)
    p.add_argument("--end", type=int, default=10000)
    a = p.parse_args()
    plan = yaml.safe_load(open(a.config))["fake"]
    with open(plan["calls"], "a") as fh:
        fh.write(f"{a.start}\\n")
    if plan.get("cannot_start"):
        print("ModuleNotFoundError: No module named 'gurobipy'")
        sys.exit(1)
    rows = list(csv.reader(open(os.path.join(a.root_path, a.csv_name))))
    for row in range(a.start, min(a.end, len(rows))):
        print(f" %%%%% idx: {row - a.start}, vnnlib ID: {row} %%%%%", flush=True)
        onnx, vnnlib, timeout = rows[row]
        for rel in (onnx, vnnlib):   # staged as plain files under --root_path
            assert not rel.endswith(".gz") and os.path.isfile(os.path.join(a.root_path, rel)), rel
        action = plan["by_onnx"][onnx] if "by_onnx" in plan else plan["rows"][row]
        if action == "crash":
            raise RuntimeError(f"fake crash on row {row}")
        if action == "hang":
            time.sleep(3600)
        for n in plan.get("visited", {}).get(row, []):     # branch and bound's rounds
            print(f"{n} domains visited", flush=True)
        print(f"Result: {action} in 0.25 seconds", flush=True)
''')


def _fake_abcrown(tmp_path: Path, plan: dict) -> tuple[list[str], Path]:
    """A fake abcrown / auto_LiRPA pair and a config that drives it; the runner's options."""
    root = tmp_path / "abcrown"
    (root / "complete_verifier").mkdir(parents=True)
    (root / "complete_verifier" / "abcrown.py").write_text(FAKE_ABCROWN)
    lirpa = tmp_path / "auto_lirpa"
    (lirpa / "auto_LiRPA").mkdir(parents=True)
    (lirpa / "auto_LiRPA" / "__init__.py").write_text("")
    calls = tmp_path / "calls.txt"
    config = tmp_path / "fake.yaml"
    config.write_text(yaml.safe_dump({"general": {"complete_verifier": "mip"},
                                      "fake": dict(plan, calls=str(calls))}))
    return ["--abcrown", str(root), "--auto-lirpa", str(lirpa), "--abcrown-config", str(config)], calls


def _run(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


def _rows(out: Path) -> list[dict]:
    with open(out / "results.csv", newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture
def test_bench():
    if not (TEST_BENCH / "instances.csv").exists():
        pytest.fail(f"benchmark folder {TEST_BENCH} is missing (the shared benchmarks beside the repo)")
    return TEST_BENCH


def test_runner_survives_crash_and_hang_and_flags_contradictions(tmp_path, test_bench):
    # rows of test/instances.csv: nano, tiny, small, test_sat, test_unsat (both tools must agree
    # with the expected sat / unsat of the last two; the fake claims sat on test_unsat)
    opts, calls = _fake_abcrown(tmp_path, {"rows": ["safe", "crash", "hang", "unsafe-pgd", "unsafe-pgd"],
                                           "visited": {0: [8, 24]}})
    expected = tmp_path / "expected.csv"
    expected.write_text("onnx,vnnlib,verdict\ntest_sat.onnx,test_prop.vnnlib,sat\n"
                        "test_unsat.onnx,test_prop.vnnlib,unsat\n")
    out = tmp_path / "out"
    res = _run([str(test_bench), *opts, "--out", str(out), "--timeout-scale", "0.05", "--threads", "1",
                "--expected", str(expected), "--hang-grace", "2"])
    assert res.returncode == 1, res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    rows = _rows(out)
    assert [r["abcrown_raw"] for r in rows] == ["unsat", "error", "timeout", "sat", "sat"]
    assert "fake crash on row 1" in rows[1]["abcrown_message"]
    # branch and bound's domains: abcrown's last "N domains visited" of the instance, none where it
    # did not branch; ours' bab_domains column
    assert [r["abcrown_domains"] for r in rows] == ["24", "", "", "", ""]
    assert all(r["ours_domains"] == "" or int(r["ours_domains"]) >= 1 for r in rows)
    abc_csv = list(csv.DictReader(open(out / "abcrown.csv")))
    assert [r["domains"] for r in abc_csv] == ["24", "", "", "", ""]
    assert rows[2]["abcrown_status"] == "killed"
    assert calls.read_text().split() == ["0", "2", "3"]      # restarted after the crash and the hang
    assert [r["ours_raw"] for r in rows[3:]] == ["sat", "unsat"]
    assert rows[3]["flags"] == ""
    assert "CONTRADICTION: abcrown says sat, expected unsat" in rows[4]["flags"]
    assert "CONTRADICTION: ours says unsat, abcrown says sat" in rows[4]["flags"]
    table = (out / "table.md").read_text()
    assert "general.complete_verifier: mip -> bab" in table
    assert "**CONTRADICTION: ours says unsat, abcrown says sat**" in table
    assert "| dtensor-verify | s | domains | alpha,beta-CROWN | s | domains |" in table
    assert "| unsat | 0.25 | 24 |" in table
    assert "| test_unsat | dtensor-verify | 1 | 0 | 1 | 0 | 0 | 0 | 1 |" in res.stdout
    assert "| test_unsat | alpha,beta-CROWN | 1 | 1 | 0 | 0 | 0 | 0 | 1 |" in res.stdout
    assert (out / "ours.csv").exists() and "fake crash on row 1" in (out / "abcrown.log").read_text()


def test_runner_records_an_abcrown_that_cannot_start_once(tmp_path, test_bench):
    opts, calls = _fake_abcrown(tmp_path, {"cannot_start": True})
    out = tmp_path / "out"
    res = _run([str(test_bench), *opts, "--out", str(out), "--tools", "abcrown", "--limit", "3"])
    assert res.returncode == 0, res.stdout + res.stderr
    rows = _rows(out)
    assert [r["abcrown_raw"] for r in rows] == ["error"] * 3
    assert all("No module named 'gurobipy'" in r["abcrown_message"] for r in rows)
    assert calls.read_text().split() == ["0"]
    assert "ours_raw" in rows[0] and rows[0]["ours_raw"] == ""


def test_runner_stops_abcrown_at_the_deadline(tmp_path, test_bench):
    opts, _ = _fake_abcrown(tmp_path, {"rows": ["hang"] * 5})
    out = tmp_path / "out"
    res = _run([str(test_bench), *opts, "--out", str(out), "--tools", "abcrown", "--deadline", "3",
                "--limit", "2"], timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert [r["abcrown_message"] for r in _rows(out)] == ["not finished before --deadline"] * 2


@pytest.mark.parametrize("extra, needle", [
    (["--abcrown", "/nonexistent/abcrown"], "--abcrown: /nonexistent/abcrown/complete_verifier/abcrown.py"),
    (["--timeout-scale", "0"], "--timeout-scale must be > 0"),
    (["--filter", "no-such-model"], "no instances selected"),
    (["--instances", "OUTSIDE"], "../elsewhere/net.onnx: expected a path inside"),
])
def test_runner_usage_errors_are_one_line(tmp_path, test_bench, capsys, extra, needle):
    opts, _ = _fake_abcrown(tmp_path, {"rows": []})
    outside = tmp_path / "outside.csv"
    outside.write_text("../elsewhere/net.onnx,p.vnnlib,60\n")
    extra = [str(outside) if e == "OUTSIDE" else e for e in extra]
    assert cli.main([str(test_bench), *opts, "--out", str(tmp_path / "out"), *extra]) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("bench_vs_abcrown: error: ") and needle in lines[0], err


def test_abcrown_gets_auto_lirpa_from_source_first_and_not_this_repo(tmp_path):
    args = cli.build_parser().parse_args(["b", "--abcrown", "a", "--auto-lirpa", str(tmp_path / "lirpa"),
                                          "--onnx2pytorch", str(tmp_path / "o2p"), "--out", "o"])
    env = run_abcrown.abcrown_env(args.auto_lirpa, args.onnx2pytorch,
                                  {"PYTHONPATH": os.pathsep.join([str(REPO), "/site"]), "HOME": "/h"})
    assert env["PYTHONPATH"].split(os.pathsep) == [str(tmp_path / "lirpa"), str(tmp_path / "o2p"), "/site"]
    assert env["HOME"] == "/h" and env["PYTHONUNBUFFERED"] == "1"


# ------------------------------------------------------------------------------ parts, earlier CSVs

def test_released_configs_for_the_input_split_and_vit_benchmarks():
    for family in ("acasxu", "acasxu_2023"):
        assert configs.released_config_for(family, "ACASXU_run2a_1_1_batch_2000") == "vnncomp21/acasxu.yaml"
    assert configs.released_config_for("vit_2023", "pgd_2_3_16") == "vnncomp23/vit.yaml"
    assert configs.released_config_for("yolo_2023", "TinyYOLO") == "vnncomp23/yolo-xiangruzh.yaml"


ACTIONS = {"test_nano.onnx": "safe", "test_tiny.onnx": "unknown", "test_small.onnx": "safe-incomplete",
           "test_sat.onnx": "unsafe-pgd", "test_unsat.onnx": "safe"}


def test_parts_deal_the_instances_round_robin_to_side_by_side_processes(tmp_path, test_bench):
    opts, calls = _fake_abcrown(tmp_path, {"by_onnx": ACTIONS})
    out = tmp_path / "out"
    res = _run([str(test_bench), *opts, "--out", str(out), "--tools", "abcrown", "--parts", "2"])
    assert res.returncode == 0, res.stdout + res.stderr
    assert [r["abcrown_raw"] for r in _rows(out)] == ["unsat", "unknown", "unsat", "sat", "unsat"]
    assert calls.read_text().split() == ["0", "0"]             # two processes, each from its row 0
    assert len((out / "work" / records.PIDS_FILE).read_text().split()) == 2     # for abcrown_gpu.sh's clean-up
    log = (out / "abcrown.log").read_text()
    part0, part1 = log.split("part 1 of 2")
    assert "instances_0_part0.csv" in part0 and "instances_0_part1.csv" in part1
    with open(out / "abcrown.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0])[:4] == ["onnx", "vnnlib", "verdict", "seconds"]
    assert [(r["onnx"], r["verdict"], r["status"]) for r in rows][3] == ("test_sat.onnx", "sat", "unsafe-pgd")
    assert "2 processes side by side" in (out / "table.md").read_text()


def _verdict_csv(path: Path, rows) -> Path:
    path.write_text("onnx,vnnlib,verdict,seconds,decided_by\n"
                    + "".join(f"{o},{v},{verdict},{secs},x\n" for o, v, verdict, secs in rows))
    return path


def test_comparison_of_two_earlier_runs_flags_a_clash_and_missing_rows(tmp_path, test_bench):
    ours = _verdict_csv(tmp_path / "ours.csv", [          # in another order, one instance missing
        ("test_unsat.onnx", "test_prop.vnnlib", "unsat", 1.5), ("test_nano.onnx.gz", "test_nano.vnnlib", "unsat", 2),
        ("test_sat.onnx", "test_prop.vnnlib", "sat", 0.5), ("test_tiny.onnx", "test_tiny.vnnlib", "timeout", 60)])
    abc = _verdict_csv(tmp_path / "abc.csv", [
        ("test_nano.onnx", "test_nano.vnnlib", "unsat", 1), ("test_tiny.onnx", "test_tiny.vnnlib", "unsat", 3),
        ("test_small.onnx", "test_small.vnnlib", "unsat", 1), ("test_sat.onnx", "test_prop.vnnlib", "sat", 0.1),
        ("test_unsat.onnx", "test_prop.vnnlib", "sat", 0.2)])
    out = tmp_path / "out"
    res = _run([str(test_bench), "--ours-csv", str(ours), "--abcrown-csv", str(abc), "--out", str(out)])
    assert res.returncode == 1, res.stdout + res.stderr
    rows = _rows(out)
    assert [r["ours_raw"] for r in rows] == ["unsat", "timeout", "error", "sat", "unsat"]
    assert rows[2]["ours_message"] == "no row in ours.csv"
    assert rows[4]["flags"] == "CONTRADICTION: ours says unsat, abcrown says sat"
    assert [r["flags"] for r in rows[:4]] == [""] * 4
    assert "4 of 5 instances have a row" in (out / "table.md").read_text()
    assert "| **all** | dtensor-verify | 5 | 1 | 2 | 0 | 1 | 1 | 3 |" in res.stdout
    assert "| **all** | alpha,beta-CROWN | 5 | 2 | 3 | 0 | 0 | 0 | 5 |" in res.stdout
    assert not (out / "ours.log").exists() and not (out / "abcrown.log").exists()   # nothing was run


def test_a_bad_verdict_in_an_earlier_csv_is_one_line(tmp_path, test_bench, capsys):
    bad = _verdict_csv(tmp_path / "bad.csv", [("test_nano.onnx", "test_nano.vnnlib", "maybe", 1)])
    assert cli.main([str(test_bench), "--ours-csv", str(bad), "--tools", "ours", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bench_vs_abcrown: error: ") and "line 2: verdict 'maybe'" in err and "\n" not in err


@pytest.mark.parametrize("text, needle", [
    ("onnx,vnnlib,verdict,seconds\ntest_nano.onnx,test_nano.vnnlib,unsat,fast\n",
     "line 2: seconds 'fast' is not a number"),
    ("model,property,result\nn.onnx,p.vnnlib,sat\n", "expected the columns onnx, vnnlib, verdict"),
    ("onnx,vnnlib,verdict\ntest_nano.onnx,test_nano.vnnlib,SAT\nx.onnx,y.vnnlib,\n",
     "line 3: verdict '' is not one of")])
def test_bad_earlier_csvs_are_one_line(tmp_path, test_bench, capsys, text, needle):
    bad = tmp_path / "bad.csv"
    bad.write_text(text)
    argv = [str(test_bench), "--abcrown-csv", str(bad), "--tools", "abcrown", "--out", str(tmp_path / "o")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bench_vs_abcrown: error: ") and needle in err and "\n" not in err, err


def test_an_earlier_csv_matches_instances_by_path_without_gz(tmp_path):
    insts = [records.Instance(0, "onnx/a.onnx.gz", "p.vnnlib", 10.0, 5.0),
             records.Instance(1, "b.onnx", "q.vnnlib", 10.0, 5.0)]
    path = tmp_path / "abcrown.csv"
    tool_csv.write_tool_csv(path, insts, [records.Outcome("sat", 1.25, "unsafe-pgd"),
                                          records.Outcome("error", None, "", "m")])
    again = records.Instance(2, "./onnx/a.onnx", "p.vnnlib", 1, 1)        # the same files, named otherwise
    run = tool_csv.read_tool_csv(path, list(reversed(insts)) + [again], "abcrown")
    assert run.outcomes[0] == records.Outcome("error", None, "", "m")
    assert run.outcomes[2] == records.Outcome("sat", 1.25, "unsafe-pgd", "")
    assert "3 of 3 instances have a row" in run.note


def test_running_abcrown_needs_its_checkout(tmp_path, test_bench, capsys):
    assert cli.main([str(test_bench), "--tools", "abcrown", "--out", str(tmp_path / "o")]) == 2
    assert "--abcrown DIR is needed" in capsys.readouterr().err


def test_abcrown_gpu_sh_dry_run_with_a_fake_abcrown(tmp_path, test_bench):
    """bench/gpu/abcrown_gpu.sh end to end on the CPU: the fake abcrown in the .abcrown layout,
    two parts, ours from a CSV that clashes on test_unsat (exit status 1), the result files."""
    opts, _ = _fake_abcrown(tmp_path, {"by_onnx": dict(ACTIONS, **{"test_unsat.onnx": "unsafe-pgd"})})
    abc = tmp_path / "abc_layout"
    (abc / "alpha-beta-CROWN").mkdir(parents=True)
    (abc / "alpha-beta-CROWN" / "complete_verifier").symlink_to(tmp_path / "abcrown" / "complete_verifier")
    (abc / "auto_LiRPA").symlink_to(tmp_path / "auto_lirpa")
    (abc / "onnx2pytorch" / "onnx2pytorch").mkdir(parents=True)
    (abc / "onnx2pytorch" / "onnx2pytorch" / "__init__.py").write_text("")
    ours = _verdict_csv(tmp_path / "ours.csv", [("test_unsat.onnx", "test_prop.vnnlib", "unsat", 1.0)])
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", DEVICE="cpu", PY=sys.executable,
               SKIP_WHEELS="1", THREADS="1", OUT_DIR=str(out), BENCH_DATA=str(test_bench.parent),
               ABCROWN_DIR=str(abc), ABCROWN_CONFIG=opts[opts.index("--abcrown-config") + 1])
    res = subprocess.run(["bash", str(REPO / "bench" / "gpu" / "abcrown_gpu.sh"), test_bench.name, "2", "0.05",
                          "120", str(ours)], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "CONTRADICTION: ours says unsat, abcrown says sat" in res.stdout      # runner.log: both streams
    assert sorted(f.name for f in out.iterdir()) == ["abcrown.csv", "abcrown.log", "env.txt", "results.csv",
                                                    "runner.log", "table.md"]
    assert [r["abcrown_raw"] for r in _rows(out)] == ["unsat", "unknown", "unsat", "sat", "sat"]
