"""`ofnode start` tells systemd it is ready (Type=notify) once its API answers."""
from __future__ import annotations

import os
import socket

from node.api.client import call
from node.cli.main import main as cli
from node.cli.main import sd_notify
from node.genesis import Genesis, Policy

from .conftest import start_daemon


def test_ready_is_sent_once_the_api_answers(tmp_path, monkeypatch) -> None:
    d, g = tmp_path / "n", tmp_path / "genesis.toml"
    Genesis("notify", "x", (), 1, (), 1, Policy()).save(g)
    assert cli(["init", "--data-dir", str(d), "--genesis", str(g), "--listen", "/ip4/127.0.0.1/tcp/0"]) == 0
    name = f"ofnode-notify-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sd:  # plays systemd's notify socket
        sd.bind("\0" + name)
        sd.settimeout(30)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        proc, info = start_daemon(d)
        try:
            msg = sd.recv(4096).decode()
            fields = dict(line.split("=", 1) for line in msg.splitlines())
            assert fields["READY"] == "1" and fields["MAINPID"] == str(proc.pid)
            assert info["peer_id"] in fields["STATUS"]
            assert call(info["socket"], "node.status")["peer_id"] == info["peer_id"]  # it does answer
        finally:
            proc.terminate()
            proc.wait(10)


def test_without_systemd_nothing_is_sent(monkeypatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sd_notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", "/nonexistent/notify")
    assert sd_notify("READY=1") is False  # an unreachable socket never stops the node
