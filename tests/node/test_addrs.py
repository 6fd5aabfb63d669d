"""A wildcard listen address is announced as addresses peers can dial."""
from __future__ import annotations

import ipaddress

from node.api.client import call
from node.cli.main import main as cli
from node.genesis import Genesis, Policy
from node.p2p.addrs import dialable, local_ipv4

from .conftest import start_daemon


def test_local_ipv4_has_loopback_last() -> None:
    ips = local_ipv4()
    assert "127.0.0.1" in ips
    assert all(not ipaddress.ip_address(a).is_loopback for a in ips[: ips.index("127.0.0.1")])
    assert "0.0.0.0" not in ips


def test_wildcard_expands_and_others_stay() -> None:
    out = dialable(["/ip4/0.0.0.0/tcp/4001/p2p/12D3KooWX", "/ip4/10.1.2.3/tcp/5/p2p/12D3KooWX"])
    assert not any("/0.0.0.0/" in a for a in out)
    assert "/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWX" in out
    assert "/ip4/10.1.2.3/tcp/5/p2p/12D3KooWX" in out
    assert all(a.endswith("/tcp/4001/p2p/12D3KooWX") for a in out if "10.1.2.3" not in a)
    assert len(out) == len(set(out))


def test_a_node_listening_everywhere_announces_dialable_addresses(tmp_path) -> None:
    d, g = tmp_path / "n", tmp_path / "genesis.toml"
    Genesis("addrs", "x", (), 1, (), 1, Policy()).save(g)
    assert cli(["init", "--data-dir", str(d), "--genesis", str(g), "--listen", "/ip4/0.0.0.0/tcp/0"]) == 0
    proc, info = start_daemon(d)
    try:
        addrs = call(info["socket"], "node.status")["addrs"]
        assert addrs and not any("/0.0.0.0/" in a for a in addrs)
        assert any(a.startswith("/ip4/127.0.0.1/tcp/") for a in addrs)
    finally:
        proc.terminate()
        proc.wait(10)
