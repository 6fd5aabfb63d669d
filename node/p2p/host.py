"""The libp2p host: TCP + Noise only, yamux, one connection per peer, a
Kademlia DHT in server mode, and links to bootstrap peers kept up.

Why these choices (measured, see ../shared/design/libp2p-notes.md):
- py-libp2p's default security list also offers plaintext and SECIO; a
  Noise-only ``sec_opt`` makes an insecure session impossible.
- ``max_connections_per_peer=1`` skips the dialer's 250 ms happy-eyeballs
  wait (connect drops from ~252 ms to ~9 ms) and avoids duplicate links.
- ``p2p.max_connections`` caps inbound connections (py-libp2p refuses more)
  and prunes above 80 % of it; genesis (DOS, secrets) and bootstrap peers are
  protected from pruning. A peer the :class:`~.peer_guard.PeerGuard` banned
  (a gossip flooder) is disconnected, and its new connections are closed.
"""
from __future__ import annotations

import logging
import math
import random
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable

import multiaddr
import trio
from libp2p import new_host
from libp2p.abc import IHost, INetConn, INetStream, INetwork, INotifee
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
from libp2p.network.config import ConnectionConfig
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.tools.anyio_service import background_trio_service

from ..identity import Identity
from .addrs import dialable
from .peer_guard import PeerGuard
from ..metrics import Metrics

log = logging.getLogger("ofnode.p2p")
DISCOVERY_BACKOFF_MAX = 8  # the discovery loop waits at most this many intervals after fruitless refreshes
DISCOVERY_PHASE = 0.4  # the first discovery wait is longer by up to this fraction of an interval (see _discover)


