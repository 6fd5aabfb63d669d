"""/ofnode/dos/attest/1.0.0 between real py-libp2p hosts on loopback."""
from __future__ import annotations

import os
import struct
import time

import pytest
import trio
from libp2p.peer.id import ID

from node.dos import wire
from node.dos.acl import AclStore, verify_quorum
from node.dos.service import PROTOCOL, AclQuorumError, RequestInfo, request_acl

from .helpers import AI_CID, OTHER_AI_CID, OTHER_MRENCLAVE, SimEnclave, new_request, start_net


@pytest.fixture
async def net(tmp_path, nursery):
    return await start_net(nursery, tmp_path, n_dos=3, k=2)


async def ask_one(net, dos_index: int, msg: dict) -> dict:
    return await wire.request(net.client.p2p.host, net.dos[dos_index].peer_id, PROTOCOL, msg, max_request=1 << 20,
                              max_response=1 << 16, timeout=10)


async def test_good_evidence_gets_a_quorum(net):
    enc = SimEnclave()
    rid, nonce = new_request()
    grant = await request_acl(net.client.p2p, net.genesis, enc.evidence(request_id=rid, consumer=net.client.peer_id,
                                                                        nonce=nonce))
    assert verify_quorum(grant.entry, grant.signatures, net.genesis, time.time())[0]
    assert grant.entry.measurement == enc.mrenclave.hex() and grant.entry.enclave_key_sha256 == enc.evidence(
        request_id=rid, consumer=net.client.peer_id, nonce=nonce).enclave_key_sha256
    assert grant.status == "UpToDate"
    # every DOS peer that signed keeps the entry durably
    signers = {s.dos_peer for s in grant.signatures}
    for node in net.dos:
        if node.peer_id in signers:
            assert AclStore(net.dirs[node.peer_id] / "acl").get(rid).entry == grant.entry


@pytest.mark.parametrize("case, expect", [
    ("wrong_mrenclave", "mrenclave"),
    ("debug", "debug"),
    ("replayed_quote", "report_data"),
    ("too_long", "at most 3600 s"),
    ("past", "already past"),
])
async def test_refusals_carry_reasons(net, case, expect):
    enc = SimEnclave(mrenclave=OTHER_MRENCLAVE if case == "wrong_mrenclave" else SimEnclave.mrenclave,
                     debug=case == "debug")
    rid, nonce = new_request()
    kw = {}
    if case == "replayed_quote":
        kw["quote"] = enc.quote(os.urandom(32))  # made for another request's nonce
    if case == "too_long":
        kw["ttl"] = 7200
    if case == "past":
        kw["ttl"] = -5
    ev = enc.evidence(request_id=rid, consumer=net.client.peer_id, nonce=nonce, **kw)
    ans = await ask_one(net, 0, ev.to_dict())
    assert ans["ok"] is False and expect in ans["error"], ans
    with pytest.raises(AclQuorumError) as err:
        await request_acl(net.client.p2p, net.genesis, ev)
    assert "2 of 3 DOS signatures needed, got 0 valid" in str(err.value)
    assert all(expect in r for r in err.value.refusals.values())


async def test_a_nonce_serves_one_request_only(net):
    enc = SimEnclave()
    rid, nonce = new_request()
    await request_acl(net.client.p2p, net.genesis, enc.evidence(request_id=rid, consumer=net.client.peer_id, nonce=nonce))
    other_rid = os.urandom(16).hex()
    ev = enc.evidence(request_id=other_rid, consumer=net.client.peer_id, nonce=nonce)
    ans = await ask_one(net, 0, ev.to_dict())
    assert not ans["ok"] and "already used by another request" in ans["error"]


async def test_one_provider_per_request_and_idempotent_retries(net):
    enc, restarted, other = SimEnclave(), SimEnclave(), SimEnclave()
    rid, nonce = new_request()
    svc = net.attest[1]
    provider, intruder = net.client.peer_id, net.dos[0].peer_id  # two peers presenting evidence
    ev = enc.evidence(request_id=rid, consumer=net.client.peer_id, nonce=nonce)
    first = await ask_one(net, 1, ev.to_dict())
    again = await ask_one(net, 1, ev.to_dict())
    assert first["ok"] and again == first  # the provider retried: same signature
    # the same provider brings up a new enclave for its request: it replaces the entry
    ans = await ask_one(net, 1, restarted.evidence(request_id=rid, consumer=net.client.peer_id, nonce=nonce).to_dict())
    assert ans["ok"] and ans["entry"]["enclave_key_sha256"] != first["entry"]["enclave_key_sha256"]
    assert svc.store.get(rid).provider == provider
    # another provider's enclave does not get the request's slot...
    ans = await svc.handle(intruder, other.evidence(request_id=rid, consumer=net.client.peer_id, nonce=nonce).to_dict())
    assert not ans["ok"] and "another provider's enclave" in ans["error"]
    # ...until the job is reassigned: the coordinator releases the entry
    assert svc.store.release(rid)
    ans = await svc.handle(intruder, other.evidence(request_id=rid, consumer=net.client.peer_id, nonce=nonce).to_dict())
    assert ans["ok"]
    # the job ended: revoked for good
    svc.store.revoke(rid)
    ans = await svc.handle(intruder, other.evidence(request_id=rid, consumer=net.client.peer_id, nonce=nonce).to_dict())
    assert not ans["ok"] and "revoked" in ans["error"]
    ans = await ask_one(net, 1, enc.evidence(request_id=rid, consumer=net.client.peer_id, nonce=nonce).to_dict())
    assert not ans["ok"] and "revoked" in ans["error"]


