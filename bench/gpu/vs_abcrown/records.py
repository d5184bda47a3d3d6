"""The typed values passed between the runner's stages, and its constants."""
from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

from dtensor_verify.benchmark import _norm_key

ROOT = Path(__file__).resolve().parents[3]
PROG = "bench_vs_abcrown"
EXIT_OK, EXIT_CONTRADICTION, EXIT_ERROR = 0, 1, 2
LATE_SLACK = (1.10, 0.5)      # a verdict after limit * 1.10 + 0.5 s counts as timeout
HANG_FACTOR = 2.0             # abcrown is killed on an instance after limit * 2 + --hang-grace
OURS_SHARE = 0.6              # with --deadline: ours is killed after this share of it
VERDICTS = ("sat", "unsat", "unknown", "timeout", "error")
PIDS_FILE = "abcrown_pids.txt"   # in --work: every abcrown process started (its own session)
TOOLS = ("ours", "abcrown")


class UsageError(Exception):
    """Bad arguments or missing files: one line, exit status 2."""


@dataclass
class Instance:
    index: int
    onnx: str           # as written in instances.csv
    vnnlib: str
    timeout: float      # instances.csv's, unscaled
    limit: float        # timeout x --timeout-scale

    @property
    def model(self) -> str:
        return strip_ext(Path(self.onnx).name)

    @property
    def prop(self) -> str:
        return strip_ext(Path(self.vnnlib).name)

    @property
    def key(self) -> tuple[str, str]:
        return _norm_key(self.onnx), _norm_key(self.vnnlib)


@dataclass
class Outcome:
    """One tool's answer on one instance, as the tool gave it."""
    verdict: str = "error"      # sat / unsat / unknown / timeout / error
    seconds: float | None = None
    detail: str = ""            # abcrown's status string, or ours' decided_by
    message: str = ""
    domains: int | None = None  # branch-and-bound domains bounded (abcrown: its last "N domains
                                # visited" line; ours: the CSV's bab_domains), where it branched


@dataclass
class ToolRun:
    name: str
    outcomes: list[Outcome]
    commands: list[str] = field(default_factory=list)
    wall: float = 0.0
    note: str = ""


@dataclass
class ConfigGroup:
    source: Path                       # the released (or --abcrown-config) file
    config: Path                       # the plain-bab file written for this run
    changes: list[str]
    instances: list[Instance]


@dataclass
class Options:
    """The command line, checked, with its paths resolved."""
    bench: Path
    out: Path
    work: Path | None = None
    instances: Path | None = None
    filter: list[str] | None = None
    limit: int | None = None
    timeout_scale: float = 1.0
    device: str = "cpu"
    expected: Path | None = None
    abcrown: Path | None = None
    auto_lirpa: Path | None = None
    onnx2pytorch: Path | None = None
    abcrown_config: Path | None = None
    threads: int | None = None
    tools: list[str] = field(default_factory=lambda: list(TOOLS))
    deadline: float | None = None
    hang_grace: float = 120.0
    parts: int = 1
    ours_csv: Path | None = None
    abcrown_csv: Path | None = None
    python: str = "python"
    ours_commit: str | None = None


@dataclass
class Facts:
    """Where and with what the run happened (table.md's header)."""
    date: str
    host_device: str
    python: str
    torch: str
    ours_commit: str
    abcrown_commit: str
    auto_lirpa_commit: str
    onnx2pytorch_commit: str


def strip_ext(name: str) -> str:
    for ext in (".gz", ".onnx", ".vnnlib"):
        if name.endswith(ext):
            name = name[: -len(ext)]
    return name


def quote(cmd) -> str:
    return " ".join(shlex.quote(str(c)) for c in cmd)
