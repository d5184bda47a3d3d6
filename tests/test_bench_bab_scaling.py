"""scripts/bench_bab_scaling.py (the 1 process vs --mesh 2x1 scaling command): instance parsing,
medians, ratios and the targets line, on fake runs (no process started)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_SPEC = importlib.util.spec_from_file_location(
    "bench_bab_scaling", Path(__file__).resolve().parents[1] / "scripts" / "bench_bab_scaling.py")
bbs = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(bbs)


def _run(procs, seconds, bab, domains, verdict="unsat", alpha=1.0):  # noqa: D103
    return {"procs": procs, "verdict": verdict, "seconds": seconds, "wall": seconds + 3, "bab_seconds": bab,
            "pre_bab_seconds": seconds - bab, "alpha_seconds": alpha, "domains": domains,
                        "rate": domains / bab if bab else 0.0, "rounds": 10, "sync_seconds": 0.1, "note": "",
            "cpu_seconds": seconds * 0.9, "bab_cpu_seconds": bab * 0.9}


def test_instances_parse_and_default_set_names_the_targets():
    inst = bbs.parse_instance("mnist_fc/onnx/mnist-net_256x4.onnx.gz,vnnlib/prop_3_0.05.vnnlib.gz,relu")
    assert inst == ("mnist_fc", "onnx/mnist-net_256x4.onnx.gz", "vnnlib/prop_3_0.05.vnnlib.gz", "relu")
    assert bbs.instance_name(inst) == "mnist-net_256x4 prop_3_0.05 (relu)"
    assert bbs.parse_instance("a/b.onnx,c.vnnlib")[3] == "auto"
    names = [bbs.instance_name(bbs.parse_instance(t)) for t in bbs.DEFAULT]
    assert "mnist-net_256x4 prop_8_0.03 (relu)" in names and "mnist-net_256x4 prop_3_0.05 (relu)" in names
    assert sum("(input)" in n for n in names) >= 2
    with pytest.raises(SystemExit, match="bad instance"):
        bbs.parse_instance("no-family.onnx,x.vnnlib")


def test_medians_ratios_and_targets():
    runs = [_run(1, 20.0, 12.0, 6000), _run(2, 12.0, 7.0, 7000), _run(2, 14.0, 8.0, 7000), _run(1, 22.0, 14.0, 6000)]
    row = bbs.summarise("acasxu 1_1 prop_3 (input)", runs, 2)
    assert row["p1_seconds"] == 21.0 and row["p2_seconds"] == 13.0
    assert row["time_ratio"] == pytest.approx(13.0 / 21.0)
    assert row["rate_ratio"] == pytest.approx(statistics_median([7000 / 7, 7000 / 8]) / statistics_median([500, 6000 / 14]))
    assert row["p1_verdicts"] == "unsat/unsat"
    lines = "\n".join(bbs.tables([row], 2))
    assert "time 0.62x (meets <= 0.65); sub-boxes/s 2.02x (meets >= 1.7)" in lines
    slow = bbs.summarise("y (input)", [_run(1, 10.0, 8.0, 800), _run(2, 9.0, 7.0, 800)], 2)
    assert "time 0.90x (MISSES <= 0.65); sub-boxes/s 1.14x (MISSES >= 1.7)" in "\n".join(bbs.tables([slow], 2))
    short = bbs.summarise("x (relu)", [_run(1, 4.0, 2.0, 100), _run(2, 4.0, 2.0, 100)], 2)
    assert "outside the time target" in "\n".join(bbs.tables([short], 2))


def statistics_median(values):
    import statistics
    return statistics.median(values)


def test_a_run_keeps_the_callers_python_path_and_reports_why_it_failed(tmp_path, monkeypatch):
    """The runs see this checkout *and* the caller's PYTHONPATH (a GPU host's wheels in a --target
    folder); a run that leaves no JSON is `error` with its log's last line (or `timeout` when the
    watchdog wrote that to the results file)."""
    seen = {}

    def fake_run(cmd, env, cwd, stdout, stderr, timeout):
        seen["path"] = env["PYTHONPATH"]
        stdout.write("Traceback (most recent call last):\nModuleNotFoundError: No module named 'onnx2torch'\n")

    monkeypatch.setattr(bbs.subprocess, "run", fake_run)
    monkeypatch.setenv("PYTHONPATH", "/tmp/site")
    inst = ("mnist_fc", "onnx/m.onnx.gz", "vnnlib/p.vnnlib.gz", "relu")
    r = bbs.run_one(tmp_path, inst, 1, 30.0, tmp_path, "t1")
    assert seen["path"].split(":") == [str(bbs.ROOT), "/tmp/site"]
    assert r["verdict"] == "error" and "onnx2torch" in r["note"]

    def watchdog(cmd, env, cwd, stdout, stderr, timeout):
        (tmp_path / "t2.txt").write_text("timeout\n")

    monkeypatch.setattr(bbs.subprocess, "run", watchdog)
    r = bbs.run_one(tmp_path, inst, 2, 30.0, tmp_path, "t2")
    assert (r["verdict"], r["seconds"]) == ("timeout", 30.0)


def test_pinned_runs_get_their_own_cores_and_report_cpu_seconds(tmp_path, monkeypatch):
    """--pin: the run starts under taskset on its job's cores; the CPU seconds of the JSON (rank 0's
    process time, the pipeline's and branch and bound's) reach the row and the CPU table."""
    seen = {}

    def fake_run(cmd, env, cwd, stdout, stderr, timeout):
        seen["cmd"] = cmd
        js = Path(cmd[cmd.index("--json") + 1])
        js.write_text('{"verdict": "unsat", "seconds": 9.0, "cpu_seconds": 8.5, '
                      '"bounds": {"bab": {"seconds": 6.0, "cpu_seconds": 5.5, "domains_visited": 60}}}')

    monkeypatch.setattr(bbs.subprocess, "run", fake_run)
    monkeypatch.setattr(bbs.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr(bbs, "core_of", lambda cpu: (0, cpu))        # no SMT
    inst = ("mnist_fc", "onnx/m.onnx.gz", "vnnlib/p.vnnlib.gz", "relu")
    assert bbs.pinned_cores(1, 2) == [2, 3] and bbs.pinned_cores(2, 2) == [0, 1]
    r = bbs.run_one(tmp_path, inst, 2, 30.0, tmp_path, "t3", cores=[2, 3])
    assert seen["cmd"][:3] == ["taskset", "-c", "2,3"]
    assert (r["cpu_seconds"], r["bab_cpu_seconds"]) == (8.5, 5.5)
    r1 = bbs.run_one(tmp_path, inst, 1, 30.0, tmp_path, "t4", cores=[2, 3])
    assert seen["cmd"][:3] == ["taskset", "-c", "2"]
    runs = [{**r1, "procs": 1, "cpu_seconds": 17.0, "bab_cpu_seconds": 11.0}, {**r, "procs": 2}]
    row = bbs.summarise("m p (relu)", runs, 2)
    assert row["cpu_ratio"] == pytest.approx(0.5) and row["bab_cpu_ratio"] == pytest.approx(0.5)
    assert "| m p (relu) | 17.00 / 8.50 | 0.50 | 11.00 / 5.50 | 0.50 |" in "\n".join(bbs.tables([row], 2))


def test_variants_pass_their_arguments_and_name_their_rows(tmp_path, monkeypatch):
    assert bbs.parse_variants([]) == [("", [])]
    assert bbs.parse_variants(["w1=--bab-split-width 1", "auto="]) == [("w1", ["--bab-split-width", "1"]),
                                                                        ("auto", [])]
    with pytest.raises(SystemExit):
        bbs.parse_variants(["no-equals"])
    seen = []

    def fake_run(cmd, env, cwd, stdout, stderr, timeout):
        seen.append(cmd)

    monkeypatch.setattr(bbs.subprocess, "run", fake_run)
    inst = ("mnist_fc", "onnx/m.onnx.gz", "vnnlib/p.vnnlib.gz", "relu")
    args = type("A", (), dict(jobs=1, procs=2, pin=False, repeats=1, timeout=30.0, out=tmp_path, device="cpu",
                              variant=["w1=--bab-split-width 1", "w3=--bab-split-width 3"]))()
    rows = bbs._run_instance(tmp_path, inst, 0, args, None)
    assert [r["instance"] for r in rows] == ["m p (relu) [w1]"] * 2 + ["m p (relu) [w3]"] * 2
    assert [c[c.index("--bab-split-width") + 1] for c in seen] == ["1", "1", "3", "3"]


def test_runs_at_once_never_share_cores(monkeypatch):
    """A short instance's successor must not land on the cores of a long one still running (with
    the slot taken from the instance index modulo --jobs, instance 2 shared instance 0's cores)."""
    import concurrent.futures as cf
    import threading
    import time
    import types

    monkeypatch.setattr(bbs.os, "sched_getaffinity", lambda pid: set(range(8)))
    busy: set[int] = set()
    lock = threading.Lock()
    clashes = []

    def fake(root, inst, i, args, cores):
        with lock:
            if busy & set(cores):
                clashes.append((i, cores))
            busy.update(cores)
        time.sleep(0.3 if i == 0 else 0.02)
        with lock:
            busy.difference_update(cores)
        return []

    monkeypatch.setattr(bbs, "_run_instance", fake)
    args = types.SimpleNamespace(jobs=2, procs=2, pin=True)
    slots = bbs.core_slots(args)
    with cf.ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(lambda i: bbs.run_instance(None, None, i, args, slots), range(5)))
    assert clashes == []


@pytest.mark.parametrize("siblings", ["adjacent", "halves"])
def test_pinned_ranks_of_one_run_never_share_a_physical_core(monkeypatch, siblings):
    """Issue 21: on a host whose logical CPUs 2j, 2j+1 are SMT siblings, --pin put both ranks of a
    2x1 run on one physical core (each rank slower, the one process not). Each job's cores now sit on
    distinct physical cores, and jobs never share a logical CPU; the conditions line says the SMT."""
    core = (lambda cpu: (0, cpu // 2)) if siblings == "adjacent" else (lambda cpu: (0, cpu % 8))
    monkeypatch.setattr(bbs.os, "sched_getaffinity", lambda pid: set(range(16)))
    monkeypatch.setattr(bbs, "core_of", core)
    taken = []
    for job in range(4):
        cores = bbs.pinned_cores(job, 2)
        assert len({core(c) for c in cores}) == 2, cores
        taken += cores
    assert len(set(taken)) == len(taken) == 8
    assert len({core(c) for c in taken}) == 8          # 8 physical cores for 8 ranks
    assert bbs.smt_note(list(range(16))) == "16 logical CPUs on 8 physical cores"
