"""The optional roles of a node (dos, secrets, provider), built from its config
and the genesis, and started in the node's nursery."""
from __future__ import annotations

import importlib
import logging
import os
from typing import TYPE_CHECKING, Any

import trio

from .dos.acl import AclStore
from .dos.collateral import parse_collateral
from .dos.service import AttestService, RequestInfo
from .dos.verifier import Verifier
from .fsutil import private_dir
from .market.coordinator import Coordinator
from .market.ledger import RequestLedger
from .provider.service import ProviderService
from .secrets.service import SecretsService

if TYPE_CHECKING:
    from .daemon import Node

log = logging.getLogger("ofnode.roles")


#: TEST ONLY: names a module under ``tests.`` whose ``install(roles)`` turns
#: this node into an adversary for the adversarial suite (tests/adversarial/).
#: Refused unless the genesis is a testnet's (it names a sim root key).
TEST_ADVERSARY_ENV = "OFNODE_TEST_ADVERSARY"


def _load_test_adversary(spec: str, roles: Roles) -> None:
    if not roles.node.genesis.sim_root_key:
        raise RuntimeError(f"{TEST_ADVERSARY_ENV} is refused: this genesis is not a testnet's")
    if not spec.startswith("tests.adversarial."):
        raise RuntimeError(f"{TEST_ADVERSARY_ENV} must name a module under tests.adversarial")
    log.warning("TEST ADVERSARY loaded: this node misbehaves on purpose", extra={"adversary": spec})
    importlib.import_module(spec).install(roles)


class Roles:
    def __init__(self, node: "Node") -> None:
        self.node = node
        g, cfg, me = node.genesis, node.config, node.identity.peer_id
        roles = cfg.roles
        self.coordinator: Coordinator | None = None
        self.attest: AttestService | None = None
        self.secrets: SecretsService | None = None
        self.provider: ProviderService | None = None
        if "dos" in roles:
            if me not in g.dos_peers:
                log.warning("the dos role is on but the genesis does not list this peer: its signatures count for nothing")
            cache = node.collateral
            if g.sim_root_key:
                from enclave.quotes.sim_pki import SimPki

                pki = SimPki.load(g.sim_root_key.encode(), g.policy.sim_root_ca)
                cache.put(parse_collateral(pki.collateral_dict()), force=True)
            mk = cfg["market"]
            acl = AclStore(node.data_dir / "acl")
            gc = cfg["gossip"]
            ledger = RequestLedger(private_dir(node.data_dir / "market") / "requests.jsonl",
                                   replay_window_ms=int((gc["max_age"] + gc["max_future"]) * 1000))
            self.coordinator = Coordinator(node.gossip, me, g.dos_peers, self._inventories,
                                           grace_ms=mk["grace_ms"], attest_ms=int(mk["attest_s"] * 1000),
                                           late_ms=int(mk["late_s"] * 1000), ledger=ledger,
                                           on_reassign=acl.release,
                                           on_finished=lambda rid, by: acl.revoke(rid, consumer=by or None))
            measure = None
            if g.sim_root_key:
                # Sim networks: the measurement is ofnode's own (enclave/measure.py),
                # so every DOS peer recomputes what the AI's enclave must measure.
                from enclave import measure as sim_measure

                measure = sim_measure.mrenclave
            self.attest = AttestService(node.identity, g, Verifier(g.policy, cache), acl,
                                        lookup=self._lookup, on_attested=self.coordinator.note_attested,
                                        measure=measure, metrics=node.metrics)
        if "secrets" in roles:
            if me not in g.secrets_peers:
                log.warning("the secrets role is on but the genesis does not list this peer")
            self.secrets = SecretsService.open(node.identity, g, node.data_dir, metrics=node.metrics)
            node.gossip.on("market.done", self._on_done)
        if "provider" in roles:
            pc = cfg["provider"]
            self.provider = ProviderService(identity=node.identity, genesis=g, gossip=node.gossip, host=node.p2p.host,
                                            store=node.store, exchange=node.exchange, metrics=node.metrics,
                                            backend=pc["backend"], max_enclaves=pc["max_enclaves"], price=pc["price"],
                                            relay_capture=node.data_dir / "relay-capture.json" if pc["relay_capture"] else None)

        adversary = os.environ.get(TEST_ADVERSARY_ENV)
        if adversary:
            _load_test_adversary(adversary, self)

    def start(self, nursery: trio.Nursery) -> None:
        host = self.node.p2p.host
        if self.coordinator:
            nursery.start_soon(self.coordinator.run)
        if self.attest:
            nursery.start_soon(self.attest.run, host)
        if self.secrets:
            nursery.start_soon(self.secrets.run, host)
        if self.provider:
            nursery.start_soon(self.provider.run)

    async def _on_done(self, msg: Any) -> None:
        """A consumer says its job ended: no more key shares for that request."""
        from .market import messages as m

        try:
            d = m.Done.parse(m.decode(msg.payload))
        except m.MessageError:
            return
        if self.secrets is not None:
            self.secrets.releaser.job_finished(d.request_id, msg.sender)

    def _inventories(self) -> dict[str, dict[str, Any]]:
        inv = {p: i["inventory"] for p, i in self.node.peer_info.items() if "inventory" in i}
        if self.provider:
            inv[self.node.identity.peer_id] = self.provider.announcement()
        return inv

    def _lookup(self, request_id: str) -> RequestInfo | None:
        assert self.coordinator is not None
        st = self.coordinator.requests.get(request_id)
        if st is None or (st.following and st.assignment is None):
            return None  # unknown, or seen too late to know whom it was given to
        return RequestInfo(ended=st.finished, nonce=bytes.fromhex(st.req.nonce), ai_cid=st.req.ai_cid, consumer=st.consumer,
                           provider=st.assignment.provider if st.assignment else None)
