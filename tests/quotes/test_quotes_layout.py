"""layout.parse / build: round trips, offsets, and strict rejection of bad input."""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from enclave.quotes import layout
from enclave.quotes.sim_pki import SimPki
from enclave.quotes.sim_qe import SimQuotingEnclave


@pytest.fixture(scope="module")
def quote() -> bytes:
    qe = SimQuotingEnclave(SimPki.generate("layout-test"), seed=b"layout")
    return qe.quote(b"\xaa" * 32, b"\xbb" * 64, mrsigner=b"\xcc" * 32, isv_prod_id=0x1234, isv_svn=0x5678)


def test_parse_round_trip(quote):
    parsed = layout.parse(quote)
    assert parsed.to_bytes() == quote
    assert layout.parse(bytearray(quote)) == parsed
    assert layout.parse(memoryview(quote)) == parsed
    assert parsed.header.version == 3 and parsed.header.attestation_key_type == 2
    assert parsed.header.qe_vendor_id == layout.INTEL_QE_VENDOR_ID
    assert parsed.mr_enclave == b"\xaa" * 32 and parsed.mr_signer == b"\xcc" * 32
    assert parsed.report_data == b"\xbb" * 64
    assert (parsed.report_body.isv_prod_id, parsed.report_body.isv_svn) == (0x1234, 0x5678)
    assert parsed.signed_bytes() == quote[: layout.SIGNED_LEN]
    assert parsed.signature.cert_data_type == layout.CERT_TYPE_PCK_CHAIN
    assert parsed.signature.pck_cert_chain_pem.count(b"-----BEGIN CERTIFICATE-----") == 3


def test_field_offsets_match_intel_layout():
    body = layout.ReportBody(
        mr_enclave=b"\x01" * 32,
        mr_signer=b"\x02" * 32,
        report_data=b"\x03" * 64,
        isv_prod_id=0x0A0B,
        isv_svn=0x0C0D,
        attributes=bytes([0x07]) + bytes(15),
    )
    raw = body.to_bytes()
    assert len(raw) == layout.REPORT_BODY_LEN
    assert raw[48:64] == bytes([0x07]) + bytes(15)  # attributes
    assert raw[64:96] == b"\x01" * 32  # MRENCLAVE
    assert raw[128:160] == b"\x02" * 32  # MRSIGNER
    assert raw[256:260] == bytes([0x0B, 0x0A, 0x0D, 0x0C])  # ISVPRODID, ISVSVN (LE)
    assert raw[320:384] == b"\x03" * 64  # REPORTDATA
    assert layout.parse_report_body(raw) == body
    assert body.debug  # 0x07 = INIT|DEBUG|MODE64BIT
    header = layout.QuoteHeader(qe_svn=0x0102, pce_svn=0x0304, user_data=b"\x05" * 20).to_bytes()
    assert header[:12] == bytes([3, 0, 2, 0, 0, 0, 0, 0, 2, 1, 4, 3])
    assert header[12:28] == layout.INTEL_QE_VENDOR_ID and header[28:] == b"\x05" * 20


def test_every_truncation_rejected(quote):
    for n in range(len(quote)):
        with pytest.raises(layout.QuoteFormatError):
            layout.parse(quote[:n])


@pytest.mark.parametrize("extra", [b"\x00", b"\x00" * 100, os.urandom(7)])
def test_trailing_bytes_rejected(quote, extra):
    with pytest.raises(layout.QuoteFormatError):
        layout.parse(quote + extra)


@pytest.mark.parametrize("bad", [None, "quote", 42, [1, 2, 3], b"", b"\x00" * 10, b"\x00" * 5000, os.urandom(4600)])
def test_garbage_rejected(bad):
    with pytest.raises(layout.QuoteFormatError):
        layout.parse(bad)  # type: ignore[arg-type]


def _patch(quote: bytes, offset: int, fmt: str, value: int) -> bytes:
    out = bytearray(quote)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


def test_wrong_header_values_rejected(quote):
    for offset, fmt, value in [(0, "<H", 4), (0, "<H", 2), (2, "<H", 3), (4, "<I", 0x81)]:
        with pytest.raises(layout.QuoteFormatError):
            layout.parse(_patch(quote, offset, fmt, value))


def test_inconsistent_lengths_rejected(quote):
    parsed = layout.parse(quote)
    sig_len = len(quote) - layout.SIGNED_LEN - 4
    auth_off = layout.SIGNED_LEN + 4 + 64 + 64 + 384 + 64
    cert_len_off = auth_off + 2 + len(parsed.signature.qe_auth_data) + 2
    cases = [
        (layout.SIGNED_LEN, "<I", sig_len - 1),
        (layout.SIGNED_LEN, "<I", sig_len + 1),
        (layout.SIGNED_LEN, "<I", 0xFFFFFFFF),
        (auth_off, "<H", 33),
        (auth_off, "<H", 31),
        (auth_off, "<H", 0xFFFF),
        (cert_len_off, "<I", len(parsed.signature.cert_data) - 1),
        (cert_len_off, "<I", len(parsed.signature.cert_data) + 1),
        (cert_len_off, "<I", 0xFFFFFFFF),
    ]
    for offset, fmt, value in cases:
        with pytest.raises(layout.QuoteFormatError):
            layout.parse(_patch(quote, offset, fmt, value))


def test_builders_reject_bad_fields():
    with pytest.raises(layout.QuoteFormatError):
        layout.ReportBody(mr_enclave=b"\x00" * 31)
    with pytest.raises(layout.QuoteFormatError):
        layout.ReportBody(mr_enclave=bytes(32), isv_svn=1 << 16)
    with pytest.raises(layout.QuoteFormatError):
        layout.QuoteHeader(qe_svn=-1, pce_svn=0)
    with pytest.raises(layout.QuoteFormatError):
        layout.ReportBody(mr_enclave="00" * 32)  # type: ignore[arg-type]


def test_non_pck_chain_cert_data(quote):
    sig = layout.parse(quote).signature
    other = layout.SignatureData(
        isv_signature=sig.isv_signature,
        attestation_key=sig.attestation_key,
        qe_report=sig.qe_report,
        qe_report_signature=sig.qe_report_signature,
        qe_auth_data=sig.qe_auth_data,
        cert_data_type=3,
        cert_data=b"encrypted ppid etc",
    )
    assert layout.SignatureData.from_bytes(other.to_bytes()) == other
    with pytest.raises(layout.QuoteFormatError):
        other.pck_cert_chain_pem


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_fuzz_only_quote_format_error(data):
    try:
        layout.parse(data)
    except layout.QuoteFormatError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_fuzz_mutated_quote(quote, data):
    mutated = bytearray(quote)
    for _ in range(data.draw(st.integers(1, 4))):
        mutated[data.draw(st.integers(0, len(quote) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(quote) + 8))
    candidate = bytes(mutated[:cut]) + bytes(max(0, cut - len(quote)))
    try:
        parsed = layout.parse(candidate)
    except layout.QuoteFormatError:
        return
    assert parsed.to_bytes() == candidate
