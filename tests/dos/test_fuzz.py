"""Hypothesis fuzzing of everything that decodes untrusted bytes on the DOS and secrets paths:
quotes, evidence, ACL entries and signatures, wire frames, collateral, share requests and answers.
The only acceptable outcomes are a result or the module's own rejection, never a crash."""
from __future__ import annotations

import copy
import json
import os
import time

import pytest
import trio
from hypothesis import HealthCheck, given, settings, strategies as st

from node.dos import wire
from node.dos.acl import AclEntry, AclError, AclSignature
from node.dos.collateral import CollateralError, parse_collateral
from node.dos.policy import expected_report_data
from node.dos.service import AttestService, parse_evidence
from node.dos.verifier import Verifier
from node.identity import Identity
from enclave import secret_client as enclave_side
from node.secrets.audit import AuditLog
from node.secrets.release import Releaser
from node.secrets.service import SecretsService
from node.secrets.shamir import key_check, split_key
from node.secrets.share_store import ShareStore

from .helpers import AI_CID, QE, SimEnclave, make_genesis, sim_collateral_cache

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                         HealthCheck.too_slow])
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
                    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=12), kids, max_size=4),
                    max_leaves=12)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    dos = [Identity.generate() for _ in range(3)]
    sec = [Identity.generate() for _ in range(3)]
    genesis = make_genesis(dos, sec, k=2, t=2)
    cache = sim_collateral_cache(tmp / "collateral")
    verifier = Verifier(genesis.policy, cache)
    enc = SimEnclave()
    nonce = os.urandom(32)
    quote = enc.quote(nonce)
    key = os.urandom(32)
    store = ShareStore(tmp / "secrets")
    store.deposit(ai_cid=AI_CID, version=1, index=1, threshold=2, n=3, share=split_key(key, 2, 3)[0].value,
                  key_check=key_check(key), owner="publisher")
    releaser = Releaser(sec[0], genesis, store, AuditLog(tmp / "audit.log"))
    from node.dos.acl import AclStore

    attest = AttestService(dos[0], genesis, verifier, AclStore(tmp / "acl"))
    entry = AclEntry(network_id="testnet", request_id="r" * 32, ai_cid=AI_CID,
                     enclave_key_sha256=enclave_side.hashlib.sha256(enc.spki).hexdigest(),
                     measurement=enc.mrenclave.hex(), consumer=dos[2].peer_id, not_after=int(time.time()) + 3600)
    request = enc.share_request(entry, [entry.sign(dos[0]), entry.sign(dos[1])])
    assert releaser.decide("x", request)["ok"]
    evidence = enc.evidence(request_id="e" * 32, consumer=dos[2].peer_id, nonce=nonce, quote=quote).to_dict()
    vault = SecretsService(sec[0], genesis, store, AuditLog(tmp / "audit2.log"))
    return dict(genesis=genesis, verifier=verifier, enc=enc, nonce=nonce, quote=quote, releaser=releaser,
                attest=attest, entry=entry, request=request, evidence=evidence, vault=vault)


# -- quotes ------------------------------------------------------------------------------
@FUZZ
@given(data=st.data())
def test_mutated_quotes_never_crash_and_never_change_the_signed_part(setup, data):
    q = bytearray(setup["quote"])
    for _ in range(data.draw(st.integers(1, 4))):
        kind = data.draw(st.sampled_from(["flip", "cut", "insert", "set"]))
        pos = data.draw(st.integers(0, len(q)))
        if kind == "flip" and pos < len(q):
            q[pos] ^= data.draw(st.integers(1, 255))
        elif kind == "cut":
            del q[pos: pos + data.draw(st.integers(1, 64))]
        elif kind == "insert":
            q[pos:pos] = data.draw(st.binary(min_size=1, max_size=16))
        elif pos < len(q):
            q[pos] = data.draw(st.integers(0, 255))
    rd = expected_report_data(setup["enc"].spki, setup["nonce"])
    v = setup["verifier"].verify(bytes(q), rd)
    if v.ok:  # only bytes no signature covers may differ (see docs/attestation-sim.md)
        assert bytes(q[:432]) == setup["quote"][:432]


