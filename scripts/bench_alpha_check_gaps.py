"""Where does the verdict pipeline go longest without looking at its clock? (issue 21: a vit_2023
pgd_2_3_16 row of the H100 run ended 11 s past its 100 s limit.) Prints a table and writes CSV.

    PYTHONPATH=$PWD python scripts/bench_alpha_check_gaps.py --instance pgd_2_3_16_1079 --limit 300 \\
        [--no-attack] [--threads 2] [--top 12] [--out gaps.csv] [--share N --device-gib G] [--device cuda]

One run of `verify_instance` (as `dtensor-verify benchmark` calls it) with `Clock.check` and
`Clock.left` recorded: every point where the run can stop for time (the stages' checks, the bound
methods' `deadline` checks, branch and bound's `time_left`). The longest gaps between two
consecutive such points, with the package frames at both ends, are the steps a limit can overrun
by up to that much (on this CPU: a GPU's gaps are shorter, but in the same places). The last row
is the gap from the last check to the return.
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "..", "shared", "benchmarks", "vit_2023")
FIELDS = ["instance", "limit_s", "verdict", "rank", "gap_s", "at_s", "after", "before"]


def _where() -> tuple:
    """The innermost 4 package frames (file, function, line) of the caller's stack: cheap (no
    source lines read), formatted only for the rows printed."""
    out, frame = [], sys._getframe(2)
    while frame is not None and len(out) < 4:
        code = frame.f_code
        if "dtensor_verify" in code.co_filename:
            out.append((os.path.basename(code.co_filename), code.co_name, frame.f_lineno))
        frame = frame.f_back
    return tuple(out)


def _text(where) -> str:
    return where if isinstance(where, str) else " < ".join(f"{f}:{n}:{k}" for f, n, k in where)


def record_checks(marks: list):
    """Patch the pipeline's clock so that each check / time-left call appends (time, where)."""
    from dtensor_verify.verify import instance

    check, left = instance.Clock.check, instance.Clock.left

    def checked(self):
        marks.append((time.perf_counter(), _where()))
        return check(self)

    def left_of(self):
        marks.append((time.perf_counter(), _where()))
        return left(self)

    instance.Clock.check, instance.Clock.left = checked, left_of


def gaps(marks: list, t0: float, t_end: float, top: int) -> list[dict]:
    pts = [(t0, "verify_instance: start")] + marks + [(t_end, "verify_instance: return")]
    out = [{"gap_s": round(b[0] - a[0], 3), "at_s": round(a[0] - t0, 2), "after": _text(a[1]), "before": _text(b[1])}
           for a, b in zip(pts, pts[1:])]
    last = out[-1]
    out = sorted(out[:-1], key=lambda r: -r["gap_s"])[:top]
    return out + [dict(last, after=last["after"] + " (last check)")]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--instance", default="pgd_2_3_16_1079")
    ap.add_argument("--limit", type=float, default=300.0)
    ap.add_argument("--no-attack", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--share", type=int, default=0, help="DTENSOR_VERIFY_SHARE_DEVICE (with --device-gib: emulated)")
    ap.add_argument("--device-gib", type=float, default=0.0)
    ap.add_argument("--device", default="cpu", help="cpu | cuda (on a GPU the clock also waits for the device)")
    ap.add_argument("--out", default="check_gaps.csv")
    args = ap.parse_args()
    if args.share:
        os.environ["DTENSOR_VERIFY_SHARE_DEVICE"] = str(args.share)
    if args.device_gib:
        os.environ["DTENSOR_VERIFY_DEVICE_BYTES"] = str(int(args.device_gib * (1 << 30)))
    import torch

    torch.set_num_threads(args.threads)
    from dtensor_verify.cli_common import load_model
    from dtensor_verify.specs import read_vnnlib
    from dtensor_verify.verify import verify_instance

    onnx_path = os.path.join(BENCH, "onnx", args.instance.rsplit("_", 1)[0] + ".onnx.gz")
    model = load_model(onnx_path, torch.device(args.device))
    prop = read_vnnlib(os.path.join(BENCH, "vnnlib", args.instance + ".vnnlib"), n_inputs=model.n_inputs,
                       n_outputs=model.n_outputs)
    marks: list = []
    record_checks(marks)
    t0 = time.perf_counter()
    res = verify_instance(model, prop, onnx_path, args.limit, attack=not args.no_attack,
                          log=lambda m: print(f"[{time.perf_counter() - t0:7.1f} s] {m}", file=sys.stderr))
    t_end = time.perf_counter()
    rows = [{"instance": args.instance, "limit_s": args.limit, "verdict": res.verdict, "rank": k + 1, **r}
            for k, r in enumerate(gaps(marks, t0, t_end, args.top))]
    print(f"{args.instance}: {res.verdict} after {t_end - t0:.1f} s (limit {args.limit:g} s), "
          f"{len(marks)} clock checks; phases {', '.join(f'{k} {v:.1f} s' for k, v in res.phases.items())}")
    fmt = "{:>4} {:>8} {:>8}  {}\n{:>22}  -> {}"
    for r in rows:
        print(fmt.format(r["rank"], r["gap_s"], r["at_s"], r["after"], "", r["before"]))
    with open(args.out, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(rows)


if __name__ == "__main__":
    main()
