"""The addresses a node tells others: a wildcard listen address made dialable.

Listening on ``/ip4/0.0.0.0/tcp/4001`` (the default) binds every interface,
but ``0.0.0.0`` is not an address anyone can dial: announced as is, a
provider's offers and a node's presence would carry nothing peers can use.
So a wildcard is replaced by this host's IPv4 interface addresses, routable
ones first and loopback last (testnets on one machine still use it).
"""

from __future__ import annotations

import fcntl
import ipaddress
import socket
import struct
from collections.abc import Iterable

__all__ = ["dialable", "local_ipv4"]

_SIOCGIFADDR = 0x8915
_WILDCARD = "/ip4/0.0.0.0/"


def local_ipv4() -> list[str]:
    """The primary IPv4 address of every interface that has one: routable first, loopback last."""
    found: list[str] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in socket.if_nameindex():
            try:
                raw = fcntl.ioctl(s.fileno(), _SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
            except OSError:  # no IPv4 address on it
                continue
            addr = socket.inet_ntoa(raw[20:24])
            if addr not in found:
                found.append(addr)
    return sorted(found, key=lambda a: ipaddress.ip_address(a).is_loopback)


def dialable(addrs: Iterable[object]) -> list[str]:
    """``addrs`` as strings, each ``/ip4/0.0.0.0/...`` expanded to every local IPv4 address."""
    out: list[str] = []
    locals_: list[str] | None = None
    for a in map(str, addrs):
        if not a.startswith(_WILDCARD):
            out.append(a)
            continue
        if locals_ is None:
            locals_ = local_ipv4() or ["127.0.0.1"]
        out += [f"/ip4/{ip}/{a[len(_WILDCARD):]}" for ip in locals_]
    return list(dict.fromkeys(out))
