"""`dtensor-verify bounds`: bounds of the network outputs (or of a spec's rows C y - d) over an
input box given by a VNN-LIB file or by --lower / --upper files (see cli.py for the commands)."""
from __future__ import annotations

import re
import time
from pathlib import Path

from .cli_common import (EXIT_OK, CliError, add_device_argument, apply_plan, command_device, is_rank0,
                         load_model, metered, one_line, read_property, write_json)


def _read_vector(path: str) -> "np.ndarray":
    import numpy as np

    p = Path(path)
    if not p.exists():
        raise CliError(f"{path}: no such file")
    if p.suffix == ".npy":
        try:
            arr = np.load(p, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise CliError(f"{path}: not a readable .npy file ({one_line(exc)})") from None
        return np.asarray(arr, dtype=np.float64).ravel()
    text = p.read_text()
    tokens = [t for t in re.split(r"[\s,;]+", text.strip()) if t]
    if not tokens:
        raise CliError(f"{path}: no numbers in file")
    values = []
    for i, t in enumerate(tokens):
        try:
            values.append(float(t))
        except ValueError:
            raise CliError(f"{path}: value {i + 1} ('{t[:30]}') is not a number") from None
    return np.asarray(values, dtype=np.float64)


def _check_bounds_args(args) -> None:
    from .run_guard import input_candidates, refuse_overlaps

    refuse_overlaps({"--json": args.json}, [("MODEL", args.model), *input_candidates("--vnnlib", args.vnnlib),
                                            ("--lower", args.lower), ("--upper", args.upper)])
    if args.vnnlib is None and (args.lower is None or args.upper is None):
        raise CliError("give --vnnlib SPEC, or both --lower FILE and --upper FILE")
    if args.vnnlib is not None and (args.lower is not None or args.upper is not None):
        raise CliError("--vnnlib and --lower/--upper are exclusive")
    if args.spec_rows and args.vnnlib is None:
        raise CliError("--spec-rows needs --vnnlib (the rows come from its output constraints)")
    if args.iterations is not None and args.iterations < 0:
        raise CliError("--iterations must be >= 0")


def _spec_rows(path, region, device):
    """C [1, K, n_out] (on `device`), d [K] (CPU) and labels of every row of the region's disjuncts."""
    import numpy as np
    import torch

    rows_C, rows_d, labels = [], [], []
    for j, dj in enumerate(region.disjuncts):
        for i in range(dj.C.shape[0]):
            rows_C.append(dj.C[i])
            rows_d.append(dj.d[i])
            labels.append(f"d{j}.r{i}")
    if not rows_C:
        raise CliError(f"{path}: the first region has no output constraint rows to bound")
    C = torch.tensor(np.stack(rows_C), dtype=torch.float32, device=device).unsqueeze(0)
    d = torch.tensor(np.asarray(rows_d), dtype=torch.float32, device="cpu")   # subtracted on the CPU
    return C, d, labels


def _bounds_input(args, model):
    """(lo, hi, C, d, labels, spec description) from --vnnlib [--spec-rows] or --lower/--upper."""
    import numpy as np

    C = d = None
    labels = [f"Y_{j}" for j in range(model.n_outputs)]
    if args.vnnlib is None:
        lo, hi = _read_vector(args.lower), _read_vector(args.upper)
        for what, v, f in (("lower", lo, args.lower), ("upper", hi, args.upper)):
            if v.size != model.n_inputs:
                raise CliError(f"{f}: {v.size} {what} bounds, the model has {model.n_inputs} inputs")
        return lo, hi, C, d, labels, {"lower": str(args.lower), "upper": str(args.upper)}
    prop = read_property(args.vnnlib, model)
    if not prop.regions:
        raise CliError(f"{args.vnnlib}: the property has no satisfiable region, so no input box")
    region = prop.regions[0]
    spec_desc = {"path": str(args.vnnlib), "regions": len(prop.regions), "region": 0}
    if args.spec_rows:
        C, d, labels = _spec_rows(args.vnnlib, region, model.device)
        spec_desc["rows"] = labels
    return np.asarray(region.lower), np.asarray(region.upper), C, d, labels, spec_desc


def _print_bounds(args, method, seconds, labels, lower, upper) -> None:
    what = "C y - d" if args.spec_rows else "outputs"
    print(f"{Path(args.model).name}: {method} bounds of the {what} ({seconds:.3f} s)")
    print(f"  {'':<8} {'lower':>14} {'upper':>14}")
    show = len(labels) if len(labels) <= 40 else 30
    for name, lo_v, hi_v in list(zip(labels, lower, upper))[:show]:
        print(f"  {name:<8} {lo_v:>14.6g} {hi_v:>14.6g}")
    if show < len(labels):
        print(f"  ... {len(labels) - show} more (see --json)")


def cmd_bounds(args) -> int:
    import torch

    from .methods import AlphaOptions
    from .methods.dispatch import normalize_method

    method = normalize_method(args.method)
    _check_bounds_args(args)
    model = load_model(args.model, command_device(args))
    lo, hi, C, d, labels, spec_desc = _bounds_input(args, model)
    plan = apply_plan(model, args.plan, args.quiet)
    alpha_opts = AlphaOptions(iterations=args.iterations) if args.iterations is not None else None
    x_lo = torch.tensor(lo, dtype=torch.float32, device=model.device).reshape(1, *model.input_shape)
    x_hi = torch.tensor(hi, dtype=torch.float32, device=model.device).reshape(1, *model.input_shape)

    def bound():
        return model.compute_bounds(x_lo, x_hi, method=method, C=C, alpha_options=alpha_opts)

    t0 = time.perf_counter()
    res = bound()
    seconds = time.perf_counter() - t0
    # A second, metered pass: the meter slows bounding, so `seconds` comes from the first.
    memory = metered(model, bound)[1] if args.json and not args.no_memory else {}
    lower, upper = res.lower[0].detach().cpu().double(), res.upper[0].detach().cpu().double()
    if d is not None:
        lower, upper = lower - d.double(), upper - d.double()
    lower, upper = lower.tolist(), upper.tolist()
    if not is_rank0(model):
        return EXIT_OK
    if not args.quiet or args.json is None:
        _print_bounds(args, method, seconds, labels, lower, upper)
    if args.json:
        data = {"lower": lower, "upper": upper, "labels": labels, "method": method, "seconds": seconds,
                "device": str(model.device), "world_size": model.layout.world_size, "plan": plan or "replicate",
                "memory": memory, "model": str(args.model), "spec": spec_desc, "spec_rows": bool(args.spec_rows)}
        if res.info.get("iterations") is not None:
            data["iterations"] = res.info["iterations"]
        write_json(args.json, data)
    return EXIT_OK


def add_bounds_command(sub):
    b = sub.add_parser("bounds", help="bounds of the network outputs (or spec rows) over an input box")
    b.add_argument("model", metavar="MODEL", help="ONNX file (.onnx or .onnx.gz)")
    b.add_argument("--vnnlib", metavar="SPEC", help="VNN-LIB file; its first input box is used")
    b.add_argument("--lower", metavar="FILE", help="input lower bounds (text: whitespace/comma separated, or .npy)")
    b.add_argument("--upper", metavar="FILE", help="input upper bounds")
    b.add_argument("--method", default="crown", help="ibp | crown | alpha-crown (default: crown)")
    b.add_argument("--spec-rows", action="store_true", help="bound the rows C y - d of the spec instead of y")
    b.add_argument("--json", metavar="OUT", help="write the bounds and run facts as JSON")
    b.add_argument("--iterations", type=int, default=None, help="alpha-CROWN iterations")
    b.add_argument("--plan", default=None, help="placement plan, e.g. 'fsdp' or 'fc1=tp;*=replicate'")
    b.add_argument("--quiet", action="store_true", help="no table when --json is given")
    b.add_argument("--no-memory", action="store_true",
                   help="skip the metered second pass that fills the JSON's 'memory' entry")
    add_device_argument(b)
    b.set_defaults(func=cmd_bounds)
