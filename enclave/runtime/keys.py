"""Where the runtime gets the AI's decryption key.

``KeyProvider.get_key(ctx) -> bytearray`` (32 bytes); the runtime zeroes the
bytearray as soon as the package is decrypted.  Two implementations are
planned:

* :class:`HostTestHookKeyProvider` (now): **TEST HOOK** - the untrusted host
  sends the key in clear over the control channel.  It exists only until the
  Secret Store flow lands and must never be enabled on a real network.
* :class:`SecretStoreKeyProvider` (secure-flow steps 10-11): the enclave
  asks the host for its quorum ACL entry, signs a share request with its
  enclave key (binding a fresh HPKE key), has the host relay it to the
  ``secrets`` peers, opens the t shares sealed to it and rebuilds the key.
  The host only ever carries signed requests and sealed shares.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import ec

from enclave.runtime.channel import Channel

KEY_SIZE = 32


class KeyUnavailable(RuntimeError):
    """No usable key was obtained."""


@dataclass(frozen=True)
class KeyContext:
    request_id: str
    ai_cid: str
    enclave_key: ec.EllipticCurvePrivateKey  # to sign key requests / open sealed shares
    cert_der: bytes


class KeyProvider(abc.ABC):
    @abc.abstractmethod
    def get_key(self, ctx: KeyContext) -> bytearray:
        """The 32-byte AI key; raise KeyUnavailable with a reason when there is none."""


class HostTestHookKeyProvider(KeyProvider):
    """TEST HOOK: ask the host for the key (``key_request`` -> ``ai_key``). Not secure."""

    def __init__(self, chan: Channel, timeout: float) -> None:
        self.chan, self.timeout = chan, timeout

    def get_key(self, ctx: KeyContext) -> bytearray:
        kind, reply = self.chan.request({"op": "key_request", "ai_cid": ctx.ai_cid}, self.timeout)
        try:
            if kind != "ctrl" or reply["op"] != "ai_key":
                raise ValueError
            key = bytearray.fromhex(reply["key"])
        except (KeyError, TypeError, ValueError):
            raise KeyUnavailable("host test hook: reply is not {op: ai_key, key: hex}") from None
        if len(key) != KEY_SIZE:
            raise KeyUnavailable(f"host test hook: key is {len(key)} bytes, not {KEY_SIZE}")
        return key


class SecretStoreKeyProvider(KeyProvider):
    """The AI key from t of the secrets peers' Shamir shares, relayed by the host."""

    def __init__(self, chan: Channel, timeout: float, secrets_peers: list[str]) -> None:
        self.chan, self.timeout, self.secrets_peers = chan, timeout, secrets_peers

    def get_key(self, ctx: KeyContext) -> bytearray:
        from enclave import secret_client as sc

        kind, acl = self.chan.request({"op": "acl_request"}, self.timeout)
        if kind != "ctrl" or acl.get("op") != "acl" or not isinstance(acl.get("entry"), dict):
            raise KeyUnavailable(f"no ACL entry from the host: {acl.get('error', acl.get('op'))}")
        entry = acl["entry"]
        if entry.get("request_id") != ctx.request_id or entry.get("ai_cid") != ctx.ai_cid:
            raise KeyUnavailable("the host's ACL entry is for another request or AI")
        hpke = sc.new_hpke_key()
        request = sc.build_share_request(entry, acl.get("signatures") or [], ctx.enclave_key, hpke)
        kind, reply = self.chan.request({"op": "shares_request", "request": request}, self.timeout)
        if kind != "ctrl" or reply.get("op") != "shares" or not isinstance(reply.get("answers"), list):
            raise KeyUnavailable(f"no key shares: {reply.get('error', reply.get('op'))}")
        opened, problems = [], []
        for answer in reply["answers"][:64]:
            try:
                opened.append(sc.open_share(answer, hpke, entry, trusted_peers=self.secrets_peers or None))
            except (sc.ShareError, TypeError, ValueError, KeyError) as exc:
                problems.append(str(exc)[:120])
        try:
            return sc.rebuild_key(opened)
        except sc.ShareError as exc:
            raise KeyUnavailable(f"{exc}" + (f" (unusable: {'; '.join(problems)})" if problems else "")) from None
