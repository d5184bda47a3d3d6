"""A self-contained demo: train a tiny classifier, export it, verify a robustness property.

    python -m dtensor_verify.demo [--out DIR] [--eps 0.4] [--seed 1]      (or scripts/demo.sh)

1. Trains an MLP 4 -> 32 -> 32 -> 3 (ReLU) for 100 full-batch Adam steps on a
   synthetic 3-class dataset (Gaussian blobs, fixed seed); about a second on a CPU.
2. Exports it to ONNX (`demo_mlp.onnx`) and writes a VNN-LIB 1.0 property (`demo_prop.vnnlib`):
   an L-inf box of radius `--eps` around a correctly classified test point, whose unsafe set is
   "some other class scores at least as high as the true one".
3. Loads the ONNX file back with `dtensor_verify.load`, reads the box with
   `dtensor_verify.specs.read_vnnlib`, and bounds the margins `y_true - y_j` (j != true) and the
   raw outputs with IBP, CROWN and alpha-CROWN; prints a table. A margin lower bound > 0 for
   every j proves the property.
4. Runs the full verdict pipeline (`dtensor_verify.verify.verify_instance`: attack, CROWN,
   alpha-CROWN) on the files and prints the VNN-COMP verdict.
5. Sharding (`--procs 2`, the default; `--procs 0` skips it): a wide random MLP
   (64 -> 3 x `--width` -> 10, default 1024) is bounded with CROWN by the `dtensor-verify bounds`
   command three times: in one process, then under `torchrun --nproc-per-node 2` (CPU gloo) with
   `--plan fsdp` and with `--plan spec`. Prints per-rank peak memory next to the one process's,
   and checks that the `fsdp` bounds are bitwise equal to the one process's (`==` on the float32
   values; this holds at equal thread counts, so every process runs with one thread) and the
   `spec` bounds equal within rtol 1e-5, atol 1e-6 (its ranks sum in another order).

Nothing is downloaded. The files go to `--out DIR` (default: a fresh temporary directory).
`main(argv)` returns the results as a dict (used by tests/test_demo.py); `demo_bounds.json` in
the output directory holds the same numbers.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from torch import nn

N_IN, HIDDEN, N_CLASSES = 4, 32, 3
WIDE_IN, WIDE_DEPTH, WIDE_OUT = 64, 3, 10
SPEC_RTOL, SPEC_ATOL = 1e-5, 1e-6


# ------------------------------------------------------------------------------------------ data, model
def make_dataset(n_per_class: int, seed: int):
    """Three Gaussian blobs in R^4 (centres fixed by the seed), labels 0..2."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(N_CLASSES, N_IN, generator=g) * 1.5
    xs, ys = [], []
    for c in range(N_CLASSES):
        xs.append(centres[c] + 0.6 * torch.randn(n_per_class, N_IN, generator=g))
        ys.append(torch.full((n_per_class,), c, dtype=torch.long))
    x, y = torch.cat(xs), torch.cat(ys)
    perm = torch.randperm(len(y), generator=g)
    return x[perm], y[perm]


def train_model(seed: int, steps: int = 100):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(N_IN, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN), nn.ReLU(),
                          nn.Linear(HIDDEN, N_CLASSES))
    x, y = make_dataset(200, seed)
    x_train, y_train, x_test, y_test = x[:450], y[:450], x[450:], y[450:]
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(steps):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x_train), y_train)
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(x_test).argmax(1) == y_test).float().mean().item()
    return model, (x_test, y_test), acc, loss.item()


def pick_point(model, x_test, y_test):
    """The correctly classified test point with the median logit margin (a typical point)."""
    with torch.no_grad():
        out = model(x_test)
    correct = (out.argmax(1) == y_test).nonzero().flatten()
    top = out[correct].gather(1, y_test[correct].unsqueeze(1)).squeeze(1)
    others = out[correct].scatter(1, y_test[correct].unsqueeze(1), float("-inf")).max(1).values
    margin = top - others
    i = correct[margin.argsort()[len(margin) // 2]]
    return x_test[i], int(y_test[i])


# ------------------------------------------------------------------------------------------ files
def export_onnx(model: nn.Module, path: Path, n_in: int = N_IN) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, n_in),), str(path), input_names=["input"],
                          output_names=["output"], opset_version=13, dynamo=False)


