"""Verify an enclave's RA-TLS certificate (consumer / DOS side; NOT trusted base).

:func:`verify_ratls_cert` checks everything that ties a TLS certificate to a
genuine, expected enclave for *this* request, and raises :class:`RaTlsError`
naming the failed check (``err.check``):

=================  ============================================================
``pin``            the certificate's SHA-256 equals ``expected_cert_sha256``
``certificate``    DER parses, P-256 key, self-signature valid, ``now`` inside validity
``quote-extension`` the legacy quote extension is present (once)
``quote-format``   ``layout.parse`` accepts it (strict: no trailing bytes)
``report-data``    report_data == SHA-256(cert SPKI DER || nonce) || 32 zero bytes
``debug``          no DEBUG attribute unless ``allow_debug``
``dcap``           ``dcap_qvl.verify_with_root_ca`` accepts the quote
``tcb-status``     the TCB status is in ``accepted_tcb_statuses``
``mrenclave``      MRENCLAVE is expected (and MRSIGNER, if given)
``dice``           the TCG DICE evidence (OID 2.23.133.5.4.9) is well formed,
                   its claims name this key and nonce, its quote's report_data is
                   SHA-256(claims) || zeros, the quote is from the same enclave
                   and verifies under DCAP too
=================  ============================================================

The TLS helpers run TLS 1.3 with ``CERT_NONE`` at the ``ssl`` layer (the
certificate is self-signed by design) and check the peer certificate right
after the handshake, before any data is sent: :func:`client_context` +
:func:`check_peer`, or :func:`open_trio_client` for a trio stream (e.g. a
libp2p stream relayed by the provider).  :func:`pyopenssl_context` does the
same check inside pyOpenSSL's verify callback, failing the handshake itself.

Collateral and trust anchor are given up front (``collateral``,
``root_ca_der``), or found from the quote itself by ``collateral_for(quote)
-> (collateral, root_ca_der)`` (a consumer on an SGX network looks up the
quote's FMSPC in its collateral cache); what ``collateral_for`` raises passes
through unchanged, so the caller can fetch missing collateral and retry.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import ssl
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from enclave import ratls
from enclave.quotes import layout
from enclave.runtime import tls as wire

__all__ = [
    "RaTlsError", "VerifiedEvidence", "Response", "verify_ratls_cert", "extract_evidence",
    "client_context", "check_peer", "open_trio_client", "trio_request", "parse_response_header", "verify_receipt", "pyopenssl_context",
]


class RaTlsError(Exception):
    """Verification failed; ``check`` names the failed check, ``reason`` says why."""

    def __init__(self, check: str, reason: str) -> None:
        super().__init__(f"{check}: {reason}")
        self.check, self.reason = check, reason


@dataclass(frozen=True)
class VerifiedEvidence:
    mrenclave: bytes
    mrsigner: bytes
    isv_prod_id: int
    isv_svn: int
    debug: bool
    tcb_status: str
    advisory_ids: tuple[str, ...]
    cert_der: bytes
    cert_sha256: str
    spki_der: bytes
    public_key: ec.EllipticCurvePublicKey = field(repr=False)
    quote: bytes = field(repr=False)
    not_after: dt.datetime


# ---- strict CBOR subset: what Gramine's tagged evidence uses


class _Cbor:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def head(self) -> tuple[int, int]:
        if self.pos >= len(self.data):
            raise ValueError("truncated CBOR")
        b = self.data[self.pos]
        self.pos += 1
        major, ai = b >> 5, b & 31
        if ai < 24:
            return major, ai
        size = {24: 1, 25: 2, 26: 4, 27: 8}.get(ai)
        if size is None or self.pos + size > len(self.data):
            raise ValueError("indefinite, reserved or truncated CBOR length")
        n = int.from_bytes(self.data[self.pos : self.pos + size], "big")
        self.pos += size
        return major, n

    def expect(self, major: int, what: str) -> int:
        got, n = self.head()
        if got != major:
            raise ValueError(f"{what}: CBOR major type {got}, expected {major}")
        return n

    def bstr(self, what: str) -> bytes:
        n = self.expect(2, what)
        if self.pos + n > len(self.data):
            raise ValueError(f"{what}: truncated")
        self.pos += n
        return self.data[self.pos - n : self.pos]

    def tstr(self, what: str) -> str:
        n = self.expect(3, what)
        self.pos += n
        return self.data[self.pos - n : self.pos].decode("utf-8")

    def done(self, what: str) -> None:
        if self.pos != len(self.data):
            raise ValueError(f"{what}: {len(self.data) - self.pos} trailing bytes")


def _parse_dice(evidence: bytes) -> tuple[bytes, bytes, dict[str, bytes]]:
    """(quote, claims bytes, {claim: bstr value}) from Gramine-format tagged evidence."""
    c = _Cbor(evidence)
    if c.expect(6, "evidence tag") != ratls.CBOR_TAG_SGX_QUOTE:
        raise ValueError(f"evidence tag is not {ratls.CBOR_TAG_SGX_QUOTE}")
    if c.expect(4, "evidence") != 2:
        raise ValueError("evidence is not a 2-element array")
    quote, claims = c.bstr("quote"), c.bstr("claims")
    c.done("evidence")
    m = _Cbor(claims)
    out: dict[str, bytes] = {}
    for _ in range(m.expect(5, "claims")):
        k = m.tstr("claim name")
        if k in out:
            raise ValueError(f"duplicate claim {k!r}")
        out[k] = m.bstr(f"claim {k!r}")
    m.done("claims")
    return quote, claims, out


# ---- the certificate


def extract_evidence(cert: x509.Certificate) -> tuple[bytes, bytes | None]:
    """(legacy quote, DICE evidence or None).  Raises RaTlsError('quote-extension')."""
    try:
        exts = cert.extensions
    except (ValueError, x509.DuplicateExtension) as exc:
        raise RaTlsError("quote-extension", f"bad extensions: {exc}") from None
    found = {e.oid: e.value for e in exts}
    legacy = found.get(ratls.LEGACY_QUOTE_OID)
    if legacy is None:
        raise RaTlsError("quote-extension", f"no SGX quote extension {ratls.LEGACY_QUOTE_OID.dotted_string}")
    dice = found.get(ratls.TCG_DICE_EVIDENCE_OID)
    return legacy.value, (dice.value if dice is not None else None)


def _dcap(quote: bytes, collateral: Any, root_ca_der: bytes, now: int, statuses: Iterable[str]) -> Any:
    import dcap_qvl

    try:
        report = dcap_qvl.verify_with_root_ca(quote, collateral, root_ca_der, now)
    except (ValueError, RuntimeError) as exc:
        raise RaTlsError("dcap", " ".join(str(exc).split())) from None
    if report.status not in statuses:
        raise RaTlsError("tcb-status", f"TCB status {report.status} not accepted "
                                       f"(advisories {', '.join(report.advisory_ids) or 'none'})")
    return report


def _same_enclave(a: layout.Quote, b: layout.Quote) -> bool:
    ra, rb = a.report_body, b.report_body
    strip = lambda r: r.to_bytes()[:-64]  # noqa: E731 - report_data is the last 64 bytes
    return a.header == b.header and strip(ra) == strip(rb)


def verify_ratls_cert(cert_der: bytes, *, expected_mrenclave: bytes | set[bytes] | frozenset[bytes], nonce: bytes,
                      root_ca_der: bytes | None = None, collateral: Any = None, now: float | None = None,
                      allow_debug: bool = False, expected_mrsigner: bytes | None = None,
                      accepted_tcb_statuses: Iterable[str] = ("UpToDate",),
                      expected_cert_sha256: str | bytes | None = None, require_dice: bool = True,
                      collateral_for: Callable[[bytes], tuple[Any, bytes]] | None = None) -> VerifiedEvidence:
    """Verify an RA-TLS certificate for one request; see the module docstring for the checks."""
    if collateral_for is None and (collateral is None or root_ca_der is None):
        raise TypeError("give collateral and root_ca_der, or collateral_for")
    now_s = int(time.time() if now is None else now)
    digest = hashlib.sha256(cert_der).hexdigest()
    if expected_cert_sha256 is not None:
        want = expected_cert_sha256.hex() if isinstance(expected_cert_sha256, bytes) else expected_cert_sha256.lower()
        if digest != want:
            raise RaTlsError("pin", f"certificate SHA-256 {digest} is not the pinned {want}")
    try:
        cert = x509.load_der_x509_certificate(cert_der)
        pub = cert.public_key()
        if not isinstance(pub, ec.EllipticCurvePublicKey) or pub.curve.name != "secp256r1":
            raise ValueError("key is not ECDSA P-256")
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm, x509.InvalidVersion) as exc:
        raise RaTlsError("certificate", f"{type(exc).__name__}: {exc}") from None
    when = dt.datetime.fromtimestamp(now_s, dt.timezone.utc)
    if not cert.not_valid_before_utc <= when <= cert.not_valid_after_utc:
        raise RaTlsError("certificate", f"not valid at {when:%Y-%m-%dT%H:%M:%SZ} "
                                        f"({cert.not_valid_before_utc} .. {cert.not_valid_after_utc})")
    spki = ratls.spki_der(pub)
    legacy, dice = extract_evidence(cert)
    try:
        q = layout.parse(legacy)
    except layout.QuoteFormatError as exc:
        raise RaTlsError("quote-format", str(exc)) from None
    if q.report_data != ratls.report_data(spki, bytes(nonce)):
        raise RaTlsError("report-data", "the quote does not bind this certificate's key and nonce "
                                        "(report_data != SHA-256(SPKI || nonce) || 0*32)")
    if q.debug and not allow_debug:
        raise RaTlsError("debug", "the quote is from a DEBUG enclave (its memory is readable by the host)")
    wanted = {expected_mrenclave} if isinstance(expected_mrenclave, (bytes, bytearray)) else set(expected_mrenclave)
    if q.mr_enclave not in wanted:
        raise RaTlsError("mrenclave", f"MRENCLAVE {q.mr_enclave.hex()} is not expected")
    if expected_mrsigner is not None and q.mr_signer != expected_mrsigner:
        raise RaTlsError("mrenclave", f"MRSIGNER {q.mr_signer.hex()} is not expected")
    statuses = tuple(accepted_tcb_statuses)
    if collateral_for is not None:
        collateral, root_ca_der = collateral_for(bytes(legacy))
    assert root_ca_der is not None
    report = _dcap(legacy, collateral, root_ca_der, now_s, statuses)
    if dice is None:
        if require_dice:
            raise RaTlsError("dice", f"no TCG DICE evidence extension {ratls.TCG_DICE_EVIDENCE_OID.dotted_string}")
    else:
        _verify_dice(dice, q, spki, bytes(nonce), collateral, root_ca_der, now_s, statuses)
    return VerifiedEvidence(
        mrenclave=q.mr_enclave, mrsigner=q.mr_signer, isv_prod_id=q.report_body.isv_prod_id,
        isv_svn=q.report_body.isv_svn, debug=q.debug, tcb_status=report.status,
        advisory_ids=tuple(report.advisory_ids), cert_der=bytes(cert_der), cert_sha256=digest, spki_der=spki,
        public_key=pub, quote=bytes(legacy), not_after=cert.not_valid_after_utc)


def _verify_dice(dice: bytes, q: layout.Quote, spki: bytes, nonce: bytes, collateral: Any, root: bytes,
                 now: int, statuses: tuple[str, ...]) -> None:
    try:
        quote, claims_raw, claims = _parse_dice(dice)
        entry = _Cbor(claims["pubkey-hash"])
        if entry.expect(4, "pubkey-hash") != 2 or entry.head() != (0, ratls.HASH_ALG_SHA256):
            raise ValueError("pubkey-hash is not [1 (sha-256), hash]")
        key_hash = entry.bstr("pubkey-hash value")
        entry.done("pubkey-hash")
        dq = layout.parse(quote)
    except (ValueError, KeyError, layout.QuoteFormatError) as exc:
        raise RaTlsError("dice", f"malformed TCG DICE evidence: {exc}") from None
    if key_hash != hashlib.sha256(spki).digest():
        raise RaTlsError("dice", "the pubkey-hash claim does not match the certificate's key")
    if claims.get("nonce") != nonce:
        raise RaTlsError("dice", "the nonce claim does not match the request nonce")
    if dq.report_data != ratls.dice_report_data(claims_raw):
        raise RaTlsError("dice", "the DICE quote's report_data is not SHA-256(claims) || 0*32")
    if not _same_enclave(q, dq):
        raise RaTlsError("dice", "the DICE quote is from another enclave than the legacy quote")
    try:
        _dcap(quote, collateral, root, now, statuses)
    except RaTlsError as exc:
        raise RaTlsError("dice", f"the DICE quote fails DCAP: {exc}") from None


# ---- TLS client side


def client_context() -> ssl.SSLContext:
    """TLS 1.3 only; no CA checks at the ssl layer: call :func:`check_peer` right after the handshake."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    return ctx


