"""Attestation and Secret Store figures.

Run: .venv/bin/python bench/attest_figures.py [--seconds S] [--rounds N]

1. Quote verification on one DOS peer with cached collateral (sim quotes,
   single thread): ``Verifier.verify`` (strict parse + FMSPC lookup +
   dcap_qvl + policy + report-data binding) against bare
   ``dcap_qvl.verify_with_root_ca`` on the same quotes, in the same run.
   Also the DOS service's whole decision without the network
   (``AttestService.handle``: decode, verify in a worker thread, sign, durable
   ACL write with fsync).
2. Over real py-libp2p hosts on loopback, one trio process, 2 DOS peers
   (quorum 2) + 3 secrets peers (threshold 2):
   evidence -> quorum ACL in hand (``request_acl``), and
   key request -> key rebuilt (``build_share_request`` + ``fetch_key``:
   t sealed shares fetched, opened with HPKE, combined), p50/p95 in ms.

Prints plain numbers.
"""
from __future__ import annotations

import argparse
import hashlib
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dcap_qvl  # noqa: E402
import trio  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402

from bench.results import figure, samples  # noqa: E402
from enclave.cid import RAW, Cid  # noqa: E402
from enclave.quotes.sim_pki import SimPki  # noqa: E402
from enclave.quotes.sim_qe import SimQuotingEnclave  # noqa: E402
from node.dos.acl import AclStore  # noqa: E402
from node.dos.collateral import CollateralCache, parse_collateral  # noqa: E402
from node.dos.policy import expected_report_data  # noqa: E402
from node.dos.service import AttestService, Evidence, request_acl  # noqa: E402
from node.dos.verifier import Verifier  # noqa: E402
from node.genesis import Genesis, Policy  # noqa: E402
from node.identity import Identity  # noqa: E402
from node.metrics import node_metrics  # noqa: E402
from enclave import secret_client as enclave_side  # noqa: E402
from node.secrets.service import SecretsService, deposit_key, fetch_key  # noqa: E402

MRENCLAVE = hashlib.sha256(b"bench enclave").digest()
AI_CID = Cid.for_block(RAW, b"bench AI").encode()


