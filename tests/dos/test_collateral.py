"""The collateral cache: disk format, import, restart, and refresh from a PCCS
(a local HTTP server on 127.0.0.1 speaking the PCCS v4 API)."""
from __future__ import annotations

import datetime as dt
import http.server
import json
import os
import threading
import time
import urllib.parse
from typing import Any

import pytest
import trio

from node.dos.collateral import (
    CollateralCache, CollateralError, _raw_members, fetch_collateral, parse_collateral, quote_fmspc_ca,
)
from node.dos.policy import expected_report_data
from node.dos.verifier import Verifier, verify_evidence
from node.genesis import Policy

from tests.parts import SHARED, require_part

from .helpers import MRENCLAVE, PKI, QE, SimEnclave

SAMPLE = SHARED / "data" / "dcap"
IN_WINDOW = int(dt.datetime(2025, 6, 20, tzinfo=dt.timezone.utc).timestamp())


class FakePccs:
    """A PCCS on 127.0.0.1: serves one collateral document through the v4 REST API."""

    def __init__(self, doc: dict[str, str], *, pretty: bool = False) -> None:
        self.doc, self.pretty = doc, pretty
        self.hits: list[str] = []
        self.fail = False
        self.release = threading.Event()
        self.release.set()
        pccs = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:
                pass

            def do_GET(self) -> None:
                pccs.hits.append(self.path)
                pccs.release.wait(30)
                if pccs.fail:
                    self.send_error(503, "down for maintenance")
                    return
                u = urllib.parse.urlsplit(self.path)
                q = urllib.parse.parse_qs(u.query)
                d = pccs.doc
                sep = ",\n  " if pccs.pretty else ","
                pre, post = ("{\n  ", "\n}\n") if pccs.pretty else ("{", "}")
                if u.path == "/sgx/certification/v4/pckcrl":
                    self.reply(bytes.fromhex(d["pck_crl"]), {"SGX-PCK-CRL-Issuer-Chain": d["pck_crl_issuer_chain"]})
                elif u.path == "/sgx/certification/v4/tcb" and q.get("fmspc"):
                    body = f'{pre}"tcbInfo" : {d["tcb_info"]}{sep}"signature": "{d["tcb_info_signature"]}"{post}'
                    self.reply(body.encode(), {"TCB-Info-Issuer-Chain": d["tcb_info_issuer_chain"]})
                elif u.path == "/sgx/certification/v4/qe/identity":
                    body = f'{pre}"enclaveIdentity":{d["qe_identity"]}{sep}"signature":"{d["qe_identity_signature"]}"{post}'
                    self.reply(body.encode(), {"SGX-Enclave-Identity-Issuer-Chain": d["qe_identity_issuer_chain"]})
                elif u.path == "/sgx/certification/v4/rootcacrl":
                    self.reply(d["root_ca_crl"].encode(), {})  # PCCS answers hex
                else:
                    self.send_error(404)

            def reply(self, body: bytes, headers: dict[str, str]) -> None:
                self.send_response(200)
                for k, v in headers.items():
                    self.send_header(k, urllib.parse.quote(v))
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def pccs_factory():
    servers: list[FakePccs] = []

    def make(doc: dict[str, str], **kw: Any) -> FakePccs:
        s = FakePccs(doc, **kw)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.close()


def old_sim_doc() -> dict[str, str]:
    """Sim collateral issued 29 days ago: its nextUpdate is about two days away."""
    return QE.collateral_dict(now=time.time() - 29 * 86400)


# -- format, import, restart ---------------------------------------------------------
def test_one_file_per_ca_and_fmspc_survives_restart(tmp_path):
    cache = CollateralCache(tmp_path)
    c = parse_collateral(QE.collateral_dict())
    assert cache.put(c)
    assert [p.name for p in tmp_path.iterdir()] == ["platform-00606A000000.json"]
    again = CollateralCache(tmp_path)
    got = again.get("platform", "00606a000000")
    assert got is not None and got.doc == c.doc and got.next_update == c.next_update


def test_import_sample_and_use_it_offline(tmp_path):
    require_part("the real DCAP sample", (SAMPLE / "sgx_quote.bin").exists(), f"looked in {SAMPLE}")
    cache = CollateralCache(tmp_path)
    c = cache.import_collateral(SAMPLE / "sgx_quote_collateral.json")
    assert (c.ca, c.fmspc) == ("processor", "00A067110000")
    quote = (SAMPLE / "sgx_quote.bin").read_bytes()
    assert quote_fmspc_ca(quote) == ("00A067110000", "processor")
    v = Verifier(Policy(tcb_statuses=("ConfigurationAndSWHardeningNeeded",)), CollateralCache(tmp_path)).verify(
        quote, None, now=IN_WINDOW)
    assert v.ok and v.status == "ConfigurationAndSWHardeningNeeded"


