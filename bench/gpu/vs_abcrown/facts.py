"""Provenance for table.md's header: date, device, versions, commits."""
from __future__ import annotations

import os
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path

from .records import ROOT, Facts, Options


def gather_facts(opts: Options) -> Facts:
    import torch

    from dtensor_verify.device import cpu_model
    if opts.device == "cuda":
        host_device = f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})"
    else:
        host_device = f"CPU {cpu_model()}, {os.cpu_count()} cores"
    return Facts(date=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                 host_device=host_device, python=platform.python_version(), torch=torch.__version__,
                 ours_commit=opts.ours_commit or git_commit(ROOT),
                 abcrown_commit=dir_commit(opts.abcrown) if opts.abcrown else "-",
                 auto_lirpa_commit=dir_commit(opts.auto_lirpa) if opts.auto_lirpa else "-",
                 onnx2pytorch_commit=dir_commit(opts.onnx2pytorch) if opts.onnx2pytorch else "-")


def git_commit(path: Path) -> str:
    try:
        head = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=30)
        if head.returncode != 0:
            return "unknown (no git checkout)"
        dirty = subprocess.run(["git", "-C", str(path), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=30).stdout.strip()
        return head.stdout.strip() + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        return "unknown (no git)"


def dir_commit(path: Path) -> str:
    """A COMMIT file written when the folder was exported, else its git HEAD."""
    f = path / "COMMIT"
    if f.exists():
        return f.read_text().strip()
    return git_commit(path)
