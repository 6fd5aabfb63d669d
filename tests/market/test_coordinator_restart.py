"""A DOS peer that just started knows no provider inventories yet: it waits for
offers instead of failing the request "no provider is online" (found by tests/chaos)."""
from __future__ import annotations

from node.market import messages as m
from node.market.coordinator import Coordinator


class _Gossip:
    def on(self, *_a) -> None:
        pass


def _coord(inventories: dict) -> Coordinator:
    return Coordinator(_Gossip(), "me", ("me",), lambda: inventories)  # type: ignore[arg-type]


def test_no_inventories_known_means_wait_not_fail() -> None:
    req = m.Requirements()
    assert _coord({})._someone_could(req)
    ok = {"p": {"cpu": 4, "memory": 8 << 30, "tees": ["sim"], "backends": ["sim"]}}
    assert _coord(ok)._someone_could(req)
    assert not _coord(ok)._someone_could(m.Requirements(tee="sgx"))  # known providers, none can: fail fast
