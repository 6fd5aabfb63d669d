"""Sim quotes against the real DCAP verifier (dcap_qvl) under a sim root CA."""

from __future__ import annotations

import json
import os
import re
import time

import dcap_qvl
import pytest

from enclave.quotes import layout
from enclave.quotes.sim_pki import SimPki, SimPlatform, TcbLevel, collateral_from_dict
from enclave.quotes.sim_qe import DEFAULT_SIM_MRSIGNER, SimQuoteSource, SimQuotingEnclave

MRENCLAVE = bytes.fromhex("11" * 32)
REPORT_DATA = bytes(range(64))
NOW = int(time.time())
DAY = 86400


@pytest.fixture(scope="module")
def pki() -> SimPki:
    return SimPki.generate("test-net", now=NOW)


@pytest.fixture(scope="module")
def qe(pki: SimPki) -> SimQuotingEnclave:
    return SimQuotingEnclave(pki, seed=b"platform-1", now=NOW)


@pytest.fixture(scope="module")
def collateral(qe: SimQuotingEnclave):
    return qe.collateral(now=NOW)


@pytest.fixture(scope="module")
def quote(qe: SimQuotingEnclave) -> bytes:
    return qe.quote(MRENCLAVE, REPORT_DATA, isv_prod_id=7, isv_svn=3)


def verify(quote: bytes, collateral, root_der: bytes, now: int = NOW) -> dict:
    report = dcap_qvl.verify_with_root_ca(quote, collateral, root_der, now)
    result = json.loads(report.to_json())
    assert result["status"] == report.status
    return result


def test_sim_quote_verifies_up_to_date(pki, quote, collateral):
    result = verify(quote, collateral, pki.root_cert_der)
    assert result["status"] == "UpToDate"
    assert result["advisory_ids"] == []
    body = result["report"]["SgxEnclave"]
    assert body["mr_enclave"] == MRENCLAVE.hex()
    assert body["report_data"] == REPORT_DATA.hex()
    assert body["mr_signer"] == DEFAULT_SIM_MRSIGNER.hex()
    assert body["isv_prod_id"] == 7 and body["isv_svn"] == 3


def test_strict_policy_verifier_accepts(pki, quote, collateral):
    verifier = dcap_qvl.QuoteVerifier(pki.root_cert_der)
    claims = json.loads(verifier.verify_with_policy(quote, collateral, NOW, dcap_qvl.QuotePolicy.strict(NOW)).to_json())
    assert claims["tcb"]["status"] == "UpToDate"


def test_pck_extension_as_dcap_qvl_reads_it(qe, quote):
    parsed = dcap_qvl.parse_quote(quote)
    assert parsed.is_sgx() and parsed.ca() == "platform"
    assert parsed.fmspc() == qe.platform.fmspc.hex().upper()
    ext = parsed.pck_extension()
    assert ext.ppid == qe.platform.ppid
    assert ext.cpu_svn == qe.platform.cpu_svn
    assert ext.pce_svn == qe.platform.pce_svn
    assert ext.pce_id == qe.platform.pce_id
    assert ext.sgx_type == qe.platform.sgx_type
    assert ext.platform_instance_id == qe.platform.platform_instance_id


def test_other_root_rejects(pki, quote, collateral):
    other = SimPki.generate("other-net", now=NOW)
    with pytest.raises(ValueError):
        verify(quote, collateral, other.root_cert_der)
    with pytest.raises(ValueError):  # other network's collateral and root: PCK chain does not lead there
        verify(quote, other.collateral(now=NOW), other.root_cert_der)
    with pytest.raises(ValueError):  # Intel's production root (built into dcap_qvl)
        dcap_qvl.verify(quote, collateral, NOW)


def test_collateral_validity_window(pki, quote, collateral):
    issue, next_update = SimPki.collateral_window(NOW)
    verify(quote, collateral, pki.root_cert_der, now=issue)
    verify(quote, collateral, pki.root_cert_der, now=next_update - 1)  # CRLs expire AT next_update
    with pytest.raises(ValueError, match="(?i)future|not valid"):
        verify(quote, collateral, pki.root_cert_der, now=issue - 1)
    with pytest.raises(ValueError, match="(?i)expired"):
        verify(quote, collateral, pki.root_cert_der, now=next_update)


def test_debug_enclave_visible_and_rejected(pki, qe, collateral):
    quote = qe.quote(MRENCLAVE, REPORT_DATA, debug=True)
    parsed = layout.parse(quote)
    assert parsed.debug and parsed.report_body.attribute_flags & layout.ATTR_DEBUG
    assert not layout.parse(qe.quote(MRENCLAVE, REPORT_DATA)).debug
    assert dcap_qvl.parse_quote(quote).report.attributes[0] & layout.ATTR_DEBUG
    # dcap_qvl 0.7's Python API has no allow_debug switch: debug quotes never verify.
    with pytest.raises(ValueError, match="Debug"):
        verify(quote, collateral, pki.root_cert_der)


def test_tcb_levels_give_status(pki):
    old = SimPlatform(cpu_svn=bytes([10, 10, 3, 3, 255, 255, 1] + [0] * 9))
    qe_old = SimQuotingEnclave(pki, old, now=NOW)
    levels = (
        TcbLevel(),  # the default, newer TCB: UpToDate
        TcbLevel(cpu_svn=old.cpu_svn, status="OutOfDate", advisory_ids=("INTEL-SA-00000",)),
    )
    quote = qe_old.quote(MRENCLAVE, REPORT_DATA)
    result = verify(quote, qe_old.collateral(now=NOW, tcb_levels=levels), pki.root_cert_der)
    assert result["status"] == "OutOfDate" and result["advisory_ids"] == ["INTEL-SA-00000"]
    with pytest.raises(ValueError, match="TCB level"):  # below every level
        verify(quote, qe_old.collateral(now=NOW), pki.root_cert_der)


