"""Run a function on a CPU gloo process group of P spawned processes (xdist-safe).

Each test gets its own FileStore in its tmp_path (no fixed ports); a stuck collective fails
by the gloo timeout instead of hanging CI. Results come back pickled through files.
"""
from __future__ import annotations

import os
import pickle
import traceback
from datetime import timedelta

import torch.multiprocessing as mp


def _worker(rank, world, store_path, out_dir, fn, args, timeout_s):
    import torch
    import torch.distributed as dist

    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    result = None
    try:
        store = dist.FileStore(store_path, world)
        dist.init_process_group("gloo", store=store, rank=rank, world_size=world,
                                timeout=timedelta(seconds=timeout_s))
        result = ("ok", fn(rank, world, *args))
    except BaseException as exc:  # report everything to the parent
        result = ("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}")
    with open(os.path.join(out_dir, f"rank{rank}.pkl"), "wb") as fh:
        pickle.dump(result, fh)
    if result[0] != "ok":
        os._exit(1)   # do not wait on peers that may be stuck
    try:
        dist.destroy_process_group()
    except Exception:
        pass


def _context(start_method: str):
    """A multiprocessing context. "forkserver" starts ranks by forking one server process per
    parent that has imported torch and the project once, which saves seconds per rank."""
    ctx = mp.get_context(start_method)
    if start_method == "forkserver":
        ctx.set_forkserver_preload(["torch", "torch.distributed", "torch.distributed.tensor",
                                    "torch.distributed.fsdp", "dtensor_verify", "placements"])
    return ctx


def run_distributed(fn, world: int, tmp_path, *args, timeout_s: float = 60.0, start_method: str = "spawn"):
    """Run `fn(rank, world, *args)` on `world` processes; return the list of per-rank results.

    Raises AssertionError with every failing rank's traceback if any rank fails."""
    store = os.path.join(str(tmp_path), f"store_{os.getpid()}_{id(fn)}")
    out_dir = str(tmp_path)
    ctx = _context(start_method)
    procs = [ctx.Process(target=_worker, args=(r, world, store, out_dir, fn, args, timeout_s)) for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout_s * 3)
        if p.is_alive():
            p.kill()
    results, errors = [], []
    for r in range(world):
        path = os.path.join(out_dir, f"rank{r}.pkl")
        if not os.path.exists(path):
            errors.append(f"rank {r}: no result (exit code {procs[r].exitcode})")
            continue
        with open(path, "rb") as fh:
            status, value = pickle.load(fh)
        if status != "ok":
            errors.append(f"rank {r}: {value}")
        results.append(value)
    if errors:
        raise AssertionError("distributed run failed:\n" + "\n".join(errors))
    return results


class RawRun:
    """Outcome of `run_distributed_raw`: per-rank exit codes and results, and the wall time."""

    def __init__(self, exitcodes, results, seconds):
        self.exitcodes = exitcodes      # per rank: int (negative = killed by that signal), None = hung
        self.results = results          # per rank: ("ok", value), ("error", traceback text) or None
        self.seconds = seconds

    def __repr__(self):
        def short(r):
            return None if r is None else (r[0], str(r[1])[-300:])
        return f"RawRun(exitcodes={self.exitcodes}, seconds={self.seconds:.1f}, results={[short(r) for r in self.results]})"


def run_distributed_raw(fn, world: int, tmp_path, *args, timeout_s: float = 60.0,
                        deadline_s: float | None = None, start_method: str = "spawn") -> RawRun:
    """Like `run_distributed`, but never raises on rank failure: returns each rank's exit code
    and result. Ranks still alive `deadline_s` (default 3 x timeout_s) after the start are killed
    (their exit code is then None)."""
    import tempfile
    import time

    run_dir = tempfile.mkdtemp(prefix="run_", dir=str(tmp_path))
    store = os.path.join(run_dir, "store")
    ctx = _context(start_method)
    procs = [ctx.Process(target=_worker, args=(r, world, store, run_dir, fn, args, timeout_s)) for r in range(world)]
    t0 = time.monotonic()
    for p in procs:
        p.start()
    deadline = t0 + (deadline_s if deadline_s is not None else 3 * timeout_s)
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    seconds = time.monotonic() - t0
    exitcodes = []
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
            exitcodes.append(None)
        else:
            exitcodes.append(p.exitcode)
    results = []
    for r in range(world):
        path = os.path.join(run_dir, f"rank{r}.pkl")
        if not os.path.exists(path):
            results.append(None)
            continue
        with open(path, "rb") as fh:
            results.append(pickle.load(fh))
    return RawRun(exitcodes, results, seconds)
