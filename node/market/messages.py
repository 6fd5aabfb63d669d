"""Market messages: what consumers, providers and DOS peers gossip about a job.

Each travels as the payload of a signed gossip envelope (docs/protocol.md), so
its author is the envelope's sender; payloads are JSON objects checked here
field by field (``MessageError`` names the field). Nothing a peer sends is
trusted further than these checks.
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from enclave.cid import Cid, CidError

REQUEST = "market.request"
OFFER = "market.offer"
ASSIGNMENT = "market.assignment"
FAILED = "market.failed"
RETRY = "market.retry"
DECLINE = "market.decline"
ATTESTED = "market.attested"
DONE = "market.done"

TEES = ("sim", "sgx")
BACKENDS = ("sim", "docker", "gramine-sgx", "gramine-direct")
_HEX = re.compile(r"[0-9a-f]+")
_PEER = re.compile(r"12D3KooW[1-9A-HJ-NP-Za-km-z]{44}")
MAX_PAYLOAD = 16384


class MessageError(ValueError):
    """A market message is malformed; the message names the field."""


def _get(d: dict[str, Any], key: str, typ: type | tuple[type, ...]) -> Any:
    if key not in d:
        raise MessageError(f"{key}: missing")
    v = d[key]
    if not isinstance(v, typ) or (typ is int and isinstance(v, bool)):
        raise MessageError(f"{key}: expected {getattr(typ, '__name__', typ)}")
    return v


def _hex(d: dict[str, Any], key: str, nbytes: int) -> str:
    v = _get(d, key, str)
    if len(v) != 2 * nbytes or not _HEX.fullmatch(v):
        raise MessageError(f"{key}: expected {nbytes} bytes as lowercase hex")
    return v


def _peer(d: dict[str, Any], key: str) -> str:
    v = _get(d, key, str)
    if not _PEER.fullmatch(v):
        raise MessageError(f"{key}: not an ed25519 peer id")
    return v


def _uint(d: dict[str, Any], key: str, hi: int = 2**53) -> int:
    v = _get(d, key, int)
    if not 0 <= v <= hi:
        raise MessageError(f"{key}: must lie in 0..{hi}")
    return v


def _cid(d: dict[str, Any], key: str) -> str:
    v = _get(d, key, str)
    try:
        return Cid.decode(v).encode()
    except CidError as e:
        raise MessageError(f"{key}: {e}") from None


def _only(d: dict[str, Any], keys: set[str], where: str) -> None:
    extra = set(d) - keys
    if extra:
        raise MessageError(f"{where}: unknown field(s) {sorted(extra)[:5]}")


def decode(payload: bytes) -> dict[str, Any]:
    if len(payload) > MAX_PAYLOAD:
        raise MessageError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    try:
        d = json.loads(payload)
    except (ValueError, RecursionError):
        raise MessageError("payload is not JSON") from None
    if not isinstance(d, dict):
        raise MessageError("payload is not a JSON object")
    return d


def encode(obj: Any) -> bytes:
    return json.dumps(asdict(obj), separators=(",", ":"), sort_keys=True).encode()


@dataclass(frozen=True)
class Requirements:
    cpu: int = 1
    memory: int = 512 << 20
    tee: str = "sim"
    backend: str = ""  # empty: any backend of that TEE kind
    max_price: int = 0  # 0: any price

    @classmethod
    def parse(cls, d: Any) -> "Requirements":
        if not isinstance(d, dict):
            raise MessageError("requirements: expected an object")
        _only(d, {"cpu", "memory", "tee", "backend", "max_price"}, "requirements")
        r = cls(cpu=_uint(d, "cpu", 1024), memory=_uint(d, "memory", 1 << 44), tee=_get(d, "tee", str),
                backend=_get(d, "backend", str), max_price=_uint(d, "max_price"))
        if r.cpu < 1:
            raise MessageError("requirements.cpu: must be at least 1")
        if r.tee not in TEES:
            raise MessageError(f"requirements.tee: must be one of {', '.join(TEES)}")
        if r.backend and r.backend not in BACKENDS:
            raise MessageError(f"requirements.backend: must be one of {', '.join(BACKENDS)}")
        return r


@dataclass(frozen=True)
class ExecutionRequest:
    id: str  # 16 random bytes, hex
    ai_cid: str
    requirements: Requirements
    nonce: str  # 32 random bytes, hex: binds the enclave's quote to this request
    deadline_ms: int  # the consumer gives up after this
    bidding_ms: int  # how long the coordinator collects offers

    @classmethod
    def parse(cls, d: dict[str, Any]) -> "ExecutionRequest":
        _only(d, {"id", "ai_cid", "requirements", "nonce", "deadline_ms", "bidding_ms"}, "request")
        r = cls(id=_hex(d, "id", 16), ai_cid=_cid(d, "ai_cid"), requirements=Requirements.parse(d.get("requirements")),
                nonce=_hex(d, "nonce", 32), deadline_ms=_uint(d, "deadline_ms"), bidding_ms=_uint(d, "bidding_ms", 60_000))
        if r.bidding_ms < 50:
            raise MessageError("bidding_ms: must be at least 50")
        return r


@dataclass(frozen=True)
class Offer:
    request_id: str
    backend: str
    tee: str
    price: int
    free_cpu: int
    free_memory: int
    addrs: tuple[str, ...] = field(default_factory=tuple)
    load: int = 0  # jobs running or queued at the provider when it offered

    @classmethod
    def parse(cls, d: dict[str, Any]) -> "Offer":
        _only(d, {"request_id", "backend", "tee", "price", "free_cpu", "free_memory", "addrs", "load"}, "offer")
        addrs = _get(d, "addrs", list)
        if len(addrs) > 16 or not all(isinstance(a, str) and a.startswith("/") and len(a) < 256 for a in addrs):
            raise MessageError("addrs: expected at most 16 multiaddr strings")
        o = cls(request_id=_hex(d, "request_id", 16), backend=_get(d, "backend", str), tee=_get(d, "tee", str),
                price=_uint(d, "price"), free_cpu=_uint(d, "free_cpu", 1024), free_memory=_uint(d, "free_memory", 1 << 44),
                addrs=tuple(addrs), load=_uint(d, "load", 1 << 20) if "load" in d else 0)
        if o.backend not in BACKENDS or o.tee not in TEES:
            raise MessageError("offer: unknown backend or tee")
        return o


@dataclass(frozen=True)
class Assignment:
    request_id: str
    provider: str
    attempt: int  # 0 for the first choice; +1 each time a provider is replaced
    attest_by_ms: int  # the provider must have an attested enclave by then
    excluded: tuple[str, ...] = ()  # providers that failed this request before

    @classmethod
    def parse(cls, d: dict[str, Any]) -> "Assignment":
        _only(d, {"request_id", "provider", "attempt", "attest_by_ms", "excluded"}, "assignment")
        ex = _get(d, "excluded", list)
        if len(ex) > 64:
            raise MessageError("excluded: too many")
        return cls(request_id=_hex(d, "request_id", 16), provider=_peer(d, "provider"), attempt=_uint(d, "attempt", 64),
                   attest_by_ms=_uint(d, "attest_by_ms"),
                   excluded=tuple(_peer({"p": p}, "p") for p in ex))


@dataclass(frozen=True)
class Failed:
    request_id: str
    reason: str

    @classmethod
    def parse(cls, d: dict[str, Any]) -> "Failed":
        _only(d, {"request_id", "reason"}, "failed")
        return cls(request_id=_hex(d, "request_id", 16), reason=_get(d, "reason", str)[:500])


@dataclass(frozen=True)
class Retry:
    """The consumer lost its provider mid-job and asks for the next-best offer."""

    request_id: str
    failed_provider: str
    attempt: int

    @classmethod
    def parse(cls, d: dict[str, Any]) -> "Retry":
        _only(d, {"request_id", "failed_provider", "attempt"}, "retry")
        return cls(request_id=_hex(d, "request_id", 16), failed_provider=_peer(d, "failed_provider"),
                   attempt=_uint(d, "attempt", 64))


@dataclass(frozen=True)
class Done:
    request_id: str
    ok: bool

    @classmethod
    def parse(cls, d: dict[str, Any]) -> "Done":
        _only(d, {"request_id", "ok"}, "done")
        return cls(request_id=_hex(d, "request_id", 16), ok=_get(d, "ok", bool))


@dataclass(frozen=True)
class Decline:
    """The assigned provider gives the job back, with its reason."""

    request_id: str
    attempt: int
    reason: str

    @classmethod
    def parse(cls, d: dict[str, Any]) -> "Decline":
        _only(d, {"request_id", "attempt", "reason"}, "decline")
        return cls(request_id=_hex(d, "request_id", 16), attempt=_uint(d, "attempt", 64),
                   reason=_get(d, "reason", str)[:500])


@dataclass(frozen=True)
class Attested:
    """The assigned provider's enclave holds a quorum-signed ACL entry. ``entry`` and
    ``signatures`` are checked as an AclEntry and AclSignatures where they are used
    (the consumer checks them against its request and the genesis DOS peers)."""

    request_id: str
    attempt: int
    provider: str
    cert_sha256: str  # hex SHA-256 of the enclave's RA-TLS certificate
    entry: dict[str, Any]
    signatures: list[dict[str, Any]]

    @classmethod
    def parse(cls, d: dict[str, Any]) -> "Attested":
        _only(d, {"request_id", "attempt", "provider", "cert_sha256", "entry", "signatures"}, "attested")
        sigs = _get(d, "signatures", list)
        if len(sigs) > 64 or not all(isinstance(s, dict) for s in sigs):
            raise MessageError("signatures: expected at most 64 objects")
        return cls(request_id=_hex(d, "request_id", 16), attempt=_uint(d, "attempt", 64),
                   provider=_peer(d, "provider"), cert_sha256=_hex(d, "cert_sha256", 32),
                   entry=_get(d, "entry", dict), signatures=sigs)
