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
def export_onnx(model: nn.Module, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, N_IN),), str(path), input_names=["input"],
                          output_names=["output"], opset_version=13, dynamo=False)


def vnnlib_text(x0: torch.Tensor, eps: float, label: int) -> str:
    """VNN-LIB 1.0 robustness property: the box |x - x0|_inf <= eps; unsafe iff some class j !=
    label has Y_j >= Y_label."""
    lines = [f"; Robustness of the demo MLP around a test point of class {label}, L-inf radius {eps:g}.",
             "; The asserted output formula is the unsafe set (unsat = verified robust).", ""]
    lines += [f"(declare-const X_{i} Real)" for i in range(N_IN)]
    lines.append("")
    lines += [f"(declare-const Y_{j} Real)" for j in range(N_CLASSES)]
    lines += ["", "; input box"]
    for i, v in enumerate(x0.tolist()):
        lines.append(f"(assert (>= X_{i} {v - eps:.9g}))")
        lines.append(f"(assert (<= X_{i} {v + eps:.9g}))")
    lines += ["", f"; unsafe: another class scores at least as high as class {label}", "(assert (or"]
    lines += [f"    (and (>= Y_{j} Y_{label}))" for j in range(N_CLASSES) if j != label]
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
    return p


def _fmt(values) -> str:
    return " ".join(f"{v:+.4f}" for v in values)


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    if not args.eps > 0:
        raise SystemExit("--eps must be > 0")
    if args.threads < 1:
        raise SystemExit("--threads must be >= 1")
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
    results["seconds"] = time.perf_counter() - t_start
    (out / "demo_bounds.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"\ntotal {results['seconds']:.1f} s; results in {out / 'demo_bounds.json'}")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
    sys.exit(0)
