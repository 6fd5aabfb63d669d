"""A DOS peer's durable memory of market requests: what it has seen, who each
request was assigned to, and which requests ended.

Why it exists: a DOS peer that restarts forgets its in-memory view, yet a
request envelope stays acceptable for ``gossip.max_age`` (120 s), and a peer
may hand it over again (py-libp2p flushes queued messages to a reconnecting
peer; an attacker can simply replay it). Without this ledger the restarted
peer coordinated a finished request afresh, and its assignment led to a second
attested enclave for that request. With it, a restart restores every live
request as it was, and a request that ended stays ended.

The file is JSON lines, appended with one ``write(2)`` per record (O_APPEND),
so a SIGKILL loses nothing and leaves at most a torn last line, which loading
skips. ``sync()`` makes the appended records durable against power loss; the
coordinator calls it for the records that must not be lost (a request ended).
Loading rewrites the file with the live records only (atomic replace).
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

from ..fsutil import atomic_write
from ..p2p.envelope import now_ms
from . import messages as m

log = logging.getLogger("ofnode.market")

MAX_KEEP_MS = 24 * 3600 * 1000  # a consumer-chosen deadline cannot keep a record longer than this


@dataclass
class LedgerEntry:
    request_id: str
    request: m.ExecutionRequest | None = None  # None: only its end is known (a tombstone)
    consumer: str = ""
    received_ms: int = 0
    late: bool = False  # first seen after its bidding window: followed, never assigned by this peer
    assignment: m.Assignment | None = None
    assigner_rank: int = 1 << 30
    ended_by: str | None = None  # the peer whose message ended it ("" when a DOS peer failed it)
    ended_ms: int = 0
    keep_until_ms: int = 0

    @property
    def ended(self) -> bool:
        return self.ended_by is not None


class RequestLedger:
    """Request records of one DOS peer, in ``path`` (created 0600).

    ``replay_window_ms``: how long an envelope stays acceptable (``gossip.max_age``
    plus the allowed clock skew); an ended request is remembered at least that
    long after its end, so no replay of its request can outlive the record.
    """

    def __init__(self, path: str | os.PathLike[str], *, replay_window_ms: int = 130_000) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.replay_window_ms = replay_window_ms
        self._entries: dict[str, LedgerEntry] = {}
        self._lines = 0
        self._load()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    # -- reading -----------------------------------------------------------
    def get(self, request_id: str) -> LedgerEntry | None:
        return self._entries.get(request_id)

    def entries(self) -> Iterator[LedgerEntry]:
        return iter(list(self._entries.values()))

    def __len__(self) -> int:
        return len(self._entries)

    # -- recording ---------------------------------------------------------
    def record_request(self, req: m.ExecutionRequest, consumer: str, received_ms: int, *, late: bool) -> LedgerEntry:
        e = self._entries.get(req.id) or LedgerEntry(req.id)
        e.request, e.consumer, e.received_ms, e.late = req, consumer, received_ms, late
        e.keep_until_ms = max(e.keep_until_ms, self._keep(req, received_ms))
        self._entries[req.id] = e
        self._append({"op": "request", "request": asdict(req), "consumer": consumer, "received_ms": received_ms,
                      "late": late})
        return e

    def record_assignment(self, a: m.Assignment, rank: int) -> None:
        e = self._entries.get(a.request_id)
        if e is None:
            return
        e.assignment, e.assigner_rank = a, rank
        self._append({"op": "assigned", "assignment": asdict(a), "rank": rank})

    def record_end(self, request_id: str, by: str, *, at_ms: int | None = None) -> LedgerEntry:
        """The request ended (its consumer said done, or a DOS peer failed it); call ``sync()`` after."""
        e = self._entries.get(request_id) or LedgerEntry(request_id)
        at = now_ms() if at_ms is None else at_ms
        e.ended_by, e.ended_ms = by, at
        e.keep_until_ms = max(e.keep_until_ms, at + self.replay_window_ms)
        self._entries[request_id] = e
        self._append({"op": "ended", "id": request_id, "by": by, "at_ms": at})
        return e

    def sync(self) -> None:
        os.fdatasync(self._fd)

    def prune(self, now: int | None = None) -> int:
        """Forget records past their keep time; compacts the file when mostly dead. Returns how many."""
        now = now_ms() if now is None else now
        dead = [k for k, e in self._entries.items() if e.keep_until_ms <= now]
        for k in dead:
            del self._entries[k]
        if self._lines > 2 * len(self._entries) + 256:
            self._compact()
        return len(dead)

    def close(self) -> None:
        os.close(self._fd)

    # -- internals -----------------------------------------------------------
    def _keep(self, req: m.ExecutionRequest, received_ms: int) -> int:
        # After its deadline the request is refused anyway; the replay window
        # covers a record for a request whose deadline was already near.
        return min(max(req.deadline_ms, received_ms) + self.replay_window_ms, received_ms + MAX_KEEP_MS)

    def _append(self, rec: dict[str, Any]) -> None:
        os.write(self._fd, json.dumps(rec, separators=(",", ":"), sort_keys=True).encode() + b"\n")
        self._lines += 1

    def _load(self) -> None:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return
        bad = 0
        for line in raw.splitlines():
            try:
                self._apply(json.loads(line))
            except (ValueError, KeyError, TypeError, m.MessageError):
                bad += 1  # a torn last line after a kill, or damage: the rest still counts
        if bad:
            log.warning("request ledger: skipped unreadable lines", extra={"path": str(self.path), "lines": bad})
        self.prune()
        self._compact()

    def _apply(self, rec: dict[str, Any]) -> None:
        op = rec["op"]
        if op == "request":
            req = m.ExecutionRequest.parse(rec["request"])
            received = int(rec["received_ms"])
            e = self._entries.setdefault(req.id, LedgerEntry(req.id))
            e.request, e.consumer, e.received_ms, e.late = req, str(rec["consumer"]), received, bool(rec["late"])
            e.keep_until_ms = max(e.keep_until_ms, self._keep(req, received))
        elif op == "assigned":
            a = m.Assignment.parse(rec["assignment"])
            e = self._entries.get(a.request_id)
            if e is not None:
                e.assignment, e.assigner_rank = a, int(rec["rank"])
        elif op == "ended":
            rid = rec["id"]
            if not isinstance(rid, str) or len(rid) != 32:
                raise ValueError("ended: bad id")
            e = self._entries.setdefault(rid, LedgerEntry(rid))
            e.ended_by, e.ended_ms = str(rec["by"]), int(rec["at_ms"])
            e.keep_until_ms = max(e.keep_until_ms, e.ended_ms + self.replay_window_ms)
        else:
            raise ValueError(f"unknown op {op!r}")

    def _compact(self) -> None:
        lines = []
        for e in self._entries.values():
            if e.request is not None:
                lines.append({"op": "request", "request": asdict(e.request), "consumer": e.consumer,
                              "received_ms": e.received_ms, "late": e.late})
            if e.assignment is not None:
                lines.append({"op": "assigned", "assignment": asdict(e.assignment), "rank": e.assigner_rank})
            if e.ended_by is not None:
                lines.append({"op": "ended", "id": e.request_id, "by": e.ended_by, "at_ms": e.ended_ms})
        data = b"".join(json.dumps(r, separators=(",", ":"), sort_keys=True).encode() + b"\n" for r in lines)
        fd = getattr(self, "_fd", None)
        atomic_write(self.path, data, mode=0o600)
        self._lines = len(lines)
        if fd is not None:  # the old inode is gone: append to the new file from now on
            os.close(fd)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
