"""ACL entries: canonical encoding, quorum rules with named reasons, and the DOS peer's durable store."""
from __future__ import annotations

import json
import os

import pytest

from node.dos.acl import ACL_DOMAIN, AclEntry, AclError, AclSignature, AclStore, verify_quorum
from node.identity import Identity

from .helpers import AI_CID, MRENCLAVE, make_genesis

NOW = 1_800_000_000


@pytest.fixture(scope="module")
def peers():
    return [Identity.generate() for _ in range(3)], [Identity.generate() for _ in range(3)]


@pytest.fixture(scope="module")
def genesis(peers):
    dos, sec = peers
    return make_genesis(dos, sec, k=2, t=2)


def entry(**kw) -> AclEntry:
    d = dict(network_id="testnet", request_id=os.urandom(16).hex(), ai_cid=AI_CID, enclave_key_sha256="ab" * 32,
             measurement=MRENCLAVE.hex(), consumer=Identity.generate().peer_id, not_after=NOW + 600)
    d.update(kw)
    return AclEntry(**d)


def test_canonical_encoding_is_sorted_compact_json():
    e = entry(request_id="r1")
    raw = e.canonical_bytes()
    assert raw.startswith(ACL_DOMAIN)
    body = raw[len(ACL_DOMAIN):]
    assert json.loads(body) == e.to_dict()
    assert body == json.dumps(e.to_dict(), sort_keys=True, separators=(",", ":")).encode()
    assert list(json.loads(body)) == sorted(e.to_dict())
    assert AclEntry.from_dict(json.loads(body)).canonical_bytes() == raw  # round trip


@pytest.mark.parametrize("field, value", [
    ("network_id", "Bad Net"), ("request_id", ""), ("request_id", "x" * 129), ("request_id", "a/b"),
    ("ai_cid", "notacid"), ("ai_cid", 5), ("enclave_key_sha256", "AB" * 32), ("enclave_key_sha256", "ab"),
    ("measurement", "zz" * 32), ("consumer", "12D3KooWnope"), ("not_after", -1), ("not_after", True),
    ("not_after", 2**53), ("not_after", 1.5),
])
def test_entry_validation(field, value):
    d = entry().to_dict()
    d[field] = value
    with pytest.raises(AclError):
        AclEntry.from_dict(d)


def test_entry_rejects_unknown_and_missing_fields():
    d = entry().to_dict()
    with pytest.raises(AclError, match="unknown"):
        AclEntry.from_dict({**d, "admin": True})
    d.pop("consumer")
    with pytest.raises(AclError):
        AclEntry.from_dict(d)
    with pytest.raises(AclError):
        AclEntry.from_dict([1, 2])


def test_quorum_ok(peers, genesis):
    dos, _ = peers
    e = entry()
    ok, reason = verify_quorum(e, [e.sign(dos[0]), e.sign(dos[2])], genesis, NOW)
    assert ok, reason
    assert "2 of 3" in reason


def test_k_minus_one_signatures(peers, genesis):
    dos, _ = peers
    e = entry()
    ok, reason = verify_quorum(e, [e.sign(dos[1])], genesis, NOW)
    assert not ok and reason == "2 of 3 DOS signatures needed, got 1 valid"


def test_forged_signature_is_named(peers, genesis):
    dos, _ = peers
    e = entry()
    forged = AclSignature(dos_peer=dos[1].peer_id, sig=bytes(64))
    ok, reason = verify_quorum(e, [e.sign(dos[0]), forged], genesis, NOW)
    assert not ok and reason == "2 of 3 DOS signatures needed, got 1 valid (1 forged)"
    # a signature over another entry is a forgery for this one
    other = entry().sign(dos[1])
    ok, reason = verify_quorum(e, [e.sign(dos[0]), other], genesis, NOW)
    assert not ok and "(1 forged)" in reason


def test_outsiders_and_duplicates_do_not_count(peers, genesis):
    dos, sec = peers
    e = entry()
    s0 = e.sign(dos[0])
    ok, reason = verify_quorum(e, [s0, s0, e.sign(sec[0]), e.sign(Identity.generate())], genesis, NOW)
    assert not ok and "got 1 valid" in reason and "2 not from a DOS peer" in reason and "1 duplicate" in reason