class _ConnectionWatch(INotifee):
    """Turns swarm notifications into one trio.Event per change.

    Waiters re-check their condition after each change instead of polling.
    """

    def __init__(self, on_change: Callable[[], None], on_connected: Callable[[INetConn], None]) -> None:
        self._on_change, self._on_connected = on_change, on_connected

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        pass

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        pass

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        self._on_connected(conn)
        self._on_change()

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        self._on_change()

    async def listen(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        pass

    async def listen_close(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        pass


@dataclass
class _Backoff:
    failures: int = 0
    next_try: float = 0.0


@dataclass
class P2PHost:
    identity: Identity
    listen: list[str]
    bootstrap: list[str]
    metrics: Metrics
    reconnect_interval: float = 2.0
    reconnect_max: float = 30.0
    dial_timeout: float = 5.0
    target_peers: int = 32
    discovery_interval: float = 15.0
    max_connections: int = 300
    protected: tuple[str, ...] = ()  # peer ids never pruned (genesis DOS/secrets, bootstrap)
    guard: PeerGuard | None = None
    host: IHost = field(init=False)
    dht: KadDHT = field(init=False)
    _changed: trio.Event = field(init=False, default_factory=trio.Event)

    def __post_init__(self) -> None:
        key_pair = create_new_key_pair(self.identity.seed)
        noise = NoiseTransport(libp2p_keypair=key_pair, noise_privkey=create_x25519_key_pair().private_key)
        self.host = new_host(
            key_pair=key_pair,
            sec_opt={NOISE_PROTOCOL_ID: noise},
            muxer_preference="YAMUX",
            connection_config=ConnectionConfig(
                max_connections_per_peer=1,
                dial_timeout=self.dial_timeout,
                # The swarm's own auto-connector would dial peers we did not
                # choose; ofnode keeps its links itself (bootstrap + discovery).
                min_connections=0,
                low_watermark=0,
                max_connections=self.max_connections,
                high_watermark=max(1, self.max_connections * 4 // 5),
            ),
        )
        network = self.host.get_network()
        network.register_notifee(_ConnectionWatch(self._notify, self._gate))
        for peer in {*self.protected, *(a.rsplit("/p2p/", 1)[-1] for a in self.bootstrap if "/p2p/" in a)}:
            network.protect(ID.from_base58(peer), "ofnode")
        self._tasks: trio.Nursery | None = None
        self._bootstrap_infos = [info_from_p2p_addr(multiaddr.Multiaddr(a)) for a in self.bootstrap]

    # -- peers cut off -----------------------------------------------------
    def _gate(self, conn: INetConn) -> None:
        peer = conn.muxed_conn.peer_id.to_base58()
        if self.guard is not None and self.guard.is_banned(peer):
            self.metrics.inc("ofnode_banned_connections_closed_total")
            self._spawn(self._close, conn)

    def cut_off(self, peer: str, reason: str) -> None:
        """Disconnect ``peer`` now (the guard has banned it; see :class:`PeerGuard`)."""
        log.warning("peer cut off", extra={"peer": peer, "reason": reason,
                                           "ban_s": self.guard.ban if self.guard else 0})
        self.metrics.inc("ofnode_peers_banned_total", reason=reason)
        self._spawn(self._disconnect, peer)

    def _spawn(self, fn: Callable[..., Any], *args: Any) -> None:
        if self._tasks is not None:
            self._tasks.start_soon(fn, *args)

    async def _close(self, conn: INetConn) -> None:
        with trio.move_on_after(5):
            try:
                await conn.close()
            except Exception as e:  # noqa: BLE001 - already closing: what we wanted
                log.debug("closing a banned peer's connection: %s", e)

    async def _disconnect(self, peer: str) -> None:
        with trio.move_on_after(5):
            try:
                await self.host.disconnect(ID.from_base58(peer))
            except Exception as e:  # noqa: BLE001 - already gone
                log.debug("disconnecting %s: %s", peer, e)

    # -- state -----------------------------------------------------------
    def _notify(self) -> None:
        self.metrics.set("ofnode_peers", len(self.connected_peers()))
        self._changed.set()
        self._changed = trio.Event()

    @property
    def peer_id(self) -> str:
        return self.identity.peer_id

    def connected_peers(self) -> list[str]:
        return sorted(p.to_base58() for p in self.host.get_connected_peers())

    def addrs(self) -> list[str]:
        return dialable(self.host.get_addrs())

    def change_event(self) -> trio.Event:
        """The event the next connect or disconnect sets. Take it *before*
        checking a condition, then wait on it: no change can slip in between."""
        return self._changed

    async def wait_changed(self) -> None:
        """Return at the next connect or disconnect."""
        await self._changed.wait()

    async def wait_for_peers(self, count: int, peers: list[str] | None = None) -> None:
        """Wait (no polling) until ``count`` peers are connected, or all of ``peers``."""
        while True:
            changed = self.change_event()
            connected = set(self.connected_peers())
            if (peers and set(peers) <= connected) or (not peers and len(connected) >= count):
                return
            await changed.wait()

    # -- lifecycle -------------------------------------------------------
    @asynccontextmanager
    async def running(self) -> AsyncIterator["P2PHost"]:
        """Listen and serve the DHT. Links are made by ``maintain_links``, which
        the node starts once every protocol (gossip first) is ready for peers."""
        addrs = [multiaddr.Multiaddr(a) for a in self.listen]
        async with self.host.run(listen_addrs=addrs):
            self.dht = KadDHT(self.host, DHTMode.SERVER)
            async with background_trio_service(self.dht), trio.open_nursery() as tasks:
                self._tasks = tasks  # disconnects of banned peers
                try:
                    yield self
                finally:
                    self._tasks = None
                    tasks.cancel_scope.cancel()

    async def maintain_links(self) -> None:
        """Keep bootstrap links up and discover more peers; runs until cancelled."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._keep_bootstrap_links)
            nursery.start_soon(self._discover)

    async def connect(self, info: PeerInfo) -> bool:
        """Dial one peer with a timeout; never raises for network failures."""
        if info.peer_id == self.host.get_id():
            return True
        # py-libp2p refuses to redial a peer for 60 s after one failed dial
        # (its "negative cache"); a restarted bootstrap peer would stay
        # unreachable that long. Our callers pace redials with their own backoff.
        unblock = getattr(self.host.get_network(), "unblock_peer", None)
        if unblock is not None:
            unblock(info.peer_id)
        with trio.move_on_after(self.dial_timeout):
            try:
                await self.host.connect(info)
                self.metrics.inc("ofnode_dials_total", result="ok")
                try:
                    await self.dht.add_peer(info.peer_id)
                except Exception as e:  # a peer without DHT is still a peer
                    log.debug("dht add_peer failed", extra={"peer": info.peer_id.to_base58(), "error": str(e)})
                return True
            except Exception as e:  # libp2p raises many unrelated types on dial failure
                self.metrics.inc("ofnode_dials_total", result="failed")
                log.info("dial failed", extra={"peer": info.peer_id.to_base58(),
                                               "error": f"{type(e).__name__}: {str(e)[:300]}"})
                return False
        self.metrics.inc("ofnode_dials_total", result="timeout")
        return False

    async def connect_addr(self, addr: str) -> bool:
        return await self.connect(info_from_p2p_addr(multiaddr.Multiaddr(addr)))

    async def _keep_bootstrap_links(self) -> None:
        """Redial bootstrap peers that are not connected, with per-peer backoff.

        A disconnect wakes this loop at once; otherwise it re-checks every
        ``reconnect_interval`` seconds (the timeout of the wait, not a poll of state).
        """
        backoff: dict[ID, _Backoff] = {i.peer_id: _Backoff() for i in self._bootstrap_infos}
        while True:
            changed = self.change_event()
            now = trio.current_time()
            connected = set(self.host.get_connected_peers())
            due = [i for i in self._bootstrap_infos if i.peer_id not in connected and backoff[i.peer_id].next_try <= now]
            if due:
                async with trio.open_nursery() as n:
                    for info in due:
                        n.start_soon(self._dial_with_backoff, info, backoff[info.peer_id])
            with trio.move_on_after(self.reconnect_interval):
                await changed.wait()

    async def _dial_with_backoff(self, info: PeerInfo, b: _Backoff) -> None:
        if await self.connect(info):
            if b.failures:
                log.info("reconnected to bootstrap peer", extra={"peer": info.peer_id.to_base58()})
            b.failures, b.next_try = 0, 0.0
        else:
            b.failures += 1
            delay = min(self.reconnect_max, self.reconnect_interval * math.pow(2, b.failures - 1))
            b.next_try = trio.current_time() + delay * random.uniform(0.8, 1.2)

    async def _discover(self) -> None:
        """Fill up to ``target_peers`` from the DHT routing table.

        A refresh that leaves no new peer to dial doubles the wait before the next
        (up to DISCOVERY_BACKOFF_MAX × ``discovery_interval``); losing a peer resets it.
        On a network smaller than ``target_peers`` every node would otherwise walk the
        DHT every interval for nothing (30 idle nodes: ~0.4 of 2 cores).

        The first wait is longer by a random phase of up to DISCOVERY_PHASE of an interval:
        nodes started together (a testnet, a data centre after a power cut) otherwise
        all walk the DHT at the same moment; 10 nodes on 2 cores took 1.5 cores for a
        second 15 s after start, and gossip latency spiked with it."""
        idle = 0
        last = 0
        await trio.sleep(self.discovery_interval * random.uniform(0, DISCOVERY_PHASE))
        while True:
            await trio.sleep(self.discovery_interval * min(DISCOVERY_BACKOFF_MAX, 2 ** idle))  # periodic work
            connected = set(self.host.get_connected_peers())
            if len(connected) < last:
                idle = 0
            last = len(connected)
            if len(connected) >= self.target_peers:
                continue
            with trio.move_on_after(self.dial_timeout * 2):
                try:
                    await self.dht.refresh_routing_table()
                except Exception as e:
                    log.debug("routing table refresh failed", extra={"error": str(e)[:200]})
            candidates = [p for p in self.dht.routing_table.get_peer_ids() if p not in connected and p != self.host.get_id()]
            idle = 0 if candidates else min(idle + 1, 8)
            for peer in candidates[: self.target_peers - len(connected)]:
                addrs = self.host.get_peerstore().addrs(peer)
                if addrs:
                    await self.connect(PeerInfo(peer, addrs))
