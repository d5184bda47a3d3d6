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


def run_distributed(fn, world: int, tmp_path, *args, timeout_s: float = 60.0):
    """Run `fn(rank, world, *args)` on `world` processes; return the list of per-rank results.

    Raises AssertionError with every failing rank's traceback if any rank fails."""
    store = os.path.join(str(tmp_path), f"store_{os.getpid()}_{id(fn)}")
    out_dir = str(tmp_path)
    ctx = mp.get_context("spawn")
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
