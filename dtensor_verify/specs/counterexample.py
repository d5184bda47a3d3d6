"""VNN-COMP result files and counterexamples.

A result file's first line is the verdict (`sat`, `unsat`, `timeout`, `unknown` or `error`);
for `sat` it is followed by the counterexample, one `(X_i value)` per input and one
`(Y_j value)` per output, wrapped in one pair of parentheses:

    sat
    (
    (X_0 0.125)
    (Y_0 -3.5)
    )

Values are written with Python's shortest round-trip float repr, so reading a counterexample
back gives bit-identical float64 values (the competition re-runs the network on them).
"""
from __future__ import annotations

import os
import re
import secrets
import stat
from fractions import Fraction
from pathlib import Path

import numpy as np

from ..errors import OutputFileError
from .vnnlib import Property

__all__ = ["VERDICTS", "format_counterexample", "parse_counterexample", "write_result_file",
           "check_result_path", "remove_result_file", "read_result_file", "violates"]

VERDICTS = ("sat", "unsat", "timeout", "unknown", "error")
# VNN-COMP 2021 wrote these; read them as today's words.
_OLD_VERDICTS = {"violated": "sat", "holds": "unsat"}

_TOKEN = re.compile(r";[^\n]*|\(|\)|[^\s()]+")
_ENTRY_NAME = re.compile(r"([XY])_(0|[1-9]\d*)\Z")


def format_counterexample(x: np.ndarray, y: np.ndarray) -> str:
    """The VNN-COMP text for input `x` and output `y` (both flattened, row-major)."""
    xs = np.asarray(x, dtype=np.float64).ravel().tolist()   # tolist(): Python floats, exact repr
    ys = np.asarray(y, dtype=np.float64).ravel().tolist()
    lines = ["("]
    lines += [f"(X_{i} {v!r})" for i, v in enumerate(xs)]
    lines += [f"(Y_{j} {v!r})" for j, v in enumerate(ys)]
    lines.append(")")
    return "\n".join(lines) + "\n"


def parse_counterexample(text: str) -> tuple[np.ndarray, np.ndarray]:
    """Parse `((X_0 v) ... (Y_0 v) ...)`, optionally after a `sat` line, into (x, y) float64.

    Entries may come in any order, but the X (and Y) indices must be exactly 0..n-1.
    Raises ValueError on malformed text.
    """
    tokens = [t for t in _TOKEN.findall(text) if not t.startswith(";")]
    if tokens and tokens[0].lower() == "sat":
        tokens = tokens[1:]
    if not tokens:
        raise ValueError("empty counterexample")
    # The entries are normally wrapped in one outer pair of parentheses; accept them bare too.
    if len(tokens) >= 2 and tokens[0] == "(" and tokens[1] == "(":
        if tokens[-1] != ")":
            raise ValueError("counterexample: missing final ')'")
        tokens = tokens[1:-1]
    if len(tokens) % 4 != 0:
        raise ValueError("counterexample: expected entries of the form (X_i value)")
    values: tuple[dict[int, float], dict[int, float]] = ({}, {})
    for k in range(0, len(tokens), 4):
        lp, name, value, rp = tokens[k:k + 4]
        m = _ENTRY_NAME.match(name)
        if lp != "(" or rp != ")" or m is None:
            raise ValueError(f"counterexample: bad entry '{' '.join(tokens[k:k + 4])}'")
        try:
            v = float(value)
        except ValueError:
            raise ValueError(f"counterexample: bad number '{value}' for {name}") from None
        table = values[m.group(1) == "Y"]
        idx = int(m.group(2))
        if idx in table:
            raise ValueError(f"counterexample: {name} given twice")
        table[idx] = v
    out = []
    for kind, table in zip("XY", values):
        n = len(table)
        if table and max(table) != n - 1:
            missing = next(i for i in range(n) if i not in table)
            raise ValueError(f"counterexample: {kind}_{missing} is missing")
        out.append(np.array([table[i] for i in range(n)], dtype=np.float64))
    if out[0].size == 0:
        raise ValueError("counterexample has no X entries")
    return out[0], out[1]


