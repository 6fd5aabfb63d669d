"""Discovery on a network smaller than p2p.target_peers: fruitless DHT refreshes
back off (doubling, up to 8 intervals); losing a peer resets the pace."""
from __future__ import annotations

from types import SimpleNamespace

import trio

from node.p2p.host import P2PHost


async def test_fruitless_refreshes_back_off_and_a_lost_peer_resets(autojump_clock) -> None:
    peers = ["a", "b", "c"]
    refreshes: list[float] = []

    async def refresh() -> None:
        refreshes.append(trio.current_time())

    h = P2PHost.__new__(P2PHost)
    h.discovery_interval, h.target_peers = 1.0, 32
    h.host = SimpleNamespace(get_connected_peers=lambda: list(peers), get_id=lambda: "me")  # type: ignore[assignment]
    h.dht = SimpleNamespace(refresh_routing_table=refresh,  # type: ignore[assignment]
                            routing_table=SimpleNamespace(get_peer_ids=lambda: list(peers)))
    async with trio.open_nursery() as n:
        n.start_soon(h._discover)
        await trio.sleep(1 + 2 + 4 + 8 + 8 + 8 + 0.5)
        assert [round(t) for t in refreshes] == [1, 3, 7, 15, 23, 31]
        peers.pop()  # a peer is lost: the wake that sees it refreshes, and the pace starts over (2, not 8)
        await trio.sleep(8 + 2 + 0.5)
        assert [round(t) for t in refreshes][-2:] == [39, 41]
        n.cancel_scope.cancel()
