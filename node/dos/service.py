"""``/ofnode/dos/attest/1.0.0``: a provider hands an enclave's evidence to a DOS
peer, which verifies it and answers with its ACL signature, or refuses with reasons.

Request (one length-prefixed JSON object, see :mod:`node.dos.wire`)::

    {"request_id": str, "ai_cid": CID, "consumer": peer id,
     "nonce": hex (16..64 bytes), "quote": base64 DCAP quote,
     "enclave_key_spki": base64 SubjectPublicKeyInfo DER (ECDSA P-256),
     "not_after": Unix s}

Answer: ``{"ok": true, "entry": AclEntry, "signature": {dos_peer, sig},
"status": TCB status, "advisories": [...]}`` or ``{"ok": false, "error":
summary, "reasons": [...], "checks": [...]}``.

The DOS peer checks, in order: the message is well formed (sizes, types, a
P-256 key); ``not_after`` lies in (now, now + max_ttl]; when a request
``lookup`` is wired (the market's view of the request), the request exists and
its nonce, AI and consumer match and the sender is the assigned provider; the
nonce was not used by another request, and the request was not revoked and has
no live entry for another provider's enclave (the same provider may replace its
enclave); then the quote
(:class:`~node.dos.verifier.Verifier`: DCAP with cached collateral and the
genesis policy, report data = SHA-256(SPKI || nonce) || 0*32). Only then does
it sign the :class:`~node.dos.acl.AclEntry` and store it (durably) before
answering. Verification runs in worker threads (bounded); a malformed or
hostile message gets a refusal, never a crash.

:func:`request_acl` is the provider's side: evidence to every DOS peer at
once, done as soon as a quorum of valid signatures is in.
"""
from __future__ import annotations

import hashlib
import inspect
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import trio
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from enclave.cid import Cid, CidError
from enclave.quotes import layout

from ..genesis import Genesis
from ..identity import Identity, public_key_from_peer_id
from . import wire
from .acl import AclEntry, AclError, AclSignature, AclStore, verify_quorum
from .policy import expected_report_data
from .verifier import Verifier

log = logging.getLogger("ofnode.dos")

__all__ = ["PROTOCOL", "Evidence", "RequestInfo", "AttestService", "AclGrant", "AclQuorumError", "request_acl",
           "parse_evidence", "ihost"]

PROTOCOL = "/ofnode/dos/attest/1.0.0"
MAX_REQUEST = 64 * 1024
MAX_RESPONSE = 64 * 1024
MAX_QUOTE = 32 * 1024
MAX_SPKI = 512
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
_PEER = re.compile(r"12D3KooW[1-9A-HJ-NP-Za-km-z]{44}")
_EVIDENCE_FIELDS = {"request_id", "ai_cid", "consumer", "nonce", "quote", "enclave_key_spki", "not_after"}
MAX_MANIFEST = 24 * 1024


def ihost(host: Any) -> Any:
    """The libp2p IHost of a :class:`node.p2p.host.P2PHost` (or an IHost itself)."""
    inner = getattr(host, "host", None)
    return inner if inner is not None and hasattr(inner, "set_stream_handler") else host


def peer_of(stream: Any) -> str:
    return stream.muxed_conn.peer_id.to_base58()


def load_p256_spki(spki: bytes) -> ec.EllipticCurvePublicKey:
    """The ECDSA P-256 public key in canonical SPKI DER ``spki``; wire.WireError otherwise."""
    try:
        key = serialization.load_der_public_key(bytes(spki))
    except (ValueError, TypeError, UnsupportedAlgorithm):  # e.g. an EC key on an unknown curve
        raise wire.WireError("enclave_key_spki: not a DER SubjectPublicKeyInfo") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise wire.WireError("enclave_key_spki: not an ECDSA P-256 key")
    canon = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if canon != bytes(spki):
        raise wire.WireError("enclave_key_spki: not in canonical DER form")
    return key


