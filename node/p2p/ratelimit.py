"""Token buckets: per-peer admission limits and our own publishing pace."""
from __future__ import annotations

import time
from collections import OrderedDict

import trio


class TokenBucket:
    def __init__(self, rate: float, burst: float, clock=time.monotonic) -> None:
        self.rate, self.burst, self._clock = rate, burst, clock
        self._tokens, self._stamp = burst, clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    def try_take(self) -> bool:
        self._refill()
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False

    async def take(self) -> None:
        """Wait exactly as long as the next token needs, then take it."""
        while not self.try_take():
            await trio.sleep((1 - self._tokens) / self.rate)


class PeerLimiter:
    """One bucket per peer, the least recently seen forgotten past ``max_peers``
    so a Sybil swarm of ids cannot grow memory without bound."""

    def __init__(self, rate: float, burst: float, max_peers: int = 4096) -> None:
        self.rate, self.burst, self.max_peers = rate, burst, max_peers
        self._buckets: OrderedDict[bytes, TokenBucket] = OrderedDict()

    def allow(self, peer: bytes) -> bool:
        b = self._buckets.get(peer)
        if b is None:
            b = self._buckets[peer] = TokenBucket(self.rate, self.burst)
            if len(self._buckets) > self.max_peers:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(peer)
        return b.try_take()


class SeenSet:
    """Bounded memory of ids: ``add`` returns False when the id was seen."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._ids: OrderedDict[str, None] = OrderedDict()

    def add(self, key: str) -> bool:
        if key in self._ids:
            self._ids.move_to_end(key)
            return False
        self._ids[key] = None
        if len(self._ids) > self.size:
            self._ids.popitem(last=False)
        return True
