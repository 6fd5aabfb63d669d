"""The node's persistent ed25519 identity and its libp2p peer id.

The key lives in ``<data_dir>/identity.key`` as a libp2p protobuf PrivateKey
(KeyType Ed25519, 64-byte seed||public key, as go/js/rust libp2p store it),
mode 0600. A corrupt or over-permissive file is an error that names the file:
silently making a new key would change the peer id and orphan every role the
genesis gives this node.

Peer ids are computed here without importing libp2p (slow to import) so the
CLI and testnet tooling stay fast.
"""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

import base58
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PrivateFormat, PublicFormat, NoEncryption

from .fsutil import atomic_write

KEY_FILE = "identity.key"
_KEYTYPE_ED25519 = 1
# Protobuf framing of libp2p's {KeyType Type = 1; bytes Data = 2} for ed25519.
_PRIV_PREFIX = bytes([0x08, _KEYTYPE_ED25519, 0x12, 64])
_PUB_PREFIX = bytes([0x08, _KEYTYPE_ED25519, 0x12, 32])


class IdentityError(Exception):
    """The identity key file is missing, unreadable, corrupt or too open."""


@dataclass(frozen=True)
class Identity:
    private_key: Ed25519PrivateKey

    @property
    def seed(self) -> bytes:
        return self.private_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())

    @property
    def public_bytes(self) -> bytes:
        return self.private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    @property
    def peer_id_bytes(self) -> bytes:
        return peer_id_bytes_from_public(self.public_bytes)

    @property
    def peer_id(self) -> str:
        return base58.b58encode(self.peer_id_bytes).decode()

    def sign(self, data: bytes) -> bytes:
        return self.private_key.sign(data)

    def to_file_bytes(self) -> bytes:
        return _PRIV_PREFIX + self.seed + self.public_bytes

    @classmethod
    def generate(cls) -> "Identity":
        return cls(Ed25519PrivateKey.generate())


def peer_id_bytes_from_public(public: bytes) -> bytes:
    """Identity multihash (code 0x00) of the protobuf-encoded public key."""
    encoded = _PUB_PREFIX + public
    return bytes([0x00, len(encoded)]) + encoded


def public_key_from_peer_id(peer_id: bytes | str) -> Ed25519PublicKey:
    """Recover the ed25519 key inlined in an ed25519 peer id; ValueError otherwise."""
    raw = base58.b58decode(peer_id) if isinstance(peer_id, str) else peer_id
    if len(raw) != 2 + len(_PUB_PREFIX) + 32 or raw[:2] != bytes([0x00, 36]) or raw[2:6] != _PUB_PREFIX:
        raise ValueError("not an ed25519 identity peer id")
    return Ed25519PublicKey.from_public_bytes(raw[6:])


def verify_by_peer_id(peer_id: bytes | str, signature: bytes, data: bytes) -> bool:
    try:
        public_key_from_peer_id(peer_id).verify(signature, data)
        return True
    except (InvalidSignature, ValueError):
        return False


def peer_id_to_str(raw: bytes) -> str:
    return base58.b58encode(raw).decode()


def load_identity(data_dir: str | os.PathLike[str]) -> Identity:
    path = Path(data_dir) / KEY_FILE
    try:
        st = path.stat()
    except FileNotFoundError:
        raise IdentityError(f"{path}: no identity key (run `ofnode init` or `ofnode start` to create one)") from None
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise IdentityError(
            f"{path}: permissions {oct(stat.S_IMODE(st.st_mode))} are too open; the key must be 0600 (chmod 600 {path})"
        )
    raw = path.read_bytes()
    if len(raw) != len(_PRIV_PREFIX) + 64 or raw[: len(_PRIV_PREFIX)] != _PRIV_PREFIX:
        raise IdentityError(
            f"{path}: corrupt identity key ({len(raw)} bytes, not a libp2p ed25519 private key); "
            "restore it from a backup: replacing it would change this node's peer id"
        )
    seed, public = raw[4:36], raw[36:68]
    key = Ed25519PrivateKey.from_private_bytes(seed)
    ident = Identity(key)
    if ident.public_bytes != public:
        raise IdentityError(f"{path}: corrupt identity key (public half does not match the seed)")
    return ident


def load_or_create_identity(data_dir: str | os.PathLike[str]) -> tuple[Identity, bool]:
    """Load the node key, creating it only when the file does not exist at all."""
    path = Path(data_dir) / KEY_FILE
    if path.exists() or path.is_symlink():
        return load_identity(data_dir), False
    ident = Identity.generate()
    atomic_write(path, ident.to_file_bytes(), mode=0o600)
    return ident, True
