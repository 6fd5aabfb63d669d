"""Shared pieces for the DOS and Secret Store tests: a sim PKI, enclaves that make
real-layout quotes, a genesis, and real py-libp2p hosts on loopback in one trio process."""
from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
from cryptography.hazmat.primitives.asymmetric import ec

from enclave.cid import RAW, Cid
from enclave.quotes.sim_pki import SimPki
from enclave.quotes.sim_qe import SimQuotingEnclave
from node.dos.acl import AclStore
from node.dos.collateral import CollateralCache, parse_collateral
from node.dos.policy import expected_report_data
from node.dos.service import AttestService, Evidence
from node.dos.verifier import Verifier
from node.genesis import Genesis, Policy
from node.identity import Identity
from node.metrics import node_metrics
from enclave import secret_client as enclave_side
from node.secrets.service import SecretsService

MRENCLAVE = hashlib.sha256(b"ofnode test enclave").digest()
OTHER_MRENCLAVE = hashlib.sha256(b"some other enclave").digest()
NETWORK = "testnet"

# One sim PKI and QE for the whole session: generating them costs ~10 ms each.
PKI = SimPki.generate(NETWORK)
QE = SimQuotingEnclave(PKI, seed=b"platform-1")


def cid_of(data: bytes) -> str:
    """A CIDv1 (raw, sha2-256) string for ``data``: stands in for an AI's CID."""
    return Cid.for_block(RAW, data).encode()


AI_CID = cid_of(b"the AI object")
OTHER_AI_CID = cid_of(b"another AI object")


def make_genesis(dos: list[Identity], secrets: list[Identity], *, k: int, t: int, policy: Policy | None = None) -> Genesis:
    return Genesis(
        network_id=NETWORK, created="2026-11-27T00:00:00Z",
        dos_peers=tuple(i.peer_id for i in dos), dos_quorum=k,
        secrets_peers=tuple(i.peer_id for i in secrets), secrets_threshold=t,
        policy=policy or Policy(mrenclave=(MRENCLAVE.hex(),), sim_root_ca=PKI.root_cert_der),
    )


@dataclass
class SimEnclave:
    """What an enclave has: an RA-TLS key (ECDSA P-256), a quote source, an HPKE key."""

    mrenclave: bytes = MRENCLAVE
    debug: bool = False
    key: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))
    hpke: Any = field(default_factory=enclave_side.new_hpke_key)

    @property
    def spki(self) -> bytes:
        return enclave_side.spki_der(self.key)

    def quote(self, nonce: bytes) -> bytes:
        return QE.quote(self.mrenclave, expected_report_data(self.spki, nonce), debug=self.debug)

    def evidence(self, *, request_id: str, consumer: str, nonce: bytes, ai_cid: str = AI_CID,
                 ttl: int = 600, quote: bytes | None = None, now: float | None = None) -> Evidence:
        now = time.time() if now is None else now
        return Evidence(request_id=request_id, ai_cid=ai_cid, consumer=consumer, nonce=nonce,
                        quote=quote if quote is not None else self.quote(nonce), enclave_key_spki=self.spki,
                        not_after=int(now) + ttl)

    def share_request(self, grant_or_entry: Any, signatures: Any = None) -> dict[str, Any]:
        if signatures is None:
            entry, sigs = grant_or_entry.entry, grant_or_entry.signatures
        else:
            entry, sigs = grant_or_entry, signatures
        return enclave_side.build_share_request(entry.to_dict(), [s.to_dict() for s in sigs], self.key, self.hpke)


def sim_collateral_cache(directory: Path, **kw: Any) -> CollateralCache:
    cache = CollateralCache(directory, **kw)
    cache.put(parse_collateral(QE.collateral_dict()))
    return cache


# -- hosts ------------------------------------------------------------------------------
class Node:
    """One real py-libp2p host (P2PHost) that can be stopped on its own ("down")."""

    def __init__(self, identity: Identity) -> None:
        from node.p2p.host import P2PHost

        self.identity = identity
        self.p2p = P2PHost(identity=identity, listen=["/ip4/127.0.0.1/tcp/0"], bootstrap=[], metrics=node_metrics())
        self._scope = trio.CancelScope()
        self._stopped = trio.Event()
        self.services: list[Any] = []

    @property
    def peer_id(self) -> str:
        return self.identity.peer_id

    @property
    def addr(self) -> str:
        return f"{self.p2p.addrs()[0]}/p2p/{self.peer_id}" if "/p2p/" not in self.p2p.addrs()[0] else self.p2p.addrs()[0]

    async def start(self, nursery: trio.Nursery) -> None:
        ready = trio.Event()

        async def run() -> None:
            try:
                with self._scope:
                    async with self.p2p.running():
                        ready.set()
                        await trio.sleep_forever()
            finally:
                self._stopped.set()

        nursery.start_soon(run)
        await ready.wait()

    async def stop(self) -> None:
        self._scope.cancel()
        await self._stopped.wait()


@dataclass
class Net:
    genesis: Genesis
    dos: list[Node]
    secrets: list[Node]
    client: Node  # the provider / enclave relay / publisher / consumer, all in one for tests
    attest: list[AttestService]
    vaults: list[SecretsService]
    dirs: dict[str, Path]


async def start_net(nursery: trio.Nursery, tmp: Path, *, n_dos: int = 3, k: int = 2, n_secrets: int = 3, t: int = 2,
                    policy: Policy | None = None) -> Net:
    dos_ids = [Identity.generate() for _ in range(n_dos)]
    sec_ids = [Identity.generate() for _ in range(n_secrets)]
    genesis = make_genesis(dos_ids, sec_ids, k=k, t=t, policy=policy)
    dos = [Node(i) for i in dos_ids]
    secrets = [Node(i) for i in sec_ids]
    client = Node(Identity.generate())
    dirs: dict[str, Path] = {}
    attest, vaults = [], []
    for n, node in enumerate(dos):
        d = tmp / f"dos{n}"
        dirs[node.peer_id] = d
        cache = sim_collateral_cache(d / "collateral")
        svc = AttestService(node.identity, genesis, Verifier(genesis.policy, cache), AclStore(d / "acl"))
        attest.append(svc)
        node.services.append(svc)
    for n, node in enumerate(secrets):
        d = tmp / f"secrets{n}"
        dirs[node.peer_id] = d
        svc = SecretsService.open(node.identity, genesis, d)
        vaults.append(svc)
        node.services.append(svc)
    for node in [*dos, *secrets, client]:
        await node.start(nursery)
        for svc in node.services:
            svc.register(node.p2p)
    for node in [*dos, *secrets]:
        assert await client.p2p.connect_addr(node.addr)
    return Net(genesis=genesis, dos=dos, secrets=secrets, client=client, attest=attest, vaults=vaults, dirs=dirs)


def new_request() -> tuple[str, bytes]:
    """A market-style request id (16 bytes hex) and nonce (32 bytes)."""
    return os.urandom(16).hex(), os.urandom(32)
