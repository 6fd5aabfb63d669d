"""ofnode_provider_jobs_total counts every assigned job exactly once, by outcome
(docs/metrics.md): a job given back is `declined`, not also `error`."""
from __future__ import annotations

import os
from typing import Any

import pytest
import trio

from node.market import messages as m
from node.metrics import Metrics
from node.p2p.envelope import now_ms
from node.provider.service import ActiveJob, ProviderService


class _Gossip:
    def __init__(self) -> None:
        self.published: list[tuple[str, bytes]] = []

    async def publish(self, type_: str, payload: bytes) -> str:
        self.published.append((type_, payload))
        return ""


def _service(inner: Any) -> ProviderService:
    """A provider with only what _run_job touches (no host, store or backend)."""
    svc = ProviderService.__new__(ProviderService)
    svc.metrics = Metrics()
    svc.metrics.declare("ofnode_provider_jobs_total", "counter", "")
    svc.gossip = _Gossip()  # type: ignore[assignment]
    svc.slots = trio.CapacityLimiter(1)
    svc.jobs = {}
    svc._run_job_inner = inner.__get__(svc)  # type: ignore[method-assign]
    return svc


def _job() -> ActiveJob:
    req = m.ExecutionRequest(id=os.urandom(16).hex(), ai_cid="bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku",
                             requirements=m.Requirements(), nonce=os.urandom(32).hex(),
                             deadline_ms=now_ms() + 60_000, bidding_ms=150)
    return ActiveJob(req, consumer="c", attempt=0)


async def _declines(self: ProviderService, job: ActiveJob) -> None:
    await self._decline(job, "manifest: too big")


async def _fails_before_attestation(self: ProviderService, job: ActiveJob) -> None:
    raise RuntimeError("enclave did not start")


async def _fails_after_attestation(self: ProviderService, job: ActiveJob) -> None:
    job.ready.set()
    raise RuntimeError("consumer stream broke")


async def _succeeds(self: ProviderService, job: ActiveJob) -> None:
    job.ready.set()


@pytest.mark.parametrize("inner, outcome, declines", [
    (_declines, "declined", 1),
    (_fails_before_attestation, "declined", 1),  # given back so the coordinator reassigns at once
    (_fails_after_attestation, "error", 0),
    (_succeeds, "ok", 0),
])
async def test_each_assigned_job_is_counted_once(inner, outcome, declines) -> None:
    svc = _service(inner)
    job = _job()
    svc.jobs[job.req.id] = job
    await svc._run_job(job)
    counts = svc.metrics.by_label("ofnode_provider_jobs_total", "outcome")
    assert counts == {outcome: 1.0}
    assert sum(1 for t, _ in svc.gossip.published if t == m.DECLINE) == declines  # type: ignore[attr-defined]
    assert job.req.id not in svc.jobs
