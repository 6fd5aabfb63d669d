"""A DOS peer's request ledger, and what the coordinator does with a request it
sees again: after a restart, past its deadline, too late, or after its end.

The coordinator runs for real (trio, its own tasks and timers); only the
gossip transport is a recorder, since what is checked is the coordinator's
decision on each message. The same attack on a real testnet is in
tests/adversarial/test_attacks.py (test_replayed_request_after_restart).
"""
from __future__ import annotations

import json
import os
import stat

import trio
import trio.testing

from node.dos.acl import AclEntry, AclStore
from node.identity import Identity
from node.market import messages as m
from node.market.coordinator import Coordinator
from node.market.ledger import RequestLedger
from node.p2p.envelope import SignedMessage, now_ms

DOS = Identity.generate().peer_id
CONSUMER = Identity.generate().peer_id
OTHER = Identity.generate().peer_id
PROVIDER = Identity.generate().peer_id
CID = "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e"
INVENTORY = {PROVIDER: {"cpu": 4, "memory": 8 << 30, "tees": ["sim"], "backends": ["sim"]}}


class RecordingGossip:
    """The two calls the coordinator makes on gossip: handlers in, publishes out."""

    def __init__(self) -> None:
        self.handlers: dict[str, list] = {}
        self.published: list[tuple[str, dict]] = []

    def on(self, type_: str, handler) -> None:
        self.handlers.setdefault(type_, []).append(handler)

    async def publish(self, type_: str, payload: bytes) -> str:
        self.published.append((type_, json.loads(payload)))
        return "id"

    async def deliver(self, type_: str, obj, sender: str, timestamp_ms: int | None = None) -> None:
        msg = SignedMessage(os.urandom(8).hex(), type_, sender, now_ms() if timestamp_ms is None else timestamp_ms,
                            m.encode(obj))
        for h in self.handlers.get(type_, []):
            await h(msg)

    def assignments(self) -> list[dict]:
        return [p for t, p in self.published if t == m.ASSIGNMENT]


def request(deadline_s: float = 60) -> m.ExecutionRequest:
    return m.ExecutionRequest(id=os.urandom(16).hex(), ai_cid=CID, requirements=m.Requirements(),
                              nonce=os.urandom(32).hex(), deadline_ms=now_ms() + int(deadline_s * 1000), bidding_ms=50)


def offer(req: m.ExecutionRequest) -> m.Offer:
    return m.Offer(req.id, "sim", "sim", 1, 4, 8 << 30)


def coordinator(gossip: RecordingGossip, ledger: RequestLedger | None, ended: list | None = None) -> Coordinator:
    return Coordinator(gossip, DOS, (DOS,), lambda: INVENTORY, grace_ms=100, attest_ms=60_000, late_ms=2000,
                       ledger=ledger, on_finished=(lambda rid, by: ended.append((rid, by))) if ended is not None else None)


async def run_job(g: RecordingGossip, c: Coordinator, req: m.ExecutionRequest, *, done: bool = True) -> None:
    """Request, offer, wait for the assignment, consumer done."""
    await g.deliver(m.REQUEST, req, CONSUMER)
    await g.deliver(m.OFFER, offer(req), PROVIDER)
    with trio.fail_after(5):
        while not g.assignments():
            await c.requests[req.id].seen(0).wait()
    if done:
        await g.deliver(m.DONE, m.Done(req.id, True), CONSUMER)


# -- the ledger ------------------------------------------------------------------
def test_ledger_survives_reopen_and_a_torn_line(tmp_path) -> None:
    path = tmp_path / "requests.jsonl"
    req = request()
    led = RequestLedger(path)
    led.record_request(req, CONSUMER, now_ms(), late=False)
    led.record_assignment(m.Assignment(req.id, PROVIDER, 0, now_ms() + 30_000), 0)
    led.record_end(req.id, CONSUMER)
    led.sync()
    led.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with open(path, "ab") as f:
        f.write(b'{"op":"request","req')  # a kill in the middle of an append
    again = RequestLedger(path)
    e = again.get(req.id)
    assert e is not None and e.request == req and e.consumer == CONSUMER
    assert e.assignment is not None and e.assignment.provider == PROVIDER
    assert e.ended and e.ended_by == CONSUMER
    assert b'"req\n' not in path.read_bytes() and path.read_bytes().endswith(b"\n")  # compacted on open
    again.close()


