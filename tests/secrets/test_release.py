"""The release decision (no network): every rule of docs/secret-store.md, the audit log, and the enclave side."""
from __future__ import annotations

import ast
import base64
import copy
import os
from pathlib import Path

import pytest

from node.dos.acl import AclEntry, AclSignature
from node.identity import Identity
from enclave import secret_client as enclave_side
from node.secrets.audit import AuditLog
from node.secrets.release import Releaser
from node.secrets.shamir import key_check, split_key
from node.secrets.share_store import ShareStore

from tests.dos.helpers import AI_CID, OTHER_AI_CID, OTHER_MRENCLAVE, SimEnclave, make_genesis

NOW = 1_800_000_000.0


class World:
    """3 DOS (k=2), 3 secrets (t=2), a key deposited with each secrets peer's store."""

    def __init__(self, tmp: Path) -> None:
        self.dos = [Identity.generate() for _ in range(3)]
        self.sec = [Identity.generate() for _ in range(3)]
        self.genesis = make_genesis(self.dos, self.sec, k=2, t=2)
        self.key = os.urandom(32)
        self.releasers: list[Releaser] = []
        self.audits: list[AuditLog] = []
        shares = split_key(self.key, 2, 3)
        for i, ident in enumerate(self.sec):
            store = ShareStore(tmp / f"s{i}")
            store.deposit(ai_cid=AI_CID, version=1, index=i + 1, threshold=2, n=3, share=shares[i].value,
                          key_check=key_check(self.key), owner="publisher")
            audit = AuditLog(tmp / f"s{i}" / "audit.log")
            self.audits.append(audit)
            self.releasers.append(Releaser(ident, self.genesis, store, audit, clock=lambda: NOW))

    def entry(self, enc: SimEnclave, **kw) -> AclEntry:
        d = dict(network_id="testnet", request_id=os.urandom(16).hex(), ai_cid=AI_CID,
                 enclave_key_sha256=enclave_side.hashlib.sha256(enc.spki).hexdigest(), measurement=enc.mrenclave.hex(),
                 consumer=Identity.generate().peer_id, not_after=int(NOW) + 300)
        d.update(kw)
        return AclEntry(**d)

    def signed(self, e: AclEntry, signers=(0, 1)) -> list[AclSignature]:
        return [e.sign(self.dos[i]) for i in signers]


@pytest.fixture
def world(tmp_path) -> World:
    return World(tmp_path)


def test_good_request_rebuilds_the_key(world):
    enc = SimEnclave()
    e = world.entry(enc)
    req = enc.share_request(e, world.signed(e))
    answers = [r.decide("relay", req) for r in world.releasers]
    assert all(a["ok"] for a in answers)
    opened = [enclave_side.open_share(a, enc.hpke, e.to_dict(), trusted_peers=world.genesis.secrets_peers)
              for a in answers[:2]]
    assert sorted(s.index for s in opened) == [1, 2]
    key = enclave_side.rebuild_key(opened)
    assert bytes(key) == world.key
    assert all(s.value == bytearray(32) for s in opened), "share buffers are zeroed"
    enclave_side.zero(key)
    assert key == bytearray(32)


def refused(world, req, code: str, text: str = "") -> None:
    for r in world.releasers:
        a = r.decide("relay", req)
        assert a["ok"] is False and a["code"] == code, a
        assert text in a["error"], a


def test_k_minus_one_signatures(world):
    enc = SimEnclave()
    e = world.entry(enc)
    refused(world, enc.share_request(e, world.signed(e, (2,))), "acl", "2 of 3 DOS signatures needed, got 1 valid")


def test_forged_signature(world):
    enc = SimEnclave()
    e = world.entry(enc)
    forged = AclSignature(dos_peer=world.dos[1].peer_id, sig=os.urandom(64))
    refused(world, enc.share_request(e, [e.sign(world.dos[0]), forged]), "acl", "(1 forged)")


def test_signatures_from_non_dos_peers(world):
    enc = SimEnclave()
    e = world.entry(enc)
    refused(world, enc.share_request(e, [e.sign(world.sec[0]), e.sign(world.sec[1])]), "acl", "not from a DOS peer")


def test_expired_entry(world):
    enc = SimEnclave()
    e = world.entry(enc, not_after=int(NOW) - 12)
    refused(world, enc.share_request(e, world.signed(e)), "acl", "expired 12 s ago")


