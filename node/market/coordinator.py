"""The DOS side of the market: collect offers, pick a provider, fail fast.

Every DOS peer follows every request, so any of them can take over: rank 0 of
the rendezvous ranking assigns when the bidding window closes; rank r acts
only if no assignment for that attempt has appeared ``r`` grace periods
later. A provider that has not brought up an attested enclave by its
``attest_by`` deadline, or that the consumer reports dead (``market.retry``),
loses the job to the next-best offer (a new attempt). A request nobody can
match fails at the end of the bidding window, with the reason.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

import trio

from ..p2p.envelope import SignedMessage, now_ms
from ..p2p.gossip import Gossip
from . import messages as m
from .election import best_offer, coordinator_rank, dos_ranking, why_unmatched

log = logging.getLogger("ofnode.market")

QUEUED_JOB_MS = 2000  # attestation time granted per job queued ahead at the provider


@dataclass
class _State:
    req: m.ExecutionRequest
    consumer: str
    received_ms: int
    offers: dict[str, m.Offer] = field(default_factory=dict)
    assignment: m.Assignment | None = None
    assigned: dict[int, trio.Event] = field(default_factory=dict)  # attempt -> seen
    attested: set[str] = field(default_factory=set)  # providers whose enclave a DOS signed for
    attested_event: trio.Event = field(default_factory=trio.Event)
    offered: trio.Event = field(default_factory=trio.Event)
    assigner_rank: int = 1 << 30
    finished: bool = False

    def seen(self, attempt: int) -> trio.Event:
        return self.assigned.setdefault(attempt, trio.Event())


class Coordinator:
    def __init__(self, gossip: Gossip, my_id: str, dos_peers: tuple[str, ...], inventories: Callable[[], dict[str, dict]],
                 *, grace_ms: int = 1000, attest_ms: int = 30_000, max_requests: int = 10_000,
                 on_reassign: Callable[[str], None] | None = None) -> None:
        self.gossip, self.my_id, self.dos_peers = gossip, my_id, dos_peers
        self.inventories = inventories
        self.grace_ms, self.attest_ms, self.max_requests = grace_ms, attest_ms, max_requests
        self.patience = 40  # extra bidding windows granted when a matching provider is known
        self.requests: dict[str, _State] = {}
        self.on_reassign = on_reassign  # frees the request's ACL slot for the next provider's enclave
        self._nursery: trio.Nursery | None = None
        gossip.on(m.REQUEST, self._on_request)
        gossip.on(m.OFFER, self._on_offer)
        gossip.on(m.ASSIGNMENT, self._on_assignment)
        gossip.on(m.RETRY, self._on_retry)
        gossip.on(m.DONE, self._on_done)
        gossip.on(m.FAILED, self._on_failed)
        gossip.on(m.DECLINE, self._on_decline)

    async def run(self) -> None:
        async with trio.open_nursery() as n:
            self._nursery = n
            await trio.sleep_forever()

    def note_attested(self, request_id: str, provider: str) -> None:
        """Called when this DOS peer signed an ACL entry for ``provider``'s enclave."""
        st = self.requests.get(request_id)
        if st:
            st.attested.add(provider)
            st.attested_event.set()

    # -- handlers ----------------------------------------------------------
    async def _on_request(self, msg: SignedMessage) -> None:
        try:
            req = m.ExecutionRequest.parse(m.decode(msg.payload))
        except m.MessageError as e:
            log.info("bad request dropped", extra={"sender": msg.sender, "error": str(e)})
            return
        if req.id in self.requests or len(self.requests) >= self.max_requests:
            return
        st = self.requests[req.id] = _State(req, msg.sender, now_ms())
        if self._nursery:
            self._nursery.start_soon(self._coordinate, st, 0, ())

    async def _on_offer(self, msg: SignedMessage) -> None:
        try:
            offer = m.Offer.parse(m.decode(msg.payload))
        except m.MessageError:
            return
        st = self.requests.get(offer.request_id)
        if st and not st.finished and len(st.offers) < 256:
            st.offers[msg.sender] = offer
            st.offered.set()
            st.offered = trio.Event()

    async def _on_assignment(self, msg: SignedMessage) -> None:
        if msg.sender not in self.dos_peers:
            return
        try:
            a = m.Assignment.parse(m.decode(msg.payload))
        except m.MessageError:
            return
        st = self.requests.get(a.request_id)
        if st is None:
            return
        rank = coordinator_rank(a.request_id, self.dos_peers, msg.sender)
        cur = st.assignment
        # Two DOS peers may both assign one attempt (a takeover racing a slow
        # coordinator): everyone keeps the one from the better-ranked peer.
        if cur is None or a.attempt > cur.attempt or (a.attempt == cur.attempt and rank < st.assigner_rank
                                                      and a.provider != cur.provider):
            if a.attempt > 0 and self.on_reassign and (cur is None or a.attempt > cur.attempt):
                self.on_reassign(a.request_id)
            st.assignment, st.assigner_rank = a, rank
        st.seen(a.attempt).set()

    async def _on_retry(self, msg: SignedMessage) -> None:
        try:
            r = m.Retry.parse(m.decode(msg.payload))
        except m.MessageError:
            return
        st = self.requests.get(r.request_id)
        if st is None or msg.sender != st.consumer or st.finished:
            return
        if st.assignment and st.assignment.attempt == r.attempt and st.assignment.provider == r.failed_provider:
            excluded = (*st.assignment.excluded, r.failed_provider)
            if self._nursery:
                self._nursery.start_soon(self._coordinate, st, r.attempt + 1, excluded)

    async def _on_decline(self, msg: SignedMessage) -> None:
        """The assigned provider gave up (manifest refused, enclave failed): next offer now."""
        try:
            d = m.Decline.parse(m.decode(msg.payload))
        except m.MessageError:
            return
        st = self.requests.get(d.request_id)
        a = st.assignment if st else None
        if st is None or a is None or st.finished or a.provider != msg.sender or a.attempt != d.attempt:
            return
        log.info("provider declined", extra={"request": d.request_id, "provider": msg.sender, "reason": d.reason})
        if self._nursery:
            self._nursery.start_soon(self._coordinate, st, a.attempt + 1, (*a.excluded, a.provider))

    async def _on_done(self, msg: SignedMessage) -> None:
        try:
            d = m.Done.parse(m.decode(msg.payload))
        except m.MessageError:
            return
        st = self.requests.get(d.request_id)
        if st and msg.sender == st.consumer:
            st.finished = True

    async def _on_failed(self, msg: SignedMessage) -> None:
        if msg.sender not in self.dos_peers:
            return
        try:
            f = m.Failed.parse(m.decode(msg.payload))
        except m.MessageError:
            return
        st = self.requests.get(f.request_id)
        if st:
            st.finished = True
            for ev in st.assigned.values():
                ev.set()

    # -- the decision ------------------------------------------------------
    async def _coordinate(self, st: _State, attempt: int, excluded: tuple[str, ...]) -> None:
        rank = dos_ranking(st.req.id, self.dos_peers).index(self.my_id)
        start = st.received_ms + st.req.bidding_ms if attempt == 0 else now_ms()
        act_at = start + rank * self.grace_ms
        with trio.move_on_after(max(0, act_at - now_ms()) / 1000):
            await st.seen(attempt).wait()
        if st.seen(attempt).is_set() or st.finished:
            if st.assignment and st.assignment.attempt == attempt:
                await self._watch_attestation(st, st.assignment)
            return
        provider = best_offer(st.req.id, st.req.requirements, st.offers, excluded)
        # Under a burst, offers can lag the window. If the announced inventories
        # say some provider could take the request, give them a few more windows.
        extra = 0
        while provider is None and attempt == 0 and extra < self.patience and \
                self._someone_could(st.req.requirements) and not st.finished:
            extra += 1
            with trio.move_on_after(st.req.bidding_ms / 1000):
                await st.offered.wait()
            if st.seen(attempt).is_set():  # another DOS assigned meanwhile
                return
            provider = best_offer(st.req.id, st.req.requirements, st.offers, excluded)
        if provider is None:
            reason = why_unmatched(st.req.requirements, self.inventories()) if attempt == 0 else \
                f"no other provider left after {attempt} failed attempt(s)"
            st.finished = True
            log.info("request unmatched", extra={"request": st.req.id, "reason": reason})
            await self.gossip.publish(m.FAILED, m.encode(m.Failed(st.req.id, reason)))
            return
        if attempt > 0 and self.on_reassign:
            self.on_reassign(st.req.id)
        # A provider with jobs queued ahead of this one gets time to reach it.
        queued = st.offers[provider].load if provider in st.offers else 0
        a = m.Assignment(st.req.id, provider, attempt, now_ms() + self.attest_ms + queued * QUEUED_JOB_MS, excluded)
        st.assignment, st.assigner_rank = a, rank
        st.seen(attempt).set()
        log.info("request assigned", extra={"request": st.req.id, "provider": provider, "attempt": attempt,
                                            "rank": rank, "offers": len(st.offers)})
        await self.gossip.publish(m.ASSIGNMENT, m.encode(a))
        await self._watch_attestation(st, a)

    def _someone_could(self, req: m.Requirements) -> bool:
        inv = self.inventories()
        # Knowing no provider at all (this DOS peer just started and has heard no
        # announcement yet) is not knowing that none is online: wait for offers.
        return not inv or why_unmatched(req, inv).startswith("no provider answered")

    async def _watch_attestation(self, st: _State, a: m.Assignment) -> None:
        """Reassign if the provider brings up no attested enclave in time."""
        with trio.move_on_after(max(0, a.attest_by_ms - now_ms()) / 1000):
            while a.provider not in st.attested and not st.finished:
                await st.attested_event.wait()
                st.attested_event = trio.Event()
            return
        if st.finished or (st.assignment and st.assignment.attempt > a.attempt):
            return
        log.info("provider missed its attestation deadline", extra={"request": st.req.id, "provider": a.provider})
        await self._coordinate(st, a.attempt + 1, (*a.excluded, a.provider))