def test_ledger_forgets_after_the_replay_window_and_compacts(tmp_path) -> None:
    path = tmp_path / "requests.jsonl"
    led = RequestLedger(path, replay_window_ms=1000)
    old = request(deadline_s=0.001)
    led.record_request(old, CONSUMER, now_ms(), late=False)
    live = request(deadline_s=600)
    led.record_request(live, CONSUMER, now_ms(), late=False)
    assert led.prune(now_ms() + 5000) == 1
    assert led.get(old.id) is None and led.get(live.id) is not None
    for _ in range(300):  # many dead lines: the file is rewritten with the live ones only
        r = request(deadline_s=0.001)
        led.record_request(r, CONSUMER, now_ms(), late=False)
    led.prune(now_ms() + 5000)
    assert len(path.read_bytes().splitlines()) == 1
    led.record_end(live.id, CONSUMER)  # appends go to the new file
    led.close()
    assert RequestLedger(path, replay_window_ms=1000).get(live.id).ended


def test_ledger_refuses_nothing_it_cannot_parse(tmp_path) -> None:
    path = tmp_path / "requests.jsonl"
    path.write_bytes(b'[]\n{"op":"nope"}\n{"op":"ended","id":"x","by":"","at_ms":1}\nnot json\n\xff\xfe\n')
    led = RequestLedger(path)  # every line is junk: skipped, never a crash
    assert len(led) == 0
    led.close()


# -- the coordinator ---------------------------------------------------------------
async def test_a_restarted_dos_peer_ignores_a_replayed_finished_request(tmp_path) -> None:
    path = tmp_path / "requests.jsonl"
    req = request()
    ended: list = []
    g = RecordingGossip()
    c = coordinator(g, RequestLedger(path), ended)
    async with trio.open_nursery() as n:
        n.start_soon(c.run)
        await trio.testing.wait_all_tasks_blocked()
        await run_job(g, c, req)
        n.cancel_scope.cancel()
    assert len(g.assignments()) == 1 and ended == [(req.id, CONSUMER)]
    c.ledger.close()

    # The restart: a new coordinator on the same ledger, then the same request again.
    g2 = RecordingGossip()
    c2 = coordinator(g2, RequestLedger(path), [])
    assert c2.requests[req.id].finished
    async with trio.open_nursery() as n:
        n.start_soon(c2.run)
        await trio.testing.wait_all_tasks_blocked()
        await g2.deliver(m.REQUEST, req, CONSUMER)
        await g2.deliver(m.OFFER, offer(req), PROVIDER)
        # the old assignment replayed too: a finished request switches to nothing
        await g2.deliver(m.ASSIGNMENT, m.Assignment(req.id, OTHER, 0, now_ms() + 1000), DOS)
        await trio.sleep(0.5)  # longer than bidding + grace: an assignment would be out by now
        n.cancel_scope.cancel()
    assert g2.assignments() == []
    assert c2.requests[req.id].assignment.provider == PROVIDER


async def test_without_the_ledger_the_replay_is_coordinated_again(tmp_path) -> None:
    """The bug the ledger fixes, shown: a fresh coordinator assigns a finished request anew."""
    req = request()
    g = RecordingGossip()
    c = coordinator(g, None)
    async with trio.open_nursery() as n:
        n.start_soon(c.run)
        await trio.testing.wait_all_tasks_blocked()
        await run_job(g, c, req)
        n.cancel_scope.cancel()
    g2 = RecordingGossip()
    c2 = coordinator(g2, None)
    async with trio.open_nursery() as n:
        n.start_soon(c2.run)
        await trio.testing.wait_all_tasks_blocked()
        await run_job(g2, c2, req, done=False)
        n.cancel_scope.cancel()
    assert len(g2.assignments()) == 1


async def test_a_request_past_its_deadline_is_ignored(tmp_path) -> None:
    g = RecordingGossip()
    c = coordinator(g, RequestLedger(tmp_path / "r.jsonl"))
    req = m.ExecutionRequest(id=os.urandom(16).hex(), ai_cid=CID, requirements=m.Requirements(),
                             nonce=os.urandom(32).hex(), deadline_ms=now_ms() - 1, bidding_ms=50)
    await g.deliver(m.REQUEST, req, CONSUMER)
    assert req.id not in c.requests and len(c.ledger) == 0


