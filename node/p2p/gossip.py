"""Gossip: GossipSub carrying signed envelopes, checked before they spread.

What py-libp2p 0.8.1 does that ofnode replaces (see libp2p-notes.md):
- its spam filter drops everything over 10 msg/s per peer and topic, our own
  publishes included: it is off, and ``PeerLimiter`` limits forwarding peers;
- ``publish()`` has no back-pressure and its 32-deep per-peer queues drop
  silently: our publishes go through a bounded channel drained at
  ``publish_rate``, so a burst waits instead of vanishing;
- subscriptions hold 32 messages and drop past that: a reader task empties it
  into a larger channel at once;
- validation runs once per libp2p message id, but the application may still
  see a message twice: envelopes are de-duplicated by their own id;
- its message id is sender + seqno with the seqno counted from the start time
  in whole seconds, so a restarted node reused the ids of its last life and
  peers dropped its messages as seen: the seqno starts in nanoseconds;
- its "adaptive gossip" overrides the configured heartbeat with 60 s: off.
"""
from __future__ import annotations

import logging
import time
from collections import OrderedDict, deque
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable

import trio
from libp2p.peer.id import ID
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11, PROTOCOL_ID_V12, GossipSub
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import Pubsub
from libp2p.tools.anyio_service import background_trio_service

from . import libp2p_patches  # noqa: F401  (applied before any pubsub runs)
from ..identity import Identity
from ..metrics import Metrics
from .envelope import EnvelopeRejected, SignedMessage, message_id, now_ms, open_envelope, seal
from .host import P2PHost
from .ratelimit import PeerLimiter, SeenSet, TokenBucket

log = logging.getLogger("ofnode.gossip")

RATE_LIMITED = "rate_limited"
PENDING_TTL_S = 3.0
Handler = Callable[[SignedMessage], Awaitable[None]]


@dataclass(frozen=True)
class Received:
    message: SignedMessage
    received_ms: int