def test_entry_for_another_ai(world):
    enc = SimEnclave()
    e = world.entry(enc, ai_cid=OTHER_AI_CID)
    refused(world, enc.share_request(e, world.signed(e)), "unknown_ai")
    # an entry signed for another AI, edited to name this one, is a forgery
    req = enc.share_request(e, world.signed(e))
    req["acl_entry"] = {**req["acl_entry"], "ai_cid": AI_CID}
    refused(world, req, "acl", "got 0 valid (2 forged)")


def test_request_not_signed_by_the_named_enclave_key(world):
    enc, thief = SimEnclave(), SimEnclave()
    e = world.entry(enc)
    sigs = world.signed(e)
    # the thief signs with its own key and presents it: the key hash does not match the entry
    refused(world, thief.share_request(e, sigs), "enclave_key")
    # the thief presents the enclave's public key but cannot sign with it
    req = thief.share_request(e, sigs)
    req["enclave_key_spki"] = base64.b64encode(enc.spki).decode()
    refused(world, req, "signature")
    # a genuine request whose HPKE key was swapped by the relay
    req = enc.share_request(e, sigs)
    req["hpke_pub"] = enclave_side._hpke_pub(enclave_side.new_hpke_key()).hex()
    refused(world, req, "signature")


def test_measurement_outside_the_policy(world):
    enc = SimEnclave(mrenclave=OTHER_MRENCLAVE)
    e = world.entry(enc)  # even if a DOS quorum signed it
    refused(world, enc.share_request(e, world.signed(e)), "measurement")


def test_other_network(world):
    enc = SimEnclave()
    e = world.entry(enc, network_id="othernet")
    refused(world, enc.share_request(e, world.signed(e)), "acl", "othernet")


def test_revoked_ai(world):
    enc = SimEnclave()
    e = world.entry(enc)
    for r in world.releasers:
        r.store.revoke(AI_CID)
    refused(world, enc.share_request(e, world.signed(e)), "revoked")


@pytest.mark.parametrize("mutate", [
    lambda r: r.pop("signature"),
    lambda r: r.update(extra=1),
    lambda r: r.update(hpke_pub="00"),
    lambda r: r.update(enclave_key_spki="!!"),
    lambda r: r.update(dos_signatures="x"),
    lambda r: r.update(dos_signatures=[{"dos_peer": 1}]),
    lambda r: r.update(acl_entry={"request_id": "x"}),
    lambda r: r.update(signature=base64.b64encode(os.urandom(200)).decode()),
])
def test_malformed_requests(world, mutate):
    enc = SimEnclave()
    e = world.entry(enc)
    req = copy.deepcopy(enc.share_request(e, world.signed(e)))
    mutate(req)
    refused(world, req, "malformed")


def test_non_dict_requests_are_refused(world):
    for junk in (None, [], "x", 5):
        a = world.releasers[0].decide("relay", junk)
        assert not a["ok"] and a["code"] == "malformed"


def test_low_order_hpke_key_is_refused(world):
    enc = SimEnclave()
    e = world.entry(enc)
    req = enc.share_request(e, world.signed(e))
    req["hpke_pub"] = "00" * 32
    req["signature"] = base64.b64encode(enc.key.sign(enclave_side.request_signing_bytes(e.to_dict(), bytes(32)),
                                                     enclave_side.ec.ECDSA(enclave_side.hashes.SHA256()))).decode()
    a = world.releasers[0].decide("relay", req)
    assert not a["ok"] and a["code"] == "hpke"


def test_audit_log_records_every_decision_and_no_secret(world, tmp_path):
    enc = SimEnclave()
    e = world.entry(enc)
    good = enc.share_request(e, world.signed(e))
    bad = enc.share_request(e, world.signed(e, (0,)))
    r = world.releasers[0]
    ok = r.decide("peerA", good)
    r.decide("peerB", bad)
    r.decide("peerC", {"junk": True})
    recs = list(world.audits[0].records())
    assert [x["event"] for x in recs] == ["release", "refuse", "refuse"]
    assert recs[0]["request_id"] == e.request_id and recs[0]["index"] == 1 and recs[0]["peer"] == "peerA"
    assert recs[1]["code"] == "acl" and "got 1 valid" in recs[1]["reason"]
    assert recs[2]["code"] == "malformed"
    raw = (tmp_path / "s0" / "audit.log").read_bytes()
    share = bytes(r.store.open(AI_CID)[1])
    assert share.hex().encode() not in raw and base64.b64encode(share) not in raw
    assert ok["share"]["sealed"].encode() not in raw and world.key.hex().encode() not in raw
    with pytest.raises(ValueError):
        world.audits[0].append("x", share="00")


