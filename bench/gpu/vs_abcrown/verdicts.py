"""Counting verdicts as VNN-COMP does (a late sat / unsat is a timeout) and flagging contradictions."""
from __future__ import annotations

from dataclasses import dataclass

from .records import LATE_SLACK, TOOLS, Instance, Outcome, ToolRun


def is_late(seconds: float | None, limit: float) -> bool:
    factor, extra = LATE_SLACK
    return seconds is not None and seconds > limit * factor + extra


def counted(out: Outcome, limit: float) -> str:
    """The verdict a table counts: a decided verdict that came too late is a timeout."""
    if out.verdict in ("sat", "unsat") and (is_late(out.seconds, limit) or "timed out" in out.detail):
        return "timeout"
    return out.verdict


def clash(a: str, b: str | None) -> bool:
    return b is not None and {a, b} == {"sat", "unsat"}


@dataclass
class Row:
    """One instance: the expected verdict and each tool's outcome (None: the tool did not run)."""
    inst: Instance
    expected: str | None
    ours: Outcome | None
    abcrown: Outcome | None

    def outcome(self, tool: str) -> Outcome | None:
        return self.ours if tool == "ours" else self.abcrown

    def verdict(self, tool: str) -> str | None:
        out = self.outcome(tool)
        return None if out is None else counted(out, self.inst.limit)

    def flags(self) -> list[str]:
        flags = []
        raw = {t: self.outcome(t).verdict for t in TOOLS if self.outcome(t) is not None}
        for tool, v in raw.items():
            if clash(v, self.expected):
                flags.append(f"CONTRADICTION: {tool} says {v}, expected {self.expected}")
        if len(raw) == 2 and clash(raw["ours"], raw["abcrown"]):
            flags.append(f"CONTRADICTION: ours says {raw['ours']}, abcrown says {raw['abcrown']}")
        return flags


def merge(instances: list[Instance], expected: dict, ours: ToolRun | None, abc: ToolRun | None) -> list[Row]:
    return [Row(inst, expected.get(inst.key), ours.outcomes[inst.index] if ours else None,
                abc.outcomes[inst.index] if abc else None) for inst in instances]
