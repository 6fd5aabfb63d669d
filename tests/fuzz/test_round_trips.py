"""Structured round trips for the decoders whose encoders no older test drives
with generated input: whatever the encoder makes, the decoder gives back, and
how the bytes arrive (whole or in pieces) does not matter."""
from __future__ import annotations

from hypothesis import given, settings, strategies as st

from bench.fuzz import harnesses as H

RT = settings(max_examples=80, deadline=None)
TYPES = st.from_regex(r"[a-z][a-z0-9._-]{0,63}", fullmatch=True)


@RT
@given(type_=TYPES, payload=st.binary(max_size=2000), dt=st.integers(-119_000, 9_000))
def test_envelope_round_trip(type_: str, payload: bytes, dt: int) -> None:
    from node.p2p.envelope import message_id, open_envelope, seal

    raw = seal(H._ids()[0], H.NETWORK, type_, payload, timestamp_ms=H.T0_MS + dt)
    msg = open_envelope(raw, H.NETWORK, max_bytes=65536, max_age_ms=120_000, max_future_ms=10_000, now=H.T0_MS)
    assert (msg.type, msg.payload, msg.sender, msg.timestamp_ms) == (type_, payload, H._ids()[0].peer_id, H.T0_MS + dt)
    assert msg.id == message_id(raw)


FRAMES = st.lists(st.one_of(
    st.builds(lambda s, k, p: (s, k, p), st.integers(1, 2**32 - 1), st.sampled_from([1, 2, 3]),
              st.binary(max_size=300)),
    st.builds(lambda op, v: (0, 4, b'{"op":%s,"v":%d}' % (op, v)), st.sampled_from([b'"hello"', b'"stop"']),
              st.integers(0, 10**6))), max_size=8)


@RT
@given(frames=FRAMES, cuts=st.lists(st.integers(0, 5000), max_size=6))
def test_channel_frames_round_trip_however_they_arrive(frames, cuts) -> None:
    from enclave.runtime import channel as ch

    raw = b"".join(ch.encode(s, k, p) for s, k, p in frames)
    p, out, prev = ch.FrameParser(), [], 0
    for c in sorted(min(c, len(raw)) for c in cuts) + [len(raw)]:
        out += p.feed(raw[prev:c])
        prev = c
    assert [(f.stream, f.kind, f.payload) for f in out] == frames


@RT
@given(manifest=st.binary(max_size=3000), rest=st.lists(st.binary(max_size=500), max_size=4),
       step=st.integers(1, 4000))
def test_ai_object_split_gives_back_manifest_and_package(manifest: bytes, rest: list[bytes], step: int) -> None:
    from enclave import ai_object

    raw = b"".join(ai_object.build(manifest, rest))
    got, tail = ai_object.split(raw[i:i + step] for i in range(0, len(raw), step))
    assert got == manifest and b"".join(tail) == b"".join(rest)


@RT
@given(attempt=st.integers(0, 64), cert=st.binary(min_size=32, max_size=32), nsig=st.integers(0, 3))
def test_attested_round_trip(attempt: int, cert: bytes, nsig: int) -> None:
    from node.market import messages as m

    a = m.Attested("cd" * 16, attempt, H._ids()[1].peer_id, cert.hex(), H._acl_entry_dict(),
                   [H._acl_sig_dict()] * nsig)
    assert m.Attested.parse(m.decode(m.encode(a))) == a


@RT
@given(header=st.dictionaries(st.text(max_size=8), st.one_of(st.none(), st.integers(), st.text(max_size=20)),
                              max_size=4), status=st.text(max_size=20), n=st.integers(0, 1000))
def test_enclave_response_header_round_trip(header: dict, status: str, n: int) -> None:
    import json

    from enclave import ratls_verify as rv
    from enclave.runtime import tls

    raw = tls.encode_response({**header, "status": status}, b"x" * n)
    hlen = tls.RESP_HEADER.unpack(raw[:tls.RESP_HEADER.size])[0]
    got = rv.parse_response_header(raw[tls.RESP_HEADER.size:tls.RESP_HEADER.size + hlen], max_output=1000)
    assert got == {**json.loads(json.dumps(header)), "status": status, "output_len": n}
