import os

import pytest

from node.identity import (IdentityError, load_identity, load_or_create_identity, public_key_from_peer_id,
                           verify_by_peer_id)


def test_identity_is_stable_and_private(tmp_path):
    a, created = load_or_create_identity(tmp_path)
    b, created_again = load_or_create_identity(tmp_path)
    assert created and not created_again
    assert a.peer_id == b.peer_id and a.peer_id.startswith("12D3KooW")
    assert os.stat(tmp_path / "identity.key").st_mode & 0o777 == 0o600


def test_peer_id_matches_libp2p(tmp_path):
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.peer.id import ID

    ident, _ = load_or_create_identity(tmp_path)
    assert ID.from_pubkey(create_new_key_pair(ident.seed).public_key).to_base58() == ident.peer_id


def test_corrupt_key_is_an_error_never_replaced(tmp_path):
    ident, _ = load_or_create_identity(tmp_path)
    path = tmp_path / "identity.key"
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(IdentityError, match="corrupt"):
        load_or_create_identity(tmp_path)
    assert len(path.read_bytes()) == 65  # untouched


def test_mismatched_public_half_is_corrupt(tmp_path):
    load_or_create_identity(tmp_path)
    path = tmp_path / "identity.key"
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 1
    path.write_bytes(bytes(raw))
    with pytest.raises(IdentityError, match="does not match"):
        load_identity(tmp_path)


def test_open_permissions_refused(tmp_path):
    load_or_create_identity(tmp_path)
    os.chmod(tmp_path / "identity.key", 0o644)
    with pytest.raises(IdentityError, match="too open"):
        load_identity(tmp_path)


def test_signature_verifies_by_peer_id(tmp_path):
    ident, _ = load_or_create_identity(tmp_path)
    sig = ident.sign(b"data")
    assert verify_by_peer_id(ident.peer_id, sig, b"data")
    assert not verify_by_peer_id(ident.peer_id, sig, b"date")
    with pytest.raises(ValueError):
        public_key_from_peer_id("QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N")
