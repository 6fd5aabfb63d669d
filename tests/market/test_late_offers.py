"""Under a burst on a busy machine offers can lag the bidding window by seconds: when the
announced inventories say a provider could take the request, the coordinator waits for its
offer (``offer_wait_ms``) instead of failing "no provider answered"."""
from __future__ import annotations

import trio
import trio.testing

from node.market import messages as m

from .test_replay import PROVIDER, RecordingGossip, coordinator, offer, request, CONSUMER


async def test_an_offer_seconds_after_the_window_still_wins() -> None:
    g = RecordingGossip()
    c = coordinator(g, None)  # bidding window 50 ms: 3 s is 60 windows late
    req = request()
    async with trio.open_nursery() as n:
        n.start_soon(c.run)
        await trio.testing.wait_all_tasks_blocked()
        await g.deliver(m.REQUEST, req, CONSUMER)
        await trio.sleep(3)  # the provider's offer is stuck behind a burst
        assert not [t for t, _ in g.published if t == m.FAILED]
        await g.deliver(m.OFFER, offer(req), PROVIDER)
        with trio.fail_after(5):
            await c.requests[req.id].seen(0).wait()
        n.cancel_scope.cancel()
    assert [a["provider"] for a in g.assignments()] == [PROVIDER]


async def test_but_not_forever() -> None:
    g = RecordingGossip()
    c = coordinator(g, None)
    c.offer_wait_ms = 300
    req = request()
    async with trio.open_nursery() as n:
        n.start_soon(c.run)
        await trio.testing.wait_all_tasks_blocked()
        await g.deliver(m.REQUEST, req, CONSUMER)
        with trio.fail_after(5):
            while not [t for t, _ in g.published if t == m.FAILED]:
                await trio.sleep(0.05)
        n.cancel_scope.cancel()
    [(_, failed)] = [(t, p) for t, p in g.published if t == m.FAILED]
    assert failed["reason"].startswith("no provider answered")
