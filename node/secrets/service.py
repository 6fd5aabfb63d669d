"""The Secret Store on the wire: ``/ofnode/secrets/share/1.0.0`` and ``/ofnode/secrets/deposit/1.0.0``.

Both are one request / one answer per stream, length-prefixed JSON
(:mod:`node.dos.wire`), strictly validated, size-limited; bad input gets a
refusal, never a crash.

``share``: an enclave (through its provider's relay; for now any peer) sends a
share request, see :mod:`node.secrets.release`; the answer is the sealed share
or ``{"ok": false, "code", "error"}``.

``deposit``: the publisher gives each secrets peer its share::

    {"op": "deposit", "ai_cid": CID, "version": int >= 1, "index": int,
     "threshold": int, "n": int, "share": hex (32 bytes), "key_check": hex (32 bytes)}
    {"op": "revoke", "ai_cid": CID}

The share travels in the clear *inside* the libp2p stream: that stream is
Noise-encrypted and authenticated to the peer ids at both ends (the publisher
dialled the genesis' secrets peer id; Noise proves the remote holds its key),
so no second layer of encryption is added. The depositor's authenticated peer
id becomes the AI's owner (first deposit); only the owner may rotate (higher
``version``) or revoke. ``index`` must be this peer's 1-based position in the
genesis' ``secrets.peers``, ``threshold`` and ``n`` the genesis values.

Client helpers for the other ends: :func:`deposit_key` (publisher),
:func:`revoke_ai` (publisher), :func:`request_shares` and :func:`fetch_key`
(the enclave's relay; ``fetch_key`` opens and combines with
:mod:`enclave.secret_client`).
"""
from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from typing import Any, Callable

import trio
from cryptography.hazmat.primitives.asymmetric import x25519

from enclave.cid import Cid, CidError

from ..dos import wire
from ..dos.service import ihost
from ..genesis import Genesis
from ..identity import Identity
from enclave import secret_client as enclave_side
from .audit import AuditLog
from .release import Releaser
from .shamir import key_check, split_key
from .share_store import ShareStore, ShareStoreError

log = logging.getLogger("ofnode.secrets")

__all__ = ["SHARE_PROTOCOL", "DEPOSIT_PROTOCOL", "SecretsService", "deposit_key", "revoke_ai", "request_shares",
           "fetch_key", "SharesUnavailable"]

SHARE_PROTOCOL = "/ofnode/secrets/share/1.0.0"
DEPOSIT_PROTOCOL = "/ofnode/secrets/deposit/1.0.0"
MAX_REQUEST = 32 * 1024
MAX_RESPONSE = 16 * 1024
_HEX32 = re.compile(r"[0-9a-f]{64}")


def _refuse(code: str, error: str) -> dict[str, Any]:
    return {"ok": False, "code": code, "error": error[:500]}


def _cid(d: dict[str, Any]) -> str:
    v = wire.get_str(d, "ai_cid", max_len=256)
    try:
        if Cid.decode(v).encode() != v:
            raise wire.WireError("ai_cid: not in canonical form")
    except CidError as e:
        raise wire.WireError(f"ai_cid: {e}") from None
    return v


