"""The ofnode daemon: one node, every part owned by one nursery.

Start order matters: host and DHT listen, gossip subscribes, then links to
peers are made (so no peer connects before pubsub can greet it), then the API
socket opens and readiness is reported. Stop is the reverse, by cancellation.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import random
import signal
import time
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Callable

import trio

from .api.jsonrpc import RpcError, INVALID_PARAMS
from .api.server import ApiServer
from .config import Config
from .dos.collateral import CollateralCache
from .fsutil import private_dir
from .genesis import Genesis, load_genesis
from .identity import Identity, load_or_create_identity
from .metrics import Metrics, node_metrics, serve_metrics
from .p2p.envelope import SignedMessage
from .p2p.gossip import Gossip, Received
from .p2p.host import P2PHost
from .p2p.peer_guard import PeerGuard
from .store.exchange import Exchange
from .store.service import StoreService
from .market import api as market_api
from .market.consumer import Consumer
from .market.jobs import JobStore
from .roles import Roles

log = logging.getLogger("ofnode.node")

ANNOUNCE = "node.announce"
NOTE = "node.note"


def ofnode_version() -> str:
    try:
        return version("ofnode")
    except PackageNotFoundError:
        return "dev"


class AnnounceError(ValueError):
    """A node.announce payload is not a JSON object {name, roles, addrs, version?, inventory?}."""


MAX_ANNOUNCE_BYTES = 16384
ANNOUNCE_NETWORK_RATE = 1.0  # announcements per second, all nodes together (see Node.announce_interval)
ANNOUNCE_ANSWER_GAP = 4.0  # s: a provider answers restarted nodes' hellos at most about this often


def parse_announcement(payload: bytes) -> dict[str, Any]:
    """What a node keeps of a peer's announcement: bounded, typed, unknown roles and
    non-string addresses dropped. Raises AnnounceError only."""
    if len(payload) > MAX_ANNOUNCE_BYTES:
        raise AnnounceError(f"announcement of {len(payload)} bytes exceeds {MAX_ANNOUNCE_BYTES}")
    try:
        a = json.loads(payload)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise AnnounceError("announcement is not JSON") from None
    if not isinstance(a, dict):
        raise AnnounceError("announcement is not a JSON object")
    name, roles, addrs, version = a.get("name"), a.get("roles"), a.get("addrs"), a.get("version", "")
    if not isinstance(name, str) or not isinstance(roles, list) or not isinstance(addrs, list) \
            or not isinstance(version, str):
        raise AnnounceError("announcement needs name (string), roles and addrs (lists), version? (string)")
    info: dict[str, Any] = {
        "name": name[:64],
        "roles": [r for r in roles if r in ("provider", "dos", "secrets")][:3],
        "addrs": [x[:256] for x in addrs if isinstance(x, str)][:16],
        "version": version[:32],
    }
    if a.get("hello") is True:
        info["hello"] = True
    inv = a.get("inventory")
    if isinstance(inv, dict) and "provider" in info["roles"]:
        def count(key: str) -> int:
            v = inv.get(key)
            return v if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**63 else 0

        tees, backends = inv.get("tees"), inv.get("backends")
        info["inventory"] = {
            "cpu": count("cpu"),
            "memory": count("memory"),
            "tees": [t for t in tees if t in ("sim", "sgx")][:2] if isinstance(tees, list) else [],
            "backends": [b[:64] for b in backends if isinstance(b, str)][:8] if isinstance(backends, list) else [],
        }
    return info


class NodeError(Exception):
    """The node cannot start; the message says why."""


class Node:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.data_dir = private_dir(config.data_dir)
        self.genesis: Genesis = load_genesis(config.genesis_path)
        self.identity: Identity
        self.identity, created = load_or_create_identity(self.data_dir)
        if created:
            log.info("created identity", extra={"peer_id": self.identity.peer_id})
        self.name = config["node"]["name"] or self.identity.peer_id[-6:]
        self.metrics: Metrics = node_metrics()
        p = config["p2p"]
        self.p2p = P2PHost(
            identity=self.identity,
            listen=p["listen"],
            bootstrap=p["bootstrap"],
            metrics=self.metrics,
            reconnect_interval=p["reconnect_interval"],
            reconnect_max=p["reconnect_max"],
            dial_timeout=p["dial_timeout"],
            target_peers=p["target_peers"],
            discovery_interval=p["discovery_interval"],
            max_connections=p["max_connections"],
            protected=(*self.genesis.dos_peers, *self.genesis.secrets_peers),
            guard=PeerGuard(strikes=config["gossip"]["ban_strikes"], window=config["gossip"]["ban_window"],
                            ban=config["gossip"]["ban_s"],
                            protected=(*self.genesis.dos_peers, *self.genesis.secrets_peers,
                                       *(b.rsplit("/p2p/", 1)[-1] for b in p["bootstrap"]))),
        )
        self.gossip = Gossip(self.p2p, self.identity, self.genesis.network_id, config["gossip"], self.metrics)
        a = config["api"]
        self.api = ApiServer(config.socket_path, self.metrics, a["max_request_bytes"], a["max_connections"])
        self.store = StoreService(self.data_dir)
        self.store.register(self.api)
        self.exchange = Exchange(self.p2p.host, self.store.blocks, self.metrics)
        self.store.on_published = self._after_publish
        self.store.fetch = self._fetch
        self.store.on_revoke = self._revoke
        # DCAP collateral: DOS peers verify providers' quotes with it, consumers
        # on SGX networks the enclave's own quote (dos.pccs_url / collateral_file).
        d = config["dos"]
        self.collateral = CollateralCache(self.data_dir / "collateral", pccs_url=d["pccs_url"] or None)
        if d["collateral_file"]:
            self.collateral.import_collateral(d["collateral_file"])
        self.roles_runner = Roles(self)
        self.jobs = JobStore(self.data_dir)
        interrupted = self.jobs.fail_interrupted()
        if interrupted:
            log.warning("jobs interrupted by the last stop marked failed", extra={"jobs": ",".join(interrupted)})
        self.consumer = Consumer(identity=self.identity, genesis=self.genesis, gossip=self.gossip,
                                 host=self.p2p.host, jobs=self.jobs,
                                 republish_s=config["market"]["republish_s"], collateral=self.collateral)
        market_api.register(self.api, self.consumer, self.jobs, config["market"])
        self.peer_info: dict[str, dict[str, Any]] = {}
        self.metrics_url = ""
        self.started = time.time()
        self._stop = trio.Event()
        self._announce_now = trio.Event()
        self._lock_fd: int | None = None
        self.gossip.on(ANNOUNCE, self._on_announce)
        self._register_api()

    # -- lifecycle -------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()

    async def run(self, on_ready: Callable[[dict[str, Any]], None] | None = None) -> None:
        self._take_lock()
        try:
            async with self.p2p.running(), self.gossip.running(), trio.open_nursery() as nursery:
                self.exchange.dht = self.p2p.dht  # the DHT exists only while the host runs
                await nursery.start(self.exchange.run)
                self.roles_runner.start(nursery)
                if self.roles_runner.attest is None and self.collateral.pccs_url:
                    # A DOS peer's attestation service refreshes the cache; elsewhere the
                    # node does, so a consumer's collateral is fresh before a job needs it.
                    nursery.start_soon(self.collateral.run)
                nursery.start_soon(self.p2p.maintain_links)
                nursery.start_soon(self._watch_signals)
                nursery.start_soon(self._announce_loop)
                m = self.config["metrics"]
                if m["enabled"]:
                    host, port = m["listen"].rsplit(":", 1)
                    bound = await nursery.start(serve_metrics, self.metrics, host, int(port))
                    self.metrics_url = f"http://{host}:{bound}/metrics"
                await nursery.start(self.api.serve)
                info = self.status()
                log.info("node ready", extra={"peer_id": info["peer_id"], "node": self.name,
                                              "addrs": ",".join(info["addrs"]), "roles": ",".join(info["roles"]),
                                              "socket": str(self.config.socket_path)})
                if on_ready:
                    on_ready(info)
                await self._stop.wait()
                log.info("node stopping")
                with trio.move_on_after(2):  # long calls (waits, jobs) are cut short
                    await self.api.drain()
                nursery.cancel_scope.cancel()
        finally:
            self._release_lock()
        log.info("node stopped")

    def _take_lock(self) -> None:
        path = self.data_dir / "node.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.read(fd, 32).decode(errors="replace").strip()
            os.close(fd)
            raise NodeError(f"another ofnode (pid {other or '?'}) is running with data dir {self.data_dir}") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    async def _watch_signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                log.info("signal received", extra={"signal": signal.Signals(signum).name})
                self.stop()
                return

    # -- presence --------------------------------------------------------
    def _announcement(self, hello: bool = False) -> bytes:
        doc: dict[str, Any] = {"name": self.name, "roles": list(self.config.roles), "addrs": self.p2p.addrs(),
                               "version": ofnode_version()}
        if self.roles_runner.provider is not None:
            doc["inventory"] = self.roles_runner.provider.announcement()
        if hello:
            doc["hello"] = True  # first since start: providers answer with theirs (see _on_announce)
        return json.dumps(doc).encode()

    def announce_interval(self) -> float:
        """``gossip.announce_interval``, stretched on large networks so that all nodes together
        announce about ANNOUNCE_NETWORK_RATE times a second: every announcement costs every
        node ~17 ms of CPU in py-libp2p, so a fixed interval grows as nodes² (30 nodes at
        10 s: 1.5 cores of a 2-core machine just for presence; docs/chaos-and-soak.md)."""
        base = float(self.config["gossip"]["announce_interval"])
        nodes = len(self.p2p.connected_peers()) + 1
        return max(base, nodes / ANNOUNCE_NETWORK_RATE) * random.uniform(0.9, 1.1)

    async def _announce_loop(self) -> None:
        # Announce once the first peer is there, then periodically; a provider also
        # answers a restarted node's first announcement, so that node learns the
        # inventories it needs (a DOS peer matches requests against them) at once.
        await self.p2p.wait_for_peers(1)
        hello = True
        while True:
            await self.gossip.publish(ANNOUNCE, self._announcement(hello))
            hello = False
            with trio.move_on_after(self.announce_interval()):  # periodic, or sooner when asked
                await self._announce_now.wait()
            if self._announce_now.is_set():
                self._announce_now = trio.Event()
                await trio.sleep(random.uniform(0.2, 1.0) + ANNOUNCE_ANSWER_GAP)  # spread, and coalesce hellos

    async def _on_announce(self, msg: SignedMessage) -> None:
        try:
            info = parse_announcement(msg.payload)
        except AnnounceError:
            self.metrics.inc("ofnode_gossip_rejected_total", reason="bad_payload")
            return
        info["last_seen_ms"] = msg.timestamp_ms
        if info.pop("hello", False) and self.roles_runner.provider is not None and msg.sender != self.identity.peer_id:
            self._announce_now.set()
        self.peer_info[msg.sender] = info
        self._remember_addrs(msg.sender, info["addrs"])

    def _remember_addrs(self, peer: str, addrs: list[str]) -> None:
        """Keep announced addresses in the peerstore: py-libp2p forgets a peer's
        addresses 120 s after a dial, and a later new_stream to it then fails."""
        import multiaddr
        from libp2p.peer.id import ID

        good = []
        for a in addrs:
            try:
                ma = multiaddr.Multiaddr(a.split("/p2p/")[0])
            except Exception:  # a bad address in an announcement is skipped, never fatal
                continue
            good.append(ma)
        if good and peer != self.identity.peer_id:
            self.p2p.host.get_peerstore().add_addrs(ID.from_base58(peer), good, 3600)

    async def _fetch(self, root: Any, progress: Any) -> None:
        """Fetch a DAG over Bitswap for `store get`, forwarding progress at most every 0.2 s."""
        send, recv = trio.open_memory_channel[dict[str, Any]](16)
        last = [-1.0]

        def on_progress(p: Any) -> None:  # called by the fetcher, synchronously
            now = trio.current_time()
            if now - last[0] >= 0.2:
                last[0] = now
                msg = {"stage": "fetching", "bytes": p.bytes_done, "blocks": p.blocks_done, "peers": p.peers}
                if p.bytes_total:
                    msg["total"] = p.bytes_total
                try:
                    send.send_nowait(msg)
                except trio.WouldBlock:
                    pass  # a slow client misses an update, never the fetch

        async def forward() -> None:
            async for msg in recv:
                await progress(msg)

        async with trio.open_nursery() as n:
            n.start_soon(forward)
            with trio.fail_after(600):
                result = await self.exchange.fetch_dag(root, progress=on_progress, stall_timeout=10)
            send.close()
        await progress({"stage": "fetched", "blocks": result.fetched, "bytes": result.bytes_fetched,
                        **({"bad_peers": len(result.bad_peers)} if result.bad_peers else {})})

    async def _revoke(self, cid: str) -> dict[str, Any]:
        from .secrets.service import revoke_ai

        answers = await revoke_ai(self.p2p.host, self.genesis, cid)
        ok = sum(1 for a in answers.values() if a.get("ok"))
        refusals = {p[-8:]: f"{a.get('code', '')}: {a.get('error', '')}"[:200] for p, a in answers.items() if not a.get("ok")}
        # Revoked where at least n - t + 1 peers agreed: fewer than t shares remain releasable.
        needed = len(self.genesis.secrets_peers) - self.genesis.secrets_threshold + 1
        return {"cid": cid, "revoked_at": ok, "of": len(answers), "effective": ok >= needed, "refusals": refusals}

    async def _after_publish(self, cid: str, key: bytes) -> dict[str, Any]:
        """Announce the AI in the DHT and hand its key to the Secret Store."""
        from enclave.cid import Cid

        from .secrets.service import deposit_key
        from .store.providers import announce

        out: dict[str, Any] = {}
        with trio.move_on_after(10):
            try:
                await announce(self.p2p.dht, Cid.decode(cid))
                out["announced"] = True
            except Exception as e:  # the DHT may be empty on a lone node
                log.info("provider announce failed", extra={"cid": cid, "error": str(e)[:200]})
                out["announced"] = False
        if self.genesis.secrets_peers:
            answers = await deposit_key(self.p2p.host, self.genesis, cid, key)
            ok = sum(1 for a in answers.values() if a.get("ok"))
            out["key_shares"] = {"deposited": ok, "of": len(self.genesis.secrets_peers),
                                 "threshold": self.genesis.secrets_threshold}
            if ok < self.genesis.secrets_threshold:
                out["warning"] = f"only {ok} key shares deposited; {self.genesis.secrets_threshold} are needed"
        return out

    # -- API -------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        rejected = {k: int(v) for k, v in self.metrics.by_label("ofnode_gossip_rejected_total", "reason").items()}
        return {
            "peer_id": self.identity.peer_id,
            "name": self.name,
            "version": ofnode_version(),
            "network": self.genesis.network_id,
            "roles": list(self.config.roles),
            "addrs": [f"{a}/p2p/{self.identity.peer_id}" if "/p2p/" not in a else a for a in self.p2p.addrs()],
            "peers": self.p2p.connected_peers(),
            # peer id -> seconds its ban has left (gossip flooders; see node/p2p/peer_guard.py)
            "banned": self.p2p.guard.banned() if self.p2p.guard is not None else {},
            "uptime_s": round(time.time() - self.started, 1),
            "data_dir": str(self.data_dir),
            "socket": str(self.config.socket_path),
            "pid": os.getpid(),
            "metrics_url": self.metrics_url,
            "gossip": {
                "topic": self.gossip.topic,
                "in": int(sum(self.metrics.by_label("ofnode_gossip_in_total", "type").values())),
                "out": int(self.metrics.get("ofnode_gossip_out_total")),
                "duplicates": int(self.metrics.get("ofnode_gossip_duplicates_total")),
                "rejected": rejected,
            },
        } | self._provider_status()

    def _provider_status(self) -> dict[str, Any]:
        prov = self.roles_runner.provider if self.roles_runner is not None else None
        if prov is None:
            return {}
        return {"provider": {
            "backend": prov.backend_name,
            "tees": prov.tees(),
            "capacity": prov.capacity,
            "jobs": len(prov.jobs),
            "backends": {b.name: {"ok": b.ok, "reason": b.reason} for b in prov.inventory.backends},
        }}

    def _register_api(self) -> None:
        api = self.api

        async def methods() -> list[str]:
            return api.method_names()

        async def status() -> dict[str, Any]:
            return self.status()

        async def peers() -> list[dict[str, Any]]:
            out = []
            store = self.p2p.host.get_peerstore()
            from libp2p.peer.id import ID
            for pid in self.p2p.connected_peers():
                info = self.peer_info.get(pid, {})
                addrs = [str(a) for a in store.addrs(ID.from_base58(pid))] if pid else []
                out.append({"peer_id": pid, "name": info.get("name", ""), "roles": info.get("roles", []),
                            "addrs": addrs, "last_seen_ms": info.get("last_seen_ms")})
            return out

        async def stop() -> dict[str, Any]:
            self.stop()
            return {"stopping": True}

        async def wait_peers(count: int = 0, peers: list[str] | None = None, timeout: float = 30.0,
                             progress: Any = None) -> dict[str, Any]:
            if not isinstance(count, int) or count < 0 or not isinstance(timeout, (int, float)) or timeout <= 0:
                raise RpcError(INVALID_PARAMS, "count must be an int >= 0 and timeout a number > 0")
            if peers is not None and (not isinstance(peers, list) or not all(isinstance(p, str) for p in peers)):
                raise RpcError(INVALID_PARAMS, "peers must be a list of peer id strings")
            want = set(peers or [])

            def done() -> bool:
                connected = set(self.p2p.connected_peers())
                return want <= connected if want else len(connected) >= count

            with trio.move_on_after(min(timeout, 600)):
                while True:
                    changed = self.p2p.change_event()  # taken before the check: no lost wakeup
                    if done():
                        break
                    await progress({"stage": "waiting", "connected": len(self.p2p.connected_peers())})
                    await changed.wait()
                return {"ok": True, "peers": self.p2p.connected_peers()}
            return {"ok": False, "peers": self.p2p.connected_peers()}

        async def connect(addr: str) -> dict[str, Any]:
            if not isinstance(addr, str) or "/p2p/" not in addr:
                raise RpcError(INVALID_PARAMS, "addr must be a multiaddr ending in /p2p/<peer id>")
            try:
                ok = await self.p2p.connect_addr(addr)
            except Exception as e:  # multiaddr parsing raises a zoo of types
                raise RpcError(INVALID_PARAMS, f"bad multiaddr: {e}") from None
            return {"connected": ok}

        async def publish(text: str) -> dict[str, Any]:
            if not isinstance(text, str) or len(text.encode()) > 4096:
                raise RpcError(INVALID_PARAMS, "text must be a string of at most 4096 bytes")
            return {"id": await self.gossip.publish(NOTE, text.encode())}

        async def recent(type: str = "", limit: int = 100) -> list[dict[str, Any]]:
            if not isinstance(type, str) or not isinstance(limit, int) or limit < 1:
                raise RpcError(INVALID_PARAMS, "type must be a string and limit an int >= 1")
            items = [r for r in self.gossip.recent if not type or r.message.type == type][-limit:]
            return [_received(r) for r in items]

        async def wait_message(id: str, timeout: float = 10.0) -> dict[str, Any]:
            if not isinstance(id, str) or len(id) != 64 or not isinstance(timeout, (int, float)) or timeout <= 0:
                raise RpcError(INVALID_PARAMS, "id must be a 64-hex message id and timeout a number > 0")
            with trio.move_on_after(min(timeout, 600)):
                r = await self.gossip.wait_for(id)
                return {"received": True, "copies": len(self.gossip.find(id)), **_received(r)}
            return {"received": False, "copies": 0}

        async def gossip_state() -> dict[str, Any]:
            return self.gossip.state()

        async def metrics_text() -> str:
            return self.metrics.render()

        api.method("rpc.methods", methods)
        api.method("node.status", status)
        api.method("node.peers", peers)
        api.method("node.stop", stop)
        api.method("node.wait_peers", wait_peers, timeout=610)
        api.method("p2p.connect", connect)
        api.method("gossip.publish", publish)
        api.method("gossip.recent", recent)
        api.method("gossip.wait", wait_message, timeout=610)
        api.method("gossip.state", gossip_state)
        api.method("metrics.text", metrics_text)


def _received(r: Received) -> dict[str, Any]:
    m = r.message
    out = {"id": m.id, "type": m.type, "sender": m.sender, "timestamp_ms": m.timestamp_ms, "received_ms": r.received_ms}
    if m.type == NOTE:
        out["text"] = m.payload.decode(errors="replace")
    return out
