"""Targeted fixes to py-libp2p 0.8.1 (pinned), applied once at import.

Each patch replaces one module-level name with a wrapper that keeps the
original's behaviour; each is measured and explained here, and is dropped when
libp2p fixes the cause upstream.

1. Signed peer records on every pubsub RPC. py-libp2p attaches the sender's
   signed peer record to *every* GossipSub RPC and re-verifies it (ed25519 via
   PyNaCl, plus peerstore updates) on every RPC received: ~16 % of a node's CPU
   under gossip load (py-spy, 10-node testnet at 5 msg/s). A record is
   immutable bytes: once a given peer's exact record bytes verified, the same
   bytes from the same peer need not be verified again. A different record
   (new addresses, new sequence number) goes through the original path.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any

import libp2p.pubsub.gossipsub as _gossipsub
import libp2p.pubsub.pubsub as _pubsub
from libp2p.pubsub.utils import maybe_consume_signed_record as _original

_MAX_REMEMBERED = 4096
_verified: OrderedDict[tuple[bytes, bytes], None] = OrderedDict()


def _cached_consume_signed_record(msg: Any, host: Any, peer_id: Any) -> bool:
    if not msg.HasField("senderRecord"):
        return True
    key = (peer_id.to_bytes(), msg.senderRecord)
    if key in _verified:
        _verified.move_to_end(key)
        return True
    ok = _original(msg, host, peer_id)
    if ok:
        _verified[key] = None
        if len(_verified) > _MAX_REMEMBERED:
            _verified.popitem(last=False)
    return ok


def apply() -> None:
    _pubsub.maybe_consume_signed_record = _cached_consume_signed_record
    _gossipsub.maybe_consume_signed_record = _cached_consume_signed_record


apply()
