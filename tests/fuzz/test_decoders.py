"""Property tests for every decoder of outside bytes, driven by the fuzz harness
registry (``bench/fuzz/harnesses.py``): random bytes, mutated real inputs and a
list of known-nasty inputs may only ever be rejected with the decoder's own
exception, and accepted inputs must round-trip where an encoder exists (the
harness targets raise on anything else). Decoder-specific properties of the
older suites (tests/market, tests/store, tests/quotes, tests/dos/test_fuzz.py)
are not repeated here."""
from __future__ import annotations

import json
import logging

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from bench.fuzz import harnesses as H

NAMES = H.names()
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class _Seeds(dict):  # built on first use, not at collection
    def __missing__(self, name: str) -> list[bytes]:
        self[name] = H.get(name).seeds()
        return self[name]


SEEDS = _Seeds()


@pytest.fixture(autouse=True, scope="module")
def _quiet():
    logging.disable(logging.CRITICAL)  # rejected input is logged by some handlers
    yield
    logging.disable(logging.NOTSET)


def test_every_decoder_named_in_the_issue_has_a_harness() -> None:
    for name in ("envelope", "market", "jsonrpc", "ai_manifest", "quote", "ratls_cert", "bitswap", "dagpb",
                 "cid_bytes", "dos_wire", "channel", "genesis", "config"):
        assert name in NAMES


@pytest.mark.parametrize("name", NAMES)
def test_real_inputs_are_accepted(name: str) -> None:
    """The seed corpus is real, valid input: every seed passes its decoder."""
    assert SEEDS[name], name
    assert [H.get(name).target(s) for s in SEEDS[name]] == [True] * len(SEEDS[name])


@pytest.mark.parametrize("name", NAMES)
@FAST
@given(data=st.binary(max_size=400))
def test_random_bytes(name: str, data: bytes) -> None:
    H.get(name).target(data)


def _mutate(seed: bytes, draw) -> bytes:
    b = bytearray(seed)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "cut", "insert", "dup", "truncate"]))
        pos = draw(st.integers(0, len(b)))
        if op == "flip" and pos < len(b):
            b[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and pos < len(b):
            b[pos] = draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF, ord("["), ord('"'), ord("{"), ord("\\")]))
        elif op == "cut":
            del b[pos:pos + draw(st.integers(1, 32))]
        elif op == "insert":
            b[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "dup":
            n = draw(st.integers(1, 64))
            b[pos:pos] = b[pos:pos + n]
        else:
            del b[pos:]
    return bytes(b)


@pytest.mark.parametrize("name", NAMES)
@FAST
@given(data=st.data())
def test_mutated_real_inputs(name: str, data) -> None:
    seed = data.draw(st.sampled_from(SEEDS[name]))
    H.get(name).target(_mutate(seed, data.draw))


# Inputs that broke decoders of this kind before (see docs/fuzzing.md): deep
# nesting, huge numbers, lone surrogates, non-UTF-8, NaN/Infinity, empty.
NASTY_JSON = [
    b"[" * 100_000, b'{"a":' * 50_000, b"[" * 900 + b"]" * 900,
    b'{"jsonrpc":"2.0","id":"\\ud800","method":"\\udfff","params":{"\\ud800":1}}',
    b'{"a":' + b"9" * 5000 + b"}", b'{"a":Infinity,"b":NaN,"c":-Infinity}', b'{"a":1e999}',
    b"\xff\xfe{}", b'{"a":"\xc3\x28"}', b"", b"null", b"{}", b"[]", b'"x"', b"1" * 5000,
]
NASTY_TOML = [
    b"a = " + b"[" * 5000 + b"]" * 5000, b"a = " + b"{b=" * 3000 + b"1" + b"}" * 3000,
    b".".join([b"a"] * 3000) + b" = 1", b"[" + b".".join([b"t"] * 3000) + b"]",
    b"a = " + b"9" * 5000, b"a = 0x" + b"f" * 5000, b"a = 1e99999", b"a = nan",
    b"a = \"\\ud800\"", b"\xff = 1", b"a = 1\r", b'a = """' + b"x" * 1000,
]


@pytest.mark.parametrize("name", NAMES)
def test_known_nasty_inputs(name: str) -> None:
    seeds = SEEDS[name]
    cases = NASTY_JSON + NASTY_TOML
    for seed in seeds[:2]:  # and the same glued onto real input
        cases += [seed + case for case in NASTY_JSON[:3] + NASTY_TOML[:3]]
        if seed[:1] in (b"{", b"["):
            try:
                d = json.loads(seed)
            except ValueError:
                continue
            if isinstance(d, dict):  # each field of a real message replaced by something nasty
                for k in list(d)[:8]:
                    for bad in ("\ud800", 2**64, -1, 1e308, float("inf"), None, [[[[]]]],
                                {"": {}}, "A" * 70000, True):
                        try:
                            cases.append(json.dumps({**d, k: bad}).encode())
                        except (ValueError, OverflowError):
                            pass
    for case in cases:
        H.get(name).target(case)
