"""The VNN-LIB 2.0 solver command line (chapter 5 of the standard).

    dtensor-verify verify QUERY [--network NAME=FILE]... [--timeout S] [--serialise-assignments DIR]
                               [--plan P] [--mesh DPxSHARD] [--device DEV]
    dtensor-verify supports --<capability>
    dtensor-verify --name | --version

`verify` prints one line `sat`, `unsat`, `unknown` or `timed-out` on stdout; after `sat` the
assignment of every declared variable in declaration order (`NAME TYPE [shape]`, then one value a
line, row-major), or with `--serialise-assignments DIR` one TensorProto `DIR/NAME.pb` a variable.
The assignment is printed only after onnxruntime, running the original ONNX file(s), and the
query's own AST, evaluated exactly, confirm it. Errors (a syntax or type error in the query, a
network mapped twice or not at all, an element type that differs from the model, one this
verifier cannot analyse soundly) are one line on stderr, nothing on stdout, exit status 2. A model
whose operations have no bound rule answers `unknown` (the reason on stderr). A 1.0 file (no
`(vnnlib-version ...)` header) is read by the 1.0 reader; its counterexample is printed in the
1.0 result format.
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path

NAME = "dtensor_verify (bound propagation on PyTorch DTensors)"
DEFAULT_TIMEOUT_S = 3600.0
EXIT_OK, EXIT_ERROR = 0, 2

# The theories of chapter 4 this verifier answers, with where that comes from in the code.
THEORIES = {
    # hidden nodes: multinet._with_hidden exposes the named tensors as extra outputs of the graph
    "hidden-node-theories": ("NH", "H"),
    # several inputs / outputs: multinet.ProductModule feeds / collects each in model order
    "multiple-input-output-theories": ("SIO", "MIO"),
    # several networks: the product graph (equal-to: the same model again; isomorphic-to: its own)
    "multiple-network-theories": ("SNET", "MENET", "MINET", "MNET"),
    # every atom is a row over the value vector V (inputs, hidden and outputs alike)
    "multiple-node-comparison-theories": ("SNC", "MNC"),
    # vnnlib2_property: bounds, rows, polynomial atoms relaxed by monomial intervals
    "arithmetic-complexity-theories": ("BND", "OUTC", "LIN", "POLY"),
}
BOOLEANS = {"optimised-disjunctive-reasoning": False,   # DNF, one disjunct per term
            "serialise-assignments": True,
            "unsat-proofs": False}
CAPABILITIES = ("onnx-opset-versions", "onnx-element-types", "onnx-operators", "onnx-operators-unsat-proofs",
                "vnnlib-versions", *THEORIES, *BOOLEANS)
MIN_OPSET = 9      # older files are upgraded by onnx's version converter (model_loading)


def capability(name: str) -> list[str]:
    """The lines `supports --NAME` prints."""
    if name == "onnx-opset-versions":
        import onnx.defs

        return [str(MIN_OPSET), str(onnx.defs.onnx_opset_version())]
    if name == "onnx-element-types":
        from .element_types import INTEGER_OUTPUT_TYPES, SOUND_ELEMENT_TYPES
        return list(SOUND_ELEMENT_TYPES) + list(INTEGER_OUTPUT_TYPES)     # integers: outputs / hidden only
    if name == "onnx-operators":
        from .ops import onnx_operators
        return list(onnx_operators())
    if name == "onnx-operators-unsat-proofs":
        return []
    if name == "vnnlib-versions":
        return ["1.0", "2.0"]
    if name in THEORIES:
        return list(THEORIES[name])
    return ["true" if BOOLEANS[name] else "false"]


def register(parser, sub, cli) -> None:
    """Add `--name`, `verify` and `supports` to the main parser. `cli`: the dtensor_verify.cli module
    (cli.build_parser calls this and passes itself: its helpers are used through `args.cli`, so this
    module never imports it)."""
    import argparse

    class PrintName(argparse.Action):
        def __call__(self, p, namespace, values, option_string=None):
            print(NAME)
            p.exit(0)

    parser.add_argument("--name", nargs=0, action=PrintName, help="print the solver's name")
    v = sub.add_parser("verify", help="VNN-LIB 2.0 command line: decide a query (sat/unsat/unknown/timed-out)")
    v.add_argument("query", metavar="QUERY", help="VNN-LIB query (2.0, or 1.0 with one network)")
    v.add_argument("--network", action="append", default=[], metavar="NAME=FILE",
                   help="the ONNX model of a declared network (once per network without equal-to)")
    v.add_argument("--timeout", type=float, default=None, metavar="SECONDS")
    v.add_argument("--serialise-assignments", "--serialize-assignments", dest="serialise", default=None,
                   metavar="DIR", help="write a sat assignment as DIR/NAME.pb (ONNX TensorProto) files")
    v.add_argument("--plan", default=None)
    v.add_argument("--quiet", action="store_true", help="no progress messages on stderr")
    cli._add_bab_arguments(v)
    cli._add_mesh_argument(v)
    cli._add_device(v)
    v.set_defaults(func=cmd_verify, methods=["crown", "alpha-crown"], no_attack=False, cli=cli)
    s = sub.add_parser("supports", help="VNN-LIB 2.0 command line: report a capability")
    g = s.add_mutually_exclusive_group(required=True)
    for cap in CAPABILITIES:
        g.add_argument(f"--{cap}", dest="capability", action="store_const", const=cap)
    s.set_defaults(func=cmd_supports)


def cmd_supports(args) -> int:
    for line in capability(args.capability):
        print(line)
    return EXIT_OK


def _networks(args):
    from .cli_common import CliError

    mapping, dups = {}, []
    for item in args.network:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise CliError(f"--network {item}: expected NAME=FILE")
        if name in mapping:
            dups.append(name)
        mapping[name] = path
    return mapping, dups


def cmd_verify(args) -> int:
    from .cli_common import CliError
    from .specs.vnnlib2 import is_vnnlib2

    t0 = getattr(args, "started_at", None) or time.perf_counter()
    timeout = DEFAULT_TIMEOUT_S if args.timeout is None else args.timeout
    if not (timeout > 0 and math.isfinite(timeout)):
        raise CliError(f"--timeout must be a positive number of seconds, not {args.timeout}")
    if not Path(args.query).is_file():
        raise CliError(f"{args.query}: no such file")
    args.deadline = t0 + timeout
    if is_vnnlib2(args.query):
        return _verify2(args)
    return _verify1(args)


def _left(args) -> float:
    return max(args.deadline - time.perf_counter(), 0.0)


def _place(args, model) -> None:
    """Apply the plan (before anything is bounded: a refused plan is an error, whatever the query)."""
    cli = args.cli
    # bab: the plan checker refuses `tp` for branch and bound on CPU with small layers, as `run` does
    cli._apply_plan(model, args.plan, args.quiet, timeout_s=_left(args) + cli.COLLECTIVE_SLACK_S, mesh=args.mesh,
                    bab=not args.no_bab)


def _run(args, model, prop, placed: bool = False):
    from .cli_common import bab_options
    from .verify import verify_instance

    cli = args.cli
    if not placed:
        _place(args, model)
    lead = cli._is_rank0(model)
    res = verify_instance(model, prop, None, _left(args), methods=tuple(args.methods), attack=True,
                          log=cli._stderr_log(args.quiet or not lead), bab=not args.no_bab,
                          bab_options=bab_options(args))
    return res, lead


def _verify1(args) -> int:
    from .cli_common import CliError, load_model
    from .specs import format_counterexample

    mapping, dups = _networks(args)
    if len(mapping) != 1 or dups:
        raise CliError(f"{args.query}: a VNN-LIB 1.0 query takes exactly one --network NAME=FILE")
    (path,) = mapping.values()
    model = load_model(path, args.cli._device(args))
    prop = args.cli._read_property(args.query, model)
    # 1.0: candidates are confirmed by onnxruntime on the file itself (verify_instance's default).
    res, lead = _run(args, model, prop)
    if not lead:
        return EXIT_OK if res.verdict != "error" else EXIT_ERROR
    code = _print_verdict(res)
    if res.verdict == "sat" and res.counterexample is not None:
        print(format_counterexample(*res.counterexample), end="")
    return code


def _print_verdict(res) -> int:
    from .cli_common import err as _err

    if res.verdict == "error":
        _err(res.message or "verification failed")
        return EXIT_ERROR
    print({"timeout": "timed-out"}.get(res.verdict, res.verdict), flush=True)
    return EXIT_OK


def _verify2(args) -> int:
    from .cli_common import CliError, err as _err
    from .errors import UnsupportedOpError
    from .multinet import check_mapping, load_product
    from .specs.vnnlib2 import read_query
    from .specs.vnnlib2_pairs import try_relations      # points next to input relations, checked exactly
    from .specs.vnnlib2_property import build_property

    query = read_query(args.query)
    mapping, dups = _networks(args)
    files = check_mapping(query, mapping, dups)
    for f in set(files.values()):
        if not Path(f).is_file():
            raise CliError(f"{f}: no such file")
    prop = build_property(query, allow_unbounded=True)
    try:
        product = load_product(query, files, prop.M, args.cli._device(args))
    except UnsupportedOpError as exc:
        print("unknown", flush=True)
        _err(f"{args.query}: cannot bound the network: {exc}")
        return EXIT_OK
    _place(args, product.model)
    prop = _with_output_bounds(product, query, prop)
    prop.checker = _checker(product, query, prop)
    if product.int_casts and not _int_guard(product, prop):
        return _answer("unknown", why=f"{args.query}: an integer cast's input may leave [-2^20, 2^20] over the "
                       "input boxes (where the float form is exact and no integer op wraps)")
    search = _refute_first(product, prop)
    if search is None:
        return _answer("unsat")
    if _try_corners(search) or try_relations(product.model, search):
        return _answer("sat", query, search.last_assignment, args.serialise)
    res, lead = _run(args, product.model, search, placed=True)
    if not lead:
        return EXIT_OK if res.verdict != "error" else EXIT_ERROR
    if res.verdict == "sat" and search.last_assignment is None:
        res.verdict = "unknown"                 # never: sat only comes through the checker
    if res.verdict == "unsat" and prop.unbounded:
        res.verdict = "unknown"                 # proved over the restriction only
    code = _print_verdict(res)
    if res.verdict == "unknown" and prop.unbounded:
        _err(f"{args.query}: unbounded input(s) {', '.join(prop.unbounded[:5])}: the search ran over a bounded "
             "part of them (a sat there is a sat), the bounds did not refute the rest")
    if res.verdict == "unknown" and prop.relaxed:
        _err("relaxed to true (unknown may come from it): "
             + "; ".join(f"{t} ({why})" for t, why in prop.relaxed[:5]))
    if res.verdict == "sat":
        _write_assignment(query, search.last_assignment, args.serialise)
    return code


def _answer(verdict, query=None, assignment=None, folder=None, why=None) -> int:
    """A verdict decided before the pipeline (every rank decides the same; rank 0 prints)."""
    from .cli_common import err as _err
    from .run_guard import torchrun_rank

    if torchrun_rank() in (None, 0):
        print(verdict, flush=True)
        if verdict == "sat":
            _write_assignment(query, assignment, folder)
        if why:
            _err(why)
    return EXIT_OK


def _int_guard(product, prop) -> bool:
    from .onnx_int_casts import guard_ok

    return guard_ok(product.model, [(r.lower, r.upper) for r in prop.regions])


def _refute_first(product, prop):
    """The property without the disjuncts one bound pass refutes (strict rows at their bound,
    boxes with unbounded inputs: `specs/vnnlib2_refute.py`), restricted to finite boxes for the
    search; None when nothing is left (unsat)."""
    from .specs.vnnlib2_refute import refute, restrict_unbounded

    left, _ = refute(product.model, prop)
    if not left.regions:
        return None
    return restrict_unbounded(left) if prop.unbounded else left


def _try_corners(prop, max_dims: int = 10, max_regions: int = 4) -> bool:
    """The float32 corners of small input boxes, each checked exactly (onnxruntime + the AST):
    products of inputs / outputs peak at corners, where PGD on the relaxed rows often stops just
    short. Deterministic, so every rank under torchrun finds the same."""
    import itertools

    import numpy as np

    if prop.n_inputs > max_dims:
        return False
    for r in prop.regions[:max_regions]:
        lo = np.asarray(r.lower, np.float32)
        lo = np.where(lo < r.lower, np.nextafter(lo, np.float32(np.inf)), lo)
        hi = np.asarray(r.upper, np.float32)
        hi = np.where(hi > r.upper, np.nextafter(hi, np.float32(-np.inf)), hi)
        if np.any(lo > hi) or not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
            continue
        for pick in itertools.product((False, True), repeat=prop.n_inputs):
            if prop.violated_by(np.where(pick, hi, lo).astype(np.float64), None):
                return True
    return False


def _with_output_bounds(product, query, prop):
    """Polynomial atoms over hidden / output values need their bounds: one CROWN pass over the
    regions' boxes, then the property is built again with them."""
    if not prop.relaxed or not prop.regions or prop.unbounded:
        return prop
    import numpy as np
    import torch

    from .specs.vnnlib2_property import build_property

    lo = np.min([r.lower for r in prop.regions], axis=0)
    hi = np.max([r.upper for r in prop.regions], axis=0)
    model = product.model
    dev = model.device
    b = model.compute_bounds(torch.tensor(lo[None], dtype=torch.float32, device=dev),
                             torch.tensor(hi[None], dtype=torch.float32, device=dev), method="crown")
    slo = b.lower.detach().double().cpu().numpy().ravel()
    shi = b.upper.detach().double().cpu().numpy().ravel()
    slack = 1e-5 * (1.0 + np.maximum(np.abs(slo), np.abs(shi)))      # float32 bound arithmetic
    return build_property(query, (slo - slack, shi + slack))


