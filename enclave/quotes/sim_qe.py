"""A simulated SGX quoting enclave (QE3) that signs real-layout DCAP v3 quotes.

It does what Intel's QE3 does on a real platform, with keys from the sim PKI
(:mod:`enclave.quotes.sim_pki`) instead of Intel's:

* at start-up ("attestation key certification"): make an ECDSA-P256
  attestation key (AK), build a QE report whose report_data is
  SHA-256(AK || QE auth data) || 32 zero bytes, and sign that report with the
  platform's PCK key, whose certificate chains to the sim root CA;
* per quote: build header + ISV report body for the requested MRENCLAVE and
  report data and sign those 432 bytes with the AK.

What is simulated is the hardware: nobody measures the enclave (MRENCLAVE is
whatever the caller says) and the keys live in ordinary process memory.
"""

from __future__ import annotations

import hashlib
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from enclave.quotes import layout
from enclave.quotes.sim_pki import (
    SIM_QE_ATTRIBUTES,
    SIM_QE_ISVPRODID,
    SIM_QE_ISVSVN,
    SIM_QE_MRENCLAVE,
    SIM_QE_MRSIGNER,
    SimPki,
    SimPlatform,
    derive_p256_key,
    raw_public_key,
    raw_sign,
)
from enclave.quotes.source import QuoteSource, check_report_data

__all__ = ["SimQuotingEnclave", "SimQuoteSource", "DEFAULT_SIM_MRSIGNER", "QE_AUTH_DATA"]

#: MRSIGNER of enclaves quoted by the sim backend unless the caller says otherwise.
DEFAULT_SIM_MRSIGNER = hashlib.sha256(b"ofnode sim enclave signer").digest()
#: QE authentication data; QE3 uses these 32 bytes (0x00..0x1f) by default.
QE_AUTH_DATA = bytes(range(32))
#: ISV ATTRIBUTES.XFRM, as on an AVX-512 server (x87|SSE|AVX|opmask|ZMM).
_ISV_XFRM = 0xE7