@FUZZ
@given(raw=st.binary(max_size=6000))
def test_random_bytes_are_not_quotes(setup, raw):
    v = setup["verifier"].verify(raw, None)
    assert not v.ok


# -- messages ------------------------------------------------------------------------------
@FUZZ
@given(raw=st.binary(max_size=300))
def test_wire_decode(raw):
    try:
        assert isinstance(wire.decode_body(raw), dict)
    except wire.WireError:
        pass


@FUZZ
@given(obj=JSON)
def test_wire_decode_of_json(obj):
    raw = json.dumps(obj).encode()
    try:
        assert isinstance(wire.decode_body(raw), dict)
    except wire.WireError:
        pass


def _mutate(base: dict, data) -> dict:
    d = copy.deepcopy(base)
    for _ in range(data.draw(st.integers(1, 3))):
        op = data.draw(st.sampled_from(["drop", "set", "add"]))
        keys = sorted(d)
        if op == "drop" and keys:
            d.pop(data.draw(st.sampled_from(keys)))
        elif op == "set" and keys:
            d[data.draw(st.sampled_from(keys))] = data.draw(JSON)
        else:
            d[data.draw(st.text(max_size=10))] = data.draw(JSON)
    return d


@FUZZ
@given(data=st.data())
def test_evidence_decoder(setup, data):
    d = _mutate(setup["evidence"], data)
    try:
        parse_evidence(d)
    except wire.WireError:
        pass


@FUZZ
@given(data=st.data())
def test_attest_service_answers_everything(setup, data):
    d = data.draw(st.one_of(JSON, st.just(None))) if data.draw(st.booleans()) else _mutate(setup["evidence"], data)
    if not isinstance(d, dict):
        d = {"x": d}
    ans = trio.run(setup["attest"].handle, "peer", d)
    if ans["ok"]:  # the mutations cancelled out
        assert parse_evidence(d) == parse_evidence(setup["evidence"])
    else:
        assert isinstance(ans["error"], str)


@FUZZ
@given(data=st.data())
def test_acl_decoders(setup, data):
    d = _mutate(setup["entry"].to_dict(), data)
    try:
        AclEntry.from_dict(d)
    except AclError:
        pass
    s = _mutate(setup["entry"].sign(Identity.generate()).to_dict(), data)
    try:
        AclSignature.from_dict(s)
    except AclError:
        pass


@FUZZ
@given(doc=st.one_of(JSON, st.binary(max_size=200)))
def test_collateral_decoder(doc):
    try:
        parse_collateral(doc)
    except CollateralError:
        pass


@FUZZ
@given(data=st.data())
def test_collateral_fields_fuzzed(data):
    d = _mutate(QE.collateral_dict(), data)
    try:
        parse_collateral(d)
    except CollateralError:
        pass


@FUZZ
@given(data=st.data())
def test_share_requests(setup, data):
    base = setup["request"]
    target = data.draw(st.sampled_from(["top", "acl_entry", "sigs"]))
    req = copy.deepcopy(base)
    if target == "top":
        req = _mutate(req, data)
    elif target == "acl_entry":
        req["acl_entry"] = _mutate(req["acl_entry"], data)
    else:
        req["dos_signatures"] = [_mutate(s, data) for s in req["dos_signatures"]]
    ans = setup["releaser"].decide("peer", req)
    if ans["ok"]:
        for k in ("acl_entry", "enclave_key_spki", "hpke_pub", "signature"):
            assert req[k] == base[k]


@FUZZ
@given(data=st.data())
def test_share_answers_on_the_enclave_side(setup, data):
    ans = setup["releaser"].decide("peer", setup["request"])
    bad = copy.deepcopy(ans)
    if data.draw(st.booleans()):
        bad["share"] = _mutate(bad["share"], data)
    else:
        bad = _mutate(bad, data)
    try:
        enclave_side.open_share(bad, setup["enc"].hpke, setup["entry"].to_dict())
    except enclave_side.ShareError:
        pass


@FUZZ
@given(msg=JSON)
def test_deposit_decoder(setup, msg):
    ans = setup["vault"].deposit_decision("peer", msg if isinstance(msg, dict) else {"op": msg})
    assert ans["ok"] is False
