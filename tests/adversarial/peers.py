"""In-test libp2p peers that speak ofnode's real wire protocols with hostile
content: a flooder on the gossip topic, a Sybil swarm, a peer holding a
(minority) DOS peer's key, a peer sending malformed protocol messages.

Each is a real py-libp2p host (Noise, yamux) from ``node.p2p.host.P2PHost``,
run in the test process under ``trio.run``.
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio
from libp2p.peer.id import ID

from node.identity import Identity
from node.metrics import node_metrics
from node.p2p.envelope import seal
from node.p2p.host import P2PHost


@asynccontextmanager
async def peer(identity: Identity | None = None, connect: list[str] = (), *,
               dial_timeout: float = 10.0) -> AsyncIterator[P2PHost]:
    """A running host with a fresh (or given) identity, connected to ``connect`` (multiaddrs with /p2p/)."""
    p2p = P2PHost(identity=identity or Identity.generate(), listen=["/ip4/127.0.0.1/tcp/0"], bootstrap=[],
                  metrics=node_metrics(), dial_timeout=dial_timeout)
    try:
        async with p2p.running():
            for addr in connect:
                assert await p2p.connect_addr(addr), f"could not connect to {addr}"
            yield p2p
    except* RuntimeError as group:
        # py-libp2p's shutdown can race its own service nurseries ("Nursery is closed to new
        # arrivals") while a peer still writes to us: a teardown artefact of the test peer, not an outcome.
        rest = group.subgroup(lambda e: not isinstance(e, BaseExceptionGroup) and "Nursery is closed" not in str(e))
        if rest is not None:
            raise rest from None


MESHSUB = "/meshsub/1.1.0"


def _pubsub_message(p2p: P2PHost, topic: str, data: bytes, seqno: int):
    """A GossipSub message from ``p2p``, signed as libp2p's strict signing wants (origin = the flooder)."""
    from libp2p.pubsub.pb import rpc_pb2
    from libp2p.pubsub.pubsub import PUBSUB_SIGNING_PREFIX

    msg = rpc_pb2.Message(data=data, topicIDs=[topic], from_id=p2p.host.get_id().to_bytes(),
                          seqno=seqno.to_bytes(8, "big"))
    msg.signature = p2p.host.get_private_key().sign(PUBSUB_SIGNING_PREFIX.encode() + msg.SerializeToString())
    msg.key = p2p.host.get_public_key().serialize()
    return msg


async def flood(p2p: P2PHost, peer_id: str, network_id: str, *, valid: int, garbage: int, wrong_network: int,
                forged: int, per_rpc: int = 400) -> dict[str, Any]:
    """Flood ``peer_id`` on the gossip topic over a raw GossipSub stream: RPC frames of ``per_rpc``
    messages each, as fast as the connection takes them (a hostile peer does not pace itself)."""
    ident = p2p.identity
    other = Identity.generate()
    payloads: list[bytes] = []
    for i in range(max(valid, garbage, wrong_network, forged)):  # mixed, so every kind arrives at full speed
        if i < valid:
            payloads.append(seal(ident, network_id, "node.note", f"flood {i}".encode()))
        if i < garbage:
            payloads.append(os.urandom(200))
        if i < wrong_network:
            payloads.append(seal(ident, "other-network", "node.note", f"x {i}".encode()))
        if i < forged:  # names a sender whose key did not sign it
            raw = bytearray(seal(other, network_id, "node.note", f"forged {i}".encode()))
            raw[-1] ^= 1
            payloads.append(bytes(raw))
    return await send_raw(p2p, peer_id, network_id, payloads, per_rpc=per_rpc)


async def send_raw(p2p: P2PHost, peer_id: str, network_id: str, payloads: list[bytes], *, per_rpc: int = 400,
                   first_seqno: int = 1) -> dict[str, Any]:
    """Hand ``payloads`` (envelopes, or anything) to ``peer_id`` on the gossip topic over a raw GossipSub
    stream, as messages of this peer, in RPC frames of ``per_rpc`` messages, as fast as the connection takes them."""
    from libp2p.pubsub.pb import rpc_pb2
    from libp2p.utils.varint import encode_uvarint

    topic = f"/ofnode/{network_id}/gossip/1"
    msgs = [_pubsub_message(p2p, topic, d, first_seqno + i) for i, d in enumerate(payloads)]
    stream = await p2p.host.new_stream(ID.from_base58(peer_id), [MESHSUB])
    t0 = time.monotonic()
    hello = rpc_pb2.RPC(subscriptions=[rpc_pb2.RPC.SubOpts(subscribe=True, topicid=topic)])
    frames = [hello] + [rpc_pb2.RPC(publish=msgs[i:i + per_rpc]) for i in range(0, len(msgs), per_rpc)]
    cut_off = False
    for rpc in frames:
        body = rpc.SerializeToString()
        try:
            await stream.write(encode_uvarint(len(body)) + body)
        except Exception:  # noqa: BLE001 - the target cut us off (a banned flooder): that is its answer
            cut_off = True
            break
    seconds = time.monotonic() - t0
    with trio.move_on_after(1):
        try:
            await stream.close()
        except Exception:  # noqa: BLE001, S110 - already reset
            pass
    return {"sent": len(msgs), "seconds": seconds, "rpc_frames": len(frames) - 1, "cut_off": cut_off}


@asynccontextmanager
async def listener(p2p: P2PHost, network_id: str) -> AsyncIterator[list[bytes]]:
    """Subscribe to the network's gossip topic as an ordinary peer (start it before connecting);
    yields a list that fills with the raw envelopes received, as an eavesdropper would keep them."""
    from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11, PROTOCOL_ID_V12, GossipSub
    from libp2p.pubsub.pubsub import Pubsub
    from libp2p.tools.anyio_service import background_trio_service

    router = GossipSub(protocols=[PROTOCOL_ID_V12, PROTOCOL_ID_V11], degree=4, degree_low=3, degree_high=8,
                       heartbeat_interval=1, spam_protection_enabled=False)
    pubsub = Pubsub(p2p.host, router)
    got: list[bytes] = []
    async with background_trio_service(pubsub), background_trio_service(router):
        await pubsub.wait_until_ready()
        sub = await pubsub.subscribe(f"/ofnode/{network_id}/gossip/1")

        async def keep() -> None:
            while True:
                got.append(bytes((await sub.get()).data))

        async with trio.open_nursery() as n:
            n.start_soon(keep)
            yield got
            n.cancel_scope.cancel()


async def raw_exchange(p2p: P2PHost, peer_id: str, protocol: str, payload: bytes, *, read: int = 65536,
                       timeout: float = 5.0) -> bytes:
    """Open a stream, write ``payload`` as is, read what comes back until EOF, the limit or the timeout."""
    stream = await p2p.host.new_stream(ID.from_base58(peer_id), [protocol])
    out = b""
    try:
        await stream.write(payload)
        with trio.move_on_after(timeout):
            while len(out) < read:
                chunk = await stream.read(read - len(out))
                if not chunk:
                    break
                out += chunk
    except Exception:  # noqa: BLE001, S110 - the far end may reset the stream: that is a refusal too
        pass
    finally:
        with trio.move_on_after(1):
            try:
                await stream.close()
            except Exception:  # noqa: BLE001, S110 - already reset
                pass
    return out


def frame(obj: Any) -> bytes:
    data = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    return len(data).to_bytes(4, "big") + data


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        if head.split("{")[0] != name:
            continue
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total
