"""table.md: the header (device, versions, commands), counts per model, agreement with the
expected verdicts, contradictions and the per-instance table."""
from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

from dtensor_verify.benchmark import agreement

from .records import LATE_SLACK, VERDICTS, ConfigGroup, Facts, Instance, Options, ToolRun, quote
from .verdicts import Row

TOOL_NAMES = {"ours": "dtensor-verify", "abcrown": "alpha,beta-CROWN"}


def _models(items, model=lambda x: x.inst.model) -> list[str]:
    return list(dict.fromkeys(model(x) for x in items))


def summary_table(rows: list[Row], tools: list[str]) -> list[str]:
    lines = ["| model | tool | instances | sat | unsat | unknown | timeout | error | solved | "
             "seconds (sum over instances) |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    models = _models(rows)
    groups = [(m, [r for r in rows if r.inst.model == m]) for m in models]
    if len(models) > 1:
        groups.append(("**all**", rows))
    for model, mine in groups:
        for tool in tools:
            c = Counter(r.verdict(tool) for r in mine)
            secs = sum(r.outcome(tool).seconds or 0.0 for r in mine)
            lines.append(f"| {model} | {TOOL_NAMES[tool]} | {len(mine)} | "
                         + " | ".join(str(c.get(v, 0)) for v in VERDICTS)
                         + f" | {c.get('sat', 0) + c.get('unsat', 0)} | {secs:.1f} |")
    return lines


def expected_table(rows: list[Row], tools: list[str]) -> list[str]:
    lines = ["| model | tool | with expected verdict | agree | unsolved | contradictions |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    for model in _models(rows):
        mine = [r for r in rows if r.inst.model == model and r.expected]
        if not mine:
            continue
        for tool in tools:
            c = Counter(agreement(r.outcome(tool).verdict, r.expected) for r in mine)
            lines.append(f"| {model} | {TOOL_NAMES[tool]} | {len(mine)} | {c.get('agree', 0)} | "
                         f"{c.get('unsolved', 0)} | {c.get('CONTRADICTION', 0)} |")
    return lines if len(lines) > 2 else []


def instance_table(rows: list[Row], tools: list[str]) -> list[str]:
    """One row per instance: each tool's verdict, seconds and branch-and-bound domains (`-` where it
    did not branch)."""
    head = "| # | model | property | limit s | expected | " + " | ".join(
        f"{TOOL_NAMES[t]} | s | domains" for t in tools) + " | flags |"
    lines = [head, "| " + " | ".join(["---:", "---", "---", "---:", "---"] + ["---", "---:", "---:"] * len(tools)
                                     + ["---"]) + " |"]
    for r in rows:
        cells = [str(r.inst.index), r.inst.model, r.inst.prop, f"{r.inst.limit:g}", r.expected or "-"]
        for tool in tools:
            out = r.outcome(tool)
            shown = r.verdict(tool)
            if shown != out.verdict:
                shown += f" (late {out.verdict})"
            cells += [shown, "-" if out.seconds is None else f"{out.seconds:.2f}",
                      "-" if out.domains is None else str(out.domains)]
        cells.append("; ".join(r.flags()) or "")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _selection_line(opts: Options, instances: list[Instance]) -> str:
    return (f"- instances: {len(instances)} of {opts.instances or opts.bench / 'instances.csv'}"
            + (f", filter {' or '.join(f'`{s}`' for s in opts.filter)}" if opts.filter else "")
            + (f", first {opts.limit}" if opts.limit is not None else "")
            + f"; time limit per instance = its instances.csv timeout x {opts.timeout_scale:g}")


def header_lines(opts: Options, facts: Facts, instances: list[Instance], runs: list[ToolRun],
                 groups: list[ConfigGroup]) -> list[str]:
    lines = [f"# dtensor-verify vs alpha,beta-CROWN: {opts.bench.name}", "",
             f"- run: {facts.date} on {facts.host_device} (`--device {opts.device}`)",
             f"- software: python {facts.python}, torch {facts.torch}",
             f"- dtensor_verify commit: {facts.ours_commit}",
             f"- alpha-beta-CROWN commit: {facts.abcrown_commit}; auto_LiRPA commit: "
             f"{facts.auto_lirpa_commit}; onnx2pytorch commit: {facts.onnx2pytorch_commit}",
             _selection_line(opts, instances),
             f"- threads: {opts.threads or 'torch default'}; each tool runs all instances in one process"
             + (f" (alpha,beta-CROWN: {opts.parts} processes side by side, instances dealt round-robin)"
                if opts.parts > 1 and not opts.abcrown_csv else ""),
             f"- counting: a sat/unsat reached more than {LATE_SLACK[0] - 1:.0%} + {LATE_SLACK[1]} s "
             "after its limit counts as timeout (raw verdict in results.csv); abcrown `unknown` is "
             "timeout when it used its time",
             f"- runner: `{quote([Path(sys.argv[0]).name] + sys.argv[1:])}`"]
    for g in groups:
        lines.append(f"- abcrown config for {', '.join(_models(g.instances, lambda i: i.model))}: "
                     f"released `{g.source}`; changes: " + ("; ".join(g.changes) or "none"))
    for run in runs:
        lines.append(f"- {TOOL_NAMES[run.name]}: process wall time {run.wall:.1f} s"
                     + (f"; {run.note}" if run.note else ""))
        for c in run.commands:
            lines.append(f"  - `{c}`")
    return lines


def render(opts: Options, facts: Facts, instances: list[Instance], rows: list[Row], runs: list[ToolRun],
           groups: list[ConfigGroup]) -> tuple[str, str]:
    """(the whole table.md, the part that is printed)."""
    tools = [r.name for r in runs]
    summary = ["## Summary", ""] + summary_table(rows, tools)
    exp = expected_table(rows, tools)
    if exp:
        summary += ["", f"## Agreement with expected verdicts (`{opts.expected}`)", ""] + exp
    flagged = [(r, f) for r in rows for f in r.flags()]
    summary += ["", "## Contradictions", ""]
    summary += [f"- **{f}** ({r.inst.model} {r.inst.prop})" for r, f in flagged] or ["none"]
    full = header_lines(opts, facts, instances, runs, groups) + [""] + summary + \
        ["", "## Per instance", ""] + instance_table(rows, tools)
    return "\n".join(full) + "\n", "\n".join(summary) + "\n"
