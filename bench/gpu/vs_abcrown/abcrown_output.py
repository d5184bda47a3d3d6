"""alpha,beta-CROWN's batch-mode output: the lines that open and close an instance, and its
per-instance status strings as VNN-COMP verdicts."""
from __future__ import annotations

import re
from dataclasses import dataclass

_IDX = re.compile(r"idx: (\d+), vnnlib ID: (\d+)")
_RESULT = re.compile(r"^Result: (.+) in ([0-9.eE+-]+) seconds")
_VISITED = re.compile(r"^(\d+) domains visited")


@dataclass(frozen=True)
class Opened:
    """`idx: i, vnnlib ID: row`: abcrown starts on row `row` of its csv."""
    row: int


@dataclass(frozen=True)
class Result:
    """`Result: status in t seconds`: abcrown's answer on the open instance."""
    status: str
    seconds: float


@dataclass(frozen=True)
class Visited:
    """`N domains visited`: abcrown's branch and bound so far on the open instance (after each round)."""
    domains: int


def parse_line(text: str) -> Opened | Result | Visited | None:
    """One stripped line of abcrown's output: an instance opened, a result, branch and bound's
    domains so far, or anything else."""
    m_idx = _IDX.search(text)
    if m_idx:
        return Opened(int(m_idx.group(2)))
    m_vis = _VISITED.match(text)
    if m_vis:
        return Visited(int(m_vis.group(1)))
    m_res = _RESULT.match(text)
    if m_res:
        try:
            return Result(m_res.group(1).strip(), float(m_res.group(2)))
        except ValueError:          # e.g. "1e" or "+-": not a number after all
            return None
    return None


def abcrown_verdict(status: str, seconds: float, limit: float) -> str:
    """abcrown's per-instance status (its Logger's strings) as a VNN-COMP verdict."""
    words = status.lower().split()
    word = words[0] if words else ""
    if word.startswith("unsafe") or word == "sat":          # unsafe-pgd, unsafe-bab, unsafe-mip
        return "sat"
    if word.startswith("safe") or word == "unsat":          # safe, safe-incomplete(-refine), safe-mip
        return "unsat"
    if word.startswith("unknown") or word in ("timeout", "timed"):
        return "timeout" if seconds >= 0.95 * limit else "unknown"
    return "error"