async def test_lookup_ties_evidence_to_the_market_request(net):
    enc = SimEnclave()
    rid, nonce = new_request()
    known = {rid: RequestInfo(nonce=nonce, ai_cid=AI_CID, consumer=net.client.peer_id, provider=net.client.peer_id)}
    attested: list[tuple[str, str]] = []

    async def lookup(request_id: str):
        return known.get(request_id)

    for svc in net.attest:
        svc.lookup = lookup
        svc.on_attested = lambda r, p: attested.append((r, p))
    good = enc.evidence(request_id=rid, consumer=net.client.peer_id, nonce=nonce)
    assert (await ask_one(net, 0, good.to_dict()))["ok"]
    assert attested == [(rid, net.client.peer_id)]
    cases = {
        "unknown request": enc.evidence(request_id=os.urandom(16).hex(), consumer=net.client.peer_id, nonce=nonce),
        "not this request's nonce": enc.evidence(request_id=rid, consumer=net.client.peer_id, nonce=os.urandom(32)),
        "not the AI": enc.evidence(request_id=rid, consumer=net.client.peer_id, nonce=nonce, ai_cid=OTHER_AI_CID),
        "consumer is not": enc.evidence(request_id=rid, consumer=net.dos[2].peer_id, nonce=nonce),
    }
    for expect, ev in cases.items():
        ans = await ask_one(net, 1, ev.to_dict())
        assert not ans["ok"] and expect in ans["error"], (expect, ans)
    known[rid] = RequestInfo(nonce=nonce, ai_cid=AI_CID, consumer=net.client.peer_id, provider=net.dos[0].peer_id)
    ans = await ask_one(net, 2, good.to_dict())
    assert not ans["ok"] and "assigned" in ans["error"]


async def test_quorum_with_n_minus_k_dos_down_and_not_with_one_more(net):
    enc = SimEnclave()
    await net.dos[0].stop()  # n - k = 1 down
    rid, nonce = new_request()
    grant = await request_acl(net.client.p2p, net.genesis, enc.evidence(request_id=rid, consumer=net.client.peer_id,
                                                                        nonce=nonce), timeout=5)
    assert len(grant.signatures) == 2 and net.dos[0].peer_id in grant.refusals
    await net.dos[1].stop()
    rid, nonce = new_request()
    with trio.fail_after(20):
        with pytest.raises(AclQuorumError) as err:
            await request_acl(net.client.p2p, net.genesis, enc.evidence(request_id=rid, consumer=net.client.peer_id,
                                                                        nonce=nonce), timeout=5)
    assert "2 of 3 DOS signatures needed, got 1 valid" in str(err.value)
    assert set(err.value.refusals) == {net.dos[0].peer_id, net.dos[1].peer_id}


async def raw_exchange(net, payload: bytes) -> bytes:
    stream = await net.client.p2p.host.new_stream(ID.from_base58(net.dos[0].peer_id), [PROTOCOL])
    try:
        await stream.write(payload)
        await stream.close_write()
        buf = b""
        with trio.move_on_after(5):
            while True:
                try:
                    chunk = await stream.read(65536)
                except Exception:
                    break
                if not chunk:
                    break
                buf += chunk
        return buf
    finally:
        try:
            await stream.close()
        except Exception:
            pass


@pytest.mark.parametrize("payload", [
    b"",  # nothing, then EOF
    b"\x00\x00\x00\x05{}",  # truncated
    struct.pack(">I", 10 << 20),  # oversize
    struct.pack(">I", 9) + b"not json!",
    struct.pack(">I", 2) + b"[]",
    struct.pack(">I", 15) + b'{"a":1,"a":2}  ',
    struct.pack(">I", 2) + b"\xff\xfe",
])
async def test_garbage_on_the_wire_is_refused_and_the_service_carries_on(net, payload):
    reply = await raw_exchange(net, payload)
    if len(reply) >= 4:
        body = wire.decode_body(reply[4:])
        assert body["ok"] is False and "malformed" in body["error"]
    enc = SimEnclave()
    rid, nonce = new_request()
    assert (await ask_one(net, 0, enc.evidence(request_id=rid, consumer=net.client.peer_id, nonce=nonce).to_dict()))["ok"]


async def test_reassignment_during_verification_does_not_let_the_old_provider_in(net):
    """The job moves to another provider while the old provider's quote is being verified:
    the late answer must not take the ACL slot the new provider's enclave needs."""
    old_enc, new_enc = SimEnclave(), SimEnclave()
    rid, nonce = new_request()
    state = {"provider": net.client.peer_id}
    svc = net.attest[0]
    svc.lookup = lambda r: RequestInfo(nonce=nonce, ai_cid=AI_CID, consumer=net.client.peer_id,
                                       provider=state["provider"]) if r == rid else None
    real_verify = svc.verifier.verify

    def slow_verify(*a, **kw):
        v = real_verify(*a, **kw)
        state["provider"] = net.dos[2].peer_id  # reassigned meanwhile...
        svc.store.release(rid)  # ...and the slot released (Coordinator on_reassign)
        return v

    svc.verifier.verify = slow_verify
    ans = await svc.handle(net.client.peer_id, old_enc.evidence(request_id=rid, consumer=net.client.peer_id,
                                                                 nonce=nonce).to_dict())
    assert not ans["ok"] and "assigned" in ans["error"]
    assert svc.store.get(rid) is None
    svc.verifier.verify = real_verify
    ans = await svc.handle(net.dos[2].peer_id, new_enc.evidence(request_id=rid, consumer=net.client.peer_id,
                                                                 nonce=nonce).to_dict())
    assert ans["ok"], ans