class Gossip:
    def __init__(self, p2p: P2PHost, identity: Identity, network_id: str, cfg: dict, metrics: Metrics) -> None:
        self.p2p, self.identity, self.network_id, self.cfg, self.metrics = p2p, identity, network_id, cfg, metrics
        self.topic = f"/ofnode/{network_id}/gossip/1"
        self._my_id = ID(identity.peer_id_bytes)
        self.router = GossipSub(
            protocols=[PROTOCOL_ID_V12, PROTOCOL_ID_V11],
            degree=cfg["degree"],
            degree_low=cfg["degree_low"],
            degree_high=cfg["degree_high"],
            heartbeat_initial_delay=0.1,
            heartbeat_interval=cfg["heartbeat_interval"],
            spam_protection_enabled=False,
            # py-libp2p's "adaptive gossip" rates the network's health every
            # 30 s by a formula that cannot reach its own "good" mark here (peer
            # scores are all 0, so a quarter of it is always lost), and below
            # 0.7 it sets the heartbeat to 60 s (30 s below 0.4) whatever was
            # configured, and widens the degree bounds. Every node of a testnet
            # was at 0.6 after 30 s: mesh repair and IHAVE gossip ran once a
            # minute, and the message cache (3 heartbeats) spanned minutes, so
            # a reconnecting peer was replayed minutes of old messages.
            adaptive_gossip_enabled=False,
            # py-libp2p queues messages for a disconnected peer and flushes them
            # when it reconnects (30 s by default): a restarted node then got
            # market requests that had long finished. Keep only the connection
            # set-up race this queue exists for.
            pending_messages_ttl=PENDING_TTL_S,
        )
        self.pubsub = Pubsub(p2p.host, self.router, max_inbound_rpc_size=cfg["max_message_bytes"] * 4 + 4096)
        # A libp2p message id is sender + seqno. py-libp2p starts the seqno at
        # int(time.time()) and adds one per message, so a node that published
        # faster than 1 msg/s and restarted within that lead reused the seqnos
        # of its last life: every peer that still remembered those ids (seen
        # cache, 120 s, refreshed on each re-gossip) dropped its new messages as
        # duplicates, and the restarted node itself marked them seen when peers
        # replayed its old ones. Start in nanoseconds, as go-libp2p does.
        self.pubsub.counter = time.time_ns()
        self.pubsub.set_topic_validator(self.topic, self._validate, is_async_validator=False)
        # py-libp2p caches a failed validation by message id for 300 s, so a
        # message refused because *one forwarder* was over its rate would be
        # refused from every forwarder: such refusals are not cached.
        self._forwarder_refusals: OrderedDict[bytes, None] = OrderedDict()
        cache = self.pubsub.validation_cache
        cache_put = cache.put

        def put(msg_id: bytes, result: Any) -> None:
            if not result.is_valid and self._forwarder_refusals.pop(msg_id, 0) is None:
                return
            cache_put(msg_id, result)

        cache.put = put
        self._limiter = PeerLimiter(cfg["peer_rate"], cfg["peer_burst"])
        self._seen = SeenSet(cfg["dedupe_window"])
        self._pace = TokenBucket(cfg["publish_rate"], max(1.0, cfg["publish_rate"] / 10))
        self._out_send, self._out_recv = trio.open_memory_channel[bytes](256)
        self._in_send, self._in_recv = trio.open_memory_channel[SignedMessage](4096)
        self._handlers: dict[str, list[Handler]] = {}
        self._watchers: set[trio.MemorySendChannel[Received]] = set()
        self.recent: deque[Received] = deque(maxlen=1024)
        self._arrivals: dict[str, trio.Event] = {}

    # -- public API ------------------------------------------------------
    def on(self, type_: str, handler: Handler) -> None:
        """Call ``handler`` for each accepted message of ``type_`` (once per message)."""
        self._handlers.setdefault(type_, []).append(handler)

    async def publish(self, type_: str, payload: bytes) -> str:
        """Sign and queue a message; waits when the pace is exceeded. Returns its id."""
        raw = seal(self.identity, self.network_id, type_, payload)
        if len(raw) > self.cfg["max_message_bytes"]:
            raise ValueError(f"message of {len(raw)} bytes exceeds gossip.max_message_bytes")
        await self._out_send.send(raw)
        return message_id(raw)

    def find(self, msg_id: str) -> list[Received]:
        return [r for r in self.recent if r.message.id == msg_id]

    async def wait_for(self, msg_id: str) -> Received:
        """Return once the message ``msg_id`` has been delivered here."""
        while not (found := self.find(msg_id)):
            event = self._arrivals.setdefault(msg_id, trio.Event())
            await event.wait()
        return found[0]

    @asynccontextmanager
    async def watch(self, buffer: int = 256) -> AsyncIterator[trio.MemoryReceiveChannel[Received]]:
        """A live feed of accepted messages; a slow watcher loses messages, never the node."""
        send, recv = trio.open_memory_channel[Received](buffer)
        self._watchers.add(send)
        try:
            yield recv
        finally:
            self._watchers.discard(send)
            send.close()

    def state(self) -> dict[str, Any]:
        """What the GossipSub router holds for our topic (for diagnosing mesh problems):
        connected peers, pubsub streams, subscribed peers, mesh, back-offs in seconds left."""
        r, p, t = self.router, self.pubsub, self.topic
        now = int(time.time())

        def ids(xs: Any) -> list[str]:
            return sorted(x.to_base58() for x in xs)

        return {
            "seqno": p.counter,
            "connected": ids(p.host.get_connected_peers()),
            "streams": ids(p.peers),
            "subscribed": ids(p.peer_topics.get(t, ())),
            "mesh": ids(r.mesh.get(t, ())),
            "back_off": {k.to_base58(): v - now for k, v in r.back_off.get(t, {}).items() if v > now},
            "degree_low": r.adaptive_degree_low,
            "degree_high": r.adaptive_degree_high,
            "heartbeat_interval": r.heartbeat_interval,
            "health": round(r.network_health_score, 3),
        }

    # -- lifecycle -------------------------------------------------------
    @asynccontextmanager
    async def running(self) -> AsyncIterator["Gossip"]:
        async with background_trio_service(self.pubsub), background_trio_service(self.router):
            await self.pubsub.wait_until_ready()
            sub = await self.pubsub.subscribe(self.topic)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._read, sub)
                nursery.start_soon(self._dispatch)
                nursery.start_soon(self._drain_outbox)
                yield self
                nursery.cancel_scope.cancel()

    # -- internals -------------------------------------------------------
    def _validate(self, forwarder: ID, msg: rpc_pb2.Message) -> bool:
        """Synchronous on purpose: py-libp2p's async validators deliver duplicates."""
        if forwarder == self._my_id:
            return True
        if not self._limiter.allow(forwarder.to_bytes()):
            self.metrics.inc("ofnode_gossip_rejected_total", reason=RATE_LIMITED)
            self._forwarder_refusals[self.pubsub._msg_id_constructor(msg)] = None
            if len(self._forwarder_refusals) > 4096:
                self._forwarder_refusals.popitem(last=False)
            # Only a peer's *own* messages count towards a ban: an honest node
            # relaying someone else's flood is throttled, never cut off (else a
            # few Sybils flooding one node would get it banned by its peers).
            guard = self.p2p.guard
            if guard is not None and msg.from_id == forwarder.to_bytes() \
                    and guard.refused(peer := forwarder.to_base58()):
                self.p2p.cut_off(peer, "gossip_flood")
            return False
        try:
            self._open(msg.data)
        except EnvelopeRejected as e:
            self.metrics.inc("ofnode_gossip_rejected_total", reason=e.reason)
            log.debug("gossip rejected", extra={"reason": e.reason, "detail": e.detail, "forwarder": forwarder.to_base58()})
            return False
        return True

    def _open(self, raw: bytes) -> SignedMessage:
        c = self.cfg
        return open_envelope(
            raw,
            self.network_id,
            max_bytes=c["max_message_bytes"],
            max_age_ms=int(c["max_age"] * 1000),
            max_future_ms=int(c["max_future"] * 1000),
        )

    async def _read(self, sub) -> None:
        while True:
            msg = await sub.get()
            try:
                signed = self._open(msg.data)
            except EnvelopeRejected as e:
                # Validated on arrival; only a message that aged in transit lands here.
                self.metrics.inc("ofnode_gossip_rejected_total", reason=e.reason)
                continue
            if not self._seen.add(signed.id):
                self.metrics.inc("ofnode_gossip_duplicates_total")
                continue
            try:
                self._in_send.send_nowait(signed)
            except trio.WouldBlock:
                self.metrics.inc("ofnode_gossip_rejected_total", reason="overloaded")
                log.warning("gossip inbox full; message dropped", extra={"id": signed.id, "type": signed.type})

    async def _dispatch(self) -> None:
        async for signed in self._in_recv:
            self.metrics.inc("ofnode_gossip_in_total", type=signed.type)
            rec = Received(signed, now_ms())
            self.recent.append(rec)
            if (arrived := self._arrivals.pop(signed.id, None)) is not None:
                arrived.set()
            for w in list(self._watchers):
                try:
                    w.send_nowait(rec)
                except (trio.WouldBlock, trio.BrokenResourceError):
                    pass
            for handler in self._handlers.get(signed.type, ()):
                try:
                    with trio.fail_after(10):
                        await handler(signed)
                except Exception:
                    log.exception("gossip handler failed", extra={"type": signed.type, "id": signed.id})

    async def _drain_outbox(self) -> None:
        async for raw in self._out_recv:
            await self._pace.take()
            await self.pubsub.publish(self.topic, raw)
            self.metrics.inc("ofnode_gossip_out_total")

