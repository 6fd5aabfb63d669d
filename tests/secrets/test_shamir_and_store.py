"""Shamir sharing of 32-byte keys (pycryptodome, two 16-byte halves) and the sealed share store."""
from __future__ import annotations

import itertools
import json
import os
import stat

import pytest
from hypothesis import given, settings, strategies as st

from enclave import secret_client as enclave_side
from node.secrets.shamir import ShamirError, Share, combine_key, key_check, split_key
from node.secrets.share_store import STORAGE_KEY_FILE, ShareStore, ShareStoreError

from tests.dos.helpers import AI_CID, OTHER_AI_CID

OWNER = "12D3KooWAbCdEfGhJkLmNpQrStUvWxYz1234567890abcdefghij"  # shape only; the store does not parse it


# -- Shamir ----------------------------------------------------------------------------
def test_every_t_subset_rebuilds_the_key():
    key = os.urandom(32)
    shares = split_key(key, 3, 5)
    assert [s.index for s in shares] == [1, 2, 3, 4, 5] and all(len(s.value) == 32 for s in shares)
    for subset in itertools.combinations(shares, 3):
        assert bytes(combine_key(subset)) == key
    assert bytes(combine_key(shares)) == key  # more than t is fine


def test_t_minus_one_shares_give_a_wrong_key_that_the_check_catches():
    key = os.urandom(32)
    shares = split_key(key, 3, 5)
    wrong = combine_key(shares[:2])
    assert bytes(wrong) != key and key_check(wrong) != key_check(key)


def test_halves_are_independent_shamir_secrets():
    key = bytes(range(32))
    shares = split_key(key, 2, 3)
    from Crypto.Protocol.SecretSharing import Shamir

    assert Shamir.combine([(s.index, s.value[:16]) for s in shares[:2]]) == key[:16]
    assert Shamir.combine([(s.index, s.value[16:]) for s in shares[1:]]) == key[16:]


def test_enclave_side_combines_the_same_shares():
    key = os.urandom(32)
    shares = split_key(key, 2, 3)
    assert bytes(enclave_side.combine_shares([(s.index, bytearray(s.value)) for s in shares[1:]])) == key


@pytest.mark.parametrize("key, t, n", [(bytes(31), 2, 3), (bytes(32), 0, 3), (bytes(32), 4, 3), (bytes(32), 2, 256)])
def test_split_bounds(key, t, n):
    with pytest.raises(ShamirError):
        split_key(key, t, n)


def test_combine_rejects_duplicates_and_junk():
    shares = split_key(os.urandom(32), 2, 3)
    with pytest.raises(ShamirError):
        combine_key([shares[0], shares[0]])
    with pytest.raises(ShamirError):
        combine_key([shares[0], Share(2, b"short")])
    with pytest.raises(ShamirError):
        combine_key([])


@settings(max_examples=30, deadline=None)
@given(key=st.binary(min_size=32, max_size=32), t=st.integers(1, 6), extra=st.integers(0, 4), data=st.data())
def test_split_combine_property(key, t, extra, data):
    n = t + extra
    shares = split_key(key, t, n)
    subset = data.draw(st.permutations(shares)).__getitem__(slice(0, t))
    assert bytes(combine_key(subset)) == key


# -- the store ---------------------------------------------------------------------------
def deposit(store: ShareStore, share: bytes, *, version: int = 1, owner: str = OWNER, ai_cid: str = AI_CID, index: int = 1):
    return store.deposit(ai_cid=ai_cid, version=version, index=index, threshold=2, n=3, share=share,
                         key_check="ab" * 32, owner=owner)


def test_shares_are_sealed_at_rest_and_survive_restart(tmp_path):
    share = os.urandom(32)
    store = ShareStore(tmp_path / "secrets")
    rec, changed = deposit(store, share)
    assert changed and rec.version == 1
    files = list((tmp_path / "secrets" / "shares").iterdir())
    assert len(files) == 1
    raw = files[0].read_bytes()
    assert share not in raw and share.hex().encode() not in raw  # sealed, not in clear
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o600
    key_file = tmp_path / "secrets" / STORAGE_KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "secrets").stat().st_mode) == 0o700
    again = ShareStore(tmp_path / "secrets")  # a restart
    rec2, got = again.open(AI_CID)
    assert bytes(got) == share and rec2.public() == rec.public()


def test_storage_key_problems_are_named(tmp_path):
    d = tmp_path / "secrets"
    deposit(ShareStore(d), os.urandom(32))
    key_file = d / STORAGE_KEY_FILE
    os.chmod(key_file, 0o644)
    with pytest.raises(ShareStoreError, match="too open"):
        ShareStore(d)
    os.chmod(key_file, 0o600)
    key_file.write_bytes(b"short")
    with pytest.raises(ShareStoreError, match="corrupt storage key"):
        ShareStore(d)
    key_file.unlink()
    with pytest.raises(ShareStoreError, match="missing, but sealed shares exist"):
        ShareStore(d)


def test_a_wrong_storage_key_or_tampered_file_does_not_open(tmp_path):
    d = tmp_path / "secrets"
    deposit(ShareStore(d), os.urandom(32))
    (d / STORAGE_KEY_FILE).write_bytes(os.urandom(32))
    with pytest.raises(ShareStoreError, match="does not open"):
        ShareStore(d).open(AI_CID)


def test_metadata_is_bound_to_the_sealed_share(tmp_path):
    d = tmp_path / "secrets"
    deposit(ShareStore(d), os.urandom(32))
    path = next((d / "shares").iterdir())
    doc = json.loads(path.read_bytes())
    doc["index"] = 2  # move the share to another index on disk
    path.write_text(json.dumps(doc))
    with pytest.raises(ShareStoreError, match="does not open"):
        ShareStore(d).open(AI_CID)


def test_owner_version_and_revocation_rules(tmp_path):
    store = ShareStore(tmp_path / "s")
    s1, s2 = os.urandom(32), os.urandom(32)
    deposit(store, s1)
    assert deposit(store, s1) == (store.get(AI_CID), False)  # idempotent retry
    with pytest.raises(ShareStoreError, match="another publisher"):
        deposit(store, s2, version=2, owner="someone-else")
    with pytest.raises(ShareStoreError, match="already stored"):
        deposit(store, s2, version=1)
    rec, changed = deposit(store, s2, version=2)  # rotation
    assert changed and rec.version == 2 and bytes(store.open(AI_CID)[1]) == s2
    with pytest.raises(ShareStoreError, match="older"):
        deposit(store, s1, version=1)
    with pytest.raises(ShareStoreError, match="publisher"):
        store.revoke(AI_CID, by="someone-else")
    assert store.revoke(AI_CID, by=OWNER) and not store.revoke(AI_CID)
    with pytest.raises(ShareStoreError, match="revoked"):
        store.open(AI_CID)
    with pytest.raises(ShareStoreError, match="revoked"):
        deposit(store, s1, version=3)
    again = ShareStore(tmp_path / "s")
    assert again.get(AI_CID).revoked
    assert json.loads(next((tmp_path / "s" / "shares").iterdir()).read_bytes())["sealed"] is None  # erased
    with pytest.raises(ShareStoreError, match="no share"):
        again.open(OTHER_AI_CID)


def test_unreadable_share_file_is_an_error_not_silence(tmp_path):
    d = tmp_path / "s"
    deposit(ShareStore(d), os.urandom(32))
    next((d / "shares").iterdir()).write_text("{")
    with pytest.raises(ShareStoreError, match="unreadable"):
        ShareStore(d)
