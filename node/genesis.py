"""The network genesis: network id, trusted DOS and secrets peers with their
quorums, and the attestation policy. Loaded once, validated up front, frozen.
"""
from __future__ import annotations

import base64
import binascii
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from enclave.ai_manifest import loads_toml

from .fsutil import atomic_write
from .identity import public_key_from_peer_id

_NETWORK_ID = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_HEX32 = re.compile(r"[0-9a-f]{64}")


class GenesisError(ValueError):
    """The genesis file is invalid; the message names the key."""


@dataclass(frozen=True)
class Policy:
    mrenclave: tuple[str, ...] = ()
    mrsigner: tuple[str, ...] = ()
    min_isv_svn: int = 0
    tcb_statuses: tuple[str, ...] = ("UpToDate",)
    tcb_statuses_with_advisories: tuple[str, ...] = ()
    advisories_allowed: tuple[str, ...] = ()
    allow_debug: bool = False
    sim_root_ca: bytes = b""


@dataclass(frozen=True)
class Genesis:
    network_id: str
    created: str
    dos_peers: tuple[str, ...]
    dos_quorum: int
    secrets_peers: tuple[str, ...]
    secrets_threshold: int
    policy: Policy = field(default_factory=Policy)
    # Testnets only: the sim root CA's private key (PEM), so providers can run
    # the simulated quoting enclave. A production genesis has none.
    sim_root_key: str = ""

    def to_toml(self) -> dict[str, Any]:
        p = self.policy
        doc: dict[str, Any] = {
            "network": {"id": self.network_id, "created": self.created},
            "dos": {"peers": list(self.dos_peers), "quorum": self.dos_quorum},
            "secrets": {"peers": list(self.secrets_peers), "threshold": self.secrets_threshold},
            "policy": {
                "mrenclave": list(p.mrenclave),
                "mrsigner": list(p.mrsigner),
                "min_isv_svn": p.min_isv_svn,
                "tcb_statuses": list(p.tcb_statuses),
                "tcb_statuses_with_advisories": list(p.tcb_statuses_with_advisories),
                "advisories_allowed": list(p.advisories_allowed),
                "allow_debug": p.allow_debug,
                "sim_root_ca": base64.b64encode(p.sim_root_ca).decode(),
            },
        }
        if self.sim_root_key:
            doc["sim"] = {"root_key": self.sim_root_key}
        return doc

    def save(self, path: str | Path) -> None:
        atomic_write(path, tomli_w.dumps(self.to_toml()).encode(), mode=0o600 if self.sim_root_key else 0o644)


_SCHEMA: dict[str, dict[str, type | tuple[type, ...]]] = {
    "network": {"id": str, "created": str},
    "dos": {"peers": list, "quorum": int},
    "secrets": {"peers": list, "threshold": int},
    "policy": {
        "mrenclave": list, "mrsigner": list, "min_isv_svn": int, "tcb_statuses": list,
        "tcb_statuses_with_advisories": list, "advisories_allowed": list, "allow_debug": bool,
        "sim_root_ca": str,
    },
    "sim": {"root_key": str},
}
_OPTIONAL_SECTIONS = {"sim"}


def _peer_list(key: str, peers: list[Any]) -> tuple[str, ...]:
    out = []
    for p in peers:
        if not isinstance(p, str):
            raise GenesisError(f"{key}: {p!r} is not a peer id string")
        try:
            public_key_from_peer_id(p)
        except ValueError:
            raise GenesisError(f"{key}: {p!r} is not an ed25519 peer id (12D3KooW...)") from None
        out.append(p)
    if len(set(out)) != len(out):
        raise GenesisError(f"{key}: a peer is listed twice")
    return tuple(out)


def _str_list(key: str, v: list[Any], pattern: re.Pattern[str] | None = None) -> tuple[str, ...]:
    for s in v:
        if not isinstance(s, str) or (pattern and not pattern.fullmatch(s)):
            raise GenesisError(f"{key}: {s!r} is not valid" + (" (64 lowercase hex digits)" if pattern else ""))
    return tuple(v)


