"""Which peers may stay connected: flooders are cut off, not just throttled.

Gossip's per-peer token bucket (:class:`~node.p2p.ratelimit.PeerLimiter`)
refuses what a peer sends over its rate, but every refused message still costs
py-libp2p's per-message work (RPC decoding, the pubsub signature check, a task)
before the bucket sees it: a peer that keeps flooding keeps costing CPU. The
guard counts those refusals per peer, for the peer's own messages only (a
node relaying someone else's flood is throttled, never banned: else a few
Sybils flooding one honest node would get it cut off by its peers); a peer
refused ``strikes`` times within
``window`` seconds is disconnected and banned for ``ban`` seconds (its new
connections are closed as they open). Genesis peers (DOS, secrets) and
bootstrap peers are never banned: losing them costs the network more than
their excess costs this node, and their bucket still throttles them.
"""
from __future__ import annotations

import time
from collections import OrderedDict, deque
from typing import Callable, Iterable


class PeerGuard:
    def __init__(self, *, strikes: int = 400, window: float = 10.0, ban: float = 300.0,
                 protected: Iterable[str] = (), max_tracked: int = 4096,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.strikes, self.window, self.ban = strikes, window, ban
        self.protected = set(protected)
        self.max_tracked = max_tracked
        self._clock = clock
        self._refusals: OrderedDict[str, deque[float]] = OrderedDict()
        self._banned: OrderedDict[str, float] = OrderedDict()  # peer -> banned until

    def refused(self, peer: str) -> bool:
        """Count one refused message from ``peer``; True when this refusal bans it (disconnect it now)."""
        if peer in self.protected or self.is_banned(peer):
            return False
        now = self._clock()
        q = self._refusals.get(peer)
        if q is None:
            q = self._refusals[peer] = deque()
            if len(self._refusals) > self.max_tracked:  # a Sybil swarm cannot grow this without bound
                self._refusals.popitem(last=False)
        else:
            self._refusals.move_to_end(peer)
        q.append(now)
        while q and q[0] <= now - self.window:
            q.popleft()
        if len(q) < self.strikes:
            return False
        del self._refusals[peer]
        self._banned[peer] = now + self.ban
        self._banned.move_to_end(peer)
        if len(self._banned) > self.max_tracked:
            self._banned.popitem(last=False)
        return True

    def is_banned(self, peer: str) -> bool:
        until = self._banned.get(peer)
        if until is None:
            return False
        if until <= self._clock():
            del self._banned[peer]
            return False
        return True

    def banned(self) -> dict[str, float]:
        """Banned peers and the seconds each ban has left."""
        now = self._clock()
        return {p: round(u - now, 1) for p, u in self._banned.items() if u > now}
