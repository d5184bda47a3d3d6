"""What the command line's sub-commands share (`cli.py`, `benchmark.py`, and sub-commands in
modules of their own): the program name, exit codes, the user-error type and its one-line
report, loading a model file, the branch-and-bound options from the arguments, and the helpers
and arguments several sub-commands use (device, property, plan, memory report, JSON output).

Light on purpose: nothing heavy is imported at the top (start-up time, see cli.py)."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

PROG = "dtensor-verify"
EXIT_OK, EXIT_CONTRADICTION, EXIT_ERROR = 0, 1, 2


class CliError(Exception):
    """A user error found by the CLI itself (bad arguments, unreadable files)."""


def user_errors() -> tuple:
    """The exception types that are the user's fault: one line, exit status 2, no traceback."""
    from .errors import VerifierError
    from .specs import VnnlibError

    return (VerifierError, VnnlibError, CliError, OSError)


def err(msg: str) -> None:
    msg = " ".join(str(msg).split())
    if len(msg) > 1000:             # a message quoting a huge input stays one short line
        msg = f"{msg[:600]} ...[{len(msg) - 900} characters]... {msg[-300:]}"
    print(f"{PROG}: error: {msg}", file=sys.stderr)


def warn(msg: str) -> None:
    msg = " ".join(str(msg).split())
    print(f"{PROG}: warning: {msg}", file=sys.stderr, flush=True)


def one_line(exc: BaseException) -> str:
    """An exception as one line (an OSError as 'file: reason')."""
    if isinstance(exc, OSError) and not str(exc).strip():
        return type(exc).__name__
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    text = str(exc).strip() or type(exc).__name__
    return " ".join(text.split())


def load_model(path: str, device=None):
    """`api.load` of an ONNX file, with a one-line error for a missing file or a directory."""
    from .api import load

    p = Path(path)
    if not p.exists():
        raise CliError(f"{path}: no such file")
    if p.is_dir():
        raise CliError(f"{path}: is a directory, not an ONNX file")
    return load(str(p), device=device)


def bab_options(args):
    """BabOptions from `--bab-batch` / `--branching` / `--bab-split` (None: the defaults)."""
    from .bab import BabOptions

    opts = BabOptions(branching=args.branching, split=getattr(args, "bab_split", "auto"))
    if args.bab_batch is not None:
        if args.bab_batch < 1:
            raise CliError("--bab-batch must be >= 1")
        opts.batch_size = args.bab_batch
    width = getattr(args, "bab_split_width", None)
    if width is not None:
        if width < 1:
            raise CliError("--bab-split-width must be >= 1")
        opts.split_width = width
    if getattr(args, "bab_balance", "on") == "off":
        opts.balance_children = False
    if getattr(args, "bab_grow", "on") == "off":
        opts.grow_batch = False
    if getattr(args, "bab_store", "derived") == "whole":
        opts.derive_bounds = False
    # beta-CROWN in branch and bound: steps per round (>= 0), step sizes (> 0)
    for flag, field, ok, rule in (("--bab-iterations", "iterations", lambda v: v >= 0, ">= 0"),
                                  ("--bab-lr-alpha", "lr_alpha", lambda v: v > 0, "> 0"),
                                  ("--bab-lr-beta", "lr_beta", lambda v: v > 0, "> 0")):
        value = getattr(args, flag[2:].replace("-", "_"), None)
        if value is None:
            continue
        if not ok(value):
            raise CliError(f"{flag} must be {rule}, not {value}")
        setattr(opts.beta, field, value)
    host = getattr(args, "bab_host_store", None)
    if host is not None:
        if not 0.0 <= host <= 0.9:
            raise CliError(f"--bab-host-store must be in [0, 0.9], not {host}")
        opts.host_fraction = host
    focus = getattr(args, "bab_focus_rows", None)
    if focus is not None:
        if focus == "off":
            opts.focus_rows = None
        else:
            try:
                opts.focus_rows = float(focus)
            except ValueError:
                raise CliError(f"--bab-focus-rows must be a number >= 1 or 'off', not {focus!r}") from None
            if not opts.focus_rows >= 1:
                raise CliError(f"--bab-focus-rows must be a number >= 1 or 'off', not {focus!r}")
    oc = getattr(args, "output_constraints", None)
    if oc is not None:
        opts.output_constraints = oc
    oc_iterations = getattr(args, "output_constraints_iterations", None)
    if oc_iterations is not None:
        if oc_iterations < 1:
            raise CliError(f"--output-constraints-iterations must be >= 1, not {oc_iterations}")
        opts.oc_iterations = oc_iterations
    share = getattr(args, "bab_alpha_time", None)
    if share is not None:
        if not 0 < share <= 1:
            raise CliError("--bab-alpha-time must be in (0, 1]")
        opts.alpha_time_fraction = None if share >= 1 else share
    return opts


