"""RA-TLS certificates: Gramine's extension layout, and every verifier check failing for its reason."""

from __future__ import annotations

import datetime as dt
import hashlib
import os

import pytest
from cryptography import x509

from enclave import ratls
from enclave import ratls_verify as rv
from enclave.quotes import layout
from enclave.quotes.sim_pki import SimPki
from enclave.quotes.sim_qe import SimQuotingEnclave

from .conftest import NOW

MRENCLAVE = hashlib.sha256(b"some enclave").digest()
NONCE = bytes(range(32))


def make(qe, *, key=None, nonce=NONCE, mrenclave=MRENCLAVE, debug=False, **cert_kw):
    key = key or ratls.new_key()
    cert, _ = ratls.make_evidence(key, nonce, lambda rd: qe.quote(mrenclave, rd, debug=debug))
    return key, cert


def verify(cert, verify_kwargs, **kw):
    args = {"expected_mrenclave": MRENCLAVE, "nonce": NONCE, **verify_kwargs, **kw}
    return rv.verify_ratls_cert(cert, **args)


def check_of(cert, verify_kwargs, **kw) -> str:
    with pytest.raises(rv.RaTlsError) as err:
        verify(cert, verify_kwargs, **kw)
    return err.value.check


def test_good_cert_verifies(qe, verify_kwargs) -> None:
    key, cert = make(qe)
    ev = verify(cert, verify_kwargs)
    assert ev.mrenclave == MRENCLAVE and not ev.debug and ev.tcb_status == "UpToDate"
    assert ev.spki_der == ratls.spki_der(key)
    assert ev.cert_sha256 == hashlib.sha256(cert).hexdigest()
    assert verify(cert, verify_kwargs, expected_mrenclave={bytes(32), MRENCLAVE}).mrenclave == MRENCLAVE


def test_extension_bytes_are_gramines(qe) -> None:
    """Same OID bytes and value layout as Gramine's ra_tls_attest.c (legacy + TCG DICE)."""
    key, cert = make(qe)
    # Gramine's legacy OID content is literally 06 09 2A 86 48 86 F8 4D 8A 39 06 (tag and length included).
    assert bytes.fromhex("060b06092a864886f84d8a3906") in cert
    assert bytes.fromhex("0606678105050409") in cert  # 2.23.133.5.4.9
    c = x509.load_der_x509_certificate(cert)
    legacy = c.extensions.get_extension_for_oid(ratls.LEGACY_QUOTE_OID)
    dice = c.extensions.get_extension_for_oid(ratls.TCG_DICE_EVIDENCE_OID)
    assert not legacy.critical and not dice.critical
    quote = layout.parse(legacy.value.value)
    assert quote.report_data == hashlib.sha256(ratls.spki_der(key) + NONCE).digest() + bytes(32)
    ev = dice.value.value
    assert ev[:3] == b"\xd9\xea\x60"  # CBOR tag 60000
    assert ev[3] == 0x82  # array of two
    q2, claims, parsed = rv._parse_dice(ev)
    assert parsed["nonce"] == NONCE
    assert parsed["pubkey-hash"] == b"\x82\x01\x58\x20" + hashlib.sha256(ratls.spki_der(key)).digest()
    assert claims.startswith(b"\xa2\x65nonce")  # deterministic map order: shorter key first
    assert layout.parse(q2).report_data == hashlib.sha256(claims).digest() + bytes(32)


def test_cbor_heads() -> None:
    assert ratls.cbor_uint(23) == b"\x17"
    assert ratls.cbor_uint(24) == b"\x18\x18"
    assert ratls.cbor_uint(256) == b"\x19\x01\x00"
    assert ratls.cbor_bstr(b"a" * 70000)[:5] == b"\x5a\x00\x01\x11\x70"
    assert ratls.cbor_tstr("é") == b"\x62\xc3\xa9"


def test_key_not_bound_in_quote_is_rejected(qe, verify_kwargs) -> None:
    """A quote for key A inside a certificate for key B (e.g. a host swapping keys)."""
    key_a, key_b = ratls.new_key(), ratls.new_key()
    quote = qe.quote(MRENCLAVE, ratls.report_data(ratls.spki_der(key_a), NONCE))
    claims = ratls.dice_claims(ratls.spki_der(key_a), NONCE)
    dice = ratls.dice_evidence(qe.quote(MRENCLAVE, ratls.dice_report_data(claims)), claims)
    cert = ratls.build_cert(key_b, quote, dice)
    assert check_of(cert, verify_kwargs) == "report-data"


