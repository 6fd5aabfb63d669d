"""Signed gossip envelopes: the only thing ofnode puts on GossipSub.

GossipSub signs messages too, but only hop-by-hop provenance of the libp2p
message; the envelope binds the *application* content to its author, to one
network, and to a moment in time, and its id (SHA-256 of the signed body) is
what the application de-duplicates on. ``open_envelope`` is the single gate
every gossiped byte passes: it never raises anything but ``EnvelopeRejected``.
"""
from __future__ import annotations

import hashlib
import os
import re
import time
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from ..identity import Identity, peer_id_to_str, verify_by_peer_id
from .envelope_pb2 import Envelope, EnvelopeBody

SIGN_CONTEXT = b"ofnode/envelope/v1\n"
NONCE_BYTES = 16
_TYPE = re.compile(r"[a-z][a-z0-9._-]{0,63}")

# Rejection reasons, also the label values of the rejected-messages metric.
OVERSIZE = "oversize"
MALFORMED = "malformed"
BAD_SIGNATURE = "bad_signature"
WRONG_NETWORK = "wrong_network"
STALE = "stale"
FUTURE = "future"
REASONS = (OVERSIZE, MALFORMED, BAD_SIGNATURE, WRONG_NETWORK, STALE, FUTURE)


class EnvelopeRejected(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class SignedMessage:
    id: str  # hex SHA-256 of the signed body
    type: str
    sender: str  # base58 peer id
    timestamp_ms: int
    payload: bytes


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def seal(identity: Identity, network_id: str, type_: str, payload: bytes, timestamp_ms: int | None = None) -> bytes:
    """Build and sign an envelope; returns its wire bytes."""
    if not _TYPE.fullmatch(type_):
        raise ValueError(f"invalid message type {type_!r}")
    body = EnvelopeBody(
        network_id=network_id,
        type=type_,
        timestamp_ms=now_ms() if timestamp_ms is None else timestamp_ms,
        sender=identity.peer_id_bytes,
        nonce=os.urandom(NONCE_BYTES),
        payload=payload,
    ).SerializeToString()
    return Envelope(body=body, signature=identity.sign(SIGN_CONTEXT + body)).SerializeToString()


def message_id(raw: bytes) -> str:
    """Id of an envelope's wire bytes without verifying it (for logs); '' if undecodable."""
    try:
        env = Envelope.FromString(raw)
    except DecodeError:
        return ""
    return hashlib.sha256(env.body).hexdigest()


def open_envelope(
    raw: bytes,
    network_id: str,
    *,
    max_bytes: int,
    max_age_ms: int,
    max_future_ms: int,
    now: int | None = None,
) -> SignedMessage:
    """Check size, encoding, network, freshness and signature, cheapest first."""
    if len(raw) > max_bytes:
        raise EnvelopeRejected(OVERSIZE, f"{len(raw)} bytes > {max_bytes}")
    try:
        env = Envelope.FromString(raw)
        body = EnvelopeBody.FromString(env.body)
    except (DecodeError, ValueError) as e:
        raise EnvelopeRejected(MALFORMED, f"not an envelope ({e})") from None
    if len(body.nonce) != NONCE_BYTES or not _TYPE.fullmatch(body.type) or len(env.signature) != 64:
        raise EnvelopeRejected(MALFORMED, "bad nonce, type or signature length")
    if body.network_id != network_id:
        raise EnvelopeRejected(WRONG_NETWORK, f"network {body.network_id[:64]!r}, expected {network_id!r}")
    t = now_ms() if now is None else now
    if body.timestamp_ms < t - max_age_ms:
        raise EnvelopeRejected(STALE, f"{(t - body.timestamp_ms) / 1000:.1f} s old")
    if body.timestamp_ms > t + max_future_ms:
        raise EnvelopeRejected(FUTURE, f"{(body.timestamp_ms - t) / 1000:.1f} s in the future")
    if not verify_by_peer_id(body.sender, env.signature, SIGN_CONTEXT + env.body):
        raise EnvelopeRejected(BAD_SIGNATURE, "signature does not verify against the sender's peer id")
    return SignedMessage(
        id=hashlib.sha256(env.body).hexdigest(),
        type=body.type,
        sender=peer_id_to_str(body.sender),
        timestamp_ms=body.timestamp_ms,
        payload=body.payload,
    )
