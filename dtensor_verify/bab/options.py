"""The options of branch and bound (`BabSolver`): batch, branching, wide rounds, stop rules, input splitting."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..methods.beta_crown import BetaOptions


@dataclass
class BabOptions:
    batch_size: int | None = None       # parents per round per worker (children: 2x); None: from memory
    max_batch: int = 2048               # cap for the memory-derived batch
    memory_fraction: float = 0.4        # of the free memory (per rank) that a round may use
    grow_batch: bool = True             # CUDA: raise the batch from rounds' measured peak bytes
                                        # (batch_growth.py; not with batch_size or lockstep ranks)
    branching: str = "fsb"              # 'fsb' | 'babsr'
    candidates: int = 3                 # fsb: candidate splits tried per domain
    split_width: int = 3                # ReLU splits per domain in a round, at most (wide.py; 1: off):
    wide_capacity: int | None = None    # ... as many as frontier x 2^w <= this x workers (children per
                                        # round per worker; None: 2 x the batch)
    balance_children: bool = True       # dp: each round's children spread evenly over the workers
                                        # (comm.balance), not only its parents
    beta: BetaOptions = field(default_factory=BetaOptions)
    focus_rows: float | None = 3.0      # ReLU / general splitting: bound only the rows of an open
                                        # disjunct whose root bound is >= this x its best row's
                                        # (focus_rows.py; None: every row)
    alpha_time_fraction: float | None = 0.3     # alpha-CROWN before branch and bound stops after this
                                        # share of the limit (verify/pipeline.alpha_time_share; None: no cap)
    output_constraints: str = "auto"    # 'off' | 'last' | 'auto': before ReLU / general splitting, tighten
                                        # the last nonlinear layer's input bounds over each pair's unsafe
                                        # set (verify/output_constraints_stage.py); auto: ReLU networks
                                        # with a conjunction of several rows open (bab_stage._wanted)
    oc_iterations: int = 20             # ... projected Adam steps per chunk of neurons
    oc_time_fraction: float = 0.2       # ... stopping after this share of the time left
    root_iterations: int = 0            # beta-CROWN steps on the roots (they come from alpha-CROWN)
    max_domains: int | None = None      # open domains per worker before giving up (verdict unknown):
    store_fraction: float = 0.2         # what this share of the free memory holds (the queue is
                                        # copied when it grows, so it may take twice that), or fewer
    host_fraction: float = 0.5          # CUDA: open domains past the device's part move to host memory,
                                        # up to this share of it (bab/store_limit.py; 0: none, the run
                                        # gives up at the device's limit)
    derive_bounds: bool = True          # ReLU splitting: the store keeps no intermediate bounds and only
                                        # the root's unstable neurons (bab/domain_codec.py; False: whole)
    max_rounds: int | None = None       # stop (unknown) after this many rounds (benchmarks: equal work)
    pgd_every: int = 10                 # every this many rounds, a short PGD from the most
    pgd_points: int = 16                # promising domains' vertices (this many per worker)
    progress: bool = False              # a tqdm line on stderr (rank 0)
    split: str = "auto"                 # 'auto' | 'relu' | 'input' (see split_kinds.resolve_mode)
    max_input_dims: int = 16            # auto: input splitting up to this many perturbed inputs
    input_branching: str = "input_sb"   # 'input_sb' | 'input_fsb' | 'input_widest' (docs/BENCHMARKS.md)
    input_candidates: int = 4           # input_fsb: dimensions tried per sub-box
    input_alpha_iterations: int = 10    # alpha-CROWN steps before input splitting (pipeline stage)
    input_iterations: int = 0           # optimisation steps per round when splitting inputs (0: CROWN
                                        # with the parent's slopes, as alpha,beta-CROWN's acasxu config)
    input_cpu_batch: int = 256          # input splitting on a CPU: at most this many parents a round
    input_max_batch: int = 16384        # input splitting elsewhere: at most this many (memory decides)
    input_fill: bool = False            # a small frontier: split along the chosen dim into more parts
                                        # (off: it left acasxu 2_7..4_7 prop_1 open, BENCHMARKS.md)
    input_attack_every: int = 4         # PGD inside the most promising sub-boxes every this many rounds
    input_clip: bool = True             # shrink open sub-boxes to where a counterexample can lie