def test_dice_evidence_for_another_key_is_rejected(qe, verify_kwargs) -> None:
    key, other = ratls.new_key(), ratls.new_key()
    spki = ratls.spki_der(key)
    quote = qe.quote(MRENCLAVE, ratls.report_data(spki, NONCE))
    claims = ratls.dice_claims(ratls.spki_der(other), NONCE)
    dice = ratls.dice_evidence(qe.quote(MRENCLAVE, ratls.dice_report_data(claims)), claims)
    with pytest.raises(rv.RaTlsError, match="pubkey-hash claim does not match"):
        verify(ratls.build_cert(key, quote, dice), verify_kwargs)


@pytest.mark.parametrize("mutate, message", [
    (lambda q, c: (q, c.replace(NONCE, bytes(32))), "nonce claim does not match"),
    (lambda q, c: (q[:48 + 320] + bytes(64) + q[48 + 384 :], c), "report_data is not SHA-256\\(claims\\)"),
    (lambda q, c: (q + b"\0", c), "malformed TCG DICE evidence"),
    (lambda q, c: (q, c + b"\0"), "malformed TCG DICE evidence"),
])
def test_tampered_dice_evidence_is_rejected(qe, verify_kwargs, mutate, message) -> None:
    key = ratls.new_key()
    spki = ratls.spki_der(key)
    quote = qe.quote(MRENCLAVE, ratls.report_data(spki, NONCE))
    claims = ratls.dice_claims(spki, NONCE)
    dq, c = mutate(qe.quote(MRENCLAVE, ratls.dice_report_data(claims)), claims)
    with pytest.raises(rv.RaTlsError, match=message) as err:
        verify(ratls.build_cert(key, quote, ratls.dice_evidence(dq, c)), verify_kwargs)
    assert err.value.check == "dice"


def test_dice_quote_from_another_enclave_is_rejected(qe, verify_kwargs) -> None:
    key = ratls.new_key()
    spki = ratls.spki_der(key)
    claims = ratls.dice_claims(spki, NONCE)
    cert = ratls.build_cert(key, qe.quote(MRENCLAVE, ratls.report_data(spki, NONCE)),
                            ratls.dice_evidence(qe.quote(bytes(32), ratls.dice_report_data(claims)), claims))
    with pytest.raises(rv.RaTlsError, match="another enclave"):
        verify(cert, verify_kwargs)


def test_missing_dice_only_with_require_dice_false(qe, verify_kwargs) -> None:
    key = ratls.new_key()
    quote = qe.quote(MRENCLAVE, ratls.report_data(ratls.spki_der(key), NONCE))
    cert = ratls.build_cert(key, quote, b"")
    assert check_of(cert, verify_kwargs) == "dice"
    # an absent extension (not an empty one) is accepted when DICE is not required
    import cryptography.x509 as x
    from cryptography.hazmat.primitives import hashes, serialization

    c = x509.load_der_x509_certificate(cert)
    b = (x.CertificateBuilder().subject_name(c.subject).issuer_name(c.issuer).public_key(key.public_key())
         .serial_number(1).not_valid_before(c.not_valid_before_utc).not_valid_after(c.not_valid_after_utc)
         .add_extension(x.UnrecognizedExtension(ratls.LEGACY_QUOTE_OID, quote), critical=False))
    bare = b.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)
    assert check_of(bare, verify_kwargs) == "dice"
    assert verify(bare, verify_kwargs, require_dice=False).mrenclave == MRENCLAVE


def test_wrong_nonce_is_rejected(qe, verify_kwargs) -> None:
    _, cert = make(qe)
    assert check_of(cert, verify_kwargs, nonce=os.urandom(32)) == "report-data"


def test_wrong_mrenclave_is_rejected(qe, verify_kwargs) -> None:
    _, cert = make(qe, mrenclave=bytes(32))
    assert check_of(cert, verify_kwargs) == "mrenclave"
    _, cert = make(qe)
    assert check_of(cert, verify_kwargs, expected_mrsigner=bytes(32)) == "mrenclave"


def test_debug_enclave_is_rejected(qe, verify_kwargs) -> None:
    _, cert = make(qe, debug=True)
    assert check_of(cert, verify_kwargs) == "debug"
    # allow_debug relaxes our check, but dcap_qvl 0.7 always refuses DEBUG quotes
    assert check_of(cert, verify_kwargs, allow_debug=True) == "dcap"


