"""Content identifiers (CIDs): shared by the store and the enclave runtime.

Standard library only (this module is part of the trusted base: the enclave
re-hashes the encrypted AI against its CID).

Only the small corner of the multiformats world that the store uses is
supported, on purpose: every CID that enters the node (from a user, a peer or a
file name on disk) is parsed here, so anything outside that corner is rejected
with a :class:`CidError` instead of being half-understood.

Supported:

* CIDv0: the base58btc string ``Qm…`` (46 characters) or its 34-byte binary
  form, which always means dag-pb + sha2-256.
* CIDv1: ``<varint version=1><varint codec><multihash>`` with codec raw
  (0x55) or dag-pb (0x70). Strings are multibase: we encode base32 lower
  (prefix ``b``, RFC 4648, no padding) and decode ``b`` and base58btc ``z``.
* Multihash: sha2-256 (0x12) with a 32-byte digest only.

Every decoder is strict and canonical: a string or byte sequence is accepted
only if encoding the parsed CID again gives exactly the same text or bytes
(no padding, no upper case in base32, no trailing bytes, minimal varints).
That way one CID has one spelling, which matters because the blockstore uses
the spelling as a file name.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass
from typing import Final


__all__ = [
    "RAW",
    "DAG_PB",
    "SHA2_256",
    "CidError",
    "VarintError",
    "Cid",
    "encode_uvarint",
    "decode_uvarint",
]

RAW: Final = 0x55
DAG_PB: Final = 0x70
SHA2_256: Final = 0x12
DIGEST_SIZE: Final = 32

CODEC_NAMES: Final = {RAW: "raw", DAG_PB: "dag-pb"}

# The multiformats unsigned-varint spec caps varints at 9 bytes (63 bits) and
# requires the minimal encoding; both rules keep a hostile input from making us
# loop or accept two spellings of one value.
MAX_VARINT_BYTES: Final = 9

# A CIDv1 here is at most 4 bytes of header + 34 bytes of multihash; its
# base58 spelling is ~52 characters. Anything far longer is rejected before we
# run base58's quadratic decoder on it.
_MAX_CID_TEXT: Final = 128
_MAX_CID_BYTES: Final = 64

_B32_ALPHABET: Final = frozenset("abcdefghijklmnopqrstuvwxyz234567")
_B58_DIGITS: Final = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_ALPHABET: Final = frozenset(_B58_DIGITS)
_B58_INDEX: Final = {c: i for i, c in enumerate(_B58_DIGITS)}


def b58encode(data: bytes) -> str:
    """base58btc (bitcoin alphabet); leading zero bytes become leading '1's."""
    n = int.from_bytes(data, "big")
    out = []
    while n:
        n, r = divmod(n, 58)
        out.append(_B58_DIGITS[r])
    zeros = len(data) - len(data.lstrip(b"\0"))
    return "1" * zeros + "".join(reversed(out))


def b58decode(text: str) -> bytes:
    n = 0
    for c in text:
        n = n * 58 + _B58_INDEX[c]
    zeros = len(text) - len(text.lstrip("1"))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
    return b"\0" * zeros + body


class CidError(ValueError):
    """A CID string or byte sequence is malformed or not supported."""


class VarintError(ValueError):
    """An unsigned varint is truncated, too long or not minimally encoded."""


def encode_uvarint(value: int) -> bytes:
    """Encode a non-negative integer as an unsigned LEB128 varint."""
    if value < 0:
        raise VarintError(f"varint cannot encode a negative number ({value})")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def decode_uvarint(data: bytes | memoryview, pos: int = 0,
                   max_bytes: int = MAX_VARINT_BYTES) -> tuple[int, int]:
    """Read one unsigned varint from ``data`` at ``pos``.

    Returns ``(value, position after the varint)``. Raises
    :class:`VarintError` if the input ends inside the varint, the varint is
    longer than ``max_bytes``, or it is not minimally encoded (a trailing
    0x00 continuation byte), so every value has exactly one encoding.
    """
    value = 0
    shift = 0
    start = pos
    end = len(data)
    while True:
        if pos >= end:
            raise VarintError("truncated varint")
        if pos - start >= max_bytes:
            raise VarintError(f"varint longer than {max_bytes} bytes")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            if byte == 0 and pos - start > 1:
                raise VarintError("varint is not minimally encoded")
            return value, pos


def _b32encode(data: bytes) -> str:
    return base64.b32encode(data).decode("ascii").rstrip("=").lower()


def _b32decode(text: str) -> bytes:
    bad = set(text) - _B32_ALPHABET
    if bad:
        raise CidError(f"invalid base32 character(s) {''.join(sorted(bad))!r}"
                       " (only lower-case RFC 4648 base32 without padding)")
    padding = "=" * (-len(text) % 8)
    try:
        raw = base64.b32decode(text.upper() + padding)
    except (binascii.Error, ValueError) as exc:
        raise CidError(f"invalid base32 length {len(text)}") from exc
    if _b32encode(raw) != text:
        raise CidError("non-canonical base32 (stray trailing bits)")
    return raw


def _b58decode(text: str) -> bytes:
    bad = set(text) - _B58_ALPHABET
    if bad:
        raise CidError(f"invalid base58btc character(s) {''.join(sorted(bad))!r}")
    # base58 is a bijection once the alphabet is checked (leading '1's are
    # leading zero bytes), so no canonical-form check is needed here.
    return b58decode(text)


@dataclass(frozen=True, slots=True)
class Cid:
    """A validated CID: version, codec and the sha2-256 digest.

    Instances are immutable and hashable; two CIDs compare equal only when all
    three fields do (so a CIDv0 and the CIDv1 of the same dag-pb block differ;
    use :meth:`to_v1` to normalise).
    """

    version: int
    codec: int
    digest: bytes

    def __post_init__(self) -> None:
        if type(self.version) is not int or self.version not in (0, 1):
            raise CidError(f"unsupported CID version {self.version!r}")
        if type(self.codec) is not int:
            raise CidError(f"codec must be an int, not {type(self.codec).__name__}")
        if self.codec not in CODEC_NAMES:
            raise CidError(f"unsupported codec 0x{self.codec:x}")
        if self.version == 0 and self.codec != DAG_PB:
            raise CidError("CIDv0 can only name dag-pb blocks")
        if not isinstance(self.digest, bytes) or len(self.digest) != DIGEST_SIZE:
            raise CidError(f"digest must be {DIGEST_SIZE} bytes of sha2-256")

    # -- construction -----------------------------------------------------

    @classmethod
    def for_block(cls, codec: int, data: bytes | bytearray | memoryview,
                  version: int = 1) -> Cid:
        """The CID of ``data`` (hashed with sha2-256) under ``codec``."""
        return cls(version, codec, hashlib.sha256(data).digest())

    @classmethod
    def decode(cls, text: str) -> Cid:
        """Parse a CID string (``Qm…`` CIDv0, or multibase ``b``/``z`` CIDv1)."""
        if not isinstance(text, str):
            raise CidError(f"CID text must be str, not {type(text).__name__}")
        if not text:
            raise CidError("empty CID string")
        if len(text) > _MAX_CID_TEXT:
            raise CidError(f"CID string too long ({len(text)} characters)")
        if not text.isascii():
            raise CidError("CID string contains non-ASCII characters")
        if len(text) == 46 and text.startswith("Qm"):
            raw = _b58decode(text)
            if len(raw) != 34:
                raise CidError("CIDv0 does not decode to a 34-byte multihash")
            return cls.from_bytes(raw)
        if text.startswith("Qm"):
            raise CidError(f"a CIDv0 'Qm…' string has 46 characters, not {len(text)}")
        prefix, body = text[0], text[1:]
        if prefix == "b":
            raw = _b32decode(body)
        elif prefix == "z":
            raw = _b58decode(body)
        else:
            raise CidError(f"unsupported multibase prefix {prefix!r}"
                           " (expected 'b' base32, 'z' base58btc or a 'Qm…' CIDv0)")
        cid = cls.from_bytes(raw)
        if cid.version == 0:
            raise CidError("a CIDv0 must be written as plain base58btc 'Qm…', without multibase")
        return cid

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> Cid:
        """Parse the binary form of a CID (no multibase prefix)."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise CidError(f"CID bytes must be bytes, not {type(data).__name__}")
        data = bytes(data)
        if not data:
            raise CidError("empty CID bytes")
        if len(data) > _MAX_CID_BYTES:
            raise CidError(f"CID bytes too long ({len(data)} bytes)")
        if data[0] == SHA2_256:
            if len(data) != 2 + DIGEST_SIZE or data[1] != DIGEST_SIZE:
                raise CidError("CIDv0 must be exactly 0x12 0x20 followed by a 32-byte digest")
            return cls(0, DAG_PB, data[2:])
        try:
            version, pos = decode_uvarint(data, 0)
            if version != 1:
                raise CidError(f"unsupported CID version {version}")
            codec, pos = decode_uvarint(data, pos)
            if codec not in CODEC_NAMES:
                raise CidError(f"unsupported codec 0x{codec:x} (only raw 0x55 and dag-pb 0x70)")
            hash_code, pos = decode_uvarint(data, pos)
            if hash_code != SHA2_256:
                raise CidError(f"unsupported multihash function 0x{hash_code:x} (only sha2-256)")
            size, pos = decode_uvarint(data, pos)
        except VarintError as exc:
            raise CidError(f"bad varint in CID: {exc}") from exc
        if size != DIGEST_SIZE:
            raise CidError(f"sha2-256 digest length must be 32, not {size}")
        digest = data[pos:]
        if len(digest) < DIGEST_SIZE:
            raise CidError("truncated CID: digest is shorter than 32 bytes")
        if len(digest) > DIGEST_SIZE:
            raise CidError(f"{len(digest) - DIGEST_SIZE} trailing byte(s) after the CID")
        return cls(1, codec, digest)

    # -- output -----------------------------------------------------------

    @property
    def multihash(self) -> bytes:
        """The multihash bytes: sha2-256 code, length, digest."""
        return bytes((SHA2_256, DIGEST_SIZE)) + self.digest

    def to_bytes(self) -> bytes:
        """The binary CID (what dag-pb links carry)."""
        if self.version == 0:
            return self.multihash
        return encode_uvarint(1) + encode_uvarint(self.codec) + self.multihash

    def encode(self) -> str:
        """The canonical string: ``Qm…`` for CIDv0, base32 ``b…`` for CIDv1."""
        if self.version == 0:
            return b58encode(self.multihash)
        return "b" + _b32encode(self.to_bytes())

    def to_v1(self) -> Cid:
        """The same block named as a CIDv1 (a no-op for CIDv1)."""
        return self if self.version == 1 else Cid(1, self.codec, self.digest)

    def verify(self, data: bytes | bytearray | memoryview) -> bool:
        """Whether ``data`` is the block this CID names."""
        return hashlib.sha256(data).digest() == self.digest

    @property
    def codec_name(self) -> str:
        return CODEC_NAMES[self.codec]

    def __str__(self) -> str:
        return self.encode()

    def __repr__(self) -> str:
        return f"Cid({self.encode()!r})"
