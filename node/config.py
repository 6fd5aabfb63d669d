"""Node configuration: TOML defaults from ``config/default.toml`` overlaid by the
node's own file, validated up front.

Validation names the exact key (``gossip.peer_rate: must be > 0, got -1``) so an
operator fixes the file in one go instead of chasing a stack trace at runtime.
The types come from the defaults file itself; the extra rules below say what
the types cannot.
"""
from __future__ import annotations

import copy
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from enclave.ai_manifest import loads_toml

DEFAULTS_PATH = Path(__file__).resolve().parent.parent / "config" / "default.toml"
ROLES = ("provider", "dos", "secrets")
LOG_LEVELS = ("debug", "info", "warning", "error")


class ConfigError(ValueError):
    """The configuration is invalid; the message names the key."""


def _positive(v: Any) -> str | None:
    return None if v > 0 else f"must be > 0, got {v}"


def _roles(v: list[Any]) -> str | None:
    bad = [r for r in v if r not in ROLES]
    if bad:
        return f"unknown role(s) {bad}; known roles: {', '.join(ROLES)}"
    if len(set(v)) != len(v):
        return "roles are listed twice"
    return None


def _multiaddrs(v: list[Any]) -> str | None:
    for a in v:
        if not isinstance(a, str) or not a.startswith("/"):
            return f"{a!r} is not a multiaddr (e.g. /ip4/127.0.0.1/tcp/4001)"
    return None


def _bootstrap(v: list[Any]) -> str | None:
    err = _multiaddrs(v)
    if err:
        return err
    for a in v:
        if "/p2p/" not in a:
            return f"{a!r} lacks /p2p/<peer id>: a bootstrap peer must be named so its identity is checked"
    return None


def _hostport(v: str) -> str | None:
    m = re.fullmatch(r"([^:]+):(\d+)", v)
    if not m or int(m.group(2)) > 65535:
        return f"{v!r} is not host:port"
    return None


_RULES: dict[str, Callable[[Any], str | None]] = {
    "node.roles": _roles,
    "p2p.listen": _multiaddrs,
    "p2p.bootstrap": _bootstrap,
    "log.level": lambda v: None if v in LOG_LEVELS else f"must be one of {', '.join(LOG_LEVELS)}",
    "log.format": lambda v: None if v in ("json", "text") else "must be json or text",
    "metrics.listen": _hostport,
    "provider.backend": lambda v: None if v in ("sim", "docker", "gramine-sgx", "gramine-direct")
    else "must be sim, docker, gramine-sgx or gramine-direct",
    "provider.max_enclaves": lambda v: None if v >= 0 else "must be >= 0",
    **{
        k: _positive
        for k in (
            "p2p.reconnect_interval", "p2p.reconnect_max", "p2p.dial_timeout", "p2p.target_peers",
            "p2p.discovery_interval", "gossip.degree", "gossip.degree_low", "gossip.degree_high",
            "gossip.heartbeat_interval", "gossip.max_message_bytes", "gossip.max_age", "gossip.max_future",
            "gossip.peer_rate", "gossip.peer_burst", "gossip.publish_rate", "gossip.dedupe_window",
            "gossip.announce_interval", "api.max_request_bytes", "api.max_connections",
            "market.bidding_ms", "market.grace_ms", "market.attest_s", "market.deadline_s",
            "market.late_s", "market.republish_s", "p2p.max_connections",
            "gossip.ban_strikes", "gossip.ban_window", "gossip.ban_s", "provider.price",
        )
    },
}


def _load_defaults() -> dict[str, Any]:
    with open(DEFAULTS_PATH, "rb") as f:
        return tomllib.load(f)


def _type_ok(default: Any, value: Any) -> bool:
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, list):
        return isinstance(value, list)
    return isinstance(value, type(default))


def _merge(defaults: dict[str, Any], user: dict[str, Any], source: str) -> dict[str, Any]:
    merged = copy.deepcopy(defaults)
    for section, table in user.items():
        if section not in defaults:
            raise ConfigError(f"{source}: unknown section [{section}] (known: {', '.join(defaults)})")
        if not isinstance(table, dict):
            raise ConfigError(f"{source}: {section} must be a table")
        for key, value in table.items():
            dotted = f"{section}.{key}"
            if key not in defaults[section]:
                raise ConfigError(f"{source}: unknown key {dotted}")
            default = defaults[section][key]
            if not _type_ok(default, value):
                raise ConfigError(
                    f"{source}: {dotted}: expected {type(default).__name__}, got {type(value).__name__} {value!r}"
                )
            merged[section][key] = float(value) if isinstance(default, float) else value
    return merged


def _validate(cfg: dict[str, Any], source: str) -> None:
    for dotted, rule in _RULES.items():
        section, key = dotted.split(".")
        err = rule(cfg[section][key])
        if err:
            raise ConfigError(f"{source}: {dotted}: {err}")
    g = cfg["gossip"]
    if not g["degree_low"] <= g["degree"] <= g["degree_high"]:
        raise ConfigError(f"{source}: gossip.degree: must lie between degree_low and degree_high")


@dataclass(frozen=True)
class Config:
    """A validated configuration. ``data_dir`` is absolute."""

    data_dir: Path
    values: dict[str, Any]

    def __getitem__(self, section: str) -> dict[str, Any]:
        return self.values[section]

    @property
    def roles(self) -> tuple[str, ...]:
        return tuple(self.values["node"]["roles"])

    @property
    def socket_path(self) -> Path:
        s = self.values["api"]["socket"]
        return Path(s).expanduser() if s else self.data_dir / "ofnode.sock"

    @property
    def genesis_path(self) -> Path:
        return self.data_dir / Path(self.values["node"]["genesis"]).expanduser()

    @property
    def log_level(self) -> str:
        env = os.environ.get("OFNODE_LOG_LEVEL", "").lower()
        return env if env in LOG_LEVELS else self.values["log"]["level"]


def default_data_dir() -> Path:
    return Path(os.environ.get("OFNODE_HOME", "~/.ofnode")).expanduser()


def load_config(data_dir: str | os.PathLike[str] | None = None, path: str | os.PathLike[str] | None = None) -> Config:
    """Defaults, overlaid by ``path`` (or ``<data_dir>/config.toml`` when it exists)."""
    ddir = Path(data_dir).expanduser().resolve() if data_dir else default_data_dir().resolve()
    cfg_path = Path(path) if path else ddir / "config.toml"
    user: dict[str, Any] = {}
    source = str(cfg_path)
    if path or cfg_path.exists():
        try:
            with open(cfg_path, "rb") as f:
                user = loads_toml(f.read().decode("utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{cfg_path}: no such config file") from None
        except UnicodeDecodeError as e:
            raise ConfigError(f"{cfg_path}: not UTF-8 ({e})") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{cfg_path}: not valid TOML: {e}") from None
    values = _merge(_load_defaults(), user, source)
    _validate(values, source)
    return Config(ddir, values)


def documented_keys() -> list[str]:
    """Every dotted key of the defaults file (used by tests to keep docs complete)."""
    d = _load_defaults()
    return [f"{s}.{k}" for s, t in d.items() for k in t]
