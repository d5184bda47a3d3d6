"""The contract every bound op follows.

A bound op is one node of the bound graph. It knows three rules for its operation:

* `forward(*xs)`              the concrete function (used by attacks and sampling checks);
* `ibp(*intervals)`           interval bound propagation: input boxes -> output box;
* `backward(lA, uA, ...)`     one CROWN step: linear bounds on the output, written as
                              `lA . out + lbias <= f <= uA . out + ubias`, become linear bounds
                              on the op's inputs.

Shapes: a node's value has shape `[B, *S]` (B = batch of boxes). A-matrices have shape
`[B, K, *S]` (K = rows being bounded). `lA` / `uA` may be None when only one side is wanted.
Only the op's *perturbed* inputs (those that depend on the network input) are arguments;
constant operands were folded into the op when the graph was built.

Weights: an op with weights (`caps.has_weights`, e.g. Linear, Conv2d) takes them as an argument,
`params` (name -> tensor, e.g. {"weight": W, "bias": b}), in every rule: `forward(x, params=)`,
`ibp(interval, params=)`, `backward(..., params=)`, `backward_rows(..., params=)`. The layout's
placement style hands them out for one step: full tensors, DTensor shards (tp) or one rank's
rows at a time (spec), and the same op code runs on all of them. Without `params` an op reads
its module's parameters (`module_params`): one process, tests. Nothing writes into a module
while bounding.

Each op declares what it is in `caps` (a `Capabilities` record, below). The plan checker and
the placement styles ask these flags and never match `kind` strings, so a new op is one file
that sets `caps` (the defaults are the conservative answers: a new op that declares nothing
is placed correctly, just without sharding passing through it).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

Interval = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class Capabilities:
    """What an op is, as far as placement is concerned. Declare it once per op class
    (`caps = Capabilities(elementwise=True)`), or as a property when it depends on the instance.

    elementwise            Every input has the output's shape and output neuron i reads only
                           neuron i of each input (ReLU, Add of two tensors, x*s+t by constants,
                           Identity). A neuron-dim sharding (tp) of the A-matrices, bounds and
                           slopes passes through such an op unchanged. An op that is not
                           elementwise `needs_full_input`: it receives full (gathered) tensors.
    has_weights            The op's rules read parameters of its `module` (Linear, Conv2d): they
                           take them as a `params` argument (name -> tensor) that the placement
                           style hands out for one step, and the plan places the op's layer.
    neuron_rows            (with has_weights) Row i of `weight` (dim 0) makes output neuron i of a
                           flat output: sharding the weight by rows shards the output's neurons
                           (what `tp` needs; Linear).
    sums_over_weight_rows  (with has_weights) `backward` on a slice of the weight's dim-0 rows and
                           the matching slice of A's dim 2 gives that slice's share of the step,
                           and the shares add up to the whole step; `ibp` / `forward` on those
                           rows give the matching slice of the output's dim 1 (what `spec`'s
                           shard-by-shard streaming needs; Linear, Conv2d without groups).
    """

    elementwise: bool = False
    has_weights: bool = False
    neuron_rows: bool = False
    sums_over_weight_rows: bool = False

    @property
    def needs_full_input(self) -> bool:
        """Must this op see whole tensors on a dim that an upstream style shards?"""
        return not self.elementwise


@dataclass
class BackwardResult:
    """Linear bounds moved to the inputs: one (lA, uA) pair per perturbed input, plus biases."""

    input_A: list[tuple[torch.Tensor | None, torch.Tensor | None]]
    lbias: torch.Tensor | float = 0.0
    ubias: torch.Tensor | float = 0.0


def per_row_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum `[B, K, *S]` over the node dims, giving `[B, K]`."""
    return t.flatten(2).sum(-1) if t.dim() > 2 else t


@dataclass
class BoundOp:
    name: str
    module: torch.nn.Module | None = None
    out_shape: tuple[int, ...] = ()          # per-sample output shape (filled by the graph builder)
    in_shapes: list[tuple[int, ...]] = field(default_factory=list)

    kind = "op"
    # What the op is (see Capabilities): the only thing placement asks of an op.
    caps = Capabilities()
    # True for ops whose backward rule depends on pre-activation bounds (ReLU): the methods
    # compute bounds of their inputs first.
    needs_input_bounds = False
    # True for ops that are linear in their inputs: IBP through a purely affine chain is exact.
    is_affine = True
    # True for ops with relaxation parameters that alpha-CROWN optimises: `init_alpha(lower,
    # upper)` gives CROWN's choice as a `[P, B, *S]` tensor of values in [0, 1]; the backward rule
    # then receives `alpha` of shape `[P, B, K, *S]` (one per bound row).
    has_alpha = False
    # True for ReLU only: its relaxation is exact once a neuron's sign is known (only unstable
    # inputs need CROWN bounds) and branch and bound may split its neurons.
    exact_when_sign_known = False
    splittable = False

    def init_alpha(self, lower, upper):
        return None

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def ibp(self, *intervals: Interval) -> Interval:
        raise NotImplementedError

    def backward(self, lA, uA, input_bounds: list[Interval | None], alpha=None) -> BackwardResult:
        raise NotImplementedError

    def backward_rows(self, rows: torch.Tensor, batch: int, params=None) -> BackwardResult | None:
        """Optional shortcut for `backward` on one-hot A-matrices selecting the flattened output
        neurons `rows` (how every intermediate bound starts). None: use `backward`."""
        return None

    def backward_patches(self, lA, uA, input_bounds: list[Interval | None], params=None) -> BackwardResult | None:
        """Optional: `backward` on A-matrices given as `ops.patches.Patches` (conv windows),
        giving patches for the inputs. None (the default): this op cannot; the sweep converts
        the patches to dense and uses `backward`."""
        return None

    def has_rows_rule(self) -> bool:
        return type(self).backward_rows is not BoundOp.backward_rows

    def module_params(self) -> dict[str, torch.Tensor] | None:
        """The module's own parameters (detached), the default `params` of an op with weights."""
        if self.module is None:
            return None
        return {name: p.detach() for name, p in self.module.named_parameters(recurse=False)}

    def describe(self) -> str:
        return f"{self.kind} {self.name}"
