"""Fetching a whole DAG over Bitswap from several peers into the blockstore.

:func:`fetch_dag` (also :meth:`Exchange.fetch_dag`) walks the DAG under a
root: a block already in the store is read (dag-pb) or just checked for
(raw), every other one is asked for over Bitswap. A window of wants is kept
in flight, spread over the session's peers by how many each has
outstanding, so a faster peer gets more. Each block is hashed and written
to the store as it arrives (by :class:`Exchange`), so memory does not grow
with the file, and a fetch that is interrupted (cancelled, or the process
killed) and started again asks only for what is still missing.

Failure handling, in short (docs/exchange.md has the details):

* DontHave from a peer: the block goes to another peer; a peer that says
  DontHave for the root is dropped from the session.
* A peer sends a block whose hash matches nothing we asked it for: it is
  flagged (``FetchResult.bad_peers``), dropped from the session, and what it
  owed us goes to the other peers.
* A peer that answers nothing for ``peer_timeout`` seconds while it owes us
  blocks is paused with a growing backoff and its wants go elsewhere.
* No block at all for ``stall_timeout`` seconds: :class:`FetchError`.
* Cancelling the caller cancels the fetch; cancels go out to the peers and
  every block already written stays in the store.
"""
from __future__ import annotations

import logging
import math
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable

import trio
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo

from enclave.cid import DAG_PB, RAW, Cid

from .blockstore import BlockNotFound, CorruptBlock
from .unixfs import T_FILE, T_RAW, UnixfsError, decode_pbnode, decode_unixfs

if TYPE_CHECKING:  # pragma: no cover
    from .exchange import Exchange, Received

__all__ = ["Progress", "PeerStats", "FetchResult", "FetchError", "ProgressCallback", "Session", "fetch_dag"]

log = logging.getLogger("ofnode.fetch")

# Deeper than any file DAG (174**40 chunks); bounds hostile DAGs.
MAX_DAG_DEPTH = 64
_NODE_PRIORITY = 20  # inner nodes first: they tell us what to ask for next
_LEAF_PRIORITY = 10


@dataclass(frozen=True, slots=True)
class Progress:
    """Where a fetch stands. Block counts count DAG links (a block linked twice counts twice)."""

    blocks_done: int              # blocks now in the store (fetched or found there)
    blocks_total: int | None      # known once every inner node has been seen
    bytes_done: int               # file bytes under the blocks done (UnixFS data)
    bytes_total: int | None       # the file size, from the root's UnixFS header
    blocks_fetched: int           # fetched over the network in this run
    bytes_fetched: int            # block bytes fetched in this run
    peers: int                    # peers usable in the session
    elapsed: float


ProgressCallback = Callable[[Progress], Any]


@dataclass(slots=True)
class PeerStats:
    blocks: int = 0
    bytes: int = 0
    dont_haves: int = 0
    stalls: int = 0


@dataclass(slots=True)
class FetchResult:
    root: Cid
    blocks: int                   # blocks in the DAG (links counted, root included)
    fetched: int                  # distinct blocks fetched over the network
    present: int                  # distinct blocks that were already in the store
    bytes_fetched: int
    file_bytes: int | None        # the root's UnixFS file size, when it has one
    duplicates: int               # blocks that arrived after another peer's copy
    elapsed: float
    peers: dict[str, PeerStats] = field(default_factory=dict)
    bad_peers: dict[str, str] = field(default_factory=dict)   # peer id -> why


class FetchError(Exception):
    """The DAG could not be completed; ``result`` says how far it got."""

    def __init__(self, message: str, result: FetchResult) -> None:
        super().__init__(message)
        self.result = result


@dataclass(eq=False, slots=True)
class _Item:
    """One block of the DAG that is not in the store yet (or not known to be)."""

    cid: Cid
    depth: int
    size: int | None = None       # file bytes under it, as its parent says
    occurrences: int = 1
    state: str = "check"          # check -> missing -> inflight -> done (or parked)
    peers: dict[ID, float] = field(default_factory=dict)  # asked peer -> when
    excluded: set[ID] = field(default_factory=set)        # said DontHave / failed it

    @property
    def is_node(self) -> bool:
        return self.cid.codec == DAG_PB


