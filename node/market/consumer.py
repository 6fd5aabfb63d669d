"""The consumer's side of a job: request, wait for a provider and its attested
enclave, talk TLS straight to the enclave, verify the receipt, record it.

Stages (each reported as progress and kept in the job record): requested,
assigned, attested (a DOS quorum signed the enclave's ACL entry), connected
(TLS up, pinned to the attested certificate), running, done. If the provider
dies after assignment, the consumer asks for the next-best offer
(``market.retry``) and starts over from "assigned"; if nobody can serve the
request, the coordinator's reason ends the job at once.
"""
from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import asdict
from typing import Any, Awaitable, Callable

import trio
from libp2p.peer.id import ID

from enclave import ratls_verify
from enclave.quotes.sim_pki import SimPki

from ..dos import wire
from ..dos.acl import AclEntry, AclError, AclSignature, verify_quorum
from ..dos.collateral import CollateralCache, CollateralError, quote_fmspc_ca
from ..dos.policy import is_intel_root
from ..genesis import Genesis
from ..identity import Identity
from ..p2p.envelope import SignedMessage, now_ms
from ..p2p.gossip import Gossip
from ..p2p.streams import Libp2pStream
from . import messages as m
from .election import coordinator_rank
from .jobs import JobRecord, JobStore

log = logging.getLogger("ofnode.consumer")

ENCLAVE_PROTOCOL = "/ofnode/enclave/1.0.0"
Progress = Callable[[dict[str, Any]], Awaitable[None]]


class JobFailed(Exception):
    """The job ended without a result; the message says why."""


class _Watch:
    """Everything the network says about one request, as events."""

    def __init__(self) -> None:
        self.assignments: dict[int, m.Assignment] = {}
        self.ranks: dict[int, int] = {}  # attempt -> rank of the DOS peer whose assignment we keep
        self.attested: dict[tuple[int, str], m.Attested] = {}
        self.declined: dict[tuple[int, str], str] = {}
        self.failed: str | None = None
        self.last_decline = ""
        self.changed = trio.Event()

    def poke(self) -> None:
        self.changed.set()
        self.changed = trio.Event()


class _NeedCollateral(Exception):
    def __init__(self, fmspc: str, ca: str) -> None:
        super().__init__(f"no collateral for FMSPC {fmspc} ({ca} CA)")
        self.fmspc, self.ca = fmspc, ca