def pct(samples: list[float], p: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def rate(fn, items: list, seconds: float) -> float:
    fn(items[0])
    n, i, start = 0, 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for _ in range(20):
            fn(items[i % len(items)])
            i += 1
        n += 20
    return n / elapsed


def verification(seconds: float, tmp: Path) -> None:
    pki = SimPki.generate("bench")
    qe = SimQuotingEnclave(pki, seed=b"bench")
    cache = CollateralCache(tmp / "collateral")
    cache.put(parse_collateral(qe.collateral_dict()))
    policy = Policy(mrenclave=(MRENCLAVE.hex(),), sim_root_ca=pki.root_cert_der)
    verifier = Verifier(policy, cache)
    col = cache.entries()[0].obj
    now = int(time.time())
    quotes = []
    for _ in range(200):
        spki = enclave_side.spki_der(ec.generate_private_key(ec.SECP256R1()))
        nonce = os.urandom(32)
        rd = expected_report_data(spki, nonce)
        quotes.append((qe.quote(MRENCLAVE, rd), rd))
    assert verifier.verify(*quotes[0]).ok
    bare = rate(lambda qr: dcap_qvl.verify_with_root_ca(qr[0], col, pki.root_cert_der, now), quotes, seconds)
    ours = rate(lambda qr: verifier.verify(qr[0], qr[1], now=now), quotes, seconds)
    print("# 1. quote verification on one DOS peer, cached collateral, single thread")
    print(f"bare dcap_qvl.verify_with_root_ca   {bare:8.0f} /s")
    print(f"Verifier.verify (parse+dcap+policy) {ours:8.0f} /s   (target >= 500/s)")
    print(f"overhead                            {bare / ours:8.2f} x   (target <= 1.5x)")
    figure("verify_per_s", ours, "/s", label="DOS quote verification (parse + dcap-qvl + policy)",
           reference=bare, reference_label="bare dcap_qvl.verify_with_root_ca", target=500, better="higher")

    # The service's whole decision, without the network.
    ident = Identity.generate()
    genesis = Genesis(network_id="bench", created="now", dos_peers=(ident.peer_id,), dos_quorum=1, secrets_peers=(),
                      secrets_threshold=1, policy=policy)
    svc = AttestService(ident, genesis, verifier, AclStore(tmp / "acl"))
    consumer = Identity.generate().peer_id
    msgs = []
    for _ in range(300):
        key = ec.generate_private_key(ec.SECP256R1())
        spki, nonce = enclave_side.spki_der(key), os.urandom(32)
        q = qe.quote(MRENCLAVE, expected_report_data(spki, nonce))
        msgs.append(Evidence(request_id=os.urandom(16).hex(), ai_cid=AI_CID, consumer=consumer, nonce=nonce, quote=q,
                             enclave_key_spki=spki, not_after=now + 600).to_dict())

    async def run_all() -> float:
        start = time.perf_counter()
        for m in msgs:
            assert (await svc.handle("bench", m))["ok"]
        return len(msgs) / (time.perf_counter() - start)

    print(f"AttestService.handle, sequential    {trio.run(run_all):8.0f} /s   "
          "(decode + verify in a thread + sign + fsynced ACL write)")


class _Node:
    def __init__(self, identity: Identity) -> None:
        from node.p2p.host import P2PHost

        self.identity = identity
        self.p2p = P2PHost(identity=identity, listen=["/ip4/127.0.0.1/tcp/0"], bootstrap=[], metrics=node_metrics())

    async def start(self, nursery: trio.Nursery) -> None:
        ready = trio.Event()

        async def run() -> None:
            async with self.p2p.running():
                ready.set()
                await trio.sleep_forever()

        nursery.start_soon(run)
        await ready.wait()

    @property
    def addr(self) -> str:
        a = self.p2p.addrs()[0]
        return a if "/p2p/" in a else f"{a}/p2p/{self.identity.peer_id}"


async def network(rounds: int, tmp: Path) -> None:
    pki = SimPki.generate("bench-net")
    qe = SimQuotingEnclave(pki, seed=b"bench-net")
    dos_ids = [Identity.generate() for _ in range(2)]
    sec_ids = [Identity.generate() for _ in range(3)]
    genesis = Genesis(network_id="bench", created="now", dos_peers=tuple(i.peer_id for i in dos_ids), dos_quorum=2,
                      secrets_peers=tuple(i.peer_id for i in sec_ids), secrets_threshold=2,
                      policy=Policy(mrenclave=(MRENCLAVE.hex(),), sim_root_ca=pki.root_cert_der))
    client = _Node(Identity.generate())
    nodes = [_Node(i) for i in dos_ids + sec_ids]
    async with trio.open_nursery() as nursery:
        for i, node in enumerate(nodes):
            await node.start(nursery)
            d = tmp / f"n{i}"
            if i < 2:
                cache = CollateralCache(d / "collateral")
                cache.put(parse_collateral(qe.collateral_dict()))
                AttestService(node.identity, genesis, Verifier(genesis.policy, cache), AclStore(d / "acl")).register(node.p2p)
            else:
                SecretsService.open(node.identity, genesis, d).register(node.p2p)
        await client.start(nursery)
        for node in nodes:
            assert await client.p2p.connect_addr(node.addr)
        key = os.urandom(32)
        assert all(a["ok"] for a in (await deposit_key(client.p2p, genesis, AI_CID, key)).values())
        acl_ms, key_ms = [], []
        for r in range(rounds + 5):
            ek = ec.generate_private_key(ec.SECP256R1())
            spki, nonce = enclave_side.spki_der(ek), os.urandom(32)
            ev = Evidence(request_id=os.urandom(16).hex(), ai_cid=AI_CID, consumer=client.identity.peer_id, nonce=nonce,
                          quote=qe.quote(MRENCLAVE, expected_report_data(spki, nonce)), enclave_key_spki=spki,
                          not_after=int(time.time()) + 600)
            t0 = time.perf_counter()
            grant = await request_acl(client.p2p, genesis, ev)
            t1 = time.perf_counter()
            hpke = enclave_side.new_hpke_key()
            req = enclave_side.build_share_request(grant.entry.to_dict(), [s.to_dict() for s in grant.signatures], ek, hpke)
            got = await fetch_key(client.p2p, genesis, req, hpke)
            t2 = time.perf_counter()
            assert bytes(got) == key
            enclave_side.zero(got)
            if r >= 5:  # warm-up rounds excluded
                acl_ms.append((t1 - t0) * 1000)
                key_ms.append((t2 - t1) * 1000)
        nursery.cancel_scope.cancel()
    print(f"# 2. over libp2p, one process: 2 DOS (quorum 2) + 3 secrets (threshold 2), {rounds} rounds")
    print(f"evidence -> quorum ACL in hand   p50 {statistics.median(acl_ms):6.1f} ms  p95 {pct(acl_ms, 95):6.1f} ms"
          "   (target < 50 ms)")
    print(f"key request -> key rebuilt       p50 {statistics.median(key_ms):6.1f} ms  p95 {pct(key_ms, 95):6.1f} ms"
          "   (target < 100 ms)")
    figure("acl_p50", statistics.median(acl_ms), "ms", label="evidence -> quorum ACL in hand, p50", target=50)
    figure("acl_p95", pct(acl_ms, 95), "ms", label="evidence -> quorum ACL in hand, p95")
    figure("key_p50", statistics.median(key_ms), "ms", label="key request -> key rebuilt, p50", target=100)
    samples("acl_ms", acl_ms, "ms", label="evidence -> quorum ACL (2 DOS, quorum 2)")
    samples("key_ms", key_ms, "ms", label="key request -> key rebuilt (3 secrets, t=2)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0, help="per throughput measurement")
    ap.add_argument("--rounds", type=int, default=200, help="network round trips to time")
    args = ap.parse_args()
    logging.disable(logging.WARNING)
    with tempfile.TemporaryDirectory() as d:
        verification(args.seconds, Path(d))
        trio.run(network, args.rounds, Path(d))


if __name__ == "__main__":
    main()
