"""Gramine's /dev/attestation protocol against stand-in directories."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from enclave.quotes import layout
from enclave.quotes.dev_attestation import DevAttestationQuoteSource
from enclave.quotes.sim_pki import SimPki
from enclave.quotes.sim_qe import SimQuotingEnclave
from enclave.quotes.source import AttestationUnavailableError, QuoteSource, QuoteSourceError

MRENCLAVE = b"\x42" * 32


@pytest.fixture(scope="module")
def qe() -> SimQuotingEnclave:
    return SimQuotingEnclave(SimPki.generate("dev-attestation-test"), seed=b"gramine")


def make_dir(tmp_path: Path, kind: str = "dcap\n") -> Path:
    d = tmp_path / "attestation"
    d.mkdir()
    (d / "attestation_type").write_text(kind)
    (d / "user_report_data").write_bytes(b"")
    return d


def test_pre_placed_quote(tmp_path, qe):
    d = make_dir(tmp_path)
    rd = os.urandom(64)
    quote = qe.quote(MRENCLAVE, rd)
    (d / "quote").write_bytes(quote)
    source = DevAttestationQuoteSource(d)
    assert isinstance(source, QuoteSource)
    assert source.attestation_type() == "dcap"
    assert source.get_quote(rd) == quote
    assert (d / "user_report_data").read_bytes() == rd


def test_quote_with_other_report_data_rejected(tmp_path, qe):
    d = make_dir(tmp_path)
    (d / "quote").write_bytes(qe.quote(MRENCLAVE, bytes(64)))
    with pytest.raises(QuoteSourceError, match="different report data"):
        DevAttestationQuoteSource(d).get_quote(b"\x01" * 64)


def test_malformed_quote_rejected(tmp_path):
    d = make_dir(tmp_path)
    (d / "quote").write_bytes(b"\x03\x00" + bytes(100))
    with pytest.raises(QuoteSourceError, match="malformed"):
        DevAttestationQuoteSource(d).get_quote(bytes(64))


def test_missing_quote_file(tmp_path):
    d = make_dir(tmp_path)
    with pytest.raises(QuoteSourceError):
        DevAttestationQuoteSource(d).get_quote(bytes(64))


def test_attestation_type_none(tmp_path):
    d = make_dir(tmp_path, "none")
    source = DevAttestationQuoteSource(d)
    assert source.attestation_type() == "none"
    with pytest.raises(AttestationUnavailableError, match="'none'"):
        source.get_quote(bytes(64))
    assert (d / "user_report_data").read_bytes() == b""  # nothing written


def test_attestation_type_epid(tmp_path):
    with pytest.raises(AttestationUnavailableError, match="epid"):
        DevAttestationQuoteSource(make_dir(tmp_path, "epid")).get_quote(bytes(64))


def test_not_inside_gramine(tmp_path):
    with pytest.raises(AttestationUnavailableError):
        DevAttestationQuoteSource(tmp_path / "missing").get_quote(bytes(64))


@pytest.mark.parametrize("bad", [b"", bytes(32), bytes(63), bytes(65)])
def test_report_data_must_be_64_bytes(tmp_path, bad):
    with pytest.raises(ValueError):
        DevAttestationQuoteSource(make_dir(tmp_path)).get_quote(bad)


def test_fifo_responder_acts_like_gramine(tmp_path, qe):
    """A FIFO ``quote`` file whose writer quotes whatever was last written to user_report_data."""
    d = make_dir(tmp_path)
    os.mkfifo(d / "quote")
    source = DevAttestationQuoteSource(d)

    def serve_once() -> None:
        with open(d / "quote", "wb") as out:  # blocks until the source opens it for reading
            out.write(qe.quote(MRENCLAVE, (d / "user_report_data").read_bytes()))

    for _ in range(3):
        responder = threading.Thread(target=serve_once, daemon=True)
        responder.start()
        rd = os.urandom(64)
        quote = source.get_quote(rd)
        responder.join(timeout=5)
        assert not responder.is_alive()
        parsed = layout.parse(quote)
        assert parsed.report_data == rd and parsed.mr_enclave == MRENCLAVE


def test_enclave_side_modules_import_only_stdlib():
    """layout/source/dev_attestation run inside the enclave: no third-party or node imports."""
    code = (
        "import sys\n"
        "import enclave.quotes.dev_attestation, enclave.quotes.layout, enclave.quotes.source\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'cryptography', 'dcap_qvl', 'node', 'libp2p', 'docker', 'trio'})\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])
