"""The DOS side of the market: collect offers, pick a provider, fail fast.

Every DOS peer follows every request, so any of them can take over: rank 0 of
the rendezvous ranking assigns when the bidding window closes; rank r acts
only if no assignment for that attempt has appeared ``r`` grace periods
later. A provider that has not brought up an attested enclave by its
``attest_by`` deadline, or that the consumer reports dead (``market.retry``),
loses the job to the next-best offer (a new attempt). A request nobody can
match fails at the end of the bidding window, with the reason.

Replays: a request envelope stays acceptable for ``gossip.max_age``, so the
same request can arrive again (after a restart, or from an attacker). Every
request, assignment and end is kept in a :class:`~.ledger.RequestLedger`, so a
restarted peer resumes its view instead of coordinating a finished request
afresh; a request past its deadline is ignored; and a request first seen after
its bidding window (this peer was down or cut off) is followed, not assigned,
unless its consumer sends it again (it republishes when no assignment comes).
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
from .ledger import RequestLedger

log = logging.getLogger("ofnode.market")

QUEUED_JOB_MS = 2000  # attestation time granted per job queued ahead at the provider
START_SLACK_MS = 2000  # clock skew tolerated when comparing a request's time with this peer's start


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
    following: bool = False  # seen too late (or restored): this peer does not assign attempt 0

    def seen(self, attempt: int) -> trio.Event:
        return self.assigned.setdefault(attempt, trio.Event())


class Coordinator:
    def __init__(self, gossip: Gossip, my_id: str, dos_peers: tuple[str, ...], inventories: Callable[[], dict[str, dict]],
                 *, grace_ms: int = 1000, attest_ms: int = 30_000, max_requests: int = 10_000,
                 late_ms: int = 20_000, ledger: RequestLedger | None = None,
                 on_reassign: Callable[[str], None] | None = None,
                 on_finished: Callable[[str, str], None] | None = None) -> None:
        self.gossip, self.my_id, self.dos_peers = gossip, my_id, dos_peers
        self.inventories = inventories
        self.grace_ms, self.attest_ms, self.max_requests = grace_ms, attest_ms, max_requests
        self.late_ms = late_ms  # beyond the bidding window and every rank's grace period
        # How long past the bidding window offers may still come when a matching
        # provider is known: under a burst on a busy machine offers lag by seconds.
        self.offer_wait_ms = 15_000
        self.requests: dict[str, _State] = {}
        self.ledger = ledger
        self.on_reassign = on_reassign  # frees the request's ACL slot for the next provider's enclave
        self.on_finished = on_finished  # (request id, ending peer or "" for a DOS failure): no more ACL entries
        self._nursery: trio.Nursery | None = None
        self.started_ms = now_ms()
        self._restore()
        gossip.on(m.REQUEST, self._on_request)
        gossip.on(m.OFFER, self._on_offer)
        gossip.on(m.ASSIGNMENT, self._on_assignment)
        gossip.on(m.RETRY, self._on_retry)
        gossip.on(m.DONE, self._on_done)
        gossip.on(m.FAILED, self._on_failed)
        gossip.on(m.DECLINE, self._on_decline)

    def _restore(self) -> None:
        """Resume the view this peer had before a restart (followed: the others went on meanwhile)."""
        if self.ledger is None:
            return
        for e in self.ledger.entries():
            if e.request is None:
                continue
            st = _State(e.request, e.consumer, e.received_ms, assignment=e.assignment, assigner_rank=e.assigner_rank,
                        finished=e.ended_by in ("", e.consumer), following=True)
            if e.assignment is not None:
                st.seen(e.assignment.attempt).set()
            self.requests[e.request_id] = st
        if self.requests:
            log.info("market requests restored", extra={"requests": len(self.requests),
                                                        "open": sum(not s.finished for s in self.requests.values())})

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
        now = now_ms()
        # Late: made while this peer was down (it missed the bidding and any
        # assignment), or first seen long after its bidding window.
        late = msg.timestamp_ms < self.started_ms - START_SLACK_MS or \
            now - msg.timestamp_ms > req.bidding_ms + len(self.dos_peers) * self.grace_ms + self.late_ms
        st = self.requests.get(req.id)
        if st is not None:
            # Its consumer sent it again because no assignment came (a peer that
            # only followed it may act now); any other copy is a duplicate.
            if st.following and st.assignment is None and not st.finished and not late \
                    and msg.sender == st.consumer and now < req.deadline_ms and req == st.req:
                st.following, st.received_ms = False, now
                log.info("request sent again by its consumer; coordinating", extra={"request": req.id})
                self._start(st)
            elif st.finished and msg.sender == st.consumer:
                log.info("request that already ended ignored", extra={"request": req.id})
            return
        if now >= req.deadline_ms:
            log.info("request past its deadline ignored", extra={"request": req.id, "sender": msg.sender})
            return
        ended = self.ledger.get(req.id) if self.ledger else None
        if ended is not None and ended.ended_by in ("", msg.sender):
            log.info("request that already ended ignored", extra={"request": req.id})
            return
        if len(self.requests) % 256 == 255 or len(self.requests) >= self.max_requests:
            self._prune(now)  # every 256 requests: memory and the ledger file stay bounded by what is live
            if len(self.requests) >= self.max_requests:
                return
        st = self.requests[req.id] = _State(req, msg.sender, now, following=late)
        if self.ledger is not None:
            self.ledger.record_request(req, msg.sender, now, late=late)
        if late:
            log.info("request first seen after its bidding window; following, not assigning",
                     extra={"request": req.id, "age_ms": now - msg.timestamp_ms})
            return
        self._start(st)

    def _start(self, st: _State) -> None:
        if self._nursery:
            self._nursery.start_soon(self._coordinate, st, 0, ())

    def _prune(self, now: int) -> None:
        """Forget requests whose deadline (and replay window) has passed."""
        keep = self.ledger.replay_window_ms if self.ledger else 130_000
        for rid in [rid for rid, st in self.requests.items() if st.req.deadline_ms + keep <= now]:
            del self.requests[rid]
        if self.ledger is not None:
            self.ledger.prune(now)

    async def _end(self, st: _State | None, request_id: str, by: str) -> None:
        """Record that a request ended (durably: a replay after a restart must find it ended)."""
        if st is not None:
            st.finished = True
            for ev in st.assigned.values():
                ev.set()
        if self.ledger is not None:
            self.ledger.record_end(request_id, by)
            await trio.to_thread.run_sync(self.ledger.sync)
        if self.on_finished is not None:
            try:
                self.on_finished(request_id, by)
            except Exception:
                log.exception("on_finished callback failed", extra={"request": request_id})

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
        if st is None or st.finished:
            return  # an assignment for an ended request is stale (a replay): nothing to switch to
        rank = coordinator_rank(a.request_id, self.dos_peers, msg.sender)
        cur = st.assignment
        # Two DOS peers may both assign one attempt (a takeover racing a slow
        # coordinator): everyone keeps the one from the better-ranked peer.
        if cur is None or a.attempt > cur.attempt or (a.attempt == cur.attempt and rank < st.assigner_rank
                                                      and a.provider != cur.provider):
            if a.attempt > 0 and self.on_reassign and (cur is None or a.attempt > cur.attempt):
                self.on_reassign(a.request_id)
            st.assignment, st.assigner_rank = a, rank
            if self.ledger is not None:
                self.ledger.record_assignment(a, rank)
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
        if st is None:
            # Unknown here (this peer was down): remember the end, tied to its
            # sender, so the request cannot start later from a replay of it.
            await self._end(None, d.request_id, msg.sender)
        elif msg.sender == st.consumer and not st.finished:
            await self._end(st, d.request_id, msg.sender)

    async def _on_failed(self, msg: SignedMessage) -> None:
        if msg.sender not in self.dos_peers:
            return
        try:
            f = m.Failed.parse(m.decode(msg.payload))
        except m.MessageError:
            return
        st = self.requests.get(f.request_id)
        if st is None or not st.finished:
            await self._end(st, f.request_id, "")

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
        # say some provider could take the request, wait for them a while longer.
        give_up = now_ms() + self.offer_wait_ms
        while provider is None and attempt == 0 and now_ms() < give_up and \
                self._someone_could(st.req.requirements) and not st.finished:
            with trio.move_on_after(max(0, give_up - now_ms()) / 1000):
                await st.offered.wait()
            if st.seen(attempt).is_set():  # another DOS assigned meanwhile
                return
            provider = best_offer(st.req.id, st.req.requirements, st.offers, excluded)
        if provider is None:
            reason = why_unmatched(st.req.requirements, self.inventories()) if attempt == 0 else \
                f"no other provider left after {attempt} failed attempt(s)"
            await self._end(st, st.req.id, "")
            log.info("request unmatched", extra={"request": st.req.id, "reason": reason})
            await self.gossip.publish(m.FAILED, m.encode(m.Failed(st.req.id, reason)))
            return
        if attempt > 0 and self.on_reassign:
            self.on_reassign(st.req.id)
        # A provider with jobs queued ahead of this one gets time to reach it.
        queued = st.offers[provider].load if provider in st.offers else 0
        a = m.Assignment(st.req.id, provider, attempt, now_ms() + self.attest_ms + queued * QUEUED_JOB_MS, excluded)
        st.assignment, st.assigner_rank = a, rank
        if self.ledger is not None:
            self.ledger.record_assignment(a, rank)
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

