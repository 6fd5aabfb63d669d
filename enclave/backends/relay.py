"""A loopback-TCP to Unix-socket relay for one enclave channel (Gramine backends).

Gramine allows no Unix socket between an enclave and the host, so the
runtime inside dials ``tcp:127.0.0.1:PORT`` and this relay splices that one
connection to the host's Unix listener (the one ``enclave.host`` made in the
socket dir). It accepts exactly one connection, from loopback, then closes
its listener. The channel is untrusted by design (sealed or signed end to
end), so the relay adds no trust; a local process that connects first only
makes this job fail, as it could by killing the enclave.

A thread, like the stderr reader of ``process.py``: it must run while nobody
awaits the enclave, needs no nursery from the caller, and ``close()`` (called
when the enclave is reaped) stops it.
"""

from __future__ import annotations

import os
import select
import socket
import threading
from pathlib import Path

__all__ = ["ChannelRelay"]

_CHUNK = 256 * 1024


class ChannelRelay:
    def __init__(self, unix_path: Path, accept_timeout: float = 120.0) -> None:
        self.unix_path = unix_path
        self._timeout = accept_timeout
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._run, name=f"gramine-relay-{self.port}", daemon=True)
        self._closed = False

    @property
    def address(self) -> str:
        """What the runtime dials (its ``--socket`` value, via ``OFNODE_CHANNEL``)."""
        return f"tcp:127.0.0.1:{self.port}"

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Stop relaying and release everything; idempotent."""
        if self._closed:
            return
        self._closed = True
        os.write(self._wake_w, b"x")
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(1)  # woken by the pipe: returns at once unless stuck in a send
        if not self._thread.is_alive():
            for fd in (self._wake_r, self._wake_w):
                os.close(fd)
        self._listener.close()

    def _run(self) -> None:
        tcp = unix = None
        try:
            ready, _, _ = select.select([self._listener, self._wake_r], [], [], self._timeout)
            if self._listener not in ready:
                return
            tcp, peer = self._listener.accept()
            self._listener.close()  # exactly one connection
            if peer[0] != "127.0.0.1":
                return
            unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            unix.connect(str(self.unix_path))
            self._pump(tcp, unix)
        except OSError:
            pass
        finally:
            for s in (tcp, unix):
                if s is not None:
                    s.close()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        peer = {a: b, b: a}
        open_ = {a, b}
        while open_:
            ready, _, _ = select.select([*open_, self._wake_r], [], [])
            if self._wake_r in ready:
                return
            for s in ready:
                data = s.recv(_CHUNK)
                if data:
                    peer[s].sendall(data)
                else:  # half-close: pass the EOF on, keep the other direction
                    open_.discard(s)
                    try:
                        peer[s].shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