@dataclass(frozen=True)
class Evidence:
    request_id: str
    ai_cid: str
    consumer: str
    nonce: bytes
    quote: bytes = field(repr=False)
    enclave_key_spki: bytes = field(repr=False)
    not_after: int
    # The AI's public manifest (the exact ai.toml bytes the enclave was
    # launched with): on sim networks the DOS recomputes MRENCLAVE from it.
    manifest: bytes = field(default=b"", repr=False)

    def to_dict(self) -> dict[str, Any]:
        d = {"request_id": self.request_id, "ai_cid": self.ai_cid, "consumer": self.consumer,
             "nonce": self.nonce.hex(), "quote": wire.b64(self.quote),
             "enclave_key_spki": wire.b64(self.enclave_key_spki), "not_after": self.not_after}
        if self.manifest:
            d["manifest"] = wire.b64(self.manifest)
        return d

    @property
    def enclave_key_sha256(self) -> str:
        return hashlib.sha256(self.enclave_key_spki).hexdigest()


def parse_evidence(d: dict[str, Any]) -> Evidence:
    """Strictly validate an evidence message; raises wire.WireError naming the field."""
    wire.only_keys(d, _EVIDENCE_FIELDS, {"manifest"}, where="evidence")
    request_id = wire.get_str(d, "request_id", max_len=128, pattern=_REQUEST_ID)
    ai_cid = wire.get_str(d, "ai_cid", max_len=256)
    try:
        if Cid.decode(ai_cid).encode() != ai_cid:
            raise wire.WireError("ai_cid: not in canonical form")
    except CidError as e:
        raise wire.WireError(f"ai_cid: {e}") from None
    consumer = wire.get_str(d, "consumer", max_len=64, pattern=_PEER)
    try:
        public_key_from_peer_id(consumer)
    except ValueError:
        raise wire.WireError("consumer: not an ed25519 peer id") from None
    nonce = wire.get_hex(d, "nonce", min_size=16, max_size=64)
    quote = wire.get_b64(d, "quote", max_size=MAX_QUOTE)
    spki = wire.get_b64(d, "enclave_key_spki", max_size=MAX_SPKI)
    load_p256_spki(spki)
    not_after = wire.get_int(d, "not_after", 0, 2**53 - 1)
    manifest = wire.get_b64(d, "manifest", max_size=MAX_MANIFEST) if "manifest" in d else b""
    return Evidence(request_id=request_id, ai_cid=ai_cid, consumer=consumer, nonce=nonce, quote=quote,
                    enclave_key_spki=spki, not_after=not_after, manifest=manifest)


@dataclass(frozen=True)
class RequestInfo:
    """What the market knows about a request (the DOS checks evidence against it)."""

    nonce: bytes
    ai_cid: str
    consumer: str
    provider: str | None = None  # the assigned provider, if any
    ended: bool = False  # its consumer said done, or it failed: no enclave is attested for it again


Lookup = Callable[[str], "RequestInfo | None | Awaitable[RequestInfo | None]"]


def _sim_rooted(verdict: Any) -> bool:
    """The accepted quote chains to the genesis' sim root (not Intel's): its MRENCLAVE is ofnode's sim measurement."""
    check = verdict.check("sim_root_allowed")
    return check is not None and check.ok and check.detail != "Intel SGX root CA"


def _refuse(error: str, reasons: list[str] | None = None, checks: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"ok": False, "error": error[:500], "reasons": [r[:500] for r in (reasons or [error])][:32]}
    if checks is not None:
        out["checks"] = checks
    return out


