"""Where the runtime gets the AI's decryption key.

``KeyProvider.get_key(ctx) -> bytearray`` (32 bytes); the runtime zeroes the
bytearray as soon as the package is decrypted.  Two implementations are
planned:

* :class:`HostTestHookKeyProvider` (now): **TEST HOOK** - the untrusted host
  sends the key in clear over the control channel.  It exists only until the
  Secret Store flow lands and must never be enabled on a real network.
* ``SecretStoreKeyProvider`` (later, secure-flow steps 10-11): the enclave
  sends the ACL entry and a signature by its enclave key to the ``secrets``
  peers through a relay stream, receives t Shamir shares sealed (HPKE) to its
  key, and combines them.  ``KeyContext`` already carries what that needs.
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
