"""On an SGX network (no sim root in the genesis) the consumer checks the enclave's quote itself
with DCAP collateral from its node's cache, found by the quote's FMSPC: Intel's real quote and
collateral (shared/data/dcap) here; collateral rooted elsewhere is refused; a platform with no
collateral cached fails with what to configure."""
from __future__ import annotations

import datetime as dt

import dcap_qvl
import pytest

from enclave.quotes.sim_pki import SimPki
from node.dos.collateral import CollateralCache, parse_collateral, quote_fmspc_ca
from node.genesis import Genesis, Policy
from node.identity import Identity
from node.market import consumer as C
from tests.parts import SHARED, require_part

DATA = SHARED / "data" / "dcap"
IN_WINDOW = int(dt.datetime(2025, 6, 20, tzinfo=dt.timezone.utc).timestamp())


@pytest.fixture(autouse=True)
def _sample_present() -> None:
    require_part("the real DCAP sample", (DATA / "sgx_quote.bin").exists(), f"looked in {DATA}")


def _consumer(cache: CollateralCache | None) -> C.Consumer:
    genesis = Genesis(network_id="sgx-net", created="2026-11-27", dos_peers=(), dos_quorum=1, secrets_peers=(),
                      secrets_threshold=1, policy=Policy())  # no sim root: a real SGX network

    class _Gossip:
        def on(self, *_a) -> None:
            pass

    return C.Consumer(identity=Identity.generate(), genesis=genesis, gossip=_Gossip(), host=None,  # type: ignore[arg-type]
                      jobs=None, collateral=cache)  # type: ignore[arg-type]


def test_the_quotes_own_collateral_is_found_and_verifies(tmp_path) -> None:
    quote = (DATA / "sgx_quote.bin").read_bytes()
    cache = CollateralCache(tmp_path / "collateral")
    cache.import_collateral(DATA / "sgx_quote_collateral.json")
    c = _consumer(cache)
    args = c._verify_args(_entry(), "00" * 32, b"n" * 32)
    assert "collateral_for" in args and "collateral" not in args
    collateral, root = args["collateral_for"](quote)
    report = dcap_qvl.verify_with_root_ca(quote, collateral, root, IN_WINDOW)  # what ratls_verify then runs
    assert report.status == "ConfigurationAndSWHardeningNeeded"


def test_collateral_rooted_outside_the_policy_is_refused(tmp_path) -> None:
    pki = SimPki.generate()
    quote = (DATA / "sgx_quote.bin").read_bytes()
    fmspc, ca = quote_fmspc_ca(quote)
    cache = CollateralCache(tmp_path / "collateral")
    # the sim PKI's collateral, filed under the real quote's platform
    cache._entries[(ca, fmspc)] = parse_collateral(pki.collateral_dict())
    with pytest.raises(C.JobFailed, match="roots in a CA the network's policy does not name"):
        _consumer(cache)._collateral_for(quote)


async def test_a_platform_without_collateral_says_what_to_configure(tmp_path) -> None:
    quote = (DATA / "sgx_quote.bin").read_bytes()
    c = _consumer(CollateralCache(tmp_path / "collateral"))  # empty, offline (no PCCS)
    with pytest.raises(C._NeedCollateral) as need:
        c._collateral_for(quote)
    assert (need.value.fmspc, need.value.ca) == quote_fmspc_ca(quote)

    async def talk_once(*_a, **_k):
        c._collateral_for(quote)  # what the TLS check does once it has the enclave's certificate

    c._talk_once = talk_once  # type: ignore[method-assign]
    with pytest.raises(C.JobFailed, match="set dos.pccs_url, or import it"):
        await c._talk(None, None, "p", None, "", b"", None)  # type: ignore[arg-type]


def _entry():
    from node.dos.acl import AclEntry

    return AclEntry(network_id="sgx-net", request_id="ab" * 16, ai_cid="bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e",
                    enclave_key_sha256="cd" * 32, measurement="ef" * 32, consumer=Identity.generate().peer_id,
                    not_after=2_000_000_000)


def test_sim_networks_keep_the_sim_root(tmp_path) -> None:
    pki = SimPki.generate()
    c = _consumer(None)
    c.genesis = Genesis(network_id="sim", created="x", dos_peers=(), dos_quorum=1, secrets_peers=(), secrets_threshold=1,
                        policy=Policy(sim_root_ca=pki.root_cert_der), sim_root_key=pki.root_key_pem().decode())
    args = c._verify_args(_entry(), "00" * 32, b"n" * 32)
    assert args["root_ca_der"] == pki.root_cert_der and args["collateral"] is not None


def test_expired_collateral_is_fetched_again_when_a_pccs_is_set(tmp_path) -> None:
    quote = (DATA / "sgx_quote.bin").read_bytes()
    cache = CollateralCache(tmp_path / "collateral", pccs_url="https://pccs.invalid")
    cache.import_collateral(DATA / "sgx_quote_collateral.json")  # the sample's nextUpdate is in 2025
    with pytest.raises(C._NeedCollateral) as need:
        _consumer(cache)._collateral_for(quote)
    assert (need.value.fmspc, need.value.ca) == quote_fmspc_ca(quote)
