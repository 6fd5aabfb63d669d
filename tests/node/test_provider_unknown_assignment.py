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
    svc.requests, svc.jobs, svc._best_rank, svc._ended = {}, {}, {}, {}
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


class _Metrics:
    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def inc(self, name: str, **labels: str) -> None:
        key = f"{name}{sorted(labels.items())}"
        self.counts[key] = self.counts.get(key, 0) + 1


def _request(consumer: str, deadline_ms: int) -> tuple[m.ExecutionRequest, SignedMessage]:
    req = m.ExecutionRequest(id=os.urandom(16).hex(), ai_cid="bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e",
                             requirements=m.Requirements(), nonce=os.urandom(32).hex(), deadline_ms=deadline_ms,
                             bidding_ms=150)
    return req, SignedMessage(id="r", type=m.REQUEST, sender=consumer, timestamp_ms=now_ms(), payload=m.encode(req))


async def test_a_request_past_its_deadline_gets_no_offer() -> None:
    me, dos, consumer = (Identity.generate().peer_id for _ in range(3))
    svc = _service(me, dos)
    svc.metrics = _Metrics()  # type: ignore[assignment]
    req, msg = _request(consumer, now_ms() - 1)
    await svc._on_request(msg)
    assert svc.gossip.published == [] and req.id not in svc.requests  # type: ignore[attr-defined]
    assert svc.metrics.counts == {"ofnode_provider_declined_total[('reason', 'ended')]": 1}  # type: ignore[attr-defined]


async def test_an_assignment_after_the_consumer_said_done_is_ignored() -> None:
    """A replayed assignment of a finished job starts no enclave and no decline."""
    me, dos, consumer = (Identity.generate().peer_id for _ in range(3))
    svc = _service(me, dos)
    req, _ = _request(consumer, now_ms() + 60_000)
    svc.requests[req.id] = (req, consumer)
    done = SignedMessage(id="d", type=m.DONE, sender=consumer, timestamp_ms=now_ms(),
                         payload=m.encode(m.Done(req.id, True)))
    await svc._on_done(done)
    await svc._on_assignment(_assignment(dos, req.id, me, attempt=0))
    assert svc.jobs == {} and svc.gossip.published == []  # type: ignore[attr-defined]
    # "done" from anyone but the consumer ends nothing
    req2, _ = _request(consumer, now_ms() + 60_000)
    svc.requests[req2.id] = (req2, consumer)
    await svc._on_done(SignedMessage(id="e", type=m.DONE, sender=dos, timestamp_ms=now_ms(),
                                     payload=m.encode(m.Done(req2.id, True))))
    assert req2.id not in svc._ended
