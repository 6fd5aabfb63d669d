"""t-of-n Shamir sharing of a 32-byte AES-256 key, with pycryptodome.

pycryptodome's ``Crypto.Protocol.SecretSharing.Shamir`` shares 16-byte
secrets (polynomials over GF(2^128)). A 32-byte key is therefore shared as two
independent 16-byte halves with the same indices::

    key   = K_lo (bytes 0..15) || K_hi (bytes 16..31)
    share i (32 bytes) = Shamir_i(K_lo) || Shamir_i(K_hi)      i = 1..n

Any t shares rebuild both halves; t-1 shares reveal nothing about either.
Indices are 1..n (n <= 255); secrets peer number i of the genesis list (1-based)
holds share i. No field arithmetic is done here: split and combine are
pycryptodome's. The enclave side combines with the same code
(:func:`enclave.secret_client.combine_shares`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from Crypto.Protocol.SecretSharing import Shamir

from enclave.secret_client import KEY_SIZE, SHARE_SIZE, key_check

__all__ = ["Share", "ShamirError", "split_key", "combine_key", "key_check", "MAX_SHARES"]

MAX_SHARES = 255


class ShamirError(ValueError):
    pass


@dataclass(frozen=True)
class Share:
    index: int  # 1..n
    value: bytes = field(repr=False)  # 32 bytes: share of the low half || share of the high half


def split_key(key: bytes | bytearray, threshold: int, n: int) -> list[Share]:
    """n shares of a 32-byte key, any ``threshold`` of which rebuild it."""
    if len(key) != KEY_SIZE:
        raise ShamirError(f"key must be {KEY_SIZE} bytes, got {len(key)}")
    if not 1 <= threshold <= n <= MAX_SHARES:
        raise ShamirError(f"need 1 <= threshold ({threshold}) <= n ({n}) <= {MAX_SHARES}")
    lo = Shamir.split(threshold, n, bytes(key[:16]), ssss=False)
    hi = Shamir.split(threshold, n, bytes(key[16:]), ssss=False)
    shares = []
    for (i, a), (j, b) in zip(lo, hi):
        assert i == j
        shares.append(Share(index=i, value=a + b))
    return shares


def combine_key(shares: Sequence[Share]) -> bytearray:
    """The key from at least ``threshold`` distinct shares (fewer give a wrong key, silently:
    compare with :func:`key_check`)."""
    if not shares:
        raise ShamirError("no shares")
    if len({s.index for s in shares}) != len(shares):
        raise ShamirError("duplicate share index")
    for s in shares:
        if len(s.value) != SHARE_SIZE or not 1 <= s.index <= MAX_SHARES:
            raise ShamirError(f"share {s.index} is malformed")
    lo = Shamir.combine([(s.index, s.value[:16]) for s in shares], ssss=False)
    hi = Shamir.combine([(s.index, s.value[16:]) for s in shares], ssss=False)
    return bytearray(lo + hi)
