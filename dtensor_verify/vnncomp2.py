"""VNN-COMP 2026 adapter for VNN-LIB 2.0 queries (scripts/vnncomp/run_instance.sh calls it).

    python -m dtensor_verify.vnncomp2 MODELS QUERY RESULTS TIMEOUT [verify options...]
    python -m dtensor_verify.vnncomp2 --is-v2 QUERY        # exit 0 for a 2.0 query, 1 otherwise
    python -m dtensor_verify.vnncomp2 --check QUERY        # parse and type-check (prepare_instance.sh)

MODELS is one ONNX path (the query's network(s) without equal-to; with several such networks the
list form is needed) or VNN-COMP 2026's list `"[('f', 'a.onnx'), ('g', 'b.onnx')]"`. The query
runs through `dtensor-verify verify`; RESULTS gets the verdict in VNN-COMP's words (`sat`,
`unsat`, `unknown`, `timeout`, `error`) and, after `sat`, the assignment in the 2.0 text format
(confirmed by onnxruntime and the query's AST before it is written).
"""
from __future__ import annotations

import ast
import contextlib
import io
import os
import sys
from pathlib import Path

__all__ = ["parse_models", "main"]


def parse_models(text: str, query) -> list[tuple[str, str]]:
    """(name, path) pairs from the model argument (a path, or a Python-literal list of pairs)."""
    s = text.strip()
    if s.startswith("["):
        try:
            pairs = ast.literal_eval(s)
        except (ValueError, SyntaxError) as exc:
            raise ValueError(f"model list {s[:80]!r} is not a list of (name, file) pairs ({exc})") from None
        if not isinstance(pairs, list) or not all(isinstance(p, tuple) and len(p) == 2 for p in pairs):
            raise ValueError(f"model list {s[:80]!r} is not a list of (name, file) pairs")
        pairs = [(str(n), str(p)) for n, p in pairs]
        return _drop_equal_to(pairs, query)
    own = [n.name for n in query.networks if not n.equal_to]
    if len(own) != 1:
        raise ValueError(f"{query.path}: declares {len(own)} networks without equal-to; give the models as "
                         f"a list of (name, file) pairs")
    return [(own[0], s)]


def _drop_equal_to(pairs, query):
    """VNN-COMP 2026 lists an `equal-to` network with its target's file; the standard's command line
    takes no --network for it. Dropped when it names the same file, refused when it names another."""
    declared = {n.name: n for n in query.networks}
    files = dict(pairs)
    out = []
    for name, path in pairs:
        net = declared.get(name)
        if net is not None and net.equal_to:
            target = files.get(net.equal_to)
            if target is not None and os.path.realpath(target) != os.path.realpath(path):
                raise ValueError(f"{query.path}: network '{name}' is equal-to '{net.equal_to}' but the model list "
                                 f"gives it another file ({path}, not {target})")
            continue
        out.append((name, path))
    return out


def _write(path: str, text: str) -> None:
    tmp = Path(path + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--is-v2"]:
        from .specs.vnnlib2 import is_vnnlib2
        return 0 if len(argv) == 2 and is_vnnlib2(argv[1]) else 1
    if argv[:1] == ["--check"] and len(argv) == 2:     # prepare_instance.sh: parse and type-check
        from .cli_common import err, one_line
        from .specs.vnnlib2 import read_query
        try:
            read_query(argv[1])
        except Exception as exc:          # noqa: BLE001 - one line, non-zero exit
            err(one_line(exc))
            return 2
        return 0
    if len(argv) < 4:
        print("usage: python -m dtensor_verify.vnncomp2 MODELS QUERY RESULTS TIMEOUT [options]", file=sys.stderr)
        return 2
    models, query_path, results, timeout, extra = argv[0], argv[1], argv[2], argv[3], argv[4:]
    from . import cli
    from .specs.vnnlib2 import read_query

    _write(results, "error\n")            # until a verdict replaces it
    try:
        query = read_query(query_path)
        pairs = parse_models(models, query)
    except Exception as exc:              # noqa: BLE001 - a user error: one line, `error`
        from .cli_common import err, one_line
        err(one_line(exc))
        return 2
    front = []
    if "--threads" in extra:                  # a global option: before the command
        i = extra.index("--threads")
        front, extra = extra[i:i + 2], extra[:i] + extra[i + 2:]
    args = front + ["verify", query_path, "--timeout", timeout]
    for name, path in pairs:
        args += ["--network", f"{name}={path}"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(args + extra)
    lines = out.getvalue().splitlines()
    verdict = lines[0].strip() if lines else "error"
    verdict = {"timed-out": "timeout"}.get(verdict, verdict)
    if verdict not in ("sat", "unsat", "unknown", "timeout"):
        verdict = "error"
    body = "\n".join(lines[1:]) + "\n" if verdict == "sat" and len(lines) > 1 else ""
    _write(results, verdict + "\n" + body)
    print(verdict)
    return code


if __name__ == "__main__":      # pragma: no cover
    sys.exit(main())