def parse_genesis(doc: dict[str, Any], source: str = "genesis") -> Genesis:
    for section, keys in _SCHEMA.items():
        if section not in doc:
            if section in _OPTIONAL_SECTIONS:
                continue
            raise GenesisError(f"{source}: missing section [{section}]")
        for key, typ in keys.items():
            if key not in doc[section]:
                raise GenesisError(f"{source}: missing key {section}.{key}")
            v = doc[section][key]
            if not isinstance(v, typ) or (typ is int and isinstance(v, bool)):
                raise GenesisError(f"{source}: {section}.{key}: expected {typ.__name__}, got {v!r}")
        extra = set(doc[section]) - set(keys)
        if extra:
            raise GenesisError(f"{source}: unknown key(s) {', '.join(f'{section}.{k}' for k in sorted(extra))}")
    extra_sections = set(doc) - set(_SCHEMA)
    if extra_sections:
        raise GenesisError(f"{source}: unknown section(s) {sorted(extra_sections)}")

    nid = doc["network"]["id"]
    if not _NETWORK_ID.fullmatch(nid):
        raise GenesisError(f"{source}: network.id: {nid!r} must be 1-64 chars of a-z 0-9 . _ -")
    dos = _peer_list(f"{source}: dos.peers", doc["dos"]["peers"])
    sec = _peer_list(f"{source}: secrets.peers", doc["secrets"]["peers"])
    q, t = doc["dos"]["quorum"], doc["secrets"]["threshold"]
    if dos and not 1 <= q <= len(dos):
        raise GenesisError(f"{source}: dos.quorum: {q} must lie in 1..{len(dos)} (the number of DOS peers)")
    if sec and not 1 <= t <= len(sec):
        raise GenesisError(f"{source}: secrets.threshold: {t} must lie in 1..{len(sec)} (the number of secrets peers)")
    p = doc["policy"]
    try:
        root = base64.b64decode(p["sim_root_ca"], validate=True)
    except binascii.Error:
        raise GenesisError(f"{source}: policy.sim_root_ca: not base64") from None
    if p["min_isv_svn"] < 0 or p["min_isv_svn"] > 0xFFFF:
        raise GenesisError(f"{source}: policy.min_isv_svn: must lie in 0..65535")
    policy = Policy(
        mrenclave=_str_list(f"{source}: policy.mrenclave", p["mrenclave"], _HEX32),
        mrsigner=_str_list(f"{source}: policy.mrsigner", p["mrsigner"], _HEX32),
        min_isv_svn=p["min_isv_svn"],
        tcb_statuses=_str_list(f"{source}: policy.tcb_statuses", p["tcb_statuses"]),
        tcb_statuses_with_advisories=_str_list(
            f"{source}: policy.tcb_statuses_with_advisories", p["tcb_statuses_with_advisories"]
        ),
        advisories_allowed=_str_list(f"{source}: policy.advisories_allowed", p["advisories_allowed"]),
        allow_debug=p["allow_debug"],
        sim_root_ca=root,
    )
    if dos and not policy.mrenclave and not policy.mrsigner:
        # Empty lists would let every genuine enclave, whatever code it runs, pass attestation.
        raise GenesisError(f"{source}: policy: neither mrenclave nor mrsigner lists a measurement, so any "
                           "enclave would be attested; list the MRENCLAVE or MRSIGNER values this network trusts")
    return Genesis(
        network_id=nid,
        created=doc["network"]["created"],
        dos_peers=dos,
        dos_quorum=q,
        secrets_peers=sec,
        secrets_threshold=t,
        policy=policy,
        sim_root_key=doc.get("sim", {}).get("root_key", ""),
    )


def load_genesis(path: str | Path) -> Genesis:
    try:
        with open(path, "rb") as f:
            doc = loads_toml(f.read().decode("utf-8"))
    except FileNotFoundError:
        raise GenesisError(f"{path}: no genesis file (`ofnode testnet up` writes one; see config/genesis.template.toml)") from None
    except UnicodeDecodeError as e:
        raise GenesisError(f"{path}: not UTF-8 ({e})") from None
    except tomllib.TOMLDecodeError as e:
        raise GenesisError(f"{path}: not valid TOML: {e}") from None
    return parse_genesis(doc, str(path))
