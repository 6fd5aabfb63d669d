"""Every policy rule on sim quotes (real DCAP layout, sim root CA), through the DOS Verifier."""
from __future__ import annotations

import os
import time

import pytest

from enclave.quotes.sim_pki import SimPki, TcbLevel
from enclave.quotes.sim_qe import SimQuotingEnclave
from node.dos.collateral import CollateralCache, parse_collateral
from node.dos.policy import expected_report_data
from node.dos.verifier import Verifier, verify_evidence
from node.genesis import Policy

from .helpers import MRENCLAVE, OTHER_MRENCLAVE, PKI, QE, SimEnclave

NOW = time.time()


@pytest.fixture
def cache(tmp_path) -> CollateralCache:
    c = CollateralCache(tmp_path)
    c.put(parse_collateral(QE.collateral_dict()))
    return c


def policy(**kw) -> Policy:
    base = dict(mrenclave=(MRENCLAVE.hex(),), sim_root_ca=PKI.root_cert_der)
    base.update(kw)
    return Policy(**base)


def failed(v) -> list[str]:
    return [c.name for c in v.failed]


def test_good_quote_passes_every_check(cache):
    e = SimEnclave()
    nonce = os.urandom(32)
    v = Verifier(policy(), cache).verify(e.quote(nonce), expected_report_data(e.spki, nonce))
    assert v.ok, v.reasons()
    assert v.status == "UpToDate" and v.mrenclave == MRENCLAVE.hex()
    assert "sim root CA" in v.check("sim_root_allowed").detail


@pytest.mark.parametrize("case, expect", [
    ("wrong_mrenclave", ["mrenclave"]),
    ("wrong_mrsigner", ["mrsigner"]),
    ("low_isv_svn", ["isv_svn"]),
    ("replayed_nonce", ["report_data"]),
    ("other_key", ["report_data"]),
    ("debug", ["tcb_status", "advisories", "debug"]),
])
def test_policy_rejections(cache, case, expect):
    e = SimEnclave()
    nonce = os.urandom(32)
    pol = policy(mrsigner=(("11" * 32),) if case == "wrong_mrsigner" else (), min_isv_svn=2 if case == "low_isv_svn" else 0)
    mr = OTHER_MRENCLAVE if case == "wrong_mrenclave" else MRENCLAVE
    quote = QE.quote(mr, expected_report_data(e.spki, nonce), debug=case == "debug")
    expected = expected_report_data(e.spki, nonce)
    if case == "replayed_nonce":  # a quote made for another request's nonce
        expected = expected_report_data(e.spki, os.urandom(32))
    if case == "other_key":
        expected = expected_report_data(SimEnclave().spki, nonce)
    v = Verifier(pol, cache).verify(quote, expected)
    assert not v.ok
    assert failed(v) == expect, v.reasons()
    if case == "debug":
        assert v.verified, "a debug quote's signatures still verify; only the debug bit fails"
        assert v.summary().startswith("debug:")


def test_debug_allowed_by_policy_still_has_no_tcb_status(cache):
    """dcap-qvl 0.7 stops at the DEBUG attribute: allow_debug passes the debug check, but no status comes back."""
    e = SimEnclave(debug=True)
    nonce = os.urandom(32)
    v = Verifier(policy(allow_debug=True), cache).verify(e.quote(nonce), expected_report_data(e.spki, nonce))
    assert v.check("debug").ok and "allowed" in v.check("debug").detail
    assert failed(v) == ["tcb_status", "advisories"]


def test_sim_root_only_where_the_genesis_names_it(cache):
    e = SimEnclave()
    nonce = os.urandom(32)
    q, rd = e.quote(nonce), expected_report_data(e.spki, nonce)
    v = Verifier(policy(sim_root_ca=b""), cache).verify(q, rd)  # a production genesis
    assert failed(v) == ["sim_root_allowed"] and "names no sim root" in v.summary()
    other = SimPki.generate("other-net")
    v = Verifier(policy(sim_root_ca=other.root_cert_der), cache).verify(q, rd)
    assert failed(v) == ["sim_root_allowed"]


def test_quote_from_another_networks_pki(tmp_path):
    other_qe = SimQuotingEnclave(SimPki.generate("other-net"), seed=b"platform-1")
    cache = CollateralCache(tmp_path)
    cache.put(parse_collateral(QE.collateral_dict()))  # our network's collateral for the same FMSPC
    e = SimEnclave()
    nonce = os.urandom(32)
    q = other_qe.quote(MRENCLAVE, expected_report_data(e.spki, nonce))
    v = Verifier(policy(), cache).verify(q, expected_report_data(e.spki, nonce))
    assert not v.ok and not v.verified


def test_tcb_status_rules(tmp_path):
    levels = [TcbLevel(status="OutOfDate", advisory_ids=("INTEL-SA-00001",))]
    cache = CollateralCache(tmp_path)
    cache.put(parse_collateral(QE.collateral_dict(tcb_levels=levels)))
    e = SimEnclave()
    nonce = os.urandom(32)
    q, rd = e.quote(nonce), expected_report_data(e.spki, nonce)
    v = Verifier(policy(), cache).verify(q, rd)
    assert v.status == "OutOfDate" and failed(v) == ["tcb_status", "advisories"]
    v = Verifier(policy(tcb_statuses_with_advisories=("OutOfDate",)), cache).verify(q, rd)
    assert failed(v) == ["advisories"] and "INTEL-SA-00001" in v.summary()
    v = Verifier(policy(tcb_statuses_with_advisories=("OutOfDate",), advisories_allowed=("INTEL-SA-00001",)), cache).verify(q, rd)
    assert v.ok
    assert Verifier(policy(tcb_statuses=("OutOfDate",)), cache).verify(q, rd).ok


def test_missing_collateral_fails_at_once(tmp_path):
    cache = CollateralCache(tmp_path)  # empty, no PCCS
    e = SimEnclave()
    nonce = os.urandom(32)
    t0 = time.monotonic()
    v = Verifier(policy(), cache).verify(e.quote(nonce), expected_report_data(e.spki, nonce))
    assert time.monotonic() - t0 < 0.5
    assert not v.ok and "no collateral cached for FMSPC" in v.check("signature").detail


def test_expired_collateral(cache):
    e = SimEnclave()
    nonce = os.urandom(32)
    v = Verifier(policy(), cache).verify(e.quote(nonce), expected_report_data(e.spki, nonce), now=NOW + 60 * 86400)
    assert not v.verified and "expired" in v.check("signature").detail


def test_garbage_never_raises(cache):
    v = Verifier(policy(), cache)
    for junk in (b"", b"\0" * 10, os.urandom(2000), b"\x03\x00\x02\x00" + bytes(600)):
        r = v.verify(junk, None)
        assert not r.ok and r.checks[0].name == "parse"
    assert not verify_evidence(b"x", collateral=None, now=NOW).ok