def vnnlib_text(x0: torch.Tensor, eps: float, label: int, n_classes: int = N_CLASSES,
                what: str = "the demo MLP") -> str:
    """VNN-LIB 1.0 robustness property: the box |x - x0|_inf <= eps; unsafe iff some class j !=
    label has Y_j >= Y_label."""
    lines = [f"; Robustness of {what} around a point of class {label}, L-inf radius {eps:g}.",
             "; The asserted output formula is the unsafe set (unsat = verified robust).", ""]
    lines += [f"(declare-const X_{i} Real)" for i in range(x0.numel())]
    lines.append("")
    lines += [f"(declare-const Y_{j} Real)" for j in range(n_classes)]
    lines += ["", "; input box"]
    for i, v in enumerate(x0.tolist()):
        lines.append(f"(assert (>= X_{i} {v - eps:.9g}))")
        lines.append(f"(assert (<= X_{i} {v + eps:.9g}))")
    lines += ["", f"; unsafe: another class scores at least as high as class {label}", "(assert (or"]
    lines += [f"    (and (>= Y_{j} Y_{label}))" for j in range(n_classes) if j != label]
    lines.append("))")
    return "\n".join(lines) + "\n"


def margin_spec(label: int) -> torch.Tensor:
    """C [1, n-1, n] with rows e_label - e_j: C y = y_label - y_j."""
    rows = []
    for j in range(N_CLASSES):
        if j != label:
            r = torch.zeros(N_CLASSES)
            r[label], r[j] = 1.0, -1.0
            rows.append(r)
    return torch.stack(rows).unsqueeze(0)


# ------------------------------------------------------------------------------------------ main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m dtensor_verify.demo",
                                description="Train a tiny classifier, export ONNX + VNN-LIB, bound and verify it.")
    p.add_argument("--out", metavar="DIR", default=None, help="where to write the ONNX / VNN-LIB / JSON files "
                                                              "(default: a new temporary directory)")
    p.add_argument("--eps", type=float, default=0.4, help="L-inf radius of the input box (default 0.4: IBP and "
                                                          "CROWN fail there, alpha-CROWN proves it)")
    p.add_argument("--seed", type=int, default=1, help="seed of the data, training and point choice (default 1)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: the model is tiny)")
    p.add_argument("--timeout", type=float, default=20.0, help="time limit of the verdict pipeline (s)")
    p.add_argument("--procs", type=int, default=2, help="torchrun processes of the sharding part (default 2; "
                                                        "0 skips it)")
    p.add_argument("--width", type=int, default=1024, help="width of the sharding part's MLP (default 1024)")
    return p


def _fmt(values) -> str:
    return " ".join(f"{v:+.4f}" for v in values)


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    if not args.eps > 0:
        raise SystemExit("--eps must be > 0")
    if args.threads < 1:
        raise SystemExit("--threads must be >= 1")
    if args.procs < 0 or args.procs == 1 or args.width < 1:
        raise SystemExit("--procs must be 0 (skip the sharding part) or >= 2, --width >= 1")
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _run(args)
    finally:
        torch.set_num_threads(threads)


