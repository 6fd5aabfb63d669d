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
from typing import Any

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

    Addresses of one peer found in several records are merged.
    """
    if limit <= 0:
        return []
    me = dht.host.get_id()
    found: list[PeerInfo] = []
    with trio.move_on_after(timeout):
        try:
            # Ask for more than ``limit``: duplicates and ourselves are dropped below.
            found = list(await dht.provider_store.find_providers(cid.multihash, limit * 2 + 1))
        except Exception as exc:
            log.info("provider lookup failed", extra={"cid": str(cid), "error": str(exc)[:200]})
    merged: dict[Any, PeerInfo] = {}
    for info in found:
        if info.peer_id == me:
            continue
        seen = merged.get(info.peer_id)
        if seen is None:
            merged[info.peer_id] = PeerInfo(info.peer_id, list(info.addrs))
        else:
            seen.addrs.extend(a for a in info.addrs if a not in seen.addrs)
    return list(merged.values())[:limit]