class SecretsService:
    """A secrets peer: answers share requests and takes deposits. ``register(host)`` or ``run(host)``."""

    def __init__(self, identity: Identity, genesis: Genesis, store: ShareStore, audit: AuditLog, *,
                 clock: Callable[[], float] = time.time, timeout: float = 10.0, max_concurrent: int = 8,
                 metrics: Any = None) -> None:
        self.identity, self.genesis, self.store, self.audit, self.clock = identity, genesis, store, audit, clock
        self.metrics = metrics
        if metrics is not None:
            metrics.declare("ofnode_secrets_requests_total", "counter",
                            "Share requests and deposits this secrets peer answered, by kind (share, deposit) "
                            "and result (ok, or the refusal code).")
        self.releaser = Releaser(identity, genesis, store, audit, clock=clock)
        self.timeout = timeout
        self._limiter = trio.CapacityLimiter(max_concurrent)

    @classmethod
    def open(cls, identity: Identity, genesis: Genesis, data_dir: Any, **kw: Any) -> "SecretsService":
        """Store and audit log under ``<data_dir>/secrets`` (what the daemon uses)."""
        from pathlib import Path

        d = Path(data_dir) / "secrets"
        store = ShareStore(d)
        return cls(identity, genesis, store, AuditLog(d / "audit.log"), **kw)

    def register(self, host: Any) -> None:
        h = ihost(host)
        h.set_stream_handler(SHARE_PROTOCOL, self._share_stream)
        h.set_stream_handler(DEPOSIT_PROTOCOL, self._deposit_stream)
        wire.register_local(h, SHARE_PROTOCOL, self.handle_share)
        wire.register_local(h, DEPOSIT_PROTOCOL, self.handle_deposit)

    async def run(self, host: Any) -> None:
        self.register(host)
        await trio.sleep_forever()

    # -- streams -------------------------------------------------------------------
    async def _serve(self, stream: Any, handler: Callable[[str, dict[str, Any]], Any]) -> None:
        async def malformed(peer: str, reason: str) -> dict[str, Any]:
            answer = _refuse("malformed", reason)
            await trio.to_thread.run_sync(
                lambda: self.audit.append("refuse", code="malformed", reason=answer["error"], peer=peer))
            return answer

        await wire.serve_stream(stream, handler, malformed, timeout=self.timeout, max_request=MAX_REQUEST,
                                max_response=MAX_RESPONSE, what="secrets")

    async def _share_stream(self, stream: Any) -> None:
        await self._serve(stream, self.handle_share)

    async def _deposit_stream(self, stream: Any) -> None:
        await self._serve(stream, self.handle_deposit)

    # -- handlers (callable without a network) ------------------------------------------
    async def handle_share(self, peer: str, msg: dict[str, Any]) -> dict[str, Any]:
        return self._count("share", await trio.to_thread.run_sync(self.releaser.decide, peer, msg,
                                                                  limiter=self._limiter))

    async def handle_deposit(self, peer: str, msg: dict[str, Any]) -> dict[str, Any]:
        return self._count("deposit", await trio.to_thread.run_sync(self.deposit_decision, peer, msg,
                                                                    limiter=self._limiter))

    def _count(self, kind: str, answer: dict[str, Any]) -> dict[str, Any]:
        if self.metrics is not None:
            result = "ok" if answer.get("ok") else str(answer.get("code", "refused"))[:32]
            self.metrics.inc("ofnode_secrets_requests_total", kind=kind, result=result)
        return answer

    def deposit_decision(self, peer: str, msg: Any) -> dict[str, Any]:
        try:
            answer, fields = self._deposit(peer, msg)
        except Exception as e:
            answer, fields = _refuse("internal", f"internal error: {type(e).__name__}"), {}
        event = ("deposit" if msg.get("op") == "deposit" else "revoke") if isinstance(msg, dict) else "deposit"
        if answer.get("ok"):
            self.audit.append(event, peer=peer, reason="ok", **fields)
        else:
            self.audit.append(f"{event}_refused", peer=peer, code=answer["code"], reason=answer["error"], **fields)
        return answer

    def _deposit(self, peer: str, msg: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        fields: dict[str, Any] = {}
        try:
            if not isinstance(msg, dict):
                raise wire.WireError("not an object")
            op = wire.get_str(msg, "op", max_len=16)
            if op == "revoke":
                wire.only_keys(msg, {"op", "ai_cid"}, where="revoke")
                ai_cid = _cid(msg)
                fields["ai_cid"] = ai_cid
                try:
                    changed = self.store.revoke(ai_cid, by=peer, now=self.clock())
                except ShareStoreError as e:
                    return _refuse("refused", str(e)), fields
                return {"ok": True, "revoked": True, "changed": changed}, fields
            if op != "deposit":
                raise wire.WireError("op: must be deposit or revoke")
            wire.only_keys(msg, {"op", "ai_cid", "version", "index", "threshold", "n", "share", "key_check"},
                           where="deposit")
            ai_cid = _cid(msg)
            fields["ai_cid"] = ai_cid
            version = wire.get_int(msg, "version", 1, 2**31 - 1)
            index = wire.get_int(msg, "index", 1, 255)
            threshold = wire.get_int(msg, "threshold", 1, 255)
            n = wire.get_int(msg, "n", 1, 255)
            share = bytearray(wire.get_hex(msg, "share", size=32))
            check = wire.get_str(msg, "key_check", max_len=64, pattern=_HEX32)
        except wire.WireError as e:
            return _refuse("malformed", f"malformed deposit: {e}"), fields
        fields.update(version=version, index=index)
        try:
            peers = self.genesis.secrets_peers
            me = self.identity.peer_id
            if me not in peers:
                return _refuse("not_secrets_peer", "this node is not a secrets peer of the network"), fields
            if index != peers.index(me) + 1:
                return _refuse("index", f"this peer holds share {peers.index(me) + 1}, not {index}"), fields
            if (threshold, n) != (self.genesis.secrets_threshold, len(peers)):
                return _refuse("threshold", f"the network shares keys {self.genesis.secrets_threshold}-of-{len(peers)}, "
                                            f"not {threshold}-of-{n}"), fields
            try:
                _, changed = self.store.deposit(ai_cid=ai_cid, version=version, index=index, threshold=threshold, n=n,
                                                share=share, key_check=check, owner=peer, now=self.clock())
            except ShareStoreError as e:
                return _refuse("refused", str(e)), fields
            return {"ok": True, "version": version, "index": index, "changed": changed}, fields
        finally:
            enclave_side.zero(share)


# -- clients ------------------------------------------------------------------------------
async def _each(peers: tuple[str, ...], fn: Callable[[str], Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}

    async def one(p: str) -> None:
        out[p] = await fn(p)

    async with trio.open_nursery() as n:
        for p in peers:
            n.start_soon(one, p)
    return out


async def deposit_key(host: Any, genesis: Genesis, ai_cid: str, key: bytes | bytearray, *, version: int = 1,
                      timeout: float = 10.0) -> dict[str, dict[str, Any]]:
    """Split ``key`` t-of-n and send share i to the i-th genesis secrets peer; {peer: answer}.

    The caller decides what is enough (all n acknowledged is best; at least t
    is required for the key to be usable).
    """
    h = ihost(host)
    peers = tuple(genesis.secrets_peers)
    shares = split_key(key, genesis.secrets_threshold, len(peers))
    check = key_check(key)

    async def send(peer: str) -> dict[str, Any]:
        s = shares[peers.index(peer)]
        msg = {"op": "deposit", "ai_cid": ai_cid, "version": version, "index": s.index,
               "threshold": genesis.secrets_threshold, "n": len(peers), "share": s.value.hex(), "key_check": check}
        try:
            return await wire.request(h, peer, DEPOSIT_PROTOCOL, msg, max_request=MAX_REQUEST,
                                      max_response=MAX_RESPONSE, timeout=timeout)
        except wire.WireError as e:
            return {"ok": False, "code": "unreachable", "error": str(e)}

    return await _each(peers, send)


async def revoke_ai(host: Any, genesis: Genesis, ai_cid: str, *, timeout: float = 10.0) -> dict[str, dict[str, Any]]:
    h = ihost(host)

    async def send(peer: str) -> dict[str, Any]:
        try:
            return await wire.request(h, peer, DEPOSIT_PROTOCOL, {"op": "revoke", "ai_cid": ai_cid},
                                      max_request=MAX_REQUEST, max_response=MAX_RESPONSE, timeout=timeout)
        except wire.WireError as e:
            return {"ok": False, "code": "unreachable", "error": str(e)}

    return await _each(tuple(genesis.secrets_peers), send)


class SharesUnavailable(wire.QuorumError):
    """Fewer than t secrets peers released a share; ``refusals`` maps peer -> reason."""


@dataclass(frozen=True)
class ShareAnswers:
    answers: dict[str, dict[str, Any]]  # peer -> ok answer
    refusals: dict[str, str]  # peer -> reason


async def request_shares(host: Any, genesis: Genesis, request: dict[str, Any], *, timeout: float = 10.0,
                         peers: tuple[str, ...] | None = None, want: int | None = None) -> ShareAnswers:
    """Send one share request to the secrets peers at once; return when ``want`` (default t) said yes or all answered."""
    h = ihost(host)
    peers = tuple(peers if peers is not None else genesis.secrets_peers)
    want = genesis.secrets_threshold if want is None else want
    answers: dict[str, dict[str, Any]] = {}
    refusals: dict[str, str] = {}

    async def ask(peer: str) -> None:
        try:
            ans = await wire.request(h, peer, SHARE_PROTOCOL, request, max_request=MAX_REQUEST,
                                     max_response=MAX_RESPONSE, timeout=timeout)
        except wire.WireError as e:
            refusals[peer] = str(e)
            return
        if ans.get("ok") is True:
            answers[peer] = ans
        else:
            refusals[peer] = f"{ans.get('code', 'refused')}: {str(ans.get('error', ''))[:400]}"

    # Stop waiting once ``want`` answered; the others finish in the background (see wire.fan_out).
    await wire.fan_out(peers, ask, enough=lambda: len(answers) >= want)
    answers, refusals = dict(answers), dict(refusals)
    return ShareAnswers(answers=answers, refusals=refusals)


async def fetch_key(host: Any, genesis: Genesis, request: dict[str, Any], hpke_key: x25519.X25519PrivateKey, *,
                    timeout: float = 10.0) -> bytearray:
    """Gather t shares for ``request`` (see enclave.secret_client.build_share_request) and rebuild the key.

    Raises SharesUnavailable naming every peer's reason when fewer than t are
    usable. (In production the enclave does the opening itself, with
    enclave_side; this helper runs the same code where the relay and the
    enclave are one process: tests and benchmarks.)
    """
    got = await request_shares(host, genesis, request, timeout=timeout)
    refusals = dict(got.refusals)
    opened = []
    for peer, ans in got.answers.items():
        try:
            opened.append(enclave_side.open_share(ans, hpke_key, request["acl_entry"],
                                                  trusted_peers=genesis.secrets_peers))
        except enclave_side.ShareError as e:
            refusals[peer] = f"unusable share: {e}"
    t = genesis.secrets_threshold
    if len(opened) < t:
        for s in opened:
            enclave_side.zero(s.value)
        detail = "; ".join(f"{p[-8:]}: {r}" for p, r in sorted(refusals.items()))
        raise SharesUnavailable(f"{t} of {len(genesis.secrets_peers)} key shares needed, got {len(opened)}"
                                + (f" ({detail})" if detail else ""), refusals)
    try:
        return enclave_side.rebuild_key(opened)
    except enclave_side.ShareError as e:
        raise SharesUnavailable(str(e), refusals) from None
