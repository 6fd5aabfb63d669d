"""A per-network simulated Intel SGX PKI: root CA, PCK certificates, collateral.

Real DCAP trust starts at Intel's "SGX Root CA". The ``sim`` backend has no
SGX, so each ofnode network gets its own **sim root CA** (stored in genesis)
and this module plays every Intel role under it, with the same certificate
profiles and JSON formats, so that an unmodified DCAP verifier
(``dcap_qvl.verify_with_root_ca``) accepts sim quotes when — and only when —
it is handed this root instead of Intel's::

    sim root CA (self-signed, CA, pathlen 1)            <- genesis: key PEM + cert DER
    ├── sim PCK Platform CA (CA, pathlen 0)             <- signs PCK leaves and the PCK CRL
    │   └── PCK leaf (one per simulated platform)       <- SGX extension 1.2.840.113741.1.13.1
    └── sim TCB Signing (end entity)                    <- signs TCB info and QE identity JSON
    + root CA CRL (by root), PCK CRL (by platform CA)

The platform CA and TCB-signing keys, serials and validity are derived from
the root key (HKDF), and certificates and CRLs are signed with deterministic
ECDSA (RFC 6979): any node holding the genesis root material rebuilds
byte-identical intermediates and can produce collateral that matches any
other node's quotes. Holding the root key also means being able to forge
quotes, so the sim PKI gives *no* security; it exists to run the real
verification code paths.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.x509.oid import NameOID

if TYPE_CHECKING:  # pragma: no cover
    import dcap_qvl

__all__ = [
    "SGX_EXTENSION_OID",
    "SimPlatform",
    "TcbLevel",
    "QeIdentityPolicy",
    "SimPki",
    "sgx_extension_der",
    "raw_sign",
    "raw_public_key",
    "collateral_from_dict",
    "derive_p256_key",
]

SGX_EXTENSION_OID = "1.2.840.113741.1.13.1"
_SGX = SGX_EXTENSION_OID
_DAY = 86400
_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551

# --------------------------------------------------------------------------
# Minimal DER encoder for the SGX extension (cryptography has no generic one).
# --------------------------------------------------------------------------


def _tlv(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        length = bytes([n])
    else:
        body = n.to_bytes((n.bit_length() + 7) // 8, "big")
        length = bytes([0x80 | len(body)]) + body
    return bytes([tag]) + length + content


def _oid(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    out = bytearray([40 * arcs[0] + arcs[1]])
    for arc in arcs[2:]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        out += bytes(reversed(chunk))
    return _tlv(0x06, bytes(out))


def _int(value: int, tag: int = 0x02) -> bytes:
    """Non-negative DER INTEGER (or ENUMERATED with tag 0x0A)."""
    return _tlv(tag, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def _seq(*items: bytes) -> bytes:
    return _tlv(0x30, b"".join(items))


def _entry(oid: str, value: bytes) -> bytes:
    return _seq(_oid(oid), value)


def sgx_extension_der(
    *,
    ppid: bytes,
    cpu_svn: bytes,
    pce_svn: int,
    pce_id: bytes,
    fmspc: bytes,
    sgx_type: int,
    platform_instance_id: bytes | None = None,
    dynamic_platform: bool | None = None,
    cached_keys: bool | None = None,
    smt_enabled: bool | None = None,
) -> bytes:
    """DER of Intel's SGX PCK certificate extension (OID 1.2.840.113741.1.13.1).

    Layout per Intel's "SGX PCK Certificate and CRL Profile": a SEQUENCE of
    (OID, value) pairs - PPID, TCB (16 component SVNs = the CPUSVN bytes,
    PCESVN, CPUSVN), PCE-ID, FMSPC, SGX type, and for Platform-CA issued
    certificates the PlatformInstanceID and Configuration flags.
    """
    tcb = [_entry(f"{_SGX}.2.{i + 1}", _int(svn)) for i, svn in enumerate(cpu_svn)]
    tcb.append(_entry(f"{_SGX}.2.17", _int(pce_svn)))
    tcb.append(_entry(f"{_SGX}.2.18", _tlv(0x04, cpu_svn)))
    items = [
        _entry(f"{_SGX}.1", _tlv(0x04, ppid)),
        _entry(f"{_SGX}.2", _seq(*tcb)),
        _entry(f"{_SGX}.3", _tlv(0x04, pce_id)),
        _entry(f"{_SGX}.4", _tlv(0x04, fmspc)),
        _entry(f"{_SGX}.5", _int(sgx_type, tag=0x0A)),
    ]
    if platform_instance_id is not None:
        items.append(_entry(f"{_SGX}.6", _tlv(0x04, platform_instance_id)))
    flags = [(1, dynamic_platform), (2, cached_keys), (3, smt_enabled)]
    if any(v is not None for _, v in flags):
        conf = [_entry(f"{_SGX}.7.{i}", _tlv(0x01, b"\xff" if v else b"\x00")) for i, v in flags if v is not None]
        items.append(_entry(f"{_SGX}.7", _seq(*conf)))
    return _seq(*items)


# --------------------------------------------------------------------------
# Keys and signatures in the raw forms DCAP uses.
# --------------------------------------------------------------------------


def raw_sign(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    """ECDSA-P256/SHA-256 signature as 64 raw bytes r||s, as DCAP stores them.

    Deterministic (RFC 6979) so the same key and message give the same bytes.
    """
    der = key.sign(data, ec.ECDSA(hashes.SHA256(), deterministic_signing=True))
    r, s = decode_dss_signature(der)
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def raw_public_key(key: ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey) -> bytes:
    """P-256 public key as 64 raw bytes x||y (uncompressed point without 0x04)."""
    pub = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
    return pub.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)[1:]


def derive_p256_key(secret: bytes, label: str) -> ec.EllipticCurvePrivateKey:
    """A P-256 key derived from ``secret`` for ``label`` (HKDF-SHA256, reduced mod n)."""
    okm = HKDF(hashes.SHA256(), 48, salt=b"ofnode-sim-sgx-pki", info=label.encode()).derive(secret)
    return ec.derive_private_key(int.from_bytes(okm, "big") % (_P256_ORDER - 1) + 1, ec.SECP256R1())


def _derive_serial(secret: bytes, label: str) -> int:
    okm = HKDF(hashes.SHA256(), 16, salt=b"ofnode-sim-sgx-pki", info=b"serial:" + label.encode()).derive(secret)
    return int.from_bytes(okm, "big") >> 1 | 1


def _sign_x509(builder: Any, key: ec.EllipticCurvePrivateKey) -> Any:
    """Sign a certificate/CRL builder, deterministically where cryptography supports it."""
    try:
        return builder.sign(key, hashes.SHA256(), ecdsa_deterministic=True)
    except TypeError:  # cryptography < 45: no deterministic option for builders
        return builder.sign(key, hashes.SHA256())


def _utc(ts: int | float) -> dt.datetime:
    return dt.datetime.fromtimestamp(int(ts), dt.timezone.utc)


def _iso(ts: int | float) -> str:
    return _utc(ts).strftime("%Y-%m-%dT%H:%M:%SZ")


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


# --------------------------------------------------------------------------
# What a simulated platform and its TCB look like.
# --------------------------------------------------------------------------

#: Intel-like defaults: the platform TCB of an up-to-date Ice Lake server.
DEFAULT_FMSPC = bytes.fromhex("00606A000000")
DEFAULT_CPU_SVN = bytes([12, 12, 3, 3, 255, 255, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0])
DEFAULT_PCE_SVN = 13


@dataclass(frozen=True)
class SimPlatform:
    """The facts a PCK certificate states about one (simulated) SGX platform."""

    fmspc: bytes = DEFAULT_FMSPC
    cpu_svn: bytes = DEFAULT_CPU_SVN
    pce_svn: int = DEFAULT_PCE_SVN
    pce_id: bytes = b"\x00\x00"
    ppid: bytes = field(default_factory=lambda: os.urandom(16))
    platform_instance_id: bytes = field(default_factory=lambda: os.urandom(16))
    #: 0 Standard, 1 Scalable (Ice Lake+ servers, Platform CA), 2 Scalable with integrity.
    sgx_type: int = 1
    dynamic_platform: bool = False
    cached_keys: bool = False
    smt_enabled: bool = False

    def __post_init__(self) -> None:
        for name, size in (("fmspc", 6), ("cpu_svn", 16), ("pce_id", 2), ("ppid", 16), ("platform_instance_id", 16)):
            if len(getattr(self, name)) != size:
                raise ValueError(f"{name} must be {size} bytes")
        # dcap-qvl reads PCESVN as a 1- or 2-byte DER INTEGER: 0..32767.
        if not 0 <= self.pce_svn < 0x8000:
            raise ValueError("pce_svn must be in 0..32767")


@dataclass(frozen=True)
class TcbLevel:
    """One ``tcbLevels`` entry of TCB info: platforms at or above it get ``status``."""

    cpu_svn: bytes = DEFAULT_CPU_SVN
    pce_svn: int = DEFAULT_PCE_SVN
    status: str = "UpToDate"
    tcb_date: str = "2025-01-01T00:00:00Z"
    advisory_ids: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        level: dict[str, Any] = {
            "tcb": {"sgxtcbcomponents": [{"svn": b} for b in self.cpu_svn], "pcesvn": self.pce_svn},
            "tcbDate": self.tcb_date,
            "tcbStatus": self.status,
        }
        if self.advisory_ids:
            level["advisoryIDs"] = list(self.advisory_ids)
        return level


#: Identity of the simulated quoting enclave. The MRSIGNER is deliberately NOT
#: Intel's (8C4F5775...), so a sim QE report can never pass for Intel's QE.
SIM_QE_MRSIGNER = hashlib.sha256(b"ofnode sim SGX quoting enclave signer (not Intel)").digest()
SIM_QE_MRENCLAVE = hashlib.sha256(b"ofnode sim SGX quoting enclave").digest()
SIM_QE_ISVPRODID = 1
SIM_QE_ISVSVN = 10
#: QE3's ATTRIBUTES: FLAGS = INIT|MODE64BIT|PROVISIONKEY, XFRM = x87|SSE|AVX|AVX-512.
SIM_QE_ATTRIBUTES = bytes.fromhex("1500000000000000e700000000000000")


@dataclass(frozen=True)
class QeIdentityPolicy:
    """What the QE identity collateral (v2) demands of the quoting enclave's report."""

    mrsigner: bytes = SIM_QE_MRSIGNER
    isvprodid: int = SIM_QE_ISVPRODID
    min_isvsvn: int = SIM_QE_ISVSVN
    miscselect: bytes = bytes(4)
    miscselect_mask: bytes = b"\xff" * 4
    attributes: bytes = bytes.fromhex("11000000000000000000000000000000")
    attributes_mask: bytes = bytes.fromhex("FBFFFFFFFFFFFFFF0000000000000000")
    tcb_date: str = "2025-01-01T00:00:00Z"


