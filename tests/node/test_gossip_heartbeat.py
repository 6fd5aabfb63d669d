"""The configured GossipSub heartbeat and degree bounds hold whatever py-libp2p thinks of the network.

py-libp2p's "adaptive gossip" rates the network every 30 s and, below a health of
0.7 (every node of an idle 4-node testnet was at 0.607: peer scores are all 0),
sets the heartbeat to 60 s and widens the mesh bounds: mesh repair and IHAVE ran
once a minute and a reconnecting peer was replayed minutes of old messages.
"""
from __future__ import annotations

from node.config import _load_defaults
from node.identity import Identity
from node.metrics import node_metrics
from node.p2p.gossip import Gossip
from node.p2p.host import P2PHost


def _gossip() -> tuple[Gossip, dict]:
    cfg = _load_defaults()["gossip"]
    ident = Identity.generate()
    p2p = P2PHost(identity=ident, listen=["/ip4/127.0.0.1/tcp/0"], bootstrap=[], metrics=node_metrics())
    return Gossip(p2p, ident, "test-net", cfg, p2p.metrics), cfg


def test_heartbeat_and_degree_bounds_stay_as_configured_when_the_network_looks_unhealthy() -> None:
    g, cfg = _gossip()
    r = g.router
    for health in (0.1, 0.3, 0.5, 0.65):
        # what the router's heartbeat runs every 30 s; an empty mesh rates as health 0
        r.last_health_update = 0
        r._update_network_health()
        r.network_health_score = min(r.network_health_score, health)
        r._adapt_gossip_parameters()
        state = g.state()
        assert state["heartbeat_interval"] == cfg["heartbeat_interval"], health
        assert (state["degree_low"], state["degree_high"]) == (cfg["degree_low"], cfg["degree_high"]), health