def test_expired(peers, genesis):
    dos, _ = peers
    e = entry(not_after=NOW - 12)
    ok, reason = verify_quorum(e, [e.sign(dos[0]), e.sign(dos[1])], genesis, NOW)
    assert not ok and reason == "expired 12 s ago"
    e = entry(not_after=NOW)
    assert verify_quorum(e, [e.sign(dos[0]), e.sign(dos[1])], genesis, NOW) == (False, "expired 0 s ago")


def test_other_network(peers, genesis):
    dos, _ = peers
    e = entry(network_id="othernet")
    ok, reason = verify_quorum(e, [e.sign(d) for d in dos], genesis, NOW)
    assert not ok and "othernet" in reason


def test_too_many_signatures(peers, genesis):
    dos, _ = peers
    e = entry()
    ok, reason = verify_quorum(e, [e.sign(dos[0])] * 65, genesis, NOW)
    assert not ok and "at most" in reason


def test_signature_wire_form():
    e = entry()
    s = e.sign(Identity.generate())
    assert AclSignature.from_dict(s.to_dict()) == s
    for bad in ({}, {"dos_peer": s.dos_peer}, {"dos_peer": s.dos_peer, "sig": "00"},
                {"dos_peer": "x", "sig": s.sig.hex()}, {"dos_peer": s.dos_peer, "sig": s.sig.hex().upper()}, None):
        with pytest.raises(AclError):
            AclSignature.from_dict(bad)


# -- the store ----------------------------------------------------------------------------
def test_store_survives_restart(tmp_path):
    ident = Identity.generate()
    store = AclStore(tmp_path)
    e = entry()
    store.put(e, "aa" * 32, e.sign(ident))
    again = AclStore(tmp_path)
    rec = again.get(e.request_id)
    assert rec is not None and rec.entry == e and rec.signature.verify(e) and not rec.revoked
    assert again.request_for_nonce("aa" * 32) == e.request_id


def test_revoke_is_durable_and_keeps_a_tombstone(tmp_path):
    ident = Identity.generate()
    store = AclStore(tmp_path)
    e = entry()
    store.put(e, "bb" * 32, e.sign(ident))
    assert store.revoke(e.request_id) and not store.revoke(e.request_id)
    again = AclStore(tmp_path)
    assert again.get(e.request_id).revoked
    assert list(again.active(NOW)) == []
    assert not again.revoke("no-such-request")


def test_release_forgets_the_entry(tmp_path):
    store = AclStore(tmp_path)
    e = entry()
    store.put(e, "cc" * 32, e.sign(Identity.generate()))
    assert store.release(e.request_id)
    assert AclStore(tmp_path).get(e.request_id) is None
    assert store.request_for_nonce("cc" * 32) is None


def test_release_keeps_a_tombstone(tmp_path):
    """Found by tests/chaos: a restarted DOS coordinator replayed a finished request and its
    reassignment released the tombstone, so the request could be signed again."""
    store = AclStore(tmp_path)
    e = entry()
    store.put(e, "dd" * 32, e.sign(Identity.generate()))
    store.revoke(e.request_id)
    assert not store.release(e.request_id)
    assert AclStore(tmp_path).get(e.request_id).revoked
    assert store.request_for_nonce("dd" * 32) == e.request_id


def test_prune_expired(tmp_path):
    store = AclStore(tmp_path)
    ident = Identity.generate()
    live, dead = entry(not_after=NOW + 100), entry(not_after=NOW - 1)
    store.put(live, "01" * 32, live.sign(ident))
    store.put(dead, "02" * 32, dead.sign(ident))
    store.revoke(dead.request_id)
    assert store.prune(NOW) == 1
    assert [r.entry for r in AclStore(tmp_path).entries()] == [live]
    assert len(os.listdir(tmp_path)) == 1


def test_store_skips_garbage_files(tmp_path):
    (tmp_path / "junk.json").write_text("{")
    (tmp_path / "other.json").write_text(json.dumps({"entry": {}, "nonce": "x", "signature": {}, "revoked": False}))
    assert AclStore(tmp_path).entries() == []
