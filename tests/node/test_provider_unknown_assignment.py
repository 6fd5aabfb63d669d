"""A provider assigned a request it does not know (it restarted after offering)
gives it back at once with market.decline, so the coordinator need not wait
the attestation deadline. Found by tests/chaos."""
from __future__ import annotations

import os
from types import SimpleNamespace

from node.identity import Identity
from node.market import messages as m
from node.p2p.envelope import SignedMessage, now_ms
from node.provider.service import ProviderService


class _Gossip:
    def __init__(self) -> None:
        self.published: list[tuple[str, bytes]] = []

    async def publish(self, type_: str, payload: bytes) -> str:
        self.published.append((type_, payload))
        return ""


def _service(me: str, dos: str) -> ProviderService:
    svc = ProviderService.__new__(ProviderService)
    svc.identity = SimpleNamespace(peer_id=me)  # type: ignore[assignment]
    svc.genesis = SimpleNamespace(dos_peers=(dos,))  # type: ignore[assignment]
    svc.gossip = _Gossip()  # type: ignore[assignment]
    svc.requests, svc.jobs, svc._best_rank = {}, {}, {}
    return svc


def _assignment(dos: str, request_id: str, provider: str, attempt: int = 1) -> SignedMessage:
    a = m.Assignment(request_id, provider, attempt, now_ms() + 30_000)
    return SignedMessage(id="x", type=m.ASSIGNMENT, sender=dos, timestamp_ms=now_ms(), payload=m.encode(a))


async def test_unknown_request_assigned_to_me_is_declined_at_once() -> None:
    me, dos, other = (Identity.generate().peer_id for _ in range(3))
    svc = _service(me, dos)
    rid = os.urandom(16).hex()
    await svc._on_assignment(_assignment(dos, rid, me))
    [(type_, payload)] = svc.gossip.published  # type: ignore[attr-defined]
    d = m.Decline.parse(m.decode(payload))
    assert type_ == m.DECLINE and (d.request_id, d.attempt) == (rid, 1) and "does not know the request" in d.reason
    # Assignments to other providers are none of its business.
    await svc._on_assignment(_assignment(dos, os.urandom(16).hex(), other))
    assert len(svc.gossip.published) == 1  # type: ignore[attr-defined]
