"""The whole key path over real py-libp2p hosts on loopback, in one trio process:
publisher deposits shares -> enclave evidence -> DOS quorum ACL -> share requests -> key rebuilt."""
from __future__ import annotations

import base64
import os
import time

import pytest
import trio

from node.dos.acl import AclSignature
from node.dos.service import AclQuorumError, request_acl
from enclave import secret_client as enclave_side
from node.secrets.audit import AuditLog
from node.secrets.service import (
    DEPOSIT_PROTOCOL, SecretsService, SharesUnavailable, deposit_key, fetch_key, request_shares, revoke_ai,
)
from node.dos import wire

from tests.dos.helpers import AI_CID, OTHER_AI_CID, OTHER_MRENCLAVE, SimEnclave, new_request, start_net


@pytest.fixture
async def net(tmp_path, nursery):
    net = await start_net(nursery, tmp_path, n_dos=3, k=2, n_secrets=3, t=2)
    net.key = os.urandom(32)
    answers = await deposit_key(net.client.p2p, net.genesis, AI_CID, net.key)
    assert all(a["ok"] for a in answers.values()), answers
    return net


async def attested(net, enc: SimEnclave | None = None, **kw):
    enc = enc or SimEnclave()
    rid, nonce = new_request()
    grant = await request_acl(net.client.p2p, net.genesis,
                              enc.evidence(request_id=rid, consumer=net.client.peer_id, nonce=nonce, **kw))
    return enc, grant


async def test_good_enclave_gets_the_key(net):
    enc, grant = await attested(net)
    key = await fetch_key(net.client.p2p, net.genesis, enc.share_request(grant), enc.hpke)
    assert bytes(key) == net.key


@pytest.mark.parametrize("enc", [SimEnclave(mrenclave=OTHER_MRENCLAVE), SimEnclave(debug=True)],
                         ids=["wrong_mrenclave", "debug"])
async def test_no_acl_for_a_bad_enclave_so_no_key(net, enc):
    with pytest.raises(AclQuorumError):
        await attested(net, enc)
    # whatever it presents instead (an entry without signatures), the secrets peers refuse
    rid, _ = new_request()
    from node.dos.acl import AclEntry

    e = AclEntry(network_id=net.genesis.network_id, request_id=rid, ai_cid=AI_CID,
                 enclave_key_sha256=enclave_side.hashlib.sha256(enc.spki).hexdigest(), measurement=enc.mrenclave.hex(),
                 consumer=net.client.peer_id, not_after=int(time.time()) + 60)
    with pytest.raises(SharesUnavailable, match="2 of 3 key shares needed, got 0"):
        await fetch_key(net.client.p2p, net.genesis, enc.share_request(e, []), enc.hpke)


async def test_replayed_quote_gets_no_acl(net):
    enc = SimEnclave()
    rid, nonce = new_request()
    old_quote = enc.quote(os.urandom(32))  # from another request
    with pytest.raises(AclQuorumError, match="report_data"):
        await request_acl(net.client.p2p, net.genesis, enc.evidence(request_id=rid, consumer=net.client.peer_id,
                                                                    nonce=nonce, quote=old_quote))


async def refusals_of(net, request: dict) -> dict[str, str]:
    got = await request_shares(net.client.p2p, net.genesis, request, timeout=5)
    assert got.answers == {}
    return got.refusals


async def test_k_minus_one_or_forged_signatures(net):
    enc, grant = await attested(net)
    one = enc.share_request(grant.entry, grant.signatures[:1])
    assert all("got 1 valid" in r for r in (await refusals_of(net, one)).values())
    forged = list(grant.signatures[:1]) + [AclSignature(dos_peer=net.genesis.dos_peers[2], sig=os.urandom(64))]
    if grant.signatures[0].dos_peer == net.genesis.dos_peers[2]:
        forged[1] = AclSignature(dos_peer=net.genesis.dos_peers[0], sig=os.urandom(64))
    reasons = await refusals_of(net, enc.share_request(grant.entry, forged))
    assert all("(1 forged)" in r for r in reasons.values()), reasons


async def test_expired_entry(net):
    enc, grant = await attested(net, ttl=30)
    for v in net.vaults:
        v.releaser.clock = lambda: time.time() + 60
    reasons = await refusals_of(net, enc.share_request(grant))
    assert all("expired" in r and "s ago" in r for r in reasons.values()), reasons


async def test_entry_for_another_ai(net):
    enc, grant = await attested(net, ai_cid=OTHER_AI_CID)
    reasons = await refusals_of(net, enc.share_request(grant))
    assert all(r.startswith("unknown_ai") for r in reasons.values()), reasons


async def test_request_not_signed_by_the_named_enclave_key(net):
    enc, grant = await attested(net)
    thief = SimEnclave()
    req = thief.share_request(grant)
    req["enclave_key_spki"] = base64.b64encode(enc.spki).decode()
    reasons = await refusals_of(net, req)
    assert all(r.startswith("signature") for r in reasons.values()), reasons


