"""Attack restarts spread over the `dp` groups (verify/attacks._dp_share): each group takes its
share, from seeds of its own; one group (or a layout without a topology) keeps the whole round.
The agreement on what was found runs under torchrun in tests/test_bab_dist.py."""
from __future__ import annotations

from types import SimpleNamespace

from dtensor_verify.verify.attacks import _dp_share


def _inst(topology):
    return SimpleNamespace(model=SimpleNamespace(layout=SimpleNamespace(topology=topology)))


def test_restarts_and_seeds_are_shared_out_over_dp():
    shares = [_dp_share(_inst(SimpleNamespace(dp=2, dp_rank=r)), 5, 10) for r in range(2)]
    assert [s[0] for s in shares] == [3, 3]                    # rounded up: no restart lost
    assert shares[0][1] != shares[1][1]                        # different starts in each group
    assert all(s[2] is not None for s in shares)


def test_one_dp_group_keeps_the_whole_round():
    assert _dp_share(_inst(SimpleNamespace(dp=1, dp_rank=0)), 5, 10) == (5, 10, None)
    assert _dp_share(SimpleNamespace(model=SimpleNamespace(layout=object())), 5, 10) == (5, 10, None)