def test_older_collateral_does_not_replace_newer(tmp_path):
    cache = CollateralCache(tmp_path)
    new = parse_collateral(QE.collateral_dict())
    cache.put(new)
    assert not cache.put(parse_collateral(old_sim_doc()))
    assert cache.get("platform", new.fmspc).issue_date == new.issue_date
    assert cache.put(parse_collateral(old_sim_doc()), force=True)  # an operator's import wins


def test_bad_files_are_skipped_not_fatal(tmp_path):
    (tmp_path / "platform-00606A000000.json").write_text("{broken")
    good = parse_collateral(QE.collateral_dict())
    (tmp_path / "processor-AAAAAAAAAAAA.json").write_text(good.to_json())  # misnamed
    cache = CollateralCache(tmp_path)
    assert cache.entries() == []


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.pop("pck_crl"), "lacks pck_crl"),
    (lambda d: d.update(extra="x"), "unknown field"),
    (lambda d: d.update(pck_crl="zz"), "not hex"),
    (lambda d: d.update(tcb_info="[1]"), "not JSON objects"),
    (lambda d: d.update(tcb_info_issuer_chain="nope"), "not a PEM"),
    (lambda d: d.update(root_ca_crl="3000"), "not a DER CRL"),
])
def test_collateral_validation(mutate, message):
    d = dict(QE.collateral_dict())
    mutate(d)
    with pytest.raises(CollateralError, match=message):
        parse_collateral(d)


def test_raw_member_extraction_keeps_exact_bytes():
    text = ' { "a" : {"z":1,  "b":[1, 2]} ,"signature":"00ff", "n": null }'
    assert _raw_members(text) == {"a": '{"z":1,  "b":[1, 2]}', "signature": '"00ff"', "n": "null"}
    for bad in ("[]", "{", '{"a" 1}', '{"a":1,}', '{"a":1 "b":2}', ""):
        with pytest.raises(CollateralError):
            _raw_members(bad)


# -- fetching from a PCCS --------------------------------------------------------------
@pytest.mark.parametrize("pretty", [False, True])
def test_fetch_sim_collateral_from_pccs(pccs_factory, pretty):
    doc = QE.collateral_dict()
    pccs = pccs_factory(doc, pretty=pretty)
    c = fetch_collateral(pccs.url + "/sgx/certification/v4/", "00606A000000", "platform", timeout=5)
    assert c.doc == parse_collateral(doc).doc  # signed JSON bodies cut out byte for byte
    assert any(h.startswith("/sgx/certification/v4/pckcrl?ca=platform&encoding=der") for h in pccs.hits)
    e = SimEnclave()
    nonce = os.urandom(32)
    v = verify_evidence(e.quote(nonce), collateral=c, now=time.time(), root_ca_der=PKI.root_cert_der,
                        policy=Policy(mrenclave=(MRENCLAVE.hex(),), sim_root_ca=PKI.root_cert_der),
                        expected_report_data=expected_report_data(e.spki, nonce))
    assert v.ok, v.reasons()


def test_fetch_the_real_sample_from_pccs(pccs_factory):
    require_part("the real DCAP sample", (SAMPLE / "sgx_quote.bin").exists(), f"looked in {SAMPLE}")
    doc = json.loads((SAMPLE / "sgx_quote_collateral.json").read_text())
    pccs = pccs_factory(doc)
    c = fetch_collateral(pccs.url, "00A067110000", "processor", timeout=5)
    assert c.doc == doc
    v = verify_evidence((SAMPLE / "sgx_quote.bin").read_bytes(), collateral=c, now=IN_WINDOW)
    assert v.ok and v.advisories == ("INTEL-SA-00289", "INTEL-SA-00615")


def test_fetch_errors_are_collateral_errors(pccs_factory):
    pccs = pccs_factory(QE.collateral_dict())
    pccs.fail = True
    with pytest.raises(CollateralError, match="503"):
        fetch_collateral(pccs.url, "00606A000000", "platform", timeout=5)
    with pytest.raises(CollateralError):
        fetch_collateral("http://127.0.0.1:9", "00606A000000", "platform", timeout=2)
    with pytest.raises(CollateralError, match="not http"):
        fetch_collateral("file:///etc/passwd", "00606A000000", "platform")


# -- background refresh -----------------------------------------------------------------
async def wait_for(cond, timeout: float = 10.0) -> None:
    with trio.fail_after(timeout):
        while not cond():
            await trio.sleep(0.02)


