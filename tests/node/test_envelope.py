import pytest

from node.identity import Identity
from node.p2p import envelope as env
from node.p2p.envelope import EnvelopeRejected, open_envelope, seal
from node.p2p.envelope_pb2 import Envelope

LIMITS = dict(max_bytes=65536, max_age_ms=120_000, max_future_ms=10_000)


def test_roundtrip():
    ident = Identity.generate()
    raw = seal(ident, "net", "node.note", b"hi")
    m = open_envelope(raw, "net", **LIMITS)
    assert (m.type, m.sender, m.payload) == ("node.note", ident.peer_id, b"hi")
    assert m.id == env.message_id(raw)
    # Same payload twice: different ids (nonce), so both are delivered.
    assert open_envelope(seal(ident, "net", "node.note", b"hi"), "net", **LIMITS).id != m.id


def reason(raw, **kw):
    with pytest.raises(EnvelopeRejected) as e:
        open_envelope(raw, "net", **{**LIMITS, **kw})
    return e.value.reason


def test_rejections():
    ident = Identity.generate()
    good = seal(ident, "net", "t", b"x")
    e = Envelope.FromString(good)
    forged = Envelope(body=e.body, signature=bytes([e.signature[0] ^ 1]) + e.signature[1:]).SerializeToString()
    assert reason(forged) == env.BAD_SIGNATURE
    other = Identity.generate()
    resigned = Envelope(body=e.body, signature=other.sign(env.SIGN_CONTEXT + e.body)).SerializeToString()
    assert reason(resigned) == env.BAD_SIGNATURE
    assert reason(seal(ident, "other-net", "t", b"x")) == env.WRONG_NETWORK
    assert reason(seal(ident, "net", "t", b"x", timestamp_ms=env.now_ms() - 3_600_000)) == env.STALE
    assert reason(seal(ident, "net", "t", b"x", timestamp_ms=env.now_ms() + 60_000)) == env.FUTURE
    assert reason(seal(ident, "net", "t", b"x" * 70000)) == env.OVERSIZE
    assert reason(b"\xff\xff\xff") == env.MALFORMED
    assert reason(b"") == env.MALFORMED


def test_garbage_never_raises_other_errors():
    import random

    rnd = random.Random(7)
    ident = Identity.generate()
    good = bytearray(seal(ident, "net", "t", b"payload"))
    for _ in range(2000):
        b = bytearray(good)
        for _ in range(rnd.randint(1, 4)):
            b[rnd.randrange(len(b))] = rnd.randrange(256)
        try:
            open_envelope(bytes(b), "net", **LIMITS)
        except EnvelopeRejected:
            pass
