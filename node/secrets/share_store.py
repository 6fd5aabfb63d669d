"""A secrets peer's key shares, sealed at rest, durable across restarts.

Layout under ``<data dir>/secrets/`` (directory 0700)::

    storage.key                 32 random bytes, 0600: the at-rest sealing key
    shares/<h>.json             one file per AI (h = SHA-256(ai_cid)[:32] hex)

``storage.key`` is made once, from ``os.urandom``, the first time the store
opens an empty directory. It is a separate random key rather than one derived
from the node identity, so the identity key (which signs gossip and ACLs and
may be copied for operations) never doubles as the key of every share; both
files live in the same private data directory and are backed up together.
If shares exist but ``storage.key`` is missing, corrupt or readable by others,
opening the store fails with an error that names the file: making a new key
would orphan every share.

Each share file holds the share's metadata in clear (AI CID, version, index,
threshold, n, key check, owner = the depositing peer, revoked flag) and the
32-byte share sealed with AES-256-GCM under ``storage.key``: 12-byte random
nonce || ciphertext || tag, hex, with the metadata (minus the revoked flag and
timestamps) as associated data, so a share cannot be moved to another AI or
index on disk. Writes are atomic (temp file, fsync, rename, fsync dir).

Rules: the first depositor of an AI becomes its owner (trust on first use:
the Noise-authenticated peer id of the deposit stream); only the owner may
deposit again or revoke. A new deposit must carry a higher version (key
rotation: the new share replaces the old one); the same version with the same
share is an idempotent retry. Revocation erases the share and is permanent
for that CID.
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets as _secrets
import stat
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..fsutil import atomic_write, private_dir
from enclave.secret_client import SHARE_SIZE, canonical_json

__all__ = ["ShareStore", "ShareRecord", "ShareStoreError", "STORAGE_KEY_FILE"]

STORAGE_KEY_FILE = "storage.key"
_AAD_DOMAIN = b"ofnode/secrets/share-at-rest/v1\n"


class ShareStoreError(Exception):
    """The store cannot do what was asked; the text says why (safe to send to the requester)."""


@dataclass(frozen=True)
class ShareRecord:
    ai_cid: str
    version: int
    index: int
    threshold: int
    n: int
    key_check: str
    owner: str
    revoked: bool = False
    updated: float = 0.0
    sealed: bytes | None = field(default=None, repr=False)

    def aad(self) -> bytes:
        return _AAD_DOMAIN + canonical_json({"ai_cid": self.ai_cid, "version": self.version, "index": self.index,
                                             "threshold": self.threshold, "n": self.n, "key_check": self.key_check,
                                             "owner": self.owner})

    def to_json(self) -> bytes:
        d = {"ai_cid": self.ai_cid, "version": self.version, "index": self.index, "threshold": self.threshold,
             "n": self.n, "key_check": self.key_check, "owner": self.owner, "revoked": self.revoked,
             "updated": self.updated, "sealed": self.sealed.hex() if self.sealed is not None else None}
        return json.dumps(d, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> "ShareRecord":
        d = json.loads(raw)
        sealed = d.get("sealed")
        rec = cls(ai_cid=str(d["ai_cid"]), version=int(d["version"]), index=int(d["index"]),
                  threshold=int(d["threshold"]), n=int(d["n"]), key_check=str(d["key_check"]), owner=str(d["owner"]),
                  revoked=bool(d["revoked"]), updated=float(d.get("updated", 0.0)),
                  sealed=bytes.fromhex(sealed) if isinstance(sealed, str) else None)
        if not rec.revoked and rec.sealed is None:
            raise ValueError("live share without sealed bytes")
        return rec

    def public(self) -> dict[str, Any]:
        return {"ai_cid": self.ai_cid, "version": self.version, "index": self.index, "threshold": self.threshold,
                "n": self.n, "key_check": self.key_check, "owner": self.owner, "revoked": self.revoked}


class ShareStore:
    """Shares of AI keys held by this secrets peer. Thread-safe."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = private_dir(directory)
        self._shares_dir = self.directory / "shares"
        self._shares_dir.mkdir(exist_ok=True)
        self._lock = threading.Lock()
        self._records: dict[str, ShareRecord] = {}
        for path in sorted(self._shares_dir.glob("*.json")):
            try:
                rec = ShareRecord.from_json(path.read_bytes())
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise ShareStoreError(f"{path}: unreadable share file ({e}); restore it from a backup") from None
            if path.name != self._name(rec.ai_cid):
                raise ShareStoreError(f"{path}: misnamed share file (expected {self._name(rec.ai_cid)})")
            self._records[rec.ai_cid] = rec
        self._aead = AESGCM(self._load_storage_key(bool(self._records)))

    # -- storage key --------------------------------------------------------------
    def _load_storage_key(self, have_shares: bool) -> bytes:
        path = self.directory / STORAGE_KEY_FILE
        try:
            st = path.stat()
        except FileNotFoundError:
            if have_shares:
                raise ShareStoreError(f"{path}: missing, but sealed shares exist; restore it from a backup "
                                      "(a new key could not open them)") from None
            key = _secrets.token_bytes(32)
            atomic_write(path, key, mode=0o600)
            return key
        if stat.S_IMODE(st.st_mode) & 0o077:
            raise ShareStoreError(f"{path}: permissions {oct(stat.S_IMODE(st.st_mode))} are too open; "
                                  f"the key must be 0600 (chmod 600 {path})")
        key = path.read_bytes()
        if len(key) != 32:
            raise ShareStoreError(f"{path}: corrupt storage key ({len(key)} bytes, not 32); restore it from a backup")
        return key

    @staticmethod
    def _name(ai_cid: str) -> str:
        return hashlib.sha256(ai_cid.encode()).hexdigest()[:32] + ".json"

    def _write(self, rec: ShareRecord) -> None:
        atomic_write(self._shares_dir / self._name(rec.ai_cid), rec.to_json(), mode=0o600)

    def _seal(self, rec: ShareRecord, share: bytes | bytearray) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, bytes(share), rec.aad())

    # -- operations -----------------------------------------------------------------
    def get(self, ai_cid: str) -> ShareRecord | None:
        with self._lock:
            return self._records.get(ai_cid)

    def records(self) -> list[ShareRecord]:
        with self._lock:
            return sorted(self._records.values(), key=lambda r: r.ai_cid)

    def deposit(self, *, ai_cid: str, version: int, index: int, threshold: int, n: int, share: bytes | bytearray,
                key_check: str, owner: str, now: float | None = None) -> tuple[ShareRecord, bool]:
        """Store a share; returns (record, changed). Raises ShareStoreError with the reason."""
        if len(share) != SHARE_SIZE:
            raise ShareStoreError(f"share must be {SHARE_SIZE} bytes")
        now = time.time() if now is None else now
        with self._lock:
            old = self._records.get(ai_cid)
            if old is not None:
                if old.owner != owner:
                    raise ShareStoreError(f"AI {ai_cid} belongs to another publisher ({old.owner})")
                if old.revoked:
                    raise ShareStoreError(f"AI {ai_cid} is revoked; publish it again (a new CID)")
                if version < old.version:
                    raise ShareStoreError(f"version {version} is older than the stored version {old.version}")
                if version == old.version:
                    if (index, threshold, n, key_check) == (old.index, old.threshold, old.n, old.key_check) and \
                            self._open(old) == bytes(share):
                        return old, False
                    raise ShareStoreError(f"version {version} is already stored with another share; "
                                          "rotate with a higher version")
            rec = ShareRecord(ai_cid=ai_cid, version=version, index=index, threshold=threshold, n=n,
                              key_check=key_check, owner=owner, updated=now)
            rec = replace(rec, sealed=self._seal(rec, share))
            self._write(rec)
            self._records[ai_cid] = rec
            return rec, True

    def _open(self, rec: ShareRecord) -> bytes:
        assert rec.sealed is not None
        try:
            return self._aead.decrypt(rec.sealed[:12], rec.sealed[12:], rec.aad())
        except InvalidTag:
            raise ShareStoreError(f"the stored share of {rec.ai_cid} does not open (tampered file or wrong storage key)") from None

    def open(self, ai_cid: str) -> tuple[ShareRecord, bytearray]:
        """(record, share) for a live AI; the caller zeroes the bytearray after use."""
        with self._lock:
            rec = self._records.get(ai_cid)
            if rec is None:
                raise ShareStoreError(f"no share of AI {ai_cid} here")
            if rec.revoked:
                raise ShareStoreError(f"AI {ai_cid} is revoked")
            return rec, bytearray(self._open(rec))

    def revoke(self, ai_cid: str, *, by: str | None = None, now: float | None = None) -> bool:
        """Erase the share and refuse every later release; ``by`` (if given) must be the owner."""
        with self._lock:
            rec = self._records.get(ai_cid)
            if rec is None:
                raise ShareStoreError(f"no share of AI {ai_cid} here")
            if by is not None and by != rec.owner:
                raise ShareStoreError(f"only the publisher of AI {ai_cid} may revoke it")
            if rec.revoked:
                return False
            rec = replace(rec, revoked=True, sealed=None, updated=time.time() if now is None else now)
            self._write(rec)
            self._records[ai_cid] = rec
            return True