async def test_a_late_request_is_followed_until_its_consumer_sends_it_again(tmp_path) -> None:
    g = RecordingGossip()
    c = coordinator(g, RequestLedger(tmp_path / "r.jsonl"))
    req = request()
    async with trio.open_nursery() as n:
        n.start_soon(c.run)
        await trio.testing.wait_all_tasks_blocked()
        # made before this peer started (it was down): followed, not assigned
        await g.deliver(m.REQUEST, req, CONSUMER, timestamp_ms=c.started_ms - 10_000)
        await g.deliver(m.OFFER, offer(req), PROVIDER)
        await trio.sleep(0.5)
        assert c.requests[req.id].following and g.assignments() == []
        # a copy from someone else changes nothing; a fresh copy from its consumer does
        await g.deliver(m.REQUEST, req, OTHER)
        await trio.sleep(0.3)
        assert g.assignments() == []
        await g.deliver(m.REQUEST, req, CONSUMER)
        with trio.fail_after(5):
            await c.requests[req.id].seen(0).wait()
        n.cancel_scope.cancel()
    assert [a["provider"] for a in g.assignments()] == [PROVIDER]


async def test_an_old_copy_is_late_too(tmp_path) -> None:
    g = RecordingGossip()
    c = coordinator(g, RequestLedger(tmp_path / "r.jsonl"))
    req = request()
    # seen for the first time long after its bidding window and every grace period
    await g.deliver(m.REQUEST, req, CONSUMER, timestamp_ms=now_ms() - 60_000)
    assert c.requests[req.id].following and c.ledger.get(req.id).late


async def test_an_end_heard_before_the_request_blocks_it_for_that_consumer_only(tmp_path) -> None:
    g = RecordingGossip()
    ended: list = []
    c = coordinator(g, RequestLedger(tmp_path / "r.jsonl"), ended)
    req = request()
    await g.deliver(m.DONE, m.Done(req.id, True), CONSUMER)  # this peer never saw the request
    assert ended == [(req.id, CONSUMER)]
    await g.deliver(m.REQUEST, req, CONSUMER)
    assert req.id not in c.requests
    # someone else's "done" for a request id is no veto on its real consumer's request
    req2 = request()
    await g.deliver(m.DONE, m.Done(req2.id, True), OTHER)
    await g.deliver(m.REQUEST, req2, CONSUMER)
    assert req2.id in c.requests and not c.requests[req2.id].finished


async def test_done_from_another_peer_does_not_end_a_known_request(tmp_path) -> None:
    g = RecordingGossip()
    ended: list = []
    c = coordinator(g, RequestLedger(tmp_path / "r.jsonl"), ended)
    req = request()
    async with trio.open_nursery() as n:
        n.start_soon(c.run)
        await trio.testing.wait_all_tasks_blocked()
        await run_job(g, c, req, done=False)
        await g.deliver(m.DONE, m.Done(req.id, True), OTHER)
        assert not c.requests[req.id].finished and ended == []
        n.cancel_scope.cancel()


# -- the ACL tombstone ---------------------------------------------------------------
def test_revoke_is_only_for_the_entrys_consumer(tmp_path) -> None:
    me = Identity.generate()
    store = AclStore(tmp_path / "acl")
    entry = AclEntry(network_id="n", request_id=os.urandom(16).hex(), ai_cid=CID, enclave_key_sha256="ab" * 32,
                     measurement="cd" * 32, consumer=CONSUMER, not_after=int(now_ms() / 1000) + 600)
    store.put(entry, "ef" * 32, entry.sign(me))
    assert not store.revoke(entry.request_id, consumer=OTHER)
    assert not store.get(entry.request_id).revoked
    assert store.revoke(entry.request_id, consumer=CONSUMER)
    assert AclStore(tmp_path / "acl").get(entry.request_id).revoked  # durable
    assert not store.release(entry.request_id)  # a tombstone is never released for another enclave


async def test_ended_requests_are_forgotten_once_past_their_replay_window(tmp_path) -> None:
    g = RecordingGossip()
    led = RequestLedger(tmp_path / "r.jsonl", replay_window_ms=0)
    c = coordinator(g, led)
    for _ in range(300):  # deadlines already passed by the time the next prune runs
        req = m.ExecutionRequest(id=os.urandom(16).hex(), ai_cid=CID, requirements=m.Requirements(),
                                 nonce=os.urandom(32).hex(), deadline_ms=now_ms() + 20, bidding_ms=50)
        await g.deliver(m.REQUEST, req, CONSUMER, timestamp_ms=c.started_ms - 60_000)  # late: followed only
        assert req.id in c.requests  # each one taken
        await trio.sleep(0.002)
    assert len(c.requests) < 256 and len(led) < 256