def _run(args) -> dict:
    import dtensor_verify as dv
    from dtensor_verify.specs import read_vnnlib

    t_start = time.perf_counter()
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="dtensor_verify_demo_"))
    out.mkdir(parents=True, exist_ok=True)

    # 1. train
    t0 = time.perf_counter()
    net, (x_test, y_test), acc, loss = train_model(args.seed)
    print(f"trained MLP {N_IN}-{HIDDEN}-{HIDDEN}-{N_CLASSES} on 3 Gaussian blobs: loss {loss:.3f}, "
          f"test accuracy {acc:.1%} ({time.perf_counter() - t0:.2f} s)")
    x0, label = pick_point(net, x_test, y_test)

    # 2. export
    onnx_path, spec_path = out / "demo_mlp.onnx", out / "demo_prop.vnnlib"
    export_onnx(net, onnx_path)
    spec_path.write_text(vnnlib_text(x0, args.eps, label))
    print(f"wrote {onnx_path}\nwrote {spec_path}  (class {label}, eps {args.eps:g})")

    # 3. load back and bound
    model = dv.load(onnx_path)
    prop = read_vnnlib(spec_path, n_inputs=model.n_inputs, n_outputs=model.n_outputs)
    region = prop.regions[0]
    lo = torch.tensor(region.lower, dtype=torch.float32).reshape(1, *model.input_shape)
    hi = torch.tensor(region.upper, dtype=torch.float32).reshape(1, *model.input_shape)
    C = margin_spec(label)
    others = [j for j in range(N_CLASSES) if j != label]
    with torch.no_grad():
        y0 = model.forward(x0.reshape(1, -1))[0]
    print(f"network output at the centre: {_fmt(y0.tolist())}")

    results: dict = {"out_dir": str(out), "onnx": str(onnx_path), "vnnlib": str(spec_path), "label": label,
                     "eps": args.eps, "test_accuracy": acc, "methods": {}}
    header = (f"\n| method | margin lower bounds y_{label} - y_j (j = {', '.join(map(str, others))}) "
              f"| min margin | output bounds [lower, upper] | ms |")
    print(header)
    print("| --- | --- | ---: | --- | ---: |")
    for method in ("ibp", "crown", "alpha-crown"):
        t = time.perf_counter()
        margins = model.compute_bounds(lo, hi, method=method, C=C)
        outputs = model.compute_bounds(lo, hi, method=method)
        ms = (time.perf_counter() - t) * 1e3
        m_lo = margins.lower[0].detach().tolist()
        o_lo, o_up = outputs.lower[0].detach().tolist(), outputs.upper[0].detach().tolist()
        results["methods"][method] = {"margin_lower": m_lo, "margin_upper": margins.upper[0].detach().tolist(),
                                      "output_lower": o_lo, "output_upper": o_up, "ms": ms}
        boxes = " ".join(f"[{a:+.3f}, {b:+.3f}]" for a, b in zip(o_lo, o_up))
        print(f"| {method} | {_fmt(m_lo)} | {min(m_lo):+.4f} | {boxes} | {ms:.1f} |")
    for method, r in results["methods"].items():
        r["proved"] = min(r["margin_lower"]) > 0
    proved = [m for m, r in results["methods"].items() if r["proved"]]
    print("\nrobust (all margin lower bounds > 0) by: " + (", ".join(proved) if proved else "none of the methods"))

    # 4. the verdict pipeline
    try:
        from dtensor_verify.verify import verify_instance
    except ImportError:
        verify_instance = None
    if verify_instance is not None:
        res = verify_instance(model, prop, str(onnx_path), args.timeout)
        results["verdict"] = res.verdict
        results["decided_by"] = res.decided_by
        extra = f" (decided by {res.decided_by})" if res.decided_by else ""
        meaning = {"unsat": "verified: no input in the box is misclassified",
                   "sat": "counterexample found", "unknown": "neither proved nor refuted"}.get(res.verdict, "")
        print(f"verify_instance verdict: {res.verdict}{extra}" + (f" - {meaning}" if meaning else "")
              + f" ({res.seconds:.2f} s)")
    if args.procs:
        results["sharding"] = sharding_demo(out, args.width, args.procs, args.seed)
    results["seconds"] = time.perf_counter() - t_start
    (out / "demo_bounds.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"\ntotal {results['seconds']:.1f} s; results in {out / 'demo_bounds.json'}")
    return results


# ------------------------------------------------------------------------------------------ sharding
def wide_mlp(width: int, seed: int) -> nn.Module:
    """64 -> 3 x width -> 10, ReLU, random weights from `seed` (untrained: the point is memory)."""
    torch.manual_seed(seed)
    layers, n = [], WIDE_IN
    for _ in range(WIDE_DEPTH):
        layers += [nn.Linear(n, width), nn.ReLU()]
        n = width
    return nn.Sequential(*layers, nn.Linear(n, WIDE_OUT)).eval()


def _cli(args: list[str], procs: int, log: Path, threads: int = 1) -> float:
    """Run `dtensor-verify ARGS` in one process (procs = 1) or under torchrun; returns the wall
    time. One thread per process by default: the bitwise claim holds only at equal thread counts."""
    import os
    import subprocess

    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}"] if procs > 1 else []
    cmd = [sys.executable, *launcher, "-m", "dtensor_verify", "--threads", str(threads), *args]
    t = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.run(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, timeout=600)
    if proc.returncode != 0:
        raise SystemExit(f"the sharding part failed (exit {proc.returncode}): {' '.join(cmd)}\n"
                         f"{log.read_text()[-3000:]}")
    return time.perf_counter() - t


def _peaks(run: dict, key: str = "peak_bytes") -> list[int]:
    return [r[key] for r in run["memory"]["per_rank"]]


def _max_diff(run: dict, ref: dict) -> float:
    return max(abs(a - b) for a, b in zip(run["lower"] + run["upper"], ref["lower"] + ref["upper"]))


def _mib(values) -> str:
    return " / ".join(f"{b / 2**20:.1f}" for b in values)