class AttestService:
    """The DOS peer's attestation endpoint.

    ``lookup(request_id) -> RequestInfo | None`` (sync or async) ties evidence
    to the market's request; without it the evidence's own nonce is trusted but
    each nonce serves one request only. ``on_attested(request_id, provider)``
    is called after each signature (e.g. ``Coordinator.note_attested``).
    ``measure(manifest) -> MRENCLAVE`` (sim networks: ``enclave.measure.mrenclave``)
    makes the DOS recompute the measurement the enclave must have from the
    AI's public manifest carried in the evidence: a provider that launched
    other enclave code (or another manifest than it names) is refused, and
    evidence without a manifest is refused.
    """

    protocol = PROTOCOL

    def __init__(self, identity: Identity, genesis: Genesis, verifier: Verifier, store: AclStore, *,
                 lookup: Lookup | None = None, on_attested: Callable[[str, str], None] | None = None,
                 clock: Callable[[], float] = time.time, max_ttl: int = 3600, timeout: float = 10.0,
                 max_concurrent: int = 8, prune_interval: float = 60.0, run_collateral_refresh: bool = True,
                 measure: Callable[[bytes], bytes] | None = None, metrics: Any = None) -> None:
        self.identity, self.genesis, self.verifier, self.store = identity, genesis, verifier, store
        self.metrics = metrics
        if metrics is not None:
            metrics.declare("ofnode_dos_attestations_total", "counter",
                            "Evidence this DOS peer answered, by result (granted, refused).")
        self.measure = measure
        self.lookup, self.on_attested, self.clock = lookup, on_attested, clock
        self.max_ttl, self.timeout, self.prune_interval = max_ttl, timeout, prune_interval
        self.run_collateral_refresh = run_collateral_refresh
        self._limiter = trio.CapacityLimiter(max_concurrent)
        self._lock = trio.Lock()
        self.accepted = 0
        self.refused = 0

    # -- wiring ----------------------------------------------------------------
    def register(self, host: Any) -> None:
        ihost(host).set_stream_handler(PROTOCOL, self._handle_stream)
        wire.register_local(ihost(host), PROTOCOL, self.handle)

    async def run(self, host: Any) -> None:
        """Serve the protocol; refresh collateral and prune expired entries until cancelled."""
        self.register(host)
        async with trio.open_nursery() as n:
            if self.run_collateral_refresh:
                n.start_soon(self.verifier.cache.run)
            while True:
                await trio.sleep(self.prune_interval)  # periodic housekeeping, not a wait for state
                await trio.to_thread.run_sync(self.store.prune, self.clock())

    async def _handle_stream(self, stream: Any) -> None:
        async def malformed(peer: str, reason: str) -> dict[str, Any]:
            return _refuse(reason)

        await wire.serve_stream(stream, self.handle, malformed, timeout=self.timeout, max_request=MAX_REQUEST,
                                max_response=MAX_RESPONSE, what="attest")

    # -- the decision ------------------------------------------------------------
    async def handle(self, peer: str, msg: dict[str, Any]) -> dict[str, Any]:
        """Answer one evidence message from ``peer`` (also callable without a network)."""
        answer = await self._decide(peer, msg)
        if self.metrics is not None:
            self.metrics.inc("ofnode_dos_attestations_total", result="granted" if answer.get("ok") else "refused")
        if answer.get("ok"):
            self.accepted += 1
        else:
            self.refused += 1
            log.info("attestation refused", extra={"peer": peer, "request_id": str(msg.get("request_id"))[:128],
                                                   "error": answer.get("error")})
        return answer

    async def _decide(self, peer: str, msg: dict[str, Any]) -> dict[str, Any]:
        try:
            ev = parse_evidence(msg)
        except wire.WireError as e:
            return _refuse(f"malformed evidence: {e}")
        now = self.clock()
        if ev.not_after <= now:
            return _refuse(f"not_after {ev.not_after} is already past")
        if ev.not_after > now + self.max_ttl:
            return _refuse(f"not_after is {int(ev.not_after - now)} s ahead; at most {self.max_ttl} s allowed")
        problem = await self._lookup_problem(ev, peer)
        if problem:
            return _refuse(problem)
        problem = self._state_problem(ev, peer)
        if problem:
            return _refuse(problem)
        expected = expected_report_data(ev.enclave_key_spki, ev.nonce)
        verdict = await trio.to_thread.run_sync(self.verifier.verify, ev.quote, expected, limiter=self._limiter)
        checks = [c.to_dict() for c in verdict.checks]
        if not verdict.ok:
            return _refuse(f"attestation refused: {verdict.summary()}", verdict.reasons(), checks)
        if self.measure is not None and _sim_rooted(verdict):
            problem = await self._measurement_problem(ev, str(verdict.mrenclave))
            if problem:
                return _refuse(f"attestation refused: {problem}", [problem], checks)
        entry = AclEntry(network_id=self.genesis.network_id, request_id=ev.request_id, ai_cid=ev.ai_cid,
                         enclave_key_sha256=ev.enclave_key_sha256, measurement=str(verdict.mrenclave),
                         consumer=ev.consumer, not_after=ev.not_after)
        async with self._lock:  # re-check under the lock: one enclave key per request
            # The market may have moved on while the quote was verified (the job
            # reassigned, its ACL slot released): a late answer for the old
            # provider must not take the new provider's slot.
            problem = await self._lookup_problem(ev, peer) or self._state_problem(ev, peer)
            if problem:
                return _refuse(problem)
            existing = self.store.get(ev.request_id)
            if existing is not None and existing.entry == entry:
                sig = existing.signature  # idempotent: the provider retried
            else:
                sig = entry.sign(self.identity)
                await trio.to_thread.run_sync(lambda: self.store.put(entry, ev.nonce.hex(), sig, now=now,
                                                                          provider=peer))
        if self.on_attested is not None:
            try:
                self.on_attested(ev.request_id, peer)
            except Exception as e:
                log.warning("on_attested callback failed", extra={"error": str(e)[:200]})
        log.info("attestation accepted", extra={"peer": peer, "request_id": ev.request_id, "status": verdict.status})
        return {"ok": True, "entry": entry.to_dict(), "signature": sig.to_dict(), "status": verdict.status,
                "advisories": list(verdict.advisories)}

    async def _measurement_problem(self, ev: Evidence, mrenclave: str) -> str | None:
        """MRENCLAVE must be the measurement of the network's enclave code running ``ev.manifest``."""
        assert self.measure is not None
        if not ev.manifest:
            return "mrenclave: the evidence carries no AI manifest to recompute the measurement from"
        expected = (await trio.to_thread.run_sync(self.measure, ev.manifest, limiter=self._limiter)).hex()
        if expected != mrenclave:
            return (f"mrenclave: {mrenclave} is not the measurement of the network's enclave code with this AI's "
                    f"manifest ({expected}): other enclave code was launched")
        return None

    async def _lookup_problem(self, ev: Evidence, peer: str) -> str | None:
        if self.lookup is None:
            return None
        info = self.lookup(ev.request_id)
        if inspect.isawaitable(info):
            info = await info
        if info is None:
            return f"unknown request {ev.request_id}"
        if info.ended:
            return f"request {ev.request_id} has ended"
        if bytes(info.nonce) != ev.nonce:
            return "the nonce is not this request's nonce (replayed or stale evidence)"
        if info.ai_cid != ev.ai_cid:
            return "ai_cid is not the AI this request asked for"
        if info.consumer != ev.consumer:
            return "consumer is not the peer that made this request"
        if info.provider is not None and info.provider != peer:
            return "evidence must come from the provider assigned to this request"
        return None

    def _state_problem(self, ev: Evidence, peer: str) -> str | None:
        other = self.store.request_for_nonce(ev.nonce.hex())
        if other is not None and other != ev.request_id:
            return "this nonce was already used by another request (replayed evidence)"
        rec = self.store.get(ev.request_id)
        if rec is None:
            return None
        if rec.revoked:
            return f"request {ev.request_id} was revoked (the job ended)"
        if rec.nonce != ev.nonce.hex():
            return "the request was attested with another nonce"
        if rec.entry.enclave_key_sha256 != ev.enclave_key_sha256 and not rec.entry.expired(self.clock()) \
                and rec.provider != peer:
            # The same provider may bring up a new enclave for its request (a
            # restart); another provider gets the slot only once the job was
            # reassigned and the entry released.
            return "the request already has a live ACL entry for another provider's enclave"
        return None


