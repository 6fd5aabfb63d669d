"""The provider role: offer, run assigned jobs in enclaves, relay consumers.

For each assignment: fetch the AI object (Bitswap, from whoever provides it),
apply the manifest rules (a questionable manifest is declined with its rule),
start the enclave through the configured backend, forward its evidence to the
DOS peers for a quorum ACL entry, publish that entry for the consumer, pass
the enclave's key-share requests to the secrets peers, and splice consumer
streams (``/ofnode/enclave/1.0.0``) onto the enclave. The provider handles
only ciphertext: TLS runs end to end, shares are HPKE-sealed to the enclave.
"""
from __future__ import annotations

import base64
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from enclave import host as ehost
from enclave.backends import get_backend
from enclave.backends.inventory import detect
from enclave.cid import Cid
from enclave.manifest_rules import Limits, check_manifest
from enclave.quotes.sim_pki import SimPki
from enclave.quotes.sim_qe import SimQuotingEnclave

from ..dos import wire
from ..dos.service import AclQuorumError, Evidence, request_acl
from ..fsutil import atomic_write
from ..genesis import Genesis
from ..identity import Identity
from ..market import messages as m
from ..market.election import coordinator_rank, matches
from ..metrics import Metrics
from ..p2p.addrs import dialable
from ..p2p.envelope import SignedMessage, now_ms
from ..p2p.gossip import Gossip
from ..p2p.streams import Libp2pStream
from ..secrets.service import request_shares
from ..store.ai_publish import read_manifest
from ..store.blockstore import BlockNotFound, CorruptBlock
from ..store.fetch import FetchError
from ..store.service import StoreService
from .relay import splice

log = logging.getLogger("ofnode.provider")

ENCLAVE_PROTOCOL = "/ofnode/enclave/1.0.0"
FETCH_TIMEOUT = 20.0
RUNTIME_MEMORY = 384 << 20  # well inside the coordinator's attestation deadline


@dataclass
class ActiveJob:
    req: m.ExecutionRequest
    consumer: str
    attempt: int
    session: ehost.EnclaveSession | None = None
    ready: trio.Event = field(default_factory=trio.Event)
    done: trio.Event = field(default_factory=trio.Event)
    error: str = ""
    rank: int = 0  # rank of the DOS peer that assigned it
    cancel: trio.CancelScope = field(default_factory=trio.CancelScope)
    declined: bool = False  # given back with market.decline