def sharding_demo(out: Path, width: int, procs: int, seed: int) -> dict:
    """Part 5 (see the module docstring): one process vs torchrun `fsdp` and `spec`."""
    net = wide_mlp(width, seed)
    onnx_path, spec_path = out / "wide_mlp.onnx", out / "wide_prop.vnnlib"
    export_onnx(net, onnx_path, WIDE_IN)
    x0 = torch.rand(WIDE_IN, generator=torch.Generator().manual_seed(seed))
    label = int(net(x0.unsqueeze(0)).argmax())
    spec_path.write_text(vnnlib_text(x0, 0.01, label, WIDE_OUT, what="a random wide MLP"))
    print(f"\nSharding: MLP {WIDE_IN}-{WIDE_DEPTH}x{width}-{WIDE_OUT} (random weights), CROWN bounds of the "
          f"outputs, `dtensor-verify bounds` in one process and under torchrun P = {procs} (CPU gloo), "
          "one thread per process:")
    runs = {}
    for name, plan, p, threads in (("one process", None, 1, 1), ("fsdp", "fsdp", procs, 1),
                                   ("spec", "spec", procs, 1), ("2 threads", None, 1, 2)):
        js = out / f"wide_{name.replace(' ', '_')}.json"
        args = ["bounds", str(onnx_path), "--vnnlib", str(spec_path), "--method", "crown", "--device", "cpu",
                "--json", str(js), "--quiet"] + (["--plan", plan] if plan else [])
        seconds = _cli(args, p, out / f"wide_{name.replace(' ', '_')}.log", threads)
        runs[name] = dict(json.loads(js.read_text()), wall=seconds)
    one = runs["one process"]
    ref_lo, ref_up = torch.tensor(one["lower"]), torch.tensor(one["upper"])
    rows, summary = [], {"width": width, "procs": procs, "one_process_peak_bytes": _peaks(one)[0],
                         "one_process_baseline_bytes": _peaks(one, "baseline_bytes")[0]}
    for name in ("fsdp", "spec"):
        run = runs[name]
        lo, up = torch.tensor(run["lower"]), torch.tensor(run["upper"])
        bitwise = run["lower"] == one["lower"] and run["upper"] == one["upper"]
        close = torch.allclose(lo, ref_lo, rtol=SPEC_RTOL, atol=SPEC_ATOL) and \
            torch.allclose(up, ref_up, rtol=SPEC_RTOL, atol=SPEC_ATOL)
        diff = _max_diff(run, one)
        ratio = max(_peaks(run)) / _peaks(one)[0]
        summary[name] = {"peak_bytes_per_rank": _peaks(run), "baseline_bytes_per_rank": _peaks(run, "baseline_bytes"),
                         "peak_ratio": ratio, "bitwise_equal": bitwise,
                         "within_tolerance": close, "max_abs_diff": diff, "world_size": run["world_size"]}
        if name == "fsdp":
            check = "bitwise equal" if bitwise else f"NOT bitwise equal (max |diff| {diff:.2g})"
        else:
            check = (f"equal within rtol {SPEC_RTOL:g}, atol {SPEC_ATOL:g} (max |diff| {diff:.2g})" if close
                     else f"OUTSIDE rtol {SPEC_RTOL:g}, atol {SPEC_ATOL:g} (max |diff| {diff:.2g})")
        rows.append((f"torchrun P = {run['world_size']}, --plan {name}", _mib(_peaks(run, "baseline_bytes")),
                     _mib(_peaks(run)), f"{ratio:.2f}x", check, run["wall"]))
    two = runs["2 threads"]
    same = two["lower"] == one["lower"] and two["upper"] == one["upper"]
    summary["two_threads_bitwise_equal"] = same
    rows.append(("one process, 2 threads", _mib(_peaks(two, "baseline_bytes")), _mib(_peaks(two)),
                 f"{_peaks(two)[0] / _peaks(one)[0]:.2f}x", "bitwise equal" if same else
                 f"NOT bitwise equal (max |diff| {_max_diff(two, one):.2g}): another thread count sums in "
                 "another order", two["wall"]))
    print("\n| run | weights at rest MiB per rank | peak MiB per rank | peak vs one process | bounds vs one process "
          "(1 thread) | wall s |")
    print("| --- | ---: | ---: | ---: | --- | ---: |")
    print(f"| one process, 1 thread | {_mib(_peaks(one, 'baseline_bytes'))} | {_mib(_peaks(one))} | 1.00x | reference "
          f"| {one['wall']:.1f} |")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]} | {r[5]:.1f} |")
    print("(memory: the CPU meter's live tensor bytes, baseline after placing the model and peak while bounding; "
          "wall: process start to exit, torchrun included. fsdp's bounds are bitwise equal to one process at "
          "equal thread counts, here one thread per process: the last row shows why the count matters.)")
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
    sys.exit(0)
