import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.identity import Identity
from node.market import election
from node.market.messages import (Assignment, ExecutionRequest, MessageError, Offer, Requirements, decode, encode)

CID = "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e"
RID = "00" * 16


def req(**over):
    d = {"id": RID, "ai_cid": CID, "nonce": "11" * 32, "deadline_ms": 10, "bidding_ms": 300,
         "requirements": {"cpu": 1, "memory": 1 << 20, "tee": "sim", "backend": "", "max_price": 0}}
    d.update(over)
    return d


def test_request_roundtrip():
    r = ExecutionRequest.parse(req())
    assert ExecutionRequest.parse(decode(encode(r))) == r


@pytest.mark.parametrize("over, field", [
    ({"id": "zz"}, "id"), ({"ai_cid": "bafy-nope"}, "ai_cid"), ({"nonce": "11"}, "nonce"),
    ({"requirements": {"cpu": 0, "memory": 1, "tee": "sim", "backend": "", "max_price": 0}}, "cpu"),
    ({"requirements": {"cpu": 1, "memory": 1, "tee": "tdx", "backend": "", "max_price": 0}}, "tee"),
    ({"requirements": {"cpu": 1, "memory": 1, "tee": "sim", "backend": "vm", "max_price": 0}}, "backend"),
    ({"bidding_ms": 1}, "bidding_ms"), ({"extra": 1}, "unknown field"), ({"deadline_ms": -1}, "deadline_ms"),
    ({"deadline_ms": True}, "deadline_ms"),
])
def test_bad_requests_name_the_field(over, field):
    with pytest.raises(MessageError, match=field):
        ExecutionRequest.parse(req(**over))


@given(st.binary(max_size=300))
@settings(max_examples=300)
def test_decoders_only_raise_message_error(data):
    for cls in (ExecutionRequest, Offer, Assignment):
        try:
            cls.parse(decode(data))
        except MessageError:
            pass


@given(st.dictionaries(st.sampled_from(["id", "ai_cid", "nonce", "requirements", "deadline_ms", "bidding_ms",
                                         "request_id", "provider", "attempt", "attest_by_ms", "excluded"]),
                       st.one_of(st.none(), st.integers(), st.text(max_size=70), st.lists(st.text(max_size=5)),
                                 st.dictionaries(st.text(max_size=8), st.integers()))))
@settings(max_examples=300)
def test_structured_garbage_only_raises_message_error(d):
    for cls in (ExecutionRequest, Offer, Assignment):
        try:
            cls.parse(decode(json.dumps(d).encode()))
        except MessageError:
            pass


def offer(price=1, cpu=2, mem=1 << 30, tee="sim", backend="sim"):
    return Offer(RID, backend, tee, price, cpu, mem, ())


def test_best_offer_rule():
    r = Requirements(cpu=1, memory=1 << 20)
    a, b, c = (Identity.generate().peer_id for _ in range(3))
    assert election.best_offer(RID, r, {a: offer(price=2), b: offer(price=1), c: offer(price=1, cpu=4)}) == c
    assert election.best_offer(RID, r, {a: offer(tee="sgx"), b: offer(cpu=0)}) is None
    assert election.best_offer(RID, r, {a: offer(), b: offer(price=5)}, excluded=[a]) == b
    assert election.best_offer(RID, Requirements(max_price=3), {a: offer(price=4)}) is None


def test_ranking_is_deterministic_and_spreads():
    peers = [Identity.generate().peer_id for _ in range(3)]
    assert election.dos_ranking(RID, peers) == election.dos_ranking(RID, list(reversed(peers)))
    firsts = {election.dos_ranking(f"{i:032x}", peers)[0] for i in range(60)}
    assert firsts == set(peers)


def test_unmatched_reasons():
    invs = {"p1": {"tees": ["sim"], "backends": ["sim"], "cpu": 2, "memory": 4 << 30}}
    assert "SGX" in election.why_unmatched(Requirements(tee="sgx"), invs)
    assert "memory" in election.why_unmatched(Requirements(memory=64 << 30), invs)
    assert "CPU" in election.why_unmatched(Requirements(cpu=64), invs)
    assert "docker" in election.why_unmatched(Requirements(backend="docker"), invs)
    assert "online" in election.why_unmatched(Requirements(), {})