async def test_dos_and_secrets_peers_down(net):
    """n-k DOS and n-t secrets peers down: keys still released; one more secrets peer down: refused, clearly."""
    await net.dos[2].stop()
    await net.secrets[0].stop()
    enc, grant = await attested(net)
    key = await fetch_key(net.client.p2p, net.genesis, enc.share_request(grant), enc.hpke, timeout=5)
    assert bytes(key) == net.key
    await net.secrets[1].stop()
    with trio.fail_after(30):
        with pytest.raises(SharesUnavailable) as err:
            await fetch_key(net.client.p2p, net.genesis, enc.share_request(grant), enc.hpke, timeout=5)
    assert "2 of 3 key shares needed, got 1" in str(err.value)
    assert set(err.value.refusals) == {net.secrets[0].peer_id, net.secrets[1].peer_id}


async def test_restarted_secrets_peer_keeps_its_shares(net, tmp_path):
    # "restart" every secrets peer: new store, audit log and service objects on the same data dir
    for i, node in enumerate(net.secrets):
        fresh = SecretsService.open(node.identity, net.genesis, net.dirs[node.peer_id])
        fresh.register(node.p2p)
        net.vaults[i] = fresh
    await net.secrets[0].stop()  # and t of the restarted ones must suffice
    enc, grant = await attested(net)
    assert bytes(await fetch_key(net.client.p2p, net.genesis, enc.share_request(grant), enc.hpke, timeout=5)) == net.key


async def test_audit_log_records_every_decision(net):
    enc, grant = await attested(net)
    await fetch_key(net.client.p2p, net.genesis, enc.share_request(grant), enc.hpke)
    await refusals_of(net, enc.share_request(grant.entry, grant.signatures[:1]))
    await revoke_ai(net.client.p2p, net.genesis, AI_CID)
    await refusals_of(net, enc.share_request(grant))
    with trio.fail_after(5):
        while True:  # the peers beyond the first t may still be answering the first request
            logs = [list(AuditLog(net.dirs[n.peer_id] / "secrets" / "audit.log").records()) for n in net.secrets]
            if all(len(recs) >= 5 for recs in logs):
                break
            await trio.sleep(0.02)
    for recs in logs:
        events = [r["event"] for r in recs]
        assert events[0] == "deposit"
        assert events[1] == "release" or events[1] == "refuse"  # released, or cancelled after t answers
        assert events[2:] == ["refuse", "revoke", "refuse"], events
        assert recs[2]["code"] == "acl" and recs[4]["code"] == "revoked"
        assert all("share" not in r and "key" not in r for r in recs)
    assert sum(r[1]["event"] == "release" for r in logs) >= 2


async def test_deposit_rules_over_the_wire(net):
    stranger_key = os.urandom(32)
    # rotation by the owner: a new version replaces the old shares
    answers = await deposit_key(net.client.p2p, net.genesis, AI_CID, stranger_key, version=2)
    assert all(a["ok"] and a["version"] == 2 for a in answers.values())
    enc, grant = await attested(net)
    assert bytes(await fetch_key(net.client.p2p, net.genesis, enc.share_request(grant), enc.hpke)) == stranger_key
    # an older version is refused
    answers = await deposit_key(net.client.p2p, net.genesis, AI_CID, net.key, version=1)
    assert all(not a["ok"] and "older" in a["error"] for a in answers.values())
    # a share for the wrong index, or the wrong threshold, is refused; so is garbage
    peer = net.secrets[0].peer_id
    base = {"op": "deposit", "ai_cid": OTHER_AI_CID, "version": 1, "index": 2, "threshold": 2, "n": 3,
            "share": "00" * 32, "key_check": "11" * 32}
    for msg, expect in ((base, "holds share 1"), ({**base, "index": 1, "threshold": 3}, "2-of-3"),
                        ({**base, "share": "zz"}, "malformed"), ({"op": "nuke"}, "malformed"),
                        ({"op": "revoke", "ai_cid": "nope"}, "malformed")):
        ans = await wire.request(net.client.p2p.host, peer, DEPOSIT_PROTOCOL, msg, max_request=1 << 16,
                                 max_response=1 << 16, timeout=5)
        assert not ans["ok"] and expect in ans["error"], (msg, ans)


async def test_only_the_publisher_rotates_or_revokes(net, nursery):
    from tests.dos.helpers import Node
    from node.identity import Identity

    other = Node(Identity.generate())
    await other.start(nursery)
    for n in net.secrets:
        assert await other.p2p.connect_addr(n.addr)
    answers = await deposit_key(other.p2p, net.genesis, AI_CID, os.urandom(32), version=5)
    assert all(not a["ok"] and "another publisher" in a["error"] for a in answers.values())
    answers = await revoke_ai(other.p2p, net.genesis, AI_CID)
    assert all(not a["ok"] and "publisher" in a["error"] for a in answers.values())
    enc, grant = await attested(net)
    assert bytes(await fetch_key(net.client.p2p, net.genesis, enc.share_request(grant), enc.hpke)) == net.key