def check_result_path(path: str | os.PathLike) -> Path:
    """Refuse a results path that must not be written (raises OutputFileError, one line).

    The file is replaced by rename, so an existing symlink would be replaced (and a device node
    such as /dev/null too, when run as root): both are refused, as are directories and paths
    whose directory is missing or not writable. A missing file is fine.
    """
    p = Path(path)
    try:
        mode = os.lstat(p).st_mode
    except FileNotFoundError:
        mode = None
    if mode is not None:
        if stat.S_ISLNK(mode):
            raise OutputFileError(f"{path}: is a symbolic link; give the real path of the results file "
                                  "(a link is never written through or replaced)")
        if stat.S_ISDIR(mode):
            raise OutputFileError(f"{path}: is a directory, not a results file")
        if not stat.S_ISREG(mode):
            raise OutputFileError(f"{path}: is not a regular file (a device, FIFO or socket); "
                                  "the results file must be a regular file or a new name")
    parent = p.absolute().parent
    if not parent.is_dir():
        raise OutputFileError(f"{path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputFileError(f"{path}: directory {parent} is not writable")
    return p


def remove_result_file(path: str | os.PathLike) -> None:
    """Remove an earlier run's results file (the reset at the start of a run): from then on a
    reader finds no file until this run writes one, never an old verdict. Unlinking is atomic."""
    p = check_result_path(path)
    try:
        p.unlink()
    except FileNotFoundError:
        pass


def _write_temp(path: Path, text: str) -> Path:
    """`text` in a new file next to `path` (same directory, so a rename is atomic)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o666)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    return tmp


def write_result_file(path: str | os.PathLike, verdict: str, x: np.ndarray | None = None,
                      y: np.ndarray | None = None, *, only_if_absent: bool = False) -> bool:
    """Write a VNN-COMP result file; for `sat`, `x` and `y` are required. Returns True if written.

    The text goes to a temporary file in the same directory, which is then renamed onto `path`
    (`os.replace`), so a reader sees the old file or the whole new one, never a part. Symlinks,
    devices and other special files are refused (`check_result_path`). `only_if_absent=True`
    puts the file in place only if `path` does not exist (hard link, atomic; returns False when
    it exists): ranks other than 0 use it so they never overwrite rank 0's verdict.
    """
    if verdict not in VERDICTS:
        raise ValueError(f"unknown verdict '{verdict}'; expected one of {', '.join(VERDICTS)}")
    text = verdict + "\n"
    if verdict == "sat":
        if x is None or y is None:
            raise ValueError("a 'sat' result needs the counterexample x and y")
        text += format_counterexample(x, y)
    path = check_result_path(path)
    tmp = _write_temp(path, text)
    try:
        if not only_if_absent:
            os.replace(tmp, path)
            return True
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError:          # a file system without hard links: exclusive create instead
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o666)
            except FileExistsError:
                return False
            with os.fdopen(fd, "w") as fh:
                fh.write(text)
        return True
    finally:
        if os.path.lexists(tmp):
            tmp.unlink()


def read_result_file(path: str | os.PathLike
                     ) -> tuple[str, np.ndarray | None, np.ndarray | None]:
    """Read a result file: (verdict, x, y); x, y are None unless a counterexample follows `sat`."""
    text = Path(path).read_text()
    stripped = text.lstrip()
    first, _, rest = stripped.partition("\n")
    verdict = first.strip().lower()
    verdict = _OLD_VERDICTS.get(verdict, verdict)
    if verdict not in VERDICTS:
        raise ValueError(f"{path}: unknown verdict '{first.strip()}'")
    if verdict != "sat" or not rest.strip():
        return verdict, None, None
    try:
        x, y = parse_counterexample(rest)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    return verdict, x, y


def violates(prop: Property, x: np.ndarray, y: np.ndarray, tol: float = 0.0) -> bool:
    """True iff `x` lies in some region's box and `y` meets one of that region's disjuncts, as
    the property is written: `<` / `>` strictly, `<=` / `>=` / `=` inclusively, every number as
    the nearest float64 to its text, and no tolerance (the sums `C @ y` are exact: rows near
    their bound are recomputed in rational arithmetic).

    A disjunct with no rows always holds. NaNs never satisfy a comparison, so a NaN input or
    output is never a counterexample. `tol > 0` loosens every comparison by `tol`, which can make
    a false property look violated: the verifier never passes it; it exists only for comparing
    with looser checkers on purpose.
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if x.size != prop.n_inputs or y.size != prop.n_outputs:
        raise ValueError(f"counterexample has {x.size} inputs and {y.size} outputs; the "
                         f"property has {prop.n_inputs} and {prop.n_outputs}")
    tol = float(tol)
    hook = getattr(prop, "violated_by", None)      # a 2.0 query: its own exact check (vnnlib2_property)
    if hook is not None:
        return bool(hook(x, y, tol))
    for region in prop.regions:
        if not _inside(x, region, tol):
            continue
        for dj in region.disjuncts:
            if _rows_hold(dj, y, tol):
                return True
    return False


def _inside(x: np.ndarray, region, tol: float) -> bool:
    lo, hi = region.lower - tol, region.upper + tol
    lo_strict = _flags(region.lower_strict, x.size)
    hi_strict = _flags(region.upper_strict, x.size)
    return bool(np.all(np.where(lo_strict, x > lo, x >= lo)) and np.all(np.where(hi_strict, x < hi, x <= hi)))


def _flags(flags, n: int) -> np.ndarray:
    return np.zeros(n, bool) if flags is None else np.asarray(flags, bool).ravel()


def _rows_hold(dj, y: np.ndarray, tol: float) -> bool:
    C = np.asarray(dj.C, dtype=np.float64).reshape(-1, y.size)
    d = np.asarray(dj.d, dtype=np.float64).ravel()
    if C.shape[0] == 0:
        return True
    strict = dj.strict_rows() if hasattr(dj, "strict_rows") else np.zeros(len(d), bool)
    with np.errstate(invalid="ignore", over="ignore"):
        terms = np.where(C != 0.0, C * y, 0.0)              # an output a row ignores stays ignored (inf)
        slack = terms.sum(1) - d                             # the row holds iff slack <= 0 (< 0)
        # Float64 rounding can only flip a row whose slack is within a few ulps of the sum's
        # magnitude: recompute those exactly (only the sign matters).
        scale = np.abs(terms).sum(1) + np.abs(d)
        close = np.isfinite(slack) & (np.abs(slack) <= 1e-12 * scale)
    if tol == 0.0:
        for r in np.flatnonzero(close):
            slack[r] = _exact_slack(C[r], y, d[r])
    return bool(np.all(np.where(strict, slack < tol, slack <= tol)))


def _exact_slack(c: np.ndarray, y: np.ndarray, d: float) -> float:
    """sign-exact C.y - d for finite float64 values: -1.0, 0.0 or 1.0."""
    total = -Fraction(float(d))
    for cj, yj in zip(c.tolist(), y.tolist()):
        if cj != 0.0:
            total += Fraction(cj) * Fraction(yj)
    return float((total > 0) - (total < 0))
