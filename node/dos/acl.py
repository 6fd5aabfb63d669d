"""Time-bound ACL entries, signed by a quorum of DOS peers, and the DOS peer's durable ACL store.

An :class:`AclEntry` says: for ``request_id``, the enclave whose RA-TLS key
hashes to ``enclave_key_sha256``, measured ``measurement`` (MRENCLAVE), may
use AI ``ai_cid`` on behalf of ``consumer`` until ``not_after`` (Unix s), on
network ``network_id``.

Canonical encoding (what is signed, byte for byte)::

    b"ofnode/acl-entry/v1\\n" || JSON(entry, sorted keys, separators "," ":", ASCII)

Every field is a string or an integer below 2**53, so the JSON is
deterministic across implementations. Each accepting DOS peer signs those
bytes with its ed25519 node key (:meth:`AclEntry.sign` ->
:class:`AclSignature`); an entry is valid with signatures from at least
``genesis.dos_quorum`` distinct peers of ``genesis.dos_peers``, before
``not_after`` (:func:`verify_quorum`). Because every DOS peer must sign the
same bytes, nothing in an entry depends on a peer's own clock: ``not_after``
is the one the provider asked for (a DOS peer refuses values too far ahead).

:class:`AclStore` keeps, on a DOS peer, the entries it signed: one file per
request (atomic writes), so a restart forgets none. ``revoke`` (job ended)
leaves a tombstone until the entry would have expired, so the request is never
signed again; ``release`` (provider failed, job reassigned) removes the entry
so another enclave can attest for the request. Expired entries are pruned.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from enclave.cid import Cid, CidError

from ..fsutil import atomic_write, fsync_dir
from ..genesis import Genesis
from ..identity import Identity, public_key_from_peer_id, verify_by_peer_id

log = logging.getLogger("ofnode.dos.acl")

__all__ = ["AclError", "AclEntry", "AclSignature", "verify_quorum", "AclStore", "ACL_DOMAIN", "MAX_SIGNATURES"]

ACL_DOMAIN = b"ofnode/acl-entry/v1\n"
MAX_SIGNATURES = 64
_FIELDS = ("network_id", "request_id", "ai_cid", "enclave_key_sha256", "measurement", "consumer", "not_after")
_NETWORK_ID = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
_HEX32 = re.compile(r"[0-9a-f]{64}")
_PEER = re.compile(r"12D3KooW[1-9A-HJ-NP-Za-km-z]{44}")
_HEX_SIG = re.compile(r"[0-9a-f]{128}")


class AclError(ValueError):
    """A malformed ACL entry or signature; the text names the field."""


def _str(d: dict[str, Any], key: str, pattern: re.Pattern[str]) -> str:
    v = d.get(key)
    if not isinstance(v, str) or not pattern.fullmatch(v):
        raise AclError(f"acl entry: {key} is missing or not valid")
    return v


@dataclass(frozen=True)
class AclEntry:
    network_id: str
    request_id: str
    ai_cid: str
    enclave_key_sha256: str  # hex SHA-256 of the enclave's SubjectPublicKeyInfo DER
    measurement: str  # MRENCLAVE hex
    consumer: str  # peer id
    not_after: int  # Unix seconds

    def __post_init__(self) -> None:
        AclEntry.from_dict(asdict(self))  # validate: raises AclError

    @classmethod
    def from_dict(cls, d: Any) -> "AclEntry":
        if not isinstance(d, dict):
            raise AclError("acl entry: not an object")
        extra = set(d) - set(_FIELDS)
        if extra:
            raise AclError(f"acl entry: unknown field(s) {sorted(str(k)[:40] for k in extra)[:5]}")
        network_id = _str(d, "network_id", _NETWORK_ID)
        request_id = _str(d, "request_id", _REQUEST_ID)
        ai_cid = d.get("ai_cid")
        if not isinstance(ai_cid, str) or len(ai_cid) > 256:
            raise AclError("acl entry: ai_cid is missing or not valid")
        try:
            if Cid.decode(ai_cid).encode() != ai_cid:
                raise AclError("acl entry: ai_cid is not in canonical form")
        except CidError as e:
            raise AclError(f"acl entry: ai_cid: {e}") from None
        key_hash = _str(d, "enclave_key_sha256", _HEX32)
        measurement = _str(d, "measurement", _HEX32)
        consumer = _str(d, "consumer", _PEER)
        try:
            public_key_from_peer_id(consumer)
        except ValueError:
            raise AclError("acl entry: consumer is not an ed25519 peer id") from None
        not_after = d.get("not_after")
        if not isinstance(not_after, int) or isinstance(not_after, bool) or not 0 <= not_after < 2**53:
            raise AclError("acl entry: not_after is missing or not an integer in 0..2**53")
        return cls._build(network_id, request_id, ai_cid, key_hash, measurement, consumer, not_after)

    @classmethod
    def _build(cls, *values: Any) -> "AclEntry":
        obj = object.__new__(cls)
        for name, value in zip(_FIELDS, values):
            object.__setattr__(obj, name, value)
        return obj

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _FIELDS}

    def canonical_bytes(self) -> bytes:
        body = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return ACL_DOMAIN + body.encode()

    def sign(self, identity: Identity) -> "AclSignature":
        return AclSignature(dos_peer=identity.peer_id, sig=identity.sign(self.canonical_bytes()))

    def expired(self, now: float) -> bool:
        return now >= self.not_after


@dataclass(frozen=True)
class AclSignature:
    dos_peer: str
    sig: bytes  # 64-byte ed25519 signature over entry.canonical_bytes()

    def to_dict(self) -> dict[str, str]:
        return {"dos_peer": self.dos_peer, "sig": self.sig.hex()}

    @classmethod
    def from_dict(cls, d: Any) -> "AclSignature":
        if not isinstance(d, dict) or set(d) != {"dos_peer", "sig"}:
            raise AclError("acl signature: expected {dos_peer, sig}")
        peer, sig = d["dos_peer"], d["sig"]
        if not isinstance(peer, str) or not _PEER.fullmatch(peer):
            raise AclError("acl signature: dos_peer is not a peer id")
        if not isinstance(sig, str) or not _HEX_SIG.fullmatch(sig):
            raise AclError("acl signature: sig is not 64 bytes of lowercase hex")
        return cls(dos_peer=peer, sig=bytes.fromhex(sig))

    def verify(self, entry: AclEntry) -> bool:
        return len(self.sig) == 64 and verify_by_peer_id(self.dos_peer, self.sig, entry.canonical_bytes())


def verify_quorum(entry: AclEntry, signatures: Sequence[AclSignature], genesis: Genesis, now: float) -> tuple[bool, str]:
    """(ok, reason): ``entry`` is for this network, signed by >= k distinct genesis DOS peers, unexpired."""
    if entry.network_id != genesis.network_id:
        return False, f"entry is for network {entry.network_id!r}, not {genesis.network_id!r}"
    k, n = genesis.dos_quorum, len(genesis.dos_peers)
    if n == 0:
        return False, "the genesis names no DOS peers"
    if len(signatures) > MAX_SIGNATURES:
        return False, f"{len(signatures)} signatures: at most {MAX_SIGNATURES} accepted"
    dos = set(genesis.dos_peers)
    valid: set[str] = set()
    forged = outsiders = duplicates = 0
    seen: set[str] = set()
    message = entry.canonical_bytes()
    for s in signatures:
        if s.dos_peer in seen:
            duplicates += 1
            continue
        seen.add(s.dos_peer)
        if s.dos_peer not in dos:
            outsiders += 1
            continue
        if len(s.sig) == 64 and verify_by_peer_id(s.dos_peer, s.sig, message):
            valid.add(s.dos_peer)
        else:
            forged += 1
    if len(valid) < k:
        notes = [f"{forged} forged"] if forged else []
        if outsiders:
            notes.append(f"{outsiders} not from a DOS peer")
        if duplicates:
            notes.append(f"{duplicates} duplicate")
        extra = f" ({', '.join(notes)})" if notes else ""
        return False, f"{k} of {n} DOS signatures needed, got {len(valid)} valid{extra}"
    if entry.expired(now):
        return False, f"expired {int(now - entry.not_after)} s ago"
    return True, f"{len(valid)} of {n} DOS signatures (quorum {k}), valid for {int(entry.not_after - now)} s"


# -- the DOS peer's store -------------------------------------------------------
@dataclass(frozen=True)
class StoredAcl:
    entry: AclEntry
    nonce: str  # hex: the request nonce the quote bound
    signature: AclSignature  # this DOS peer's own signature
    revoked: bool = False
    signed_at: float = 0.0
    provider: str = ""  # the peer that presented the evidence

    def to_json(self) -> bytes:
        return json.dumps({"entry": self.entry.to_dict(), "nonce": self.nonce, "signature": self.signature.to_dict(),
                           "revoked": self.revoked, "signed_at": self.signed_at, "provider": self.provider},
                          sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> "StoredAcl":
        d = json.loads(raw)
        return cls(entry=AclEntry.from_dict(d["entry"]), nonce=str(d["nonce"]),
                   signature=AclSignature.from_dict(d["signature"]), revoked=bool(d["revoked"]),
                   signed_at=float(d.get("signed_at", 0.0)), provider=str(d.get("provider", "")))


class AclStore:
    """Entries this DOS peer signed, one JSON file per request under ``directory``.

    Thread-safe (the attestation service writes from worker threads).
    ``grace`` keeps expired entries that long before pruning (s).
    """

    def __init__(self, directory: str | os.PathLike[str], *, grace: float = 0.0) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.grace = grace
        self._lock = threading.Lock()
        self._by_request: dict[str, StoredAcl] = {}
        self._by_nonce: dict[str, str] = {}
        for path in sorted(self.directory.glob("*.json")):
            try:
                rec = StoredAcl.from_json(path.read_bytes())
            except (OSError, ValueError, KeyError, TypeError, AclError) as e:
                log.warning("ignoring unreadable ACL file", extra={"path": str(path), "error": str(e)[:200]})
                continue
            if path.name != self._name(rec.entry.request_id):
                log.warning("ignoring misnamed ACL file", extra={"path": str(path)})
                continue
            self._index(rec)

    @staticmethod
    def _name(request_id: str) -> str:
        return hashlib.sha256(request_id.encode()).hexdigest()[:32] + ".json"

    def _index(self, rec: StoredAcl) -> None:
        self._by_request[rec.entry.request_id] = rec
        self._by_nonce[rec.nonce] = rec.entry.request_id

    def _write(self, rec: StoredAcl) -> None:
        atomic_write(self.directory / self._name(rec.entry.request_id), rec.to_json(), mode=0o600)

    def get(self, request_id: str) -> StoredAcl | None:
        with self._lock:
            return self._by_request.get(request_id)

    def request_for_nonce(self, nonce_hex: str) -> str | None:
        with self._lock:
            return self._by_nonce.get(nonce_hex)

    def put(self, entry: AclEntry, nonce_hex: str, signature: AclSignature, *, now: float | None = None,
            provider: str = "") -> StoredAcl:
        rec = StoredAcl(entry=entry, nonce=nonce_hex, signature=signature, signed_at=time.time() if now is None else now,
                        provider=provider)
        with self._lock:
            self._write(rec)
            old = self._by_request.get(entry.request_id)
            if old is not None and old.nonce != nonce_hex:
                self._by_nonce.pop(old.nonce, None)
            self._index(rec)
        return rec

    def revoke(self, request_id: str, *, consumer: str | None = None) -> bool:
        """The job ended: the entry stays as a tombstone (never signed again) until it expires.

        ``consumer``: only revoke if the entry is that consumer's (the end was
        announced by a peer the request's record does not name)."""
        with self._lock:
            rec = self._by_request.get(request_id)
            if rec is None or rec.revoked or (consumer is not None and rec.entry.consumer != consumer):
                return False
            rec = StoredAcl(entry=rec.entry, nonce=rec.nonce, signature=rec.signature, revoked=True,
                            signed_at=rec.signed_at, provider=rec.provider)
            self._write(rec)
            self._index(rec)
            return True

    def release(self, request_id: str) -> bool:
        """Forget the entry (the job was reassigned): another enclave may attest for the request.

        A revoked entry (the job ended) is kept: a reassignment seen after the end is
        stale (a restarted coordinator replaying an old request), and dropping the
        tombstone would let the finished request be signed again."""
        with self._lock:
            rec = self._by_request.get(request_id)
            if rec is None or rec.revoked:
                return False
            del self._by_request[request_id]
            self._by_nonce.pop(rec.nonce, None)
            self._unlink(request_id)
            return True

    def _unlink(self, request_id: str) -> None:
        try:
            os.unlink(self.directory / self._name(request_id))
        except FileNotFoundError:
            pass

    def prune(self, now: float | None = None) -> int:
        """Drop entries (and tombstones) expired more than ``grace`` s ago; returns how many."""
        now = time.time() if now is None else now
        with self._lock:
            old = [r for r in self._by_request.values() if r.entry.not_after + self.grace <= now]
            for r in old:
                del self._by_request[r.entry.request_id]
                self._by_nonce.pop(r.nonce, None)
                self._unlink(r.entry.request_id)
            if old:
                fsync_dir(self.directory)
            return len(old)

    def entries(self) -> list[StoredAcl]:
        with self._lock:
            return sorted(self._by_request.values(), key=lambda r: r.entry.request_id)

    def active(self, now: float) -> Iterable[StoredAcl]:
        return [r for r in self.entries() if not r.revoked and not r.entry.expired(now)]