@dataclass(eq=False, slots=True)
class _Peer:
    id: ID
    confirmed: bool               # known to have the DAG (given by the caller, or said Have)
    inflight: set[Cid] = field(default_factory=set)
    state: str = "ok"             # ok | paused | bad | lost | lacks
    paused_until: float = 0.0
    backoff: float = 0.0
    busy_since: float = 0.0
    last_heard: float = 0.0
    probe: Cid | None = None      # the block we asked an unconfirmed peer whether it has
    failures: int = 0             # consecutive losses of the connection
    stats: PeerStats = field(default_factory=PeerStats)

    def usable(self, now: float) -> bool:
        if self.state == "paused" and self.paused_until <= now:
            self.state = "ok"
        return self.state == "ok" and self.confirmed


class Session:
    """The state of one :func:`fetch_dag` call. The exchange calls
    :meth:`block`, :meth:`presence`, :meth:`peer_bad`, :meth:`peer_lost` and
    :meth:`store_failed`; everything runs on the trio thread."""

    def __init__(self, exchange: "Exchange", root: Cid, *, window: int, lookahead: int,
                 peer_timeout: float, stall_timeout: float, progress: ProgressCallback | None,
                 progress_interval: float, max_providers: int) -> None:
        self.x = exchange
        self.root = root.to_v1()
        self.window = window
        self.lookahead = lookahead
        self.peer_timeout = peer_timeout
        self.stall_timeout = stall_timeout
        self.progress_cb = progress
        self.progress_interval = progress_interval
        self.max_providers = max_providers
        self.items: dict[Cid, _Item] = {}
        self.to_check: deque[_Item] = deque()
        self.missing_nodes: deque[_Item] = deque()
        self.missing_leaves: deque[_Item] = deque()
        self.parked: list[_Item] = []           # every usable peer said DontHave
        self.peers: dict[ID, _Peer] = {}
        self.nodes_pending = 0                  # dag-pb items not done: blocks_total unknown while > 0
        self.inflight = 0
        # counters
        self.blocks_seen = 1                    # link occurrences discovered (root included)
        self.blocks_done = 0
        self.bytes_done = 0
        self.bytes_total: int | None = None
        self.fetched = 0
        self.present = 0
        self.bytes_fetched = 0
        self.duplicates = 0
        self.bad_peers: dict[str, str] = {}
        self.started = trio.current_time()
        self.last_progress = self.started
        self.last_report = -math.inf
        self.error: str | None = None
        self.done = trio.Event()
        self.check_wake = trio.Event()
        self.need_peers = trio.Event()
        self.discovering = False
        self.connecting = 0                     # dials in progress for caller-given peers

    # -- peers -------------------------------------------------------------------

    def add_peer(self, peer: ID, confirmed: bool) -> None:
        if peer == self.x.host.get_id() or self.x.is_banned(peer):
            return
        p = self.peers.get(peer)
        if p is None:
            self.peers[peer] = _Peer(peer, confirmed, last_heard=trio.current_time())
        elif p.state == "lost":
            p.state = "ok"
        else:
            return
        if self.parked:
            for it in self.parked:
                if it.state == "parked":
                    it.excluded.clear()
                    self._requeue(it, front=False)
            self.parked.clear()
        self.schedule()

    def _drop(self, peer: ID, state: str) -> None:
        p = self.peers.get(peer)
        if p is None or p.state in ("bad", "lacks") or (p.state == "lost" and state == "lost"):
            return
        p.state = state
        self._release(p)
        self.schedule()

    def _release(self, p: _Peer) -> None:
        """Take back everything ``p`` owes us and queue it for the others."""
        cids = list(p.inflight)
        p.inflight.clear()
        for cid in cids:
            it = self.items.get(cid)
            if it is None or p.id not in it.peers:
                continue
            del it.peers[p.id]
            if not it.peers:
                self.inflight -= 1
                self._requeue(it, front=True)
        if cids and p.state in ("paused", "lacks"):
            self.x.cancel(p.id, cids)

    def peer_bad(self, peer: ID, reason: str) -> None:
        if peer in self.peers and self.peers[peer].state != "bad":
            log.warning("peer flagged in fetch", extra={"peer": peer.to_base58(), "reason": reason,
                                                         "root": str(self.root)})
            self.bad_peers[peer.to_base58()] = reason
            self._drop(peer, "bad")

    def peer_lost(self, peer: ID, reason: str) -> None:
        """The connection failed: retry (a new dial) after a pause, give up at the third time."""
        p = self.peers.get(peer)
        if p is None or p.state in ("bad", "lacks", "lost"):
            return
        p.failures += 1
        if p.failures >= 3:
            self._drop(peer, "lost")
            return
        now = trio.current_time()
        p.backoff = max(1.0, p.backoff * 2)
        p.paused_until = now + p.backoff
        p.state = "paused"
        self._release(p)
        self.schedule()

    def store_failed(self, exc: BaseException) -> None:
        self.fail(f"the blockstore failed: {exc}")

    def fail(self, message: str) -> None:
        if self.error is None and not self.done.is_set():
            self.error = message
            self.done.set()

    # -- events from the exchange ------------------------------------------------

    def block(self, peer: ID, rec: "Received") -> None:
        now = trio.current_time()
        p = self.peers.get(peer)
        if p is not None:
            self._heard(p, now)
            p.stats.blocks += 1
            p.stats.bytes += rec.size
            p.confirmed = True
        it = self.items.get(rec.cid)
        if it is None or it.state in ("done", "check"):
            self.duplicates += 1
            return
        self.fetched += 1
        self.bytes_fetched += rec.size
        self.last_progress = now
        for other in list(it.peers):
            op = self.peers.get(other)
            if op is not None:
                op.inflight.discard(rec.cid)
            if other != peer:
                self.x.cancel(other, [rec.cid])
        self._complete(it, rec.data, rec.size)
        self.schedule()
        self.report()

    def _heard(self, p: _Peer, now: float) -> None:
        p.last_heard = now
        p.failures = 0
        if p.state == "paused":   # it answers after all
            p.state = "ok"
            p.backoff = 0.0

    def presence(self, peer: ID, cid: Cid, have: bool) -> None:
        p = self.peers.get(peer)
        if p is None:
            return
        self._heard(p, trio.current_time())
        if have:
            if not p.confirmed and cid == p.probe:
                p.confirmed = True
                self.schedule()
            return
        p.stats.dont_haves += 1
        if not p.confirmed and cid == p.probe or cid == self.root and self.root in self.items:
            # It lacks the first block we asked about: no reason to have the rest.
            self._drop(peer, "lacks")
            return
        it = self.items.get(cid)
        if it is None:
            return
        it.excluded.add(peer)
        if peer in it.peers:
            del it.peers[peer]
            p.inflight.discard(cid)
            if not it.peers:
                self.inflight -= 1
                self._requeue(it, front=True)
        self.schedule()

    # -- the walk ----------------------------------------------------------------

    def _requeue(self, it: _Item, front: bool) -> None:
        it.state = "missing"
        q = self.missing_nodes if it.is_node else self.missing_leaves
        if front:
            q.appendleft(it)
        else:
            q.append(it)

    def _complete(self, it: _Item, data: bytes | None, size: int) -> None:
        """``it`` is in the store now; ``data`` is its bytes if it is dag-pb."""
        if it.state in ("missing", "inflight", "parked"):
            self.x._interest_remove(self, it.cid)
        if it.state == "inflight" and it.peers:
            self.inflight -= 1
            it.peers.clear()
        it.state = "done"
        del self.items[it.cid]
        self.blocks_done += it.occurrences
        if it.cid.codec == RAW:
            self.bytes_done += size * it.occurrences
            if it.cid == self.root:
                self.bytes_total = size
        else:
            self.nodes_pending -= 1
            assert data is not None
            self._expand(it, data)
        if not self.items:
            self.done.set()

    def _expand(self, it: _Item, data: bytes) -> None:
        try:
            node = decode_pbnode(data)
            meta = decode_unixfs(node.data) if node.data is not None else None
        except UnixfsError as exc:
            # The block hashes right, so the DAG itself is malformed: no peer can fix that.
            self.fail(f"block {it.cid} is not a valid dag-pb/UnixFS node: {exc}")
            return
        is_file = meta is not None and meta.type in (T_FILE, T_RAW)
        if is_file:
            assert meta is not None
            if meta.data:
                self.bytes_done += len(meta.data) * it.occurrences
            if it.cid == self.root:
                self.bytes_total = meta.filesize if meta.filesize is not None else (
                    len(meta.data or b"") + sum(meta.blocksizes))
        if node.links and it.depth + 1 > MAX_DAG_DEPTH:
            self.fail(f"DAG deeper than {MAX_DAG_DEPTH} levels under {it.cid}")
            return
        sizes: Iterable[int | None]
        if is_file and len(meta.blocksizes) == len(node.links):  # type: ignore[union-attr]
            sizes = meta.blocksizes  # type: ignore[union-attr]
        else:
            sizes = [None] * len(node.links)
        # Depth first, in link order: children go to the front of the queue.
        children = list(zip(node.links, sizes))
        for _ in range(it.occurrences):
            for link, size in reversed(children):
                self._new_item_front(link.cid.to_v1(), it.depth + 1, size)
        if self.to_check:
            self.check_wake.set()

    def _new_item_front(self, cid: Cid, depth: int, size: int | None) -> None:
        self.blocks_seen += 1
        it = self.items.get(cid)
        if it is not None:
            it.occurrences += 1
            return
        it = self.items[cid] = _Item(cid, depth, size)
        if it.is_node:
            self.nodes_pending += 1
        self.to_check.appendleft(it)

    async def check_local(self) -> None:
        """Resolve queued items against the store, in batches, in a worker thread."""
        while True:
            if not self.to_check:
                self.check_wake = trio.Event()
                await self.check_wake.wait()
                continue
            batch: list[_Item] = []
            while self.to_check and len(batch) < 512:
                it = self.to_check.popleft()
                if it.state == "check":
                    batch.append(it)
            found = await self.x.run_in_thread(_look_up, self.x.store, [(it.cid, it.size) for it in batch])
            for it, (present, data, size) in zip(batch, found):
                if it.state != "check":
                    continue
                if present:
                    self.present += 1
                    self._complete(it, data, size)
                else:
                    it.state = "missing"
                    self.x._interest_add(self, it.cid)
                    (self.missing_nodes if it.is_node else self.missing_leaves).append(it)
            self.last_progress = trio.current_time()
            self.schedule()
            self.report()

    # -- scheduling --------------------------------------------------------------

    def _next_missing(self) -> _Item | None:
        while True:
            q = None
            if self.missing_nodes and len(self.missing_leaves) < self.lookahead:
                q = self.missing_nodes
            elif self.missing_leaves:
                q = self.missing_leaves
            elif self.missing_nodes:
                q = self.missing_nodes
            if q is None:
                return None
            it = q.popleft()
            if it.state == "missing" and not it.peers:
                return it

    def schedule(self) -> None:
        """Hand out wants until the window is full; batches go out at the next checkpoint."""
        if self.done.is_set():
            return
        now = trio.current_time()
        usable = [p for p in self.peers.values() if p.usable(now)]
        if not usable:
            self._probe(now)
            if not any(p.state in ("ok", "paused") for p in self.peers.values()):
                self._out_of_peers()
            return
        wants: dict[ID, list[Cid]] = {}
        node_wants: dict[ID, list[Cid]] = {}
        deferred: list[_Item] = []
        while self.inflight < self.window:
            it = self._next_missing()
            if it is None:
                break
            candidates = [p for p in usable if p.id not in it.excluded]
            if not candidates:
                if any(p.state in ("ok", "paused") and p.id not in it.excluded for p in self.peers.values()):
                    deferred.append(it)   # a paused or unconfirmed peer may still have it
                else:
                    it.state = "parked"
                    self.parked.append(it)
                    self._out_of_peers()
                continue
            p = min(candidates, key=lambda c: len(c.inflight))
            self._assign(it, p, now)
            (node_wants if it.is_node else wants).setdefault(p.id, []).append(it.cid)
        for it in reversed(deferred):
            self._requeue(it, front=True)
        if self.inflight < self.window and not self.missing_leaves and not self.missing_nodes:
            self._endgame(usable, now, wants)
        for pid, cids in node_wants.items():
            self.x.want(pid, cids, priority=_NODE_PRIORITY)
        for pid, cids in wants.items():
            self.x.want(pid, cids, priority=_LEAF_PRIORITY)
        self._probe(now)

    def _out_of_peers(self) -> None:
        """No peer can give us some block: look for more, or give up when
        the caller named the peers and none of them is left."""
        if self.discovering:
            self.need_peers.set()
        elif self.connecting == 0 and (self.parked or self.missing_nodes or self.missing_leaves):
            why = {p.id.to_base58(): p.state for p in self.peers.values()}
            missing = self.parked[0].cid if self.parked else None
            self.fail(f"none of the peers can provide the DAG"
                      f"{f' (no one has {missing})' if missing else ''}; peers: {why}")

    def _assign(self, it: _Item, p: _Peer, now: float) -> None:
        if not it.peers:
            self.inflight += 1
        it.state = "inflight"
        it.peers[p.id] = now
        if not p.inflight:
            p.busy_since = now
        p.inflight.add(it.cid)

    def _endgame(self, usable: list[_Peer], now: float, wants: dict[ID, list[Cid]]) -> None:
        """Nothing left to hand out: ask a second peer for blocks that have
        waited longest at a busy one, so one slow peer does not hold up the end."""
        if len(usable) < 2:
            return
        spare = self.window - self.inflight
        # Keyed on the time alone: items asked in the same instant must not be compared.
        waiting = sorted(((min(it.peers.values()), it) for it in self.items.values()
                          if it.state == "inflight" and len(it.peers) == 1 and now - min(it.peers.values()) > 1.0),
                         key=lambda t: t[0])
        for _, it in waiting[: max(0, spare)]:
            candidates = [p for p in usable if p.id not in it.excluded and p.id not in it.peers]
            if not candidates:
                continue
            p = min(candidates, key=lambda c: len(c.inflight))
            it.peers[p.id] = now
            if not p.inflight:
                p.busy_since = now
            p.inflight.add(it.cid)
            wants.setdefault(p.id, []).append(it.cid)

    def _probe(self, now: float) -> None:
        """Ask each unconfirmed peer (found among the connected ones) whether it
        has the root, or, when the root is here already, the first missing
        block: want-have with DontHave wanted. Have makes it a session peer."""
        root = self.items.get(self.root)
        if root is not None and root.state != "check":
            cid: Cid | None = self.root
        else:
            first = next((it for q in (self.missing_nodes, self.missing_leaves) for it in q
                          if it.state in ("missing", "inflight")), None)
            cid = first.cid if first is not None else None
        if cid is None:
            return
        for p in self.peers.values():
            if not p.confirmed and p.state == "ok" and p.probe is None:
                p.probe = cid
                self.x.want(p.id, [cid], want_have=True, priority=_NODE_PRIORITY)

    # -- housekeeping -------------------------------------------------------------

    async def tick(self) -> None:
        """Timeouts: pause silent peers, give up when nothing moves."""
        while True:
            await trio.sleep(0.25)
            now = trio.current_time()
            for p in list(self.peers.values()):
                if p.state == "ok" and p.inflight and now - max(p.last_heard, p.busy_since) > self.peer_timeout:
                    p.stats.stalls += 1
                    p.backoff = min(60.0, max(2.0, p.backoff * 2))
                    p.paused_until = now + p.backoff
                    log.info("peer paused in fetch", extra={"peer": p.id.to_base58(), "backoff": p.backoff})
                    p.state = "paused"
                    self._release(p)
            if now - self.last_progress > self.stall_timeout:
                self.fail(f"no progress for {self.stall_timeout:g} s"
                          f" ({len(self.items)} blocks missing, {self._usable_count(now)} usable peers)")
                return
            self.schedule()
            self.report()

    def _usable_count(self, now: float) -> int:
        return sum(p.usable(now) for p in self.peers.values())

    def progress(self) -> Progress:
        now = trio.current_time()
        return Progress(
            blocks_done=self.blocks_done,
            blocks_total=self.blocks_seen if self.nodes_pending == 0 else None,
            bytes_done=self.bytes_done,
            bytes_total=self.bytes_total,
            blocks_fetched=self.fetched,
            bytes_fetched=self.bytes_fetched,
            peers=self._usable_count(now),
            elapsed=now - self.started,
        )

    def report(self, force: bool = False) -> None:
        if self.progress_cb is None:
            return
        now = trio.current_time()
        if not force and now - self.last_report < self.progress_interval:
            return
        self.last_report = now
        try:
            self.progress_cb(self.progress())
        except Exception:  # a caller's bug must not break the fetch
            log.exception("fetch progress callback failed")

    def result(self) -> FetchResult:
        return FetchResult(
            root=self.root,
            blocks=self.blocks_done if self.items else self.blocks_seen,
            fetched=self.fetched,
            present=self.present,
            bytes_fetched=self.bytes_fetched,
            file_bytes=self.bytes_total,
            duplicates=self.duplicates,
            elapsed=trio.current_time() - self.started,
            peers={p.id.to_base58(): p.stats for p in self.peers.values()},
            bad_peers=dict(self.bad_peers),
        )

    def cleanup(self) -> None:
        """Withdraw every want and every interest (the fetch is over)."""
        by_peer: dict[ID, list[Cid]] = {}
        for it in self.items.values():
            for pid in it.peers:
                by_peer.setdefault(pid, []).append(it.cid)
            if it.state in ("missing", "inflight", "parked"):
                self.x._interest_remove(self, it.cid)
        for pid, cids in by_peer.items():
            self.x.cancel(pid, cids)