# ------------------------------------------------------------------------------ shared by commands

def command_device(args):
    """The `--device` of a command as a torch.device (made this process's current CUDA device)."""
    from .device import resolve_device, use_device

    device = resolve_device(args.device, what=f"--device {args.device}")
    use_device(device)
    return device


def read_property(path: str, model):
    from .specs import read_vnnlib

    p = Path(path)
    if not p.exists() and not Path(str(p) + ".gz").exists():
        raise CliError(f"{path}: no such file")
    return read_vnnlib(str(p), n_inputs=model.n_inputs, n_outputs=model.n_outputs)


def apply_plan(model, plan: str | None, quiet: bool, timeout_s: float | None = None, mesh: str | None = None,
               bab: bool = False):
    """Apply `--plan` (and `--mesh`) through placements.apply_plan_from_cli; returns a printable
    description. `timeout_s`: how long a collective may wait (the process group's timeout) under
    torchrun. `bab`: the run may branch and bound (the plan checker refuses `tp` there on CPU for
    small layers: placements/bab_check.py)."""
    if plan is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        plan = "replicate"
    if plan is None:
        return None
    from placements import apply_plan_from_cli

    apply_plan_from_cli(model, plan, log=not quiet, timeout_s=timeout_s, mesh_shape=mesh, bab=bab)
    return plan


def memory_report_dict(model, rep=None) -> dict:
    """The JSON `memory` entry (a collective: every rank calls)."""
    from .memory import memory_report

    return memory_report(model, rep)


def metered(model, fn):
    """Run `fn()` under the memory meter; returns (result, memory dict)."""
    from .memory import measure

    with measure(model) as rep:
        out = fn()
    return out, memory_report_dict(model, rep)


