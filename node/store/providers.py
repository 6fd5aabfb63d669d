"""Content routing for the block exchange: announce and find providers in the DHT.

Provider records are keyed by the CID's multihash, as IPFS does, so a CIDv0
and a CIDv1 of the same block (or a raw and a dag-pb CID of the same bytes)
share one key. py-libp2p's ``KadDHT`` (``P2PHost.dht``) does the work; this
module fixes what its API leaves to the caller: a timeout, and
de-duplicated results (its ``find_providers`` returns the same peer more
than once, and may return us).
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Final, Iterable

import trio
from libp2p.peer.peerinfo import PeerInfo

from enclave.cid import Cid

__all__ = ["announce", "find_providers"]

log = logging.getLogger("ofnode.providers")


async def announce(dht: Any, cid: Cid, *, timeout: float = 30.0) -> bool:
    """Tell the DHT that we provide ``cid``; returns whether any peer took the record.

    The record is also kept in our own provider store, so peers that ask us
    directly find it even when the network part failed.
    """
    with trio.move_on_after(timeout):
        try:
            return bool(await dht.provider_store.provide(cid.multihash))
        except Exception as exc:  # py-libp2p raises assorted types on network failure
            log.info("announce failed", extra={"cid": str(cid), "error": str(exc)[:200]})
            return False
    log.info("announce timed out", extra={"cid": str(cid)})
    return False


async def find_providers(dht: Any, cid: Cid, limit: int = 20, *, timeout: float = 30.0) -> list[PeerInfo]:
    """Up to ``limit`` distinct providers of ``cid`` (never ourselves).

    py-libp2p's lookup answers from the local provider store alone whenever
    it holds any record for the key, so one record learnt early hides every
    other provider. When that gives fewer than ``limit`` peers we also ask
    the DHT peers closest to the key, and follow the closer peers they name
    for up to :data:`_ROUNDS` rounds. Addresses of one peer found in several
    records are merged.
    """
    if limit <= 0:
        return []
    key = cid.multihash
    me = dht.host.get_id()
    merged: dict[Any, PeerInfo] = {}

    def take(infos: Iterable[PeerInfo]) -> None:
        for info in infos:
            if info.peer_id == me:
                continue
            seen = merged.get(info.peer_id)
            if seen is None:
                merged[info.peer_id] = PeerInfo(info.peer_id, list(info.addrs))
            else:
                seen.addrs.extend(a for a in info.addrs if a not in seen.addrs)

    with trio.move_on_after(timeout):
        try:
            # More than ``limit``: duplicates and ourselves are dropped.
            take(await dht.provider_store.find_providers(key, limit * 2 + 1))
        except Exception as exc:  # py-libp2p raises assorted types on network failure
            log.info("provider lookup failed", extra={"cid": str(cid), "error": str(exc)[:200]})
        if len(merged) < limit:
            await _walk(dht, key, limit, take)
    return list(merged.values())[:limit]


_ROUNDS: Final = 3
_PER_ROUND: Final = 8


async def _walk(dht: Any, key: bytes, limit: int, take: Callable[[Iterable[PeerInfo]], None]) -> None:
    """Ask the closest known DHT peers for providers of ``key``, following closer peers."""
    ask = getattr(dht.provider_store, "_get_providers_from_peer_with_closers", None)
    if ask is None:  # pragma: no cover - another py-libp2p version
        return
    me = dht.host.get_id()
    queried: set[Any] = {me}
    candidates = [p for p in dht.routing_table.find_local_closest_peers(key, 20) if p != me]
    found = 0
    for _ in range(_ROUNDS):
        batch = [p for p in candidates if p not in queried][:_PER_ROUND]
        if not batch:
            return
        queried.update(batch)
        closer: list[Any] = []

        async def one(peer: Any) -> None:
            nonlocal found
            with trio.move_on_after(10):
                try:
                    providers, more = await ask(peer, key)
                except Exception as exc:
                    log.debug("provider query failed", extra={"peer": str(peer), "error": str(exc)[:200]})
                    return
                found += len(providers)
                take(providers)
                closer.extend(more)

        async with trio.open_nursery() as nursery:
            for peer in batch:
                nursery.start_soon(one, peer)
        if found >= limit * 2:
            return
        candidates = [p for p in dict.fromkeys(closer + candidates) if p not in queried]