async def test_background_refresh_before_next_update(tmp_path, pccs_factory):
    pccs = pccs_factory(QE.collateral_dict())
    cache = CollateralCache(tmp_path, pccs_url=pccs.url, refresh_margin=3 * 86400)
    old = parse_collateral(old_sim_doc())
    cache.put(old)
    assert cache.due() == [("platform", old.fmspc)]
    async with trio.open_nursery() as n:
        n.start_soon(cache.run)
        await wait_for(lambda: cache.refreshed == 1)
        n.cancel_scope.cancel()
    new = cache.get("platform", old.fmspc)
    assert new.next_update > old.next_update + 20 * 86400
    assert cache.due() == []
    # the refreshed copy is what a restarted node loads
    assert CollateralCache(tmp_path).get("platform", old.fmspc).doc == new.doc


async def test_missing_collateral_is_fetched_in_the_background(tmp_path, pccs_factory):
    pccs = pccs_factory(QE.collateral_dict())
    cache = CollateralCache(tmp_path, pccs_url=pccs.url)
    e = SimEnclave()
    nonce = os.urandom(32)
    q, rd = e.quote(nonce), expected_report_data(e.spki, nonce)
    pol = Policy(mrenclave=(MRENCLAVE.hex(),), sim_root_ca=PKI.root_cert_der)
    async with trio.open_nursery() as n:
        n.start_soon(cache.run)
        await trio.sleep(0.05)
        # from a worker thread, as the DOS service verifies
        v = await trio.to_thread.run_sync(Verifier(pol, cache).verify, q, rd)
        assert not v.ok and "background fetch is queued" in v.check("signature").detail
        await wait_for(lambda: cache.get("platform", "00606A000000") is not None)
        n.cancel_scope.cancel()
    assert Verifier(pol, cache).verify(q, rd).ok


async def test_verification_never_waits_on_a_hanging_pccs(tmp_path, pccs_factory):
    pccs = pccs_factory(QE.collateral_dict())
    pccs.release.clear()  # every request hangs
    cache = CollateralCache(tmp_path, pccs_url=pccs.url, refresh_margin=3 * 86400, fetch_timeout=20)
    cache.put(parse_collateral(old_sim_doc()))  # due for refresh, still valid
    e = SimEnclave()
    nonce = os.urandom(32)
    q, rd = e.quote(nonce), expected_report_data(e.spki, nonce)
    verifier = Verifier(Policy(mrenclave=(MRENCLAVE.hex(),), sim_root_ca=PKI.root_cert_der), cache)
    async with trio.open_nursery() as n:
        n.start_soon(cache.run)
        await wait_for(lambda: len(pccs.hits) >= 1)  # a refresh is stuck in the PCCS
        t0 = time.monotonic()
        for _ in range(20):
            v = await trio.to_thread.run_sync(verifier.verify, q, rd)
            assert v.ok, v.reasons()
        assert time.monotonic() - t0 < 2.0
        n.cancel_scope.cancel()
    pccs.release.set()


async def test_failed_refresh_keeps_the_cached_copy_and_backs_off(tmp_path, pccs_factory):
    pccs = pccs_factory(QE.collateral_dict())
    pccs.fail = True
    cache = CollateralCache(tmp_path, pccs_url=pccs.url, refresh_margin=3 * 86400, retry_min=3600)
    old = parse_collateral(old_sim_doc())
    cache.put(old)
    with pytest.raises(CollateralError, match="503"):
        await cache.refresh("platform", old.fmspc)
    assert cache.get("platform", old.fmspc).doc == old.doc
    assert cache.due() == []  # backing off
    assert "503" in cache.last_error("platform", old.fmspc)
    assert CollateralCache(tmp_path).get("platform", old.fmspc).doc == old.doc


async def test_offline_cache_refuses_refresh(tmp_path):
    cache = CollateralCache(tmp_path)
    with pytest.raises(CollateralError, match="no PCCS URL"):
        await cache.refresh("platform", "00606A000000")


def test_der_crl_ending_in_a_whitespace_byte_is_kept_whole() -> None:
    """A raw DER CRL whose signature ends in 0x20/0x0a/... was stripped and refused (seen in CI)."""
    from cryptography import x509 as cx509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from node.dos.collateral import _crl_der, _crl_next_update

    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    builder = (cx509.CertificateRevocationListBuilder()
               .issuer_name(cx509.Name([cx509.NameAttribute(cx509.oid.NameOID.COMMON_NAME, "test")]))
               .last_update(now).next_update(now + dt.timedelta(days=1)))
    # ECDSA signatures are random: about 6 in 256 end in such a byte; 1000 tries miss with p < 1e-10
    crls = (builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER) for _ in range(1000))
    der = next(d for d in crls if d[-1:].isspace())
    assert _crl_der(der, "pckcrl") == der
    assert _crl_next_update(_crl_der(der, "pckcrl"), "pckcrl") > 0