class ProviderService:
    def __init__(self, *, identity: Identity, genesis: Genesis, gossip: Gossip, host: Any, store: StoreService,
                 exchange: Any, metrics: Metrics, backend: str = "sim", max_enclaves: int = 0, price: int = 1,
                 relay_capture: Path | None = None) -> None:
        self.identity, self.genesis, self.gossip, self.host = identity, genesis, gossip, host
        self.store, self.exchange, self.metrics = store, exchange, metrics
        self.backend_name, self.price = backend, price
        self.inventory = detect()
        self.capacity = max_enclaves or max(1, self.inventory.cores)
        # Enclaves run ``capacity`` at a time; assigned jobs beyond that wait
        # their turn (offers carry the load so the coordinator spreads work).
        self.slots = trio.CapacityLimiter(self.capacity)
        self.max_queue = self.capacity * 32
        self.requests: dict[str, tuple[m.ExecutionRequest, str]] = {}
        self.jobs: dict[str, ActiveJob] = {}
        self._best_rank: dict[tuple[str, int], int] = {}
        self._ended: dict[str, None] = {}  # requests their consumer said done (insertion-ordered, bounded)
        self.relay_capture = relay_capture
        self._qe: SimQuotingEnclave | None = None
        self._nursery: trio.Nursery | None = None
        metrics.declare("ofnode_provider_declined_total", "counter", "Requests this provider did not offer for, by reason.")
        metrics.declare("ofnode_provider_jobs_total", "counter", "Assigned jobs, by outcome.")
        gossip.on(m.REQUEST, self._on_request)
        gossip.on(m.ASSIGNMENT, self._on_assignment)
        gossip.on(m.DONE, self._on_done)

    # -- what we offer -------------------------------------------------------
    def tees(self) -> list[str]:
        out = []
        # Simulated attestation runs in whichever non-SGX backend is configured (sim or docker).
        if self.backend_name in ("sim", "docker") and self.inventory.backend_ok(self.backend_name) \
                and self.genesis.sim_root_key:
            out.append("sim")
        # SGX devices alone are not enough: Gramine, AESM and the DCAP quote provider too.
        if self.inventory.backend_ok("gramine-sgx"):
            out.append("sgx")
        return out

    def announcement(self) -> dict[str, Any]:
        return {"cpu": self.inventory.cores, "memory": self.inventory.memory_available_bytes, "tees": self.tees(),
                "backends": self.offered_backends(), "capacity": self.capacity}

    def offered_backends(self) -> list[str]:
        """The backends jobs here actually run in (a host may have more that work)."""
        return [self.backend_for(tee) for tee in self.tees()]

    def backend_for(self, tee: str) -> str:
        return self.backend_name if tee == "sim" else "gramine-sgx"

    def _sim_qe(self) -> SimQuotingEnclave:
        if self._qe is None:
            pki = SimPki.load(self.genesis.sim_root_key.encode(), self.genesis.policy.sim_root_ca)
            self._qe = SimQuotingEnclave(pki, seed=self.identity.seed)
        return self._qe

    # -- lifecycle -----------------------------------------------------------
    async def run(self) -> None:
        await self._sweep_backend()
        self.host.set_stream_handler(ENCLAVE_PROTOCOL, self._on_consumer_stream)
        async with trio.open_nursery() as n:
            self._nursery = n
            await trio.sleep_forever()

    async def _sweep_backend(self) -> None:
        """Remove enclaves (containers, cgroups) that a previous run of this node left when it died."""
        if not self.inventory.backend_ok(self.backend_name):
            return
        try:
            with trio.fail_after(60):
                n = await trio.to_thread.run_sync(get_backend(self.backend_name).sweep, abandon_on_cancel=True)
        except Exception as e:  # noqa: BLE001 - a failed sweep must not stop the node; it is retried next start
            log.warning("could not sweep leftover %s enclaves: %s", self.backend_name, e)
            return
        if n:
            log.info("removed %d enclave(s) left over by a node that died", n)

    async def _on_request(self, msg: SignedMessage) -> None:
        try:
            req = m.ExecutionRequest.parse(m.decode(msg.payload))
        except m.MessageError:
            return
        if now_ms() >= req.deadline_ms or req.id in self._ended:
            self.metrics.inc("ofnode_provider_declined_total", reason="ended")
            return  # a late copy or a replay: its consumer has given up or is done
        self.requests[req.id] = (req, msg.sender)
        if len(self.requests) > 10_000:
            self.requests.pop(next(iter(self.requests)))
        tee = req.requirements.tee
        offer = m.Offer(req.id, self.backend_for(tee), tee, self.price, self.inventory.cores,
                        self.inventory.memory_available_bytes, tuple(dialable(self.host.get_addrs())),
                        load=len(self.jobs))
        reason = None
        if msg.sender == self.identity.peer_id:
            # A node does not run its own jobs: it cannot dial itself, and a
            # consumer gains nothing from attesting its own machine.
            reason = "own_request"
        elif tee not in self.tees():
            reason = f"no_{tee}"
        elif len(self.jobs) >= self.max_queue:
            reason = "busy"
        elif not matches(req.requirements, offer):
            reason = "too_small" if req.requirements.max_price == 0 or req.requirements.max_price >= self.price else "price"
        if reason:
            self.metrics.inc("ofnode_provider_declined_total", reason=reason)
            return
        await self.gossip.publish(m.OFFER, m.encode(offer))

    async def _on_assignment(self, msg: SignedMessage) -> None:
        if msg.sender not in self.genesis.dos_peers:
            return
        try:
            a = m.Assignment.parse(m.decode(msg.payload))
        except m.MessageError:
            return
        rank = coordinator_rank(a.request_id, self.genesis.dos_peers, msg.sender)
        key = (a.request_id, a.attempt)
        if rank > self._best_rank.get(key, rank):
            return  # a better-ranked DOS peer already decided this attempt
        self._best_rank[key] = rank
        if len(self._best_rank) > 20_000:
            self._best_rank.pop(next(iter(self._best_rank)))
        existing = self.jobs.get(a.request_id)
        if existing and a.attempt == existing.attempt and rank < existing.rank and a.provider != self.identity.peer_id:
            existing.error = "a better-ranked DOS peer gave this attempt to another provider"
            existing.cancel.cancel()
            return
        if a.provider != self.identity.peer_id or a.request_id in self._ended:
            return
        if a.request_id not in self.requests:
            # Assigned a request this provider does not know: it restarted after offering. Give it
            # back now, or the coordinator waits the whole attestation deadline (market.attest_s).
            log.info("assigned an unknown request; declined", extra={"request": a.request_id})
            await self.gossip.publish(m.DECLINE, m.encode(m.Decline(
                a.request_id, a.attempt, "this provider does not know the request (restarted since its offer)")))
            return
        if existing and existing.attempt >= a.attempt:
            return
        req, consumer = self.requests[a.request_id]
        job = self.jobs[a.request_id] = ActiveJob(req, consumer, a.attempt, rank=rank)
        assert self._nursery is not None
        self._nursery.start_soon(self._run_job, job)

    async def _on_done(self, msg: SignedMessage) -> None:
        try:
            d = m.Done.parse(m.decode(msg.payload))
        except m.MessageError:
            return
        known = self.requests.get(d.request_id)
        if known and msg.sender == known[1]:
            self._ended[d.request_id] = None
            if len(self._ended) > 10_000:
                self._ended.pop(next(iter(self._ended)))
        job = self.jobs.get(d.request_id)
        if job and msg.sender == job.consumer:
            job.done.set()

    # -- one job -------------------------------------------------------------
    async def _decline(self, job: ActiveJob, reason: str) -> None:
        job.error, job.declined = reason, True
        log.info("job declined", extra={"request": job.req.id, "reason": reason})
        await self.gossip.publish(m.DECLINE, m.encode(m.Decline(job.req.id, job.attempt, reason[:400])))

    async def _run_job(self, job: ActiveJob) -> None:
        req = job.req
        t0 = time.monotonic()
        try:
            with job.cancel, trio.fail_after(max(5.0, (req.deadline_ms - now_ms()) / 1000)):
                async with self.slots:
                    await self._run_job_inner(job)
        except trio.TooSlowError:
            job.error = "deadline passed"
        except Exception as e:  # one failed job must not take the provider down
            log.exception("job failed", extra={"request": req.id})
            if not job.ready.is_set():  # before attestation: let the coordinator reassign now
                with trio.move_on_after(2):
                    await self._decline(job, f"{type(e).__name__}: {e}")
            job.error = f"{type(e).__name__}: {e}"
        finally:
            job.done.set()
            job.ready.set()
            self.jobs.pop(req.id, None)
            # Each assigned job is counted once: given back, failed, or done.
            outcome = "declined" if job.declined else "error" if job.error else "ok"
            self.metrics.inc("ofnode_provider_jobs_total", outcome=outcome)
            log.info("job ended", extra={"request": req.id, "seconds": round(time.monotonic() - t0, 3),
                                         "error": job.error})

    async def _run_job_inner(self, job: ActiveJob) -> None:
        req = job.req
        root = Cid.decode(req.ai_cid)
        blocks = self.store.blocks
        try:
            raw, manifest = await trio.to_thread.run_sync(read_manifest, root, blocks)
            local = True
        except (BlockNotFound, CorruptBlock):  # not (all) here yet: fetch it
            local = False
        except ValueError as e:  # not an AI object, or a bad manifest: nothing to run
            await self._decline(job, f"not a valid AI: {e}")
            return
        if not local:
            try:
                with trio.fail_after(FETCH_TIMEOUT):
                    await self.exchange.fetch_dag(root)
            except trio.TooSlowError:
                await self._decline(job, f"could not fetch the AI within {FETCH_TIMEOUT:g} s")
                return
            except FetchError as e:
                await self._decline(job, f"could not fetch the AI: {e}")
                return
            raw, manifest = await trio.to_thread.run_sync(read_manifest, root, blocks)
        refusals = check_manifest(
            manifest,
            Limits(cpu=self.inventory.cores, memory=self.inventory.memory_available_bytes),
            Limits(cpu=req.requirements.cpu, memory=req.requirements.memory),
        )
        if refusals:
            await self._decline(job, "; ".join(f"{r.rule}: {r.reason}" for r in refusals))
            return
        # sim tee: the sim QE quotes for the host-measured MRENCLAVE; sgx: the
        # runtime quotes itself through Gramine's /dev/attestation.
        sim = req.requirements.tee == "sim"
        quote_fn = ehost.sim_quote_fn(self._sim_qe(), raw) if sim else None
        backend = get_backend(self.backend_for(req.requirements.tee))
        # The runtime itself (Python, cryptography, TLS) needs room beside the AI.
        launcher = ehost.backend_launcher(backend, memory_bytes=manifest.resources.memory + RUNTIME_MEMORY,
                                          threads=manifest.resources.cpu)

        async def ai_chunks():
            from ..store.unixfs import iter_file_blocks

            it = iter_file_blocks(root, blocks.get)
            while True:
                chunk = await trio.to_thread.run_sync(next, it, None)
                if chunk is None:
                    return
                yield chunk

        ejob = ehost.Job(req.id, bytes.fromhex(req.nonce), req.ai_cid, raw.decode(), max_requests=1,
                         secrets_peers=list(self.genesis.secrets_peers), key_source="secret-store")

        async def share_fn(request: dict[str, Any]) -> list[dict[str, Any]]:
            got = await request_shares(self.host, self.genesis, request)
            return list(got.answers.values())

        async with ehost.open_enclave(ejob, quote_fn=quote_fn, ai=ai_chunks, launcher=launcher,
                                      quote_source="sim-host" if sim else "dev-attestation",
                                      share_fn=share_fn) as session:
            job.session = session
            ev = session.evidence
            assert ev is not None
            spki = _cert_spki(ev.cert_der)
            evidence = Evidence(request_id=req.id, ai_cid=req.ai_cid, consumer=job.consumer, nonce=bytes.fromhex(req.nonce),
                                quote=ev.quote, enclave_key_spki=spki, not_after=int(time.time()) + 600,
                                manifest=raw)
            grant = None
            for delay in (0.25, 0.5, 1.0, 0):
                try:
                    grant = await request_acl(self.host, self.genesis, evidence)
                    break
                except AclQuorumError as e:
                    # Gossip is eventually consistent: a DOS peer may not have
                    # seen this (re)assignment yet. Retry briefly on exactly that.
                    lagging = any("assigned" in r or "live ACL entry" in r or "unknown request" in r
                                  for r in e.refusals.values())
                    if not lagging or not delay:
                        await self._decline(job, str(e))
                        return
                    await trio.sleep(delay)
            assert grant is not None
            session.grant_acl(grant.to_dict())
            await self.gossip.publish(m.ATTESTED, json.dumps({
                "request_id": req.id, "attempt": job.attempt, "provider": self.identity.peer_id,
                "cert_sha256": hashlib.sha256(ev.cert_der).hexdigest(), **grant.to_dict(),
            }).encode())
            job.ready.set()
            with trio.move_on_after(max(1.0, (req.deadline_ms - now_ms()) / 1000)):
                await job.done.wait()
        if session.exit is not None and getattr(session.exit, "reason", "ok") not in ("ok", "killed"):
            log.warning("enclave ended badly", extra={"request": req.id, "error": session.error or "",
                                                      "exit": str(session.exit)[:500]})

    # -- consumer streams ----------------------------------------------------
    async def _on_consumer_stream(self, stream: Any) -> None:
        s = Libp2pStream(stream)
        try:
            with trio.fail_after(10):
                hello = await wire.read_message(stream, 4096)
                rid = wire.get_str(hello, "request_id", max_len=64)
                job = self.jobs.get(rid)
                if job is None or job.consumer != stream.muxed_conn.peer_id.to_base58():
                    await wire.write_message(stream, {"ok": False, "error": "no such job for you here"}, 4096)
                    await s.aclose()
                    return
                await job.ready.wait()
                if job.session is None or job.error:
                    await wire.write_message(stream, {"ok": False, "error": job.error or "enclave not running"}, 4096)
                    await s.aclose()
                    return
                enclave_stream = await job.session.open_stream()
                await wire.write_message(stream, {"ok": True}, 4096)
        except (trio.TooSlowError, wire.WireError, ehost.EnclaveError, trio.BrokenResourceError) as e:
            log.info("consumer stream refused", extra={"error": str(e)[:200]})
            await s.aclose()
            return
        if self.relay_capture is None:
            await splice(s, enclave_stream)
            return
        chunks: list[tuple[str, bytes]] = []
        await splice(s, enclave_stream, observe=lambda d, b: chunks.append((d, b)))
        doc = {"request_id": rid, "chunks": [base64.b64encode(b).decode() for _, b in chunks],
               "directions": [d for d, _ in chunks]}
        await trio.to_thread.run_sync(atomic_write, self.relay_capture, json.dumps(doc).encode(), 0o600)


def _cert_spki(cert_der: bytes) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert = x509.load_der_x509_certificate(cert_der)
    return cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)

