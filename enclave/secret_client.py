"""The enclave's half of the Secret Store protocol: ask for shares, open them, rebuild the AI key.

This module is written for the in-enclave runtime (trusted base): it imports
only the standard library, ``cryptography`` and, to combine Shamir shares,
pycryptodome's ``Crypto.Protocol.SecretSharing`` (the same implementation the
publisher splits with; see docs/secret-store.md). Nothing from ``node/``, so it
can move into ``enclave/`` unchanged. ``node.secrets`` imports its wire
constants from here, so both sides share one definition.

Flow (secure-flow steps 10-11)::

    hpke = new_hpke_key()
    req = build_share_request(acl_entry, dos_signatures, enclave_key, hpke)
    # ... the relay sends req to the secrets peers, collects their answers ...
    shares = [open_share(ans, hpke, acl_entry, trusted_peers=secrets_peers) for ans in answers]
    key = rebuild_key(shares)          # bytearray; zero(key) when done

* The request is signed (ECDSA P-256/SHA-256, DER) by the enclave's RA-TLS
  key over ``REQUEST_DOMAIN || JSON{acl_entry, hpke_pub}``; the DOS-signed ACL
  entry names that key's SPKI hash, so the signature binds the X25519 HPKE
  key to the attested enclave.
* Each share comes sealed with HPKE (RFC 9180 base mode,
  DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM) to that HPKE key; the
  HPKE ``info`` is ``SHARE_INFO_DOMAIN || JSON(metadata)`` (AI, request,
  enclave key hash, index, version, threshold, secrets peer, key check), so
  metadata changed in transit makes opening fail. The secrets peer also signs
  (ed25519, its node key) the metadata and the sealed bytes, so a relay cannot
  substitute shares of its own.
* Shares: share i of a 32-byte key is the Shamir share i of the key's first
  16 bytes followed by share i of its last 16 bytes (pycryptodome's Shamir
  works on 16-byte secrets, in GF(2^128)). ``key_check`` =
  SHA-256(KEY_CHECK_DOMAIN || key) lets :func:`rebuild_key` recognise the right
  key and skip a bad share when more than t arrived.

Python cannot promise to erase memory: :func:`zero` overwrites the
bytearrays this module hands out (shares, the key) and the intermediate
bytearrays it makes; immutable ``bytes`` that cryptography and pycryptodome
return internally are dropped as soon as possible but not wiped.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
from dataclasses import dataclass, field
from typing import Any, Callable, Collection, Iterable, Mapping, Sequence

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import ec, x25519
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

__all__ = [
    "REQUEST_DOMAIN", "SHARE_INFO_DOMAIN", "RESPONSE_DOMAIN", "KEY_CHECK_DOMAIN", "SUITE", "KEY_SIZE", "SHARE_SIZE",
    "ShareError", "OpenedShare", "canonical_json", "key_check", "request_signing_bytes", "share_info",
    "response_signing_bytes", "new_hpke_key", "spki_der", "build_share_request", "open_share", "rebuild_key",
    "combine_shares", "zero", "ed25519_key_from_peer_id",
]

REQUEST_DOMAIN = b"ofnode/secrets/share-request/v1\n"
SHARE_INFO_DOMAIN = b"ofnode/secrets/share/v1\n"
RESPONSE_DOMAIN = b"ofnode/secrets/share-response/v1\n"
KEY_CHECK_DOMAIN = b"ofnode/ai-key-check/v1\n"
KEY_SIZE = 32
SHARE_SIZE = 32
#: HPKE suite for sealed shares: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM.
SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
META_FIELDS = ("ai_cid", "request_id", "enclave_key_sha256", "index", "version", "threshold", "secrets_peer",
               "key_check")
_MAX_COMBINATIONS = 1024


class ShareError(ValueError):
    """A share answer cannot be used; the text says why."""


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def zero(buf: bytearray | memoryview | None) -> None:
    """Overwrite a mutable buffer with zero bytes."""
    if buf is not None:
        buf[:] = bytes(len(buf))


def key_check(key: bytes | bytearray) -> str:
    """Hex SHA-256(KEY_CHECK_DOMAIN || key): identifies the right key without revealing it."""
    h = hashlib.sha256(KEY_CHECK_DOMAIN)
    h.update(key)  # no immutable copy of the key
    return h.hexdigest()


def request_signing_bytes(acl_entry: Mapping[str, Any], hpke_pub: bytes) -> bytes:
    return REQUEST_DOMAIN + canonical_json({"acl_entry": dict(acl_entry), "hpke_pub": bytes(hpke_pub).hex()})


def share_info(meta: Mapping[str, Any]) -> bytes:
    return SHARE_INFO_DOMAIN + canonical_json({k: meta[k] for k in META_FIELDS})


def response_signing_bytes(meta: Mapping[str, Any], sealed: bytes) -> bytes:
    return RESPONSE_DOMAIN + canonical_json({"meta": {k: meta[k] for k in META_FIELDS},
                                             "sealed_sha256": hashlib.sha256(sealed).hexdigest()})


def new_hpke_key() -> x25519.X25519PrivateKey:
    return x25519.X25519PrivateKey.generate()


def spki_der(key: ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) -> bytes:
    pub = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
    return pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _hpke_pub(key: x25519.X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def build_share_request(acl_entry: Mapping[str, Any], dos_signatures: Sequence[Mapping[str, Any]],
                        enclave_key: ec.EllipticCurvePrivateKey, hpke_key: x25519.X25519PrivateKey) -> dict[str, Any]:
    """The message an enclave sends to every secrets peer (the same one to all)."""
    pub = _hpke_pub(hpke_key)
    sig = enclave_key.sign(request_signing_bytes(acl_entry, pub), ec.ECDSA(hashes.SHA256()))
    return {
        "acl_entry": dict(acl_entry),
        "dos_signatures": [dict(s) for s in dos_signatures],
        "enclave_key_spki": base64.b64encode(spki_der(enclave_key)).decode(),
        "hpke_pub": pub.hex(),
        "signature": base64.b64encode(sig).decode(),
    }


# -- peer ids (ed25519 identity multihash, base58btc) without node/ imports ----------------
_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_ED25519_PEER_PREFIX = bytes([0x00, 36, 0x08, 0x01, 0x12, 32])


def ed25519_key_from_peer_id(peer_id: str) -> Ed25519PublicKey:
    if not isinstance(peer_id, str) or not 1 <= len(peer_id) <= 64:
        raise ShareError("not a peer id")
    n = 0
    for ch in peer_id:
        i = _B58.find(ch)
        if i < 0:
            raise ShareError("not a peer id")
        n = n * 58 + i
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    raw = b"\0" * (len(peer_id) - len(peer_id.lstrip("1"))) + raw
    if len(raw) != 38 or raw[:6] != _ED25519_PEER_PREFIX:
        raise ShareError("not an ed25519 peer id")
    return Ed25519PublicKey.from_public_bytes(raw[6:])


# -- opening shares --------------------------------------------------------------------
@dataclass
class OpenedShare:
    peer: str
    index: int
    version: int
    threshold: int
    key_check: str
    value: bytearray = field(repr=False)


def _meta(share: Any) -> dict[str, Any]:
    if not isinstance(share, dict):
        raise ShareError("answer has no share object")
    meta = {}
    for k in META_FIELDS:
        if k not in share:
            raise ShareError(f"share lacks {k}")
        meta[k] = share[k]
    for k in ("index", "version", "threshold"):
        v = meta[k]
        if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v < 2**31:
            raise ShareError(f"share.{k} is not a positive integer")
    for k in ("ai_cid", "request_id", "enclave_key_sha256", "secrets_peer", "key_check"):
        if not isinstance(meta[k], str) or len(meta[k]) > 256:
            raise ShareError(f"share.{k} is not a string")
    return meta


def open_share(answer: Mapping[str, Any], hpke_key: x25519.X25519PrivateKey, acl_entry: Mapping[str, Any], *,
               trusted_peers: Collection[str] | None = None) -> OpenedShare:
    """Check and open one secrets peer's answer; raises ShareError.

    The metadata must name this request's AI, request id and enclave key; the
    secrets peer's signature must verify (and the peer be in
    ``trusted_peers``, the genesis' secrets peers, when given).
    """
    if not isinstance(answer, Mapping) or answer.get("ok") is not True:
        err = answer.get("error") if isinstance(answer, Mapping) else None
        raise ShareError(f"refused: {str(err)[:300]}" if err else "not a share answer")
    share = answer.get("share")
    meta = _meta(share)
    if meta["ai_cid"] != acl_entry.get("ai_cid") or meta["request_id"] != acl_entry.get("request_id"):
        raise ShareError("the share is for another AI or request")
    if meta["enclave_key_sha256"] != acl_entry.get("enclave_key_sha256"):
        raise ShareError("the share is sealed for another enclave key")
    if trusted_peers is not None and meta["secrets_peer"] not in trusted_peers:
        raise ShareError(f"{meta['secrets_peer'][:60]} is not a secrets peer of this network")
    try:
        sealed = base64.b64decode(str(share.get("sealed", "")), validate=True)
        sig = bytes.fromhex(str(answer.get("sig", "")))
    except ValueError:
        raise ShareError("sealed share or signature is not encoded properly") from None
    try:
        ed25519_key_from_peer_id(meta["secrets_peer"]).verify(sig, response_signing_bytes(meta, sealed))
    except (InvalidSignature, ValueError):
        raise ShareError("the secrets peer's signature does not verify") from None
    try:
        plain = SUITE.decrypt(sealed, hpke_key, info=share_info(meta))
    except (InvalidTag, ValueError, TypeError):
        raise ShareError("the sealed share does not open with this enclave's HPKE key") from None
    value = bytearray(plain)
    del plain
    if len(value) != SHARE_SIZE:
        zero(value)
        raise ShareError(f"share is {len(value)} bytes, not {SHARE_SIZE}")
    return OpenedShare(peer=meta["secrets_peer"], index=meta["index"], version=meta["version"],
                       threshold=meta["threshold"], key_check=meta["key_check"], value=value)


def combine_shares(pairs: Sequence[tuple[int, bytes | bytearray]]) -> bytearray:
    """Rebuild a 32-byte key from (index, 32-byte share) pairs: two 16-byte Shamir secrets."""
    from Crypto.Protocol.SecretSharing import Shamir

    lo = Shamir.combine([(i, bytes(v[:16])) for i, v in pairs])
    hi = Shamir.combine([(i, bytes(v[16:])) for i, v in pairs])
    out = bytearray(lo)
    out += hi
    del lo, hi
    return out


def rebuild_key(shares: Iterable[OpenedShare], *,
                combine: Callable[[Sequence[tuple[int, bytearray]]], bytearray] = combine_shares) -> bytearray:
    """The AI key from opened shares (zeroes every share buffer); raises ShareError.

    Uses the newest key version with at least ``threshold`` shares from
    distinct indices; with more than ``threshold`` it tries subsets until the
    key matches ``key_check``, so one bad share among t+1 does no harm.
    """
    shares = list(shares)
    try:
        groups: dict[tuple[int, int, str], dict[int, OpenedShare]] = {}
        for s in shares:
            groups.setdefault((s.version, s.threshold, s.key_check), {}).setdefault(s.index, s)
        usable = sorted((k for k, g in groups.items() if len(g) >= k[1]), reverse=True)
        if not usable:
            have = ", ".join(f"v{k[0]}: {len(g)} of {k[1]}" for k, g in groups.items()) or "none"
            raise ShareError(f"not enough shares to rebuild the key ({have})")
        for version, t, check in usable:
            group = sorted(groups[(version, t, check)].values(), key=lambda s: s.index)
            for n, subset in enumerate(itertools.combinations(group, t)):
                if n >= _MAX_COMBINATIONS:
                    break
                try:
                    key = combine([(s.index, s.value) for s in subset])
                except ValueError:
                    continue
                if hmac.compare_digest(key_check(key), check):
                    return key
                zero(key)
        raise ShareError("no subset of the shares rebuilds a key matching its key check (bad shares)")
    finally:
        for s in shares:
            zero(s.value)
