"""Unit tests of the two production changes the adversarial suite brought:
the DOS's sim MRENCLAVE check (evidence carries the AI manifest) and the
test-adversary hook's refusal outside testnets. No network: fast."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import trio

from enclave import measure
from node.dos.acl import AclStore
from node.dos.service import AttestService, parse_evidence
from node.dos.verifier import Verifier
from node.genesis import Policy
from node.identity import Identity
from node.roles import _load_test_adversary
from tests.dos.helpers import (
    PKI,
    SimEnclave,
    make_genesis,
    new_request,
    sim_collateral_cache,
)

MANIFEST = (Path(__file__).resolve().parents[2] / "examples" / "digits" / "ai.toml").read_bytes()


def service(tmp_path: Path) -> AttestService:
    dos = Identity.generate()
    # As on a testnet: any MRENCLAVE by policy; the recomputed measurement is the only barrier.
    genesis = make_genesis([dos], [], k=1, t=1, policy=Policy(sim_root_ca=PKI.root_cert_der))
    return AttestService(dos, genesis, Verifier(genesis.policy, sim_collateral_cache(tmp_path / "c")),
                         AclStore(tmp_path / "acl"), measure=measure.mrenclave, run_collateral_refresh=False)


def ask(svc: AttestService, enc: SimEnclave, manifest: bytes | None) -> dict:
    rid, nonce = new_request()
    ev = enc.evidence(request_id=rid, consumer=Identity.generate().peer_id, nonce=nonce)
    if manifest is not None:
        ev = dataclasses.replace(ev, manifest=manifest)
    msg = ev.to_dict()
    assert parse_evidence(msg) == ev  # the manifest survives the wire
    return trio.run(svc.handle, "12D3KooWprovider", msg)


def test_the_network_code_with_the_ai_manifest_is_accepted(tmp_path):
    ans = ask(service(tmp_path), SimEnclave(mrenclave=measure.mrenclave(MANIFEST)), MANIFEST)
    assert ans["ok"] is True and ans["entry"]["measurement"] == measure.mrenclave(MANIFEST).hex()


@pytest.mark.parametrize("case", ["other code", "other manifest", "no manifest"])
def test_other_code_or_no_manifest_is_refused(tmp_path, case):
    mrenclave = {"other code": os.urandom(32), "other manifest": measure.mrenclave(MANIFEST + b"\n# x\n"),
                 "no manifest": measure.mrenclave(MANIFEST)}[case]
    ans = ask(service(tmp_path), SimEnclave(mrenclave=mrenclave), None if case == "no manifest" else MANIFEST)
    assert ans["ok"] is False and "mrenclave" in ans["error"], ans
    assert ("no AI manifest" if case == "no manifest" else "other enclave code") in ans["error"]


def test_oversized_manifest_is_malformed(tmp_path):
    rid, nonce = new_request()
    msg = SimEnclave().evidence(request_id=rid, consumer=Identity.generate().peer_id, nonce=nonce).to_dict()
    msg["manifest"] = "QUFB" * 9000  # 27 KiB decoded
    ans = trio.run(service(tmp_path).handle, "12D3KooWprovider", msg)
    assert ans["ok"] is False and "malformed evidence: manifest" in ans["error"], ans


def test_the_test_adversary_is_refused_off_testnets():
    prod = SimpleNamespace(node=SimpleNamespace(genesis=SimpleNamespace(sim_root_key="")))
    with pytest.raises(RuntimeError, match="not a testnet"):
        _load_test_adversary("tests.adversarial.malicious", prod)
    test = SimpleNamespace(node=SimpleNamespace(genesis=SimpleNamespace(sim_root_key="PEM")))
    with pytest.raises(RuntimeError, match="under tests.adversarial"):
        _load_test_adversary("os", test)


def test_only_sim_rooted_quotes_are_measured_by_the_dos():
    """A real SGX quote (Intel root) on a testnet is judged by the policy's lists, not the sim measurement."""
    from node.dos.policy import Check
    from node.dos.service import _sim_rooted
    from node.dos.verifier import Verdict

    def verdict(detail: str) -> Verdict:
        return Verdict(ok=True, verified=True, status="UpToDate", advisories=(),
                       checks=(Check("sim_root_allowed", True, detail),))

    assert not _sim_rooted(verdict("Intel SGX root CA"))
    assert _sim_rooted(verdict("sim root CA 0123456789abcdef... named by the genesis (testnet: no security)"))