def test_other_networks_root_is_rejected(qe, verify_kwargs) -> None:
    _, cert = make(qe)
    other = SimPki.generate("another-net", now=NOW)
    assert check_of(cert, {**verify_kwargs, "root_ca_der": other.root_cert_der}) == "dcap"


def test_out_of_date_tcb_needs_acceptance(pki, verify_kwargs) -> None:
    from enclave.quotes.sim_pki import TcbLevel

    qe = SimQuotingEnclave(pki, seed=b"old-platform", now=NOW)
    _, cert = make(qe)
    levels = [TcbLevel(cpu_svn=b"\xff" * 16, pce_svn=qe.platform.pce_svn + 1, status="UpToDate"),
              TcbLevel(cpu_svn=qe.platform.cpu_svn, pce_svn=qe.platform.pce_svn, status="OutOfDate")]
    collateral = qe.collateral(now=NOW, tcb_levels=levels)
    kwargs = {**verify_kwargs, "collateral": collateral}
    assert check_of(cert, kwargs) == "tcb-status"
    assert verify(cert, kwargs, accepted_tcb_statuses={"UpToDate", "OutOfDate"}).tcb_status == "OutOfDate"


def test_pin_and_garbage(qe, verify_kwargs) -> None:
    _, cert = make(qe)
    assert check_of(cert, verify_kwargs, expected_cert_sha256="ab" * 32) == "pin"
    assert verify(cert, verify_kwargs, expected_cert_sha256=hashlib.sha256(cert).digest()).cert_der == cert
    assert check_of(b"\x30\x03junk", verify_kwargs) == "certificate"
    assert check_of(cert[:-1] + bytes([cert[-1] ^ 1]), verify_kwargs) == "certificate"  # signature broken


def test_expired_certificate(qe, verify_kwargs) -> None:
    _, cert = make(qe)
    later = NOW + 2 * 86400
    assert check_of(cert, {**verify_kwargs, "now": later}) == "certificate"


def test_quote_with_trailing_bytes_is_rejected(qe, verify_kwargs) -> None:
    """dcap_qvl ignores appended bytes; layout.parse must not."""
    key = ratls.new_key()
    spki = ratls.spki_der(key)
    quote = qe.quote(MRENCLAVE, ratls.report_data(spki, NONCE)) + b"\0"
    claims = ratls.dice_claims(spki, NONCE)
    cert = ratls.build_cert(key, quote, ratls.dice_evidence(qe.quote(MRENCLAVE, ratls.dice_report_data(claims)), claims))
    assert check_of(cert, verify_kwargs) == "quote-format"


def test_missing_quote_extension(verify_kwargs) -> None:
    from cryptography.hazmat.primitives import hashes, serialization

    key = ratls.new_key()
    now = dt.datetime.now(dt.timezone.utc)
    c = (x509.CertificateBuilder().subject_name(ratls.SUBJECT).issuer_name(ratls.SUBJECT)
         .public_key(key.public_key()).serial_number(1).not_valid_before(now - dt.timedelta(hours=1))
         .not_valid_after(now + dt.timedelta(hours=1)).sign(key, hashes.SHA256()))
    assert check_of(c.public_bytes(serialization.Encoding.DER), verify_kwargs) == "quote-extension"


def test_collateral_found_from_the_quote(qe, verify_kwargs) -> None:
    """``collateral_for`` gets the certificate's quote and returns (collateral, root); what it
    raises reaches the caller unchanged (a consumer fetches missing collateral and retries)."""
    _, cert = make(qe)
    seen: list[bytes] = []

    def collateral_for(quote: bytes):
        seen.append(quote)
        return verify_kwargs["collateral"], verify_kwargs["root_ca_der"]

    ev = rv.verify_ratls_cert(cert, expected_mrenclave=MRENCLAVE, nonce=NONCE, now=verify_kwargs["now"],
                              collateral_for=collateral_for)
    assert seen and seen[0] == ev.quote

    class Missing(Exception):
        pass

    def none_here(quote: bytes):
        raise Missing(quote[:4].hex())

    with pytest.raises(Missing):
        rv.verify_ratls_cert(cert, expected_mrenclave=MRENCLAVE, nonce=NONCE, now=verify_kwargs["now"],
                             collateral_for=none_here)
    with pytest.raises(TypeError):
        rv.verify_ratls_cert(cert, expected_mrenclave=MRENCLAVE, nonce=NONCE)
