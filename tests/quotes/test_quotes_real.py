"""The real SGX quote in shared/data/dcap: our layout agrees with dcap_qvl."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from pathlib import Path

import dcap_qvl
import pytest

from enclave.quotes import layout

from tests.parts import SHARED, require_part

DATA = SHARED / "data" / "dcap"


@pytest.fixture(autouse=True)
def _sample_present() -> None:
    require_part("the real DCAP sample", (DATA / "sgx_quote.bin").exists(), f"looked in {DATA}")
# Inside the sample collateral's validity window (issued 2025-06-19, next update 2025-07-19).
WHEN = int(dt.datetime(2025, 6, 20, tzinfo=dt.timezone.utc).timestamp())


@pytest.fixture(scope="module")
def raw() -> bytes:
    return (DATA / "sgx_quote.bin").read_bytes()


@pytest.fixture(scope="module")
def collateral():
    return dcap_qvl.QuoteCollateralV3.from_json((DATA / "sgx_quote_collateral.json").read_text())


def test_real_quote_parses_like_dcap_qvl(raw):
    ours = layout.parse(raw)
    theirs = dcap_qvl.parse_quote(raw)
    assert ours.to_bytes() == raw
    h = theirs.header
    assert (ours.header.version, ours.header.attestation_key_type, ours.header.tee_type) == (
        h.version,
        h.attestation_key_type,
        h.tee_type,
    )
    assert (ours.header.qe_svn, ours.header.pce_svn) == (h.qe_svn, h.pce_svn)
    assert ours.header.qe_vendor_id == h.qe_vendor_id == layout.INTEL_QE_VENDOR_ID
    assert ours.header.user_data == h.user_data
    r = theirs.report
    body = ours.report_body
    assert (body.cpu_svn, body.attributes, body.mr_enclave, body.mr_signer, body.report_data) == (
        r.cpu_svn,
        r.attributes,
        r.mr_enclave,
        r.mr_signer,
        r.report_data,
    )
    assert not body.debug
    assert ours.signature.pck_cert_chain_pem == theirs.cert_chain_pem_bytes()
    assert ours.signature.cert_data.endswith(b"-----END CERTIFICATE-----\n\x00")  # Intel NUL-terminates
    sig = ours.signature
    assert sig.qe_report.report_data == hashlib.sha256(sig.attestation_key + sig.qe_auth_data).digest() + bytes(32)


def test_real_quote_fields_match_verified_report(raw, collateral):
    report = json.loads(dcap_qvl.verify(raw, collateral, WHEN).to_json())
    body = layout.parse(raw).report_body
    sgx = report["report"]["SgxEnclave"]
    assert sgx["mr_enclave"] == body.mr_enclave.hex()
    assert sgx["mr_signer"] == body.mr_signer.hex()
    assert sgx["isv_prod_id"] == body.isv_prod_id and sgx["isv_svn"] == body.isv_svn
    assert sgx["misc_select"] == body.misc_select


def test_real_quote_has_same_uncovered_bytes(raw, collateral):
    """dcap-qvl ignores the same certification-data bytes on Intel's quotes as on sim quotes."""
    cert = layout.parse(raw).signature.cert_data
    base = len(raw) - len(cert)
    blocks = [m.span() for m in re.finditer(rb"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----\n", cert, re.S)]
    assert len(blocks) == 3

    def accepted(offset: int) -> bool:
        flipped = bytearray(raw)
        flipped[base + offset] ^= 0x01
        try:
            dcap_qvl.verify(bytes(flipped), collateral, WHEN)
        except ValueError:
            return False
        return True

    assert accepted(len(cert) - 1)  # trailing NUL
    assert accepted(cert.index(b"\n", blocks[0][0]))  # PEM line break in the PCK leaf
    assert accepted(blocks[2][0] + 100)  # inside the root CA copy
    assert not accepted(blocks[0][0] + 100)  # base64 of the PCK leaf
    assert not accepted(blocks[1][0] + 100)  # base64 of the Processor CA
