"""The release decision: may this request have this peer's share of the AI key?

A share request (built by :func:`enclave.secret_client.build_share_request`)::

    {"acl_entry": AclEntry, "dos_signatures": [{dos_peer, sig}],
     "enclave_key_spki": base64 SPKI DER (ECDSA P-256),
     "hpke_pub": hex X25519 public key (32 bytes),
     "signature": base64 DER ECDSA-SHA256 by the enclave key over
                  REQUEST_DOMAIN || JSON{acl_entry, hpke_pub}}

The share is released only if, in this order (the first failure is the
refusal's ``code`` and ``error``):

``malformed``    the request and the entry parse strictly
``acl``          the entry is for this network, carries signatures of at least
                 ``dos_quorum`` distinct genesis DOS peers, and ``now < not_after``
``enclave_key``  SHA-256(enclave_key_spki) == entry.enclave_key_sha256
``signature``    the request signature verifies under that key (so the HPKE key
                 is the attested enclave's)
``measurement``  entry.measurement is allowed by the genesis policy's MRENCLAVE
                 list (when the list is not empty)
``unknown_ai``   this peer holds a share of entry.ai_cid
``revoked``      the AI is not revoked
``hpke``         hpke_pub is a usable X25519 key

The answer is then ``{"ok": true, "share": {metadata..., "sealed": base64},
"sig": hex}``: the 32-byte share sealed with HPKE to ``hpke_pub`` (info binds
the metadata), signed by this peer's node key. Every decision is written to the
audit log before the answer is returned.
"""
from __future__ import annotations

import base64
import hashlib
import time
from dataclasses import dataclass
from typing import Any, Callable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, x25519

from ..dos import wire
from ..dos.acl import AclEntry, AclError, AclSignature, MAX_SIGNATURES, verify_quorum
from ..dos.service import load_p256_spki
from ..genesis import Genesis
from ..identity import Identity
from .audit import AuditLog
from enclave.secret_client import SUITE, request_signing_bytes, response_signing_bytes, share_info, zero
from .share_store import ShareStore, ShareStoreError

__all__ = ["ShareRequest", "parse_share_request", "Releaser", "REQUEST_FIELDS"]

REQUEST_FIELDS = {"acl_entry", "dos_signatures", "enclave_key_spki", "hpke_pub", "signature"}


@dataclass(frozen=True)
class ShareRequest:
    entry: AclEntry
    signatures: tuple[AclSignature, ...]
    spki: bytes
    hpke_pub: bytes
    signature: bytes


def parse_share_request(d: Any) -> ShareRequest:
    """Strict parse; raises wire.WireError naming the field."""
    if not isinstance(d, dict):
        raise wire.WireError("request: not an object")
    wire.only_keys(d, REQUEST_FIELDS, where="share request")
    try:
        entry = AclEntry.from_dict(d["acl_entry"])
        sigs = tuple(AclSignature.from_dict(s) for s in wire.get_list(d, "dos_signatures", max_len=MAX_SIGNATURES))
    except AclError as e:
        raise wire.WireError(str(e)) from None
    spki = wire.get_b64(d, "enclave_key_spki", max_size=512)
    hpke_pub = wire.get_hex(d, "hpke_pub", size=32)
    signature = wire.get_b64(d, "signature", max_size=80)
    return ShareRequest(entry=entry, signatures=sigs, spki=spki, hpke_pub=hpke_pub, signature=signature)


def _refusal(code: str, error: str) -> dict[str, Any]:
    return {"ok": False, "code": code, "error": error[:500]}