def check_peer(tls: Any, **verify: Any) -> VerifiedEvidence:
    """Verify the peer certificate of a finished handshake (``ssl.SSLSocket``/``SSLObject``/``trio.SSLStream``)."""
    der = tls.getpeercert(binary_form=True)
    if not der:
        raise RaTlsError("certificate", "the server sent no certificate")
    return verify_ratls_cert(der, **verify)


async def open_trio_client(transport: Any, **verify: Any) -> tuple[Any, VerifiedEvidence]:
    """TLS over a trio stream; verify the enclave before returning.  Closes the stream on failure."""
    import trio

    stream = trio.SSLStream(transport, client_context(), server_side=False)
    try:
        await stream.do_handshake()
        return stream, check_peer(stream, **verify)
    except BaseException:
        with trio.CancelScope(shield=True), trio.move_on_after(1):
            await transport.aclose()
        raise


@dataclass(frozen=True)
class Response:
    status: str
    output: bytes
    header: dict

    @property
    def error(self) -> str | None:
        return self.header.get("error")


async def _receive_exact(stream: Any, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = await stream.receive_some(n - len(buf))
        if not chunk:
            raise EOFError(f"enclave closed the connection after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


async def trio_request(stream: Any, data: bytes, *, max_output: int = 1 << 30) -> Response:
    """Send one input over an open RA-TLS stream and read the enclave's response."""
    await stream.send_all(wire.encode_request(data))
    (hlen,) = wire.RESP_HEADER.unpack(await _receive_exact(stream, wire.RESP_HEADER.size))
    if hlen > wire.MAX_RESPONSE_HEADER:
        raise RaTlsError("response", f"response header of {hlen} bytes")
    header = parse_response_header(await _receive_exact(stream, hlen), max_output=max_output)
    return Response(header["status"], await _receive_exact(stream, header["output_len"]), header)


def parse_response_header(raw: bytes, *, max_output: int = 1 << 30) -> dict:
    """The enclave's response header: a JSON object with a string ``status`` and an
    ``output_len`` in 0..max_output (0 when absent).  Raises RaTlsError('response')."""
    try:
        header = json.loads(bytes(raw).decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise RaTlsError("response", f"response header is not UTF-8 JSON: {exc}") from None
    if not isinstance(header, dict):
        raise RaTlsError("response", "response header is not a JSON object")
    n = header.get("output_len", 0)
    if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= max_output:
        raise RaTlsError("response", f"response output_len {str(n)[:40]} is not an integer in 0..{max_output}")
    if not isinstance(header.get("status"), str):
        raise RaTlsError("response", "response header has no string status")
    return {**header, "output_len": n}


def verify_receipt(resp: Response, evidence: VerifiedEvidence, data: bytes, *, request_id: str | None = None) -> dict:
    """Check the receipt's signature (enclave key) and that it covers this input and output."""
    receipt, sig = resp.header.get("receipt"), resp.header.get("signature")
    if resp.status != "ok" or not isinstance(receipt, dict) or not isinstance(sig, str):
        raise RaTlsError("receipt", f"no receipt (status {resp.status}: {resp.error})")
    try:
        evidence.public_key.verify(base64.b64decode(sig), wire.canonical(receipt), ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError) as exc:
        raise RaTlsError("receipt", f"bad signature: {exc!r}") from None
    expect = {"input_sha256": hashlib.sha256(data).hexdigest(), "output_sha256": hashlib.sha256(resp.output).hexdigest(),
              "mrenclave": evidence.mrenclave.hex()}
    if request_id is not None:
        expect["request_id"] = request_id
    for k, v in expect.items():
        if receipt.get(k) != v:
            raise RaTlsError("receipt", f"{k} is {receipt.get(k)!r}, expected {v!r}")
    return receipt


def pyopenssl_context(**verify: Any) -> Any:
    """A pyOpenSSL client context whose verify callback runs :func:`verify_ratls_cert` on the leaf.

    A bad enclave fails the handshake itself.  After the handshake,
    ``conn.get_app_data()`` holds the :class:`VerifiedEvidence` (set the app
    data to ``None`` before connecting).
    """
    from OpenSSL import SSL

    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_3_VERSION)

    def callback(conn: Any, cert: Any, errno: int, depth: int, ok: int) -> bool:
        if depth != 0:
            return False  # RA-TLS certificates are self-signed leaves: no chain
        der = cert.to_cryptography().public_bytes(serialization.Encoding.DER)
        done = conn.get_app_data()
        if isinstance(done, VerifiedEvidence) and done.cert_der == der:
            return True
        try:
            conn.set_app_data(verify_ratls_cert(der, **verify))
            return True
        except RaTlsError as exc:
            conn.set_app_data(exc)
            return False

    ctx.set_verify(SSL.VERIFY_PEER, callback)
    return ctx
