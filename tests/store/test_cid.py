"""CID parsing and encoding: round trips, known vectors, and every malformed class."""

from __future__ import annotations

import base64
import hashlib

import base58
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from enclave.cid import (
    DAG_PB,
    RAW,
    Cid,
    CidError,
    VarintError,
    decode_uvarint,
    encode_uvarint,
)

EMPTY_DIGEST = hashlib.sha256(b"").digest()
# Known vectors (dag-pb spec: the zero-length block; kubo: "hello world").
EMPTY_PB_V0 = "QmdfTbBqBPQ7VNxZEYEj14VmRuZBkqFbiwReogJgS1zR1n"
EMPTY_PB_V1 = "bafybeihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
HELLO_RAW = "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e"


def b32(data: bytes) -> str:
    return "b" + base64.b32encode(data).decode().rstrip("=").lower()


def z58(data: bytes) -> str:
    return "z" + base58.b58encode(data).decode()


def v1_bytes(codec: int = RAW, digest: bytes = EMPTY_DIGEST) -> bytes:
    return bytes([1, codec, 0x12, 0x20]) + digest


# ---------------------------------------------------------------- varints


@pytest.mark.parametrize("value,encoded", [
    (0, b"\x00"), (1, b"\x01"), (127, b"\x7f"), (128, b"\x80\x01"),
    (300, b"\xac\x02"), (2**63 - 1, b"\xff" * 8 + b"\x7f"),
])
def test_varint_round_trip(value: int, encoded: bytes) -> None:
    assert encode_uvarint(value) == encoded
    assert decode_uvarint(encoded) == (value, len(encoded))
    assert decode_uvarint(b"junk" + encoded + b"tail", 4) == (value, 4 + len(encoded))


@pytest.mark.parametrize("data,why", [
    (b"", "truncated"),
    (b"\x80", "truncated"),
    (b"\xff" * 9 + b"\x01", "longer than 9"),
    (b"\x80\x00", "minimal"),
    (b"\x81\x80\x00", "minimal"),
])
def test_varint_rejects(data: bytes, why: str) -> None:
    with pytest.raises(VarintError, match=why):
        decode_uvarint(data)


def test_varint_rejects_negative() -> None:
    with pytest.raises(VarintError):
        encode_uvarint(-1)


# ---------------------------------------------------------------- valid CIDs


def test_known_vectors() -> None:
    v0 = Cid.decode(EMPTY_PB_V0)
    assert (v0.version, v0.codec, v0.digest) == (0, DAG_PB, EMPTY_DIGEST)
    assert v0.encode() == EMPTY_PB_V0
    assert v0.to_v1().encode() == EMPTY_PB_V1
    assert Cid.for_block(DAG_PB, b"", version=0) == v0
    assert Cid.for_block(RAW, b"hello world").encode() == HELLO_RAW


@pytest.mark.parametrize("cid", [
    Cid(0, DAG_PB, EMPTY_DIGEST),
    Cid(1, DAG_PB, EMPTY_DIGEST),
    Cid(1, RAW, EMPTY_DIGEST),
    Cid.for_block(RAW, b"x" * 1000),
])
def test_round_trips(cid: Cid) -> None:
    assert Cid.decode(cid.encode()) == cid
    assert Cid.from_bytes(cid.to_bytes()) == cid
    assert Cid.from_bytes(bytearray(cid.to_bytes())) == cid
    assert Cid.from_bytes(memoryview(cid.to_bytes())) == cid
    assert str(cid) == cid.encode()
    assert cid.encode() in repr(cid)
    assert hash(Cid.decode(cid.encode())) == hash(cid)
    if cid.version == 1:
        assert cid.encode().startswith("b")
        assert Cid.decode(z58(cid.to_bytes())) == cid  # base58btc multibase accepted
    else:
        assert cid.encode().startswith("Qm") and len(cid.encode()) == 46


def test_v0_and_v1_are_different_names_of_one_block() -> None:
    v0, v1 = Cid(0, DAG_PB, EMPTY_DIGEST), Cid(1, DAG_PB, EMPTY_DIGEST)
    assert v0 != v1
    assert v0.to_v1() == v1 and v1.to_v1() is v1


def test_verify() -> None:
    cid = Cid.for_block(RAW, b"hello world")
    assert cid.verify(b"hello world")
    assert cid.verify(memoryview(b"hello world"))
    assert not cid.verify(b"hello world!")
    assert cid.codec_name == "raw"
    assert cid.multihash == b"\x12\x20" + hashlib.sha256(b"hello world").digest()


# ---------------------------------------------------------------- bad strings

GOOD_V1 = b32(v1_bytes())
GOOD_V1_DIGEST_OFF = b32(v1_bytes(digest=EMPTY_DIGEST[:31]))


def _nonzero_trailing_bits() -> str:
    # 36 bytes = 288 bits; the last of 58 base32 characters carries 3 bits and
    # 2 zero pad bits. Set a pad bit: decodes to the same bytes, but is a
    # second spelling of the CID and must be refused.
    body = GOOD_V1[1:]
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"
    last = alphabet.index(body[-1])
    return "b" + body[:-1] + alphabet[last | 1]


