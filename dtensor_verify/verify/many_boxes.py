"""Properties of many small input boxes that branch and bound will split (nn4sys mscn: hundreds to
thousands of regions, each moving 1-4 of 154 inputs): which pipeline stages to skip.

With more than `MANY_PAIRS` pairs left open by CROWN and input splitting ahead, two stages cost more
than they can prove:

- alpha-CROWN: each of its steps costs about one CROWN pass over every open pair (on this CPU,
  mscn_128d / cardinality_0_500: CROWN 16 s on 951 pairs, alpha-CROWN's 10 steps > 50 s, unfinished
  at a 100 s limit), while one round of input branch and bound halves the boxes and closes the gap
  on them (that instance: 429 open pairs proved by 898 sub-boxes, 3 rounds, 28 s);
- the attack-extra round before branch and bound: the deferred attack has just run on the same open
  pairs (20 restarts x 100 steps, 33 s there, best margin unchanged by the extra round's 38 s), and
  branch and bound attacks its most promising sub-boxes itself (`input_bab.attack_boxes`).

The deferred attack (the first one, on the pairs CROWN left open) gets `PER_DIM_RESTARTS` random
starts per perturbed input, at most, instead of 20, and `BOX_STEPS` steps instead of 100: a box moving one input is an interval, and
branch and bound attacks its sub-boxes again (mscn_128d / cardinality_0_500: 429 pairs x 20
restarts x 100 steps took 33-50 s on this CPU and did not move the best margin past its first
starts).

Skipping a stage never changes a verdict's soundness: the pairs stay open for branch and bound,
and `sat` still needs an onnxruntime-confirmed counterexample (the final attack still runs).
"""
from __future__ import annotations

MANY_PAIRS = 256          # as `stages.ManyPairsIbp.min_pairs`: the many-pairs regime

SKIPPED_STAGES = ("alpha-crown", "attack-extra")
PER_DIM_RESTARTS = 2      # deferred attack: random starts per perturbed input (plus the centre's)
BOX_STEPS = 30            # ... and PGD steps (a box moving a few inputs; was the round's 100)


def skip_above(input_split: bool, stage: str, position: int) -> int | None:
    """The open-pair count above which `stage` is skipped (None: never). `position`: the stage's
    index among the bounding methods (the first method always runs: it is what proves most)."""
    if not input_split or position == 0 or stage not in SKIPPED_STAGES:
        return None
    return MANY_PAIRS


def skipped(inst, stage: str, n_open: int, limit: int | None) -> bool:
    """True (and said, and recorded in the JSON's `bounds`) when `stage` is skipped for `n_open`."""
    if limit is None or n_open <= limit:
        return False
    why = f"{n_open} open pairs > {limit} and branch and bound splits inputs (many_boxes.py)"
    inst.result.bounds[stage] = {"skipped": why}
    inst.say(f"{stage}: skipped: {why}")
    return True


def box_restarts(inst, restarts: int) -> int:
    """The deferred attack's restarts when branch and bound splits inputs: at most
    `PER_DIM_RESTARTS` per perturbed input of the open pairs' boxes (the most of any), at least 1."""
    from ..bab.split_kinds import perturbed_dims

    idx = inst.open_pairs()
    dims = perturbed_dims(inst.pair_lo[idx], inst.pair_hi[idx]) if idx else 0
    return max(1, min(restarts, PER_DIM_RESTARTS * dims))


def box_steps(steps: int) -> int:
    """The deferred attack's PGD steps when branch and bound splits inputs."""
    return min(steps, BOX_STEPS)