class Consumer:
    def __init__(self, *, identity: Identity, genesis: Genesis, gossip: Gossip, host: Any, jobs: JobStore,
                 republish_s: float = 10.0, collateral: CollateralCache | None = None) -> None:
        self.identity, self.genesis, self.gossip, self.host, self.jobs = identity, genesis, gossip, host, jobs
        self.republish_s = republish_s
        self.collateral_cache = collateral  # SGX networks: DCAP collateral for the enclave's own quote
        self._watches: dict[str, _Watch] = {}
        self._collateral: Any = None
        gossip.on(m.ASSIGNMENT, self._on_assignment)
        gossip.on(m.FAILED, self._on_failed)
        gossip.on(m.ATTESTED, self._on_attested)
        gossip.on(m.DECLINE, self._on_decline)

    # -- gossip --------------------------------------------------------------
    async def _on_assignment(self, msg: SignedMessage) -> None:
        if msg.sender not in self.genesis.dos_peers:
            return
        try:
            a = m.Assignment.parse(m.decode(msg.payload))
        except m.MessageError:
            return
        w = self._watches.get(a.request_id)
        if w is None:
            return
        rank = coordinator_rank(a.request_id, self.genesis.dos_peers, msg.sender)
        if a.attempt not in w.assignments or rank < w.ranks[a.attempt]:
            w.assignments[a.attempt], w.ranks[a.attempt] = a, rank
            w.poke()

    async def _on_failed(self, msg: SignedMessage) -> None:
        if msg.sender not in self.genesis.dos_peers:
            return
        try:
            f = m.Failed.parse(m.decode(msg.payload))
        except m.MessageError:
            return
        w = self._watches.get(f.request_id)
        if w:
            w.failed = f.reason
            w.poke()

    async def _on_attested(self, msg: SignedMessage) -> None:
        try:
            a = m.Attested.parse(m.decode(msg.payload))
        except m.MessageError:
            return
        w = self._watches.get(a.request_id)
        if w is None or a.provider != msg.sender:
            return
        w.attested[(a.attempt, msg.sender)] = a
        w.poke()

    async def _on_decline(self, msg: SignedMessage) -> None:
        try:
            d = m.Decline.parse(m.decode(msg.payload))
        except m.MessageError:
            return
        w = self._watches.get(d.request_id)
        if w is None:
            return
        w.declined[(d.attempt, msg.sender)] = d.reason[:400]
        w.poke()

    # -- the job ------------------------------------------------------------
    async def submit(self, ai_cid: str, data: bytes, req: m.Requirements, *, progress: Progress | None = None,
                     deadline_s: float = 120.0, bidding_ms: int = 150, request_id: str | None = None) -> JobRecord:
        request = m.ExecutionRequest(id=request_id or os.urandom(16).hex(), ai_cid=ai_cid, requirements=req,
                                     nonce=os.urandom(32).hex(), deadline_ms=now_ms() + int(deadline_s * 1000),
                                     bidding_ms=bidding_ms)
        job = JobRecord(id=request.id, ai_cid=ai_cid, requirements=asdict(req),
                        input_sha256=hashlib.sha256(data).hexdigest())
        job.mark("requested")
        self.jobs.save(job)
        w = self._watches[request.id] = _Watch()

        async def stage(name: str, **extra: Any) -> None:
            job.mark(name)
            self.jobs.save(job)
            log.info("job stage", extra={"job": job.id, "stage": name, **{k: str(v) for k, v in extra.items()}})
            if progress:
                await progress({"stage": name, "job": job.id, "seconds": job.stages[name], **extra})

        try:
            with trio.fail_after(deadline_s):
                await self.gossip.publish(m.REQUEST, m.encode(request))
                await stage("requested")
                output = await self._run(request, job, w, data, stage)
            job.output_sha256 = hashlib.sha256(output).hexdigest()
            job.output_bytes = len(output)
            job.mark("done")
            self.jobs.save(job, output)
            if progress:
                await progress({"stage": "done", "job": job.id, "seconds": job.stages["done"]})
            return job
        except trio.TooSlowError:
            job.error = f"no result within {deadline_s:g} s (stage: {job.state})"
        except JobFailed as e:
            job.error = str(e)
        finally:
            self._watches.pop(request.id, None)
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                await self.gossip.publish(m.DONE, m.encode(m.Done(request.id, not job.error)))
        job.state = "failed"
        self.jobs.save(job)
        raise JobFailed(job.error)

    async def _run(self, request: m.ExecutionRequest, job: JobRecord, w: _Watch, data: bytes, stage) -> bytes:
        attempt = 0
        while True:
            a = await self._first_assignment(request, w) if attempt == 0 else \
                await self._wait(w, lambda: w.assignments.get(attempt))
            job.provider, job.attempts = a.provider, attempt + 1
            await stage("assigned", provider=a.provider, attempt=attempt)
            att = await self._wait(w, lambda: w.attested.get((attempt, a.provider))
                                   or (w.assignments.get(attempt + 1) and "reassigned")
                                   or (w.assignments[attempt].provider != a.provider and "switched")
                                   or (w.declined.get((attempt, a.provider)) and "declined"))
            if att == "switched":  # a better-ranked DOS peer's assignment for this attempt arrived
                continue
            if att == "declined":
                reason = w.declined[(attempt, a.provider)]
                log.info("provider declined; waiting for the next offer",
                         extra={"job": job.id, "provider": a.provider, "reason": reason})
                w.last_decline = f"provider {a.provider[-8:]} declined: {reason}"
                await self._wait(w, lambda: w.assignments.get(attempt + 1))
                att = "reassigned"
            if att == "reassigned":
                attempt += 1
                continue
            try:
                entry, cert_sha256 = self._check_acl(request, att)
            except JobFailed as e:
                log.warning("bad attestation announcement", extra={"job": job.id, "error": str(e)})
                await self._wait(w, lambda: w.assignments.get(attempt + 1))
                attempt += 1
                continue
            job.mrenclave = entry.measurement
            await stage("attested", measurement=entry.measurement[:16])
            try:
                return await self._talk(request, job, a.provider, entry, cert_sha256, data, stage)
            except ratls_verify.RaTlsError as e:  # the enclave, its certificate or its answer is not right
                raise JobFailed(f"enclave check failed: {e}") from None
            except (trio.BrokenResourceError, EOFError, ConnectionError, wire.WireError, OSError) as e:
                log.info("provider lost mid-job; asking for the next offer",
                         extra={"job": job.id, "provider": a.provider, "error": str(e)[:200]})
                await self.gossip.publish(m.RETRY, m.encode(m.Retry(request.id, a.provider, attempt)))
                attempt += 1

    async def _first_assignment(self, request: m.ExecutionRequest, w: _Watch) -> m.Assignment:
        """Wait for attempt 0's assignment, sending the request again while none comes.

        A DOS peer that missed the request (down, or its gossip mesh not yet
        healed) only follows a copy that reaches it late; a fresh copy from its
        consumer lets it act."""
        while True:
            with trio.move_on_after(self.republish_s):
                return await self._wait(w, lambda: w.assignments.get(0))
            log.info("no assignment yet; sending the request again", extra={"job": request.id})
            await self.gossip.publish(m.REQUEST, m.encode(request))

    async def _wait(self, w: _Watch, get: Callable[[], Any]) -> Any:
        while True:
            if w.failed:
                raise JobFailed(w.failed + (f" (last: {w.last_decline})" if w.last_decline else ""))
            v = get()
            if v:
                return v
            await w.changed.wait()

    def _check_acl(self, request: m.ExecutionRequest, att: m.Attested) -> tuple[AclEntry, str]:
        try:
            entry = AclEntry.from_dict(att.entry)
            sigs = [AclSignature.from_dict(s) for s in att.signatures]
            cert_sha256 = att.cert_sha256
        except AclError as e:
            raise JobFailed(f"malformed attestation: {e}") from None
        if (entry.request_id, entry.ai_cid, entry.consumer) != (request.id, request.ai_cid, self.identity.peer_id):
            raise JobFailed("the ACL entry is for another request, AI or consumer")
        ok, reason = verify_quorum(entry, sigs, self.genesis, time.time())
        if not ok:
            raise JobFailed(f"ACL entry refused: {reason}")
        return entry, cert_sha256

    def _verify_args(self, entry: AclEntry, cert_sha256: str, nonce: bytes) -> dict[str, Any]:
        policy = self.genesis.policy
        if self.genesis.sim_root_key:
            if self._collateral is None:
                # Sim networks: the genesis' sim root makes the same collateral the DOS uses.
                pki = SimPki.load(self.genesis.sim_root_key.encode(), policy.sim_root_ca)
                self._collateral = pki.collateral()
            trust: dict[str, Any] = {"root_ca_der": policy.sim_root_ca, "collateral": self._collateral}
        else:
            trust = {"collateral_for": self._collateral_for}
        return {"expected_mrenclave": bytes.fromhex(entry.measurement), "nonce": nonce, **trust,
                "expected_cert_sha256": bytes.fromhex(cert_sha256),
                # the network's policy, as the DOS peers applied it (advisories are theirs to weigh)
                "accepted_tcb_statuses": tuple(policy.tcb_statuses) + tuple(policy.tcb_statuses_with_advisories),
                "allow_debug": policy.allow_debug}

    def _collateral_for(self, quote: bytes) -> tuple[Any, bytes]:
        """SGX networks: the quote's collateral from this node's cache, rooted where the policy allows."""
        if self.collateral_cache is None:
            raise JobFailed("this node has no DCAP collateral cache to check the enclave's quote")
        try:
            c = self.collateral_cache.for_quote(quote)
        except CollateralError:
            raise _NeedCollateral(*quote_fmspc_ca(quote)) from None
        if self.collateral_cache.pccs_url and 0 < c.next_update <= time.time():
            raise _NeedCollateral(c.fmspc, c.ca)  # expired: fetch a fresh copy (only DOS peers refresh in the background)
        if not is_intel_root(c.root_der) and c.root_der != self.genesis.policy.sim_root_ca:
            raise JobFailed(f"the collateral for FMSPC {c.fmspc} roots in a CA the network's policy does not name")
        return c.obj, c.root_der

    async def _talk(self, request: m.ExecutionRequest, job: JobRecord, provider: str, entry: AclEntry,
                    cert_sha256: str, data: bytes, stage) -> bytes:
        try:
            return await self._talk_once(request, job, provider, entry, cert_sha256, data, stage)
        except _NeedCollateral as need:
            # The enclave's platform is new to this node: fetch its collateral once and connect again.
            cache = self.collateral_cache
            if cache is None or not cache.pccs_url:
                raise JobFailed(f"no DCAP collateral for the enclave's platform (FMSPC {need.fmspc}, {need.ca} CA) "
                                f"on this node: set dos.pccs_url, or import it (dos.collateral_file)") from None
            log.info("fetching DCAP collateral for the enclave's platform", extra={"fmspc": need.fmspc, "ca": need.ca})
            try:
                with trio.fail_after(60):
                    await cache.refresh(need.ca, need.fmspc)
            except (CollateralError, OSError, trio.TooSlowError) as e:
                raise JobFailed(f"could not fetch DCAP collateral for FMSPC {need.fmspc}: {e}") from None
            return await self._talk_once(request, job, provider, entry, cert_sha256, data, stage)

    async def _talk_once(self, request: m.ExecutionRequest, job: JobRecord, provider: str, entry: AclEntry,
                         cert_sha256: str, data: bytes, stage) -> bytes:
        try:
            raw = await self.host.new_stream(ID.from_base58(provider), [ENCLAVE_PROTOCOL])
        except Exception as e:  # py-libp2p raises SwarmException and others: the provider is unreachable
            raise ConnectionError(f"cannot open a stream to the provider: {type(e).__name__}: {e}") from None
        await wire.write_message(raw, {"request_id": request.id}, 4096)
        hello = await wire.read_message(raw, 4096)
        if hello.get("ok") is not True:
            raise JobFailed(f"provider refused the connection: {str(hello.get('error'))[:300]}")
        tls, evidence = await ratls_verify.open_trio_client(
            Libp2pStream(raw), **self._verify_args(entry, cert_sha256, bytes.fromhex(request.nonce)))
        if hashlib.sha256(evidence.spki_der).hexdigest() != entry.enclave_key_sha256:
            raise JobFailed("the enclave's TLS key is not the one the DOS quorum attested")
        await stage("connected")
        await stage("running")
        resp = await ratls_verify.trio_request(tls, data)
        if resp.status != "ok":
            raise JobFailed(f"enclave error: {resp.error}")
        job.receipt = ratls_verify.verify_receipt(resp, evidence, data, request_id=request.id)
        with trio.move_on_after(2):
            await tls.aclose()
        return resp.output
