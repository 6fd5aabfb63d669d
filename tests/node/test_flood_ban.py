"""A peer that keeps flooding gossip is cut off, not just throttled; the others stay.

Real hosts on loopback in this process: the target node (P2PHost + Gossip with a
PeerGuard of 50 strikes), an honest peer linked to it, and a flooder writing raw
GossipSub RPCs as fast as the connection takes them (tests/adversarial/peers.py).
"""
from __future__ import annotations


from node.config import _load_defaults
from node.identity import Identity
from node.metrics import node_metrics
from node.p2p.gossip import Gossip
from node.p2p.host import P2PHost
from node.p2p.peer_guard import PeerGuard
from tests.adversarial import peers as P
from tests.helpers.waiting import until

NET = "flood-net"


async def test_a_flooder_is_disconnected_and_kept_out_while_honest_peers_stay() -> None:
    cfg = _load_defaults()["gossip"]
    ident = Identity.generate()
    honest_id = Identity.generate()
    guard = PeerGuard(strikes=50, window=10, ban=60, protected=[honest_id.peer_id])
    target = P2PHost(identity=ident, listen=["/ip4/127.0.0.1/tcp/0"], bootstrap=[], metrics=node_metrics(),
                     guard=guard)
    gossip = Gossip(target, ident, NET, cfg, target.metrics)
    async with target.running(), gossip.running():
        addr = f"{target.addrs()[0]}/p2p/{target.peer_id}"
        async with P.peer(honest_id, connect=[addr]) as honest:
            # The protected honest peer floods too: it is throttled, never cut off.
            await P.flood(honest, target.peer_id, NET, valid=600, garbage=0, wrong_network=0, forged=0)
            async with P.peer(connect=[addr]) as flooder:
                sent: dict = {}
                try:
                    sent = await P.flood(flooder, target.peer_id, NET, valid=3000, garbage=0, wrong_network=0,
                                         forged=0)
                except Exception as e:  # noqa: BLE001 - the target may cut the stream mid-flood
                    sent = {"cut_mid_flood": type(e).__name__}
                assert await until(lambda: guard.is_banned(flooder.peer_id), 30), (sent, target.metrics.render())
                assert await until(lambda: flooder.peer_id not in target.connected_peers(), 10)
                assert guard.banned().keys() == {flooder.peer_id}
                # It redials: the connection is closed as it opens.
                await flooder.connect_addr(addr)
                assert await until(lambda: flooder.peer_id not in target.connected_peers()
                                    and 'ofnode_banned_connections_closed_total 1' in target.metrics.render(), 10)
            assert honest.peer_id in target.connected_peers()
            text = target.metrics.render()
            assert 'ofnode_peers_banned_total{reason="gossip_flood"} 1' in text, text


async def test_a_message_refused_for_one_forwarders_rate_is_still_taken_from_another() -> None:
    """py-libp2p caches failed validations by message id (300 s): a refusal that is about the
    forwarder, not the message, must not make every other forwarder's copy refused too."""
    from libp2p.peer.id import ID
    from libp2p.pubsub.pubsub import ValidationError

    from node.p2p.envelope import seal

    cfg = {**_load_defaults()["gossip"], "peer_rate": 0.001, "peer_burst": 1}
    ident = Identity.generate()
    node = P2PHost(identity=ident, listen=["/ip4/127.0.0.1/tcp/0"], bootstrap=[], metrics=node_metrics())
    gossip = Gossip(node, ident, NET, cfg, node.metrics)
    author = Identity.generate()
    origin = P2PHost(identity=author, listen=["/ip4/127.0.0.1/tcp/0"], bootstrap=[], metrics=node_metrics())
    msg = P._pubsub_message(origin, gossip.topic, seal(author, NET, "node.note", b"hello"), 1)
    other = P._pubsub_message(origin, gossip.topic, seal(author, NET, "node.note", b"other"), 2)
    a, b = ID(Identity.generate().peer_id_bytes), ID(Identity.generate().peer_id_bytes)
    await gossip.pubsub.validate_msg(a, other)  # a's one token
    try:
        await gossip.pubsub.validate_msg(a, msg)
        raise AssertionError("a is over its rate: its copy must be refused")
    except ValidationError:
        pass
    await gossip.pubsub.validate_msg(b, msg)  # b's copy of the same message is taken


async def test_a_relay_of_someone_elses_flood_is_throttled_not_banned() -> None:
    """Messages a peer forwards for others never count towards its ban: a few Sybils flooding one
    honest node must not get that node cut off by its peers."""
    from libp2p.peer.id import ID
    from libp2p.pubsub.pubsub import ValidationError

    from node.p2p.envelope import seal

    cfg = {**_load_defaults()["gossip"], "peer_rate": 0.001, "peer_burst": 1}
    ident = Identity.generate()
    guard = PeerGuard(strikes=5, window=10, ban=60)
    node = P2PHost(identity=ident, listen=["/ip4/127.0.0.1/tcp/0"], bootstrap=[], metrics=node_metrics(), guard=guard)
    gossip = Gossip(node, ident, NET, cfg, node.metrics)
    sybil = Identity.generate()
    origin = P2PHost(identity=sybil, listen=["/ip4/127.0.0.1/tcp/0"], bootstrap=[], metrics=node_metrics())
    relay = ID(Identity.generate().peer_id_bytes)
    for i in range(50):
        msg = P._pubsub_message(origin, gossip.topic, seal(sybil, NET, "node.note", b"x%d" % i), i + 1)
        try:
            await gossip.pubsub.validate_msg(relay, msg)
        except ValidationError:
            pass
    assert guard.banned() == {}
    # the same flood straight from its origin is banned
    for i in range(50):
        msg = P._pubsub_message(origin, gossip.topic, seal(sybil, NET, "node.note", b"y%d" % i), 100 + i)
        try:
            await gossip.pubsub.validate_msg(ID(sybil.peer_id_bytes), msg)
        except ValidationError:
            pass
    assert guard.is_banned(sybil.peer_id)