# -- the provider's side -------------------------------------------------------------
class AclQuorumError(wire.QuorumError):
    """Fewer than the quorum of DOS peers signed; ``refusals`` maps peer -> reason."""


@dataclass(frozen=True)
class AclGrant:
    entry: AclEntry
    signatures: tuple[AclSignature, ...]
    status: str | None
    refusals: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        return {"entry": self.entry.to_dict(), "signatures": [s.to_dict() for s in self.signatures]}


async def request_acl(host: Any, genesis: Genesis, evidence: Evidence, *, timeout: float = 10.0,
                      peers: tuple[str, ...] | None = None) -> AclGrant:
    """Send ``evidence`` to the DOS peers at once; return as soon as a quorum signed.

    Each answer is checked: the entry must be exactly the one this evidence
    yields and the signature must verify under the answering peer's key.
    Raises AclQuorumError (with every peer's reason) when no quorum forms.
    """
    h = ihost(host)
    try:
        measurement = layout.parse(evidence.quote).mr_enclave.hex()
    except layout.QuoteFormatError as e:
        raise AclQuorumError(f"not a quote: {e}", {}) from None
    expected = AclEntry(network_id=genesis.network_id, request_id=evidence.request_id, ai_cid=evidence.ai_cid,
                        enclave_key_sha256=evidence.enclave_key_sha256, measurement=measurement,
                        consumer=evidence.consumer, not_after=evidence.not_after)
    peers = tuple(peers if peers is not None else genesis.dos_peers)
    k = genesis.dos_quorum
    sigs: dict[str, AclSignature] = {}
    refusals: dict[str, str] = {}
    statuses: list[str] = []
    msg = evidence.to_dict()

    async def ask(peer: str) -> None:
        try:
            ans = await wire.request(h, peer, PROTOCOL, msg, max_request=MAX_REQUEST, max_response=MAX_RESPONSE,
                                     timeout=timeout)
        except wire.WireError as e:
            refusals[peer] = str(e)
            return
        if ans.get("ok") is not True:
            refusals[peer] = str(ans.get("error", "refused"))[:500]
            return
        try:
            if AclEntry.from_dict(ans.get("entry")) != expected:
                refusals[peer] = "signed an entry that differs from the evidence"
                return
            sig = AclSignature.from_dict(ans.get("signature"))
        except AclError as e:
            refusals[peer] = f"malformed answer: {e}"
            return
        if sig.dos_peer != peer or not sig.verify(expected):
            refusals[peer] = "answer carries an invalid signature"
            return
        sigs[peer] = sig
        if isinstance(ans.get("status"), str):
            statuses.append(ans["status"])

    # Stop waiting at a quorum; the slower peers' exchanges finish in the background.
    await wire.fan_out(peers, ask, enough=lambda: len(sigs) >= k)
    sigs, refusals = dict(sigs), dict(refusals)
    ok, reason = verify_quorum(expected, list(sigs.values()), genesis, time.time())
    if not ok:
        detail = "; ".join(f"{p[-8:]}: {r}" for p, r in sorted(refusals.items()))
        raise AclQuorumError(f"no DOS quorum: {reason}" + (f" ({detail})" if detail else ""), refusals)
    return AclGrant(entry=expected, signatures=tuple(sigs[p] for p in peers if p in sigs),
                    status=statuses[0] if statuses else None, refusals=refusals)