def _look_up(store: Any, wanted: list[tuple[Cid, int | None]]) -> list[tuple[bool, bytes | None, int]]:
    """For each (CID, expected size): (present, data if dag-pb, size). Worker thread.

    dag-pb blocks are read (their links are needed), which re-hashes them; a
    corrupt one is quarantined by the store and fetched again. Raw leaves are
    only checked for (the store writes atomically, so a present file is
    whole), unless their size is unknown.
    """
    out: list[tuple[bool, bytes | None, int]] = []
    for cid, size in wanted:
        if cid.codec == RAW and size is not None:
            out.append((store.has(cid), None, size))
            continue
        try:
            data = store.get(cid)
        except (BlockNotFound, CorruptBlock):
            out.append((False, None, 0))
            continue
        out.append((True, data if cid.codec == DAG_PB else None, len(data)))
    return out


async def _connect_and_add(session: Session, info: PeerInfo, confirmed: bool, timeout: float) -> None:
    """Dial ``info`` (with a timeout) and add it to the session; never raises."""
    host = session.x.host
    try:
        if info.peer_id == host.get_id():
            return
        if not host.get_network().get_connections(info.peer_id):
            with trio.move_on_after(timeout):
                try:
                    await host.connect(info)
                except Exception as exc:  # libp2p raises many types on dial failure
                    log.info("dial failed", extra={"peer": info.peer_id.to_base58(), "error": str(exc)[:200]})
            if not host.get_network().get_connections(info.peer_id):
                return
        session.add_peer(info.peer_id, confirmed)
    finally:
        session.connecting -= 1
        if session.connecting == 0:
            session.schedule()


