"""Inputs are never written: an output path (`--results`, `--json`, `--csv`) that names an input
file, through a link, a hard link, a `.gz` fallback or plainly, or another output, is refused in
one line with exit 2 before anything is read or written (issue 18, item 1)."""
from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path

import pytest

from dtensor_verify.cli import main

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO.parent / "shared" / "benchmarks"


def _inputs(tmp_path):
    for rel in ("test/test_sat.onnx", "test/test_prop.vnnlib"):
        if not (BENCH / rel).exists():
            pytest.fail(f"benchmark file {BENCH / rel} is missing")
    onnx = tmp_path / "model.onnx"
    spec = tmp_path / "prop.vnnlib"
    shutil.copy(BENCH / "test/test_sat.onnx", onnx)
    shutil.copy(BENCH / "test/test_prop.vnnlib", spec)
    return onnx, spec


def _refused(capsys, argv, untouched: dict, *words):
    before = {p: p.read_bytes() for p in untouched}
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2, err
    assert "Traceback" not in err and len(lines) == 1 and lines[0].startswith("dtensor-verify: error: "), err
    for w in words:
        assert w in lines[0], lines[0]
    for p, data in before.items():
        assert p.read_bytes() == data, f"{p} was written"
    return lines[0]


def _run(onnx, spec, results, *extra):
    return ["run", "--onnx", onnx, "--vnnlib", spec, "--results", results, "--timeout", "30", "--quiet", *extra]


@pytest.mark.parametrize("which", ["onnx", "vnnlib"])
def test_results_naming_an_input_is_refused(tmp_path, capsys, which):
    onnx, spec = _inputs(tmp_path)
    target = onnx if which == "onnx" else spec
    _refused(capsys, _run(onnx, spec, target), {onnx: 0, spec: 0}, "--results", f"--{which}", "never written")


def test_links_hard_links_and_relative_paths_are_seen_through(tmp_path, capsys, monkeypatch):
    onnx, spec = _inputs(tmp_path)
    (tmp_path / "alias").symlink_to(tmp_path, target_is_directory=True)
    _refused(capsys, _run(onnx, spec, tmp_path / "alias" / "model.onnx"), {onnx: 0}, "--onnx")
    os.link(spec, tmp_path / "hard.vnnlib")
    _refused(capsys, _run(onnx, spec, tmp_path / "hard.vnnlib"), {spec: 0}, "--vnnlib")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    _refused(capsys, _run(onnx, spec, "./sub/../model.onnx"), {onnx: 0}, "--onnx")


def test_gz_fallback_input_is_protected(tmp_path, capsys):
    onnx, spec = _inputs(tmp_path)
    gz = tmp_path / "p.vnnlib.gz"
    gz.write_bytes(gzip.compress(spec.read_bytes()))
    # `--vnnlib p.vnnlib` reads p.vnnlib.gz (only that exists): that file is an input too.
    _refused(capsys, _run(onnx, tmp_path / "p.vnnlib", gz), {gz: 0}, "--vnnlib")


def test_json_naming_an_input_or_the_results_file_is_refused(tmp_path, capsys):
    onnx, spec = _inputs(tmp_path)
    res = tmp_path / "res.txt"
    res.write_text("unsat\n")
    _refused(capsys, _run(onnx, spec, res, "--json", onnx), {onnx: 0, res: 0}, "--json", "--onnx")
    _refused(capsys, _run(onnx, spec, res, "--json", res), {onnx: 0, res: 0}, "--results and --json")


def test_bounds_and_benchmark_outputs_are_checked_too(tmp_path, capsys):
    onnx, spec = _inputs(tmp_path)
    lo = tmp_path / "lo.txt"
    lo.write_text("0 0\n")
    _refused(capsys, ["bounds", onnx, "--vnnlib", spec, "--json", onnx], {onnx: 0}, "--json", "MODEL")
    _refused(capsys, ["bounds", onnx, "--lower", lo, "--upper", lo, "--json", lo], {lo: 0}, "--lower")
    (tmp_path / "instances.csv").write_text("model.onnx,prop.vnnlib,30\n")
    inst = tmp_path / "instances.csv"
    _refused(capsys, ["benchmark", tmp_path, "--csv", inst], {inst: 0}, "--csv", "--instances")
    _refused(capsys, ["benchmark", tmp_path, "--csv", onnx], {onnx: 0}, "--csv", "an instance")


def test_distinct_paths_still_run(tmp_path, capsys):
    """Not a false alarm: an output next to the inputs, with a similar name, is fine."""
    onnx, spec = _inputs(tmp_path)
    res = tmp_path / "model.onnx.result"
    rc = main([str(a) for a in _run(onnx, spec, res, "--json", tmp_path / "model.json")])
    assert rc == 0, capsys.readouterr().err
    assert res.read_text().split("\n")[0] in ("sat", "unsat", "unknown", "timeout")
    assert (tmp_path / "model.json").read_text().startswith("{")
