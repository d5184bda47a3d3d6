"""What the command line's sub-commands share (`cli.py`, `benchmark.py`, and sub-commands in
modules of their own): the program name, exit codes, the user-error type and its one-line
report, loading a model file, and the branch-and-bound options from the arguments.

Light on purpose: nothing heavy is imported at the top (start-up time, see cli.py)."""
from __future__ import annotations

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
    return opts
