"""Byte layout of Intel SGX DCAP quotes, version 3, ECDSA-P256 attestation key.

This module builds and parses the exact structure that Intel's Quoting
Enclave (QE3) emits and that ``dcap_qvl`` verifies, so the ``sim`` backend and
real hardware produce interchangeable bytes::

    offset  size  part
    0       48    QuoteHeader            \\  signed by the attestation key
    48      384   ReportBody (ISV)       /   (the "ISV signature")
    432     4     signature data length (u32)
    436     64    ISV signature r||s     (ECDSA P-256, SHA-256, big-endian r, s)
    500     64    attestation public key x||y
    564     384   QE report body         (signed by the PCK key)
    948     64    QE report signature r||s
    1012    2     QE authentication data length (u16)
    1014    n     QE authentication data
    ...     2     certification data type (u16; 5 = PCK cert chain PEM)
    ...     4     certification data length (u32)
    ...     m     certification data

All integers are little-endian. ``parse`` is strict: every length must add up
exactly and no bytes may trail, and any malformed input raises
``QuoteFormatError`` (never another exception type), because quotes arrive
from untrusted peers and callers must be able to catch exactly one error.

Standard library only: this file is imported inside the enclave.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

__all__ = [
    "QuoteFormatError",
    "QuoteHeader",
    "ReportBody",
    "SignatureData",
    "Quote",
    "parse",
    "parse_report_body",
    "HEADER_LEN",
    "REPORT_BODY_LEN",
    "SIGNED_LEN",
    "INTEL_QE_VENDOR_ID",
    "CERT_TYPE_PCK_CHAIN",
    "ATTR_INIT",
    "ATTR_DEBUG",
    "ATTR_MODE64BIT",
    "ATTR_PROVISIONKEY",
]

HEADER_LEN = 48
REPORT_BODY_LEN = 384
SIGNED_LEN = HEADER_LEN + REPORT_BODY_LEN  # bytes covered by the ISV signature
ECDSA_SIG_LEN = 64
ECDSA_KEY_LEN = 64
QUOTE_VERSION_3 = 3
ATT_KEY_ECDSA_P256 = 2
TEE_TYPE_SGX = 0
CERT_TYPE_PCK_CHAIN = 5
#: QE vendor id of Intel's quoting enclave; dcap-qvl rejects any other value.
INTEL_QE_VENDOR_ID = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")

# SGX ATTRIBUTES.FLAGS bits (low 64 bits of the 16-byte attributes field).
ATTR_INIT = 0x01
ATTR_DEBUG = 0x02
ATTR_MODE64BIT = 0x04
ATTR_PROVISIONKEY = 0x10

# Fixed-size part of the signature data before the variable QE auth data.
_SIG_FIXED_LEN = ECDSA_SIG_LEN + ECDSA_KEY_LEN + REPORT_BODY_LEN + ECDSA_SIG_LEN


class QuoteFormatError(ValueError):
    """The bytes are not a well-formed DCAP v3 ECDSA-P256 SGX quote."""


def _need(value: bytes, size: int, name: str) -> bytes:
    """Return ``value`` as bytes if it has exactly ``size`` bytes, else raise."""
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise QuoteFormatError(f"{name} must be bytes, got {type(value).__name__}")
    value = bytes(value)
    if len(value) != size:
        raise QuoteFormatError(f"{name} must be {size} bytes, got {len(value)}")
    return value


def _bytes(value: bytes, name: str) -> bytes:
    """Return a variable-length bytes-like ``value`` as bytes, else raise."""
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise QuoteFormatError(f"{name} must be bytes, got {type(value).__name__}")
    return bytes(value)


def _uint(value: int, bits: int, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < (1 << bits):
        raise QuoteFormatError(f"{name} must be an unsigned {bits}-bit int, got {value!r}")
    return value


@dataclass(frozen=True)
class QuoteHeader:
    """The 48-byte quote header (``sgx_quote_header_t``).

    ``user_data`` is 20 bytes; Intel's QE puts a 16-byte platform QE ID there,
    followed by four zero bytes.
    """

    qe_svn: int
    pce_svn: int
    user_data: bytes = bytes(20)
    version: int = QUOTE_VERSION_3
    attestation_key_type: int = ATT_KEY_ECDSA_P256
    tee_type: int = TEE_TYPE_SGX
    qe_vendor_id: bytes = INTEL_QE_VENDOR_ID

    def __post_init__(self) -> None:
        _uint(self.version, 16, "version")
        _uint(self.attestation_key_type, 16, "attestation_key_type")
        _uint(self.tee_type, 32, "tee_type")
        _uint(self.qe_svn, 16, "qe_svn")
        _uint(self.pce_svn, 16, "pce_svn")
        object.__setattr__(self, "qe_vendor_id", _need(self.qe_vendor_id, 16, "qe_vendor_id"))
        object.__setattr__(self, "user_data", _need(self.user_data, 20, "user_data"))

    def to_bytes(self) -> bytes:
        return struct.pack(
            "<HHIHH16s20s",
            self.version,
            self.attestation_key_type,
            self.tee_type,
            self.qe_svn,
            self.pce_svn,
            self.qe_vendor_id,
            self.user_data,
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> QuoteHeader:
        data = _need(data, HEADER_LEN, "quote header")
        version, ak_type, tee_type, qe_svn, pce_svn, vendor, user = struct.unpack("<HHIHH16s20s", data)
        return cls(
            qe_svn=qe_svn,
            pce_svn=pce_svn,
            user_data=user,
            version=version,
            attestation_key_type=ak_type,
            tee_type=tee_type,
            qe_vendor_id=vendor,
        )


# (name, size) of every field of sgx_report_body_t, in order; sizes add to 384.
_REPORT_FIELDS: tuple[tuple[str, int], ...] = (
    ("cpu_svn", 16),
    ("misc_select", 4),
    ("reserved1", 12),
    ("isv_ext_prod_id", 16),
    ("attributes", 16),
    ("mr_enclave", 32),
    ("reserved2", 32),
    ("mr_signer", 32),
    ("reserved3", 32),
    ("config_id", 64),
    ("isv_prod_id", 2),
    ("isv_svn", 2),
    ("config_svn", 2),
    ("reserved4", 42),
    ("isv_family_id", 16),
    ("report_data", 64),
)
_REPORT_INTS = {"misc_select", "isv_prod_id", "isv_svn", "config_svn"}
assert sum(size for _, size in _REPORT_FIELDS) == REPORT_BODY_LEN


@dataclass(frozen=True)
class ReportBody:
    """The 384-byte enclave report body (``sgx_report_body_t``).

    Used twice in a quote: for the attested (ISV) enclave and for the QE.
    ``attributes`` is FLAGS (u64 LE) followed by XFRM (u64 LE); the DEBUG flag
    is bit 1 of FLAGS and is exposed as :pyattr:`debug`.
    """

    mr_enclave: bytes
    report_data: bytes = bytes(64)
    mr_signer: bytes = bytes(32)
    isv_prod_id: int = 0
    isv_svn: int = 0
    attributes: bytes = bytes(16)
    cpu_svn: bytes = bytes(16)
    misc_select: int = 0
    isv_ext_prod_id: bytes = bytes(16)
    config_id: bytes = bytes(64)
    config_svn: int = 0
    isv_family_id: bytes = bytes(16)
    reserved1: bytes = field(default=bytes(12), repr=False)
    reserved2: bytes = field(default=bytes(32), repr=False)
    reserved3: bytes = field(default=bytes(32), repr=False)
    reserved4: bytes = field(default=bytes(42), repr=False)

    def __post_init__(self) -> None:
        for name, size in _REPORT_FIELDS:
            value = getattr(self, name)
            if name in _REPORT_INTS:
                _uint(value, size * 8, name)
            else:
                object.__setattr__(self, name, _need(value, size, name))

    @property
    def attribute_flags(self) -> int:
        """ATTRIBUTES.FLAGS as an int (INIT=0x1, DEBUG=0x2, MODE64BIT=0x4, ...)."""
        return int.from_bytes(self.attributes[:8], "little")

    @property
    def xfrm(self) -> int:
        """ATTRIBUTES.XFRM: the CPU extended-state features enabled for the enclave."""
        return int.from_bytes(self.attributes[8:], "little")

    @property
    def debug(self) -> bool:
        """True for a debug enclave, whose memory the host can read: never trust its secrets."""
        return bool(self.attribute_flags & ATTR_DEBUG)

    def to_bytes(self) -> bytes:
        out = bytearray()
        for name, size in _REPORT_FIELDS:
            value = getattr(self, name)
            out += value.to_bytes(size, "little") if name in _REPORT_INTS else value
        return bytes(out)

    @classmethod
    def from_bytes(cls, data: bytes) -> ReportBody:
        data = _need(data, REPORT_BODY_LEN, "report body")
        values: dict[str, object] = {}
        offset = 0
        for name, size in _REPORT_FIELDS:
            chunk = data[offset : offset + size]
            values[name] = int.from_bytes(chunk, "little") if name in _REPORT_INTS else chunk
            offset += size
        return cls(**values)  # type: ignore[arg-type]


@dataclass(frozen=True)
class SignatureData:
    """ECDSA-P256 quote signature data (``sgx_ql_ecdsa_sig_data_t`` and what follows).

    ``isv_signature`` is r||s over header+ISV report by ``attestation_key``;
    ``qe_report`` certifies the attestation key (its report_data is
    SHA-256(attestation_key || qe_auth_data) || 32 zero bytes) and is signed by
    the PCK key in ``qe_report_signature``; ``cert_data`` (type 5) is the PEM
    PCK certificate chain that lets a verifier find the PCK public key.
    """

    isv_signature: bytes
    attestation_key: bytes
    qe_report: ReportBody
    qe_report_signature: bytes
    qe_auth_data: bytes
    cert_data_type: int
    cert_data: bytes

    def __post_init__(self) -> None:
        object.__setattr__(self, "isv_signature", _need(self.isv_signature, ECDSA_SIG_LEN, "isv_signature"))
        object.__setattr__(self, "attestation_key", _need(self.attestation_key, ECDSA_KEY_LEN, "attestation_key"))
        if not isinstance(self.qe_report, ReportBody):
            raise QuoteFormatError("qe_report must be a ReportBody")
        object.__setattr__(
            self, "qe_report_signature", _need(self.qe_report_signature, ECDSA_SIG_LEN, "qe_report_signature")
        )
        object.__setattr__(self, "qe_auth_data", _bytes(self.qe_auth_data, "qe_auth_data"))
        if len(self.qe_auth_data) > 0xFFFF:
            raise QuoteFormatError("qe_auth_data longer than 65535 bytes")
        _uint(self.cert_data_type, 16, "cert_data_type")
        object.__setattr__(self, "cert_data", _bytes(self.cert_data, "cert_data"))
        if len(self.cert_data) > 0xFFFFFFFF:
            raise QuoteFormatError("cert_data longer than 2**32-1 bytes")

    def to_bytes(self) -> bytes:
        return b"".join(
            (
                self.isv_signature,
                self.attestation_key,
                self.qe_report.to_bytes(),
                self.qe_report_signature,
                struct.pack("<H", len(self.qe_auth_data)),
                self.qe_auth_data,
                struct.pack("<HI", self.cert_data_type, len(self.cert_data)),
                self.cert_data,
            )
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> SignatureData:
        """Parse signature data that must be consumed exactly, with no trailing bytes."""
        data = _bytes(data, "signature data")
        if len(data) < _SIG_FIXED_LEN + 2:
            raise QuoteFormatError(f"signature data too short: {len(data)} bytes")
        off = 0
        isv_sig = data[off : off + ECDSA_SIG_LEN]
        off += ECDSA_SIG_LEN
        ak = data[off : off + ECDSA_KEY_LEN]
        off += ECDSA_KEY_LEN
        qe_report = ReportBody.from_bytes(data[off : off + REPORT_BODY_LEN])
        off += REPORT_BODY_LEN
        qe_sig = data[off : off + ECDSA_SIG_LEN]
        off += ECDSA_SIG_LEN
        (auth_len,) = struct.unpack_from("<H", data, off)
        off += 2
        if off + auth_len + 6 > len(data):
            raise QuoteFormatError(f"QE auth data length {auth_len} runs past the signature data")
        auth = data[off : off + auth_len]
        off += auth_len
        cert_type, cert_len = struct.unpack_from("<HI", data, off)
        off += 6
        if off + cert_len != len(data):
            raise QuoteFormatError(
                f"certification data length {cert_len} does not match the {len(data) - off} bytes left"
            )
        return cls(
            isv_signature=isv_sig,
            attestation_key=ak,
            qe_report=qe_report,
            qe_report_signature=qe_sig,
            qe_auth_data=auth,
            cert_data_type=cert_type,
            cert_data=data[off:],
        )

    @property
    def pck_cert_chain_pem(self) -> bytes:
        """The PEM PCK chain (leaf first), without Intel's trailing NUL byte.

        Raises QuoteFormatError when the certification data is not type 5.
        """
        if self.cert_data_type != CERT_TYPE_PCK_CHAIN:
            raise QuoteFormatError(f"certification data type {self.cert_data_type} is not a PCK cert chain (5)")
        return self.cert_data.rstrip(b"\0")


@dataclass(frozen=True)
class Quote:
    """A whole DCAP v3 SGX quote: header, ISV report body, signature data."""

    header: QuoteHeader
    report_body: ReportBody
    signature: SignatureData

    def signed_bytes(self) -> bytes:
        """The 432 bytes (header || ISV report body) the attestation key signs."""
        return self.header.to_bytes() + self.report_body.to_bytes()

    def to_bytes(self) -> bytes:
        sig = self.signature.to_bytes()
        return self.signed_bytes() + struct.pack("<I", len(sig)) + sig

    # Convenience accessors for the fields callers check most.
    @property
    def mr_enclave(self) -> bytes:
        return self.report_body.mr_enclave

    @property
    def mr_signer(self) -> bytes:
        return self.report_body.mr_signer

    @property
    def report_data(self) -> bytes:
        return self.report_body.report_data

    @property
    def debug(self) -> bool:
        return self.report_body.debug


def parse_report_body(data: bytes) -> ReportBody:
    """Parse a bare 384-byte report body (raises QuoteFormatError)."""
    return ReportBody.from_bytes(data)


def parse(data: bytes) -> Quote:
    """Strictly parse a DCAP v3 ECDSA-P256 SGX quote.

    Checks structure only (version 3, attestation key type 2, SGX TEE type,
    lengths that add up, no trailing bytes); it does NOT check any signature:
    that is the verifier's job (``dcap_qvl``). Raises QuoteFormatError only.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise QuoteFormatError(f"quote must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) < SIGNED_LEN + 4:
        raise QuoteFormatError(f"quote too short: {len(data)} bytes")
    header = QuoteHeader.from_bytes(data[:HEADER_LEN])
    if header.version != QUOTE_VERSION_3:
        raise QuoteFormatError(f"unsupported quote version {header.version} (only 3)")
    if header.attestation_key_type != ATT_KEY_ECDSA_P256:
        raise QuoteFormatError(f"unsupported attestation key type {header.attestation_key_type} (only 2, ECDSA-P256)")
    if header.tee_type != TEE_TYPE_SGX:
        raise QuoteFormatError(f"unsupported TEE type {header.tee_type:#x} (only SGX, 0)")
    body = ReportBody.from_bytes(data[HEADER_LEN:SIGNED_LEN])
    (sig_len,) = struct.unpack_from("<I", data, SIGNED_LEN)
    rest = data[SIGNED_LEN + 4 :]
    if sig_len != len(rest):
        raise QuoteFormatError(f"signature data length {sig_len} does not match the {len(rest)} bytes that follow")
    return Quote(header=header, report_body=body, signature=SignatureData.from_bytes(rest))