class SimQuotingEnclave:
    """One simulated SGX platform's quoting enclave, certified by a sim PKI.

    ``seed`` makes the platform reproducible (PCK key, attestation key, PPID,
    platform instance id all derive from it); without it they are random,
    like a fresh machine.
    """

    def __init__(
        self,
        pki: SimPki,
        platform: SimPlatform | None = None,
        *,
        seed: bytes | None = None,
        now: float | None = None,
    ) -> None:
        self.pki = pki
        if seed is not None:
            secret = hashlib.sha256(b"ofnode-sim-qe-seed" + seed).digest()
            pck_key = derive_p256_key(secret, "pck")
            self._ak = derive_p256_key(secret, "attestation-key")
            if platform is None:
                platform = SimPlatform(
                    ppid=hashlib.sha256(secret + b"ppid").digest()[:16],
                    platform_instance_id=hashlib.sha256(secret + b"instance").digest()[:16],
                )
        else:
            pck_key = ec.generate_private_key(ec.SECP256R1())
            self._ak = ec.generate_private_key(ec.SECP256R1())
        self.platform = platform or SimPlatform()
        self.pck_cert = pki.issue_pck_cert(pck_key.public_key(), self.platform, now=now)
        # Intel's QE3 NUL-terminates the PEM chain in certification data type 5.
        cert_data = pki.pck_chain_pem(self.pck_cert) + b"\0"
        ak_raw = raw_public_key(self._ak)
        qe_report = layout.ReportBody(
            cpu_svn=self.platform.cpu_svn,
            attributes=SIM_QE_ATTRIBUTES,
            mr_enclave=SIM_QE_MRENCLAVE,
            mr_signer=SIM_QE_MRSIGNER,
            isv_prod_id=SIM_QE_ISVPRODID,
            isv_svn=SIM_QE_ISVSVN,
            report_data=hashlib.sha256(ak_raw + QE_AUTH_DATA).digest() + bytes(32),
        )
        # The AK certification part of every quote is fixed until the AK changes,
        # as on real hardware: only the ISV signature is computed per quote.
        self._sig_template = layout.SignatureData(
            isv_signature=bytes(64),
            attestation_key=ak_raw,
            qe_report=qe_report,
            qe_report_signature=raw_sign(pck_key, qe_report.to_bytes()),
            qe_auth_data=QE_AUTH_DATA,
            cert_data_type=layout.CERT_TYPE_PCK_CHAIN,
            cert_data=cert_data,
        )
        self._sig_tail = self._sig_template.to_bytes()[64:]
        # QE3 puts a per-platform 16-byte QE ID in the header's user_data.
        self._user_data = hashlib.sha256(b"ofnode-sim-qe-id" + self.platform.ppid).digest()[:16] + bytes(4)

    @property
    def attestation_public_key(self) -> bytes:
        """The 64-byte raw attestation public key carried in every quote."""
        return self._sig_template.attestation_key

    def quote(
        self,
        mrenclave: bytes,
        report_data: bytes,
        *,
        mrsigner: bytes = DEFAULT_SIM_MRSIGNER,
        isv_prod_id: int = 0,
        isv_svn: int = 1,
        debug: bool = False,
    ) -> bytes:
        """A full signed DCAP v3 quote for an enclave with ``mrenclave``.

        ``report_data`` must be 64 bytes. ``debug=True`` sets the DEBUG
        attribute; DCAP verifiers (dcap_qvl included) reject such quotes.
        """
        report_data = check_report_data(report_data)
        flags = layout.ATTR_INIT | layout.ATTR_MODE64BIT | (layout.ATTR_DEBUG if debug else 0)
        header = layout.QuoteHeader(qe_svn=SIM_QE_ISVSVN, pce_svn=self.platform.pce_svn, user_data=self._user_data)
        body = layout.ReportBody(
            cpu_svn=self.platform.cpu_svn,
            attributes=flags.to_bytes(8, "little") + _ISV_XFRM.to_bytes(8, "little"),
            mr_enclave=mrenclave,
            mr_signer=mrsigner,
            isv_prod_id=isv_prod_id,
            isv_svn=isv_svn,
            report_data=report_data,
        )
        signed = header.to_bytes() + body.to_bytes()
        sig = raw_sign(self._ak, signed) + self._sig_tail
        return signed + len(sig).to_bytes(4, "little") + sig

    def collateral(self, *, now: float | None = None, **kwargs: Any) -> Any:
        """``dcap_qvl.QuoteCollateralV3`` matching this platform's quotes (see SimPki.collateral)."""
        return self.pki.collateral(self.platform.fmspc, pce_id=self.platform.pce_id, now=now, **kwargs)

    def collateral_dict(self, *, now: float | None = None, **kwargs: Any) -> dict[str, str]:
        """The same collateral as a JSON-able dict (``QuoteCollateralV3.from_json`` shape)."""
        return self.pki.collateral_dict(self.platform.fmspc, pce_id=self.platform.pce_id, now=now, **kwargs)


class SimQuoteSource(QuoteSource):
    """A QuoteSource for one enclave identity, backed by a SimQuotingEnclave.

    The sim runtime binds it to the enclave's MRENCLAVE (its measurement of
    the runtime code and AI manifest); callers then only supply report data,
    exactly as with :class:`enclave.quotes.dev_attestation.DevAttestationQuoteSource`.
    """

    def __init__(
        self,
        qe: SimQuotingEnclave,
        mrenclave: bytes,
        *,
        mrsigner: bytes = DEFAULT_SIM_MRSIGNER,
        isv_prod_id: int = 0,
        isv_svn: int = 1,
        debug: bool = False,
    ) -> None:
        if len(mrenclave) != 32 or len(mrsigner) != 32:
            raise ValueError("mrenclave and mrsigner must be 32 bytes")
        self.qe = qe
        self.mrenclave = bytes(mrenclave)
        self._kw: dict[str, Any] = dict(mrsigner=bytes(mrsigner), isv_prod_id=isv_prod_id, isv_svn=isv_svn, debug=debug)

    def get_quote(self, report_data: bytes) -> bytes:
        return self.qe.quote(self.mrenclave, report_data, **self._kw)