def _checker(product, query, prop):
    from .specs.vnnlib2 import holds

    def check(z):
        values = _exact_pins(query, prop, z, product.evaluate(z))
        return values if holds(query, values) else None

    return check


def _exact_pins(query, prop, z, values: dict) -> dict:
    """A `real` input pinned to a constant that no float32 equals (`(== X 0.1)`) is reported as
    that exact value; the networks got its nearest float32 (the real type's permission to choose
    the internal representation). Other values stay as computed."""
    import numpy as np

    for k, v in getattr(prop, "pinned", {}).items():
        if np.float32(z[k]) != np.float32(float(v)):
            continue
        for var in query.variables:
            if var.kind != "input":
                continue
            for j in range(var.size):
                sign = prop.M[var.offset + j, k]
                if sign != 0:
                    arr = np.asarray(values[var.name], dtype=object).copy()
                    arr.reshape(-1)[j] = v if sign > 0 else -v
                    values[var.name] = arr
    return values


def _text(x) -> str:
    """A value as exact text: floats by their shortest round-trip repr, fractions as decimals,
    integers as integers."""
    from fractions import Fraction

    import numpy as np

    if isinstance(x, (int, np.integer)):
        return str(int(x))
    if not isinstance(x, Fraction):
        return repr(float(x))
    k, den = 0, x.denominator
    while 10 ** k % den and k < 400:
        k += 1
    if 10 ** k % den:
        return repr(float(x))
    digits = abs(x.numerator) * (10 ** k // den)
    whole, frac = divmod(digits, 10 ** k)
    sign = "-" if x < 0 else ""
    return f"{sign}{whole}" + (f".{frac:0{k}d}".rstrip("0") if frac else ".0")


def _write_assignment(query, values: dict, folder: str | None) -> None:
    import numpy as np

    if folder is not None:
        from onnx import numpy_helper

        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        for v in query.variables:
            flat = np.asarray(values[v.name], dtype=object).reshape(-1)
            if v.dtype in ("int32", "int64"):
                arr = np.asarray([int(x) for x in flat], dtype=v.dtype)
            else:
                arr = np.asarray([float(x) for x in flat], dtype=np.float64 if v.dtype == "float64" else np.float32)
            tensor = numpy_helper.from_array(arr.reshape(v.shape), name=v.name)
            (out / f"{v.name}.pb").write_bytes(tensor.SerializeToString())
        return
    lines = []
    for v in query.variables:
        lines.append(f"{v.name} {v.type_text} [{','.join(map(str, v.shape))}]")
        lines += [_text(x) for x in np.asarray(values[v.name], dtype=object).reshape(-1)]
    sys.stdout.write("\n".join(lines) + "\n")
    sys.stdout.flush()