class Releaser:
    """Decides share requests for one secrets peer; ``decide`` is blocking (run it in a worker thread)."""

    def __init__(self, identity: Identity, genesis: Genesis, store: ShareStore, audit: AuditLog, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.identity, self.genesis, self.store, self.audit, self.clock = identity, genesis, store, audit, clock
        # Requests whose consumer announced the job over (market.done): their
        # ACL entries are revoked by the DOS peers; refuse them here too, in
        # memory (a restart falls back to the entries' not_after).
        # Only the request's consumer (named in its ACL entry) can end it, so a
        # peer gossiping "done" for someone else's request blocks nothing.
        self.finished: dict[str, str] = {}  # request id -> peer that said it ended

    def job_finished(self, request_id: str, by_peer: str) -> None:
        self.finished[request_id] = by_peer
        if len(self.finished) > 100_000:
            self.finished.pop(next(iter(self.finished)))

    def decide(self, requester: str, msg: Any) -> dict[str, Any]:
        """The answer to one share request from peer ``requester``; audited; never raises for bad input."""
        ctx: dict[str, Any] = {"peer": requester}
        try:
            answer = self._decide(requester, msg, ctx)
        except Exception as e:  # an unexpected bug must still refuse (and be audited), not leak or crash
            answer = _refusal("internal", f"internal error: {type(e).__name__}")
        if answer.get("ok"):
            self.audit.append("release", reason="ok", **ctx)
        else:
            self.audit.append("refuse", code=answer["code"], reason=answer["error"], **ctx)
        return answer

    def _decide(self, requester: str, msg: Any, ctx: dict[str, Any]) -> dict[str, Any]:
        try:
            req = parse_share_request(msg)
        except wire.WireError as e:
            return _refusal("malformed", f"malformed share request: {e}")
        e = req.entry
        ctx.update(request_id=e.request_id, ai_cid=e.ai_cid, consumer=e.consumer,
                   enclave_key_sha256=e.enclave_key_sha256, measurement=e.measurement, not_after=e.not_after)
        now = self.clock()
        if self.finished.get(e.request_id) == e.consumer:
            return _refusal("finished", f"request {e.request_id} has ended; its ACL entry is revoked")
        ok, reason = verify_quorum(e, req.signatures, self.genesis, now)
        if not ok:
            return _refusal("acl", f"ACL entry not valid: {reason}")
        if hashlib.sha256(req.spki).hexdigest() != e.enclave_key_sha256:
            return _refusal("enclave_key", "the enclave key is not the one the ACL entry names")
        try:
            key = load_p256_spki(req.spki)
            key.verify(req.signature, request_signing_bytes(e.to_dict(), req.hpke_pub), ec.ECDSA(hashes.SHA256()))
        except (wire.WireError, InvalidSignature, ValueError):
            return _refusal("signature", "the request is not signed by the enclave key the ACL entry names")
        allowed = self.genesis.policy.mrenclave
        if allowed and e.measurement not in allowed:
            return _refusal("measurement", f"measurement {e.measurement} is not allowed by the network policy")
        rec = self.store.get(e.ai_cid)
        if rec is None:
            return _refusal("unknown_ai", f"this peer holds no share of AI {e.ai_cid}")
        if rec.revoked:
            return _refusal("revoked", f"AI {e.ai_cid} is revoked")
        try:
            pub = x25519.X25519PublicKey.from_public_bytes(req.hpke_pub)
        except ValueError:
            return _refusal("hpke", "hpke_pub is not an X25519 public key")
        try:
            rec, share = self.store.open(e.ai_cid)
        except ShareStoreError as err:
            code = "revoked" if "revoked" in str(err) else "unknown_ai"
            return _refusal(code, str(err))
        meta = {"ai_cid": e.ai_cid, "request_id": e.request_id, "enclave_key_sha256": e.enclave_key_sha256,
                "index": rec.index, "version": rec.version, "threshold": rec.threshold,
                "secrets_peer": self.identity.peer_id, "key_check": rec.key_check}
        try:
            sealed = SUITE.encrypt(share, pub, info=share_info(meta))
        except ValueError:
            return _refusal("hpke", "cannot seal to hpke_pub (not a usable X25519 key)")
        finally:
            zero(share)
        ctx.update(index=rec.index, version=rec.version)
        sig = self.identity.sign(response_signing_bytes(meta, sealed))
        return {"ok": True, "share": {**meta, "sealed": base64.b64encode(sealed).decode()}, "sig": sig.hex()}
