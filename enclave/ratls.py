"""RA-TLS certificates made inside the enclave (Gramine-compatible layout).

The enclave makes a fresh ECDSA P-256 key per job and a self-signed X.509
certificate for it that carries the SGX quote in two extensions, as Gramine
1.8+ does:

* **legacy** (Gramine's non-standard OID, ``LEGACY_QUOTE_OID``): the raw
  quote bytes as extnValue.  Gramine's C code passes the OID *with* its DER
  tag and length bytes (``06 09 2A 86 48 86 F8 4D 8A 39 06``) as OID content,
  so the OID actually on the wire is ``0.6.9.42.840.113741.1337.6``; we write
  the same bytes so Gramine tooling finds it.  Its report_data is
  ``SHA-256(SPKI DER || nonce) || 32 zero bytes``: ofnode binds the request
  nonce (Gramine binds only ``SHA-256(SPKI)``; its legacy verifier would
  therefore reject this quote, and that is intended).
* **TCG DICE tagged evidence** (OID ``2.23.133.5.4.9``), exactly Gramine's
  CBOR shape::

      60000([ bstr quote, bstr claims ])
      claims = { "nonce": bstr nonce, "pubkey-hash": bstr [1, bstr SHA-256(SPKI DER)] }

  (``pubkey-hash`` holds the *serialized* hash-entry array; 1 is SHA-256 in
  IANA's named-information registry.)  This quote's report_data is
  ``SHA-256(claims) || 32 zero bytes``, so a stock Gramine verifier accepts it
  (it ignores the extra ``nonce`` claim, which carries our freshness).

Both quotes come from the same enclave and differ only in report_data.
Standard library + ``cryptography`` only (trusted base).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

LEGACY_QUOTE_OID = x509.ObjectIdentifier("0.6.9.42.840.113741.1337.6")
TCG_DICE_EVIDENCE_OID = x509.ObjectIdentifier("2.23.133.5.4.9")
CBOR_TAG_SGX_QUOTE = 60000  # Gramine's TCG_DICE_TAGGED_EVIDENCE_TEE_QUOTE_CBOR_TAG
HASH_ALG_SHA256 = 1  # IANA named-information hash algorithm registry
VALIDITY = dt.timedelta(days=1)
SUBJECT = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ofnode enclave"),
                     x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ofnode RA-TLS")])


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def spki_der(key: ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) -> bytes:
    """DER SubjectPublicKeyInfo of the (public half of the) key."""
    pub = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
    return pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def report_data(spki: bytes, nonce: bytes) -> bytes:
    """The legacy quote's report data: SHA-256(SPKI DER || nonce) || 32 zero bytes."""
    return hashlib.sha256(spki + nonce).digest() + bytes(32)


# ---- minimal CBOR (RFC 8949), definite lengths only


def _head(major: int, n: int) -> bytes:
    if n < 24:
        return bytes([major << 5 | n])
    for ai, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if n < 1 << (8 * size):
            return bytes([major << 5 | ai]) + n.to_bytes(size, "big")
    raise ValueError("CBOR argument too large")


def cbor_uint(n: int) -> bytes:
    return _head(0, n)


def cbor_bstr(b: bytes) -> bytes:
    return _head(2, len(b)) + b


def cbor_tstr(s: str) -> bytes:
    raw = s.encode()
    return _head(3, len(raw)) + raw


def cbor_array(*items: bytes) -> bytes:
    return _head(4, len(items)) + b"".join(items)


def cbor_map(pairs: list[tuple[bytes, bytes]]) -> bytes:
    """Map of already-encoded pairs, in deterministic order (sorted by encoded key)."""
    return _head(5, len(pairs)) + b"".join(k + v for k, v in sorted(pairs))


def dice_claims(spki: bytes, nonce: bytes) -> bytes:
    hash_entry = cbor_array(cbor_uint(HASH_ALG_SHA256), cbor_bstr(hashlib.sha256(spki).digest()))
    return cbor_map([(cbor_tstr("pubkey-hash"), cbor_bstr(hash_entry)), (cbor_tstr("nonce"), cbor_bstr(nonce))])


def dice_report_data(claims: bytes) -> bytes:
    return hashlib.sha256(claims).digest() + bytes(32)


def dice_evidence(quote: bytes, claims: bytes) -> bytes:
    return _head(6, CBOR_TAG_SGX_QUOTE) + cbor_array(cbor_bstr(quote), cbor_bstr(claims))


# ---- the certificate


def build_cert(key: ec.EllipticCurvePrivateKey, legacy_quote: bytes, evidence: bytes, *,
               now: dt.datetime | None = None, validity: dt.timedelta = VALIDITY) -> bytes:
    """Self-signed RA-TLS certificate (DER) for ``key`` with both quote extensions."""
    now = now or dt.datetime.now(dt.timezone.utc)
    pub = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(SUBJECT)
        .issuer_name(SUBJECT)
        .public_key(pub)
        .serial_number(int.from_bytes(os.urandom(16), "big") >> 1 | 1)
        .not_valid_before(now - dt.timedelta(minutes=5))  # tolerate slightly slow peer clocks
        .not_valid_after(now + validity)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False)
        .add_extension(x509.UnrecognizedExtension(LEGACY_QUOTE_OID, legacy_quote), critical=False)
        .add_extension(x509.UnrecognizedExtension(TCG_DICE_EVIDENCE_OID, evidence), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.DER)


def make_evidence(key: ec.EllipticCurvePrivateKey, nonce: bytes, get_quote) -> tuple[bytes, bytes]:
    """Get both quotes through ``get_quote(report_data) -> quote``; return (cert DER, legacy quote)."""
    spki = spki_der(key)
    quote = get_quote(report_data(spki, nonce))
    claims = dice_claims(spki, nonce)
    dice_quote = get_quote(dice_report_data(claims))
    return build_cert(key, quote, dice_evidence(dice_quote, claims)), quote