def test_revoked_pck_rejected(pki, qe, quote):
    revoked = qe.collateral(now=NOW, revoked_pck_serials=[qe.pck_cert.serial_number])
    with pytest.raises(ValueError, match="(?i)revoked|certificate chain"):
        verify(quote, revoked, pki.root_cert_der)


def test_collateral_dict_is_dcap_qvl_json_shape(pki, qe, quote):
    data = qe.collateral_dict(now=NOW)
    via_json = dcap_qvl.QuoteCollateralV3.from_json(json.dumps(data))
    assert verify(quote, via_json, pki.root_cert_der)["status"] == "UpToDate"
    assert verify(quote, collateral_from_dict(data), pki.root_cert_der)["status"] == "UpToDate"


def test_pki_reload_is_deterministic(pki, quote):
    again = SimPki.load(pki.root_key_pem(), pki.root_cert_der)
    assert again.root_cert_der == pki.root_cert_der
    assert again.platform_ca_cert == pki.platform_ca_cert
    assert again.tcb_signing_cert == pki.tcb_signing_cert
    # Any node holding the genesis root can make collateral for any other node's quotes.
    assert verify(quote, again.collateral(now=NOW), again.root_cert_der)["status"] == "UpToDate"
    assert again.collateral_dict(now=NOW) == pki.collateral_dict(now=NOW)


def test_seeded_platform_is_reproducible(pki, qe, quote):
    twin = SimQuotingEnclave(pki, seed=b"platform-1", now=NOW)
    assert twin.quote(MRENCLAVE, REPORT_DATA, isv_prod_id=7, isv_svn=3) == quote
    stranger = SimQuotingEnclave(pki, seed=b"platform-2", now=NOW)
    assert stranger.attestation_public_key != qe.attestation_public_key


def test_sim_quote_source(pki, qe, collateral):
    mrenclave = os.urandom(32)
    source = SimQuoteSource(qe, mrenclave)
    rd = os.urandom(64)
    result = verify(source.get_quote(rd), collateral, pki.root_cert_der)
    assert result["report"]["SgxEnclave"]["mr_enclave"] == mrenclave.hex()
    assert result["report"]["SgxEnclave"]["report_data"] == rd.hex()
    for bad in (b"", bytes(63), bytes(65)):
        with pytest.raises(ValueError):
            source.get_quote(bad)


def test_qe_report_binds_attestation_key(quote):
    import hashlib

    sig = layout.parse(quote).signature
    assert sig.qe_report.report_data == hashlib.sha256(sig.attestation_key + sig.qe_auth_data).digest() + bytes(32)


def exempt_offsets(cert_data: bytes) -> set[int]:
    """Offsets in certification data whose flips dcap-qvl cannot notice.

    * PEM line breaks in the leaf and Platform CA blocks: the PEM decoder
      treats them (and \\x0b, what xor 0x01 makes of \\n) as whitespace, so the
      DER it hands on is unchanged.
    * The whole root CA copy (third block): the verifier anchors on the root
      it is given, never on the quote's copy; a damaged copy is skipped by the
      PEM parser or ignored during path building.
    * Intel's trailing NUL after the chain: not part of any PEM block.
    """
    blocks = [m.span() for m in re.finditer(rb"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----\n", cert_data, re.S)]
    assert len(blocks) == 3
    exempt = {i for start, end in blocks[:2] for i in range(start, end) if cert_data[i] == 0x0A}
    exempt |= set(range(*blocks[2]))
    exempt |= set(range(blocks[2][1], len(cert_data)))
    return exempt


def test_every_single_byte_flip_is_rejected(pki, quote, collateral):
    parsed = layout.parse(quote)
    cert_start = len(quote) - len(parsed.signature.cert_data)
    exempt = {cert_start + i for i in exempt_offsets(parsed.signature.cert_data)}
    accepted = []
    for offset in range(len(quote)):
        flipped = bytearray(quote)
        flipped[offset] ^= 0x01
        try:
            dcap_qvl.verify_with_root_ca(bytes(flipped), collateral, pki.root_cert_der, NOW)
        except ValueError:
            continue
        accepted.append(offset)
    # Header, report body, ISV signature, attestation key, QE report, QE report
    # signature, QE auth data and all length/type fields: every flip rejected.
    assert [o for o in accepted if o < cert_start] == []
    # In the certification data only the documented uncovered bytes slip through.
    assert set(accepted) <= exempt, sorted(set(accepted) - exempt)


def test_trailing_bytes_dcap_qvl_ignores_but_layout_rejects(pki, quote, collateral):
    """dcap-qvl does not insist the quote ends where its lengths say; layout.parse does.

    A verifier that keys anything on the quote bytes must therefore run
    layout.parse too, or two byte strings would count as "the same" quote.
    """
    padded = quote + b"junk"
    assert verify(padded, collateral, pki.root_cert_der)["status"] == "UpToDate"
    with pytest.raises(layout.QuoteFormatError):
        layout.parse(padded)
    inner = bytearray(padded)  # junk inside the signature data, length field adjusted
    inner[layout.SIGNED_LEN : layout.SIGNED_LEN + 4] = (len(padded) - layout.SIGNED_LEN - 4).to_bytes(4, "little")
    assert verify(bytes(inner), collateral, pki.root_cert_der)["status"] == "UpToDate"
    with pytest.raises(layout.QuoteFormatError):
        layout.parse(bytes(inner))