# --------------------------------------------------------------------------
# The PKI.
# --------------------------------------------------------------------------


def _name(cn: str, org: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
        ]
    )


def _key_usage(*, sign: bool, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=sign,
        content_commitment=sign,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


class SimPki:
    """The sim root CA plus everything derived from it (see module docstring).

    Make a new network's root with :meth:`generate`, persist
    :meth:`root_key_pem` and :attr:`root_cert_der` in genesis, and rebuild
    the same PKI on every node with :meth:`load`.
    """

    def __init__(self, root_key: ec.EllipticCurvePrivateKey, root_cert: x509.Certificate) -> None:
        if not isinstance(root_key, ec.EllipticCurvePrivateKey) or not isinstance(root_key.curve, ec.SECP256R1):
            raise ValueError("sim root key must be an ECDSA P-256 private key")
        if raw_public_key(root_cert.public_key()) != raw_public_key(root_key):  # type: ignore[arg-type]
            raise ValueError("sim root certificate does not match the root key")
        self.root_key = root_key
        self.root_cert = root_cert
        secret = root_key.private_numbers().private_value.to_bytes(32, "big")
        self._org = root_cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value
        self._not_before = root_cert.not_valid_before_utc
        self._not_after = root_cert.not_valid_after_utc
        self.platform_ca_key = derive_p256_key(secret, "platform-ca")
        self.tcb_signing_key = derive_p256_key(secret, "tcb-signing")
        self.platform_ca_cert = self._issue(
            subject=_name("ofnode Sim SGX PCK Platform CA", str(self._org)),
            public_key=self.platform_ca_key.public_key(),
            serial=_derive_serial(secret, "platform-ca"),
            ca_pathlen=0,
        )
        self.tcb_signing_cert = self._issue(
            subject=_name("ofnode Sim SGX TCB Signing", str(self._org)),
            public_key=self.tcb_signing_key.public_key(),
            serial=_derive_serial(secret, "tcb-signing"),
            ca_pathlen=None,
        )

    # -- root CA lifecycle --------------------------------------------------

    @classmethod
    def generate(cls, network: str = "ofnode", *, now: float | None = None, years: int = 30) -> SimPki:
        """Create a fresh sim root CA for ``network`` (ECDSA P-256, self-signed)."""
        now = time.time() if now is None else now
        key = ec.generate_private_key(ec.SECP256R1())
        not_before = _utc(now // _DAY * _DAY - _DAY)
        name = _name(f"ofnode Sim SGX Root CA ({network})", "ofnode simulated SGX - NOT Intel")
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        builder = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_before + dt.timedelta(days=365 * years))
            .add_extension(ski, critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
            .add_extension(_key_usage(sign=False, ca=True), critical=True)
            .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        )
        return cls(key, _sign_x509(builder, key))

    @classmethod
    def load(cls, root_key_pem: bytes, root_cert_der: bytes) -> SimPki:
        """Rebuild the PKI from what genesis stores (root key PEM, root cert DER)."""
        key = serialization.load_pem_private_key(root_key_pem, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError("sim root key must be an EC private key")
        return cls(key, x509.load_der_x509_certificate(root_cert_der))

    def root_key_pem(self) -> bytes:
        """The root private key, PKCS#8 PEM, unencrypted (for genesis)."""
        return self.root_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    @property
    def root_cert_der(self) -> bytes:
        """The root certificate DER: the trust anchor verifiers pass to dcap_qvl."""
        return self.root_cert.public_bytes(serialization.Encoding.DER)

    # -- certificates -------------------------------------------------------

    def _issue(
        self,
        *,
        subject: x509.Name,
        public_key: ec.EllipticCurvePublicKey,
        serial: int,
        ca_pathlen: int | None,
        issuer_key: ec.EllipticCurvePrivateKey | None = None,
        issuer_cert: x509.Certificate | None = None,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
        extra: Sequence[x509.ExtensionType] = (),
    ) -> x509.Certificate:
        issuer_key = issuer_key or self.root_key
        issuer_cert = issuer_cert or self.root_cert
        is_ca = ca_pathlen is not None
        issuer_ski = issuer_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer_cert.subject)
            .public_key(public_key)
            .serial_number(serial)
            .not_valid_before(not_before or self._not_before)
            .not_valid_after(not_after or self._not_after)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_ski), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(_key_usage(sign=not is_ca, ca=is_ca), critical=True)
            .add_extension(x509.BasicConstraints(ca=is_ca, path_length=ca_pathlen), critical=True)
        )
        for ext in extra:
            builder = builder.add_extension(ext, critical=False)
        return _sign_x509(builder, issuer_key)

    def issue_pck_cert(
        self, pck_public_key: ec.EllipticCurvePublicKey, platform: SimPlatform, *, now: float | None = None
    ) -> x509.Certificate:
        """Issue a PCK leaf for ``platform``'s PCK key under the sim Platform CA.

        Valid from a day before ``now`` for 7 years (Intel's PCK lifetime),
        capped at the root's expiry.
        """
        now = time.time() if now is None else now
        not_before = max(_utc(now // _DAY * _DAY - _DAY), self._not_before)
        not_after = min(not_before + dt.timedelta(days=7 * 365), self._not_after)
        ext = sgx_extension_der(
            ppid=platform.ppid,
            cpu_svn=platform.cpu_svn,
            pce_svn=platform.pce_svn,
            pce_id=platform.pce_id,
            fmspc=platform.fmspc,
            sgx_type=platform.sgx_type,
            platform_instance_id=platform.platform_instance_id,
            dynamic_platform=platform.dynamic_platform,
            cached_keys=platform.cached_keys,
            smt_enabled=platform.smt_enabled,
        )
        return self._issue(
            subject=_name("ofnode Sim SGX PCK Certificate", str(self._org)),
            public_key=pck_public_key,
            # Serial derived from the key, so a seeded platform gets identical certificates.
            serial=int.from_bytes(hashlib.sha256(raw_public_key(pck_public_key)).digest()[:16], "big") >> 1 | 1,
            ca_pathlen=None,
            issuer_key=self.platform_ca_key,
            issuer_cert=self.platform_ca_cert,
            not_before=not_before,
            not_after=not_after,
            extra=[x509.UnrecognizedExtension(x509.ObjectIdentifier(SGX_EXTENSION_OID), ext)],
        )

    def pck_chain_pem(self, pck_cert: x509.Certificate) -> bytes:
        """PCK leaf, Platform CA, root: the PEM chain QE3 puts in certification data type 5."""
        return _pem(pck_cert) + _pem(self.platform_ca_cert) + _pem(self.root_cert)

    # -- collateral ---------------------------------------------------------

    @staticmethod
    def collateral_window(now: float | None = None, days: int = 30) -> tuple[int, int]:
        """(issue, next_update) for collateral made at ``now``.

        Issued at the start of the previous UTC day so that verifiers whose
        clocks lag a little still see it as valid, and so that nodes building
        collateral on the same day produce identical bytes.
        """
        now = time.time() if now is None else now
        issue = int(now // _DAY * _DAY - _DAY)
        return issue, issue + (days + 1) * _DAY

    def _crl(
        self, issuer_key: ec.EllipticCurvePrivateKey, issuer_cert: x509.Certificate, window: tuple[int, int],
        revoked: Iterable[int] = (),
    ) -> bytes:
        ski = issuer_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(issuer_cert.subject)
            .last_update(_utc(window[0]))
            .next_update(_utc(window[1]))
            .add_extension(x509.CRLNumber(1), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        )
        for serial in sorted(set(revoked)):
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(_utc(window[0])).build()
            )
        return _sign_x509(builder, issuer_key).public_bytes(serialization.Encoding.DER)

    def _signed_json(self, body: dict[str, Any]) -> tuple[str, bytes]:
        """Serialise ``body`` compactly and sign those exact bytes, as Intel's PCS does."""
        text = json.dumps(body, separators=(",", ":"))
        return text, raw_sign(self.tcb_signing_key, text.encode())

    def tcb_info(
        self,
        fmspc: bytes,
        *,
        pce_id: bytes = b"\x00\x00",
        levels: Sequence[TcbLevel] = (TcbLevel(),),
        window: tuple[int, int] | None = None,
        evaluation_data_number: int = 17,
    ) -> tuple[str, bytes]:
        """TCB info v3 JSON body for ``fmspc`` and its raw r||s signature."""
        issue, next_update = window or self.collateral_window()
        return self._signed_json(
            {
                "id": "SGX",
                "version": 3,
                "issueDate": _iso(issue),
                "nextUpdate": _iso(next_update),
                "fmspc": fmspc.hex().upper(),
                "pceId": pce_id.hex().upper(),
                "tcbType": 0,
                "tcbEvaluationDataNumber": evaluation_data_number,
                "tcbLevels": [level.to_json() for level in levels],
            }
        )

    def qe_identity(
        self,
        policy: QeIdentityPolicy = QeIdentityPolicy(),
        *,
        window: tuple[int, int] | None = None,
        evaluation_data_number: int = 17,
    ) -> tuple[str, bytes]:
        """QE identity v2 JSON body for the sim QE and its raw r||s signature."""
        issue, next_update = window or self.collateral_window()
        return self._signed_json(
            {
                "id": "QE",
                "version": 2,
                "issueDate": _iso(issue),
                "nextUpdate": _iso(next_update),
                "tcbEvaluationDataNumber": evaluation_data_number,
                "miscselect": policy.miscselect.hex().upper(),
                "miscselectMask": policy.miscselect_mask.hex().upper(),
                "attributes": policy.attributes.hex().upper(),
                "attributesMask": policy.attributes_mask.hex().upper(),
                "mrsigner": policy.mrsigner.hex().upper(),
                "isvprodid": policy.isvprodid,
                "tcbLevels": [
                    {"tcb": {"isvsvn": policy.min_isvsvn}, "tcbDate": policy.tcb_date, "tcbStatus": "UpToDate"}
                ],
            }
        )

    def collateral_dict(
        self,
        fmspc: bytes = DEFAULT_FMSPC,
        *,
        pce_id: bytes = b"\x00\x00",
        tcb_levels: Sequence[TcbLevel] = (TcbLevel(),),
        qe_policy: QeIdentityPolicy = QeIdentityPolicy(),
        now: float | None = None,
        days: int = 30,
        revoked_pck_serials: Iterable[int] = (),
    ) -> dict[str, str]:
        """Collateral for quotes from platforms with ``fmspc``, as a JSON-able dict.

        The dict has exactly the shape ``dcap_qvl.QuoteCollateralV3.from_json``
        reads (and Intel PCS/PCCS data maps to): PEM issuer chains as strings,
        the JSON bodies as strings, CRLs and r||s signatures as hex strings.
        """
        window = self.collateral_window(now, days)
        tcb_json, tcb_sig = self.tcb_info(fmspc, pce_id=pce_id, levels=tcb_levels, window=window)
        qe_json, qe_sig = self.qe_identity(qe_policy, window=window)
        signing_chain = (_pem(self.tcb_signing_cert) + _pem(self.root_cert)).decode()
        return {
            "pck_crl_issuer_chain": (_pem(self.platform_ca_cert) + _pem(self.root_cert)).decode(),
            "root_ca_crl": self._crl(self.root_key, self.root_cert, window).hex(),
            "pck_crl": self._crl(self.platform_ca_key, self.platform_ca_cert, window, revoked_pck_serials).hex(),
            "tcb_info_issuer_chain": signing_chain,
            "tcb_info": tcb_json,
            "tcb_info_signature": tcb_sig.hex(),
            "qe_identity_issuer_chain": signing_chain,
            "qe_identity": qe_json,
            "qe_identity_signature": qe_sig.hex(),
        }

    def collateral(self, fmspc: bytes = DEFAULT_FMSPC, **kwargs: Any) -> dcap_qvl.QuoteCollateralV3:
        """Like :meth:`collateral_dict` but as the ``dcap_qvl.QuoteCollateralV3`` object verify() takes."""
        return collateral_from_dict(self.collateral_dict(fmspc, **kwargs))


def collateral_from_dict(data: dict[str, str]) -> dcap_qvl.QuoteCollateralV3:
    """Turn a collateral dict (the from_json shape) into ``dcap_qvl.QuoteCollateralV3``."""
    import dcap_qvl  # imported lazily: only verifiers need it, not quote producers

    return dcap_qvl.QuoteCollateralV3(
        pck_crl_issuer_chain=data["pck_crl_issuer_chain"],
        root_ca_crl=bytes.fromhex(data["root_ca_crl"]),
        pck_crl=bytes.fromhex(data["pck_crl"]),
        tcb_info_issuer_chain=data["tcb_info_issuer_chain"],
        tcb_info=data["tcb_info"],
        tcb_info_signature=bytes.fromhex(data["tcb_info_signature"]),
        qe_identity_issuer_chain=data["qe_identity_issuer_chain"],
        qe_identity=data["qe_identity"],
        qe_identity_signature=bytes.fromhex(data["qe_identity_signature"]),
    )
