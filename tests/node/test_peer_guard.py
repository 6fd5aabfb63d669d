"""The guard's rule: a peer refused ``strikes`` times within ``window`` s is banned for ``ban`` s;
protected peers never are. (The guard cutting off a real flooder: tests/adversarial, test_gossip_flood.)"""
from __future__ import annotations

from node.p2p.peer_guard import PeerGuard


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_a_peer_over_its_strikes_in_the_window_is_banned_then_forgiven() -> None:
    clock = Clock()
    g = PeerGuard(strikes=5, window=10, ban=60, clock=clock)
    assert [g.refused("a") for _ in range(4)] == [False] * 4
    clock.t += 11  # those four fell out of the window
    assert [g.refused("a") for _ in range(4)] == [False] * 4 and not g.is_banned("a")
    assert g.refused("a") is True  # the fifth within 10 s
    assert g.is_banned("a") and g.banned() == {"a": 60.0}
    assert g.refused("a") is False  # already banned: banned once, not again
    clock.t += 60
    assert not g.is_banned("a") and g.banned() == {}


def test_protected_peers_are_never_banned() -> None:
    g = PeerGuard(strikes=2, window=10, ban=60, protected={"dos"}, clock=Clock())
    assert not any(g.refused("dos") for _ in range(100))
    assert not g.is_banned("dos")


def test_memory_is_bounded_under_a_sybil_swarm() -> None:
    g = PeerGuard(strikes=2, window=10, ban=60, max_tracked=100, clock=Clock())
    for i in range(10_000):
        g.refused(f"p{i}")
        g.refused(f"p{i}")  # each one banned
    assert len(g._refusals) <= 100 and len(g._banned) <= 100