# -- the enclave side --------------------------------------------------------------------
def test_enclave_side_imports_nothing_from_node():
    src = Path(enclave_side.__file__).read_text()
    mods = set()
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.Import):
            mods |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "no relative imports"
            mods.add(node.module.split(".")[0])
    assert mods <= {"__future__", "base64", "hashlib", "hmac", "itertools", "json", "dataclasses", "typing",
                    "cryptography", "Crypto"}, mods


def test_open_share_checks(world):
    enc = SimEnclave()
    e = world.entry(enc)
    ans = world.releasers[0].decide("relay", enc.share_request(e, world.signed(e)))
    d = e.to_dict()
    with pytest.raises(enclave_side.ShareError, match="another AI"):
        enclave_side.open_share(ans, enc.hpke, {**d, "ai_cid": OTHER_AI_CID})
    with pytest.raises(enclave_side.ShareError, match="not a secrets peer"):
        enclave_side.open_share(ans, enc.hpke, d, trusted_peers=[world.sec[1].peer_id])
    with pytest.raises(enclave_side.ShareError, match="does not open"):
        enclave_side.open_share(ans, enclave_side.new_hpke_key(), d)
    tampered = copy.deepcopy(ans)
    tampered["share"]["index"] = 3
    with pytest.raises(enclave_side.ShareError, match="signature"):
        enclave_side.open_share(tampered, enc.hpke, d)
    # a relay that re-signs with its own key and claims to be the peer
    relay = Identity.generate()
    forged = copy.deepcopy(ans)
    forged["share"]["secrets_peer"] = relay.peer_id
    forged["sig"] = relay.sign(enclave_side.response_signing_bytes(
        forged["share"], base64.b64decode(forged["share"]["sealed"]))).hex()
    with pytest.raises(enclave_side.ShareError):
        enclave_side.open_share(forged, enc.hpke, d, trusted_peers=world.genesis.secrets_peers)
    with pytest.raises(enclave_side.ShareError, match="refused"):
        enclave_side.open_share({"ok": False, "error": "nope"}, enc.hpke, d)
    assert enclave_side.ed25519_key_from_peer_id(world.sec[0].peer_id)


def test_rebuild_skips_a_bad_share_when_more_than_t_arrive(world):
    enc = SimEnclave()
    e = world.entry(enc)
    req = enc.share_request(e, world.signed(e))
    opened = [enclave_side.open_share(r.decide("relay", req), enc.hpke, e.to_dict()) for r in world.releasers]
    opened[0].value[5] ^= 0xFF  # one secrets peer lies
    assert bytes(enclave_side.rebuild_key(opened)) == world.key
    few = [enclave_side.open_share(r.decide("relay", req), enc.hpke, e.to_dict()) for r in world.releasers[:1]]
    with pytest.raises(enclave_side.ShareError, match="not enough shares"):
        enclave_side.rebuild_key(few)
    assert few[0].value == bytearray(32)
    two = [enclave_side.open_share(r.decide("relay", req), enc.hpke, e.to_dict()) for r in world.releasers[:2]]
    two[1].value[0] ^= 1
    with pytest.raises(enclave_side.ShareError, match="bad shares"):
        enclave_side.rebuild_key(two)



def test_finished_job_gets_no_more_shares(world):
    """market.done from the request's consumer stops releases; from another peer it changes nothing."""
    enc = SimEnclave()
    e = world.entry(enc)
    req = enc.share_request(e, world.signed(e))
    for r in world.releasers:
        r.job_finished(e.request_id, "12D3KooWSomeoneElse1111111111111111111111111111111")
    assert all(r.decide("relay", req)["ok"] for r in world.releasers)
    for r in world.releasers:
        r.job_finished(e.request_id, e.consumer)
    refused(world, req, "finished", "has ended")