async def _discover(session: Session, interval: float, dial_timeout: float) -> None:
    """Find peers for a fetch that was given none: connected peers are asked
    whether they have the root, and the DHT is searched for providers, again
    whenever the session runs out of usable peers."""
    from .providers import find_providers
    x = session.x
    for peer in x.host.get_connected_peers():
        session.add_peer(peer, confirmed=False)
    while True:
        if x.dht is not None:
            try:
                with trio.move_on_after(30):
                    infos = await find_providers(x.dht, session.root, session.max_providers)
            except Exception as exc:
                log.info("provider lookup failed", extra={"root": str(session.root), "error": str(exc)[:200]})
                infos = []
            async with trio.open_nursery() as n:
                for info in infos:
                    if info.peer_id not in session.peers or session.peers[info.peer_id].state == "lost":
                        session.connecting += 1
                        n.start_soon(_connect_and_add, session, info, True, dial_timeout)
        for peer in x.host.get_connected_peers():
            session.add_peer(peer, confirmed=False)
        session.need_peers = trio.Event()
        with trio.move_on_after(interval):
            await session.need_peers.wait()
        await trio.sleep(1.0)  # at most one lookup a second however often peers run out


async def fetch_dag(exchange: "Exchange", root: Cid, peers: Iterable[ID | PeerInfo] | None = None, *,
                    progress: ProgressCallback | None = None, window: int = 64, lookahead: int = 2048,
                    peer_timeout: float = 10.0, stall_timeout: float = 60.0, progress_interval: float = 0.2,
                    max_providers: int = 20, discover_interval: float = 30.0, dial_timeout: float = 5.0,
                    pin: bool = False) -> FetchResult:
    """Fetch the DAG under ``root`` into ``exchange``'s blockstore.

    ``peers``: peer IDs (connected, or known to the peerstore) or PeerInfos
    to dial, assumed to have the DAG. None: peers are found through the DHT
    (``exchange.dht``) and among the connected peers, which are asked for the
    root first. ``window``: blocks in flight at once over all peers.
    ``progress(Progress)`` is called at most every ``progress_interval``
    seconds and once at the end. ``pin``: pin the root once complete.

    Returns a :class:`FetchResult`; raises :class:`FetchError` when the DAG
    cannot be completed (no peer has a block, nothing arrives for
    ``stall_timeout`` seconds, a node is malformed, the store fails).
    """
    if window < 1:
        raise ValueError("window must be at least 1")
    session = Session(exchange, root, window=window, lookahead=lookahead, peer_timeout=peer_timeout,
                      stall_timeout=stall_timeout, progress=progress, progress_interval=progress_interval,
                      max_providers=max_providers)
    exchange._register(session)
    session.items[session.root] = it = _Item(session.root, 0)
    if it.is_node:
        session.nodes_pending += 1
    session.to_check.append(it)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(session.check_local)
            nursery.start_soon(session.tick)
            if peers is None:
                session.discovering = True
                nursery.start_soon(_discover, session, discover_interval, dial_timeout)
            else:
                for peer in peers:
                    if isinstance(peer, PeerInfo):
                        session.connecting += 1
                        nursery.start_soon(_connect_and_add, session, peer, True, dial_timeout)
                    else:
                        session.add_peer(peer, confirmed=True)
            await session.done.wait()
            nursery.cancel_scope.cancel()
    finally:
        session.cleanup()
        exchange._unregister(session)
    session.report(force=True)
    result = session.result()
    if session.error is not None:
        raise FetchError(session.error, result)
    if pin:
        await exchange.run_in_thread(exchange.store.pin, session.root)
    return result
