"""Presence announcements at scale: the interval stretches with the network so all
nodes together announce about once a second; a node's first announcement says
hello, and providers answer it (a restarted DOS peer needs their inventories)."""
from __future__ import annotations

import json
from types import SimpleNamespace

import trio

from node import daemon
from node.daemon import Node, parse_announcement
from node.p2p.envelope import SignedMessage


def _node(peers: int, interval: float = 10.0, provider: bool = False) -> Node:
    n = Node.__new__(Node)
    n.config = {"gossip": {"announce_interval": interval}}  # type: ignore[assignment]
    n.p2p = SimpleNamespace(connected_peers=lambda: [f"p{i}" for i in range(peers)],  # type: ignore[assignment]
                            host=SimpleNamespace(get_peerstore=lambda: SimpleNamespace(add_addrs=lambda *a: None)))
    n.roles_runner = SimpleNamespace(provider=object() if provider else None)  # type: ignore[assignment]
    n.identity = SimpleNamespace(peer_id="me")  # type: ignore[assignment]
    n.metrics = None  # type: ignore[assignment]
    n.peer_info = {}
    n._announce_now = trio.Event()
    return n


def test_interval_is_the_configured_one_on_small_networks_and_grows_with_nodes() -> None:
    assert daemon.ANNOUNCE_NETWORK_RATE == 1.0
    for _ in range(20):
        assert 9.0 <= _node(4).announce_interval() <= 11.0
        assert 27.0 <= _node(29).announce_interval() <= 33.0  # 30 nodes: ~1 announcement/s in all
        assert 54.0 <= _node(29, interval=60).announce_interval() <= 66.0


def _hello(sender: str, hello: bool) -> SignedMessage:
    doc = {"name": "n", "roles": ["dos"], "addrs": [], "version": "1", **({"hello": True} if hello else {})}
    return SignedMessage(id="x", type=daemon.ANNOUNCE, sender=sender, timestamp_ms=1, payload=json.dumps(doc).encode())


async def test_providers_answer_a_hello_others_do_not() -> None:
    assert parse_announcement(json.dumps({"name": "n", "roles": [], "addrs": [], "hello": True}).encode())["hello"]
    assert "hello" not in parse_announcement(json.dumps({"name": "n", "roles": [], "addrs": [], "hello": 1}).encode())
    prov, plain = _node(5, provider=True), _node(5)
    await prov._on_announce(_hello("other", False))
    assert not prov._announce_now.is_set()
    await prov._on_announce(_hello("other", True))
    assert prov._announce_now.is_set() and "hello" not in prov.peer_info["other"]
    await plain._on_announce(_hello("other", True))
    assert not plain._announce_now.is_set()
