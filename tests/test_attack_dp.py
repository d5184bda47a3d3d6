"""Attack restarts spread over the `dp` groups (verify/attacks._dp_share): each group takes its
share, from seeds of its own; one group (or a layout without a topology) keeps the whole round.
The agreement on what was found runs under torchrun in tests/test_bab_dist.py."""
from __future__ import annotations

from types import SimpleNamespace

from dtensor_verify.verify.attacks import _dp_share, _dp_starts


def _inst(topology):
    return SimpleNamespace(model=SimpleNamespace(layout=SimpleNamespace(topology=topology)))


def test_restarts_and_seeds_are_shared_out_over_dp():
    shares = [_dp_share(_inst(SimpleNamespace(dp=2, dp_rank=r)), 5, 10) for r in range(2)]
    assert [s[0] for s in shares] == [3, 3]                    # rounded up: no restart lost
    assert shares[0][1] != shares[1][1]                        # different starts in each group
    assert all(s[2] is not None for s in shares)


def test_guided_starts_are_shared_out_over_dp():
    import torch

    starts = {0: torch.arange(5.0).unsqueeze(1), 3: torch.arange(1.0).unsqueeze(1)}
    shares = [_dp_starts(starts, SimpleNamespace(dp=2, dp_rank=r)) for r in range(2)]
    for p, v in starts.items():                                 # each start on exactly one rank
        got = torch.cat([s[p] for s in shares]).flatten().sort().values
        assert torch.equal(got, v.flatten())
    assert [s[0].shape[0] for s in shares] == [3, 2] and shares[1][3].shape[0] == 0
    assert _dp_starts(starts, None) is starts and _dp_starts({}, SimpleNamespace(dp=2, dp_rank=1)) == {}


def test_one_dp_group_keeps_the_whole_round():
    assert _dp_share(_inst(SimpleNamespace(dp=1, dp_rank=0)), 5, 10) == (5, 10, None)
    assert _dp_share(SimpleNamespace(model=SimpleNamespace(layout=object())), 5, 10) == (5, 10, None)


def _fake_gather(monkeypatch, other):
    import torch.distributed as dist

    def fake_gather(out, mine, group=None):
        out[0], out[1] = mine, other

    monkeypatch.setattr(dist, "all_gather_object", fake_gather)


def test_a_rank_that_ran_out_of_time_still_joins_and_every_rank_times_out(monkeypatch):
    """Rank 0 timed out in its share of a spread attack round while rank 1 finished with nothing:
    rank 0 still joins the gather (before, it left and rank 1 waited in the gather until the peer
    closed: 'connection closed by peer', an `error`), and both end TimeLimitReached (`timeout`)."""
    import pytest

    from dtensor_verify.errors import TimeLimitReached, VerifierError
    from dtensor_verify.verify.attacks import _first_found

    topo = SimpleNamespace(world=2, group=None)

    def timed_out():
        raise TimeLimitReached()

    _fake_gather(monkeypatch, (None, None))                     # the other rank: nothing found
    with pytest.raises(TimeLimitReached):
        _first_found(topo, timed_out)
    _fake_gather(monkeypatch, (None, "timed out"))              # this rank done, the other timed out
    with pytest.raises(TimeLimitReached):
        _first_found(topo, lambda: (None, "margins"))
    _fake_gather(monkeypatch, (None, "failed"))
    with pytest.raises(VerifierError):
        _first_found(topo, lambda: (None, "margins"))
    _fake_gather(monkeypatch, ("cex", None))                    # a confirmed counterexample wins
    assert _first_found(topo, timed_out) == ("cex", None)
    _fake_gather(monkeypatch, (None, None))
    assert _first_found(topo, lambda: (None, "margins")) == (None, "margins")
