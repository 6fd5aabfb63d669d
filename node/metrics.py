"""Node metrics: counters and gauges kept in plain dicts, rendered in the
Prometheus text format and served over a tiny trio HTTP endpoint.

Own code rather than prometheus_client: the daemon is single-threaded trio, the
same numbers also feed `ofnode status`, and a 40-line renderer is easier to
reason about than a global registry shared with py-libp2p's own metrics.
"""
from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field

import trio

log = logging.getLogger("ofnode.metrics")

Labels = tuple[tuple[str, str], ...]


@dataclass
class _Family:
    kind: str  # "counter" or "gauge"
    help: str
    values: dict[Labels, float] = field(default_factory=lambda: defaultdict(float))


class Metrics:
    def __init__(self) -> None:
        self._families: dict[str, _Family] = {}

    def declare(self, name: str, kind: str, help: str) -> None:
        self._families.setdefault(name, _Family(kind, help))

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        self._families[name].values[tuple(sorted(labels.items()))] += amount

    def set(self, name: str, value: float, **labels: str) -> None:
        self._families[name].values[tuple(sorted(labels.items()))] = value

    def get(self, name: str, **labels: str) -> float:
        return self._families[name].values.get(tuple(sorted(labels.items())), 0.0)

    def by_label(self, name: str, label: str) -> dict[str, float]:
        return {dict(k).get(label, ""): v for k, v in self._families[name].values.items()}

    def render(self) -> str:
        lines = []
        for name, fam in sorted(self._families.items()):
            lines.append(f"# HELP {name} {fam.help}")
            lines.append(f"# TYPE {name} {fam.kind}")
            if not fam.values:
                lines.append(f"{name} 0")
            for labels, v in sorted(fam.values.items()):
                lab = ",".join(f'{k}="{_escape(val)}"' for k, val in labels)
                lines.append(f"{name}{{{lab}}} {v:g}" if lab else f"{name} {v:g}")
        return "\n".join(lines) + "\n"


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def node_metrics() -> Metrics:
    m = Metrics()
    m.declare("ofnode_peers", "gauge", "Connected peers.")
    m.declare("ofnode_gossip_in_total", "counter", "Gossip envelopes accepted and delivered to the application.")
    m.declare("ofnode_gossip_out_total", "counter", "Gossip envelopes published by this node.")
    m.declare("ofnode_gossip_rejected_total", "counter", "Gossip envelopes rejected, by reason.")
    m.declare("ofnode_gossip_duplicates_total", "counter", "Gossip envelopes seen before and not delivered again.")
    m.declare("ofnode_rpc_calls_total", "counter", "JSON-RPC calls served, by method.")
    m.declare("ofnode_rpc_errors_total", "counter", "JSON-RPC calls answered with an error, by code.")
    m.declare("ofnode_dials_total", "counter", "Outbound dials, by result.")
    m.declare("ofnode_peers_banned_total", "counter", "Peers disconnected and banned, by reason.")
    m.declare("ofnode_banned_connections_closed_total", "counter", "Connections from banned peers closed as they opened.")
    return m


async def serve_metrics(metrics: Metrics, host: str, port: int, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Serve GET /metrics until cancelled; reports the bound port via task_status."""
    listeners = await trio.open_tcp_listeners(port, host=host)
    task_status.started(listeners[0].socket.getsockname()[1])

    async def handle(stream: trio.SocketStream) -> None:
        try:
            with trio.move_on_after(5):
                request = b""
                while b"\r\n\r\n" not in request and len(request) < 8192:
                    chunk = await stream.receive_some(4096)
                    if not chunk:
                        return
                    request += chunk
                line = request.split(b"\r\n", 1)[0].split()
                if len(line) >= 2 and line[0] == b"GET" and line[1].split(b"?")[0] == b"/metrics":
                    body, status = metrics.render().encode(), b"200 OK"
                else:
                    body, status = b"not found: try /metrics\n", b"404 Not Found"
                await stream.send_all(
                    b"HTTP/1.1 " + status + b"\r\nContent-Type: text/plain; version=0.0.4\r\n"
                    b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body
                )
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
            log.debug("metrics client went away: %s", e)
        finally:
            await stream.aclose()

    await trio.serve_listeners(handle, listeners)
