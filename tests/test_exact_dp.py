"""The few-unstable exact LPs (bab/exact.py) on several ranks (issue 18, item 2): where every rank
has its own domains (`layout.splits_domains`: dp meshes `Px1`, fsdp), each rank decides its own
domains' LPs; the ranks' verdicts agree and are the MILP's (CPU gloo, two processes)."""
from __future__ import annotations

from pathlib import Path

import pytest

from dist_utils import run_distributed

pytestmark = pytest.mark.distributed

START = "forkserver"        # ranks forked from a server that imported torch once (dist_utils)
SEEDS = [0, 18]             # reach domains with a few unstable neurons (test_exact_leaves.py): unsat, sat


def _decide(rank, world, folder, seeds, configs):
    import torch

    import dtensor_verify as dv
    import milp_oracle as mo
    from dtensor_verify.bab import BabOptions
    from dtensor_verify.specs import read_vnnlib
    from dtensor_verify.verify import verify_instance
    from placements import apply_plan, mesh_from_process_group

    torch.set_num_threads(1)
    out = []
    for seed in seeds:
        inst = mo.instance(seed, n_in=3, hidden=(10, 10), gap_range=(1e-6, 1e-4))
        Path(folder, f"r{rank}").mkdir(exist_ok=True)
        onnx_path, spec = mo.write(inst, Path(folder, f"r{rank}"))
        for plan, mesh in configs:
            model = dv.load(onnx_path)
            apply_plan(model, plan, mesh_from_process_group(mesh))
            res = verify_instance(model, read_vnnlib(spec, model.n_inputs, model.n_outputs), onnx_path, 60,
                                  attack=False, bab_options=BabOptions(split="relu"))
            lp = (res.bounds.get("bab") or {}).get("exact_lp") or {}
            out.append((seed, plan, mesh, inst.expected, res.verdict, res.message,
                        lp.get("enumerated_domains", 0)))
    return out


@pytest.mark.parametrize("seeds, configs", [
    ([0], [("replicate", "2x1"), ("fsdp", None)]),
    pytest.param(SEEDS, [("replicate", "2x1"), ("fsdp", None), ("spec", None)], marks=pytest.mark.slow)],
    ids=["unsat-2x1-fsdp", "both-2x1-fsdp-spec"])
def test_few_unstable_lps_on_every_rank_agree_with_the_milp(tmp_path, seeds, configs):
    res = run_distributed(_decide, 2, tmp_path, str(tmp_path), seeds, configs, timeout_s=240, start_method=START)
    rank0, rank1 = res
    assert [r[:5] for r in rank0] == [r[:5] for r in rank1], res          # the ranks agree
    for seed, plan, mesh, expected, verdict, message, _ in rank0:
        assert verdict == expected, (seed, plan, mesh, verdict, message)
    for i, row in enumerate(rank0):
        enumerated = row[6] + rank1[i][6]
        assert enumerated > 0, ("no rank used the few-unstable LPs", row, rank1[i])
