"""The progress bar of `p2pctl download` (cli/follow.py): a resumed download's bytes
already held are where the bar starts, not bytes it received now (issue 36: the rate
and ETA of a resumed download counted them)."""

from __future__ import annotations

from p2pshare.cli.follow import LazyBar
from p2pshare.db.following import RequestProgress
from p2pshare.db.queueing import Candidate, Queued


def test_a_resumed_download_starts_its_bar_at_what_it_holds() -> None:
    candidate = Candidate(1, "big.iso", "a" * 64, 1000, 1)
    queued = Queued(1, "big.iso", "file", [1], 0, [], 1000, [candidate])
    bar = LazyBar(queued)
    try:
        bar.show(RequestProgress({"active": 1}, 1000, 600, 1, None), ended=False)
        assert bar.bar is not None
        assert (bar.bar.initial, bar.bar.n) == (600, 600)  # the rate counts from here
        bar.show(RequestProgress({"active": 1}, 1000, 700, 1, None), ended=False)
        assert bar.bar.n == 700
    finally:
        bar.close()
