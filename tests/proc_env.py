"""What the tests that start the CLI / torchrun as subprocesses share: a clean environment and
the shared benchmark files."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO.parent / "shared" / "benchmarks"

# Set by an outer torchrun / launcher: a child job must not inherit them.
_INHERITED = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID",
              "LOGLEVEL", "DTENSOR_VERIFY_JOB_START")


def clean_env() -> dict:
    """os.environ with one thread per process, no inherited torchrun variables, and this
    checkout first on PYTHONPATH."""
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    for var in _INHERITED:
        env.pop(var, None)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def bench(rel: str) -> str:
    """The path of a shared benchmark file; a missing one fails the test loudly."""
    p = BENCH / rel
    if not p.exists():
        pytest.fail(f"benchmark file {p} is missing (expected the shared benchmarks at {BENCH})")
    return str(p)