def is_rank0(model) -> bool:
    """The rank that prints and writes results: global rank 0 (a dp group's rank 0 is not)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return model.layout.rank == 0


def write_json(path: str, data: dict) -> None:
    def default(o):
        import numpy as np
        import torch

        if isinstance(o, torch.Tensor):
            return o.detach().cpu().tolist()
        if isinstance(o, np.ndarray):
            return o.tolist()
        if isinstance(o, (np.floating, np.integer)):
            return o.item()
        return str(o)

    text = json.dumps(data, indent=2, default=default, allow_nan=True)
    Path(path).write_text(text + "\n")


def stderr_log(quiet: bool):
    if quiet:
        return None
    return lambda msg: print(f"[{PROG}] {msg}", file=sys.stderr, flush=True)



# ------------------------------------------------------------------------------ shared arguments

def add_bab_arguments(p):
    p.add_argument("--no-bab", action="store_true",
                   help="stop after the bounds (no branch and bound: incomplete, answers unknown more often)")
    p.add_argument("--bab-batch", type=int, default=None, metavar="N",
                   help="domains split per round per worker (default: from the free memory)")
    p.add_argument("--bab-split-width", type=int, default=None, metavar="W",
                   help="ReLU splitting: at most W neurons split per domain in one round, while the open "
                        "domains x 2^W fit the workers' batches (default 3; 1: one per round)")
    p.add_argument("--bab-balance", default="on", choices=["on", "off"],
                   help="--mesh with several dp groups: spread each round's children evenly over the "
                        "workers (default on; off: only whole parents move, between rounds)")
    p.add_argument("--bab-grow", default="on", choices=["on", "off"],
                   help="CUDA: raise the batch from what full rounds measured (peak bytes a child) up to "
                        "this process's share of the free memory (default on; off: the estimate's batch)")
    p.add_argument("--bab-store", default="derived", choices=["derived", "whole"],
                   help="ReLU splitting: the open-domain queue keeps no intermediate bounds and only the "
                        "root's unstable neurons' signs, slopes and multipliers; the rest follows from each "
                        "domain's splits and is rebuilt as it leaves (default derived: TinyYOLO 21x fewer "
                        "bytes a domain; whole: kept as they are)")
    p.add_argument("--bab-iterations", type=int, default=None, metavar="N",
                   help="beta-CROWN optimisation steps per branch-and-bound round (default 20)")
    p.add_argument("--bab-lr-alpha", type=float, default=None, metavar="LR",
                   help="beta-CROWN's step size for the slopes in branch and bound (default 0.1; "
                        "alpha,beta-CROWN's yolo / vit configs: 0.01)")
    p.add_argument("--bab-lr-beta", type=float, default=None, metavar="LR",
                   help="beta-CROWN's step size for the split multipliers (default 0.05; alpha,beta-CROWN: 0.1)")
    p.add_argument("--bab-host-store", type=float, default=None, metavar="F",
                   help="CUDA: open domains past what the GPU's part of the queue holds move to host memory, "
                        "up to this share of this process's part of it (default 0.5; 0: none, the search "
                        "ends unknown when the GPU's part is full)")
    p.add_argument("--bab-focus-rows", default=None, metavar="F",
                   help="ReLU / general splitting: bound only the rows of an open disjunct whose root bound is "
                        ">= F x its best row's (default 3; off: every row)")
    p.add_argument("--output-constraints", default=None, choices=["auto", "off", "last"],
                   help="before ReLU / general branch and bound, tighten the bounds of the last nonlinear "
                        "layer's inputs over each disjunct's unsafe set (INVPROP-style, as alpha,beta-CROWN's "
                        "TinyYOLO config); a disjunct whose bounds cross is proved there (default auto: on "
                        "ReLU networks where an open disjunct has several rows; last: always; off: never)")
    p.add_argument("--output-constraints-iterations", type=int, default=None, metavar="N",
                   help="--output-constraints: optimisation steps per chunk of neurons (default 20)")
    p.add_argument("--bab-alpha-time", type=float, default=None, metavar="F",
                   help="alpha-CROWN before ReLU / general branch and bound stops after this share of the "
                        "time limit, keeping its best bounds (default 0.3; 1: no cap)")
    p.add_argument("--branching", default="fsb", choices=["fsb", "babsr"],
                   help="branching heuristic (default fsb: filtered smart branching)")
    p.add_argument("--bab-split", default="auto", choices=["auto", "relu", "input"],
                   help="what branch and bound splits: input boxes, ReLU neurons, or auto (input boxes when "
                        "the property perturbs at most 16 inputs or the network has no ReLU)")


def add_mesh_argument(p):
    p.add_argument("--mesh", default=None, metavar="DPxSHARD",
                   help="under torchrun: DP groups of SHARD ranks; the plan applies within a group, "
                        "branch-and-bound domains are spread over all ranks (default 1xP)")


METHOD_CHOICES = ["ibp", "crown", "alpha-crown"]


def add_device_argument(parser):
    parser.add_argument("--device", default="auto", metavar="DEV",
                        help="auto | cpu | cuda | cuda:N (default auto: the GPU when there is one; under "
                             "torchrun each rank's own, cuda:LOCAL_RANK). Counterexamples are still "
                             "confirmed by onnxruntime on the CPU")