BAD_STRINGS = {
    "empty": "",
    "too long": "b" + "a" * 300,
    "non-ascii": GOOD_V1[:-1] + "é",
    "unknown multibase": "f" + v1_bytes().hex(),
    "upper-case base32 prefix": "B" + GOOD_V1[1:].upper(),
    "upper-case base32 body": "b" + GOOD_V1[1:].upper(),
    "base32 padding": GOOD_V1 + "====",
    "base32 bad char": GOOD_V1[:-1] + "1",
    "base32 bad length": GOOD_V1 + "a",
    "base32 non-canonical tail": _nonzero_trailing_bits(),
    "leading space": " " + GOOD_V1,
    "trailing newline": GOOD_V1 + "\n",
    "v0 trailing space": EMPTY_PB_V0 + " ",
    "v0 bad base58 char": EMPTY_PB_V0[:-1] + "0",
    "v0 wrong length": EMPTY_PB_V0[:-1],
    "v0 wrong multihash length byte": "Qm" + "z" * 44,
    "z bad base58 char": "zO" + GOOD_V1[2:],
    "z-wrapped CIDv0": z58(b"\x12\x20" + EMPTY_DIGEST),
    "only a prefix": "b",
    "truncated": GOOD_V1[:-8],
    "short digest": GOOD_V1_DIGEST_OFF,
}


@pytest.mark.parametrize("text", list(BAD_STRINGS.values()), ids=list(BAD_STRINGS))
def test_bad_strings(text: str) -> None:
    with pytest.raises(CidError):
        Cid.decode(text)


@pytest.mark.parametrize("value", [None, b"bafy", 5, ["b"]])
def test_decode_needs_str(value: object) -> None:
    with pytest.raises(CidError, match="must be str"):
        Cid.decode(value)  # type: ignore[arg-type]


# ---------------------------------------------------------------- bad bytes

BAD_BYTES = {
    "empty": b"",
    "too long": v1_bytes() + b"\x00" * 64,
    "version 0 as varint": b"\x00\x55\x12\x20" + EMPTY_DIGEST,
    "version 2": b"\x02\x55\x12\x20" + EMPTY_DIGEST,
    "version 3": b"\x03\x70\x12\x20" + EMPTY_DIGEST,
    "dag-cbor codec": v1_bytes(codec=0x71),
    "sha2-512": b"\x01\x55\x13\x20" + EMPTY_DIGEST,
    "identity hash": b"\x01\x55\x00\x0b" + b"hello world",
    "declared length 31": b"\x01\x55\x12\x1f" + EMPTY_DIGEST[:31],
    "declared length 33": b"\x01\x55\x12\x21" + EMPTY_DIGEST + b"\x00",
    "truncated digest": v1_bytes()[:-1],
    "trailing byte": v1_bytes() + b"\x00",
    "non-minimal codec varint": b"\x01\xd5\x00\x12\x20" + EMPTY_DIGEST,
    "overlong varint": b"\x01" + b"\xff" * 12,
    "truncated varint": b"\x01\xf0",
    "header only": b"\x01\x55",
    "v0 truncated": b"\x12\x20" + EMPTY_DIGEST[:-1],
    "v0 trailing": b"\x12\x20" + EMPTY_DIGEST + b"\x00",
    "v0 wrong length byte": b"\x12\x1f" + EMPTY_DIGEST,
}


@pytest.mark.parametrize("data", list(BAD_BYTES.values()), ids=list(BAD_BYTES))
def test_bad_bytes(data: bytes) -> None:
    with pytest.raises(CidError):
        Cid.from_bytes(data)
    if data:  # the same bytes in a multibase string must fail the same way
        with pytest.raises(CidError):
            Cid.decode(b32(data))


@pytest.mark.parametrize("value", [None, "bafy", 5])
def test_from_bytes_needs_bytes(value: object) -> None:
    with pytest.raises(CidError, match="must be bytes"):
        Cid.from_bytes(value)  # type: ignore[arg-type]


def test_error_messages_say_what_is_wrong() -> None:
    with pytest.raises(CidError, match="codec 0x71"):
        Cid.from_bytes(v1_bytes(codec=0x71))
    with pytest.raises(CidError, match="multibase prefix 'f'"):
        Cid.decode("f0155")
    with pytest.raises(CidError, match="trailing"):
        Cid.from_bytes(v1_bytes() + b"\x00")


# ---------------------------------------------------------------- bad fields


@pytest.mark.parametrize("version,codec,digest", [
    (2, RAW, EMPTY_DIGEST),
    (True, RAW, EMPTY_DIGEST),
    ("1", RAW, EMPTY_DIGEST),
    (1, 0x71, EMPTY_DIGEST),
    (1, "raw", EMPTY_DIGEST),
    (0, RAW, EMPTY_DIGEST),
    (1, RAW, EMPTY_DIGEST[:31]),
    (1, RAW, EMPTY_DIGEST.hex()),
    (1, RAW, bytearray(EMPTY_DIGEST)),
])
def test_constructor_validates(version: object, codec: object, digest: object) -> None:
    with pytest.raises(CidError):
        Cid(version, codec, digest)  # type: ignore[arg-type]


# ---------------------------------------------------------------- fuzzing


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_any_text_is_a_cid_or_cid_error(text: str) -> None:
    try:
        cid = Cid.decode(text)
    except CidError:
        return
    assert cid.encode() == text or text.startswith("z")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80))
def test_any_bytes_are_a_cid_or_cid_error(data: bytes) -> None:
    try:
        cid = Cid.from_bytes(data)
    except CidError:
        return
    assert cid.to_bytes() == data


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 35), st.integers(0, 255))
def test_mutated_cid_bytes(pos: int, byte: int) -> None:
    data = bytearray(v1_bytes(DAG_PB))
    data[pos] = byte
    try:
        cid = Cid.from_bytes(bytes(data))
    except CidError:
        return
    assert cid.to_bytes() == bytes(data)
